// Package chipset builds the PC's userspace interrupt hardware (the IOAPIC,
// the 8259A pair and the GSI routing table) and the GSI lines devices
// raise, so the VM layer wires interrupts in a handful of calls and no
// device knows which controller or accelerator is behind its line.
//
// ISA IRQs 0-15 reach both the PIC and the IOAPIC (IRQ0 on IOAPIC pin 2, as
// the MADT's interrupt source override says; IRQ2 is the PIC cascade and
// Line(2) drives IOAPIC pin 2 only); GSIs 16-23 reach the IOAPIC only.
// IOAPIC redirection entries are mirrored into GSIs 0-23 of the routing
// table, because KVM's split irqchip only reports the EOI of a
// level-triggered vector (KVM_EXIT_IOAPIC_EOI) that it finds there.
//
// Wiring in the VM layer:
//
//	cs, err := chipset.New(vm, func() { bsp.Kick() })  // or NewWithConfig
//	if err != nil { ... }
//	defer cs.Close()                           // deassigns every irqfd/ioeventfd
//	if err := cs.Register(pioBus, mmioBus); err != nil { ... } // IOAPIC at 0xFEC00000, PIC, ELCR
//	bsp.(accel.ExtINTReceiver).SetExtINTSource(cs.PIC())
//	serial := serial.New(..., cs.Line(platform.IRQCOM1))   // IRQ4
//	rtc := rtc.New(..., cs.Line(platform.IRQRTC))          // IRQ8
//	pit := pit.New(cs.Line(platform.IRQPIT))               // IRQ0 (IOAPIC pin 2)
//	pm := acpipm.New(acpipm.Config{SCI: cs.Line(platform.IRQSCI), ...}) // IRQ9
//	// in every vCPU loop:
//	case accel.ExitIOAPICEOI: cs.EOI(exit.Vector)
//
// Devices with MSIs use cs.Routes() (allocate a GSI, SetMSI, Commit, irqfd).
// A level-triggered source outside govmm's device models (a VFIO INTx line,
// a vhost device) takes a resample irqfd on an IOAPIC pin,
// cs.Routes().NewIRQFD(pin, true) or AssignIRQFD(trigger, pin, resample):
// the routing table serves it in userspace through the IOAPIC, whose EOI
// path (cs.EOI) deasserts the pin and signals the resample eventfd, on
// every accelerator.
package chipset

import (
	"fmt"
	"log/slog"
	"sync"

	"govmm/accel"
	"govmm/devices/bus"
	"govmm/irq"
	"govmm/irq/ioapic"
	"govmm/irq/pic"
	"govmm/irq/routes"
	"govmm/platform"
)

// Config is what the chipset needs from the VM.
type Config struct {
	// VM delivers IOAPIC messages (SignalMSI) and takes the routing
	// table, irqfds and ioeventfds.
	VM accel.VM
	// Kick is called when the PIC's INTR output rises: the VM layer kicks
	// the BSP so its backend consults the ExtINT source again.
	Kick func()
	Log  *slog.Logger
}

// Chipset is the userspace interrupt hardware of one VM.
type Chipset struct {
	ioapic *ioapic.IOAPIC
	pic    *pic.PIC
	routes *routes.Table
	log    *slog.Logger

	ackMu   sync.Mutex
	irqAcks map[int][]func() // ISA IRQ (PIC) -> handlers

	// mirrorMu makes each mirror read the entries and commit them as
	// one step: two vCPUs rewriting entries at once (Linux holds its
	// ioapic_lock across an access, but a guest need not) could
	// otherwise commit a route one of them read before the other's
	// write, after the other's own commit.
	mirrorMu sync.Mutex
}

// IOAPIC is the I/O APIC (MMIO at 0xFEC00000).
func (c *Chipset) IOAPIC() *ioapic.IOAPIC { return c.ioapic }

// PIC is the 8259A pair; it is the BSP's accel.ExtINTSource.
func (c *Chipset) PIC() *pic.PIC { return c.pic }

// Routes is the VM's GSI routing table (MSI routes, irqfds, ioeventfds).
func (c *Chipset) Routes() *routes.Table { return c.routes }

// State is the chipset's saved state.
type State struct {
	IOAPIC ioapic.State `json:"ioapic"`
	PIC    pic.State    `json:"pic"`
	Routes routes.State `json:"routes"`
}

// New builds the chipset for vm; kick is called when the PIC's INTR output
// rises (kick the BSP).
func New(vm accel.VM, kick func()) (*Chipset, error) {
	return NewWithConfig(Config{VM: vm, Kick: kick})
}

// NewWithConfig builds the chipset and commits the initial routing table
// (GSIs 0-23 reserved for the IOAPIC pins).
func NewWithConfig(cfg Config) (*Chipset, error) {
	if cfg.VM == nil {
		return nil, fmt.Errorf("chipset: no VM")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	c := &Chipset{log: log, routes: routes.New(cfg.VM, log), irqAcks: map[int][]func(){}}
	c.ioapic = ioapic.New(ioapic.Config{Deliver: cfg.VM.SignalMSI, RoutesChanged: c.mirror, Log: log})
	c.routes.SetPinController(c.ioapic)
	c.pic = pic.New(cfg.Kick)
	c.pic.SetAcked(c.irqAcked)
	if err := c.routes.Commit(); err != nil {
		return nil, fmt.Errorf("chipset: initial GSI routing: %w", err)
	}
	return c, nil
}

func (c *Chipset) irqAcked(irq int) {
	c.ackMu.Lock()
	fs := c.irqAcks[irq]
	c.ackMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// mirror copies the unmasked redirection entries into GSIs 0-23. Masked
// entries keep their last route, as QEMU does: a level interrupt in service
// when the guest masks its pin must still produce an EOI exit.
func (c *Chipset) mirror() {
	c.mirrorMu.Lock()
	defer c.mirrorMu.Unlock()
	for pin := 0; pin < ioapic.NumPins; pin++ {
		msi, masked := c.ioapic.PinRoute(pin)
		if masked {
			continue
		}
		if err := c.routes.SetMSI(uint32(pin), msi); err != nil {
			c.log.Error("chipset: mirror IOAPIC pin route", "pin", pin, "err", err)
		}
	}
	if err := c.routes.Commit(); err != nil {
		c.log.Error("chipset: commit IOAPIC routes", "err", err)
	}
}

// Register puts the IOAPIC on the MMIO bus and the PIC pair and ELCR on the
// port bus.
func (c *Chipset) Register(pio, mmio *bus.Bus) error {
	if err := mmio.Register(platform.IOAPICBase, platform.IOAPICSize, "ioapic", c.ioapic); err != nil {
		return err
	}
	return c.pic.Register(pio)
}

// ExtINT is the PIC as the BSP's ExtINT source.
func (c *Chipset) ExtINT() accel.ExtINTSource { return c.pic }

// EOI forwards a level-triggered EOI (ExitIOAPICEOI) to the IOAPIC.
func (c *Chipset) EOI(vector uint8) { c.ioapic.EOI(vector) }

type line struct {
	c      *Chipset
	picIRQ int // -1: none
	pin    int // -1: none
}

func (l line) Set(high bool) {
	if l.picIRQ >= 0 {
		l.c.pic.SetIRQ(l.picIRQ, high)
	}
	if l.pin >= 0 {
		l.c.ioapic.SetPin(l.pin, high)
	}
}

func (l line) Pulse() {
	l.Set(true)
	l.Set(false)
}

// OnAck implements irq.AckNotifier: fn runs when the PIC acknowledges the
// line's IRQ (the INTA cycle the accelerator backend performs when it
// injects the ExtINT). IOAPIC deliveries are not reported: a split
// irqchip reports EOIs of level-triggered vectors only, and the software
// KVM of the project's machines reports even those late (when the vCPU
// next wakes), which would stall a timer waiting for them.
func (l line) OnAck(fn func()) {
	if l.picIRQ < 0 {
		return
	}
	c := l.c
	c.ackMu.Lock()
	c.irqAcks[l.picIRQ] = append(c.irqAcks[l.picIRQ], fn)
	c.ackMu.Unlock()
}

// AckExpected implements irq.AckNotifier: an edge is acknowledged only
// while the PIC has the line's IRQ unmasked.
func (l line) AckExpected() bool { return l.picIRQ >= 0 && !l.c.pic.Masked(l.picIRQ) }

// Line returns the line of gsi: 0-15 are ISA IRQs (PIC and IOAPIC; IRQ0 is
// IOAPIC pin 2), 16-23 IOAPIC pins. Other numbers give a line connected to
// nothing (and are logged).
func (c *Chipset) Line(gsi int) irq.Line {
	switch {
	case gsi == platform.IRQPIT:
		return line{c, 0, platform.GSIPIT}
	case gsi == 2:
		return line{c, -1, 2}
	case gsi > 0 && gsi < 16:
		return line{c, gsi, gsi}
	case gsi >= 16 && gsi < ioapic.NumPins:
		return line{c, -1, gsi}
	}
	c.log.Error("chipset: no such GSI line", "gsi", gsi)
	return irq.NoLine{}
}

// Save returns the chipset's state.
func (c *Chipset) Save() State {
	return State{IOAPIC: c.ioapic.Save(), PIC: c.pic.Save(), Routes: c.routes.Save()}
}

// Restore loads a saved state and commits the routing table.
func (c *Chipset) Restore(s State) error {
	if err := c.routes.Restore(s.Routes); err != nil {
		return err
	}
	if err := c.pic.Restore(s.PIC); err != nil {
		return err
	}
	if err := c.ioapic.Restore(s.IOAPIC); err != nil {
		return err
	}
	return c.routes.Commit()
}

// Reset returns the IOAPIC and PIC to their power-on state (platform reset).
func (c *Chipset) Reset() {
	c.pic.Reset()
	c.ioapic.Reset()
}

// Close deassigns every irqfd and ioeventfd still assigned.
func (c *Chipset) Close() error { return c.routes.Close() }
