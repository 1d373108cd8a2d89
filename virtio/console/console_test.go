package console

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

const wait = 5 * time.Second

type rig struct {
	t   *testing.T
	d   *virtiotest.Driver
	tr  *virtio.PCI
	dev *Device
	out *virtiotest.SyncBuffer // the host side of the console's output
}

var quiet = slog.New(slog.DiscardHandler)

// newRig is a console behind the transport, driven by the test driver;
// setup, when set, runs before the driver starts.
func newRig(t *testing.T, setup func(*Device)) *rig {
	t.Helper()
	out := &virtiotest.SyncBuffer{}
	dev := New(out, quiet)
	if setup != nil {
		setup(dev)
	}
	mem := virtiotest.RAM(t, 8<<20)
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb, Log: quiet, Class: virtio.PCIClass{Class: 7, Subclass: 0x80}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close(); dev.Close(); tb.Close() })
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(virtio.FIndirectDesc|virtio.FEventIdx, 0); err != nil {
		t.Fatal(err)
	}
	if d.NumQueue != 2 {
		t.Fatalf("%d queues, want 2 (port 0's receiveq and transmitq)", d.NumQueue)
	}
	return &rig{t: t, d: d, tr: tr, dev: dev, out: out}
}

// transmit sends data as a chain of buffers of the given sizes and
// waits for it to be used.
func (r *rig) transmit(data []byte, sizes ...int) {
	r.t.Helper()
	gpa := uint64(virtiotest.BufBase)
	copy(r.d.Mem.B[gpa:], data)
	var segs []virtiotest.Seg
	for _, n := range sizes {
		segs = append(segs, virtiotest.Seg{GPA: gpa, Len: uint32(n)})
		gpa += uint64(n)
	}
	r.d.Put(txQ, segs, 0)
	u, err := r.d.Wait(txQ, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	if u.Len != 0 {
		r.t.Errorf("transmit buffer used with length %d, want 0", u.Len)
	}
}

const rxBase = 0x200000

// post makes a receive buffer of n bytes at slot i available.
func (r *rig) post(i, n int) uint16 {
	gpa := uint64(rxBase + i*0x1000)
	clear(r.d.Mem.B[gpa : gpa+0x1000])
	return r.d.Put(rxQ, []virtiotest.Seg{{GPA: gpa, Len: uint32(n), Write: true}}, 0)
}

// received waits for the next used receive buffer and returns its bytes
// (receive buffers are posted at slots by head order in these tests).
func (r *rig) received(slotOf map[uint16]int) []byte {
	r.t.Helper()
	u, err := r.d.Wait(rxQ, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	gpa := uint64(rxBase + slotOf[uint16(u.ID)]*0x1000)
	return append([]byte(nil), r.d.Mem.B[gpa:gpa+uint64(u.Len)]...)
}

func TestTransmit(t *testing.T) {
	r := newRig(t, nil)
	r.transmit([]byte("hello, hvc0\n"), 5, 7)
	big := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB in 16 buffers
	sizes := make([]int, 16)
	for i := range sizes {
		sizes[i] = 4096
	}
	r.transmit(big, sizes...)
	if got, want := r.out.Bytes(), append([]byte("hello, hvc0\n"), big...); !bytes.Equal(got, want) {
		t.Fatalf("host got %d bytes %q..., want %d", len(got), got[:min(len(got), 32)], len(want))
	}
	if n := r.d.WaitInterrupts(txQ, wait); n == 0 {
		t.Error("the transmit queue's vector was not signalled")
	}
}

// TestReceive: input typed before the driver posts buffers waits, and
// fills the buffers in the order they were posted, split across them.
func TestReceive(t *testing.T) {
	r := newRig(t, nil)
	r.dev.Input([]byte("hello"))
	slots := map[uint16]int{r.post(0, 3): 0, r.post(1, 16): 1}
	if got := string(r.received(slots)); got != "hel" {
		t.Fatalf("first buffer %q, want \"hel\"", got)
	}
	if got := string(r.received(slots)); got != "lo" {
		t.Fatalf("second buffer %q, want \"lo\"", got)
	}
	// A buffer waits for input that comes later.
	slots[r.post(2, 64)] = 2
	time.Sleep(20 * time.Millisecond)
	r.dev.Input([]byte("later"))
	if got := string(r.received(slots)); got != "later" {
		t.Fatalf("third buffer %q, want \"later\"", got)
	}
	if n := r.d.WaitInterrupts(rxQ, wait); n == 0 {
		t.Error("the receive queue's vector was not signalled")
	}
}

// TestInputOrder: many writers' worth of input through one-byte buffers
// arrives in order.
func TestInputOrder(t *testing.T) {
	r := newRig(t, nil)
	want := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz"), 20)
	done := make(chan struct{})
	go func() {
		for i := 0; i < len(want); i += 7 {
			r.dev.Input(want[i:min(i+7, len(want))])
		}
		close(done)
	}()
	var got []byte
	slots := map[uint16]int{} // head -> buffer slot
	free := []int{0, 1, 2, 3, 4, 5, 6, 7}
	for len(got) < len(want) {
		// Keep eight one-byte buffers posted.
		for len(free) > 0 {
			slots[r.post(free[0], 1)] = free[0]
			free = free[1:]
		}
		u, err := r.d.Wait(rxQ, wait)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		s := slots[uint16(u.ID)]
		delete(slots, uint16(u.ID))
		free = append(free, s)
		gpa := uint64(rxBase + s*0x1000)
		got = append(got, r.d.Mem.B[gpa:gpa+uint64(u.Len)]...)
	}
	<-done
	if !bytes.Equal(got, want) {
		t.Fatalf("guest received %q, want %q", got, want)
	}
}

// TestBadChains: a receive buffer the device would read and a transmit
// buffer it would write break the protocol: the device asks for a reset,
// and the host sees nothing.
func TestBadChains(t *testing.T) {
	for _, c := range []struct {
		name string
		q    int
		segs []virtiotest.Seg
	}{
		{"readable receive buffer", rxQ, []virtiotest.Seg{{GPA: rxBase, Len: 8}}},
		{"mixed receive buffer", rxQ, []virtiotest.Seg{{GPA: rxBase, Len: 8}, {GPA: rxBase + 8, Len: 8, Write: true}}},
		{"empty receive buffer", rxQ, []virtiotest.Seg{{GPA: rxBase, Len: 0, Write: true}}},
		{"writable transmit buffer", txQ, []virtiotest.Seg{{GPA: rxBase, Len: 4}, {GPA: rxBase + 8, Len: 8, Write: true}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, nil)
			r.d.Put(c.q, c.segs, 0)
			end := time.Now().Add(wait)
			for r.d.Status()&virtio.StatusNeedsReset == 0 {
				if time.Now().After(end) {
					t.Fatalf("status %#x: no DEVICE_NEEDS_RESET", r.d.Status())
				}
				time.Sleep(time.Millisecond)
			}
			if len(r.out.Bytes()) != 0 {
				t.Errorf("the host got %q", r.out.Bytes())
			}
			// A reset and a new driver make it work again.
			if err := r.d.Init(0, 0); err != nil {
				t.Fatal(err)
			}
			r.transmit([]byte("ok"), 2)
			if got := string(r.out.Bytes()); got != "ok" {
				t.Errorf("after the reset the host got %q", got)
			}
		})
	}
}

// TestPauseAndSnapshot: input that arrives while the device is paused
// is not delivered, is in the saved state, and a device restored from
// that state delivers it to the buffers the restored driver posted.
func TestPauseAndSnapshot(t *testing.T) {
	r := newRig(t, nil)
	slots := map[uint16]int{r.post(0, 32): 0}
	time.Sleep(20 * time.Millisecond) // the device has taken the buffer
	r.tr.Pause()
	r.dev.Input([]byte("typed while paused"))
	time.Sleep(20 * time.Millisecond)
	if _, err := r.d.Wait(rxQ, 50*time.Millisecond); err == nil {
		t.Fatal("a receive buffer was used while the device was paused")
	}
	st := r.dev.Save()
	if string(st.Pending) != "typed while paused" {
		t.Fatalf("saved state %q", st.Pending)
	}
	js, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}

	// A new device from the state, behind a transport restored from
	// the paused one, over the same guest memory.
	ps := r.tr.Save()
	dev2 := New(r.out, quiet)
	if err := dev2.Restore(back); err != nil {
		t.Fatal(err)
	}
	vm2, tb2 := virtiotest.NewVM()
	tr2, err := virtio.NewPCI(dev2, virtio.PCIConfig{Mem: r.d.Mem, Router: tb2, Log: quiet, Class: virtio.PCIClass{Class: 7, Subclass: 0x80}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tr2.Close(); dev2.Close(); tb2.Close() }()
	if err := tr2.Restore(ps); err != nil {
		t.Fatal(err)
	}
	r.tr.Close()
	r.d.T, r.d.VM = tr2, vm2
	tr2.Start()
	if got := string(r.received(slots)); got != "typed while paused" {
		t.Fatalf("restored device delivered %q", got)
	}

	// A state no device could have saved is refused.
	if err := dev2.Restore(State{Pending: make([]byte, MaxPending+1)}); err == nil {
		t.Error("a state with more than MaxPending bytes was accepted")
	}
}

// TestInputBlocks: input beyond MaxPending waits for the guest, and a
// closed device releases the waiter.
func TestInputBlocks(t *testing.T) {
	dev := New(io.Discard, quiet)
	done := make(chan struct{})
	go func() {
		dev.Input(make([]byte, MaxPending+10))
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("Input of more than MaxPending returned with no guest reading")
	case <-time.After(50 * time.Millisecond):
	}
	if n := len(dev.Save().Pending); n != MaxPending {
		t.Errorf("%d bytes pending, want %d", n, MaxPending)
	}
	dev.Close()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Close did not release Input")
	}
}

// failWriter fails every write.
type failWriter struct{ n atomic.Int32 }

func (f *failWriter) Write(p []byte) (int, error) { f.n.Add(1); return 0, io.ErrClosedPipe }

// TestOutputFails: a host writer that fails is tried once; the guest's
// transmit buffers are still used.
func TestOutputFails(t *testing.T) {
	fw := &failWriter{}
	r := newRig(t, func(d *Device) { d.out = fw })
	r.transmit([]byte("one"), 3)
	r.transmit([]byte("two"), 3)
	if n := fw.n.Load(); n != 1 || r.dev.OutputError() == nil {
		t.Errorf("%d writes, error %v: want 1 write and the error kept", n, r.dev.OutputError())
	}
}
