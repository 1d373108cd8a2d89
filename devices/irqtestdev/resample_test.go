package irqtestdev

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"govmm/accel"
	"govmm/irq/chipset"
	"govmm/irq/ioapic"
)

// guestVM is the accelerator plus a guest for the resample block: each
// delivered interrupt runs a "handler" (on its own goroutine, since the
// IOAPIC delivers with its lock held) that acknowledges the device if it is
// pending and EOIs, in that order (a LAPIC that keeps the vector in service
// until the EOI) or, with eoiFirst, the other way round (the software KVM
// that reports the EOI on delivery). Resample irqfds on MSI GSIs are
// refused as KVM refuses them.
type guestVM struct {
	accel.VM
	cs       *chipset.Chipset
	dev      *Device
	eoiFirst bool

	mu                   sync.Mutex
	irqs, real, spurious int
	handlers             sync.WaitGroup
}

func (v *guestVM) SetGSIRouting([]accel.Route) error { return nil }
func (v *guestVM) AssignIOEventFD(accel.IOEventFD) error {
	return fmt.Errorf("no ioeventfds: %w", accel.ErrNotSupported)
}
func (v *guestVM) AssignIRQFD(f accel.IRQFD) error {
	return fmt.Errorf("KVM_IRQFD GSI %d with resample: a level-triggered MSI cannot be resampled on KVM: %w", f.GSI, accel.ErrNotSupported)
}

func (v *guestVM) SignalMSI(m accel.MSI) error {
	v.handlers.Add(1)
	go func() {
		defer v.handlers.Done()
		vector := uint8(m.Data)
		if v.eoiFirst {
			v.cs.EOI(vector)
		}
		pending := r32(v.dev, RegRSPending) == 1
		if pending {
			w32(v.dev, RegRSPending, 0)
		}
		v.mu.Lock()
		v.irqs++
		if pending {
			v.real++
		} else {
			v.spurious++
		}
		v.mu.Unlock()
		if !v.eoiFirst {
			v.cs.EOI(vector)
		}
	}()
	return nil
}

func waitRS(t *testing.T, d *Device) uint32 {
	t.Helper()
	end := time.Now().Add(AckTimeout + 10*time.Second) // hang guard, not a threshold
	for time.Now().Before(end) {
		if st := r32(d, RegRSStatus); st&StatusDone != 0 {
			return st
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("resample run never finished")
	return 0
}

// TestResampleRun drives the resample block through the real chipset (its
// IOAPIC serving the irqfd on pin RSPin) with a guest that acknowledges and
// EOIs: exactly one interrupt per assertion when the EOI follows the
// acknowledgement, at most one re-trigger per assertion when it precedes
// it, every assertion acknowledged once; an MSI-GSI run on an accelerator
// that cannot resample ends with the error status; Close leaves nothing
// assigned.
func TestResampleRun(t *testing.T) {
	for _, eoiFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("eoiFirst=%v", eoiFirst), func(t *testing.T) {
			vm := &guestVM{eoiFirst: eoiFirst}
			cs, err := chipset.New(vm, func() {})
			if err != nil {
				t.Fatal(err)
			}
			vm.cs = cs
			d := New(Config{Routes: cs.Routes()})
			vm.dev = d
			// The guest programs pin RSPin: level, active high, vector 0x44.
			io := cs.IOAPIC()
			w := func(idx, v uint32) { w32io(io, ioapic.RegSel, idx); w32io(io, ioapic.RegWin, v) }
			w(ioapic.IndexRedTbl+2*RSPin+1, 0)
			w(ioapic.IndexRedTbl+2*RSPin, ioapic.RedLevel|0x44)

			const n = 200
			w32(d, RegRSMode, RSModePin)
			w32(d, RegRSFire, n)
			if st := waitRS(t, d); st != StatusDone {
				t.Fatalf("pin run status %#x", st)
			}
			vm.handlers.Wait()
			trig := r32(d, RegRSTriggers)
			vm.mu.Lock()
			irqs, real, spurious := vm.irqs, vm.real, vm.spurious
			vm.mu.Unlock()
			if real != n || r32(d, RegRSAsserts) != n || uint32(irqs) != trig || r32(d, RegRSResamples) != trig || spurious != irqs-n {
				t.Fatalf("%d assertions: %d interrupts (%d real, %d spurious), %d triggers, %d resamples", n, irqs, real, spurious, trig, r32(d, RegRSResamples))
			}
			if !eoiFirst && trig != n {
				t.Fatalf("EOI after the acknowledgement: %d triggers for %d assertions, want exactly one each", trig, n)
			}
			if trig > 2*n {
				t.Fatalf("%d triggers for %d assertions: more than one re-trigger each", trig, n)
			}

			w32(d, RegMSIAddr, 0xFEE00000)
			w32(d, RegMSIData, 0xc048)
			w32(d, RegRSMode, RSModeMSI)
			w32(d, RegRSFire, 3)
			if st := waitRS(t, d); st != StatusDone|StatusError || r32(d, RegRSTriggers) != 0 {
				t.Fatalf("MSI run without accelerator resampling: status %#x, %d triggers", st, r32(d, RegRSTriggers))
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if i, e := cs.Routes().Assigned(); i != 0 || e != 0 {
				t.Fatalf("after the runs: %d irqfds, %d ioeventfds assigned", i, e)
			}
			if err := cs.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func w32io(a *ioapic.IOAPIC, off uint64, v uint32) {
	a.Write(off, []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)})
}
