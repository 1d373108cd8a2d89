package mshvsim

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
	"govmm/internal/kvmtest"
)

// TestPendingEventType: PENDING_EVENT0 is an hv_x64_pending_exception_event
// (include/hyperv/hvgdk_mini.h) whose event_type for an exception is
// HV_X64_PENDING_EVENT_EXCEPTION, 0 (enum hv_x64_pending_event_type, as
// the hvgdk_mini.h copies in rust-vmm mshv and QEMU define it; 5 is an
// external interrupt). A pending #GP written as type 0 reads back as type
// 0 with its vector and error code; another type is refused, as KVM under
// the simulator cannot hold it.
func TestPendingEventType(t *testing.T) {
	kvmtest.Need(t)
	s, err := NewWithOptions(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(s.SystemFD())
	pfd, err := mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := mshvabi.InitializePartition(s, pfd); err != nil {
		t.Fatal(err)
	}
	vp, err := mshvabi.CreateVPFD(s, pfd, 0)
	if err != nil {
		t.Fatal(err)
	}
	set := func(lo, hi uint64) error {
		in := make([]byte, 16+32)
		binary.LittleEndian.PutUint32(in[16:], mshvabi.RegPendingEvent0)
		binary.LittleEndian.PutUint64(in[32:], lo)
		binary.LittleEndian.PutUint64(in[40:], hi)
		_, err := mshvabi.Hvcall(s, vp, mshvabi.HvcallSetVPRegisters, 1, in, nil)
		return err
	}
	gp := uint64(1 | 13<<16 | 1<<8 | 0x18<<32) // pending, type 0, #GP, error code 0x18
	if err := set(gp, 0); err != nil {
		t.Fatalf("set a pending #GP: %v", err)
	}
	in := make([]byte, 20)
	binary.LittleEndian.PutUint32(in[16:], mshvabi.RegPendingEvent0)
	out := make([]byte, 16)
	if _, err := mshvabi.Hvcall(s, vp, mshvabi.HvcallGetVPRegisters, 1, in, out); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(out); got != gp {
		t.Errorf("PENDING_EVENT0 reads %#x, want %#x (event_type %d, want 0: exception)", got, gp, got>>1&7)
	}
	if err := set(1|5<<1|0x30<<16, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("external-interrupt event (type 5): %v, want EINVAL", err)
	}
}
