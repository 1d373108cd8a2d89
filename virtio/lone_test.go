package virtio_test

import (
	"sync"
	"testing"
	"time"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// loner records whether each chain came through Handle or HandleLone,
// and completes it at once.
type loner struct {
	mu   sync.Mutex
	lone []bool
}

func (*loner) Type() uint16               { return 97 }
func (*loner) Name() string               { return "loner" }
func (*loner) Features() uint64           { return 0 }
func (*loner) QueueMax() []uint16         { return []uint16{8} }
func (*loner) ReadConfig(uint64, []byte)  {}
func (*loner) WriteConfig(uint64, []byte) {}
func (*loner) Activate(uint64) error      { return nil }
func (*loner) Describe() string           { return "loner" }
func (*loner) Reset()                     {}

func (l *loner) record(lone bool, done func(uint32)) error {
	l.mu.Lock()
	l.lone = append(l.lone, lone)
	l.mu.Unlock()
	done(1)
	return nil
}

func (l *loner) Handle(_ int, _ *virtio.Chain, done func(uint32)) error {
	return l.record(false, done)
}

func (l *loner) HandleLone(_ int, _ *virtio.Chain, done func(uint32)) error {
	return l.record(true, done)
}

// TestLoneHandler: the transport hands a LoneHandler a chain through
// HandleLone only when the driver had made no other available after it:
// of three chains found together, the first two go to Handle and the
// last to HandleLone; a chain alone goes to HandleLone.
func TestLoneHandler(t *testing.T) {
	l := &loner{}
	d, tr := attach(t, l, &virtiotest.Mem{B: make([]byte, 4<<20)}, virtio.PCIConfig{})
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	seg := []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 16, Write: true}}
	d.Put(0, seg, 0)
	if _, err := d.Wait(0, wait); err != nil {
		t.Fatal(err)
	}
	// Three at once: paused, the transport takes none until Resume.
	tr.Pause()
	for range 3 {
		d.Put(0, seg, 0)
	}
	tr.Resume()
	for range 3 {
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
	}
	l.mu.Lock()
	got := append([]bool(nil), l.lone...)
	l.mu.Unlock()
	want := []bool{true, false, false, true}
	if len(got) != len(want) {
		t.Fatalf("chains handled lone: %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("chains handled lone: %v, want %v", got, want)
		}
	}
}

// TestPassInterruptsOnce: chains a device completes inside its Handle are
// pushed at once, and the pass that served them interrupts the driver
// once, at its end, rather than once per chain.
func TestPassInterruptsOnce(t *testing.T) {
	d, tr := newRNG(t)
	if err := d.Init(0, 16); err != nil {
		t.Fatal(err)
	}
	d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 16, Write: true}}, 0)
	if _, err := d.Wait(0, wait); err != nil {
		t.Fatal(err)
	}
	if n := d.WaitInterrupts(0, wait); n != 1 {
		t.Fatalf("one chain: %d interrupts, want 1", n)
	}
	tr.Pause()
	for i := range 5 {
		d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase + uint64(i)*0x100, Len: 16, Write: true}}, 0)
	}
	tr.Resume()
	for range 5 {
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.WaitInterrupts(0, wait); n != 1 {
		t.Fatalf("five chains in one pass: %d interrupts, want 1", n)
	}
	time.Sleep(20 * time.Millisecond)
	if n := d.Interrupts(0); n != 0 {
		t.Fatalf("%d more interrupts after the pass's", n)
	}
}
