package mshvsim

import (
	"testing"
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
