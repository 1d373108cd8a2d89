package virtio_test

import (
	"encoding/binary"
	"testing"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// TestAvailEventWhenEmpty: with event-idx, the device asks the driver
// for a notification (the used ring's avail_event) only once it finds the
// ring empty, at the position it will look at next, so that a driver
// adding chains while the device still takes earlier ones off the ring
// does not notify for each; and a chain made available when the device
// looks again is found then.
func TestAvailEventWhenEmpty(t *testing.T) {
	le := binary.LittleEndian
	const size = 16
	mem := virtiotest.RAM(t, 1<<16)
	q, err := virtio.NewQueue(mem, 0, virtio.QueueConfig{Size: size, Desc: 0, Avail: 0x1000, Used: 0x2000}, size, true, false)
	if err != nil {
		t.Fatal(err)
	}
	availEvent := func() uint16 { return le.Uint16(mem.B[0x2000+4+8*size:]) }
	var availIdx uint16
	add := func() {
		// One writable 64-byte descriptor per chain.
		head := availIdx % size
		d := mem.B[16*uint64(head):]
		le.PutUint64(d, 0x8000+64*uint64(head))
		le.PutUint32(d[8:], 64)
		le.PutUint16(d[12:], 2)
		le.PutUint16(mem.B[0x1004+2*uint64(availIdx%size):], head)
		availIdx++
		le.PutUint16(mem.B[0x1002:], availIdx)
	}
	le.PutUint16(mem.B[0x2000+4+8*size:], 0xffff)
	for range 3 {
		add()
	}
	for i := range 3 {
		if c, err := q.Pop(mem); err != nil || c == nil {
			t.Fatalf("pop %d: %v %v", i, c, err)
		}
		if ev := availEvent(); ev != 0xffff {
			t.Fatalf("after pop %d of 3, avail_event is %d: the device asked for a notification while chains were left", i, ev)
		}
	}
	if c, err := q.Pop(mem); err != nil || c != nil {
		t.Fatalf("pop from an empty ring: %v %v", c, err)
	}
	if ev := availEvent(); ev != 3 {
		t.Fatalf("the empty ring's avail_event is %d, want 3 (the next chain's position)", ev)
	}
	// The driver adds while the device works: no new request until the
	// device finds the ring empty again.
	add()
	add()
	if c, err := q.Pop(mem); err != nil || c == nil {
		t.Fatalf("pop: %v %v", c, err)
	}
	if ev := availEvent(); ev != 3 {
		t.Fatalf("avail_event moved to %d with a chain still on the ring", ev)
	}
	if c, err := q.Pop(mem); err != nil || c == nil {
		t.Fatalf("pop: %v %v", c, err)
	}
	if c, _ := q.Pop(mem); c != nil || availEvent() != 5 {
		t.Fatalf("empty again: %v, avail_event %d, want none and 5", c, availEvent())
	}
}
