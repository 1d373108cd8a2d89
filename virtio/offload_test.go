package virtio_test

import (
	"encoding/binary"
	"slices"
	"sync"
	"testing"

	"time"

	"golang.org/x/sys/unix"

	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// fakeKernel is an Offloader whose queues 0 and 1 a pretend kernel
// backend serves; queue 2 the transport serves (vhost-vsock's layout).
// It records what the transport asks of it.
type fakeKernel struct {
	mu      sync.Mutex
	running bool
	starts  [][]virtio.OffloadQueue
	stops   int
	calls   map[int][]int // SetCall's fds, by queue
	bases   map[int]uint16
	handled []int
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{calls: map[int][]int{}, bases: map[int]uint16{}}
}

func (*fakeKernel) Type() uint16               { return 98 }
func (*fakeKernel) Name() string               { return "fake-kernel" }
func (*fakeKernel) Features() uint64           { return 0 }
func (*fakeKernel) QueueMax() []uint16         { return []uint16{8, 8, 8} }
func (*fakeKernel) ReadConfig(uint64, []byte)  {}
func (*fakeKernel) WriteConfig(uint64, []byte) {}
func (*fakeKernel) Activate(uint64) error      { return nil }
func (*fakeKernel) Describe() string           { return "fake-kernel" }
func (*fakeKernel) Reset()                     {}
func (k *fakeKernel) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	k.mu.Lock()
	k.handled = append(k.handled, q)
	k.mu.Unlock()
	done(0)
	return nil
}
func (*fakeKernel) Offloaded(q int) bool { return q < 2 }
func (k *fakeKernel) StartOffload(_ uint64, qs []virtio.OffloadQueue) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.running = true
	k.starts = append(k.starts, slices.Clone(qs))
	for _, q := range qs {
		k.calls[q.Index] = append(k.calls[q.Index], q.Call)
	}
	return nil
}
func (k *fakeKernel) StopOffload() (map[int]uint16, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.running = false
	k.stops++
	out := map[int]uint16{}
	for q, b := range k.bases {
		out[q] = b
	}
	return out, nil
}
func (k *fakeKernel) SetCall(q, fd int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls[q] = append(k.calls[q], fd)
	return nil
}

// call is the eventfd queue q's backend signals now.
func (k *fakeKernel) call(q int) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.calls[q]
	return c[len(c)-1]
}

func signalFD(t *testing.T, fd int) {
	t.Helper()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatalf("signal fd %d: %v", fd, err)
	}
}

// readFD returns (and clears) an eventfd's counter; 0 if it is zero.
func readFD(t *testing.T, fd int) uint64 {
	t.Helper()
	var b [8]byte
	n, err := unix.Read(fd, b[:])
	if err == unix.EAGAIN {
		return 0
	}
	if err != nil || n != 8 {
		t.Fatalf("read fd %d: %d, %v", fd, n, err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// TestOffload drives a transport whose device hands queues 0 and 1 to a
// backend: the backend gets the rings, the doorbell's ioeventfd as its
// kick and the vector's irqfd eventfd as its call; masking the vector
// moves the call to the transport, which holds the message pending;
// pause, resume and reset stop and start the backend and take its
// positions back; the transport never pops an offloaded queue.
func TestOffload(t *testing.T) {
	mem, err := virtiotest.NewMem(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeKernel()
	d, tr := attach(t, k, mem, virtio.PCIConfig{})
	f := tr.Function()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], virtiotest.BARBase)
	f.WriteConfig(0x10, b[:4])
	f.WriteConfig(0x14, b[4:])
	f.WriteConfig(0x04, []byte{2, 0})
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	if len(k.starts) != 1 || len(k.starts[0]) != 2 {
		t.Fatalf("StartOffload calls %+v, want one with queues 0 and 1", k.starts)
	}
	for i, q := range k.starts[0] {
		desc, avail, used := d.Rings(i)
		if q.Index != i || q.Config.Size != 8 || q.Config.Desc != desc || q.Config.Avail != avail || q.Config.Used != used || q.Base != 0 {
			t.Errorf("queue %d handed over as %+v; the driver's rings are %#x %#x %#x", i, q, desc, avail, used)
		}
		// The kick is the ioeventfd bound at the queue's doorbell.
		e, ok := d.VM.IOEvents[q.Kick]
		if !ok || e.Addr != virtiotest.BARBase+0x3000+4*uint64(i) || e.Len != 2 {
			t.Errorf("queue %d's kick fd %d is not its doorbell's ioeventfd (%+v, %v)", i, q.Kick, e, ok)
		}
		// The call is the vector's irqfd eventfd.
		irq, ok := d.VM.IRQFDs[q.Call]
		if !ok || d.VM.Routes[irq.GSI].MSI.Data != uint32(virtiotest.MSIXData0+i) {
			t.Errorf("queue %d's call fd %d is not vector %d's irqfd", i, q.Call, i)
		}
		// The transport signalled the kick once at the start.
		readFD(t, q.Kick)
	}
	q0 := k.starts[0][0]

	// A doorbell that exits (no ioeventfd for this width) reaches the
	// kick, and the transport does not serve the queue.
	d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 64, Write: true}}, 0)
	if n := readFD(t, q0.Kick); n != 1 {
		t.Errorf("the kick counted %d after a doorbell, want 1", n)
	}
	// The queue the VMM serves works.
	d.Put(2, []virtiotest.Seg{{GPA: virtiotest.BufBase + 0x1000, Len: 16}}, 0)
	if _, err := d.Wait(2, wait); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	handled := slices.Clone(k.handled)
	k.mu.Unlock()
	if !slices.Equal(handled, []int{2}) {
		t.Errorf("the device handled chains of queues %v, want only queue 2's", handled)
	}

	// The backend's call interrupts directly.
	signalFD(t, k.call(0))
	if n := d.Interrupts(0); n != 1 {
		t.Errorf("vector 0 took %d interrupts from the backend's call, want 1", n)
	}

	// Masking vector 0 moves the call to the transport, which keeps the
	// message pending; unmasking moves it back and delivers it.
	table := uint64(0x4000)
	d.SetCommon(0, 4, 0) // a harmless register write between
	bar := tr.BAR()
	bar.Write(table+12, []byte{1, 0, 0, 0})
	masked := k.call(0)
	if masked == q0.Call {
		t.Fatal("masking vector 0 left the backend's call on the vector's irqfd")
	}
	signalFD(t, masked)
	pba := make([]byte, 1)
	for i := 0; i < 500; i++ {
		bar.Read(0x6000, pba)
		if pba[0]&1 != 0 {
			break
		}
		sleepMS(2)
	}
	if pba[0]&1 == 0 {
		t.Fatal("a backend call while vector 0 is masked did not set its pending bit")
	}
	if n := d.Interrupts(0); n != 0 {
		t.Fatalf("masked vector 0 took %d interrupts", n)
	}
	bar.Write(table+12, []byte{0, 0, 0, 0})
	if k.call(0) != q0.Call {
		t.Error("unmasking vector 0 did not give the backend its irqfd back")
	}
	if n := d.Interrupts(0); n != 1 {
		t.Errorf("unmasking delivered %d pending interrupts, want 1", n)
	}

	// Pause stops the backend and takes its positions: the next
	// available index it reports, the used index in the ring.
	_, _, used := d.Rings(0)
	binary.LittleEndian.PutUint16(mem.B[used+2:], 2)
	k.mu.Lock()
	k.bases[0], k.bases[1] = 3, 0
	k.mu.Unlock()
	tr.Pause()
	if k.running || k.stops != 1 {
		t.Fatalf("after Pause: running %v, %d stops", k.running, k.stops)
	}
	st := tr.Save()
	if q := st.Queues[0]; q.LastAvail != 3 || q.UsedIdx != 2 {
		t.Errorf("saved queue 0 at available %d used %d, want 3 and 2", q.LastAvail, q.UsedIdx)
	}
	tr.Resume()
	if !k.running || len(k.starts) != 2 || k.starts[1][0].Base != 3 {
		t.Fatalf("after Resume: running %v, starts %+v; want queue 0 from 3", k.running, k.starts)
	}

	// MSI-X off: the call is the transport's, which raises the ISR.
	var ctl [2]byte
	f.ReadConfig(msixCap(t, tr)+2, ctl[:])
	ctl[1] &^= 0x80
	f.WriteConfig(msixCap(t, tr)+2, ctl[:])
	if k.call(0) == q0.Call {
		t.Fatal("with MSI-X off the backend still signals the vector's irqfd")
	}
	signalFD(t, k.call(0))
	isr := make([]byte, 1)
	for i := 0; i < 500 && isr[0] == 0; i++ {
		sleepMS(2)
		bar.Read(0x1000, isr)
	}
	if isr[0]&1 == 0 {
		t.Error("a backend call with MSI-X off did not set the ISR's queue bit")
	}

	// A driver reset stops the backend.
	d.SetCommon(0x14, 1, 0)
	if k.running || k.stops != 2 {
		t.Errorf("after reset: running %v, %d stops", k.running, k.stops)
	}
}

// TestOffloadRefusesPacked: the backend serves split rings only.
func TestOffloadRefusesPacked(t *testing.T) {
	mem, err := virtiotest.NewMem(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	_, tb := virtiotest.NewVM()
	if _, err := virtio.NewPCI(newFakeKernel(), virtio.PCIConfig{Mem: mem, Router: tb, Packed: true}); err == nil {
		t.Fatal("a device with offloaded queues was built with packed=on")
	}
}

// TestOffloadRestore: a restored transport starts the backend at Start,
// from the saved positions, not before.
func TestOffloadRestore(t *testing.T) {
	mem, err := virtiotest.NewMem(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeKernel()
	d, tr := attach(t, k, mem, virtio.PCIConfig{})
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	k.bases[0], k.bases[1] = 5, 7
	k.mu.Unlock()
	tr.Pause()
	st, fs := tr.Save(), tr.Function().Save()
	k2 := newFakeKernel()
	vm, tb := virtiotest.NewVM()
	tr2, err := virtio.NewPCI(k2, virtio.PCIConfig{Mem: mem, Router: tb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr2.Close() })
	_ = vm
	if err := tr2.Function().Restore(fs); err != nil {
		t.Fatal(err)
	}
	if err := tr2.Restore(st); err != nil {
		t.Fatal(err)
	}
	if len(k2.starts) != 0 {
		t.Fatal("the backend started before the restored vCPUs run")
	}
	tr2.Start()
	if len(k2.starts) != 1 || k2.starts[0][0].Base != 5 || k2.starts[0][1].Base != 7 {
		t.Fatalf("restored backend started as %+v, want queues from 5 and 7", k2.starts)
	}
}

func sleepMS(n int) { time.Sleep(time.Duration(n) * time.Millisecond) }

// msixCap is the MSI-X capability's offset in configuration space.
func msixCap(t *testing.T, tr *virtio.PCI) int {
	t.Helper()
	c := tr.Function().Capabilities(pci.CapIDMSIX)
	if len(c) != 1 {
		t.Fatal("no MSI-X capability")
	}
	return c[0]
}
