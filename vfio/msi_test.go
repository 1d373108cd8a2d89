package vfio

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"govmm/pci"
)

// maskable gives the fake device an MSI capability with per-vector
// masking, 64-bit or 32-bit addresses, capable of 1<<log2 vectors.
func maskable(is64 bool, log2 int) func(*fakeDev) {
	return func(d *fakeDev) {
		ctl := uint16(msiCtlPVM | log2<<1)
		if is64 {
			ctl |= msiCtl64
		}
		binary.LittleEndian.PutUint16(d.cfg[0x42:], ctl)
	}
}

// TestMSIMaskableLayout: a device with per-vector masking shows it, with
// the mask bits after the data register (capability offset 0x10 with a
// 64-bit address, 0x0c with a 32-bit one) and the pending bits after
// them. Mask bits exist for the vectors the device is capable of; the
// pending bits are read-only; the capability after MSI starts past them.
func TestMSIMaskableLayout(t *testing.T) {
	for _, c := range []struct {
		is64              bool
		log2              int
		maskOff, pendOff  int
		wantMask, wantCtl uint32
	}{
		{true, 2, 0x10, 0x14, 0xf, msiCtlPVM | msiCtl64 | 2<<1},
		{false, 2, 0x0c, 0x10, 0xf, msiCtlPVM | 2<<1},
		{true, 0, 0x10, 0x14, 0x1, msiCtlPVM | msiCtl64},
		{false, 5, 0x0c, 0x10, 0xffffffff, msiCtlPVM | 5<<1},
	} {
		t.Run(fmt.Sprintf("64=%v/log2=%d", c.is64, c.log2), func(t *testing.T) {
			ev := &events{}
			_, _, r := setupOn(t, &fakeVM{ev: ev}, ev, nil, OrderRouteFirst, false, maskable(c.is64, c.log2))
			f := r.Function(3, 0)
			msi := f.Capabilities(capMSI)[0]
			if ctl := cfgRead(r, msi+2, 2); ctl != c.wantCtl {
				t.Fatalf("MSI control %#x, want %#x (per-vector masking shown)", ctl, c.wantCtl)
			}
			if m := cfgRead(r, msi+c.maskOff, 4); m != 0 {
				t.Errorf("mask bits %#x after reset, want 0", m)
			}
			cfgWrite(r, msi+c.maskOff, 4, 0xffffffff)
			if m := cfgRead(r, msi+c.maskOff, 4); m != c.wantMask {
				t.Errorf("mask bits %#x after writing all ones, want %#x", m, c.wantMask)
			}
			cfgWrite(r, msi+c.pendOff, 4, 0xffffffff)
			if p := cfgRead(r, msi+c.pendOff, 4); p != 0 {
				t.Errorf("pending bits %#x after a write, want 0 (read-only)", p)
			}
			// The data register keeps its place and the next capability
			// (PCI Express) starts after the pending bits.
			cfgWrite(r, msi+c.maskOff-4, 2, 0x4321)
			if d := cfgRead(r, msi+c.maskOff-4, 2); d != 0x4321 {
				t.Errorf("data %#x, want 0x4321", d)
			}
			if next := f.Capabilities(capPCIe)[0]; next < msi+c.pendOff+4 {
				t.Errorf("the next capability at %#x overlaps MSI at %#x (pending bits at +%#x)", next, msi, c.pendOff)
			}
		})
	}
}

// TestMSIMaskOrders: the exact calls of both orders when the guest
// enables MSI with vector 0 masked (as Linux does), then unmasks and
// masks it: a masked vector gets its route and VFIO's eventfd but no
// irqfd; the unmask assigns it and the mask deassigns it, and neither
// touches VFIO or the routing table. The device's own mask bits are never
// written.
func TestMSIMaskOrders(t *testing.T) {
	for _, c := range []struct {
		order Order
		want  []string
	}{
		{OrderRouteFirst, []string{"commit 24:0xfee00000/0x41", "set_irqs index=1 n=1"}},
		{OrderIRQsFirst, []string{"set_irqs index=1 n=1", "commit 24:0xfee00000/0x41"}},
	} {
		t.Run(c.order.String(), func(t *testing.T) {
			p, d, ev, r := func() (*PCI, *fakeDev, *events, *pci.Root) {
				ev := &events{}
				p, d, r := setupOn(t, &fakeVM{ev: ev}, ev, nil, c.order, false, maskable(true, 0))
				return p, d, ev, r
			}()
			msi := p.msi.cap
			devMSI := slices.Clone(d.cfg[0x40:0x58])
			cfgWrite(r, msi+0x10, 4, 1)
			ev.take()
			enableMSI(r, 0x41, 0)
			want := append([]string{"disable_irqs index=0", "pin 19 input false"}, c.want...)
			if l := ev.take(); !slices.Equal(l, want) {
				t.Errorf("enable with vector 0 masked: %q, want %q", l, want)
			}
			cfgWrite(r, msi+0x10, 4, 0)
			if l := ev.take(); !slices.Equal(l, []string{"irqfd gsi=24"}) {
				t.Errorf("unmask: %q", l)
			}
			cfgWrite(r, msi+0x10, 1, 1)
			if l := ev.take(); !slices.Equal(l, []string{"deirqfd gsi=24"}) {
				t.Errorf("mask: %q", l)
			}
			// Writing the same mask again changes nothing.
			cfgWrite(r, msi+0x10, 4, 1)
			if l := ev.take(); len(l) != 0 {
				t.Errorf("the same mask again: %q", l)
			}
			cfgWrite(r, msi+2, 2, 0)
			if l := ev.take(); !slices.Equal(l, []string{"disable_irqs index=1", "resampler pin 19", "set_irqs index=0 n=1", "unmask_fd index=0"}) {
				t.Errorf("disable with vector 0 masked: %q", l)
			}
			if !slices.Equal(d.cfg[0x40:0x58], devMSI) {
				t.Errorf("the device's MSI capability changed: % x, was % x", d.cfg[0x40:0x58], devMSI)
			}
		})
	}
}

// msiRig is a passed-through function with per-vector-masking MSI on
// kernelVM, 4 vectors (data 0x60+v) enabled with all of them masked, as
// Linux's MSI core enables them.
type msiRig struct {
	t    testing.TB
	p    *PCI
	k    *kernelVM
	r    *pci.Root
	mask uint32
}

func newMSIRig(t testing.TB, order Order, is64 bool) *msiRig {
	k := newKernelVM()
	p, _, root := setupOn(t, k, k.ev, nil, order, false, maskable(is64, 2))
	g := &msiRig{t: t, p: p, k: k, r: root}
	g.setMask(0xf)
	m := p.msi
	cfgWrite(root, m.cap+4, 4, 0xfee00000)
	if is64 {
		cfgWrite(root, m.cap+8, 4, 0)
	}
	cfgWrite(root, m.cap+m.dataOff(), 2, 0x60)
	g.enable(true)
	return g
}

func (g *msiRig) enable(on bool) {
	ctl := uint32(2 << 4)
	if on {
		ctl |= msiCtlEnable
	}
	cfgWrite(g.r, g.p.msi.cap+2, 2, ctl)
	g.k.wake(g.t)
}

func (g *msiRig) setMask(m uint32) {
	cfgWrite(g.r, g.p.msi.cap+g.p.msi.maskOff(), 4, m)
	g.mask = m
	g.k.wake(g.t)
}

func (g *msiRig) pending() uint32 {
	v := cfgRead(g.r, g.p.msi.cap+g.p.msi.pendingOff(), 4)
	g.k.wake(g.t)
	return v
}

func (g *msiRig) signal(v int) { g.k.signal(g.t, g.p.msi.evs[v]) }

func (g *msiRig) injected(v int) int {
	g.k.mu.Lock()
	defer g.k.mu.Unlock()
	return g.k.injected[g.p.msi.gsis[v]]
}

// TestMSIPending walks a masked MSI vector's cases in both orders and
// both address widths: a message under the mask sets the pending bit and
// the unmask delivers it once, however many came; a mask with nothing
// pending delivers nothing; a message the kernel injected at the bind is
// not delivered again; a message that came while MSI was being enabled
// with the vector masked waits for the unmask; disabling MSI drops what
// was pending.
func TestMSIPending(t *testing.T) {
	for _, order := range []Order{OrderRouteFirst, OrderIRQsFirst} {
		for _, is64 := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/64=%v", order, is64), func(t *testing.T) {
				g := newMSIRig(t, order, is64)
				if p := g.pending(); p != 0 {
					t.Fatalf("enabled, all masked, nothing sent: pending %#x", p)
				}
				g.signal(1)
				if n, p := g.injected(1), g.pending(); n != 0 || p != 2 {
					t.Fatalf("masked vector 1 signalled: %d injected, pending %#x; want 0, 0x2", n, p)
				}
				g.signal(1)
				g.signal(1)
				g.setMask(0xd) // unmask vector 1
				if n, p := g.injected(1), g.pending(); n != 1 || p != 0 {
					t.Fatalf("unmasked with three messages pending: %d injected, pending %#x; want 1, 0", n, p)
				}
				g.signal(1)
				if n := g.injected(1); n != 2 {
					t.Fatalf("unmasked vector signalled: %d injected, want 2", n)
				}
				// An empty mask window delivers nothing.
				g.setMask(0xf)
				g.setMask(0xd)
				if n := g.injected(1); n != 2 {
					t.Fatalf("empty mask window: %d injected, want 2", n)
				}
				// Pending with no read of the pending bits: the kernel sees
				// the count at the bind; the next empty window must not
				// deliver it again.
				g.setMask(0xf)
				g.signal(1)
				g.setMask(0xd)
				g.setMask(0xf)
				g.setMask(0xd)
				if n := g.injected(1); n != 3 {
					t.Fatalf("a message delivered %d times in all, want 3", g.injected(1))
				}
				// Two vectors unmasked in one write, each with its message.
				g.signal(0)
				g.signal(3)
				if p := g.pending(); p != 9 {
					t.Fatalf("vectors 0 and 3 pending: %#x, want 0x9", p)
				}
				g.setMask(0)
				if p, a, b := g.pending(), g.injected(0), g.injected(3); p != 0 || a != 1 || b != 1 {
					t.Fatalf("all unmasked: pending %#x, injected %d/%d; want 0, 1/1", p, a, b)
				}
				// Disabling MSI drops what was pending; the mask bits stay.
				g.setMask(4)
				g.signal(2)
				if p := g.pending(); p != 4 {
					t.Fatalf("vector 2 pending: %#x", p)
				}
				g.enable(false)
				if p := g.pending(); p != 0 {
					t.Fatalf("MSI off: pending %#x, want 0", p)
				}
				g.enable(true)
				g.setMask(0)
				if p, n := g.pending(), g.injected(2); p != 0 || n != 0 {
					t.Fatalf("after a disable: pending %#x, %d injected on vector 2; want 0, 0", p, n)
				}
			})
		}
	}
}

// msiModel runs guest and device operations on an MSI rig and checks
// them against the rule a PCI function with per-vector masking follows:
// an unmasked vector's message is delivered; a masked vector's messages
// set its pending bit, which the unmask turns into one message; with MSI
// off nothing is sent and nothing is pending.
func msiModel(t testing.TB, order Order, is64 bool, ops []byte) {
	g := newMSIRig(t, order, is64)
	on := true
	var pending [4]bool
	var want [4]int
	for i, op := range ops {
		v := int(op>>4) % 4
		what := ""
		switch op % 7 {
		case 0:
			what = fmt.Sprintf("device signals vector %d", v)
			if !on {
				break // VFIO has no eventfd for a disabled MSI
			}
			g.signal(v)
			if g.mask>>v&1 == 0 {
				want[v]++
			} else {
				pending[v] = true
			}
		case 1:
			what = fmt.Sprintf("guest masks vector %d", v)
			g.setMask(g.mask | 1<<v)
		case 2:
			what = fmt.Sprintf("guest unmasks vector %d", v)
			g.setMask(g.mask &^ (1 << v))
		case 3:
			m := uint32(op>>4) & 0xf
			what = fmt.Sprintf("guest writes mask %#x", m)
			g.setMask(m)
		case 4:
			what = "guest reads the pending bits"
			got := g.pending()
			var exp uint32
			for x := range 4 {
				if pending[x] {
					exp |= 1 << x
				}
			}
			if got != exp {
				t.Fatalf("op %d (%s): pending %#x, want %#x (ops % x)", i, what, got, exp, ops[:i+1])
			}
		case 5:
			what = fmt.Sprintf("guest changes the data to %#x", 0x60+0x10*v)
			cfgWrite(g.r, g.p.msi.cap+g.p.msi.dataOff(), 2, uint32(0x60+0x10*v))
			g.k.wake(g.t)
		case 6:
			on = !on
			what = fmt.Sprintf("guest turns MSI on=%v", on)
			g.enable(on)
			pending = [4]bool{}
		}
		if on {
			for x := range 4 {
				if pending[x] && g.mask>>x&1 == 0 {
					want[x]++
					pending[x] = false
				}
			}
		}
		for x := range 4 {
			if n := g.injected(x); n != want[x] {
				t.Fatalf("op %d (%s): vector %d delivered %d times, want %d (ops % x)", i, what, x, n, want[x], ops[:i+1])
			}
		}
	}
}

// TestMSIPendingModel runs random sequences of signals, masks, pending
// bit reads, data changes and enables against the model, in both orders
// and both address widths.
func TestMSIPendingModel(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 2))
	for _, order := range []Order{OrderRouteFirst, OrderIRQsFirst} {
		for _, is64 := range []bool{true, false} {
			for range 25 {
				ops := make([]byte, 200)
				for i := range ops {
					ops[i] = byte(r.Uint32())
				}
				msiModel(t, order, is64, ops)
			}
		}
	}
}

// FuzzMSIPending drives the MSI capability's mask bits, data, enable and
// pending bits with arbitrary guest and device operations and checks
// every delivery and every read of the pending bits against the model.
func FuzzMSIPending(f *testing.F) {
	f.Add([]byte{0x02, 0x00, 0x01, 0x00, 0x04, 0x00, 0x02, 0x04, 0x01, 0x02})
	f.Add([]byte{0x80, 0x13, 0x00, 0x10, 0x04, 0x23, 0x06, 0x04, 0x06, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 512 {
			ops = ops[:512]
		}
		order, is64 := OrderRouteFirst, true
		if len(ops) > 0 {
			if ops[0]&0x80 != 0 {
				order = OrderIRQsFirst
			}
			is64 = ops[0]&0x40 == 0
		}
		msiModel(t, order, is64, ops)
	})
}
