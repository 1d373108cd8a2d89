package routes

import (
	"errors"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv"
	"govmm/accel/mshv/mshvsim"
	"govmm/internal/kvmtest"
)

func mshvVM(t *testing.T) accel.VM {
	t.Helper()
	kvmtest.Need(t) // mshvsim runs on KVM
	d, err := mshvsim.New()
	if err != nil {
		t.Fatal(err)
	}
	a, err := mshv.Open(d)
	return testVM(t, a, err)
}

// TestMSHVSim runs the table on the MSHV backend (over mshvsim): routes
// commit, irqfds assign, a port-I/O ioeventfd is refused with an error that
// wraps accel.ErrNotSupported and says what to do, and Close releases
// everything (the same bindings are accepted again). A resample irqfd on
// a level-triggered MSI route is accepted (the backend serves the resample
// from the EOI exit); one on an edge or a missing route is refused by the
// backend, which says why.
func TestMSHVSim(t *testing.T) {
	vm := mshvVM(t)
	tb := New(vm, nil)
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	g, _ := tb.Allocate()
	tb.SetMSI(g, accel.MSI{AddressLo: 0xFEE00000, Data: 0xc051})
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	if f, err := tb.NewIRQFD(g, true); err != nil {
		t.Fatalf("resample irqfd on a level route: %v", err)
	} else {
		f.Close()
	}
	edge, _ := tb.Allocate()
	tb.SetMSI(edge, accel.MSI{AddressLo: 0xFEE00000, Data: 0x53})
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	tr, _ := NewEventFD()
	rs, _ := NewEventFD()
	defer tr.Close()
	defer rs.Close()
	// Straight to the backend (the table refuses both itself).
	for _, c := range []struct {
		gsi  uint32
		want string
	}{{edge, "not level-triggered"}, {200, "has no MSI route"}, {4000, "has no MSI route"}} {
		err := vm.AssignIRQFD(accel.IRQFD{FD: tr.FD(), GSI: c.gsi, ResampleFD: rs.FD()})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("resample irqfd on GSI %d: %v, want an error saying %q", c.gsi, err, c.want)
		}
	}
	f, err := tb.NewIRQFD(g, false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tb.NewIOEventFD(0x510, 2, true, nil)
	if !errors.Is(err, accel.ErrNotSupported) || !strings.Contains(err.Error(), "MMIO doorbell") {
		t.Fatalf("port-I/O ioeventfd on MSHV: %v", err)
	}
	e, err := tb.NewIOEventFD(0xFEB02000, 4, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f, e
	ev2, _ := NewEventFD()
	defer ev2.Close()
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	if n, m := tb.Assigned(); n != 0 || m != 0 {
		t.Fatalf("Close left %d irqfds and %d ioeventfds", n, m)
	}
	tb2 := New(vm, nil)
	g2, _ := tb2.Allocate()
	tb2.SetMSI(g2, accel.MSI{AddressLo: 0xFEE00000, Data: 0x52})
	if err := tb2.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := tb2.AssignIRQFD(ev2, g2, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tb2.NewIOEventFD(0xFEB02000, 4, false, nil); err != nil {
		t.Fatalf("the MMIO doorbell at 0xFEB02000 is still assigned after Close: %v", err)
	}
	if n, m := tb2.Assigned(); n != 1 || m != 1 {
		t.Fatalf("assigned %d/%d", n, m)
	}
	tb2.Close()
}
