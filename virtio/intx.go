package virtio

import (
	"encoding/binary"

	"govmm/irq/routes"
	"govmm/pci"
)

// INTxConfig gives a function INTA (Interrupt Pin 1) on a GSI: on x86 an
// IOAPIC pin, the one the platform's `_PRT` names for its slot (govmm's
// userspace IOAPIC resamples it); on arm64 a GIC SPI, the one the device
// tree's interrupt-map names, routed as an irqchip GSI (KVM resamples
// it). The line's logic below is the same on both.
type INTxConfig struct {
	GSI uint32
}

// intxLine is a function's INTA: a level line behind a resample irqfd on
// the IOAPIC pin or GIC SPI, as VFIO's INTx is. Signalling trigger asserts the pin's
// resample input; the guest's EOI drops it and signals resample, on which
// the transport signals trigger again if the line should still be high.
// So the device workers that complete requests only write an eventfd, and
// the line's level lives here:
//
//   - it should be high when MSI-X is disabled, the ISR is non-zero and
//     the command register's Interrupt Disable bit is clear (wanted);
//   - the status register's Interrupt Status bit is "MSI-X disabled and
//     ISR non-zero", whatever Interrupt Disable says;
//   - reading the ISR clears it, and the line stays low from the next EOI
//     on (the IOAPIC drops the input then, and the resample finds nothing
//     to raise).
//
// A resample comes at every EOI of the pin, whichever function sharing it
// the interrupt was for, so each owner re-raises its own line.
type intxLine struct {
	gsi               uint32
	trigger, resample *routes.EventFD
	// irqfd is assigned at the first assertion (a restore replaces the
	// routing table, which refuses to while irqfds are assigned).
	irqfd *routes.IRQFD
	// asserted: trigger was signalled since the last resample or since
	// the line stopped being wanted.
	asserted bool
	// msix is MSI-X Enable as the transport last saw it.
	msix bool
	// live is false between Restore and Start: the vCPUs' LAPICs are
	// not restored yet, so an assertion would be lost.
	live bool
	// raises counts trigger signals (for tests and the log).
	raises uint64
}

func newINTx(c *INTxConfig) (*intxLine, error) {
	x := &intxLine{gsi: c.GSI, live: true}
	var err error
	if x.trigger, err = routes.NewEventFD(); err != nil {
		return nil, err
	}
	if x.resample, err = routes.NewEventFD(); err != nil {
		x.trigger.Close()
		return nil, err
	}
	return x, nil
}

// intxWanted reports whether the line should be high. Called with mu held.
func (t *PCI) intxWanted() bool {
	x := t.intx
	return x != nil && !x.msix && t.isr != 0 && t.fn.Command()&pci.CmdINTxDisable == 0
}

// updateINTx brings the line and the status register's Interrupt Status
// bit in line with the ISR, MSI-X Enable and Interrupt Disable. Called
// with mu held, after each change of one of them.
func (t *PCI) updateINTx() {
	x := t.intx
	if x == nil {
		return
	}
	t.fn.SetINTxStatus(!x.msix && t.isr != 0)
	if !t.intxWanted() {
		x.asserted = false
		return
	}
	if !x.asserted && x.live {
		t.raiseINTx()
	}
}

// raiseINTx signals the trigger eventfd, assigning the resample irqfd
// first if it is not yet. Called with mu held.
func (t *PCI) raiseINTx() {
	x := t.intx
	if x.irqfd == nil {
		f, err := t.router.AssignIRQFD(x.trigger, x.gsi, x.resample)
		if err != nil {
			t.log.Error("virtio: INTx line cannot be raised; the interrupt is held in the ISR", "device", t.dev.Name(), "gsi", x.gsi, "err", err)
			return
		}
		x.irqfd = f
	}
	if err := x.trigger.Signal(); err != nil {
		t.log.Error("virtio: INTx trigger", "device", t.dev.Name(), "gsi", x.gsi, "err", err)
		return
	}
	x.asserted = true
	x.raises++
}

// intxResampled follows the guest's EOI of the pin: the IOAPIC dropped
// the input, so the line goes high again if it is still wanted.
func (t *PCI) intxResampled() {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := t.intx
	if t.closed || x == nil {
		return
	}
	x.asserted = false
	if t.intxWanted() && x.live {
		t.raiseINTx()
	}
}

// intxConfigWritten follows a configuration write (MSI-X Enable,
// Interrupt Disable). Switching MSI-X loses nothing: interrupts the ISR
// holds when MSI-X comes on are sent as the vectors' messages too (at
// worst one the driver finds nothing for), and messages pending in the
// PBA when MSI-X goes off become ISR bits, which raise the line. Called
// with mu held.
func (t *PCI) intxConfigWritten() {
	x := t.intx
	on := t.msix.Enabled()
	if on != x.msix {
		x.msix = on
		if on {
			t.intxToMSIX()
		} else {
			t.msixToISR()
		}
	}
	t.updateINTx()
}

// intxToMSIX sends what the ISR holds through MSI-X. Called with mu held.
func (t *PCI) intxToMSIX() {
	var vs []uint16
	if t.isr&1 != 0 {
		for i, qc := range t.s.Queues {
			if qc.MSIXVector != NoVector && t.queues[i] != nil {
				vs = append(vs, qc.MSIXVector)
			}
		}
	}
	if t.isr&2 != 0 && t.s.ConfigVector != NoVector {
		vs = append(vs, t.s.ConfigVector)
	}
	seen := map[uint16]bool{}
	for _, v := range vs {
		if seen[v] {
			continue
		}
		seen[v] = true
		if err := t.msix.Trigger(int(v)); err != nil {
			t.log.Error("virtio: interrupt moved to MSI-X", "device", t.dev.Name(), "vector", v, "err", err)
		}
	}
}

// msixToISR turns the vectors' pending messages into ISR bits. Called with
// mu held.
func (t *PCI) msixToISR() {
	pending := func(v uint16) bool {
		if v == NoVector || int(v) >= t.msix.Vectors() {
			return false
		}
		var b [8]byte
		t.msix.PBA().Read(uint64(v/64)*8, b[:])
		return binary.LittleEndian.Uint64(b[:])&(1<<(v%64)) != 0
	}
	for _, qc := range t.s.Queues {
		if pending(qc.MSIXVector) {
			t.isr |= 1
		}
	}
	if pending(t.s.ConfigVector) {
		t.isr |= 2
	}
}

// closeINTx deassigns the irqfd and closes the eventfds (which ends the
// resample goroutine). Called without mu.
func (t *PCI) closeINTx() error {
	x := t.intx
	if x == nil {
		return nil
	}
	t.mu.Lock()
	f := x.irqfd
	x.irqfd = nil
	t.mu.Unlock()
	var err error
	if f != nil {
		err = f.Close()
	}
	x.trigger.Close()
	x.resample.Close()
	return err
}

// INTxStatus is the INTx line as tests and govmm info see it: whether the
// function has one, its GSI, whether it is asserted, and how many times
// the trigger was signalled; with the ISR and MSI-X Enable that decide
// whether it should be.
type INTxStatus struct {
	Present  bool
	GSI      uint32
	Asserted bool
	Raises   uint64
	ISR      uint8
	MSIX     bool
}

// INTx reports the function's INTx line.
func (t *PCI) INTx() INTxStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := t.intx
	if x == nil {
		return INTxStatus{}
	}
	return INTxStatus{Present: true, GSI: x.gsi, Asserted: x.asserted, Raises: x.raises, ISR: t.isr, MSIX: x.msix}
}
