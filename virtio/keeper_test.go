package virtio_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// keeper keeps every chain of its one queue until fill.
type keeper struct {
	mu      sync.Mutex
	kept    []keptChain
	handled []uint16
}

type keptChain struct {
	head uint16
	done func(uint32)
}

func (*keeper) Type() uint16               { return 99 }
func (*keeper) Name() string               { return "keeper" }
func (*keeper) Features() uint64           { return 0 }
func (*keeper) QueueMax() []uint16         { return []uint16{8} }
func (*keeper) ReadConfig(uint64, []byte)  {}
func (*keeper) WriteConfig(uint64, []byte) {}
func (*keeper) Activate(uint64) error      { return nil }
func (*keeper) Describe() string           { return "keeper" }
func (k *keeper) Reset()                   { k.mu.Lock(); k.kept = nil; k.mu.Unlock() }
func (k *keeper) Handle(_ int, c *virtio.Chain, done func(uint32)) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.kept = append(k.kept, keptChain{c.Head, done})
	k.handled = append(k.handled, c.Head)
	return nil
}

func (k *keeper) Unkeep(int) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := len(k.kept)
	k.kept = nil
	return n
}

// fill completes the oldest kept chain with n bytes.
func (k *keeper) fill(n uint32) uint16 {
	k.mu.Lock()
	c := k.kept[0]
	k.kept = k.kept[1:]
	k.mu.Unlock()
	c.done(n)
	return c.head
}

func (k *keeper) waitHandled(t *testing.T, n int) []uint16 {
	t.Helper()
	for i := 0; i < 500; i++ {
		k.mu.Lock()
		h := slices.Clone(k.handled)
		k.mu.Unlock()
		if len(h) >= n {
			return h
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the device got fewer than %d chains", n)
	return nil
}

// within fails the test if f does not return in time (a transport that
// waits for kept chains hangs for ever).
func within(t *testing.T, what string, f func()) {
	t.Helper()
	ch := make(chan struct{})
	go func() { f(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("%s hangs with chains kept by the device", what)
	}
}

// TestKeeper: chains a device keeps do not stall a pause, a reset or a
// close; a pause gives them back to the queue (a snapshot sees them not
// taken) and the resumed device gets them again; a kept chain filled
// later reaches the driver.
func TestKeeper(t *testing.T) {
	mem := virtiotest.RAM(t, 4<<20)
	vm, tb := virtiotest.NewVM()
	k := &keeper{}
	tr, err := virtio.NewPCI(k, virtio.PCIConfig{Mem: mem, Router: tb})
	if err != nil {
		t.Fatal(err)
	}
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	buf := uint64(virtiotest.BufBase)
	var heads []uint16
	for i := range 3 {
		heads = append(heads, d.Put(0, []virtiotest.Seg{{GPA: buf + uint64(i)*0x1000, Len: 64, Write: true}}, 0))
	}
	k.waitHandled(t, 3)
	within(t, "Pause", tr.Pause)
	if s := tr.Save(); s.Queues[0].LastAvail != 0 {
		t.Fatalf("after a pause the queue's last_avail is %d, want 0 (the kept chains given back)", s.Queues[0].LastAvail)
	}
	tr.Resume()
	if got := k.waitHandled(t, 6); !slices.Equal(got[3:], heads) {
		t.Fatalf("after resume the device got chains %v, want %v again", got[3:], heads)
	}
	if h := k.fill(7); h != heads[0] {
		t.Fatalf("filled chain %d, want %d", h, heads[0])
	}
	if u, err := d.Wait(0, wait); err != nil || u.ID != uint32(heads[0]) || u.Len != 7 {
		t.Fatalf("used %+v, %v; want head %d with 7 bytes", u, err, heads[0])
	}
	within(t, "a driver reset", func() { d.SetCommon(0x14, 1, 0) })
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 64, Write: true}}, 0)
	k.waitHandled(t, 7)
	within(t, "Close", func() { tr.Close() })
}
