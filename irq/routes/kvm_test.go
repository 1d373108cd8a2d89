package routes

import (
	"errors"
	"testing"

	"govmm/accel"
	"govmm/accel/kvm"
	"govmm/internal/kvmtest"
)

// testVM creates a one-vCPU VM on a (closed with the test), or fails.
func testVM(t *testing.T, a accel.Accelerator, err error) accel.VM {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	vm, err := a.CreateVM(accel.VMConfig{NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return vm
}

func kvmVM(t *testing.T) accel.VM {
	t.Helper()
	kvmtest.Need(t)
	a, err := kvm.Open()
	return testVM(t, a, err)
}

// TestKVMOwnership runs the table against the real kernel: routes commit,
// irqfds (edge and resample) and ioeventfds (MMIO with and without
// datamatch, port) assign, and Close deassigns every one of them, which
// the kernel proves by accepting the same bindings again (it refuses
// duplicates).
func TestKVMOwnership(t *testing.T) {
	vm := kvmVM(t)
	assign := func(tb *Table) (*EventFD, *EventFD, *EventFD, *EventFD) {
		t.Helper()
		if err := tb.Commit(); err != nil {
			t.Fatal(err)
		}
		edge, _ := tb.Allocate()
		level, _ := tb.Allocate()
		tb.SetMSI(edge, accel.MSI{AddressLo: 0xFEE00000, Data: 0x41})
		tb.SetMSI(level, accel.MSI{AddressLo: 0xFEE00000, Data: 0xc042})
		if err := tb.Commit(); err != nil {
			t.Fatal(err)
		}
		evs := make([]*EventFD, 4)
		for i := range evs {
			ev, err := NewEventFD()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ev.Close() })
			evs[i] = ev
		}
		rs, _ := NewEventFD()
		t.Cleanup(func() { rs.Close() })
		if _, err := tb.AssignIRQFD(evs[0], edge, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.AssignIRQFD(evs[1], level, rs); errors.Is(err, accel.ErrNotSupported) {
			// KVM resamples only for its in-kernel IOAPIC; with the
			// split irqchip level sources use the userspace IOAPIC.
			t.Logf("resample irqfd: %v", err)
			if _, err := tb.AssignIRQFD(evs[1], level, nil); err != nil {
				t.Fatal(err)
			}
		} else if err != nil {
			t.Fatal(err)
		}
		m := uint64(0x1234)
		if _, err := tb.AssignIOEventFD(evs[2], 0xFEB02000, 4, false, &m); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.AssignIOEventFD(evs[3], 0xFEB02008, 4, false, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tb.AssignIOEventFD(evs[3], 0x510, 2, true, nil); err != nil {
			t.Fatal(err)
		}
		// A duplicate is refused (by the table or the kernel).
		if _, err := tb.AssignIRQFD(evs[0], edge, nil); err == nil {
			t.Fatal("the same eventfd was assigned twice")
		}
		return evs[0], evs[1], evs[2], evs[3]
	}
	tb := New(vm, nil)
	a, b, c, d := assign(tb)
	if n, m := tb.Assigned(); n != 2 || m != 3 {
		t.Fatalf("assigned %d irqfds, %d ioeventfds", n, m)
	}
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	// The kernel no longer has them: the same eventfds bind again.
	tb2 := New(vm, nil)
	g, _ := tb2.Allocate()
	tb2.SetMSI(g, accel.MSI{AddressLo: 0xFEE00000, Data: 0x43})
	tb2.Commit()
	for _, ev := range []*EventFD{a, b} {
		f, err := tb2.AssignIRQFD(ev, g, nil)
		if err != nil {
			t.Fatalf("eventfd still bound after Close: %v", err)
		}
		f.Close()
	}
	// KVM refuses a second ioeventfd with the same address, length and
	// match: the same registrations succeed only if Close removed them.
	m := uint64(0x1234)
	specs := []struct {
		ev    *EventFD
		addr  uint64
		pio   bool
		match *uint64
	}{{c, 0xFEB02000, false, &m}, {d, 0xFEB02008, false, nil}, {d, 0x510, true, nil}}
	for _, sp := range specs {
		l := 4
		if sp.pio {
			l = 2
		}
		e, err := tb2.AssignIOEventFD(sp.ev, sp.addr, l, sp.pio, sp.match)
		if err != nil {
			t.Fatalf("ioeventfd at %#x still bound after Close: %v", sp.addr, err)
		}
		e2, err := tb2.AssignIOEventFD(sp.ev, sp.addr, l, sp.pio, sp.match)
		if err == nil {
			e2.Close()
			t.Fatalf("kernel accepted a duplicate ioeventfd at %#x: the test cannot tell", sp.addr)
		}
		e.Close()
	}
	tb2.Close()
}
