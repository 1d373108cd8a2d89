package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"govmm/devices/bus"
)

// Configuration header registers (type 0 header).
const (
	RegVendorID      = 0x00
	RegDeviceID      = 0x02
	RegCommand       = 0x04
	RegStatus        = 0x06
	RegRevision      = 0x08
	RegClass         = 0x09 // prog-if, subclass, base class at 0x09..0x0B
	RegCacheLine     = 0x0C
	RegLatency       = 0x0D
	RegHeaderType    = 0x0E
	RegBAR0          = 0x10
	RegSubsysVendor  = 0x2C
	RegSubsysID      = 0x2E
	RegROM           = 0x30
	RegCapPtr        = 0x34
	RegInterruptLine = 0x3C
	RegInterruptPin  = 0x3D

	// ConfigSize is the conventional configuration space of a function.
	ConfigSize = 256
	// NumBARs is the number of BARs of a type 0 header.
	NumBARs = 6
	// ROMBAR is the expansion ROM's index in Region.BAR, after the six BARs.
	ROMBAR = NumBARs
	// capStart is where capabilities begin (after the header).
	capStart = 0x40
)

// Command and status register bits.
const (
	CmdIO          = 1 << 0
	CmdMemory      = 1 << 1
	CmdBusMaster   = 1 << 2
	CmdParity      = 1 << 6
	CmdSERR        = 1 << 8
	CmdINTxDisable = 1 << 10
	// cmdWritable is what a guest can change; the rest reads as zero.
	cmdWritable = CmdIO | CmdMemory | CmdBusMaster | CmdParity | CmdSERR | CmdINTxDisable

	StatusINTx    = 1 << 3
	StatusCapList = 1 << 4
	// statusW1C are the error bits software clears by writing ones.
	statusW1C = 0xF900
)

// BAR register low bits.
const (
	barIO         = 1 << 0
	barMem64      = 2 << 1
	barPrefetch   = 1 << 3
	barIOMask     = ^uint32(3)
	barMemMask    = ^uint32(15)
	maxIOBARSize  = 256 // the PCI spec's limit for I/O BARs
	minMemBARSize = 16
)

// BARKind is what address space a BAR decodes.
type BARKind uint8

const (
	// BARNone is an unimplemented BAR: it reads as zero and ignores writes.
	BARNone BARKind = iota
	// BARIO is an I/O space BAR (below 64 KiB on x86).
	BARIO
	// BARMem32 is a 32-bit memory BAR.
	BARMem32
	// BARMem64 is a 64-bit memory BAR; it uses the next BAR register for
	// the upper half.
	BARMem64
)

func (k BARKind) String() string {
	switch k {
	case BARIO:
		return "io"
	case BARMem32:
		return "mem32"
	case BARMem64:
		return "mem64"
	}
	return "none"
}

// BAR describes one base address register of a function.
type BAR struct {
	Kind BARKind
	// Size is a power of two: 4..256 for I/O, at least 16 for memory
	// (devices should use 4 KiB or more so BARs do not share pages).
	Size         uint64
	Prefetchable bool
	// Dev answers accesses inside the BAR; offsets are from the BAR's
	// base. Accesses may be of any size the bus delivers and may run past
	// Size at the end: Dev must check.
	Dev bus.Device
}

// Identity is what a function's header says it is.
type Identity struct {
	Vendor, Device  uint16
	Revision        uint8
	Class           uint8 // base class
	Subclass        uint8
	ProgIF          uint8
	SubsystemVendor uint16
	SubsystemID     uint16
	InterruptPin    uint8 // 0 none, 1..4 INTA..INTD
	MultiFunction   bool
}

// Space is an address space a BAR decodes in.
type Space uint8

const (
	SpaceIO Space = iota
	SpaceMemory
)

// Region is a BAR that currently decodes: the command register enables its
// space and the guest has placed it at a non-zero address.
type Region struct {
	Space      Space
	Base, Size uint64
	BAR        int
	Dev        bus.Device
}

// Function is the configuration space of one PCI function, with the
// behaviour every function shares: read-only and writable bits, write-1-
// to-clear status bits, BAR sizing (writing all ones reads back the size
// mask), the command register gating decode, and a capability list.
// Device models build one with NewFunction, SetBAR and AddCapability
// before adding it to a Root, and answer BAR accesses through the BARs'
// Dev. It is safe for concurrent use.
//
// MSI-X and INTx will hang off the same model: a capability whose writes a
// device observes through OnWrite (MSI-X enable and function mask), and
// the interrupt pin with the routing platform.PCIGSI gives.
type Function struct {
	mu   sync.Mutex
	cfg  [ConfigSize]byte
	wmsk [ConfigSize]byte // bits the guest may write
	w1c  [ConfigSize]byte // bits the guest clears by writing 1
	bars [NumBARs]BAR
	rom  BAR // the expansion ROM (Kind BARMem32), or none
	// capNext is the next free offset for a capability; capLast is the
	// offset of the last capability's next pointer (0: none yet).
	capNext, capLast int
	// changed is called (without mu) after a write that may change the
	// decoded regions; the Root sets it.
	changed func()
	// OnWrite, if set before the function is added to a Root, is called
	// after every configuration write (without the function's lock
	// held) with the offset and size of the write, so a device can act
	// on its capabilities' registers.
	OnWrite func(off, size int)
	// OnRead, if set before the function is added to a Root, is called
	// before every configuration read (without the function's lock held)
	// with the offset and size of the read, so a device can put the
	// current value of a register of its own into place (StoreConfig)
	// before the guest reads it.
	OnRead func(off, size int)
}

// NewFunction returns a function with the given identity, no BARs and no
// capabilities.
func NewFunction(id Identity) *Function {
	f := &Function{capNext: capStart}
	le := binary.LittleEndian
	le.PutUint16(f.cfg[RegVendorID:], id.Vendor)
	le.PutUint16(f.cfg[RegDeviceID:], id.Device)
	f.cfg[RegRevision] = id.Revision
	f.cfg[RegClass] = id.ProgIF
	f.cfg[RegClass+1] = id.Subclass
	f.cfg[RegClass+2] = id.Class
	if id.MultiFunction {
		f.cfg[RegHeaderType] = 0x80
	}
	le.PutUint16(f.cfg[RegSubsysVendor:], id.SubsystemVendor)
	le.PutUint16(f.cfg[RegSubsysID:], id.SubsystemID)
	if id.InterruptPin <= 4 {
		f.cfg[RegInterruptPin] = id.InterruptPin
	}
	le.PutUint16(f.wmsk[RegCommand:], cmdWritable)
	le.PutUint16(f.w1c[RegStatus:], statusW1C)
	f.wmsk[RegCacheLine] = 0xff
	f.wmsk[RegLatency] = 0xff
	f.wmsk[RegInterruptLine] = 0xff
	return f
}

// SetBAR declares BAR i. A 64-bit BAR also takes register i+1. It must be
// called before the function is added to a Root.
func (f *Function) SetBAR(i int, b BAR) error {
	if i < 0 || i >= NumBARs {
		return fmt.Errorf("pci: BAR %d out of range", i)
	}
	if b.Size == 0 || b.Size&(b.Size-1) != 0 {
		return fmt.Errorf("pci: BAR %d size %#x is not a power of two", i, b.Size)
	}
	if b.Dev == nil {
		return fmt.Errorf("pci: BAR %d has no device", i)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bars[i].Kind != BARNone || i > 0 && f.bars[i-1].Kind == BARMem64 {
		return fmt.Errorf("pci: BAR %d is already in use", i)
	}
	le := binary.LittleEndian
	off := RegBAR0 + 4*i
	switch b.Kind {
	case BARIO:
		if b.Size < 4 || b.Size > maxIOBARSize {
			return fmt.Errorf("pci: I/O BAR %d size %#x not in 4..%d", i, b.Size, maxIOBARSize)
		}
		if b.Prefetchable {
			return fmt.Errorf("pci: I/O BAR %d cannot be prefetchable", i)
		}
		le.PutUint32(f.cfg[off:], barIO)
		le.PutUint32(f.wmsk[off:], barIOMask&^uint32(b.Size-1))
	case BARMem32:
		if b.Size < minMemBARSize || b.Size > 1<<31 {
			return fmt.Errorf("pci: 32-bit BAR %d size %#x not in %d..2 GiB", i, b.Size, minMemBARSize)
		}
		le.PutUint32(f.cfg[off:], prefetchBit(b.Prefetchable))
		le.PutUint32(f.wmsk[off:], barMemMask&^uint32(b.Size-1))
	case BARMem64:
		if i == NumBARs-1 {
			return fmt.Errorf("pci: 64-bit BAR %d needs the next register", i)
		}
		if f.bars[i+1].Kind != BARNone {
			return fmt.Errorf("pci: 64-bit BAR %d: BAR %d is in use", i, i+1)
		}
		if b.Size < minMemBARSize || b.Size > 1<<62 {
			return fmt.Errorf("pci: 64-bit BAR %d size %#x out of range", i, b.Size)
		}
		le.PutUint32(f.cfg[off:], barMem64|prefetchBit(b.Prefetchable))
		mask := ^(b.Size - 1) &^ 15
		le.PutUint32(f.wmsk[off:], uint32(mask))
		le.PutUint32(f.wmsk[off+4:], uint32(mask>>32))
	default:
		return fmt.Errorf("pci: BAR %d has kind %v", i, b.Kind)
	}
	f.bars[i] = b
	return nil
}

// Expansion ROM BAR bits (PCI 3.0, 6.2.5.2): bit 0 enables decoding,
// bits 31-11 hold the address; a ROM is at least 2 KiB.
const (
	romEnable  = 1 << 0
	romMask    = ^uint32(0x7ff)
	minROMSize = 2 << 10
	maxROMSize = 16 << 20
)

// SetROM declares an expansion ROM of size bytes (a power of two, 2 KiB
// to 16 MiB) whose reads dev answers; the guest places it through
// register 0x30 and enables it with that register's bit 0 (and the
// command register's memory bit). It must be called before the function
// is added to a Root.
func (f *Function) SetROM(size uint64, dev bus.Device) error {
	if size < minROMSize || size > maxROMSize || size&(size-1) != 0 {
		return fmt.Errorf("pci: expansion ROM size %#x is not a power of two in 2 KiB..16 MiB", size)
	}
	if dev == nil {
		return errors.New("pci: expansion ROM has no device")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rom.Kind != BARNone {
		return errors.New("pci: the function already has an expansion ROM")
	}
	f.rom = BAR{Kind: BARMem32, Size: size, Dev: dev}
	binary.LittleEndian.PutUint32(f.wmsk[RegROM:], romMask&^uint32(size-1)|romEnable)
	return nil
}

// romAddr is where register 0x30 places the ROM and whether it is enabled.
func (f *Function) romAddr() (uint64, bool) {
	v := binary.LittleEndian.Uint32(f.cfg[RegROM:])
	return uint64(v & romMask), v&romEnable != 0
}

func prefetchBit(p bool) uint32 {
	if p {
		return barPrefetch
	}
	return 0
}

// AddCapability appends a capability with the given ID to the list. body
// is the capability after its two header bytes (ID, next pointer);
// writable marks the bits of body the guest may change (nil: none; else
// the same length as body). It returns the capability's offset. It must be
// called before the function is added to a Root.
func (f *Function) AddCapability(id byte, body, writable []byte) (int, error) {
	if writable != nil && len(writable) != len(body) {
		return 0, errors.New("pci: capability writable mask and body differ in length")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	off := f.capNext
	n := (2 + len(body) + 3) &^ 3
	if off+n > ConfigSize {
		return 0, fmt.Errorf("pci: capability %#x (%d bytes) does not fit in configuration space", id, 2+len(body))
	}
	f.cfg[off] = id
	f.cfg[off+1] = 0
	copy(f.cfg[off+2:], body)
	copy(f.wmsk[off+2:], writable)
	if f.capLast == 0 {
		f.cfg[RegCapPtr] = byte(off)
		binary.LittleEndian.PutUint16(f.cfg[RegStatus:], binary.LittleEndian.Uint16(f.cfg[RegStatus:])|StatusCapList)
	} else {
		f.cfg[f.capLast] = byte(off)
	}
	f.capLast = off + 1
	f.capNext = off + n
	return off, nil
}

// Capabilities walks the capability list as a guest does and returns the
// offsets of the capabilities with the given ID (any ID if id < 0). It
// stops at a loop or after 48 entries, as Linux does.
func (f *Function) Capabilities(id int) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return walkCaps(f.cfg[:], id)
}

func walkCaps(cfg []byte, id int) []int {
	var out []int
	if binary.LittleEndian.Uint16(cfg[RegStatus:])&StatusCapList == 0 {
		return nil
	}
	seen := map[int]bool{}
	for p := int(cfg[RegCapPtr]) &^ 3; p >= capStart && len(seen) < 48; p = int(cfg[p+1]) &^ 3 {
		if seen[p] {
			break
		}
		seen[p] = true
		if id < 0 || int(cfg[p]) == id {
			out = append(out, p)
		}
	}
	return out
}

// ReadConfig reads len(data) bytes of configuration space at off. Bytes
// beyond the conventional 256 read as all ones, as on QEMU for a
// conventional function behind an ECAM host.
func (f *Function) ReadConfig(off int, data []byte) {
	if f.OnRead != nil {
		f.OnRead(off, len(data))
	}
	f.PeekConfig(off, data)
}

// PeekConfig is ReadConfig without OnRead: what the configuration space
// holds now, for the device's own use.
func (f *Function) PeekConfig(off int, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range data {
		o := off + i
		if o < 0 || o >= ConfigSize {
			data[i] = 0xff
			continue
		}
		data[i] = f.cfg[o]
	}
}

// WriteConfig writes data at off: writable bits take the new value,
// write-1-to-clear bits clear where data has ones, the rest keep their
// value. Bytes beyond 256 are ignored.
func (f *Function) WriteConfig(off int, data []byte) {
	if off < 0 || off >= ConfigSize || len(data) == 0 {
		return
	}
	remap := false
	f.mu.Lock()
	for i, v := range data {
		o := off + i
		if o >= ConfigSize {
			break
		}
		f.cfg[o] = f.cfg[o]&^f.wmsk[o] | v&f.wmsk[o]
		f.cfg[o] &^= v & f.w1c[o]
		if o >= RegCommand && o < RegCommand+2 || o >= RegBAR0 && o < RegBAR0+4*NumBARs || o >= RegROM && o < RegROM+4 {
			remap = true
		}
	}
	changed, hook := f.changed, f.OnWrite
	f.mu.Unlock()
	if remap && changed != nil {
		changed()
	}
	if hook != nil {
		hook(off, len(data))
	}
}

// StoreConfig puts data at off whatever the guest's write masks say: a
// device's own view of a register in one of its capabilities, which the
// guest reads next. Bytes beyond 256 are ignored.
func (f *Function) StoreConfig(off int, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, v := range data {
		if o := off + i; o >= 0 && o < ConfigSize {
			f.cfg[o] = v
		}
	}
}

// Command returns the command register.
func (f *Function) Command() uint16 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return binary.LittleEndian.Uint16(f.cfg[RegCommand:])
}

// SetINTxStatus sets the status register's Interrupt Status bit, which
// reflects the function's INTx signal (whatever the command register's
// Interrupt Disable bit says); the guest cannot write it.
func (f *Function) SetINTxStatus(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	le := binary.LittleEndian
	st := le.Uint16(f.cfg[RegStatus:]) &^ StatusINTx
	if on {
		st |= StatusINTx
	}
	le.PutUint16(f.cfg[RegStatus:], st)
}

// BARAddress returns the address BAR i is programmed to (without the type
// bits; a 64-bit BAR's full address) and whether the BAR is implemented.
func (f *Function) BARAddress(i int) (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.barAddr(i)
}

func (f *Function) barAddr(i int) (uint64, bool) {
	if i < 0 || i >= NumBARs {
		return 0, false
	}
	le := binary.LittleEndian
	v := le.Uint32(f.cfg[RegBAR0+4*i:])
	switch f.bars[i].Kind {
	case BARIO:
		return uint64(v & barIOMask), true
	case BARMem32:
		return uint64(v & barMemMask), true
	case BARMem64:
		hi := le.Uint32(f.cfg[RegBAR0+4*i+4:])
		return uint64(hi)<<32 | uint64(v&barMemMask), true
	}
	return 0, false
}

// setBARAddress places BAR i at addr (the VMM's initial placement, as
// firmware does); addr must be aligned to the BAR's size.
func (f *Function) setBARAddress(i int, addr uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	le := binary.LittleEndian
	off := RegBAR0 + 4*i
	lo := le.Uint32(f.cfg[off:])
	switch f.bars[i].Kind {
	case BARIO:
		le.PutUint32(f.cfg[off:], lo&^barIOMask|uint32(addr)&barIOMask)
	case BARMem32:
		le.PutUint32(f.cfg[off:], lo&^barMemMask|uint32(addr)&barMemMask)
	case BARMem64:
		le.PutUint32(f.cfg[off:], lo&^barMemMask|uint32(addr)&barMemMask)
		le.PutUint32(f.cfg[off+4:], uint32(addr>>32))
	}
}

func (f *Function) enable(cmd uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	le := binary.LittleEndian
	le.PutUint16(f.cfg[RegCommand:], le.Uint16(f.cfg[RegCommand:])|cmd&cmdWritable)
}

// Regions returns the BARs that currently decode. A BAR decodes when the
// command register enables its space and it is placed at a non-zero
// address that fits its space (I/O below 64 KiB, memory below 2^64); a BAR
// at zero is unplaced, as on QEMU. The expansion ROM (Region.BAR ROMBAR)
// decodes when, besides, register 0x30's enable bit is set.
func (f *Function) Regions() []Region {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmd := binary.LittleEndian.Uint16(f.cfg[RegCommand:])
	var out []Region
	for i, b := range f.bars {
		if b.Kind == BARNone {
			continue
		}
		addr, _ := f.barAddr(i)
		if addr == 0 || addr+b.Size < addr {
			continue
		}
		switch b.Kind {
		case BARIO:
			if cmd&CmdIO == 0 || addr+b.Size > 1<<16 {
				continue
			}
			out = append(out, Region{Space: SpaceIO, Base: addr, Size: b.Size, BAR: i, Dev: b.Dev})
		default:
			if cmd&CmdMemory == 0 {
				continue
			}
			out = append(out, Region{Space: SpaceMemory, Base: addr, Size: b.Size, BAR: i, Dev: b.Dev})
		}
	}
	if f.rom.Kind != BARNone && cmd&CmdMemory != 0 {
		if addr, on := f.romAddr(); on && addr != 0 {
			out = append(out, Region{Space: SpaceMemory, Base: addr, Size: f.rom.Size, BAR: ROMBAR, Dev: f.rom.Dev})
		}
	}
	return out
}

// ROMSize is the size of the function's expansion ROM (0: none).
func (f *Function) ROMSize() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rom.Size
}

// setROMAddress places the expansion ROM at addr, not enabled, as
// firmware leaves a ROM it did not run.
func (f *Function) setROMAddress(addr uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	binary.LittleEndian.PutUint32(f.cfg[RegROM:], uint32(addr)&romMask)
}

// FunctionState is the guest-visible configuration space of a function
// (BARs, command, interrupt line, capability registers).
type FunctionState struct {
	Config []byte `json:"config"`
}

// Save returns the function's configuration space.
func (f *Function) Save() FunctionState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return FunctionState{Config: append([]byte(nil), f.cfg[:]...)}
}

// Restore loads a saved configuration space. Only the bits a guest can
// change are taken from s; the read-only bits (IDs, BAR types, capability
// layout) stay what this device model says, so a snapshot cannot make a
// function claim to be something else.
func (f *Function) Restore(s FunctionState) error {
	if len(s.Config) != ConfigSize {
		return fmt.Errorf("pci function restore: configuration space of %d bytes, want %d", len(s.Config), ConfigSize)
	}
	f.mu.Lock()
	for i := range f.cfg {
		m := f.wmsk[i] | f.w1c[i]
		f.cfg[i] = f.cfg[i]&^m | s.Config[i]&m
	}
	changed := f.changed
	f.mu.Unlock()
	if changed != nil {
		changed()
	}
	return nil
}
