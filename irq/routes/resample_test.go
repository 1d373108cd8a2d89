package routes

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// fakePins is a PinController that records the resample inputs and keeps
// the resamplers so the test plays the guest's EOI.
type fakePins struct {
	mu         sync.Mutex
	inputs     chan [2]int // pin, level
	resamplers map[int]func()
}

func newFakePins() *fakePins {
	return &fakePins{inputs: make(chan [2]int, 64), resamplers: map[int]func(){}}
}

func (p *fakePins) SetResampleInput(pin int, high bool) {
	l := 0
	if high {
		l = 1
	}
	p.inputs <- [2]int{pin, l}
}

func (p *fakePins) SetResampler(pin int, fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fn == nil {
		delete(p.resamplers, pin)
	} else {
		p.resamplers[pin] = fn
	}
}

func (p *fakePins) eoi(pin int) bool {
	p.mu.Lock()
	fn := p.resamplers[pin]
	p.mu.Unlock()
	if fn != nil {
		fn()
	}
	return fn != nil
}

// failAfter bounds a wait that must succeed; it is a hang guard, not a
// timing threshold.
const failAfter = 30 * time.Second

func (p *fakePins) want(t *testing.T, pin, level int) {
	t.Helper()
	select {
	case in := <-p.inputs:
		if in != [2]int{pin, level} {
			t.Fatalf("resample input %v, want pin %d level %d", in, pin, level)
		}
	case <-time.After(failAfter):
		t.Fatalf("no resample input for pin %d", pin)
	}
}

func closedFD(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return errors.Is(err, unix.EBADF)
}

// TestResamplePin: a resample irqfd on an IOAPIC pin is served in
// userspace (the accelerator is not asked): a signal asserts the pin's
// resample input, the guest's EOI signals every resample eventfd of the
// pin, and Close (of the irqfd or the table) stops the server goroutine,
// closes its descriptors and the eventfds the table made, lowers the
// input and removes the resampler, leaving the caller's eventfds open.
func TestResamplePin(t *testing.T) {
	vm := newFake()
	tb := New(vm, nil)
	if err := tb.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.NewIRQFD(17, true); err == nil || !strings.Contains(err.Error(), "SetPinController") {
		t.Fatalf("resample irqfd on a pin without an IOAPIC: %v", err)
	}
	pins := newFakePins()
	tb.SetPinController(pins)

	// Owned by the table.
	a, err := tb.NewIRQFD(17, true)
	if err != nil {
		t.Fatal(err)
	}
	// Owned by the caller, on the same pin, with a signal already waiting
	// (Cloud Hypervisor's order): it asserts at assignment.
	trig, _ := NewEventFD()
	res, _ := NewEventFD()
	defer trig.Close()
	defer res.Close()
	trig.Signal()
	b, err := tb.AssignIRQFD(trig, 17, res)
	if err != nil {
		t.Fatal(err)
	}
	pins.want(t, 17, 1)
	if !a.InUserspace() || !b.InUserspace() || len(vm.irqfds) != 0 {
		t.Fatalf("pin irqfds went to the accelerator: %v", vm.irqfds)
	}
	if _, err := tb.AssignIRQFD(trig, 18, res); err == nil {
		t.Fatal("the same trigger eventfd was assigned twice")
	}
	for i := 0; i < 3; i++ {
		a.Signal()
		pins.want(t, 17, 1)
		if !pins.eoi(17) {
			t.Fatal("no resampler registered for pin 17")
		}
		if n, _ := a.Resample().TryRead(); n != 1 {
			t.Fatalf("round %d: resample eventfd of the first irqfd = %d, want 1", i, n)
		}
		if n, _ := res.TryRead(); n != 1 {
			t.Fatalf("round %d: resample eventfd of the second irqfd = %d, want 1", i, n)
		}
	}
	// A resample irqfd on an MSI GSI still goes to the accelerator.
	g, _ := tb.Allocate()
	tb.SetMSI(g, accel.MSI{AddressLo: 0xFEE00000, Data: 0xc061})
	tb.Commit()
	m, err := tb.NewIRQFD(g, true)
	if err != nil || m.InUserspace() || vm.irqfds[m.EventFD().FD()].ResampleFD != m.Resample().FD() {
		t.Fatalf("resample irqfd on MSI GSI %d: %v, accelerator has %v", g, err, vm.irqfds)
	}

	aWait, aTrig, aRes, aDone := a.wait.FD(), a.ev.FD(), a.resample.FD(), a.done
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-aDone:
	default:
		t.Fatal("server goroutine still running after Close")
	}
	if !closedFD(aWait) || !closedFD(aTrig) || !closedFD(aRes) {
		t.Fatal("Close left the table's descriptors open")
	}
	if !pins.eoi(17) {
		t.Fatal("resampler removed while an irqfd is still on the pin")
	}
	if n, _ := res.TryRead(); n != 1 {
		t.Fatal("the remaining irqfd was not resampled")
	}

	bWait, bDone := b.wait.FD(), b.done
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bDone:
	default:
		t.Fatal("server goroutine still running after Table.Close")
	}
	if !closedFD(bWait) {
		t.Fatal("Table.Close left the server's descriptor open")
	}
	pins.want(t, 17, 0)
	if pins.eoi(17) {
		t.Fatal("resampler still registered after the last irqfd went")
	}
	if n, m := tb.Assigned(); n != 0 || m != 0 || len(vm.irqfds) != 0 {
		t.Fatalf("after Close: %d irqfds, %d ioeventfds, accelerator %v", n, m, vm.irqfds)
	}
	// The caller's eventfds are still the caller's, and nobody consumes
	// the trigger any more.
	if err := trig.Signal(); err != nil {
		t.Fatalf("caller's trigger eventfd: %v", err)
	}
	if n, _ := trig.TryRead(); n != 1 {
		t.Fatalf("trigger counter %d after Close, want 1 (still consumed by a server?)", n)
	}
	select {
	case in := <-pins.inputs:
		t.Fatalf("resample input %v after Close", in)
	default:
	}
}
