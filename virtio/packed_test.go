package virtio_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/memory"
	"govmm/virtio"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
	"govmm/virtio/vsock"
)

const packedFeats = virtio.FRingPacked | virtio.FIndirectDesc | virtio.FEventIdx

func newPackedRNG(t *testing.T, mem *virtiotest.Mem) (*virtiotest.Driver, *virtio.PCI) {
	t.Helper()
	return attach(t, rng.New(), mem, virtio.PCIConfig{Packed: true})
}

// TestPackedOffered: RING_PACKED is offered only by a transport
// configured with it, and is part of the description a restore checks.
func TestPackedOffered(t *testing.T) {
	d, _ := newRNG(t)
	if err := d.Init(packedFeats, 8); err != nil {
		t.Fatal(err)
	}
	if d.Feats&virtio.FRingPacked != 0 {
		t.Fatal("RING_PACKED negotiated with a transport not configured for it")
	}
	d2, tr2 := newPackedRNG(t, virtiotest.RAM(t, 4<<20))
	if err := d2.Init(packedFeats, 8); err != nil {
		t.Fatal(err)
	}
	if d2.Feats&virtio.FRingPacked == 0 {
		t.Fatal("RING_PACKED not offered")
	}
	tr2.Pause()
	if st := tr2.Save(); !strings.HasSuffix(st.Device, " packed=on") || !st.Queues[0].Packed {
		t.Fatalf("saved packed transport: device %q, queue %+v", st.Device, st.Queues[0])
	}
	tr2.Resume()
	// govmm info shows the transport's description: the option with it.
	if got := tr2.Describe(); !strings.HasSuffix(got, " packed=on") {
		t.Errorf("packed transport describes itself as %q", got)
	}
}

// TestPackedRNG drives a packed ring of a size that is not a power of two
// around many times: chains of one to three descriptors (crossing the
// ring's end) and indirect tables, each answered with the right buffer
// ID and length, and its buffers filled.
func TestPackedRNG(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		d, _ := newPackedRNG(t, virtiotest.RAM(t, 4<<20))
		feats := uint64(virtio.FRingPacked | virtio.FIndirectDesc)
		if eventIdx {
			feats |= virtio.FEventIdx
		}
		if err := d.Init(feats, 7); err != nil {
			t.Fatal(err)
		}
		buf := uint64(virtiotest.BufBase)
		for i := range 60 {
			n := 1 + i%3
			var segs []virtiotest.Seg
			for k := range n {
				segs = append(segs, virtiotest.Seg{GPA: buf + uint64(k)*0x1000, Len: uint32(16 + k), Write: true})
			}
			clear(d.Mem.B[buf : buf+0x4000])
			var ind uint64
			if i%4 == 3 {
				ind = buf + 0x8000
			}
			id := d.Put(0, segs, ind)
			u, err := d.Wait(0, wait)
			if err != nil {
				t.Fatalf("event-idx %v, request %d: %v", eventIdx, i, err)
			}
			want := uint32(0)
			for _, s := range segs {
				want += s.Len
			}
			if u.ID != uint32(id) || u.Len != want {
				t.Fatalf("event-idx %v, request %d: used %+v, want ID %d with %d bytes", eventIdx, i, u, id, want)
			}
			last := segs[n-1]
			if bytes.Equal(d.Mem.B[last.GPA:last.GPA+uint64(last.Len)], make([]byte, last.Len)) {
				t.Fatalf("event-idx %v, request %d: the last buffer was not filled", eventIdx, i)
			}
		}
		if _, _, _, usedWrap := d.PackedPos(0); d.Status() != 0xf {
			t.Fatalf("status %#x (used wrap %v)", d.Status(), usedWrap)
		}
		if n := d.WaitInterrupts(0, wait); n == 0 {
			t.Fatal("no queue interrupt")
		}
		if rung, _ := d.Kicks(0); rung == 0 {
			t.Fatal("no doorbell")
		}
	}
}

// holder keeps every chain of its one queue until the test completes it.
type holder struct {
	mu    sync.Mutex
	held  []keptChain
	ready chan struct{}
}

func newHolder() *holder { return &holder{ready: make(chan struct{}, 64)} }

func (*holder) Type() uint16               { return 98 }
func (*holder) Name() string               { return "holder" }
func (*holder) Features() uint64           { return 0 }
func (*holder) QueueMax() []uint16         { return []uint16{8} }
func (*holder) ReadConfig(uint64, []byte)  {}
func (*holder) WriteConfig(uint64, []byte) {}
func (*holder) Activate(uint64) error      { return nil }
func (*holder) Describe() string           { return "holder" }
func (h *holder) Reset()                   { h.mu.Lock(); h.held = nil; h.mu.Unlock() }
func (h *holder) Handle(_ int, c *virtio.Chain, done func(uint32)) error {
	h.mu.Lock()
	h.held = append(h.held, keptChain{c.Head, done})
	h.mu.Unlock()
	h.ready <- struct{}{}
	return nil
}

// waitHeld waits until the device holds n chains.
func (h *holder) waitHeld(t *testing.T, n int) {
	t.Helper()
	end := time.After(wait)
	for {
		h.mu.Lock()
		l := len(h.held)
		h.mu.Unlock()
		if l >= n {
			return
		}
		select {
		case <-h.ready:
		case <-end:
			t.Fatalf("the device holds %d chains, want %d", l, n)
		}
	}
}

// complete completes the held chain with buffer ID id.
func (h *holder) complete(t *testing.T, id uint16, n uint32) {
	t.Helper()
	h.mu.Lock()
	i := slices.IndexFunc(h.held, func(k keptChain) bool { return k.head == id })
	if i < 0 {
		h.mu.Unlock()
		t.Fatalf("the device does not hold buffer ID %d", id)
	}
	k := h.held[i]
	h.held = slices.Delete(h.held, i, i+1)
	h.mu.Unlock()
	k.done(n)
}

func newPackedHolder(t *testing.T, feats uint64, size uint16) (*virtiotest.Driver, *holder, *virtio.PCI) {
	return newHolderOn(t, true, feats, size)
}

// newHolderOn attaches a holder on a packed or split ring of size with
// feats negotiated. The chains it still holds when the test ends are
// completed first: the transport's close waits for chains in flight, and
// a failed test must not leave any.
func newHolderOn(t *testing.T, packed bool, feats uint64, size uint16) (*virtiotest.Driver, *holder, *virtio.PCI) {
	t.Helper()
	mem := virtiotest.RAM(t, 4<<20)
	h := newHolder()
	d, tr := attach(t, h, mem, virtio.PCIConfig{Packed: packed})
	if err := d.Init(feats, size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.mu.Lock()
		held := h.held
		h.held = nil
		h.mu.Unlock()
		for _, k := range held {
			k.done(0)
		}
	})
	return d, h, tr
}

// TestPackedOutOfOrder: chains of different lengths completed in another
// order than they were made available come back in completion order,
// each with its buffer ID, and the driver's ring accounting (each used
// element skips its chain's slots) stays in step with the device's over
// many wraps.
func TestPackedOutOfOrder(t *testing.T) {
	d, h, _ := newPackedHolder(t, packedFeats, 8)
	buf := uint64(virtiotest.BufBase)
	seg := func(k int) virtiotest.Seg { return virtiotest.Seg{GPA: buf + uint64(k)*0x100, Len: 8, Write: true} }
	for round := range 20 {
		// 2 + 1 + 3 + indirect(4) = 7 of the 8 slots.
		ids := []uint16{
			d.Put(0, []virtiotest.Seg{seg(0), seg(1)}, 0),
			d.Put(0, []virtiotest.Seg{seg(2)}, 0),
			d.Put(0, []virtiotest.Seg{seg(3), seg(4), seg(5)}, 0),
			d.Put(0, []virtiotest.Seg{seg(6), seg(7), seg(8), seg(9)}, buf+0x8000),
		}
		h.waitHeld(t, 4)
		order := []int{2, 0, 3, 1}
		if round%2 == 1 {
			order = []int{3, 1, 2, 0}
		}
		for k, i := range order {
			h.complete(t, ids[i], uint32(100*round+k))
			u, err := d.Wait(0, wait)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			if u.ID != uint32(ids[i]) || u.Len != uint32(100*round+k) {
				t.Fatalf("round %d, completion %d: used %+v, want ID %d with %d bytes", round, k, u, ids[i], 100*round+k)
			}
		}
	}
	if d.Status() != 0xf {
		t.Fatalf("status %#x", d.Status())
	}
}

// TestPackedEventSuppression: the driver's event suppression area
// decides interrupts (disabled: none; enabled: each; at a descriptor
// with EVENT_IDX: only when the used element there is written), and the
// device's asks the driver to ring only for the next position it will
// look at.
func TestPackedEventSuppression(t *testing.T) {
	d, h, _ := newPackedHolder(t, packedFeats, 8)
	buf := uint64(virtiotest.BufBase)
	one := []virtiotest.Seg{{GPA: buf, Len: 8, Write: true}}
	// Done with one request: after it the device asks to be notified
	// at position 1 of round 1.
	id := d.Put(0, one, 0)
	h.waitHeld(t, 1)
	_, _, dev := d.Rings(0)
	ow, fl := binary.LittleEndian.Uint16(d.Mem.B[dev:]), binary.LittleEndian.Uint16(d.Mem.B[dev+2:])
	if fl != 2 || ow != 1|1<<15 {
		t.Fatalf("device event suppression: flags %d, off_wrap %#x; want 2 (at a descriptor), %#x", fl, ow, 1|1<<15)
	}
	d.SetInterrupts(0, 1, 0) // disabled
	h.complete(t, id, 1)
	if _, err := d.Wait(0, wait); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if n := d.Interrupts(0); n != 0 {
		t.Fatalf("%d interrupts with interrupts disabled", n)
	}
	d.SetInterrupts(0, 0, 0) // enabled
	for range 2 {
		id = d.Put(0, one, 0)
		h.waitHeld(t, 1)
		h.complete(t, id, 1)
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
		if n := d.WaitInterrupts(0, wait); n != 1 {
			t.Fatalf("%d interrupts for one used element with interrupts enabled, want 1", n)
		}
	}
	// At a descriptor: positions 3..7 of round 1, then 0 of round 0,
	// are used next; ask for an interrupt at position 0 of round 0 (the
	// sixth element). The driver's Wait moves off_wrap on, as Linux's
	// get_buf does; the test puts it back.
	d.SetInterrupts(0, 2, 0)
	for k := range 6 {
		id = d.Put(0, one, 0)
		h.waitHeld(t, 1)
		h.complete(t, id, 1)
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
		d.SetInterrupts(0, 2, 0)
		want := uint64(0)
		if k == 5 {
			want = 1
			if n := d.WaitInterrupts(0, wait); n != want {
				t.Fatalf("element %d (position 0 of round 0): %d interrupts, want 1", k, n)
			}
			continue
		}
		time.Sleep(5 * time.Millisecond)
		if n := d.Interrupts(0); n != want {
			t.Fatalf("element %d, before the event position: %d interrupts, want 0", k, n)
		}
	}
	if d.Status() != 0xf {
		t.Fatalf("status %#x", d.Status())
	}
}

// TestPackedKeeper: with a packed ring, chains a device keeps are given
// back by a pause (the saved position is before them), the resumed device
// gets the same buffer IDs again, and filling them reaches the driver.
func TestPackedKeeper(t *testing.T) {
	mem := virtiotest.RAM(t, 4<<20)
	vm, tb := virtiotest.NewVM()
	k := &keeper{}
	tr, err := virtio.NewPCI(k, virtio.PCIConfig{Mem: mem, Router: tb, Packed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(packedFeats, 8); err != nil {
		t.Fatal(err)
	}
	buf := uint64(virtiotest.BufBase)
	// Move the ring past its first wrap, so the rewind crosses it.
	for i := range 3 {
		d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 8, Write: true}, {GPA: buf + 8, Len: 8, Write: true}}, 0)
		k.waitHandled(t, i+1)
		k.fill(4)
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
	}
	var ids []uint16
	for i := range 3 {
		ids = append(ids, d.Put(0, []virtiotest.Seg{{GPA: buf + uint64(i)*0x1000, Len: 64, Write: true}, {GPA: buf + uint64(i)*0x1000 + 64, Len: 64, Write: true}}, 0))
	}
	k.waitHandled(t, 6)
	within(t, "Pause", tr.Pause)
	s := tr.Save().Queues[0]
	if !s.Packed || s.LastAvail != 6 || !s.AvailWrap {
		t.Fatalf("after a pause the queue is at %+v, want position 6 of round 1 (the kept chains given back)", s)
	}
	tr.Resume()
	if got := k.waitHandled(t, 9); !slices.Equal(got[6:], ids) {
		t.Fatalf("after resume the device got buffer IDs %v, want %v again", got[6:], ids)
	}
	if h := k.fill(7); h != ids[0] {
		t.Fatalf("filled %d, want %d", h, ids[0])
	}
	if u, err := d.Wait(0, wait); err != nil || u.ID != uint32(ids[0]) || u.Len != 7 {
		t.Fatalf("used %+v, %v; want ID %d with 7 bytes", u, err, ids[0])
	}
	within(t, "Close", func() { tr.Close() })
}

// TestPackedSaveRestore: a packed queue saved past a wrap, through JSON,
// restores with packed rings and its wrap counters on a new transport,
// which serves the driver's next requests where the old one stopped; a
// transport without packed rings refuses the state, and packed queue
// state does not restore into a split queue.
func TestPackedSaveRestore(t *testing.T) {
	mem := virtiotest.RAM(t, 4<<20)
	d, tr := newPackedRNG(t, mem)
	if err := d.Init(packedFeats, 5); err != nil {
		t.Fatal(err)
	}
	buf := uint64(virtiotest.BufBase)
	for i := range 4 {
		d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 8, Write: true}, {GPA: buf + 8, Len: 8, Write: true}}, 0)
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	tr.Pause()
	fs, st := tr.Function().Save(), tr.Save()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var st2 virtio.PCIState
	if err := json.Unmarshal(b, &st2); err != nil {
		t.Fatal(err)
	}
	if q := st2.Queues[0]; !q.Packed || q.LastAvail != 3 || q.AvailWrap || q.UsedIdx != 3 || q.UsedWrap {
		t.Fatalf("saved queue %+v, want positions 3 of round 0", q)
	}
	// Not on a transport without packed rings.
	_, tbx := virtiotest.NewVM()
	trx, _ := virtio.NewPCI(rng.New(), virtio.PCIConfig{Mem: mem, Router: tbx})
	defer trx.Close()
	if err := trx.Restore(st2); err == nil || !strings.Contains(err.Error(), "packed=on") {
		t.Fatalf("restore of a packed device without packed rings: %v", err)
	}
	d2, _ := attachRestored(t, rng.New(), mem, virtio.PCIConfig{Packed: true}, fs, st2)
	// The old driver keeps its positions and rings the new transport.
	for i := range 6 {
		clear(mem.B[buf+0x1000 : buf+0x1040])
		id := d.Put(0, []virtiotest.Seg{{GPA: buf + 0x1000, Len: 32, Write: true}, {GPA: buf + 0x1020, Len: 32, Write: true}}, 0)
		d2.Notify(0)
		u, err := d.Wait(0, wait)
		if err != nil || u.ID != uint32(id) || u.Len != 64 {
			t.Fatalf("after restore, request %d: used %+v, %v", i, u, err)
		}
	}
	// A queue state that says packed refuses a split driver.
	bad := st2
	bad.Regs.DrvFeatures &^= virtio.FRingPacked
	bad.Regs.Queues = slices.Clone(st2.Regs.Queues)
	bad.Regs.Queues[0].Size = 4
	_, tb3 := virtiotest.NewVM()
	tr3, _ := virtio.NewPCI(rng.New(), virtio.PCIConfig{Mem: mem, Router: tb3, Packed: true})
	defer tr3.Close()
	if err := tr3.Restore(bad); err == nil || !strings.Contains(err.Error(), "packed") {
		t.Fatalf("packed queue state for a split driver: %v", err)
	}
}

// TestPackedMalformed: each broken packed ring is a *QueueError naming
// what is wrong, never a panic; the queue serves a good chain after a
// rejected one only once it is rebuilt (the transport resets the device).
func TestPackedMalformed(t *testing.T) {
	le := binary.LittleEndian
	const size = 8
	put := func(b []byte, pos int, addr uint64, l uint32, id, fl uint16) {
		e := b[pos*16:]
		le.PutUint64(e, addr)
		le.PutUint32(e[8:], l)
		le.PutUint16(e[12:], id)
		le.PutUint16(e[14:], fl)
	}
	const av = 1 << 7 // available in round 1
	for _, c := range []struct {
		name, want string
		indirect   bool
		setup      func(ring, mem []byte)
	}{
		{"outside RAM", "not in RAM", false, func(r, _ []byte) { put(r, 0, 1<<40, 8, 0, av|2) }},
		{"straddles the end of RAM", "not in RAM", false, func(r, m []byte) { put(r, 0, uint64(len(m))-4, 8, 0, av|2) }},
		{"chain longer than the ring", "longer than the ring", false, func(r, _ []byte) {
			for i := range size {
				put(r, i, 0x8000, 8, 0, av|1|2)
			}
		}},
		{"chain into a descriptor of another round", "not available in this round", false, func(r, _ []byte) {
			put(r, 0, 0x8000, 8, 0, av|1|2)
			put(r, 1, 0x8000, 8, 0, 1<<15|2)
		}},
		{"chain across the wrap without toggling", "not available in this round", false, func(r, _ []byte) {
			// Set up by the test: position 7, then 0 of round 0.
		}},
		{"readable after writable", "readable after", false, func(r, _ []byte) {
			put(r, 0, 0x8000, 8, 0, av|1|2)
			put(r, 1, 0x8100, 8, 0, av)
		}},
		{"indirect not negotiated", "did not negotiate", false, func(r, _ []byte) { put(r, 0, 0x9000, 16, 0, av|4) }},
		{"indirect and chained", "both indirect and chained", true, func(r, _ []byte) { put(r, 0, 0x9000, 16, 0, av|4|1) }},
		{"indirect after direct", "after direct", true, func(r, _ []byte) {
			put(r, 0, 0x8000, 8, 0, av|1)
			put(r, 1, 0x9000, 16, 0, av|4)
		}},
		{"indirect of odd length", "multiple of 16", true, func(r, _ []byte) { put(r, 0, 0x9000, 15, 0, av|4) }},
		{"indirect table outside RAM", "not in RAM", true, func(r, _ []byte) { put(r, 0, 1<<40, 32, 0, av|4) }},
		{"nested indirect", "another", true, func(r, m []byte) {
			put(m[0x9000:], 0, 0x9000, 16, 0, 4)
			put(r, 0, 0x9000, 16, 0, av|4)
		}},
		{"indirect entry outside RAM", "not in RAM", true, func(r, m []byte) {
			put(m[0x9000:], 0, 0x8000, 8, 0, 0)
			put(m[0x9000:], 1, 1<<40, 8, 0, 2)
			put(r, 0, 0x9000, 32, 0, av|4)
		}},
		{"buffer ID in flight twice", "still holds", false, func(r, _ []byte) {
			put(r, 0, 0x8000, 8, 3, av|2)
			put(r, 1, 0x8000, 8, 3, av|2)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			mem := virtiotest.RAM(t, 0x10000)
			cfg := virtio.QueueConfig{Size: size, Desc: 0x1000, Avail: 0x2000, Used: 0x2004}
			q, err := virtio.NewPackedQueue(mem, 2, cfg, 256, true, c.indirect)
			if err != nil {
				t.Fatal(err)
			}
			ring := mem.B[0x1000 : 0x1000+16*size]
			if strings.HasPrefix(c.name, "chain across the wrap") {
				// Seven one-descriptor chains, then a chain at
				// position 7 whose second descriptor (position 0)
				// still carries round 1's flags.
				for i := range 7 {
					put(ring, i, 0x8000, 8, uint16(i), av|2)
				}
				for i := range 7 {
					ch, err := q.Pop(mem)
					if err != nil || ch == nil {
						t.Fatalf("chain %d: %v %v", i, ch, err)
					}
					q.Push(ch.Head, 0)
				}
				put(ring, 7, 0x8000, 8, 9, av|1|2)
				put(ring, 0, 0x8000, 8, 9, av|2)
			} else {
				c.setup(ring, mem.B)
			}
			var qerr *virtio.QueueError
			for range 3 {
				ch, err := q.Pop(mem)
				if err != nil {
					if !asQueueError(err, &qerr) || qerr.Queue != 2 || !strings.Contains(err.Error(), c.want) {
						t.Fatalf("error %v, want a queue 2 error saying %q", err, c.want)
					}
					return
				}
				if ch == nil {
					break
				}
			}
			t.Fatalf("no error for %s", c.name)
		})
	}
}

func asQueueError(err error, qe **virtio.QueueError) bool {
	e, ok := err.(*virtio.QueueError)
	*qe = e
	return ok
}

// TestPackedMalformedNeedsReset: through the transport, a malformed
// packed ring puts the device into DEVICE_NEEDS_RESET, and after a reset
// it serves packed rings again.
func TestPackedMalformedNeedsReset(t *testing.T) {
	d, _ := newPackedRNG(t, virtiotest.RAM(t, 4<<20))
	var logbuf virtiotest.SyncBuffer
	restore := captureLog(&logbuf)
	defer restore()
	if err := d.Init(packedFeats, 8); err != nil {
		t.Fatal(err)
	}
	d.Put(0, []virtiotest.Seg{{GPA: 1 << 40, Len: 8, Write: true}}, 0)
	end := time.Now().Add(wait)
	for d.Status()&virtio.StatusNeedsReset == 0 {
		if time.Now().After(end) {
			t.Fatalf("device did not ask for a reset (status %#x)", d.Status())
		}
		time.Sleep(time.Millisecond)
	}
	if l := logbuf.String(); !strings.Contains(l, "not in RAM") || !strings.Contains(l, "queue 0") {
		t.Fatalf("log %q", l)
	}
	if err := d.Init(packedFeats, 8); err != nil {
		t.Fatal(err)
	}
	buf := uint64(virtiotest.BufBase)
	id := d.Put(0, []virtiotest.Seg{{GPA: buf, Len: 16, Write: true}}, 0)
	if u, err := d.Wait(0, wait); err != nil || u.ID != uint32(id) || u.Len != 16 {
		t.Fatalf("after reset: %+v %v", u, err)
	}
}

// TestPackedDirtyLog: a packed queue's device writes (the used element in
// the descriptor ring, the device event suppression area, the buffers)
// are in the VMM's dirty log.
func TestPackedDirtyLog(t *testing.T) {
	mem, err := virtiotest.NewMem(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	// Unmapped after the transport's Close (cleanups run last first):
	// its queue goroutine may still look at the ring.
	t.Cleanup(func() { mem.RAM.Close() })
	d, _ := newPackedRNG(t, mem)
	if err := d.Init(packedFeats, 16); err != nil {
		t.Fatal(err)
	}
	desc, _, dev := d.Rings(0)
	if err := mem.RAM.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	defer mem.RAM.StopDirtyLog()
	mem.RAM.TakeDirty(0, nil)
	buf := uint64(virtiotest.BufBase)
	d.Put(0, []virtiotest.Seg{{GPA: buf + 0x5000, Len: 8, Write: true}}, 0)
	if _, err := d.Wait(0, wait); err != nil {
		t.Fatal(err)
	}
	got := dirtyPages(mem.RAM)
	for _, p := range []uint64{page(desc), page(dev), buf + 0x5000} {
		if !slices.Contains(got, p) {
			t.Fatalf("dirty %#x lacks %#x", got, p)
		}
	}
	_ = memory.PageSize
}

// TestPackedDisk: --disk ...,packed=on makes a disk whose transport
// offers packed rings and names the option in its saved description;
// writes and reads through a packed ring (chains of header, data and
// status, out of the ring's end and back) reach the image.
func TestPackedDisk(t *testing.T) {
	img := t.TempDir() + "/disk.img"
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := blk.ParseFlag("path=" + img + ",packed=on")
	if err != nil || !cfg.Packed {
		t.Fatalf("ParseFlag: %+v, %v", cfg, err)
	}
	if _, err := blk.ParseFlag("path=" + img + ",packed=maybe"); err == nil {
		t.Fatal("packed=maybe accepted")
	}
	if c, err := virtionet.ParseFlag("tap=t0,packed=on"); err != nil || !c.Packed {
		t.Fatalf("--net packed=on: %+v, %v", c, err)
	}
	if c, err := vsock.ParseFlag("cid=3,socket=/s,packed=on"); err != nil || !c.Packed {
		t.Fatalf("--vsock packed=on: %+v, %v", c, err)
	}
	dev, err := blk.Open(cfg, "vda")
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	mem := virtiotest.RAM(t, 4<<20)
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(packedFeats, 16); err != nil {
		t.Fatal(err)
	}
	if d.Feats&virtio.FRingPacked == 0 {
		t.Fatal("packed=on disk does not offer RING_PACKED")
	}
	le := binary.LittleEndian
	buf := uint64(virtiotest.BufBase)
	hdr, data, status := buf, buf+0x1000, buf+0x3000
	request := func(typ uint32, sector uint64, n uint32, ind uint64) {
		t.Helper()
		le.PutUint32(mem.B[hdr:], typ)
		le.PutUint64(mem.B[hdr+8:], sector)
		mem.B[status] = 0xff
		id := d.Put(0, []virtiotest.Seg{{GPA: hdr, Len: 16}, {GPA: data, Len: n, Write: typ == 0}, {GPA: status, Len: 1, Write: true}}, ind)
		u, err := d.Wait(0, wait)
		if err != nil || u.ID != uint32(id) || mem.B[status] != 0 {
			t.Fatalf("request type %d sector %d: used %+v, %v, status %d", typ, sector, u, err, mem.B[status])
		}
	}
	for i := range 12 {
		want := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		copy(mem.B[data:], want)
		var ind uint64
		if i%3 == 2 {
			ind = buf + 0x8000
		}
		request(1, uint64(i*8), 4096, ind)
		clear(mem.B[data : data+4096])
		request(0, uint64(i*8), 4096, 0)
		if !bytes.Equal(mem.B[data:data+4096], want) {
			t.Fatalf("block %d read back differs", i)
		}
		onDisk, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(onDisk[i*4096:(i+1)*4096], want) {
			t.Fatalf("block %d in the image differs", i)
		}
	}
	tr.Pause()
	if st := tr.Save(); !strings.HasSuffix(st.Device, " packed=on") {
		t.Fatalf("saved description %q lacks packed=on", st.Device)
	}
	tr.Resume()
}

// TestPackedLargestIndirect: an indirect table of 65536 entries (1 MiB,
// the largest allowed) is a chain of 65536 buffers, not of none.
func TestPackedLargestIndirect(t *testing.T) {
	mem := virtiotest.RAM(t, 2<<20)
	q, err := virtio.NewPackedQueue(mem, 0, virtio.QueueConfig{Size: 4, Desc: 0x1000, Avail: 0x2000, Used: 0x2004}, 256, false, true)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	const table = 0x100000
	for i := range 1 << 16 {
		le.PutUint64(mem.B[table+16*i:], 0x8000)
		le.PutUint32(mem.B[table+16*i+8:], 1)
		le.PutUint16(mem.B[table+16*i+14:], 2)
	}
	d := mem.B[0x1000:]
	le.PutUint64(d, table)
	le.PutUint32(d[8:], 1<<20)
	le.PutUint16(d[14:], 1<<7|4)
	c, err := q.Pop(mem)
	if err != nil || c == nil || len(c.Writable) != 1<<16 {
		t.Fatalf("chain %v, %v; want 65536 writable buffers", c != nil, err)
	}
}
