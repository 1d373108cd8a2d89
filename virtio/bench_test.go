package virtio_test

import (
	"encoding/binary"
	"testing"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// BenchmarkQueueRoundTrip is one request's ring work on each side, with
// the driver's part done in the benchmark's goroutine as Linux's
// virtio_ring does it: the driver writes a three-descriptor chain
// (header, 4 KiB data, status byte) and makes it available, the device
// pops it (the buffers resolved to host memory) and pushes it back, and
// the driver reaps the used element. No device work, no doorbell, no
// interrupt: the cost of the ring format itself, split against packed.
func BenchmarkQueueRoundTrip(b *testing.B) {
	le := binary.LittleEndian
	const size = 256
	segs := []struct {
		addr uint64
		len  uint32
		fl   uint16
	}{{0x10000, 16, 0}, {0x11000, 4096, 2}, {0x12000, 1, 2}}
	b.Run("split", func(b *testing.B) {
		mem := virtiotest.RAM(b, 1<<20)
		q, err := virtio.NewQueue(mem, 0, virtio.QueueConfig{Size: size, Desc: 0, Avail: 0x4000, Used: 0x5000}, size, true, true)
		if err != nil {
			b.Fatal(err)
		}
		var availIdx, usedSeen uint16
		for b.Loop() {
			head := uint16(availIdx%(size/4)) * 3
			for k, s := range segs {
				d := mem.B[16*uint64(head+uint16(k)):]
				le.PutUint64(d, s.addr)
				le.PutUint32(d[8:], s.len)
				fl := s.fl
				if k < 2 {
					fl |= 1
				}
				le.PutUint16(d[12:], fl)
				le.PutUint16(d[14:], head+uint16(k)+1)
			}
			le.PutUint16(mem.B[0x4004+2*uint64(availIdx%size):], head)
			availIdx++
			le.PutUint16(mem.B[0x4002:], availIdx)
			c, err := q.Pop(mem)
			if err != nil || c == nil {
				b.Fatal(c, err)
			}
			q.Push(c.Head, 1)
			q.NeedInterrupt()
			if le.Uint16(mem.B[0x5002:]) == usedSeen {
				b.Fatal("nothing used")
			}
			_ = le.Uint32(mem.B[0x5004+8*uint64(usedSeen%size):])
			usedSeen++
		}
	})
	b.Run("packed", func(b *testing.B) {
		mem := virtiotest.RAM(b, 1<<20)
		q, err := virtio.NewPackedQueue(mem, 0, virtio.QueueConfig{Size: size, Desc: 0, Avail: 0x4000, Used: 0x4004}, size, true, true)
		if err != nil {
			b.Fatal(err)
		}
		var pos, used uint16
		wrap, usedWrap := true, true
		round := func(w bool) uint16 {
			if w {
				return 1 << 7
			}
			return 1 << 15
		}
		for i := 0; b.Loop(); i++ {
			head, headWrap := pos, wrap
			id := uint16(i % size)
			for k, s := range segs {
				d := mem.B[16*uint64(pos):]
				le.PutUint64(d, s.addr)
				le.PutUint32(d[8:], s.len)
				le.PutUint16(d[12:], id)
				fl := s.fl | round(wrap)
				if k < 2 {
					fl |= 1
				}
				if k > 0 {
					le.PutUint16(d[14:], fl)
				} else {
					le.PutUint16(d[14:], 0)
				}
				if pos++; pos == size {
					pos, wrap = 0, !wrap
				}
			}
			le.PutUint16(mem.B[16*uint64(head)+14:], segs[0].fl|1|round(headWrap))
			c, err := q.Pop(mem)
			if err != nil || c == nil {
				b.Fatal(c, err)
			}
			q.Push(c.Head, 1)
			q.NeedInterrupt()
			fl := le.Uint16(mem.B[16*uint64(used)+14:])
			if (fl&(1<<7) != 0) != usedWrap || (fl&(1<<15) != 0) != usedWrap {
				b.Fatal("nothing used")
			}
			if used += 3; used >= size {
				used, usedWrap = used-size, !usedWrap
			}
		}
	})
}
