package virtiotest

import (
	"encoding/binary"
	"fmt"
	"time"
)

// The packed ring's driver side, as Linux's virtio_ring drives it: each
// chain takes consecutive ring slots from the next available position
// (wrapping, with the AVAIL/USED bits of each slot's round), all its
// descriptors carry the buffer ID, the head's flags are written last;
// used elements arrive in completion order, each skipping the slots of
// its buffer's chain; the doorbell is rung only when the device's event
// suppression area asks for it.

const (
	pkNext     = 1
	pkWrite    = 2
	pkIndirect = 4
	pkAvail    = 1 << 7
	pkUsed     = 1 << 15
)

func (q *drvQueue) roundFlags(wrap bool) uint16 {
	if wrap {
		return pkAvail
	}
	return pkUsed
}

func (d *Driver) putPacked(qi int, segs []Seg, indirectAt uint64) uint16 {
	q := &d.q[qi]
	le := binary.LittleEndian
	n := len(segs)
	if indirectAt != 0 {
		n = 1
	}
	if n > q.freeSlots || len(q.free) == 0 {
		panic(fmt.Sprintf("virtiotest: queue %d: no room for a chain of %d descriptors (%d free slots)", qi, n, q.freeSlots))
	}
	id := q.alloc()
	q.idDescs[id] = uint16(n)
	q.freeSlots -= n
	write := func(at []byte, addr uint64, l uint32, id, fl uint16) {
		le.PutUint64(at, addr)
		le.PutUint32(at[8:], l)
		le.PutUint16(at[12:], id)
		le.PutUint16(at[14:], fl)
	}
	head := q.nextAvail
	var headFlags uint16
	first := true
	place := func(addr uint64, l uint32, fl uint16) {
		fl |= q.roundFlags(q.availWrap)
		at := d.Mem.B[q.desc+16*uint64(q.nextAvail):]
		if first {
			// The head's flags go last: they hand the chain over.
			// Flags 0 are available in no round.
			write(at, addr, l, id, 0)
			headFlags, first = fl, false
		} else {
			write(at, addr, l, id, fl)
		}
		if q.nextAvail++; q.nextAvail == q.size {
			q.nextAvail, q.availWrap = 0, !q.availWrap
		}
	}
	if indirectAt != 0 {
		for i, s := range segs {
			var fl uint16
			if s.Write {
				fl = pkWrite
			}
			write(d.Mem.B[indirectAt+16*uint64(i):], s.GPA, s.Len, 0, fl)
		}
		place(indirectAt, uint32(16*len(segs)), pkIndirect)
	} else {
		for i, s := range segs {
			var fl uint16
			if s.Write {
				fl |= pkWrite
			}
			if i < len(segs)-1 {
				fl |= pkNext
			}
			place(s.GPA, s.Len, fl)
		}
	}
	le.PutUint16(d.Mem.B[q.desc+16*uint64(head)+14:], headFlags)
	if d.kickNeeded(q, uint16(n)) {
		q.kicks++
		d.Notify(qi)
	} else {
		q.skipped++
	}
	return id
}

// kickNeeded is Linux's virtqueue_kick_prepare_packed after the driver
// made added descriptors available.
func (d *Driver) kickNeeded(q *drvQueue, added uint16) bool {
	le := binary.LittleEndian
	offWrap := le.Uint16(d.Mem.B[q.used:])
	flags := le.Uint16(d.Mem.B[q.used+2:])
	if flags != 2 {
		return flags != 1
	}
	newIdx := q.nextAvail
	oldIdx := newIdx - added
	ev := offWrap &^ (1 << 15)
	if (offWrap>>15 != 0) != q.availWrap {
		ev -= q.size
	}
	return newIdx-ev-1 < newIdx-oldIdx
}

func (d *Driver) waitPacked(qi int, timeout time.Duration) (Used, error) {
	q := &d.q[qi]
	le := binary.LittleEndian
	end := time.Now().Add(timeout)
	at := q.desc + 16*uint64(q.lastUsed)
	for {
		fl := le.Uint16(d.Mem.B[at+14:])
		if (fl&pkAvail != 0) == q.usedWrap && (fl&pkUsed != 0) == q.usedWrap {
			break
		}
		if time.Now().After(end) {
			return Used{}, fmt.Errorf("queue %d: nothing used at position %d within %v (status %#x)", qi, q.lastUsed, timeout, d.Status())
		}
		time.Sleep(100 * time.Microsecond)
	}
	u := Used{ID: uint32(le.Uint16(d.Mem.B[at+12:])), Len: le.Uint32(d.Mem.B[at+8:])}
	n, ok := q.idDescs[uint16(u.ID)]
	if !ok {
		return u, fmt.Errorf("queue %d: used element at position %d returns buffer ID %d, which the driver did not make available", qi, q.lastUsed, u.ID)
	}
	delete(q.idDescs, uint16(u.ID))
	q.free = append(q.free, uint16(u.ID))
	q.freeSlots += int(n)
	next := uint32(q.lastUsed) + uint32(n)
	if next >= uint32(q.size) {
		next -= uint32(q.size)
		q.usedWrap = !q.usedWrap
	}
	q.lastUsed = uint16(next)
	if q.eventIdx && le.Uint16(d.Mem.B[q.avail+2:]) == 2 {
		// Interrupt at the next element, as Linux's get_buf does.
		ow := q.lastUsed
		if q.usedWrap {
			ow |= 1 << 15
		}
		le.PutUint16(d.Mem.B[q.avail:], ow)
	}
	return u, nil
}

// SetInterrupts writes queue qi's driver event suppression area: flags
// 0 (every used element), 1 (none) or 2 (at offWrap, with EVENT_IDX).
func (d *Driver) SetInterrupts(qi int, flags, offWrap uint16) {
	q := &d.q[qi]
	le := binary.LittleEndian
	le.PutUint16(d.Mem.B[q.avail:], offWrap)
	le.PutUint16(d.Mem.B[q.avail+2:], flags)
}

// Kicks returns how many doorbells queue qi's packed ring rang and how
// many it left out because the device's event suppression area said so.
func (d *Driver) Kicks(qi int) (rung, skipped int) {
	return d.q[qi].kicks, d.q[qi].skipped
}

// PackedPos is queue qi's next available and next used positions with
// their wrap counters.
func (d *Driver) PackedPos(qi int) (nextAvail uint16, availWrap bool, lastUsed uint16, usedWrap bool) {
	q := d.q[qi]
	return q.nextAvail, q.availWrap, q.lastUsed, q.usedWrap
}
