package virtio_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"govmm/virtio"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
)

// FuzzQueue hands the queue parser guest memory the fuzzer wrote: a
// 16-entry descriptor table, available ring and used ring, and buffers,
// in 64 KiB of RAM. Pop must return a chain whose buffers lie in RAM, or
// nil, or an error; never panic, loop or return more than the table
// allows.
func FuzzQueue(f *testing.F) {
	seed := make([]byte, 0x400)
	binary.LittleEndian.PutUint64(seed[0:], 0x2000)
	binary.LittleEndian.PutUint32(seed[8:], 64)
	binary.LittleEndian.PutUint16(seed[12:], 3)
	binary.LittleEndian.PutUint16(seed[14:], 1)
	binary.LittleEndian.PutUint64(seed[16:], 0x3000)
	binary.LittleEndian.PutUint32(seed[24:], 64)
	binary.LittleEndian.PutUint16(seed[28:], 2)
	binary.LittleEndian.PutUint16(seed[0x102:], 1)
	f.Add(seed, uint8(0))
	ind := append([]byte(nil), seed...)
	binary.LittleEndian.PutUint16(ind[12:], 4)
	binary.LittleEndian.PutUint32(ind[8:], 32)
	f.Add(ind, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		mem := &virtiotest.Mem{B: make([]byte, 0x10000)}
		// Rings at 0 (descriptors), 0x100 (available), 0x200
		// (used); the rest of the data goes from 0x400 on.
		copy(mem.B, data)
		q, err := virtio.NewQueue(mem, 0, virtio.QueueConfig{Size: 16, Desc: 0, Avail: 0x100, Used: 0x200}, 256, flags&1 != 0, flags&2 != 0)
		if err != nil {
			t.Fatal(err)
		}
		for range 40 {
			c, err := q.Pop(mem)
			if err != nil || c == nil {
				return
			}
			if n := len(c.Readable) + len(c.Writable); n == 0 || n > 1<<16 {
				t.Fatalf("chain of %d buffers", n)
			}
			if c.Head >= 16 {
				t.Fatalf("head %d", c.Head)
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if b.GPA+uint64(len(b.Bytes)) > uint64(len(mem.B)) {
					t.Fatalf("buffer [%#x,+%#x) outside RAM", b.GPA, len(b.Bytes))
				}
			}
			if c.ReadableLen()+c.WritableLen() > virtio.MaxChainBytes {
				t.Fatal("chain longer than 4 GiB")
			}
			q.Push(c.Head, uint32(c.WritableLen()))
			q.NeedInterrupt()
		}
	})
}

// FuzzCommonConfig drives an rng device's BAR (common configuration,
// ISR, device configuration, notify, MSI-X) and configuration space
// with arbitrary accesses: each 12-byte record is (op, size, 2-byte
// offset, 8 value bytes); configuration reads and writes include the
// VIRTIO_PCI_CAP_PCI_CFG window onto BAR 0. Nothing may panic or
// deadlock, and the status register only ever holds bits the state
// machine allows.
func FuzzCommonConfig(f *testing.F) {
	f.Add([]byte{1, 1, 0x14, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0x08, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0x0c, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x14, 0, 0xf, 0, 0, 0, 0, 0, 0, 0})
	// Through the window: select the status byte, write ACKNOWLEDGE,
	// read it back.
	_, tr := attach(f, rng.New(), virtiotest.RAM(f, 4<<20), virtio.PCIConfig{})
	c, common := pciCfgCap(f, tr.Function()), pciCfgCapOf(f, tr.Function(), 1)
	var cb [4]byte
	tr.Function().ReadConfig(common+8, cb[:])
	rec := func(op, size byte, off int, v uint32) []byte {
		r := []byte{op, size, byte(off), byte(off >> 8)}
		return binary.LittleEndian.AppendUint64(r, uint64(v))
	}
	var seed []byte
	seed = append(seed, rec(3, 1, c+4, 0)...)
	seed = append(seed, rec(3, 4, c+8, binary.LittleEndian.Uint32(cb[:])+0x14)...)
	seed = append(seed, rec(3, 4, c+12, 1)...)
	seed = append(seed, rec(3, 1, c+16, virtio.StatusAcknowledge)...)
	seed = append(seed, rec(4, 4, c+16, 0)...)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		d, tr := newRNG(t)
		bar := tr.BAR()
		for len(data) >= 12 {
			op, size, off := data[0]%5, int(data[1]%9), uint64(binary.LittleEndian.Uint16(data[2:]))
			val := data[4:12]
			data = data[12:]
			buf := make([]byte, size)
			copy(buf, val)
			switch op {
			case 0:
				bar.Read(off%0x8000, buf)
			case 1:
				bar.Write(off%0x40, buf) // common configuration, densely
			case 2:
				bar.Write(off%0x8000, buf)
			case 3:
				tr.Function().WriteConfig(int(off%256), buf)
			case 4:
				tr.Function().ReadConfig(int(off%256), buf)
			}
			st := d.Status()
			if st&0x30 != 0 {
				t.Fatalf("status %#x has reserved bits", st)
			}
			if st&virtio.StatusFeaturesOK != 0 {
				var feats uint64
				for sel := range 2 {
					d.SetCommon(0x08, 4, uint64(sel))
					feats |= d.Common(0x0c, 4) << (32 * sel)
				}
				if feats&virtio.FVersion1 == 0 {
					t.Fatalf("FEATURES_OK with driver features %#x", feats)
				}
			}
		}
	})
}

// FuzzPackedQueue hands the packed-ring parser guest memory the fuzzer
// wrote: a descriptor ring of up to 16 entries at 0, the driver and
// device event suppression areas at 0x100 and 0x104, buffers and
// indirect tables from 0x400 on, in 64 KiB of RAM. The flags byte picks
// EVENT_IDX, INDIRECT_DESC, the ring size and whether chains are
// completed out of order and rewound. Pop must return a chain whose
// buffers lie in RAM, or nil, or a *QueueError; never panic or loop.
func FuzzPackedQueue(f *testing.F) {
	le := binary.LittleEndian
	seed := make([]byte, 0x600)
	put := func(b []byte, pos int, addr uint64, l uint32, id, fl uint16) {
		le.PutUint64(b[pos*16:], addr)
		le.PutUint32(b[pos*16+8:], l)
		le.PutUint16(b[pos*16+12:], id)
		le.PutUint16(b[pos*16+14:], fl)
	}
	put(seed, 0, 0x2000, 64, 0, 0x80|1)
	put(seed, 1, 0x3000, 64, 0, 0x80|2)
	put(seed, 2, 0x3100, 32, 1, 0x80|2)
	f.Add(seed, uint8(0x3c|3))
	ind := append([]byte(nil), seed...)
	put(ind, 3, 0x500, 32, 2, 0x80|4)
	put(ind[0x500:], 0, 0x2000, 16, 0, 0)
	put(ind[0x500:], 1, 0x2100, 16, 0, 2)
	f.Add(ind, uint8(0x3c|0x40|3))
	f.Fuzz(func(t *testing.T, data []byte, flags uint8) {
		mem := &virtiotest.Mem{B: make([]byte, 0x10000)}
		copy(mem.B, data)
		size := uint16(1 + (flags>>2)&15)
		q, err := virtio.NewPackedQueue(mem, 0, virtio.QueueConfig{Size: size, Desc: 0, Avail: 0x100, Used: 0x104}, 256, flags&1 != 0, flags&2 != 0)
		if err != nil {
			t.Fatal(err)
		}
		var held []uint16
		for step := range 40 {
			c, err := q.Pop(mem)
			if err != nil {
				var qe *virtio.QueueError
				if !errors.As(err, &qe) {
					t.Fatalf("error %v is not a *QueueError", err)
				}
				return
			}
			if c == nil {
				break
			}
			if n := len(c.Readable) + len(c.Writable); n == 0 || n > 1<<16 {
				t.Fatalf("chain of %d buffers", n)
			}
			for _, b := range append(c.Readable, c.Writable...) {
				if b.GPA+uint64(len(b.Bytes)) > uint64(len(mem.B)) {
					t.Fatalf("buffer [%#x,+%#x) outside RAM", b.GPA, len(b.Bytes))
				}
			}
			if c.ReadableLen()+c.WritableLen() > virtio.MaxChainBytes {
				t.Fatal("chain longer than 4 GiB")
			}
			if flags&0x80 != 0 && step%3 == 0 {
				// A keeper gives the chain back; the next Pop must
				// return the same buffer.
				q.Unpop(1)
				again, err := q.Pop(mem)
				if err != nil || again == nil || again.Head != c.Head {
					t.Fatalf("after Unpop: %v, %v; want buffer ID %d again", again, err, c.Head)
				}
			}
			held = append(held, c.Head)
			if flags&0x40 == 0 || len(held) >= 3 {
				// In order, or the held ones newest first.
				for i := len(held) - 1; i >= 0; i-- {
					q.Push(held[i], uint32(i))
				}
				held = held[:0]
				q.NeedInterrupt()
			}
		}
		for _, h := range held {
			q.Push(h, 0)
		}
		q.NeedInterrupt()
	})
}
