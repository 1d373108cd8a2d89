// Package pci is govmm's PCI host bridge: PCI bus 0 with a host bridge
// function at 00:00.0, configuration access through the legacy ports
// (CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC, "mechanism #1") and
// through the PCI Express ECAM window (MMCONFIG), and the dispatch of port
// I/O and MMIO to the BARs the guest programmed. It exists so that devices
// (pci-testdev today, virtio and VFIO later) are found and configured by
// guests the way they find them on real machines and on QEMU: by
// enumerating bus 0 and reading the bridge's windows from ACPI.
//
// Function is the shared model of one function's configuration space
// (read-only and writable bits, BAR sizing, command register, capability
// list); Root holds the functions and routes configuration cycles to them.
// Everything a guest writes into configuration space, at any size, offset
// or alignment, is untrusted input with defined results: unimplemented
// registers read as zero or all ones and writes to them are dropped.
//
// The host bridge identifies as Red Hat's 1b36:0008 "QEMU PCIe host
// bridge" rather than an Intel chipset (q35's 8086:29c0, i440FX's
// 8086:1237): Linux binds chipset drivers (intel-agp, EDAC, SMBus and LPC
// quirks) to Intel IDs and expects the chipset's registers (PAM, SMRAM,
// PCIEXBAR) behind them. The Red Hat ID promises nothing but a standard
// header, and Linux's type-1 probe accepts any bus 0 that has a host bridge
// class device.
package pci

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"govmm/devices/bus"
)

// The host bridge's identity.
const (
	VendorRedHat       = 0x1b36
	DeviceRedHatHost   = 0x0008
	ClassBridge        = 0x06
	SubclassHostBridge = 0x00
	// NumSlots is the number of device numbers on a bus.
	NumSlots = 32
	// NumFuncs is the number of functions per device.
	NumFuncs = 8
)

// Windows are the address ranges the host bridge forwards to bus 0, and
// where the Root places BARs of the devices the VMM adds. End addresses
// are exclusive.
type Windows struct {
	IOBase, IOEnd       uint64 // where the VMM places I/O BARs
	Mem32Base, Mem32End uint64
	Mem64Base, Mem64End uint64
}

// Root is PCI bus 0 and its host bridge. Functions are added before the
// guest runs (Add), or hot-added and removed while it runs (HotAdd,
// Remove). It is safe for concurrent use.
type Root struct {
	win Windows
	// addMu serialises Add, HotAdd and Remove; funcs are read without it.
	addMu sync.Mutex
	funcs [NumSlots][NumFuncs]atomic.Pointer[Function]
	// next free addresses for BAR placement.
	nextIO, nextMem32, nextMem64 uint64

	// remapMu serialises rebuilding the decode tables, so the last table
	// stored reflects every configuration write that finished before it.
	remapMu sync.Mutex
	io, mem atomic.Pointer[[]Region]

	// addr is the CONFIG_ADDRESS latch of mechanism #1.
	addr atomic.Uint32
}

// NewRoot returns bus 0 with the host bridge at 00:00.0.
func NewRoot(w Windows) *Root {
	r := &Root{win: w, nextIO: w.IOBase, nextMem32: w.Mem32Base, nextMem64: w.Mem64Base}
	r.io.Store(&[]Region{})
	r.mem.Store(&[]Region{})
	host := NewFunction(Identity{Vendor: VendorRedHat, Device: DeviceRedHatHost, Class: ClassBridge, Subclass: SubclassHostBridge})
	host.changed = r.remap
	r.funcs[0][0].Store(host)
	return r
}

// Windows returns the windows the Root was built with.
func (r *Root) Windows() Windows { return r.win }

// Add puts f at slot (function 0), places its BARs in the windows and
// enables decoding, as firmware does before an OS starts, so guests
// without a PCI allocator of their own can use the device at once. A
// guest may move the BARs later.
func (r *Root) Add(slot int, f *Function) error {
	r.addMu.Lock()
	defer r.addMu.Unlock()
	if err := r.free(slot); err != nil {
		return err
	}
	var cmd uint16
	for i, b := range f.bars {
		var next *uint64
		var end uint64
		switch b.Kind {
		case BARNone:
			continue
		case BARIO:
			next, end, cmd = &r.nextIO, r.win.IOEnd, cmd|CmdIO
		case BARMem32:
			next, end, cmd = &r.nextMem32, r.win.Mem32End, cmd|CmdMemory
		case BARMem64:
			next, end, cmd = &r.nextMem64, r.win.Mem64End, cmd|CmdMemory
			if b.Size <= 1<<20 || r.win.Mem64End == r.win.Mem64Base {
				// Small 64-bit BARs go below 4 GiB, as firmware
				// places them, so 32-bit guests reach them too.
				next, end = &r.nextMem32, r.win.Mem32End
			}
		}
		at := (*next + b.Size - 1) &^ (b.Size - 1)
		if at < *next || at+b.Size > end {
			return fmt.Errorf("pci: slot %d BAR %d (%v, %#x bytes) does not fit in its window", slot, i, b.Kind, b.Size)
		}
		f.setBARAddress(i, at)
		*next = at + b.Size
	}
	if size := f.ROMSize(); size != 0 {
		// Placed below 4 GiB (the register has 32 bits) and left
		// disabled: the guest turns it on to read it.
		at := (r.nextMem32 + size - 1) &^ (size - 1)
		if at < r.nextMem32 || at+size > r.win.Mem32End {
			return fmt.Errorf("pci: slot %d expansion ROM (%#x bytes) does not fit in the 32-bit memory window", slot, size)
		}
		f.setROMAddress(at)
		r.nextMem32 = at + size
	}
	f.enable(cmd)
	r.attach(slot, f)
	return nil
}

// free checks that slot can take a function. Called with addMu held.
func (r *Root) free(slot int) error {
	if slot <= 0 || slot >= NumSlots {
		return fmt.Errorf("pci: slot %d out of range 1..%d", slot, NumSlots-1)
	}
	if r.funcs[slot][0].Load() != nil {
		return fmt.Errorf("pci: slot %d is taken", slot)
	}
	return nil
}

func (r *Root) attach(slot int, f *Function) {
	f.mu.Lock()
	f.changed = r.remap
	f.mu.Unlock()
	r.funcs[slot][0].Store(f)
	r.remap()
}

// HotAdd puts f at slot (function 0) while the guest runs. Unlike Add it
// leaves the BARs unplaced and decoding off: the guest's hotplug code
// (Linux's acpiphp) sizes them and assigns them space in the bridge's
// windows, which it knows and the VMM cannot know (the guest may have
// moved the other functions' BARs since boot).
func (r *Root) HotAdd(slot int, f *Function) error {
	r.addMu.Lock()
	defer r.addMu.Unlock()
	if err := r.free(slot); err != nil {
		return err
	}
	r.attach(slot, f)
	return nil
}

// Remove takes the function at slot off the bus (the guest ejected it)
// and returns it; nil if the slot is empty. Its BARs stop decoding at
// once.
func (r *Root) Remove(slot int) *Function {
	if slot <= 0 || slot >= NumSlots {
		return nil
	}
	r.addMu.Lock()
	defer r.addMu.Unlock()
	f := r.funcs[slot][0].Swap(nil)
	if f == nil {
		return nil
	}
	f.mu.Lock()
	f.changed = nil
	f.mu.Unlock()
	r.remap()
	return f
}

// Function returns the function at slot/fn on bus 0 (nil: none).
func (r *Root) Function(slot, fn int) *Function {
	if slot < 0 || slot >= NumSlots || fn < 0 || fn >= NumFuncs {
		return nil
	}
	return r.funcs[slot][fn].Load()
}

// lookupFunc returns the function a configuration cycle addresses: only
// bus 0 exists (Add places devices at function 0).
func (r *Root) lookupFunc(busNr, slot, fn int) *Function {
	if busNr != 0 {
		return nil
	}
	return r.Function(slot, fn)
}

// ReadConfig performs a configuration read of len(data) bytes at register
// reg of bus/slot/fn. Absent functions read as all ones (vendor 0xFFFF).
func (r *Root) ReadConfig(busNr, slot, fn, reg int, data []byte) {
	f := r.lookupFunc(busNr, slot, fn)
	if f == nil {
		fill(data)
		return
	}
	f.ReadConfig(reg, data)
}

// WriteConfig performs a configuration write; writes to absent functions
// are dropped.
func (r *Root) WriteConfig(busNr, slot, fn, reg int, data []byte) {
	if f := r.lookupFunc(busNr, slot, fn); f != nil {
		f.WriteConfig(reg, data)
	}
}

// remap rebuilds the I/O and memory decode tables from every function's
// decoding BARs.
func (r *Root) remap() {
	r.remapMu.Lock()
	defer r.remapMu.Unlock()
	var io, mem []Region
	for s := range r.funcs {
		for i := range r.funcs[s] {
			f := r.funcs[s][i].Load()
			if f == nil {
				continue
			}
			for _, reg := range f.Regions() {
				if reg.Space == SpaceIO {
					io = append(io, reg)
				} else {
					mem = append(mem, reg)
				}
			}
		}
	}
	sort.SliceStable(io, func(i, j int) bool { return io[i].Base < io[j].Base })
	sort.SliceStable(mem, func(i, j int) bool { return mem[i].Base < mem[j].Base })
	r.io.Store(&io)
	r.mem.Store(&mem)
}

// lookup returns the region containing addr. Tables hold a few BARs, so
// a linear scan is as fast as anything; where a guest makes BARs overlap,
// the one with the lower base (then the lower slot) answers.
func lookup(rs []Region, addr uint64) (bus.Device, uint64, bool) {
	for _, reg := range rs {
		if reg.Base <= addr && addr-reg.Base < reg.Size {
			return reg.Dev, addr - reg.Base, true
		}
	}
	return nil, 0, false
}

// IOSpace is the resolver for port I/O BARs, to hand to the port bus
// (bus.SetFallback): it answers ports no fixed device claims.
func (r *Root) IOSpace() bus.Resolver { return resolver{&r.io} }

// MemSpace is the resolver for memory BARs, for the MMIO bus.
func (r *Root) MemSpace() bus.Resolver { return resolver{&r.mem} }

type resolver struct{ p *atomic.Pointer[[]Region] }

func (s resolver) Lookup(addr uint64) (bus.Device, uint64, bool) { return lookup(*s.p.Load(), addr) }

// Regions returns the decoding BARs (I/O, then memory), for diagnostics
// and tests.
func (r *Root) Regions() []Region {
	return append(append([]Region(nil), *r.io.Load()...), *r.mem.Load()...)
}

// State is the bus's saved state: the CONFIG_ADDRESS latch and the
// configuration space of every function, by "slot.fn".
type State struct {
	ConfigAddress uint32                   `json:"config_address"`
	Functions     map[string]FunctionState `json:"functions"`
}

// Save returns the bus's state.
func (r *Root) Save() State {
	s := State{ConfigAddress: r.addr.Load(), Functions: map[string]FunctionState{}}
	for slot := range r.funcs {
		for fn := range r.funcs[slot] {
			if f := r.funcs[slot][fn].Load(); f != nil {
				s.Functions[fmt.Sprintf("%d.%d", slot, fn)] = f.Save()
			}
		}
	}
	return s
}

// Restore loads a saved state. The snapshot must name exactly the
// functions this bus has.
func (r *Root) Restore(s State) error {
	n := 0
	for slot := range r.funcs {
		for fn := range r.funcs[slot] {
			f := r.funcs[slot][fn].Load()
			if f == nil {
				continue
			}
			key := fmt.Sprintf("%d.%d", slot, fn)
			fs, ok := s.Functions[key]
			if !ok {
				return fmt.Errorf("pci restore: the snapshot has no function %s", key)
			}
			if err := f.Restore(fs); err != nil {
				return fmt.Errorf("pci restore: function %s: %w", key, err)
			}
			n++
		}
	}
	if len(s.Functions) != n {
		return fmt.Errorf("pci restore: the snapshot has %d functions, the machine %d", len(s.Functions), n)
	}
	r.addr.Store(s.ConfigAddress)
	r.remap()
	return nil
}

func fill(b []byte) {
	for i := range b {
		b[i] = 0xff
	}
}

// le32 reads up to 4 bytes little-endian.
func le32(b []byte) uint32 {
	var v [4]byte
	copy(v[:], b)
	return binary.LittleEndian.Uint32(v[:])
}
