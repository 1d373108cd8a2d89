package mshv

import (
	"encoding/binary"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// oneIRQ is a PIC with one interrupt pending until acknowledged.
type oneIRQ struct {
	vec   uint8
	acked int
}

func (p *oneIRQ) Pending() bool { return p.acked == 0 }
func (p *oneIRQ) Ack() (uint8, bool) {
	if p.acked > 0 {
		return 0, false
	}
	p.acked++
	return p.vec, true
}

// TestFakeExtINTLineCleared: the hypervisor keeps an ExtINT asserted until
// CLEAR_VIRTUAL_INTERRUPT lowers it; upstream's resampler clears it for an
// EXTINT irqfd and for no other type (drivers/hv/mshv_eventfd.c,
// mshv_irqfd_resampler_ack and hv_should_clear_interrupt). The backend
// raises the line once per PIC acknowledge and clears it after the next
// dispatch returns, before it would raise it again.
func TestFakeExtINTLineCleared(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	f.regs[mshvabi.RegRFLAGS] = mshvabi.RegisterValue{Low: 0x202} // IF set
	pic := &oneIRQ{vec: 0x30}
	v.SetExtINTSource(pic)
	cleared := -1
	f.msgs = []func(*mshvabi.Message){
		func(m *mshvabi.Message) {
			// The dispatch the vector was delivered in: the line is still
			// up (nothing cleared yet).
			cleared = f.cleared
			header(m, mshvabi.MsgX64Halt, 0x1001)
		},
		func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x1002) },
	}
	var l log
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitHalt {
		t.Fatalf("run: %+v, %v", e, err)
	}
	if len(f.asserted) != 1 {
		t.Fatalf("%d ASSERT_VIRTUAL_INTERRUPT calls, want 1", len(f.asserted))
	}
	a := f.asserted[0]
	if typ, vec := uint32(binary.LittleEndian.Uint64(a[8:])), binary.LittleEndian.Uint32(a[24:]); typ != mshvabi.InterruptTypeExtINT || vec != 0x30 {
		t.Errorf("asserted type %d vector %#x, want ExtINT (7) 0x30", typ, vec)
	}
	if cleared != 0 || f.cleared != 1 {
		t.Errorf("CLEAR_VIRTUAL_INTERRUPT: %d before the delivering dispatch, %d after it; want 0 and 1", cleared, f.cleared)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitHalt {
		t.Fatalf("second run: %+v, %v", e, err)
	}
	if len(f.asserted) != 1 || f.cleared != 1 {
		t.Errorf("with nothing pending: %d asserts, %d clears; want 1 and 1", len(f.asserted), f.cleared)
	}
}

// TestFakeExtINTInSnapshot: a pause can end a dispatch with EINTR after
// the backend acknowledged the PIC and raised the ExtINT line, before the
// guest took the vector. The PIC then has it in service, so the vCPU
// state must carry it as an interrupt being injected (as KVM's vCPU
// events hold a KVM_INTERRUPT vector not yet delivered), or a restore
// would lose it and leave the PIC's line in service for ever. Once a
// dispatch returned (the vector delivered, the line cleared), it is not
// reported again.
func TestFakeExtINTInSnapshot(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	f.regs[mshvabi.RegRFLAGS] = mshvabi.RegisterValue{Low: 0x202} // IF set
	v.SetExtINTSource(&oneIRQ{vec: 0x30})
	f.msgs = []func(*mshvabi.Message){
		func(m *mshvabi.Message) { v.Kick(); f.eintr = true }, // paused before entry
		func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x1001) },
	}
	var l log
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: %+v, %v; want interrupted", e, err)
	}
	ev, err := v.Events()
	if err != nil {
		t.Fatal(err)
	}
	if !ev.Interrupt.Injected || ev.Interrupt.Nr != 0x30 || ev.Interrupt.Soft {
		t.Fatalf("paused with the ExtINT line up: events %+v, want interrupt 0x30 being injected", ev.Interrupt)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitHalt {
		t.Fatalf("second run: %+v, %v", e, err)
	}
	if ev, err := v.Events(); err != nil || ev.Interrupt.Injected {
		t.Errorf("after the delivering dispatch: events %+v, %v; want no interrupt being injected", ev.Interrupt, err)
	}
}

// TestFakeNMIPendingInLAPICState: the hypervisor keeps a pending NMI as
// bit 2 of apic_irr[0] in the LAPIC state, outside the architecture
// (OpenVMM's virt::x86::vp hv_apic_nmi_pending, which its virt_mshv reads
// for the activity state and keeps across a LAPIC restore). The backend
// reports it as a pending NMI, never as an interrupt with vector 2 in the
// neutral page, sets and clears it through SetEvents, and SetLAPIC keeps
// it.
func TestFakeNMIPendingInLAPICState(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	st := mshvabi.LocalInterruptControllerState{APICID: 0}
	st.APICIRR[0] = 1<<2 | 1<<31 // NMI pending, and vector 31 requested
	buf := make([]byte, 4096)
	mshvabi.Store(buf, &st)
	f.vpstate = map[uint8][]byte{mshvabi.VPStateLAPIC: buf}
	e, err := v.Events()
	if err != nil || !e.NMI.Pending {
		t.Fatalf("events %+v, %v: want a pending NMI", e.NMI, err)
	}
	l, err := v.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if irr := binary.LittleEndian.Uint32(l.Regs[0x200:]); irr != 1<<31 {
		t.Errorf("neutral IRR[0] %#x, want 0x80000000 (vector 2 is the NMI, not an interrupt)", irr)
	}
	if err := v.SetLAPIC(&l); err != nil {
		t.Fatal(err)
	}
	if e, _ := v.Events(); !e.NMI.Pending {
		t.Errorf("SetLAPIC dropped the pending NMI")
	}
	e.NMI.Pending = false
	if err := v.SetEvents(&e); err != nil {
		t.Fatal(err)
	}
	got, _ := mshvabi.Load[mshvabi.LocalInterruptControllerState](f.vpstate[mshvabi.VPStateLAPIC])
	if got.APICIRR[0] != 1<<31 {
		t.Errorf("after SetEvents without a pending NMI, IRR[0] %#x", got.APICIRR[0])
	}
	e.NMI.Pending = true
	if err := v.SetEvents(&e); err != nil {
		t.Fatal(err)
	}
	if e, _ := v.Events(); !e.NMI.Pending {
		t.Errorf("SetEvents did not make the NMI pending")
	}
}
