package mshvsim

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
	"govmm/internal/kvmtest"
)

func efd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func counter(fd int) uint64 {
	var b [8]byte
	if n, _ := unix.Read(fd, b[:]); n != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

// TestResampleEmulation: RESAMPLE is refused (EINVAL, with the reason in
// LastError on the partition fd) without a level-triggered MSI route or
// above the GSIs KVM reports EOIs for; accepted on a level-triggered route,
// the resample eventfd is signalled by the EOI of that route's vector only;
// the simulator's own reference to it goes with the deassign.
func TestResampleEmulation(t *testing.T) {
	kvmtest.Need(t)
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(s.SystemFD())
	pfd, err := mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 0xf &^ (1 << 3)})
	if err != nil {
		t.Fatal(err)
	}
	p := s.lookup(pfd).(*partition)
	if err := mshvabi.SetMSIRouting(s, pfd, []mshvabi.UserIRQEntry{
		{GSI: 24, AddressLo: 0xFEE00000, Data: 0x51},          // edge
		{GSI: 25, AddressLo: 0xFEE00000, Data: 0xc052},        // level
		{GSI: 26, AddressLo: 0xFEE00000, Data: 0xc053 | 1<<8}, // level, other vector
	}); err != nil {
		t.Fatal(err)
	}
	trig, res := efd(t), efd(t)
	for _, c := range []struct {
		gsi  uint32
		want string
	}{{24, "not level-triggered"}, {30, "no MSI route"}, {300, "below 255"}} {
		err := mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(trig), ResampleFD: int32(res), GSI: c.gsi, Flags: mshvabi.IRQFDResample})
		if !errors.Is(err, unix.EINVAL) {
			t.Fatalf("resample on GSI %d: %v, want EINVAL", c.gsi, err)
		}
		if why := s.LastError(pfd); !strings.Contains(why, c.want) {
			t.Fatalf("resample on GSI %d: LastError %q, want it to say %q", c.gsi, why, c.want)
		}
	}
	if err := mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(trig), ResampleFD: int32(res), GSI: 25, Flags: mshvabi.IRQFDResample}); err != nil {
		t.Fatal(err)
	}
	dup := p.irqfds[trig].resample
	p.resample(0x53)
	if n := counter(res); n != 0 {
		t.Fatalf("EOI of another vector resampled (%d)", n)
	}
	p.resample(0x52)
	p.resample(0x52)
	if n := counter(res); n != 2 {
		t.Fatalf("two EOIs of the route's vector: resample counter %d, want 2", n)
	}
	if err := mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(trig), ResampleFD: -1, GSI: 25, Flags: mshvabi.IRQFDDeassign}); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("the simulator's reference to the resample eventfd (fd %d) survived the deassign: %v", dup, err)
	}
	p.resample(0x52)
	if n := counter(res); n != 0 {
		t.Fatal("resampled after the deassign")
	}
}
