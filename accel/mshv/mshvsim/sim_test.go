package mshvsim_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
	"govmm/accel/mshv/mshvsim"
	"govmm/internal/kvmtest"
)

func newSim(t *testing.T, o mshvsim.Options) *mshvsim.Sim {
	t.Helper()
	kvmtest.Need(t)
	s, err := mshvsim.NewWithOptions(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(s.SystemFD()) })
	return s
}

func wantErrno(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

// TestKernelAnswers checks the errnos the simulator gives where the kernel
// gives them (mshv-abi.md §1, §2).
func TestKernelAnswers(t *testing.T) {
	s := newSim(t, mshvsim.Options{})
	// Unknown ioctls.
	_, err := s.Ioctl(s.SystemFD(), 0xC008B8FF, nil)
	wantErrno(t, "unknown ioctl on /dev/mshv", err, unix.ENOTTY)
	_, err = s.Ioctl(s.SystemFD(), 0x4008AE00, nil)
	wantErrno(t, "foreign ioctl type", err, unix.ENOTTY)
	// Flags outside MSHV_PT_FLAGS_MASK, and SNP isolation.
	_, err = mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 1 << 4})
	wantErrno(t, "pt_flags bit 4", err, unix.EINVAL)
	_, err = mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 1, Isolation: 1})
	wantErrno(t, "SNP isolation", err, unix.EINVAL)
	// Mainline: MSHV_PT_BIT_COUNT is 3, so bit 3 (the v2 payload) is
	// outside MSHV_PT_FLAGS_MASK.
	_, err = mshvabi.CreatePartitionV2FD(s, &mshvabi.CreatePartitionV2{Flags: 0xf, NumCPUFBanks: 2})
	wantErrno(t, "v2 payload on mainline", err, unix.EINVAL)

	pfd, err := mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(pfd)
	_, err = mshvabi.CreateVPFD(s, pfd, 0)
	wantErrno(t, "CREATE_VP before INITIALIZE (INVALID_PARTITION_STATE)", err, unix.EIO)
	// Synthetic features are an early property; after INITIALIZE they are refused.
	in := make([]byte, 24)
	binary.LittleEndian.PutUint32(in[8:], mshvabi.PropSyntheticProcFeatures)
	if _, err := hvcall(s, pfd, mshvabi.HvcallSetPartitionProperty, 0, in, nil); err != nil {
		t.Fatalf("early property: %v", err)
	}
	if err := mshvabi.InitializePartition(s, pfd); err != nil {
		t.Fatal(err)
	}
	if err := mshvabi.InitializePartition(s, pfd); err != nil {
		t.Errorf("INITIALIZE is idempotent: %v", err)
	}
	r, err := hvcall(s, pfd, mshvabi.HvcallSetPartitionProperty, 0, in, nil)
	if !errors.Is(err, unix.EIO) || r.Status != 7 {
		t.Errorf("synthetic features after INITIALIZE: %v status %#x", err, r.Status)
	}
	vp, err := mshvabi.CreateVPFD(s, pfd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(vp)
	_, err = mshvabi.CreateVPFD(s, pfd, 0)
	wantErrno(t, "duplicate VP", err, unix.EEXIST)
	_, err = mshvabi.CreateVPFD(s, pfd, 256)
	wantErrno(t, "VP 256", err, unix.EINVAL)

	// Hypercalls: allow-list, async calls only on the partition fd, sizes.
	_, err = hvcall(s, pfd, mshvabi.HvcallReadGPA, 0, make([]byte, 32), make([]byte, 24))
	wantErrno(t, "READ_GPA (downstream only)", err, unix.EINVAL)
	_, err = hvcall(s, vp, mshvabi.HvcallSetPartitionProperty, 0, in, nil)
	wantErrno(t, "SET_PARTITION_PROPERTY on a VP fd", err, unix.EINVAL)
	_, err = hvcall(s, pfd, mshvabi.HvcallGetPartitionProperty, 0, make([]byte, 4), make([]byte, 8))
	wantErrno(t, "in_sz 4", err, unix.EINVAL)
	// An unknown register name.
	get := make([]byte, 20)
	binary.LittleEndian.PutUint32(get[16:], 0x7777777)
	r, err = hvcall(s, vp, mshvabi.HvcallGetVPRegisters, 1, get, make([]byte, 16))
	if !errors.Is(err, unix.EINVAL) || r.Reps != 0 {
		t.Errorf("unknown register: %v reps %d", err, r.Reps)
	}
	// A rep count on a simple hypercall: INVALID_HYPERCALL_INPUT. The
	// kernel passes reps through (mshv_ioctl_passthru_hvcall issues a rep
	// hypercall for any nonzero count); the hypervisor refuses it (the
	// TLFS's common hypercall status codes: INVALID_HYPERCALL_INPUT when
	// a nonzero rep count is passed to a basic hypercall), EINVAL by
	// hv_status_infos[].
	prop := make([]byte, 16)
	binary.LittleEndian.PutUint32(prop[8:], mshvabi.PropTimeFreeze)
	r, err = hvcall(s, pfd, mshvabi.HvcallGetPartitionProperty, 1, prop, make([]byte, 8))
	if !errors.Is(err, unix.EINVAL) || r.Status != 3 {
		t.Errorf("GET_PARTITION_PROPERTY with reps 1: %v status %#x", err, r.Status)
	}
	// Mainline has no MSHV_ROOT_HVCALL on /dev/mshv, no
	// GET_PARTITION_PROPERTY_EX and no SCRUB_PARTITION.
	self := make([]byte, 16)
	binary.LittleEndian.PutUint32(self[8:], mshvabi.PropProcessorFeatures0)
	_, err = hvcall(s, s.SystemFD(), mshvabi.HvcallGetPartitionProperty, 0, self, make([]byte, 8))
	wantErrno(t, "self property read on mainline", err, unix.ENOTTY)
	_, err = hvcall(s, pfd, mshvabi.HvcallGetPartitionPropertyEx, 0, make([]byte, 24), make([]byte, 16))
	wantErrno(t, "GET_PARTITION_PROPERTY_EX on mainline", err, unix.EINVAL)
	_, err = hvcall(s, pfd, 0x008d, 0, make([]byte, 16), nil)
	wantErrno(t, "SCRUB_PARTITION on mainline", err, unix.EINVAL)

	// Guest memory: alignment, overlaps, unmap must match exactly.
	mem, err := unix.Mmap(-1, 0, 3*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := mshvabi.SetGuestMemory(s, pfd, 0, mem[:8192], mshvabi.MemWritable); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "GPA overlap", mshvabi.SetGuestMemory(s, pfd, 4096, mem[8192:], mshvabi.MemWritable), unix.EEXIST)
	wantErrno(t, "host overlap (alias)", mshvabi.SetGuestMemory(s, pfd, 0x100000, mem[4096:8192], mshvabi.MemWritable), unix.EEXIST)
	wantErrno(t, "unaligned host address", mshvabi.SetGuestMemory(s, pfd, 0x200000, mem[8192+16:8192+16+4096-16], 0), unix.EINVAL)
	wantErrno(t, "flags bit 3", mshvabi.SetGuestMemory(s, pfd, 0x200000, mem[8192:], 8), unix.EINVAL)
	wantErrno(t, "partial unmap", mshvabi.SetGuestMemory(s, pfd, 0, mem[:4096], mshvabi.MemUnmap), unix.EINVAL)
	if err := mshvabi.SetGuestMemory(s, pfd, 0, mem[:8192], mshvabi.MemUnmap); err != nil {
		t.Errorf("exact unmap: %v", err)
	}

	// Interrupts.
	wantErrno(t, "PIO ioeventfd", mshvabi.SetIOEventFD(s, pfd, mshvabi.UserIOEventFD{Addr: 0x510, Len: 2, FD: 99, Flags: mshvabi.IOEventFDPIO}), unix.EOPNOTSUPP)
	wantErrno(t, "ioeventfd len 3", mshvabi.SetIOEventFD(s, pfd, mshvabi.UserIOEventFD{Addr: 0xfeb00000, Len: 3, FD: 99}), unix.EINVAL)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	rfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	if err := mshvabi.SetMSIRouting(s, pfd, []mshvabi.UserIRQEntry{{GSI: 5, AddressLo: 0xfee00000, Data: 0x30}}); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "resample on an edge route", mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(efd), ResampleFD: int32(rfd), GSI: 5, Flags: mshvabi.IRQFDResample}), unix.EINVAL)
	wantErrno(t, "irqfd flags bit 2", mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(efd), GSI: 5, Flags: 4}), unix.EINVAL)
	if err := mshvabi.SetMSIRouting(s, pfd, make([]mshvabi.UserIRQEntry, 4097)); !errors.Is(err, unix.EINVAL) {
		t.Errorf("4097 routes: %v", err)
	}

	// VP state: alignment and size reporting.
	buf := mshvabi.AlignedBuffer(8192)
	_, err = mshvabi.GetVPState(s, vp, mshvabi.VPStateLAPIC, buf[1:4097])
	wantErrno(t, "unaligned VP state buffer", err, unix.EINVAL)
	_, err = mshvabi.GetVPState(s, vp, 9, buf[:4096])
	wantErrno(t, "VP state type 9", err, unix.EINVAL)
	if n, err := mshvabi.GetVPState(s, vp, mshvabi.VPStateLAPIC, buf); err != nil || n != 4096 {
		t.Errorf("LAPIC state: size %d, %v", n, err)
	}
	// Unknown VP ioctl, bad mmap offset.
	_, err = s.Ioctl(vp, 0xC008B8F0, nil)
	wantErrno(t, "unknown VP ioctl", err, unix.ENOTTY)
	if _, err := s.Mmap(vp, 7, 4096); !errors.Is(err, unix.EINVAL) {
		t.Errorf("mmap offset 7: %v", err)
	}
	if _, err := s.Mmap(vp, 2, 4096); !errors.Is(err, unix.ENODEV) {
		t.Errorf("GHCB page on a non-SNP partition: %v", err)
	}
}

// TestLaterKernelOptions: each later-kernel behaviour appears with its
// option only (see mshvsim.Options for the upstream references).
func TestLaterKernelOptions(t *testing.T) {
	s := newSim(t, mshvsim.Options{V2: true, SelfHvcall: true, PropertyEx: true, Scrub: true})
	_, err := mshvabi.CreatePartitionV2FD(s, &mshvabi.CreatePartitionV2{Flags: 0xf, NumCPUFBanks: 3})
	wantErrno(t, "v2 with 3 feature banks", err, unix.EINVAL)
	_, err = mshvabi.CreatePartitionV2FD(s, &mshvabi.CreatePartitionV2{Flags: 0xf, Rsvd: [6]uint8{1}})
	wantErrno(t, "v2 with reserved bytes", err, unix.EINVAL)
	_, err = mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 1 << 4})
	wantErrno(t, "pt_flags bit 4", err, unix.EINVAL)
	pfd, err := mshvabi.CreatePartitionV2FD(s, &mshvabi.CreatePartitionV2{Flags: 0xf, NumCPUFBanks: 2})
	if err != nil {
		t.Fatalf("v2 payload: %v", err)
	}
	defer s.Close(pfd)
	self := make([]byte, 16)
	binary.LittleEndian.PutUint32(self[8:], mshvabi.PropProcessorFeatures0)
	if _, err := hvcall(s, s.SystemFD(), mshvabi.HvcallGetPartitionProperty, 0, self, make([]byte, 8)); err != nil {
		t.Errorf("self property read: %v", err)
	}
	set := make([]byte, 24)
	_, err = hvcall(s, s.SystemFD(), mshvabi.HvcallSetPartitionProperty, 0, set, nil)
	wantErrno(t, "self property write", err, unix.EINVAL)
	ex := make([]byte, 24)
	binary.LittleEndian.PutUint32(ex[8:], mshvabi.PropAssignableSyntheticFeatures)
	if _, err := hvcall(s, s.SystemFD(), mshvabi.HvcallGetPartitionPropertyEx, 0, ex, make([]byte, 16)); err != nil {
		t.Errorf("self GET_PARTITION_PROPERTY_EX: %v", err)
	}
	// On the partition fd the calls pass the allow-list and reach the
	// hypervisor, which answers with a status (EIO), not EINVAL.
	r, err := hvcall(s, pfd, mshvabi.HvcallGetPartitionPropertyEx, 0, ex, make([]byte, 16))
	if !errors.Is(err, unix.EIO) || r.Status == 0 {
		t.Errorf("GET_PARTITION_PROPERTY_EX on the partition: %v status %#x", err, r.Status)
	}
	r, err = hvcall(s, pfd, 0x008d, 0, make([]byte, 16), nil)
	if !errors.Is(err, unix.EIO) || r.Status == 0 {
		t.Errorf("SCRUB_PARTITION: %v status %#x", err, r.Status)
	}
}

// TestEAGAINEveryN checks that every Nth hypercall answers EAGAIN with
// HV_STATUS_INSUFFICIENT_MEMORY and does nothing.
func TestEAGAINEveryN(t *testing.T) {
	s := newSim(t, mshvsim.Options{EAGAINEvery: 3})
	pfd, err := mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(pfd)
	in := make([]byte, 16)
	binary.LittleEndian.PutUint32(in[8:], mshvabi.PropTimeFreeze)
	var eagain int
	for i := 0; i < 9; i++ {
		r, err := hvcall(s, pfd, mshvabi.HvcallGetPartitionProperty, 0, in, make([]byte, 8))
		if errors.Is(err, unix.EAGAIN) {
			eagain++
			if r.Status != mshvabi.HvStatusInsufficientMemory {
				t.Errorf("EAGAIN with status %#x", r.Status)
			}
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if eagain != 3 {
		t.Errorf("%d EAGAINs in 9 calls, want 3", eagain)
	}
}

func hvcall(s *mshvsim.Sim, fd int, code, reps uint16, in, out []byte) (mshvabi.HvcallResult, error) {
	return mshvabi.Hvcall(s, fd, code, reps, in, out)
}
