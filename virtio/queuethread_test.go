package virtio_test

import (
	"errors"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/confine"
	"govmm/irq/routes"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// tidCall is an accelerator or kernel-backend call and the thread that
// made it.
type tidCall struct {
	what string
	tid  int
}

// tidLog records calls with their threads.
type tidLog struct {
	mu    sync.Mutex
	calls []tidCall
}

func (l *tidLog) add(what string) {
	l.mu.Lock()
	l.calls = append(l.calls, tidCall{what, unix.Gettid()})
	l.mu.Unlock()
}

func (l *tidLog) snapshot() []tidCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// tidAccel is the fake accelerator with each call recorded.
type tidAccel struct {
	*virtiotest.VM
	log *tidLog
}

func (a tidAccel) SetGSIRouting(rs []accel.Route) error {
	a.log.add("SetGSIRouting")
	return a.VM.SetGSIRouting(rs)
}

func (a tidAccel) AssignIRQFD(f accel.IRQFD) error {
	a.log.add("AssignIRQFD")
	return a.VM.AssignIRQFD(f)
}

func (a tidAccel) DeassignIRQFD(f accel.IRQFD) error {
	a.log.add("DeassignIRQFD")
	return a.VM.DeassignIRQFD(f)
}

func (a tidAccel) AssignIOEventFD(e accel.IOEventFD) error {
	a.log.add("AssignIOEventFD")
	return a.VM.AssignIOEventFD(e)
}

func (a tidAccel) DeassignIOEventFD(e accel.IOEventFD) error {
	a.log.add("DeassignIOEventFD")
	return a.VM.DeassignIOEventFD(e)
}

// tidKernel is fakeKernel with its backend calls recorded, and queue 2's
// chains refused on demand.
type tidKernel struct {
	*fakeKernel
	log    *tidLog
	refuse chan struct{}
}

func (k *tidKernel) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	select {
	case <-k.refuse:
		return errors.New("a chain the device refuses")
	default:
	}
	return k.fakeKernel.Handle(q, c, done)
}

func (k *tidKernel) StartOffload(f uint64, qs []virtio.OffloadQueue) error {
	k.log.add("StartOffload")
	return k.fakeKernel.StartOffload(f, qs)
}

func (k *tidKernel) StopOffload() (map[int]uint16, error) {
	k.log.add("StopOffload")
	return k.fakeKernel.StopOffload()
}

func (k *tidKernel) SetCall(q, fd int) error {
	k.log.add("SetCall")
	return k.fakeKernel.SetCall(q, fd)
}

// callIoctls are the ioctl requests behind each recorded call, on KVM,
// on MSHV and with a vhost backend.
var callIoctls = map[string][]string{
	"SetGSIRouting":     {"KVM_SET_GSI_ROUTING", "MSHV_SET_MSI_ROUTING"},
	"AssignIRQFD":       {"KVM_IRQFD", "MSHV_IRQFD"},
	"DeassignIRQFD":     {"KVM_IRQFD", "MSHV_IRQFD"},
	"AssignIOEventFD":   {"KVM_IOEVENTFD", "MSHV_IOEVENTFD"},
	"DeassignIOEventFD": {"KVM_IOEVENTFD", "MSHV_IOEVENTFD"},
	"StartOffload":      {"VHOST_SET_FEATURES", "VHOST_SET_VRING_NUM", "VHOST_SET_VRING_ADDR", "VHOST_SET_VRING_BASE", "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL", "VHOST_NET_SET_BACKEND", "VHOST_VSOCK_SET_RUNNING"},
	"StopOffload":       {"VHOST_NET_SET_BACKEND", "VHOST_VSOCK_SET_RUNNING", "VHOST_GET_VRING_BASE"},
	"SetCall":           {"VHOST_SET_VRING_CALL"},
}

// TestQueueThreadCalls keeps the device threads' ioctl lists (package
// confine) in step with the transport: on a confined queue thread
// (PCIConfig.QueueThread) it serves a chain and interrupts through
// MSI-X, then through INTx (whose irqfd is assigned at the first
// assertion, here on the queue thread), then finds the driver at fault,
// which stops the device's kernel backend. Every accelerator or backend
// call made on the queue thread must be one whose ioctls every device
// thread role's filter allows; the backend must still be stopped (by
// another thread).
func TestQueueThreadCalls(t *testing.T) {
	mem, err := virtiotest.NewMem(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	log := &tidLog{}
	inner, _ := virtiotest.NewVM()
	tb := routes.New(tidAccel{inner, log}, nil)
	pins := newFakePins()
	tb.SetPinController(pins)
	k := &tidKernel{fakeKernel: newFakeKernel(), log: log, refuse: make(chan struct{}, 1)}
	var tidMu sync.Mutex
	queueTIDs := map[int]int{}
	tr, err := virtio.NewPCI(k, virtio.PCIConfig{Mem: mem, Router: tb, Log: slog.New(slog.DiscardHandler), INTx: &virtio.INTxConfig{GSI: intxGSI},
		QueueThread: func(q int) bool {
			tidMu.Lock()
			queueTIDs[q] = unix.Gettid()
			tidMu.Unlock()
			if q == 2 {
				// From here on the thread is queue 2's alone; before,
				// another goroutine may have run on it.
				log.add("locked")
			}
			return true
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	d, err := virtiotest.New(tr, mem, inner)
	if err != nil {
		t.Fatal(err)
	}
	r := &intxRig{d: d, tr: tr, pins: pins, tb: tb}
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	serve := func() {
		t.Helper()
		d.Put(2, []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 64, Write: true}}, 0)
		if _, err := d.Wait(2, wait); err != nil {
			t.Fatal(err)
		}
	}
	serve() // MSI-X
	r.msixCtl(t, 0)
	serve() // INTx: the line's irqfd is assigned now
	waitPin(t, pins, true, 1)
	if st := tr.INTx(); st.Raises == 0 {
		t.Fatalf("INTx was not raised: %+v", st)
	}

	k.refuse <- struct{}{}
	d.Put(2, []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 64, Write: true}}, 0)
	end := time.Now().Add(wait)
	for {
		k.mu.Lock()
		running, stops := k.running, k.stops
		k.mu.Unlock()
		if d.Status()&virtio.StatusNeedsReset != 0 && !running && stops == 1 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("after the fault: status %#x, backend running %v after %d stops; want NEEDS_RESET and the backend stopped once", d.Status(), running, stops)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}

	tidMu.Lock()
	qt := queueTIDs[2]
	tidMu.Unlock()
	if qt == 0 {
		t.Fatal("queue 2's server did not take its thread")
	}
	allowed := map[string]int{}
	roles := []string{"virtio-blk", "virtio-net", "virtio-vsock"}
	for _, role := range roles {
		names, ok := confine.DeviceIoctls(role)
		if !ok {
			t.Fatalf("confine knows no role %q", role)
		}
		for _, n := range names {
			allowed[n]++
		}
	}
	stopped, locked := false, false
	for _, c := range log.snapshot() {
		if c.what == "StopOffload" && c.tid != qt {
			stopped = true
		}
		if c.what == "locked" {
			locked = true
		}
		if c.tid != qt || !locked {
			continue
		}
		for _, req := range callIoctls[c.what] {
			if allowed[req] != len(roles) {
				t.Errorf("the queue thread made %s, whose %s not every device thread role's filter allows", c.what, req)
			}
		}
	}
	if !stopped {
		t.Error("the backend was not stopped off the queue thread")
	}
}
