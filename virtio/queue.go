package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
)

// Descriptor flags (virtio 1.2 §2.7.5).
const (
	descFNext     = 1
	descFWrite    = 2
	descFIndirect = 4

	descSize = 16

	availFNoInterrupt = 1
)

// Memory is guest RAM as a queue sees it: the host bytes behind a guest
// physical range that lies entirely in RAM (memory.Memory implements it).
//
// MarkDirty tells the VMM's dirty log (live migration) that the device
// wrote [gpa, gpa+n): the accelerator's log sees only the vCPUs' writes.
// The queue marks its used-ring writes, the transport each chain's
// device-writable buffers when the chain completes; a device itself never
// needs to. It must be cheap while no log is on.
type Memory interface {
	Slice(gpa, n uint64) ([]byte, error)
	MarkDirty(gpa, n uint64)
}

// Buffer is one descriptor's guest buffer, resolved to host memory.
type Buffer struct {
	GPA   uint64
	Bytes []byte
}

// Chain is one request: a descriptor chain the driver made available, its
// device-readable buffers first, then its device-writable ones.
type Chain struct {
	Head     uint16
	Readable []Buffer
	Writable []Buffer
}

// ReadableLen and WritableLen are the total lengths of each part.
func (c *Chain) ReadableLen() uint64 { return buffersLen(c.Readable) }

// WritableLen is the total length of the device-writable buffers.
func (c *Chain) WritableLen() uint64 { return buffersLen(c.Writable) }

func buffersLen(bs []Buffer) uint64 {
	var n uint64
	for _, b := range bs {
		n += uint64(len(b.Bytes))
	}
	return n
}

// Read copies the readable part from offset off into p and returns the
// bytes copied.
func (c *Chain) Read(off uint64, p []byte) int { return gather(c.Readable, off, p, false) }

// Write copies p into the writable part at offset off and returns the
// bytes copied.
func (c *Chain) Write(off uint64, p []byte) int { return gather(c.Writable, off, p, true) }

func gather(bs []Buffer, off uint64, p []byte, write bool) int {
	n := 0
	for _, b := range bs {
		if len(p) == 0 {
			break
		}
		l := uint64(len(b.Bytes))
		if off >= l {
			off -= l
			continue
		}
		var k int
		if write {
			k = copy(b.Bytes[off:], p)
		} else {
			k = copy(p, b.Bytes[off:])
		}
		p, n, off = p[k:], n+k, 0
	}
	return n
}

// QueueError is a guest's malformed queue: the device must stop using the
// queue and ask for a reset.
type QueueError struct {
	Queue int
	Err   error
}

func (e *QueueError) Error() string { return fmt.Sprintf("queue %d: %v", e.Queue, e.Err) }
func (e *QueueError) Unwrap() error { return e.Err }

// MaxChainBytes bounds one chain's total length (the used ring's length
// field is 32 bits).
const MaxChainBytes = 1<<32 - 1

// QueueConfig is what the driver programs through the transport.
type QueueConfig struct {
	Size       uint16 `json:"size"`
	Ready      bool   `json:"ready"`
	Desc       uint64 `json:"desc"`
	Avail      uint64 `json:"avail"`
	Used       uint64 `json:"used"`
	MSIXVector uint16 `json:"msix_vector"`
}

// Queue is one virtqueue over guest memory: a split ring (virtio 1.2
// §2.7, NewQueue) or a packed one (§2.8, NewPackedQueue, packed.go). Pop
// is called by one goroutine at a time (the queue's notification
// handler); Push and NeedInterrupt may be called from any goroutine.
//
// In a packed queue avail and used are the driver and device event
// suppression areas, lastAvail and usedIdx ring positions (their wrap
// counters are in packed), signalled a used sequence number (usedSeq),
// and a chain's Head is its buffer ID.
type Queue struct {
	index    int
	eventIdx bool
	indirect bool
	size     uint16

	desc, avail, used []byte
	// mem and usedGPA are for marking the device's used-ring writes
	// dirty.
	mem     Memory
	usedGPA uint64
	descGPA uint64

	// packed is the packed ring's state; nil for a split ring.
	packed *packedState

	popMu     sync.Mutex
	lastAvail uint16

	pushMu    sync.Mutex
	usedIdx   uint16
	signalled uint16 // used index at the last interrupt decision
	// held counts the used elements PushHeld wrote that the driver cannot
	// see yet; heldPos and heldFlags are a packed ring's first one's
	// position and the flags that will hand it over.
	held      int
	heldPos   uint16
	heldFlags uint16
}

// QueueState is a queue's position, for snapshots. A packed queue adds
// its wrap counters (state from before packed rings has none of these
// fields, and is a split queue's); its LastAvail and UsedIdx are ring
// positions, Signalled a used sequence number.
type QueueState struct {
	LastAvail uint16 `json:"last_avail"`
	UsedIdx   uint16 `json:"used_idx"`
	Signalled uint16 `json:"signalled"`
	Packed    bool   `json:"packed,omitempty"`
	AvailWrap bool   `json:"avail_wrap,omitempty"`
	UsedWrap  bool   `json:"used_wrap,omitempty"`
}

// NewQueue checks the driver's configuration and maps the rings: the
// size must be a power of two no larger than max, and the descriptor
// table, available and used rings must lie in RAM at their alignments
// (16, 2, 4).
func NewQueue(mem Memory, index int, c QueueConfig, max uint16, eventIdx, indirect bool) (*Queue, error) {
	if c.Size == 0 || c.Size > max || c.Size&(c.Size-1) != 0 {
		return nil, &QueueError{index, fmt.Errorf("size %d is not a power of two in 1..%d", c.Size, max)}
	}
	if c.Desc%16 != 0 || c.Avail%2 != 0 || c.Used%4 != 0 {
		return nil, &QueueError{index, fmt.Errorf("rings misaligned: descriptors %#x, available %#x, used %#x", c.Desc, c.Avail, c.Used)}
	}
	n := uint64(c.Size)
	q := &Queue{index: index, eventIdx: eventIdx, indirect: indirect, size: c.Size, mem: mem, usedGPA: c.Used}
	var err error
	if q.desc, err = mem.Slice(c.Desc, n*descSize); err != nil {
		return nil, &QueueError{index, fmt.Errorf("descriptor table at %#x is not in RAM: %w", c.Desc, err)}
	}
	if q.avail, err = mem.Slice(c.Avail, 6+2*n); err != nil {
		return nil, &QueueError{index, fmt.Errorf("available ring at %#x is not in RAM: %w", c.Avail, err)}
	}
	if q.used, err = mem.Slice(c.Used, 6+8*n); err != nil {
		return nil, &QueueError{index, fmt.Errorf("used ring at %#x is not in RAM: %w", c.Used, err)}
	}
	return q, nil
}

// Index is the queue's number.
func (q *Queue) Index() int { return q.index }

// Size is the negotiated queue size.
func (q *Queue) Size() uint16 { return q.size }

var le = binary.LittleEndian

// fence orders the device's earlier stores before its later loads (a
// locked instruction on x86), as the event-index protocol needs.
var fenceWord atomic.Uint64

func fence() { fenceWord.Add(1) }

func (q *Queue) availIdx() uint16 {
	v := atomicLoad16(q.avail[2:4])
	fence()
	return v
}

func atomicLoad16(b []byte) uint16 { return le.Uint16(b) }

// Pending reports whether the driver made buffers available that Pop has
// not returned yet.
func (q *Queue) Pending() bool {
	q.popMu.Lock()
	defer q.popMu.Unlock()
	if q.packed != nil {
		return q.packedPending()
	}
	return q.availIdx() != q.lastAvail
}

// Pop returns the next available chain, or nil when there is none. With
// event-idx it asks the driver for a notification (avail_event) only
// when it finds the ring empty, and then looks again, as vhost does: a
// driver that adds chains while the device is still taking earlier ones
// off the ring does not notify (an MMIO exit each) for every one of
// them. A malformed ring or chain (an index past the queue size, a loop, a
// buffer outside RAM, lengths that overflow, a nested indirect table, a
// readable descriptor after a writable one) is a *QueueError: the queue
// is unusable until the driver resets the device.
func (q *Queue) Pop(mem Memory) (*Chain, error) {
	q.popMu.Lock()
	defer q.popMu.Unlock()
	if q.packed != nil {
		return q.popPacked(mem)
	}
	avail := q.availIdx()
	if avail == q.lastAvail {
		if !q.eventIdx {
			return nil, nil
		}
		// Ask to be notified when the driver adds the next one, then
		// look again: it may have added one before it could see the
		// request, and not notified.
		q.setAvailEvent()
		fence()
		if avail = q.availIdx(); avail == q.lastAvail {
			return nil, nil
		}
	}
	if n := avail - q.lastAvail; n > q.size {
		return nil, &QueueError{q.index, fmt.Errorf("available index %d is %d entries ahead of the device's %d, more than the queue size %d", avail, n, q.lastAvail, q.size)}
	}
	slot := uint64(q.lastAvail % q.size)
	head := le.Uint16(q.avail[4+2*slot:])
	c, err := q.walk(mem, head)
	if err != nil {
		return nil, &QueueError{q.index, err}
	}
	q.lastAvail++
	return c, nil
}

// Unpop gives the last n chains Pop returned back to the ring: the next
// Pops return them again. The device must not have pushed any of them.
func (q *Queue) Unpop(n int) {
	q.popMu.Lock()
	defer q.popMu.Unlock()
	if q.packed != nil {
		q.unpopPacked(n)
		return
	}
	q.lastAvail -= uint16(n)
	if q.eventIdx {
		q.setAvailEvent()
	}
}

// setAvailEvent writes the used ring's avail_event (the driver notifies
// when its available index passes it). Called with popMu held.
func (q *Queue) setAvailEvent() {
	off := 4 + 8*uint64(q.size)
	le.PutUint16(q.used[off:], q.lastAvail)
	q.mem.MarkDirty(q.usedGPA+off, 2)
}

type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(table []byte, i uint16) desc {
	b := table[uint64(i)*descSize:]
	return desc{addr: le.Uint64(b), len: le.Uint32(b[8:]), flags: le.Uint16(b[12:]), next: le.Uint16(b[14:])}
}

func (q *Queue) walk(mem Memory, head uint16) (*Chain, error) {
	if head >= q.size {
		return nil, fmt.Errorf("available ring names descriptor %d, past the queue size %d", head, q.size)
	}
	c := &Chain{Head: head}
	var total uint64
	table, n, i := q.desc, int(q.size), head
	indirect := false
	// A chain visits each descriptor of its table at most once; more
	// steps than the table has entries means a loop.
	for steps := 0; ; steps++ {
		if steps >= n {
			return nil, fmt.Errorf("descriptor chain from head %d loops (more than %d descriptors)", head, n)
		}
		d := readDesc(table, i)
		if d.flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return nil, fmt.Errorf("descriptor %d of chain %d is indirect, a feature the driver did not negotiate", i, head)
			case indirect:
				return nil, fmt.Errorf("descriptor %d of chain %d: an indirect table may not point to another", i, head)
			case d.flags&descFNext != 0:
				return nil, fmt.Errorf("descriptor %d of chain %d is both indirect and chained", i, head)
			case d.len == 0 || d.len%descSize != 0 || d.len/descSize > 1<<16:
				return nil, fmt.Errorf("descriptor %d of chain %d: indirect table length %d is not a non-zero multiple of 16 up to 1 MiB", i, head, d.len)
			}
			t, err := mem.Slice(d.addr, uint64(d.len))
			if err != nil {
				return nil, fmt.Errorf("descriptor %d of chain %d: indirect table at %#x (%d bytes) is not in RAM", i, head, d.addr, d.len)
			}
			if len(c.Readable)+len(c.Writable) > 0 {
				return nil, fmt.Errorf("descriptor %d of chain %d: an indirect table after direct descriptors", i, head)
			}
			// Only one indirect table per chain, and it ends the
			// direct part.
			table, n, i, indirect, steps = t, int(d.len/descSize), 0, true, -1
			continue
		}
		total += uint64(d.len)
		if total > MaxChainBytes {
			return nil, fmt.Errorf("descriptor chain from head %d is longer than 4 GiB", head)
		}
		buf, err := mem.Slice(d.addr, uint64(d.len))
		if err != nil {
			return nil, fmt.Errorf("descriptor %d of chain %d: buffer at %#x (%d bytes) is not in RAM", i, head, d.addr, d.len)
		}
		b := Buffer{GPA: d.addr, Bytes: buf}
		if d.flags&descFWrite != 0 {
			c.Writable = append(c.Writable, b)
		} else {
			if len(c.Writable) > 0 {
				return nil, fmt.Errorf("descriptor %d of chain %d is device-readable after a device-writable one", i, head)
			}
			c.Readable = append(c.Readable, b)
		}
		if d.flags&descFNext == 0 {
			return c, nil
		}
		if int(d.next) >= n {
			return nil, fmt.Errorf("descriptor %d of chain %d: next %d is past the table's %d entries", i, head, d.next, n)
		}
		i = d.next
	}
}

// Push returns a chain to the driver with the number of bytes the device
// wrote into it, together with the chains PushHeld returned before it.
func (q *Queue) Push(head uint16, written uint32) { q.push(head, written, true) }

// PushHeld returns a chain as Push does, but the driver sees it only with
// the queue's next Push: the chains a device completes as one (a packet
// in several receive buffers, whose driver reads them all once it sees
// the first) reach the driver together. No other chain of the queue may
// be pushed in between.
func (q *Queue) PushHeld(head uint16, written uint32) { q.push(head, written, false) }

func (q *Queue) push(head uint16, written uint32, publish bool) {
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	if q.packed != nil {
		q.pushPacked(head, written, publish)
		return
	}
	slot := uint64(q.usedIdx % q.size)
	e := q.used[4+8*slot:]
	le.PutUint32(e, uint32(head))
	le.PutUint32(e[4:], written)
	q.usedIdx++
	q.mem.MarkDirty(q.usedGPA+4+8*slot, 8)
	if !publish {
		q.held++
		return
	}
	q.held = 0
	// The entries are visible before the index (x86 keeps stores in
	// order; the atomic add keeps the compiler from reordering them).
	fence()
	le.PutUint16(q.used[2:4], q.usedIdx)
	q.mem.MarkDirty(q.usedGPA+2, 2)
}

// NeedInterrupt reports whether the driver wants an interrupt for the
// chains pushed since the last call: with event-idx, when the used index
// passed the driver's used_event; without, unless it set
// VIRTQ_AVAIL_F_NO_INTERRUPT.
func (q *Queue) NeedInterrupt() bool {
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	fence()
	if q.packed != nil {
		return q.needInterruptPacked()
	}
	old, cur := q.signalled, q.usedIdx
	if old == cur {
		return false
	}
	q.signalled = cur
	if !q.eventIdx {
		return le.Uint16(q.avail[0:2])&availFNoInterrupt == 0
	}
	ev := le.Uint16(q.avail[4+2*uint64(q.size):])
	return cur-ev-1 < cur-old
}

// String describes the queue's position, for govmm info and hang
// reports: a split queue's available index as the driver last wrote it
// against the next one the device takes, the used index, the used index
// up to which the device decided whether to interrupt (NeedInterrupt)
// and, with event-idx, the used_event the driver asked for (a used index
// past used_event that the driver does not take means an interrupt lost
// on its way or a driver that does not run: no later push crosses
// used_event again)
// and the avail_event the device asked for; without it, the driver's
// no-interrupt flag. A packed queue gives its ring positions and wrap
// counters. It reads the rings without taking them from the device.
func (q *Queue) String() string {
	q.popMu.Lock()
	last := q.lastAvail
	var availWrap bool
	if q.packed != nil {
		availWrap = q.packed.availWrap
	}
	q.popMu.Unlock()
	q.pushMu.Lock()
	used, signalled := q.usedIdx, q.signalled
	var usedWrap bool
	if q.packed != nil {
		usedWrap = q.packed.usedWrap
	}
	q.pushMu.Unlock()
	if q.packed != nil {
		return fmt.Sprintf("size %d packed: next available %d (wrap %t), next used %d (wrap %t), interrupt checked at %d",
			q.size, last, availWrap, used, usedWrap, signalled)
	}
	avail := atomicLoad16(q.avail[2:4])
	s := fmt.Sprintf("size %d: available %d, taken %d, used %d, interrupt checked at %d", q.size, avail, last, used, signalled)
	if q.eventIdx {
		return s + fmt.Sprintf(", used_event %d, avail_event %d", le.Uint16(q.avail[4+2*uint64(q.size):]), le.Uint16(q.used[4+8*uint64(q.size):]))
	}
	return s + fmt.Sprintf(", driver flags %#x", le.Uint16(q.avail[0:2]))
}

// Save returns the queue's position. The device must not be processing.
func (q *Queue) Save() QueueState {
	q.popMu.Lock()
	defer q.popMu.Unlock()
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	s := QueueState{LastAvail: q.lastAvail, UsedIdx: q.usedIdx, Signalled: q.signalled}
	if p := q.packed; p != nil {
		s.Packed, s.AvailWrap, s.UsedWrap = true, p.availWrap, p.usedWrap
	}
	return s
}

// SetBackendPosition takes over a split queue's position from a backend
// that served it outside the VMM (a kernel vhost device, which stopped):
// next is the next available index it would have read (what
// VHOST_GET_VRING_BASE returns), and the used index is the one the
// backend left in the used ring (the backend made its own interrupt
// decisions up to there).
func (q *Queue) SetBackendPosition(next uint16) error {
	if q.packed != nil {
		return &QueueError{q.index, fmt.Errorf("a packed queue cannot be handed to a backend")}
	}
	q.popMu.Lock()
	defer q.popMu.Unlock()
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	used := le.Uint16(q.used[2:4])
	q.lastAvail, q.usedIdx, q.signalled, q.held = next, used, used, 0
	return nil
}

// Restore sets the queue's position: a split queue's from a split
// queue's state, a packed queue's from a packed queue's, with positions
// inside the ring.
func (q *Queue) Restore(s QueueState) error {
	q.popMu.Lock()
	defer q.popMu.Unlock()
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	p := q.packed
	if s.Packed != (p != nil) {
		return &QueueError{q.index, fmt.Errorf("the saved queue is packed=%v, the driver's packed=%v", s.Packed, p != nil)}
	}
	if p != nil {
		if s.LastAvail >= q.size || s.UsedIdx >= q.size || int(s.Signalled) >= 2*int(q.size) {
			return &QueueError{q.index, fmt.Errorf("saved packed positions (available %d, used %d, signalled %d) are outside the ring of %d", s.LastAvail, s.UsedIdx, s.Signalled, q.size)}
		}
		p.availWrap, p.usedWrap = s.AvailWrap, s.UsedWrap
		p.logN = 0
		p.idMu.Lock()
		clear(p.inflight)
		p.highIDs = nil
		p.idMu.Unlock()
	}
	q.lastAvail, q.usedIdx, q.signalled = s.LastAvail, s.UsedIdx, s.Signalled
	if p != nil && q.eventIdx {
		q.setPackedEvent()
	}
	return nil
}
