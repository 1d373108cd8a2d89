// Package ioapic emulates an 82093AA-compatible I/O APIC in userspace,
// with the EOI register of the later I/O APICs (version 0x20, as in the
// ICH chipsets and QEMU's IOAPIC).
//
// govmm runs the local APICs in the kernel (KVM split irqchip) or in the
// hypervisor (MSHV), and everything else in the VMM; the IOAPIC is the part
// that turns pin levels into APIC messages. It delivers each interrupt as an
// MSI (address/data in the format both KVM and MSHV decode) through a
// Deliver callback, and it learns about end-of-interrupt for level-triggered
// vectors from the VM layer (KVM_EXIT_IOAPIC_EOI, MSHV's APIC-EOI message)
// through EOI.
//
// Pin levels are logical: SetPin(pin, true) means "asserted", whatever the
// programmed polarity, as KVM's and QEMU's IOAPICs treat them.
//
// Each pin has a second input for resample irqfds (SetResampleInput),
// OR'ed with the SetPin level the way KVM ORs its IRQ sources. It follows
// KVM's in-kernel resampler: when the guest EOIs the pin's level interrupt,
// that input is deasserted before Remote IRR is cleared (so only the
// device lines that are still high redeliver), and the pin's resampler is
// called so the irqfd's owner can assert again if it still needs service.
package ioapic

import (
	"fmt"
	"log/slog"
	"sync"

	"govmm/accel"
)

// NumPins is the number of redirection entries (version register max
// redirection entry 0x17).
const NumPins = 24

// Version is the value of the version register: version 0x20 (an I/O
// APIC with an EOI register) with NumPins-1 as the maximum redirection
// entry.
//
// Version 0x20 is what saves exits: Linux ends a level interrupt whose
// IOAPIC chip is "IR-IO-APIC" (interrupt remapping, as a guest of
// Hyper-V has it, hence every Linux guest on MSHV) with an explicit EOI
// of the pin after the LAPIC's. With an EOI register that is one write;
// an 82093AA (0x11) has none, and Linux then reads the entry and writes
// it twice (masked and edge-triggered, then as it was: 12 accesses, each
// an exit to the VMM), which also clears Remote IRR without an EOI, so
// the pin's resample irqfds are not told.
const Version = 0x20 | (NumPins-1)<<16

// MMIO register offsets within the 4 KiB window.
const (
	RegSel = 0x00
	RegWin = 0x10
	// RegEOI is the EOI register (version 0x20): a 32-bit write of a
	// vector ends the level interrupts in service with that vector, as
	// a LAPIC's EOI broadcast does.
	RegEOI = 0x40
)

// Indirect register indices.
const (
	IndexID      = 0x00
	IndexVersion = 0x01
	IndexArb     = 0x02
	IndexRedTbl  = 0x10
)

// Redirection entry bits.
const (
	RedVector       = 0xff
	RedDelModeShift = 8
	RedDestLogical  = 1 << 11
	RedDelivStatus  = 1 << 12
	RedPolarityLow  = 1 << 13
	RedRemoteIRR    = 1 << 14
	RedLevel        = 1 << 15
	RedMasked       = 1 << 16
	RedDestShift    = 56
	// redWritable are the bits software may change (the rest are
	// read-only or reserved).
	redWritable uint64 = 0xff<<56 | RedMasked | RedLevel | RedPolarityLow | RedDestLogical | 7<<8 | 0xff
)

// Delivery modes (redirection entry bits 8-10, MSI data bits 8-10).
const (
	DelFixed    = 0
	DelLowest   = 1
	DelSMI      = 2
	DelNMI      = 4
	DelINIT     = 5
	DelExtINT   = 7
	msiAddrBase = 0xFEE00000
)

// MSIFromEntry encodes what a redirection entry delivers as the MSI
// message KVM (kvm_set_msi_irq) and MSHV (mshv_copy_girq_info) decode:
// address 0xFEE00000 | dest<<12 | logical<<2, data vector | mode<<8 |
// level<<15 (with the assert bit 14 set for level triggered messages).
func MSIFromEntry(e uint64) accel.MSI {
	addr := uint32(msiAddrBase) | uint32(e>>RedDestShift)<<12
	if e&RedDestLogical != 0 {
		addr |= 1 << 2
	}
	data := uint32(e&RedVector) | uint32(e>>RedDelModeShift&7)<<8
	if e&RedLevel != 0 {
		data |= 1<<15 | 1<<14
	}
	return accel.MSI{AddressLo: addr, Data: data}
}

// Config wires an IOAPIC to the rest of the VM.
type Config struct {
	// Deliver sends one interrupt message (accel.VM.SignalMSI). It is
	// called with the IOAPIC's lock held and must not call back into it.
	Deliver func(accel.MSI) error
	// RoutesChanged, if set, is called (without the lock held) after the
	// guest changed a redirection entry, so the VM layer can mirror the
	// entries into the accelerator's GSI routing table (KVM only sends
	// IOAPIC EOI exits for level-triggered vectors it finds there).
	RoutesChanged func()
	Log           *slog.Logger
}

// State is the IOAPIC's saved state.
type State struct {
	ID     uint8           `json:"id"`
	RegSel uint32          `json:"regsel"`
	Redir  [NumPins]uint64 `json:"redir"`
	// IRR holds edge requests not yet delivered (latched while masked or
	// while the delivery failed) and, for level pins, the line level.
	IRR uint32 `json:"irr"`
	// Level is the current logical level of every pin.
	Level uint32 `json:"level"`
}

// IOAPIC is one I/O APIC. It implements bus.Device for its MMIO window.
type IOAPIC struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	s  State
	// line is the SetPin input and rs the resample-irqfd input of every
	// pin; s.Level is their OR.
	line, rs uint32
	// resamplers are called after the guest EOIs a pin's interrupt.
	resamplers [NumPins]func()
	// failures counts Deliver errors (logged once).
	failures uint64
	// Per pin, for diagnostics (Pins): interrupts delivered, EOIs that
	// cleared Remote IRR, and Remote IRRs cleared by the guest
	// reprogramming the entry as edge-triggered (Linux's EOI for an
	// IOAPIC without an EOI register: mask and edge, then level again).
	delivered, eois, edgeClears [NumPins]uint64
}

// New returns an IOAPIC in its reset state (all pins masked).
func New(cfg Config) *IOAPIC {
	a := &IOAPIC{cfg: cfg, log: cfg.Log}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.cfg.Deliver == nil {
		a.cfg.Deliver = func(accel.MSI) error { return nil }
	}
	a.reset()
	return a
}

func (a *IOAPIC) reset() {
	a.s = State{}
	a.line, a.rs = 0, 0
	for i := range a.s.Redir {
		a.s.Redir[i] = RedMasked
	}
}

// Reset puts the IOAPIC back in its power-on state. Resample inputs that
// were asserted are dropped and their resamplers called, so their owners
// assert again if they still need service.
func (a *IOAPIC) Reset() {
	a.mu.Lock()
	notify := a.resamplersOf(a.rs)
	a.reset()
	a.mu.Unlock()
	for _, fn := range notify {
		fn()
	}
	a.routesChanged()
}

// resamplersOf returns the resamplers of the pins in mask. Called with mu
// held.
func (a *IOAPIC) resamplersOf(mask uint32) []func() {
	var fns []func()
	for pin := 0; pin < NumPins; pin++ {
		if mask&(1<<pin) != 0 && a.resamplers[pin] != nil {
			fns = append(fns, a.resamplers[pin])
		}
	}
	return fns
}

func (a *IOAPIC) routesChanged() {
	if a.cfg.RoutesChanged != nil {
		a.cfg.RoutesChanged()
	}
}

// Read implements bus.Device.
func (a *IOAPIC) Read(offset uint64, data []byte) {
	var v uint32
	a.mu.Lock()
	switch offset &^ 3 {
	case RegSel:
		v = a.s.RegSel
	case RegWin:
		v = a.readReg(a.s.RegSel)
	default:
		v = 0
	}
	a.mu.Unlock()
	shift := (offset & 3) * 8
	for i := range data {
		if uint64(i)*8+shift < 32 {
			data[i] = byte(v >> (shift + uint64(i)*8))
		} else {
			data[i] = 0
		}
	}
}

// Write implements bus.Device. Only 32-bit accesses to IOREGSEL and IOWIN
// are defined; narrower writes update only the bytes written.
func (a *IOAPIC) Write(offset uint64, data []byte) {
	a.mu.Lock()
	base := offset &^ 3
	shift := (offset & 3) * 8
	merge := func(old uint32) uint32 {
		v := old
		for i, b := range data {
			s := shift + uint64(i)*8
			if s >= 32 {
				break
			}
			v = v&^(0xff<<s) | uint32(b)<<s
		}
		return v
	}
	changed := false
	switch base {
	case RegSel:
		a.s.RegSel = merge(a.s.RegSel) & 0xff
	case RegWin:
		changed = a.writeReg(a.s.RegSel, merge(a.readReg(a.s.RegSel)))
	case RegEOI:
		a.mu.Unlock()
		// Only a whole 32-bit write counts (as in QEMU's IOAPIC).
		if offset == RegEOI && len(data) == 4 {
			a.EOI(data[0])
		}
		return
	}
	a.mu.Unlock()
	if changed {
		a.routesChanged()
	}
}

func (a *IOAPIC) readReg(idx uint32) uint32 {
	switch {
	case idx == IndexID:
		return uint32(a.s.ID&0xf) << 24
	case idx == IndexVersion:
		return Version
	case idx == IndexArb:
		return uint32(a.s.ID&0xf) << 24
	case idx >= IndexRedTbl && idx < IndexRedTbl+2*NumPins:
		e := a.s.Redir[(idx-IndexRedTbl)/2]
		if idx&1 == 0 {
			return uint32(e)
		}
		return uint32(e >> 32)
	}
	return 0
}

// writeReg writes an indirect register and reports whether a redirection
// entry changed.
func (a *IOAPIC) writeReg(idx uint32, v uint32) bool {
	switch {
	case idx == IndexID:
		a.s.ID = uint8(v>>24) & 0xf
	case idx >= IndexRedTbl && idx < IndexRedTbl+2*NumPins:
		pin := int(idx-IndexRedTbl) / 2
		old := a.s.Redir[pin]
		var n uint64
		if idx&1 == 0 {
			n = old&^0xffffffff | uint64(v)
		} else {
			n = old&0xffffffff | uint64(v)<<32
		}
		n = old&^redWritable | n&redWritable
		if n&RedLevel == 0 {
			// An edge-triggered entry has no Remote IRR.
			if n&RedRemoteIRR != 0 {
				a.edgeClears[pin]++
			}
			n &^= RedRemoteIRR
		}
		a.s.Redir[pin] = n
		if old == n {
			return false
		}
		a.service(pin)
		return true
	}
	return false
}

// SetPin sets the logical level of pin. A rising edge on an edge-triggered
// pin latches a request; a level-triggered pin requests service while high.
// Out-of-range pins are ignored.
func (a *IOAPIC) SetPin(pin int, high bool) {
	if pin < 0 || pin >= NumPins {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.line = setBit(a.line, pin, high)
	a.drive(pin)
}

// SetResampleInput drives pin's resample-irqfd input (one input shared by
// every resample irqfd on the pin, as KVM's resampler source is). The EOI
// of the pin's interrupt deasserts it again. Out-of-range pins are ignored.
func (a *IOAPIC) SetResampleInput(pin int, high bool) {
	if pin < 0 || pin >= NumPins {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rs = setBit(a.rs, pin, high)
	a.drive(pin)
}

// SetResampler sets fn (nil removes it), called without the IOAPIC's lock
// each time the guest EOIs pin's level interrupt, after the pin's resample
// input was deasserted.
func (a *IOAPIC) SetResampler(pin int, fn func()) {
	if pin < 0 || pin >= NumPins {
		return
	}
	a.mu.Lock()
	a.resamplers[pin] = fn
	a.mu.Unlock()
}

func setBit(m uint32, pin int, on bool) uint32 {
	if on {
		return m | 1<<pin
	}
	return m &^ (1 << pin)
}

// drive updates pin's level from its two inputs and requests service.
// Called with mu held.
func (a *IOAPIC) drive(pin int) {
	bit := uint32(1) << pin
	was := a.s.Level&bit != 0
	if (a.line|a.rs)&bit == 0 {
		a.s.Level &^= bit
		if a.s.Redir[pin]&RedLevel != 0 {
			a.s.IRR &^= bit
		}
		return
	}
	a.s.Level |= bit
	if a.s.Redir[pin]&RedLevel != 0 {
		a.s.IRR |= bit
	} else if !was {
		a.s.IRR |= bit
	}
	a.service(pin)
}

// EOI is the end-of-interrupt broadcast for vector from a local APIC (or
// a write of the EOI register): it clears Remote IRR of every
// level-triggered entry with that vector and re-delivers those whose line
// is still asserted.
//
// A pin with a resampler first has its resample input deasserted (as KVM's
// irqfd resampler does before the IOAPIC clears Remote IRR), and the
// resampler is called after the lock is released.
func (a *IOAPIC) EOI(vector uint8) {
	var notify []func()
	a.mu.Lock()
	for pin := range a.s.Redir {
		e := a.s.Redir[pin]
		if e&RedLevel == 0 || uint8(e) != vector || e&RedRemoteIRR == 0 {
			continue
		}
		bit := uint32(1) << pin
		if fn := a.resamplers[pin]; fn != nil {
			notify = append(notify, fn)
			if a.rs&bit != 0 {
				a.rs &^= bit
				if a.line&bit == 0 {
					a.s.Level &^= bit
					a.s.IRR &^= bit
				}
			}
		}
		a.s.Redir[pin] = e &^ RedRemoteIRR
		a.eois[pin]++
		if a.s.Level&bit != 0 {
			a.s.IRR |= bit
		}
		a.service(pin)
	}
	a.mu.Unlock()
	for _, fn := range notify {
		fn()
	}
}

// service delivers pin's pending request if the entry allows it.
func (a *IOAPIC) service(pin int) {
	bit := uint32(1) << pin
	e := a.s.Redir[pin]
	if a.s.IRR&bit == 0 || e&RedMasked != 0 {
		return
	}
	level := e&RedLevel != 0
	if level {
		if e&RedRemoteIRR != 0 {
			return
		}
		if a.s.Level&bit == 0 {
			a.s.IRR &^= bit
			return
		}
	}
	if err := a.cfg.Deliver(MSIFromEntry(e)); err != nil {
		a.failures++
		if a.failures == 1 {
			a.log.Error("ioapic: delivering interrupt failed", "pin", pin, "entry", fmt.Sprintf("%#x", e), "err", err)
		}
		return
	}
	a.delivered[pin]++
	if level {
		a.s.Redir[pin] = e | RedRemoteIRR
	} else {
		a.s.IRR &^= bit
	}
}

// PinRoute returns the message pin's entry delivers and whether the entry
// is masked, for mirroring into the accelerator's GSI routing table.
func (a *IOAPIC) PinRoute(pin int) (msi accel.MSI, masked bool) {
	if pin < 0 || pin >= NumPins {
		return accel.MSI{}, true
	}
	a.mu.Lock()
	e := a.s.Redir[pin]
	a.mu.Unlock()
	return MSIFromEntry(e), e&RedMasked != 0
}

// Save returns the IOAPIC's state. Resample inputs are not part of it:
// their irqfds are assigned again after a restore, and their owners assert
// again on the first resample (an in-service interrupt's EOI).
func (a *IOAPIC) Save() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.s
	only := a.rs &^ a.line
	s.Level &^= only
	for pin := 0; pin < NumPins; pin++ {
		if only&(1<<pin) != 0 && s.Redir[pin]&RedLevel != 0 {
			s.IRR &^= 1 << pin
		}
	}
	return s
}

// Restore loads a saved state. Nothing is delivered: pending requests are
// delivered on the next pin change, EOI or redirection write, as the chip
// would after the state it was saved in.
func (a *IOAPIC) Restore(s State) error {
	if s.ID > 0xf {
		return fmt.Errorf("ioapic restore: id %d does not fit in 4 bits", s.ID)
	}
	if s.RegSel > 0xff {
		return fmt.Errorf("ioapic restore: IOREGSEL %#x out of range", s.RegSel)
	}
	for i, e := range s.Redir {
		if e&^(redWritable|RedRemoteIRR|RedDelivStatus) != 0 {
			return fmt.Errorf("ioapic restore: redirection entry %d has reserved bits set (%#x)", i, e)
		}
	}
	a.mu.Lock()
	a.s = s
	a.line, a.rs = s.Level, 0
	a.mu.Unlock()
	a.routesChanged()
	return nil
}

// PinState is one pin as a person debugging a lost interrupt looks at it:
// its redirection entry (Remote IRR included), the logical level of each
// input and whether a request is latched.
type PinState struct {
	Pin   int
	Entry uint64
	// Line is the SetPin input, Resample the resample-irqfd input;
	// Level their OR.
	Line, Resample, Level bool
	// Requested is the pin's IRR bit: a request not yet delivered (an
	// edge latched, or a level pin high).
	Requested bool
	// Resampler says whether a resample irqfd's owner is told of EOIs.
	Resampler bool
	// Delivered counts the interrupts sent, EOIs the EOIs that cleared
	// Remote IRR, EdgeClears the Remote IRRs cleared by an edge-triggered
	// rewrite of the entry (no EOI seen: the resample input stays up).
	Delivered, EOIs, EdgeClears uint64
}

// Pins returns the state of every pin that is unmasked or has anything
// asserted, latched or in service, in pin order.
func (a *IOAPIC) Pins() []PinState {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []PinState
	for pin := 0; pin < NumPins; pin++ {
		bit := uint32(1) << pin
		p := PinState{Pin: pin, Entry: a.s.Redir[pin], Line: a.line&bit != 0, Resample: a.rs&bit != 0,
			Level: a.s.Level&bit != 0, Requested: a.s.IRR&bit != 0, Resampler: a.resamplers[pin] != nil,
			Delivered: a.delivered[pin], EOIs: a.eois[pin], EdgeClears: a.edgeClears[pin]}
		if p.Entry&RedMasked != 0 && p.Entry&RedRemoteIRR == 0 && !p.Level && !p.Requested {
			continue
		}
		out = append(out, p)
	}
	return out
}
