package mshvsim

import (
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
	"govmm/internal/kvmtest"
)

// TestGPAPNoopIsSet: upstream mshv_partition_ioctl_get_gpap_access_bitmap
// (drivers/hv/mshv_root_main.c) picks the hypervisor flags with "CLEAR, or
// else SET", so MSHV_GPAP_ACCESS_OP_NOOP sets the dirty (and accessed)
// states after reading them; and it has no check that dirty tracking is
// on.
func TestGPAPNoopIsSet(t *testing.T) {
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
	mem, err := unix.Mmap(-1, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := mshvabi.SetGuestMemory(s, pfd, 0, mem, mshvabi.MemWritable); err != nil {
		t.Fatal(err)
	}
	bm := make([]byte, 1)
	get := func(op uint8) byte {
		t.Helper()
		if err := mshvabi.GetGPAPAccessBitmap(s, pfd, mshvabi.GPAPAccessTypeDirty, op, 0, 4, bm); err != nil {
			t.Fatalf("GPAP op %d with tracking off: %v", op, err)
		}
		return bm[0]
	}
	if b := get(mshvabi.GPAPAccessOpClear); b != 0 {
		t.Fatalf("fresh pages read dirty: %#x", b)
	}
	get(0) // NOOP: read, then set
	if b := get(mshvabi.GPAPAccessOpClear); b != 0xf {
		t.Errorf("after a NOOP op the four pages read %#x, want 0xf (dirty: NOOP sets)", b)
	}
}
