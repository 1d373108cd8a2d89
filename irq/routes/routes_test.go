package routes

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"govmm/accel"
)

// fakeVM records what the table asks of the accelerator and mimics the
// kernel's checks that matter here.
type fakeVM struct {
	accel.VM
	commits   [][]accel.Route
	irqfds    map[int]accel.IRQFD
	ioevents  map[int]accel.IOEventFD
	noPIO     bool
	failRoute bool
}

func newFake() *fakeVM {
	return &fakeVM{irqfds: map[int]accel.IRQFD{}, ioevents: map[int]accel.IOEventFD{}}
}

func (v *fakeVM) SetGSIRouting(r []accel.Route) error {
	if v.failRoute {
		return errors.New("EINVAL")
	}
	v.commits = append(v.commits, append([]accel.Route(nil), r...))
	return nil
}
func (v *fakeVM) AssignIRQFD(f accel.IRQFD) error {
	if _, ok := v.irqfds[f.FD]; ok {
		return errors.New("EBUSY")
	}
	v.irqfds[f.FD] = f
	return nil
}
func (v *fakeVM) DeassignIRQFD(f accel.IRQFD) error {
	if _, ok := v.irqfds[f.FD]; !ok {
		return errors.New("ENOENT")
	}
	delete(v.irqfds, f.FD)
	return nil
}
func (v *fakeVM) AssignIOEventFD(e accel.IOEventFD) error {
	if e.PIO && v.noPIO {
		return fmt.Errorf("mshv ioeventfd: %w", accel.ErrNotSupported)
	}
	v.ioevents[e.FD] = e
	return nil
}
func (v *fakeVM) DeassignIOEventFD(e accel.IOEventFD) error {
	if _, ok := v.ioevents[e.FD]; !ok {
		return errors.New("ENOENT")
	}
	delete(v.ioevents, e.FD)
	return nil
}

func TestTableCommit(t *testing.T) {
	vm := newFake()
	tb := New(vm, nil)
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	if len(vm.commits) != 1 || len(vm.commits[0]) != NumReserved {
		t.Fatalf("first commit: %d commits, want one with %d reserved routes", len(vm.commits), NumReserved)
	}
	if err := tb.Commit(); err != nil || len(vm.commits) != 1 {
		t.Fatalf("commit without change called the accelerator (%d)", len(vm.commits))
	}
	if err := tb.SetMSI(30, accel.MSI{}); err == nil {
		t.Fatal("route for an unallocated GSI accepted")
	}
	g, err := tb.Allocate()
	if err != nil || g != NumReserved {
		t.Fatalf("Allocate = %d, %v; want %d", g, err, NumReserved)
	}
	msi := accel.MSI{AddressLo: 0xFEE00000, Data: 0x41}
	if err := tb.SetMSI(g, msi); err != nil {
		t.Fatal(err)
	}
	if err := tb.SetMSI(g, msi); err != nil {
		t.Fatal(err)
	}
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	last := vm.commits[len(vm.commits)-1]
	if len(vm.commits) != 2 || len(last) != NumReserved+1 || last[NumReserved].MSI != msi {
		t.Fatalf("second commit %+v", last)
	}
	if err := tb.Free(g); err != nil {
		t.Fatal(err)
	}
	tb.Commit()
	if n := len(vm.commits[len(vm.commits)-1]); n != NumReserved {
		t.Fatalf("after free: %d routes", n)
	}
	vm.failRoute = true
	tb.SetMSI(3, msi)
	if err := tb.Commit(); err == nil || !strings.Contains(err.Error(), "commit") {
		t.Fatalf("commit error not reported: %v", err)
	}
}

func TestIRQFDOrderingAndOwnership(t *testing.T) {
	vm := newFake()
	tb := New(vm, nil)
	g, _ := tb.Allocate()
	// Cloud Hypervisor order: eventfd first (and signalled), then route,
	// commit, irqfd.
	ev, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	ev.Signal()
	if _, err := tb.AssignIRQFD(ev, g, nil); err == nil {
		t.Fatal("irqfd assigned to a GSI without a committed route")
	}
	tb.SetMSI(g, accel.MSI{AddressLo: 0xFEE00000, Data: 0x50})
	if _, err := tb.AssignIRQFD(ev, g, nil); err == nil {
		t.Fatal("irqfd assigned before the route was committed")
	}
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	f, err := tb.AssignIRQFD(ev, g, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.AssignIRQFD(ev, g, nil); err == nil {
		t.Fatal("same eventfd assigned twice")
	}
	if vm.irqfds[ev.FD()].GSI != g || vm.irqfds[ev.FD()].ResampleFD != -1 {
		t.Fatalf("accelerator got %+v", vm.irqfds[ev.FD()])
	}
	if err := tb.Free(g); err == nil {
		t.Fatal("freed a GSI with an irqfd assigned")
	}
	// Resample needs a level-triggered route.
	if _, err := tb.NewIRQFD(g, true); err == nil {
		t.Fatal("resample irqfd on an edge route accepted")
	}
	g2, _ := tb.Allocate()
	tb.SetMSI(g2, accel.MSI{AddressLo: 0xFEE00000, Data: 0xc051})
	tb.Commit()
	lf, err := tb.NewIRQFD(g2, true)
	if err != nil {
		t.Fatal(err)
	}
	if vm.irqfds[lf.EventFD().FD()].ResampleFD != lf.Resample().FD() {
		t.Fatal("resample fd not passed")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if n, _ := tb.Assigned(); n != 1 {
		t.Fatalf("%d irqfds assigned", n)
	}
	// ioeventfds, with and without datamatch.
	m := uint64(7)
	if _, err := tb.NewIOEventFD(0xFEB01000, 4, false, &m); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.NewIOEventFD(0xFEB01004, 0, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.NewIOEventFD(0xFEB01008, 3, false, nil); err == nil {
		t.Fatal("length 3 accepted")
	}
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	if len(vm.irqfds) != 0 || len(vm.ioevents) != 0 {
		t.Fatalf("Close left %d irqfds and %d ioeventfds assigned", len(vm.irqfds), len(vm.ioevents))
	}
	if _, err := tb.Allocate(); err == nil {
		t.Fatal("closed table still allocates")
	}
}

func TestPIOIOEventFDRefused(t *testing.T) {
	vm := newFake()
	vm.noPIO = true
	tb := New(vm, nil)
	_, err := tb.NewIOEventFD(0x600, 2, true, nil)
	if !errors.Is(err, accel.ErrNotSupported) || !strings.Contains(err.Error(), "MMIO doorbell") {
		t.Fatalf("port ioeventfd on MSHV: %v", err)
	}
}

func TestEventFD(t *testing.T) {
	ev, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	ev.Signal()
	ev.Signal()
	if n, err := ev.Wait(); err != nil || n != 2 {
		t.Fatalf("Wait = %d, %v", n, err)
	}
	if n, _ := ev.TryRead(); n != 0 {
		t.Fatal("counter not cleared")
	}
	got := make(chan uint64)
	ev.Serve(func(n uint64) { got <- n })
	ev.Signal()
	if n := <-got; n != 1 {
		t.Fatalf("Serve got %d", n)
	}
	ev.Close()
	if _, err := ev.Wait(); err == nil {
		t.Fatal("Wait after Close succeeded")
	}
}

func TestSaveRestore(t *testing.T) {
	tb := New(newFake(), nil)
	g, _ := tb.Allocate()
	tb.SetMSI(g, accel.MSI{AddressLo: 0xFEE01000, Data: 0x60})
	tb.SetMSI(4, accel.MSI{AddressLo: 0xFEE00000, Data: 0x34})
	s := tb.Save()
	vm2 := newFake()
	t2 := New(vm2, nil)
	if err := t2.Restore(s); err != nil {
		t.Fatal(err)
	}
	t2.Commit()
	if fmt.Sprint(vm2.commits[0]) != fmt.Sprint(tb.Routes()) {
		t.Fatalf("restored table differs")
	}
	bad := s
	bad.Allocated = nil
	if err := t2.Restore(bad); err == nil {
		t.Fatal("route for unallocated GSI accepted")
	}
}

// TestIrqchipResample: a reserved GSI routed to an in-kernel irqchip pin
// (arm64's INTx SPIs) takes resample irqfds through the accelerator, not
// the userspace pin controller, once the route is committed; the other
// reserved GSIs still need the pin controller; Remove puts the
// placeholder back.
func TestIrqchipResample(t *testing.T) {
	vm := newFake()
	tb := New(vm, nil)
	if err := tb.SetIrqchip(NumReserved, 0, 3); err == nil {
		t.Error("irqchip route on an allocatable GSI accepted")
	}
	if err := tb.SetIrqchip(5, 0, 5); err != nil {
		t.Fatal(err)
	}
	trig, _ := NewEventFD()
	res, _ := NewEventFD()
	defer trig.Close()
	defer res.Close()
	if _, err := tb.AssignIRQFD(trig, 5, res); err == nil || !strings.Contains(err.Error(), "not committed") {
		t.Fatalf("resample irqfd before the irqchip route was committed: %v", err)
	}
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	var got *accel.Route
	for _, r := range vm.commits[len(vm.commits)-1] {
		if r.GSI == 5 {
			got = &r
		}
	}
	if got == nil || got.Kind != accel.RouteIrqchip || got.Chip != 0 || got.Pin != 5 {
		t.Fatalf("committed route of GSI 5: %+v, want irqchip 0 pin 5", got)
	}
	f, err := tb.AssignIRQFD(trig, 5, res)
	if err != nil {
		t.Fatal(err)
	}
	if f.InUserspace() {
		t.Error("the irqchip GSI's resample irqfd is served in userspace")
	}
	if a, ok := vm.irqfds[trig.FD()]; !ok || a.GSI != 5 || a.ResampleFD != res.FD() {
		t.Errorf("accelerator irqfds %+v: want fd %d on GSI 5 with resample fd %d", vm.irqfds, trig.FD(), res.FD())
	}
	// A pin without an irqchip route still needs the IOAPIC.
	trig2, _ := NewEventFD()
	defer trig2.Close()
	if _, err := tb.AssignIRQFD(trig2, 6, res); err == nil || !strings.Contains(err.Error(), "IOAPIC") {
		t.Errorf("resample irqfd on a placeholder pin without a pin controller: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if len(vm.irqfds) != 0 {
		t.Errorf("irqfds left after Close: %+v", vm.irqfds)
	}
	if err := tb.Remove(5); err != nil {
		t.Fatal(err)
	}
	for _, r := range tb.Routes() {
		if r.GSI == 5 && r.Kind != accel.RouteMSI {
			t.Errorf("GSI 5 after Remove: %+v, want the placeholder", r)
		}
	}
}
