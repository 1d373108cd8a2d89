package vfio

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/irq/routes"
	"govmm/pci"
)

// kernelVM is fakeVM with the irqfd semantics KVM and MSHV share, which
// decide whether a masked MSI-X vector's message is delivered once:
//
//   - assigning an irqfd polls its eventfd and, if the count is not zero,
//     injects once and leaves the count there (kvm_irqfd_assign,
//     mshv_irqfd_assign);
//   - a write to a bound eventfd wakes the irqfd, which drains the count
//     and injects once (irqfd_wakeup, mshv_irqfd_wakeup);
//   - an unbound eventfd just counts.
//
// The device's signals go through signal. govmm's own writes to a bound
// eventfd are seen by wake, which the test calls after every guest
// access: a count above the one left at assignment means writes came,
// each of which the kernel would have drained and injected.
type kernelVM struct {
	fakeVM
	mu       sync.Mutex
	bound    map[int]uint32 // eventfd -> GSI
	left     map[int]uint64 // count left in a bound eventfd by its assignment
	injected map[uint32]int
	// beforeAssign, if set, runs as an irqfd is assigned, before the
	// kernel polls its eventfd: a message arriving in that window.
	beforeAssign func(fd int)
}

func newKernelVM() *kernelVM {
	return &kernelVM{fakeVM: fakeVM{ev: &events{}}, bound: map[int]uint32{}, left: map[int]uint64{}, injected: map[uint32]int{}}
}

// peek returns an eventfd's count without changing it (nothing in the
// fake waits on it, so reading and writing it back is invisible).
func peek(t testing.TB, fd int) uint64 {
	// A blocking descriptor here is not the vector's eventfd any more
	// (closed and its number reused): say so rather than hang.
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		l, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		t.Fatalf("bound irqfd descriptor %d is %q (flags %#x, %v), not a non-blocking eventfd", fd, l, fl, err)
	}
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err == unix.EAGAIN {
		return 0
	} else if err != nil {
		t.Fatalf("read eventfd %d: %v", fd, err)
	}
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatalf("write eventfd %d: %v", fd, err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (k *kernelVM) AssignIRQFD(f accel.IRQFD) error {
	if k.beforeAssign != nil {
		k.beforeAssign(f.FD)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var b [8]byte
	n, _ := unix.Read(f.FD, b[:])
	c := uint64(0)
	if n == 8 {
		c = binary.LittleEndian.Uint64(b[:])
		unix.Write(f.FD, b[:])
	}
	if c > 0 {
		k.injected[f.GSI]++
	}
	k.bound[f.FD], k.left[f.FD] = f.GSI, c
	return nil
}

func (k *kernelVM) DeassignIRQFD(f accel.IRQFD) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.bound, f.FD)
	delete(k.left, f.FD)
	return nil
}

// wake applies the kernel's wakeups to writes govmm made to bound
// eventfds since the last look.
func (k *kernelVM) wake(t testing.TB) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for fd, gsi := range k.bound {
		c := peek(t, fd)
		if c < k.left[fd] {
			k.left[fd] = c
		}
		if c > k.left[fd] {
			k.injected[gsi] += int(c - k.left[fd])
			var b [8]byte
			unix.Read(fd, b[:])
			k.left[fd] = 0
		}
	}
}

// signal is VFIO's interrupt handler signalling a vector's eventfd.
func (k *kernelVM) signal(t testing.TB, ev *routes.EventFD) {
	k.wake(t)
	k.mu.Lock()
	defer k.mu.Unlock()
	if gsi, ok := k.bound[ev.FD()]; ok {
		// The wakeup drains everything, a count left by the assignment too.
		var b [8]byte
		unix.Read(ev.FD(), b[:])
		k.left[ev.FD()] = 0
		k.injected[gsi]++
		return
	}
	if err := ev.Signal(); err != nil {
		t.Fatal(err)
	}
}

// msixRig is a passed-through function with MSI-X enabled on kernelVM
// and all 4 vectors programmed (vector v: data 0x60+v) and masked.
type msixRig struct {
	t     testing.TB
	p     *PCI
	k     *kernelVM
	r     *pci.Root
	bar   pci.Region
	fmask bool
}

func newMSIXRig(t testing.TB, order Order) *msixRig {
	k := newKernelVM()
	p, _, root := setupOn(t, k, k.ev, nil, order, false)
	g := &msixRig{t: t, p: p, k: k, r: root}
	for _, reg := range root.Regions() {
		if reg.BAR == 0 {
			g.bar = reg
		}
	}
	for v := 0; v < 4; v++ {
		g.w32(uint64(v)*16, 0xfee00000)
		g.w32(uint64(v)*16+8, 0x60+uint32(v))
	}
	cfgWrite(root, p.msix.cap+2, 2, msixCtlEnable)
	return g
}

func (g *msixRig) w32(off uint64, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	g.bar.Dev.Write(0x2000+off, b)
	g.k.wake(g.t)
}

func (g *msixRig) mask(v int, on bool) {
	x := uint32(0)
	if on {
		x = 1
	}
	g.w32(uint64(v)*16+12, x)
}

func (g *msixRig) funcMask(on bool) {
	ctl := uint32(msixCtlEnable)
	if on {
		ctl |= msixCtlFuncMask
	}
	cfgWrite(g.r, g.p.msix.cap+2, 2, ctl)
	g.fmask = on
	g.k.wake(g.t)
}

func (g *msixRig) pba() uint8 {
	b := make([]byte, 8)
	g.bar.Dev.Read(0x3000, b)
	g.k.wake(g.t)
	return b[0]
}

func (g *msixRig) signal(v int) { g.k.signal(g.t, g.p.msix.evs[v]) }

func (g *msixRig) injected(v int) int {
	g.k.mu.Lock()
	defer g.k.mu.Unlock()
	return g.k.injected[g.p.msix.gsis[v]]
}

// TestMSIXPending walks the cases of a masked vector in both orders: the
// PBA bit set by a message under the mask and cleared by the unmask that
// delivers it, once however many messages came, nothing delivered for a
// mask with nothing pending, and no second delivery of a message whose
// count the kernel left in the eventfd when it bound the irqfd.
func TestMSIXPending(t *testing.T) {
	for _, order := range []Order{OrderRouteFirst, OrderIRQsFirst} {
		t.Run(order.String(), func(t *testing.T) {
			g := newMSIXRig(t, order)
			g.mask(0, false)
			g.signal(0)
			if n, pba := g.injected(0), g.pba(); n != 1 || pba != 0 {
				t.Fatalf("unmasked: %d injected, PBA %#x; want 1, 0", n, pba)
			}
			// Under the mask: held, shown in the PBA, delivered once.
			g.mask(0, true)
			if pba := g.pba(); pba != 0 {
				t.Fatalf("masked, nothing sent: PBA %#x", pba)
			}
			g.signal(0)
			if n, pba := g.injected(0), g.pba(); n != 1 || pba != 1 {
				t.Fatalf("masked, one message: %d injected, PBA %#x; want 1, 0x1", n, pba)
			}
			g.signal(0) // a second message after the PBA read drained the first
			g.signal(0)
			if pba := g.pba(); pba != 1 {
				t.Fatalf("masked, three messages: PBA %#x", pba)
			}
			g.mask(0, false)
			if n, pba := g.injected(0), g.pba(); n != 2 || pba != 0 {
				t.Fatalf("unmasked with a message pending: %d injected, PBA %#x; want 2, 0", n, pba)
			}
			// A mask with nothing pending delivers nothing.
			g.mask(0, true)
			g.mask(0, false)
			if n := g.injected(0); n != 2 {
				t.Fatalf("empty mask window: %d injected, want 2", n)
			}
			// Pending with no PBA read: the kernel sees the count when the
			// irqfd is bound. Then an empty mask window must not deliver it
			// again (the kernel leaves the count it injected at assignment).
			g.mask(0, true)
			g.signal(0)
			g.mask(0, false)
			if n := g.injected(0); n != 3 {
				t.Fatalf("unmask with an unread message: %d injected, want 3", n)
			}
			g.mask(0, true)
			g.mask(0, false)
			if n := g.injected(0); n != 3 {
				t.Fatalf("a message delivered twice: %d injected after an empty mask window, want 3", n)
			}
			// The function mask holds every vector.
			g.mask(1, false)
			g.funcMask(true)
			g.signal(0)
			g.signal(1)
			g.signal(1)
			if pba := g.pba(); pba != 3 || g.injected(0) != 3 || g.injected(1) != 0 {
				t.Fatalf("function masked: PBA %#x, injected %d/%d; want 0x3, 3/0", pba, g.injected(0), g.injected(1))
			}
			g.funcMask(false)
			if pba := g.pba(); pba != 0 || g.injected(0) != 4 || g.injected(1) != 1 {
				t.Fatalf("function unmasked: PBA %#x, injected %d/%d; want 0, 4/1", pba, g.injected(0), g.injected(1))
			}
			// Disabling MSI-X drops what was pending.
			g.mask(2, true)
			g.signal(2)
			if pba := g.pba(); pba != 4 {
				t.Fatalf("vector 2 pending: PBA %#x", pba)
			}
			cfgWrite(g.r, g.p.msix.cap+2, 2, 0)
			cfgWrite(g.r, g.p.msix.cap+2, 2, msixCtlEnable)
			g.mask(2, false)
			if pba, n := g.pba(), g.injected(2); pba != 0 || n != 0 {
				t.Fatalf("after a disable: PBA %#x, %d injected on vector 2; want 0, 0", pba, n)
			}
		})
	}
}

// TestMSIXSignalWhileBinding: a message that reaches the eventfd between
// govmm's drain and the kernel's poll at assignment is injected by the
// kernel, and govmm neither delivers it again nor loses a pending one.
func TestMSIXSignalWhileBinding(t *testing.T) {
	for _, pending := range []bool{false, true} {
		t.Run(fmt.Sprintf("pending=%v", pending), func(t *testing.T) {
			g := newMSIXRig(t, OrderRouteFirst)
			if pending {
				g.signal(0)
			}
			g.k.beforeAssign = func(fd int) {
				var b [8]byte
				binary.LittleEndian.PutUint64(b[:], 1)
				unix.Write(fd, b[:])
			}
			g.mask(0, false)
			g.k.beforeAssign = nil
			if n, pba := g.injected(0), g.pba(); n != 1 || pba != 0 {
				t.Fatalf("unmask with a message arriving at the bind: %d injected, PBA %#x; want 1 (one pending bit), 0", n, pba)
			}
			g.mask(0, true)
			g.mask(0, false)
			g.signal(0)
			if n := g.injected(0); n != 2 {
				t.Fatalf("after an empty mask window and one message: %d injected, want 2", n)
			}
		})
	}
}

// msixModel runs guest and device operations on a rig and checks them
// against the rule a PCI function follows: an unmasked vector's message
// is delivered; a masked vector's messages set its pending bit, which the
// unmask turns into one message.
func msixModel(t testing.TB, order Order, ops []byte) {
	g := newMSIXRig(t, order)
	masked := [4]bool{true, true, true, true}
	var pending [4]bool
	var want [4]int
	canFire := func(v int) bool { return !g.fmask && !masked[v] }
	release := func(v int) {
		if canFire(v) && pending[v] {
			want[v]++
			pending[v] = false
		}
	}
	for i, op := range ops {
		v := int(op>>4) % 4
		what := ""
		switch op % 6 {
		case 0:
			what = fmt.Sprintf("device signals vector %d", v)
			g.signal(v)
			if canFire(v) {
				want[v]++
			} else {
				pending[v] = true
			}
		case 1:
			what = fmt.Sprintf("guest masks vector %d", v)
			g.mask(v, true)
			masked[v] = true
		case 2:
			what = fmt.Sprintf("guest unmasks vector %d", v)
			g.mask(v, false)
			masked[v] = false
			release(v)
		case 3:
			what = "guest sets the function mask"
			g.funcMask(true)
		case 4:
			what = "guest clears the function mask"
			g.funcMask(false)
			for x := range 4 {
				release(x)
			}
		case 5:
			what = "guest reads the PBA"
			got := g.pba()
			var exp uint8
			for x := range 4 {
				if pending[x] {
					exp |= 1 << x
				}
			}
			if got != exp {
				t.Fatalf("op %d (%s): PBA %#x, want %#x (ops % x)", i, what, got, exp, ops[:i+1])
			}
		}
		for x := range 4 {
			if n := g.injected(x); n != want[x] {
				t.Fatalf("op %d (%s): vector %d delivered %d times, want %d (ops % x)", i, what, x, n, want[x], ops[:i+1])
			}
		}
	}
}

// TestMSIXPendingModel runs random sequences of signals, masks, function
// masks and PBA reads against the model, in both orders.
func TestMSIXPendingModel(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 1))
	for _, order := range []Order{OrderRouteFirst, OrderIRQsFirst} {
		for range 50 {
			ops := make([]byte, 200)
			for i := range ops {
				ops[i] = byte(r.Uint32())
			}
			msixModel(t, order, ops)
		}
	}
}

// FuzzMSIXPending drives the MSI-X table, message control and PBA with
// arbitrary guest and device operations and checks every delivery and
// every PBA read against the model (msixModel).
func FuzzMSIXPending(f *testing.F) {
	f.Add([]byte{0x02, 0x00, 0x01, 0x00, 0x05, 0x00, 0x02, 0x05, 0x01, 0x02})
	f.Add([]byte{0x02, 0x12, 0x03, 0x00, 0x10, 0x05, 0x04, 0x05})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 512 {
			ops = ops[:512]
		}
		order := OrderRouteFirst
		if len(ops) > 0 && ops[0]&0x80 != 0 {
			order = OrderIRQsFirst
		}
		msixModel(t, order, ops)
	})
}
