package virtio

import (
	"fmt"
	"sync"
)

// FRingPacked is VIRTIO_F_RING_PACKED (virtio 1.2 §6): the driver lays its
// queues out as packed rings (§2.8) instead of split ones.
const FRingPacked = 1 << 34

// Packed-ring descriptor flags beyond NEXT, WRITE and INDIRECT: a
// descriptor is available when its AVAIL bit equals the driver's wrap
// counter and its USED bit does not; used when both equal the device's.
const (
	descFAvail = 1 << 7
	descFUsed  = 1 << 15
)

// Event suppression flags (struct pvirtq_event_suppress), in the driver
// area (the driver's wishes about interrupts) and the device area (the
// device's wishes about notifications).
const (
	eventEnable  = 0
	eventDisable = 1
	eventDesc    = 2 // only with EVENT_IDX: at off_wrap

	offWrapBit = 1 << 15
)

// maxPackedSize is the largest packed queue: positions travel in the 15
// low bits of off_wrap.
const maxPackedSize = 1 << 15

// packedState is what a packed queue adds to Queue. Its pop side (next
// available position, avail wrap counter, pop log) is guarded by popMu,
// its push side by pushMu, the in-flight buffer IDs by idMu.
type packedState struct {
	availWrap bool
	usedWrap  bool
	// log is a ring of the last pops (at most size chains are out), so
	// Unpop can rewind over kept chains.
	log  []popRecord
	logN int

	idMu sync.Mutex
	// inflight is, for each buffer ID the device holds, the ring
	// descriptors its chain took (0: not held): the used element that
	// returns it skips that many slots. IDs below the ring size (all
	// Linux uses) are indexed, others mapped.
	inflight []uint16
	highIDs  map[uint16]uint16
}

// take records buffer ID id as held with n descriptors; false if it is
// held already. Called with idMu held.
func (p *packedState) take(id, n uint16) bool {
	if int(id) < len(p.inflight) {
		if p.inflight[id] != 0 {
			return false
		}
		p.inflight[id] = n
		return true
	}
	if _, ok := p.highIDs[id]; ok {
		return false
	}
	if p.highIDs == nil {
		p.highIDs = map[uint16]uint16{}
	}
	p.highIDs[id] = n
	return true
}

// give forgets buffer ID id and returns its descriptors (0: not held).
// Called with idMu held.
func (p *packedState) give(id uint16) uint16 {
	if int(id) < len(p.inflight) {
		n := p.inflight[id]
		p.inflight[id] = 0
		return n
	}
	n := p.highIDs[id]
	delete(p.highIDs, id)
	return n
}

type popRecord struct {
	pos  uint16
	wrap bool
	id   uint16
}

// NewPackedQueue is NewQueue for a packed queue (the driver negotiated
// VIRTIO_F_RING_PACKED): c.Desc is the descriptor ring (16-byte aligned),
// c.Avail the driver event suppression area and c.Used the device's (4
// bytes each, 4-byte aligned). The size need not be a power of two.
func NewPackedQueue(mem Memory, index int, c QueueConfig, max uint16, eventIdx, indirect bool) (*Queue, error) {
	if c.Size == 0 || c.Size > max || c.Size > maxPackedSize {
		return nil, &QueueError{index, fmt.Errorf("packed queue size %d is not in 1..%d", c.Size, min(int(max), maxPackedSize))}
	}
	if c.Desc%16 != 0 || c.Avail%4 != 0 || c.Used%4 != 0 {
		return nil, &QueueError{index, fmt.Errorf("packed rings misaligned: descriptors %#x, driver area %#x, device area %#x", c.Desc, c.Avail, c.Used)}
	}
	q := &Queue{index: index, eventIdx: eventIdx, indirect: indirect, size: c.Size, mem: mem, usedGPA: c.Used,
		descGPA: c.Desc, packed: &packedState{availWrap: true, usedWrap: true, log: make([]popRecord, c.Size), inflight: make([]uint16, c.Size)}}
	var err error
	if q.desc, err = mem.Slice(c.Desc, uint64(c.Size)*descSize); err != nil {
		return nil, &QueueError{index, fmt.Errorf("descriptor ring at %#x is not in RAM: %w", c.Desc, err)}
	}
	if q.avail, err = mem.Slice(c.Avail, 4); err != nil {
		return nil, &QueueError{index, fmt.Errorf("driver event suppression area at %#x is not in RAM: %w", c.Avail, err)}
	}
	if q.used, err = mem.Slice(c.Used, 4); err != nil {
		return nil, &QueueError{index, fmt.Errorf("device event suppression area at %#x is not in RAM: %w", c.Used, err)}
	}
	if eventIdx {
		q.setPackedEvent()
	}
	return q, nil
}

// Packed reports whether the queue is a packed ring.
func (q *Queue) Packed() bool { return q.packed != nil }

type packedDesc struct {
	addr  uint64
	len   uint32
	id    uint16
	flags uint16
}

func readPackedDesc(table []byte, i int) packedDesc {
	b := table[i*descSize:]
	return packedDesc{addr: le.Uint64(b), len: le.Uint32(b[8:]), id: le.Uint16(b[12:]), flags: le.Uint16(b[14:])}
}

// isAvail reports whether flags mark a descriptor available in the round
// of wrap counter wrap.
func isAvail(flags uint16, wrap bool) bool {
	return (flags&descFAvail != 0) == wrap && (flags&descFUsed != 0) != wrap
}

// packedFlags is the flags word of the descriptor at position pos,
// loaded before any of its other fields.
func (q *Queue) packedFlags(pos uint16) uint16 {
	v := atomicLoad16(q.desc[uint64(pos)*descSize+14:])
	fence()
	return v
}

// packedPending: called with popMu held.
func (q *Queue) packedPending() bool {
	return isAvail(q.packedFlags(q.lastAvail), q.packed.availWrap)
}

// popPacked is Pop on a packed ring. Called with popMu held.
func (q *Queue) popPacked(mem Memory) (*Chain, error) {
	p := q.packed
	start, startWrap := q.lastAvail, p.availWrap
	if !isAvail(q.packedFlags(start), startWrap) {
		return nil, nil
	}
	c, pos, wrap, ndesc, err := q.walkPacked(mem, start, startWrap)
	if err != nil {
		return nil, &QueueError{q.index, err}
	}
	p.idMu.Lock()
	ok := p.take(c.Head, ndesc)
	p.idMu.Unlock()
	if !ok {
		return nil, &QueueError{q.index, fmt.Errorf("chain at descriptor %d reuses buffer ID %d, which the device still holds", start, c.Head)}
	}
	p.log[p.logN%len(p.log)] = popRecord{pos: start, wrap: startWrap, id: c.Head}
	p.logN++
	q.lastAvail, p.availWrap = pos, wrap
	if q.eventIdx {
		q.setPackedEvent()
	}
	return c, nil
}

// walkPacked reads the chain that starts at ring position pos (available
// in round wrap) and returns it with the position and wrap counter after
// it and the ring descriptors it took.
func (q *Queue) walkPacked(mem Memory, pos uint16, wrap bool) (c *Chain, next uint16, nextWrap bool, ndesc uint16, err error) {
	start := pos
	c = &Chain{}
	var total uint64
	// where names a descriptor in an error: a ring position, or an
	// entry of the indirect table (entry >= 0).
	where := func(pos uint16, entry int) string {
		if entry >= 0 {
			return fmt.Sprintf("indirect entry %d", entry)
		}
		return fmt.Sprintf("descriptor %d", pos)
	}
	add := func(pos uint16, entry int, d packedDesc) error {
		total += uint64(d.len)
		if total > MaxChainBytes {
			return fmt.Errorf("chain at descriptor %d is longer than 4 GiB", start)
		}
		buf, err := mem.Slice(d.addr, uint64(d.len))
		if err != nil {
			return fmt.Errorf("%s of the chain at descriptor %d: buffer at %#x (%d bytes) is not in RAM", where(pos, entry), start, d.addr, d.len)
		}
		b := Buffer{GPA: d.addr, Bytes: buf}
		if d.flags&descFWrite != 0 {
			c.Writable = append(c.Writable, b)
			return nil
		}
		if len(c.Writable) > 0 {
			return fmt.Errorf("%s of the chain at descriptor %d is device-readable after a device-writable one", where(pos, entry), start)
		}
		c.Readable = append(c.Readable, b)
		return nil
	}
	for {
		if ndesc >= q.size {
			return nil, 0, false, 0, fmt.Errorf("chain at descriptor %d is longer than the ring's %d descriptors", start, q.size)
		}
		// The head's flags were checked by the caller, the others'
		// here: each descriptor of a chain is marked available for the
		// round its position is in.
		d := readPackedDesc(q.desc, int(pos))
		if ndesc > 0 && !isAvail(d.flags, wrap) {
			return nil, 0, false, 0, fmt.Errorf("descriptor %d of the chain at descriptor %d is not available in this round (flags %#x, wrap counter %v)", pos, start, d.flags, wrap)
		}
		ndesc++
		// The chain's buffer ID is its last descriptor's.
		c.Head = d.id
		here := pos
		if pos++; pos == q.size {
			pos, wrap = 0, !wrap
		}
		if d.flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return nil, 0, false, 0, fmt.Errorf("descriptor %d of the chain at descriptor %d is indirect, a feature the driver did not negotiate", here, start)
			case d.flags&descFNext != 0:
				return nil, 0, false, 0, fmt.Errorf("descriptor %d of the chain at descriptor %d is both indirect and chained", here, start)
			case len(c.Readable)+len(c.Writable) > 0:
				return nil, 0, false, 0, fmt.Errorf("descriptor %d of the chain at descriptor %d: an indirect table after direct descriptors", here, start)
			case d.len == 0 || d.len%descSize != 0 || d.len/descSize > 1<<16:
				return nil, 0, false, 0, fmt.Errorf("descriptor %d of the chain at descriptor %d: indirect table length %d is not a non-zero multiple of 16 up to 1 MiB", here, start, d.len)
			}
			t, err := mem.Slice(d.addr, uint64(d.len))
			if err != nil {
				return nil, 0, false, 0, fmt.Errorf("descriptor %d of the chain at descriptor %d: indirect table at %#x (%d bytes) is not in RAM", here, start, d.addr, d.len)
			}
			// The table's entries are all of the chain, in order;
			// WRITE is their only flag that counts (NEXT and the
			// buffer IDs are ignored), and a nested table is refused
			// as in a split ring.
			for i := range int(d.len / descSize) {
				e := readPackedDesc(t, i)
				if e.flags&descFIndirect != 0 {
					return nil, 0, false, 0, fmt.Errorf("entry %d of the indirect table of the chain at descriptor %d: an indirect table may not point to another", i, start)
				}
				if err := add(here, i, e); err != nil {
					return nil, 0, false, 0, err
				}
			}
			return c, pos, wrap, ndesc, nil
		}
		if err := add(here, -1, d); err != nil {
			return nil, 0, false, 0, err
		}
		if d.flags&descFNext == 0 {
			return c, pos, wrap, ndesc, nil
		}
	}
}

// unpopPacked rewinds over the last n chains Pop returned. Called with
// popMu held.
func (q *Queue) unpopPacked(n int) {
	p := q.packed
	if n <= 0 {
		return
	}
	if n > p.logN || n > len(p.log) {
		n = min(p.logN, len(p.log))
	}
	p.idMu.Lock()
	for k := 1; k <= n; k++ {
		p.give(p.log[(p.logN-k)%len(p.log)].id)
	}
	p.idMu.Unlock()
	r := p.log[(p.logN-n)%len(p.log)]
	p.logN -= n
	q.lastAvail, p.availWrap = r.pos, r.wrap
	if q.eventIdx {
		q.setPackedEvent()
	}
}

// setPackedEvent asks the driver, through the device area, to notify
// when it makes the descriptor at the next position available. Called
// with popMu held (or before the queue is shared).
func (q *Queue) setPackedEvent() {
	ow := q.lastAvail
	if q.packed.availWrap {
		ow |= offWrapBit
	}
	le.PutUint16(q.used[0:2], ow)
	fence()
	le.PutUint16(q.used[2:4], eventDesc)
	q.mem.MarkDirty(q.usedGPA, 4)
}

// pushPacked writes the used element of buffer id at the next used
// position and skips the slots its chain took. Called with pushMu held.
func (q *Queue) pushPacked(id uint16, written uint32, publish bool) {
	p := q.packed
	p.idMu.Lock()
	n := p.give(id)
	p.idMu.Unlock()
	if n == 0 {
		// Not popped (a device bug, not the driver's): one slot keeps
		// the ring's accounting closest to the driver's.
		n = 1
	}
	pos := q.usedIdx
	e := q.desc[uint64(pos)*descSize:]
	le.PutUint32(e[8:], written)
	le.PutUint16(e[12:], id)
	var fl uint16
	if p.usedWrap {
		fl = descFAvail | descFUsed
	}
	q.mem.MarkDirty(q.descGPA+uint64(pos)*descSize+8, 8)
	switch {
	case !publish && q.held == 0:
		// The first of a held batch: its flags, which the driver reads
		// first, wait for the batch's last element (PushHeld).
		q.heldPos, q.heldFlags = pos, fl
		q.held++
	default:
		// The element is visible before its flags hand it over.
		fence()
		le.PutUint16(e[14:], fl)
		if !publish {
			q.held++
			break
		}
		if q.held > 0 {
			// The batch is written: its first element's flags hand
			// it all over.
			fence()
			le.PutUint16(q.desc[uint64(q.heldPos)*descSize+14:], q.heldFlags)
			q.held = 0
		}
	}
	next := uint32(pos) + uint32(n)
	if next >= uint32(q.size) {
		next -= uint32(q.size)
		p.usedWrap = !p.usedWrap
	}
	q.usedIdx = uint16(next)
}

// usedSeq is the used position as a sequence number modulo twice the
// ring size, which grows across wraps: round 1 (wrap counter set) is
// [0, size), round 0 is [size, 2*size).
func (q *Queue) usedSeq(pos uint16, wrap bool) uint32 {
	s := uint32(pos) % uint32(q.size)
	if !wrap {
		s += uint32(q.size)
	}
	return s
}

// needInterruptPacked: called with pushMu held.
func (q *Queue) needInterruptPacked() bool {
	cur := q.usedSeq(q.usedIdx, q.packed.usedWrap)
	old := uint32(q.signalled)
	if old == cur {
		return false
	}
	q.signalled = uint16(cur)
	switch flags := le.Uint16(q.avail[2:4]); {
	case flags == eventDisable:
		return false
	case flags == eventDesc && q.eventIdx:
		ow := le.Uint16(q.avail[0:2])
		ev := q.usedSeq(ow&^offWrapBit, ow&offWrapBit != 0)
		m := 2 * uint32(q.size)
		// The driver wants an interrupt when the element at ev is
		// written, that is when ev is in [old, cur).
		return (cur+m-ev-1)%m < (cur+m-old)%m
	default:
		return true
	}
}

// PackedOfferer is a Device whose configuration asks for packed
// virtqueues (a packed=on device option): its transport offers
// VIRTIO_F_RING_PACKED as with PCIConfig.Packed.
type PackedOfferer interface {
	OfferPacked() bool
}

// ParseOnOff parses a device option's on|off (or true|false) value.
func ParseOnOff(v string) (on, ok bool) {
	switch v {
	case "on", "true":
		return true, true
	case "off", "false":
		return false, true
	}
	return false, false
}
