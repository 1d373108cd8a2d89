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

// TestResampleFollowsUpstream: RESAMPLE is refused (EINVAL, with the
// reason in LastError on the partition fd) without a level-triggered MSI
// route, as upstream mshv_irqfd_assign (drivers/hv/mshv_eventfd.c) does,
// and accepted on any GSI with one. The resample eventfd is then signalled
// as upstream mshv_notify_acked_gsi (mshv_eventfd.c), called from
// mshv_intercept_isr (mshv_synic.c), signals it: when the EOI'd vector
// equals the irqfd's GSI number, never for the route's own vector; such an
// EOI is consumed. The simulator's reference to the eventfd goes with the
// deassign.
func TestResampleFollowsUpstream(t *testing.T) {
	s, pfd, p := newTestPartition(t)
	if err := mshvabi.SetMSIRouting(s, pfd, []mshvabi.UserIRQEntry{
		{GSI: 24, AddressLo: 0xFEE00000, Data: 0x51},           // edge
		{GSI: 25, AddressLo: 0xFEE00000, Data: 0xc052},         // level
		{GSI: 26, AddressLo: 0xFEE00000, Data: 0xc053 | 1<<8},  // level, other vector
		{GSI: 300, AddressLo: 0xFEE00000, Data: 0xc054 | 1<<8}, // level, above KVM's EOI routes
	}); err != nil {
		t.Fatal(err)
	}
	trig, res := efd(t), efd(t)
	for _, c := range []struct {
		gsi  uint32
		want string
	}{{24, "not level-triggered"}, {30, "no MSI route"}} {
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
	if p.notifyAckedGSI(0x52) || counter(res) != 0 {
		t.Fatal("EOI of the route's vector 0x52 resampled GSI 25: upstream compares the vector with the GSI")
	}
	if !p.notifyAckedGSI(25) || !p.notifyAckedGSI(25) {
		t.Fatal("EOI of vector 25 not consumed by GSI 25's resampler")
	}
	if n := counter(res); n != 2 {
		t.Fatalf("two EOIs of vector 25: resample counter %d, want 2", n)
	}
	if err := mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(trig), ResampleFD: -1, GSI: 25, Flags: mshvabi.IRQFDDeassign}); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("the simulator's reference to the resample eventfd (fd %d) survived the deassign: %v", dup, err)
	}
	if p.notifyAckedGSI(25) || counter(res) != 0 {
		t.Fatal("resampled after the deassign")
	}
	// Upstream has no GSI limit for RESAMPLE.
	if err := mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(trig), ResampleFD: int32(res), GSI: 300, Flags: mshvabi.IRQFDResample}); err != nil {
		t.Fatalf("resample on GSI 300: %v", err)
	}
	// GSI 300's level route has a copy below kvm.MaxEOIRoutes so that KVM
	// reports its vector's EOIs, as the hypervisor reports every
	// level-triggered EOI.
	p.mu.Lock()
	shadows := p.shadows
	p.mu.Unlock()
	if len(shadows) != 1 {
		t.Fatalf("shadow routes %v, want one for GSI 300", shadows)
	}
	for g, r := range shadows {
		if g >= 255 || r[2] != 0xc054|1<<8 {
			t.Fatalf("shadow route GSI %d %#x, want a GSI below 255 with GSI 300's data", g, r)
		}
		other := efd(t)
		err := mshvabi.SetIRQFD(s, pfd, mshvabi.UserIRQFD{FD: int32(other), ResampleFD: -1, GSI: g})
		if !errors.Is(err, unix.EINVAL) || !strings.Contains(s.LastError(pfd), "lends that GSI") {
			t.Fatalf("irqfd on the lent GSI %d: %v %q", g, err, s.LastError(pfd))
		}
	}
}

// TestRoutingTableRefusedWhole: as upstream mshv_update_routing_table
// (drivers/hv/mshv_irq.c), one entry with a nonzero address_hi, a GSI
// given twice, or a GSI of 4096 or more refuses the whole table (EINVAL),
// and the table in force stays as it was.
func TestRoutingTableRefusedWhole(t *testing.T) {
	s, pfd, p := newTestPartition(t)
	good := mshvabi.UserIRQEntry{GSI: 24, AddressLo: 0xFEE00000, Data: 0x51}
	if err := mshvabi.SetMSIRouting(s, pfd, []mshvabi.UserIRQEntry{good}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		ents []mshvabi.UserIRQEntry
		want string
	}{
		{"address_hi", []mshvabi.UserIRQEntry{{GSI: 25, AddressLo: 0xFEE00000, Data: 0x52}, {GSI: 26, AddressLo: 0xFEE00000, AddressHi: 1, Data: 0x53}}, "address_hi 0x1"},
		{"duplicate GSI", []mshvabi.UserIRQEntry{{GSI: 25, AddressLo: 0xFEE00000, Data: 0x52}, {GSI: 25, AddressLo: 0xFEE00000, Data: 0x53}}, "routed twice"},
		{"GSI 4096", []mshvabi.UserIRQEntry{{GSI: 4096, AddressLo: 0xFEE00000, Data: 0x52}}, "MSHV_MAX_GUEST_IRQS"},
	} {
		err := mshvabi.SetMSIRouting(s, pfd, c.ents)
		if !errors.Is(err, unix.EINVAL) || !strings.Contains(s.LastError(pfd), c.want) {
			t.Errorf("%s: %v (%q), want EINVAL saying %q", c.what, err, s.LastError(pfd), c.want)
		}
		p.mu.Lock()
		r, ok := p.routes[24]
		n := len(p.routes)
		p.mu.Unlock()
		if n != 1 || !ok || r[2] != 0x51 {
			t.Errorf("%s: the table in force changed: %d routes, GSI 24 %v", c.what, n, r)
		}
	}
}

// newTestPartition opens a simulator (closed when the test ends) and
// creates a partition in it.
func newTestPartition(t *testing.T) (*Sim, int, *partition) {
	t.Helper()
	kvmtest.Need(t)
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(s.SystemFD()) })
	pfd, err := mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 7})
	if err != nil {
		t.Fatal(err)
	}
	return s, pfd, s.lookup(pfd).(*partition)
}
