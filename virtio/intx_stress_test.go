package virtio_test

import (
	"sync"
	"testing"
	"time"

	"govmm/accel"
	"govmm/irq/ioapic"
	"govmm/virtio"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
)

// lapic is one vCPU's local APIC as far as a level interrupt goes: a
// vector is requested (IRR) until the CPU takes it.
type lapic struct {
	mu      sync.Mutex
	pending map[uint8]bool
	wake    chan struct{}
}

func (l *lapic) deliver(m accel.MSI) error {
	l.mu.Lock()
	l.pending[uint8(m.Data)] = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return nil
}

// take returns a requested vector, waiting up to d.
func (l *lapic) take(d time.Duration) (uint8, bool) {
	end := time.After(d)
	for {
		l.mu.Lock()
		for v := range l.pending {
			delete(l.pending, v)
			l.mu.Unlock()
			return v, true
		}
		l.mu.Unlock()
		select {
		case <-l.wake:
		case <-end:
			return 0, false
		}
	}
}

// TestINTxStressIOAPIC runs an rng function's INTx line through the real
// IOAPIC and routing table with a guest that keeps requests in flight and
// serves each interrupt as Linux does (read the ISR, reap the used ring,
// post new requests, EOI), with the EOI forms Linux uses: the LAPIC EOI
// alone, or, as Linux's IR-IO-APIC chip does (a Hyper-V guest, so every
// Linux guest on MSHV), the LAPIC EOI followed by the pin's EOI at the
// IOAPIC: a write of its EOI register (version 0x20), or on an IOAPIC
// without one (0x11) the entry masked and made edge-triggered, then
// restored. No completion may be left without an interrupt.
func TestINTxStressIOAPIC(t *testing.T) {
	for _, tc := range []struct {
		name          string
		trick, eoiReg bool
	}{{"lapic-eoi", false, false}, {"ir-pin-eoi-register", false, true}, {"ir-pin-eoi-edge-rewrite", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			const vector = 0x41
			mem := virtiotest.RAM(t, 4<<20)
			l := &lapic{pending: map[uint8]bool{}, wake: make(chan struct{}, 1)}
			vm, tb := virtiotest.NewVM()
			a := ioapic.New(ioapic.Config{Deliver: l.deliver})
			tb.SetPinController(a)
			tr, err := virtio.NewPCI(rng.New(), virtio.PCIConfig{Mem: mem, Router: tb, INTx: &virtio.INTxConfig{GSI: intxGSI}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			d, err := virtiotest.New(tr, mem, vm)
			if err != nil {
				t.Fatal(err)
			}
			r := &intxRig{d: d, tr: tr, tb: tb}
			r.initINTx(t)
			entry := uint64(ioapic.RedLevel | ioapic.RedPolarityLow | vector)
			setEntry := func(e uint64) {
				// Linux's __ioapic_write_entry: high word, then low.
				setReg(a, ioapic.IndexRedTbl+2*intxGSI+1, uint32(e>>32))
				setReg(a, ioapic.IndexRedTbl+2*intxGSI, uint32(e))
			}
			setEntry(entry)
			const inflight = 4
			for i := 0; i < inflight; i++ {
				d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase + uint64(i)*64, Len: 32, Write: true}}, 0)
			}
			done, spurious := 0, 0
			n := 20000
			if testing.Short() {
				n = 2000
			}
			for done < n {
				v, ok := l.take(2 * time.Second)
				if !ok {
					p := a.Pins()
					t.Fatalf("after %d completions (%d spurious interrupts) no interrupt for 2 s with %d requests in flight: line %+v, IOAPIC pins %+v",
						done, spurious, inflight, tr.INTx(), p)
				}
				if v != vector {
					t.Fatalf("vector %#x delivered, want %#x", v, vector)
				}
				reaped := 0
				if r.isr()&1 != 0 {
					for {
						u, err := d.Wait(0, 0)
						if err != nil {
							break
						}
						reaped++
						d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase + uint64(u.ID)*64, Len: 32, Write: true}}, 0)
					}
				}
				if reaped == 0 {
					spurious++
				}
				done += reaped
				a.EOI(vector)
				if tc.eoiReg {
					a.Write(ioapic.RegEOI, []byte{vector, 0, 0, 0})
				}
				if tc.trick {
					setEntry((entry | ioapic.RedMasked) &^ ioapic.RedLevel)
					setEntry(entry)
				}
			}
			t.Logf("%d completions, %d interrupts that found nothing", done, spurious)
		})
	}
}

func setReg(a *ioapic.IOAPIC, idx, v uint32) {
	var b [4]byte
	b[0], b[1], b[2], b[3] = byte(idx), byte(idx>>8), byte(idx>>16), byte(idx>>24)
	a.Write(ioapic.RegSel, b[:])
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	a.Write(ioapic.RegWin, b[:])
}
