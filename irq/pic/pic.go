// Package pic emulates the PC's pair of cascaded 8259A programmable
// interrupt controllers in userspace.
//
// Guests that never switch to the IOAPIC (old kernels, real-mode code, the
// PIC-only test guest) take their interrupts from the PIC as ExtINT through
// the BSP's LINT0. The accelerator backend pulls them through the
// accel.ExtINTSource interface (Pending, then Ack as the INTA cycle) before
// entering the guest; the PIC calls an onChange callback when its INTR
// output rises so the VM layer can kick the BSP out of the guest.
//
// The model follows the 8259A datasheet: ICW1-ICW4 initialisation, OCW1
// (mask), OCW2 (non-specific/specific EOI, rotation, priority), OCW3
// (IRR/ISR read, poll, special mask), auto-EOI, special fully nested mode,
// cascade on master IRQ2 and edge/level sensing per the ELCR registers at
// 0x4D0/0x4D1.
package pic

import (
	"fmt"
	"sync"

	"govmm/devices/bus"
	"govmm/platform"
)

// ChipState is one 8259A's saved state.
type ChipState struct {
	IRR      uint8 `json:"irr"`
	ISR      uint8 `json:"isr"`
	IMR      uint8 `json:"imr"`
	LastIRR  uint8 `json:"last_irr"` // line levels seen, for edge detection
	ELCR     uint8 `json:"elcr"`
	IRQBase  uint8 `json:"irq_base"`
	PrioAdd  uint8 `json:"prio_add"` // IR with lowest priority is PrioAdd-1
	ReadISR  bool  `json:"read_isr"`
	Poll     bool  `json:"poll"`
	SpecMask bool  `json:"special_mask"`
	// InitState is 0 when initialised, 1-3 while expecting ICW2-ICW4.
	InitState     uint8 `json:"init_state"`
	Init4         bool  `json:"init4"`
	Single        bool  `json:"single"`
	LTIM          bool  `json:"ltim"` // ICW1 level-triggered mode
	AutoEOI       bool  `json:"auto_eoi"`
	RotateAutoEOI bool  `json:"rotate_auto_eoi"`
	SFNM          bool  `json:"sfnm"` // special fully nested mode
}

// State is the saved state of the PIC pair.
type State struct {
	Master ChipState `json:"master"`
	Slave  ChipState `json:"slave"`
	// Lines are the levels of the 16 ISA IRQ inputs.
	Lines uint16 `json:"lines"`
	// Output is the INTR output level.
	Output bool `json:"output"`
}

// ELCR masks: IRQ0-2 on the master and IRQ8/IRQ13 on the slave are always
// edge triggered.
const (
	elcrMaskMaster = 0xf8
	elcrMaskSlave  = 0xde
)

// PIC is the cascaded pair. It implements accel.ExtINTSource.
type PIC struct {
	onChange func()
	acked    func(irq int)

	mu sync.Mutex
	s  State
}

// New returns a PIC pair in its power-on state. onChange (may be nil) is
// called, without the PIC's lock held, each time the INTR output rises.
func New(onChange func()) *PIC {
	p := &PIC{onChange: onChange}
	p.reset()
	return p
}

func (p *PIC) reset() {
	p.s = State{}
}

// SetAcked registers fn, called (without the PIC's lock held) with the ISA
// IRQ number each INTA cycle acknowledges (not for spurious IRQ7/15).
// Call it before the vCPUs run.
func (p *PIC) SetAcked(fn func(irq int)) { p.acked = fn }

// Reset returns both chips to power-on state (the ELCRs too).
func (p *PIC) Reset() {
	p.mu.Lock()
	p.reset()
	p.mu.Unlock()
}

func (c *ChipState) level(irq int) bool {
	return c.LTIM || c.ELCR&(1<<irq) != 0
}

// setIRQ is the chip's input pin.
func (c *ChipState) setIRQ(irq int, high bool) {
	m := uint8(1) << irq
	if c.level(irq) {
		if high {
			c.IRR |= m
			c.LastIRR |= m
		} else {
			c.IRR &^= m
			c.LastIRR &^= m
		}
		return
	}
	if high {
		if c.LastIRR&m == 0 {
			c.IRR |= m
		}
		c.LastIRR |= m
	} else {
		c.LastIRR &^= m
	}
}

// priority returns the priority (0 highest) of the highest set bit of mask
// under the current rotation, or 8 if mask is empty.
func (c *ChipState) priority(mask uint8) int {
	if mask == 0 {
		return 8
	}
	p := 0
	for mask&(1<<((p+int(c.PrioAdd))&7)) == 0 {
		p++
	}
	return p
}

// getIRQ returns the IR the chip would request the CPU for, or -1.
func (c *ChipState) getIRQ(master bool) int {
	p := c.priority(c.IRR &^ c.IMR)
	if p == 8 {
		return -1
	}
	inService := c.ISR
	if c.SpecMask {
		inService &^= c.IMR
	}
	if c.SFNM && master {
		// The slave may interrupt a slave interrupt in service.
		inService &^= 1 << 2
	}
	if p < c.priority(inService) {
		return (p + int(c.PrioAdd)) & 7
	}
	return -1
}

// intack is the chip's part of an INTA cycle for irq.
func (c *ChipState) intack(irq int) {
	if c.AutoEOI {
		if c.RotateAutoEOI {
			c.PrioAdd = uint8(irq+1) & 7
		}
	} else {
		c.ISR |= 1 << irq
	}
	if !c.level(irq) {
		c.IRR &^= 1 << irq
	}
}

// update propagates the slave's request to master IR2 and recomputes the
// INTR output; it reports whether the output rose.
func (p *PIC) update() bool {
	p.s.Master.setIRQ(2, p.s.Slave.getIRQ(false) >= 0)
	out := p.s.Master.getIRQ(true) >= 0
	rose := out && !p.s.Output
	p.s.Output = out
	return rose
}

func (p *PIC) unlockNotify(rose bool) {
	p.mu.Unlock()
	if rose && p.onChange != nil {
		p.onChange()
	}
}

// SetIRQ sets the level of ISA IRQ irq (0-15). IRQ2 is the cascade input
// and cannot be driven; the ISA IRQ2 line (IRQ9 on the AT) is irq 9.
func (p *PIC) SetIRQ(irq int, high bool) {
	if irq < 0 || irq > 15 || irq == 2 {
		return
	}
	p.mu.Lock()
	if high {
		p.s.Lines |= 1 << irq
	} else {
		p.s.Lines &^= 1 << irq
	}
	if irq < 8 {
		p.s.Master.setIRQ(irq, high)
	} else {
		p.s.Slave.setIRQ(irq-8, high)
	}
	p.unlockNotify(p.update())
}

// Masked reports whether ISA IRQ irq is masked: by its own chip's IMR
// or, for IRQs 8-15, by the master's mask of the cascade input.
func (p *PIC) Masked(irq int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if irq < 8 {
		return p.s.Master.IMR>>irq&1 != 0
	}
	return p.s.Master.IMR>>2&1 != 0 || p.s.Slave.IMR>>(irq-8)&1 != 0
}

// Pending reports whether the INTR output is asserted.
func (p *PIC) Pending() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.s.Output
}

// Ack is the INTA cycle: it acknowledges the highest-priority request and
// returns its vector. As on the real chips, if the request went away
// between INTR and INTA the master answers with its IR7 vector (a
// spurious IRQ7, ISR unchanged), and a request from the slave that went
// away gives the slave's IR7 vector (spurious IRQ15, master IR2 in
// service). ok is false only while the master is being initialised (it
// has no vector base yet).
func (p *PIC) Ack() (vector uint8, ok bool) {
	p.mu.Lock()
	m, s := &p.s.Master, &p.s.Slave
	if m.InitState != 0 {
		p.mu.Unlock()
		return 0, false
	}
	irq := m.getIRQ(true)
	isa := -1
	switch {
	case irq < 0:
		vector = m.IRQBase + 7
	case irq == 2 && !m.Single:
		irq2 := s.getIRQ(false)
		if irq2 >= 0 {
			s.intack(irq2)
			isa = 8 + irq2
		} else {
			irq2 = 7
		}
		vector = s.IRQBase + uint8(irq2)
		m.intack(2)
		// The slave drops INT during INTA: a request still pending
		// there (auto-EOI) is a new edge on the cascade input.
		m.LastIRR &^= 1 << 2
	default:
		vector = m.IRQBase + uint8(irq)
		m.intack(irq)
		isa = irq
	}
	p.unlockNotify(p.update())
	if isa >= 0 && p.acked != nil {
		p.acked(isa)
	}
	return vector, true
}

// chip returns the chip behind a device.
func (p *PIC) chip(slave bool) *ChipState {
	if slave {
		return &p.s.Slave
	}
	return &p.s.Master
}

func (p *PIC) write(slave bool, port uint64, v uint8) {
	p.mu.Lock()
	c := p.chip(slave)
	if port == 0 {
		switch {
		case v&0x10 != 0: // ICW1
			elcr := c.ELCR
			*c = ChipState{ELCR: elcr, IRR: c.IRR & elcr, LastIRR: c.LastIRR & elcr}
			c.InitState = 1
			c.Init4 = v&1 != 0
			c.Single = v&2 != 0
			c.LTIM = v&8 != 0
		case v&0x08 != 0: // OCW3
			if v&0x04 != 0 {
				c.Poll = true
			}
			if v&0x02 != 0 {
				c.ReadISR = v&1 != 0
			}
			if v&0x40 != 0 {
				c.SpecMask = v&0x20 != 0
			}
		default: // OCW2
			switch cmd := v >> 5; cmd {
			case 0, 4:
				c.RotateAutoEOI = cmd == 4
			case 1, 5: // non-specific EOI (and rotate)
				if pr := c.priority(c.ISR); pr != 8 {
					irq := (pr + int(c.PrioAdd)) & 7
					c.ISR &^= 1 << irq
					if cmd == 5 {
						c.PrioAdd = uint8(irq+1) & 7
					}
				}
			case 3: // specific EOI
				c.ISR &^= 1 << (v & 7)
			case 6: // set priority
				c.PrioAdd = (v + 1) & 7
			case 7: // rotate on specific EOI
				c.ISR &^= 1 << (v & 7)
				c.PrioAdd = (v + 1) & 7
			}
		}
	} else {
		switch c.InitState {
		case 0: // OCW1
			c.IMR = v
		case 1: // ICW2
			c.IRQBase = v & 0xf8
			switch {
			case !c.Single:
				c.InitState = 2
			case c.Init4:
				c.InitState = 3
			default:
				c.InitState = 0
			}
		case 2: // ICW3
			if c.Init4 {
				c.InitState = 3
			} else {
				c.InitState = 0
			}
		case 3: // ICW4
			c.SFNM = v&0x10 != 0
			c.AutoEOI = v&0x02 != 0
			c.InitState = 0
		}
	}
	p.unlockNotify(p.update())
}

func (p *PIC) read(slave bool, port uint64) uint8 {
	p.mu.Lock()
	c := p.chip(slave)
	var v uint8
	switch {
	case c.Poll:
		c.Poll = false
		irq := c.getIRQ(!slave)
		if irq >= 0 {
			c.intack(irq)
			v = 0x80 | uint8(irq)
			if slave {
				// The master's cascade request is consumed too.
				p.s.Master.IRR &^= 1 << 2
			}
		}
		p.unlockNotify(p.update())
		return v
	case port == 0 && c.ReadISR:
		v = c.ISR
	case port == 0:
		v = c.IRR
	default:
		v = c.IMR
	}
	p.mu.Unlock()
	return v
}

type chipDev struct {
	p     *PIC
	slave bool
}

func (d chipDev) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) > 0 && offset < 2 {
		data[0] = d.p.read(d.slave, offset)
	}
}

func (d chipDev) Write(offset uint64, data []byte) {
	if len(data) > 0 && offset < 2 {
		d.p.write(d.slave, offset, data[0])
	}
}

type elcrDev struct{ p *PIC }

func (d elcrDev) Read(offset uint64, data []byte) {
	d.p.mu.Lock()
	for i := range data {
		switch offset + uint64(i) {
		case 0:
			data[i] = d.p.s.Master.ELCR
		case 1:
			data[i] = d.p.s.Slave.ELCR
		default:
			data[i] = 0
		}
	}
	d.p.mu.Unlock()
}

func (d elcrDev) Write(offset uint64, data []byte) {
	d.p.mu.Lock()
	for i, b := range data {
		switch offset + uint64(i) {
		case 0:
			d.p.s.Master.ELCR = b & elcrMaskMaster
		case 1:
			d.p.s.Slave.ELCR = b & elcrMaskSlave
		}
	}
	d.p.unlockNotify(d.p.update())
}

// Master is the master chip's port device (ports 0x20-0x21).
func (p *PIC) Master() bus.Device { return chipDev{p, false} }

// Slave is the slave chip's port device (ports 0xA0-0xA1).
func (p *PIC) Slave() bus.Device { return chipDev{p, true} }

// ELCR is the edge/level control register pair (ports 0x4D0-0x4D1).
func (p *PIC) ELCR() bus.Device { return elcrDev{p} }

// Register puts the master, slave and ELCR ports on the port I/O bus.
func (p *PIC) Register(pio *bus.Bus) error {
	if err := pio.Register(platform.PortPIC1, 2, "pic-master", p.Master()); err != nil {
		return err
	}
	if err := pio.Register(platform.PortPIC2, 2, "pic-slave", p.Slave()); err != nil {
		return err
	}
	return pio.Register(platform.PortELCR, 2, "elcr", p.ELCR())
}

// Save returns the PIC pair's state.
func (p *PIC) Save() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.s
}

// Restore loads a saved state.
func (p *PIC) Restore(s State) error {
	for i, c := range []ChipState{s.Master, s.Slave} {
		if c.InitState > 3 || c.PrioAdd > 7 || c.IRQBase&7 != 0 {
			return fmt.Errorf("pic restore: chip %d: init state %d, priority base %d or vector base %#x out of range",
				i, c.InitState, c.PrioAdd, c.IRQBase)
		}
	}
	if s.Master.ELCR&^elcrMaskMaster != 0 || s.Slave.ELCR&^elcrMaskSlave != 0 {
		return fmt.Errorf("pic restore: ELCR %#x/%#x sets bits of edge-only IRQs", s.Master.ELCR, s.Slave.ELCR)
	}
	p.mu.Lock()
	p.s = s
	p.s.Output = false
	p.unlockNotify(p.update())
	return nil
}
