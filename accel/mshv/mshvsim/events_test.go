package mshvsim

import (
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// TestPendingEventType: PENDING_EVENT0 is an hv_x64_pending_exception_event
// (include/hyperv/hvgdk_mini.h) whose event_type for an exception is
// HV_X64_PENDING_EVENT_EXCEPTION, 0 (enum hv_x64_pending_event_type, as
// the hvgdk_mini.h copies in rust-vmm mshv and QEMU define it; 5 is an
// external interrupt). The simulator reports a pending #GP as type 0 with
// its vector and error code, takes one written as type 0, and refuses
// another type, which KVM under it cannot hold.
func TestPendingEventType(t *testing.T) {
	c := &regCtx{have: cEvents}
	c.ev.Exception.Pending, c.ev.Exception.Nr = true, 13
	c.ev.Exception.HasErrorCode, c.ev.Exception.ErrorCode = true, 0x18
	gp := uint64(1 | 13<<16 | 1<<8 | 0x18<<32) // pending, type 0, #GP, error code 0x18
	if lo, _, ok := c.events(0x10004, false, 0, 0); !ok || lo != gp {
		t.Errorf("PENDING_EVENT0 reads %#x (ok %v), want %#x (event_type %d, want 0: exception)", lo, ok, gp, lo>>1&7)
	}
	c = &regCtx{have: cEvents}
	if _, _, ok := c.events(0x10004, true, 1|14<<16, 0); !ok || !c.ev.Exception.Pending || c.ev.Exception.Nr != 14 {
		t.Errorf("a pending #PF written as type 0: ok %v, events %+v", ok, c.ev.Exception)
	}
	c = &regCtx{have: cEvents}
	if _, _, ok := c.events(0x10004, true, 1|5<<1|0x30<<16, 0); ok || c.ev.Exception.Pending {
		t.Errorf("an external-interrupt event (type 5) was taken as an exception: %+v", c.ev.Exception)
	}
}

// TestExecutionStateEventBits: an intercept's execution_state carries
// interruption_pending (bit 6) while an event is being delivered, and
// interrupt_shadow (bit 12) after STI or MOV SS, as
// hv_x64_intercept_message_header in include/hyperv/hvhdk.h defines them.
// KVM underneath exits to userspace in the middle of a delivery only in
// rare cases (TestSimInterruptShadowInIntercept covers the shadow through
// a real exit), so the VP's KVM event state is set directly here and read
// as the header's bits: each injected event kind (exception, interrupt,
// NMI) is a pending interruption, and a pending one not yet injected is
// not.
func TestExecutionStateEventBits(t *testing.T) {
	s, pfd, _ := newTestPartition(t)
	if err := mshvabi.InitializePartition(s, pfd); err != nil {
		t.Fatal(err)
	}
	vfd, err := mshvabi.CreateVPFD(s, pfd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(vfd)
	v := s.lookup(vfd).(*vp)
	for _, c := range []struct {
		what string
		set  func(*accel.Events)
		want uint16
	}{
		{"nothing", func(*accel.Events) {}, 0},
		{"an interrupt being delivered", func(e *accel.Events) { e.Interrupt.Injected, e.Interrupt.Nr = true, 0x30 }, esInterruptionPending},
		{"an exception being delivered", func(e *accel.Events) {
			e.Exception.Injected, e.Exception.Nr, e.Exception.HasErrorCode, e.Exception.ErrorCode = true, 13, true, 0
		}, esInterruptionPending},
		{"an NMI being delivered", func(e *accel.Events) { e.NMI.Injected = true }, esInterruptionPending},
		{"an NMI pending, not yet delivered", func(e *accel.Events) { e.NMI.Pending = true }, 0},
		{"the STI shadow", func(e *accel.Events) { e.Interrupt.Shadow = 1 }, esInterruptShadow},
	} {
		var e accel.Events
		c.set(&e)
		if err := v.k.SetEvents(&e); err != nil {
			t.Fatalf("%s: KVM_SET_VCPU_EVENTS: %v", c.what, err)
		}
		if got := v.eventBits(); got != c.want {
			t.Errorf("%s: execution_state bits %#x, want %#x", c.what, got, c.want)
		}
	}
}
