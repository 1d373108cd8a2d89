package mshv_test

import (
	"strings"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvsim"
)

// picOnce is a PIC with one interrupt pending until acknowledged.
type picOnce struct{ acked bool }

func (p *picOnce) Pending() bool { return !p.acked }
func (p *picOnce) Ack() (uint8, bool) {
	if p.acked {
		return 0, false
	}
	p.acked = true
	return 0x30, true
}

// TestSimExtINTLine: an ExtINT is a line the hypervisor keeps asserted
// until CLEAR_VIRTUAL_INTERRUPT (upstream drivers/hv/mshv_eventfd.c,
// mshv_irqfd_resampler_ack, clears it for HV_X64_INTERRUPT_TYPE_EXTINT and
// no other type), and mshvsim delivers it again at every entry where the
// guest can take it. One PIC interrupt must reach a real-mode guest once:
// its handler writes port 0x80 and returns; the main code enables
// interrupts, spins, and writes port 0xf4. A backend that never cleared
// the line would see the handler run again after every IRET.
func TestSimExtINTLine(t *testing.T) {
	m := newMachine(t, mshvsim.Options{}, 0x10000)
	copy(m.mem[0x1100:], []byte{0xE6, 0x80, 0xCF})                  // out 0x80, al; iret
	copy(m.mem[0x30*4:], []byte{0x00, 0x11, 0x00, 0x00})            // IVT 0x30 -> 0:0x1100
	copy(m.mem[0x1000:], []byte{0xFB, 0xB9, 0x00, 0x02, 0xE2, 0xFE, // sti; mov cx, 0x200; loop $
		0xE6, 0xF4, 0xEB, 0xFE}) // out 0xf4, al; jmp $
	m.realMode(t, 0x1000)
	m.cpu.SetExtINTSource(&picOnce{})
	handled := 0
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) {
		if port == 0x80 {
			handled++
		}
		if port == 0xf4 || handled > 3 {
			m.cpu.Kick()
		}
	}
	if e, err := m.run(t, rec); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: %+v %v (log %q)", e, err, rec.log)
	}
	if handled != 1 || !strings.HasPrefix(rec.log[len(rec.log)-1], "out 0xf4") {
		t.Errorf("the guest took the PIC's interrupt %d times (log %q), want once and then reach port 0xf4", handled, rec.log)
	}
}
