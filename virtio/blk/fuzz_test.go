package blk

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"govmm/virtio"
)

// FuzzRequest serves requests whose header, data layout and segments the
// fuzzer chooses, against a 64 KiB image: the status is always one of
// OK, IOERR, UNSUPP, nothing outside the image or the chain is touched,
// and the image never grows.
func FuzzRequest(f *testing.F) {
	f.Add(uint32(tIn), uint64(3), uint16(1024), []byte{})
	f.Add(uint32(tOut), uint64(127), uint16(512), []byte{})
	f.Add(uint32(tWriteZeroes), uint64(0), uint16(16), []byte{5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0})
	f.Add(uint32(tDiscard), uint64(0), uint16(16), []byte{120, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0})
	path := filepath.Join(f.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 64<<10), 0o644); err != nil {
		f.Fatal(err)
	}
	dev, err := Open(Config{Path: path, Serial: "fuzz"}, "vda")
	if err != nil {
		f.Fatal(err)
	}
	defer dev.Close()
	dev.Activate(fDiscard | fWriteZeroes | fFlush)
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, n uint16, payload []byte) {
		hdr := make([]byte, 16)
		binary.LittleEndian.PutUint32(hdr, typ)
		binary.LittleEndian.PutUint64(hdr[8:], sector)
		data := make([]byte, n)
		copy(data, payload)
		status := []byte{0xee, 0xee}
		c := &virtio.Chain{Readable: []virtio.Buffer{{Bytes: hdr}}}
		if typ == tIn || typ == tGetID {
			c.Writable = append(c.Writable, virtio.Buffer{Bytes: data})
		} else {
			c.Readable = append(c.Readable, virtio.Buffer{Bytes: data})
		}
		c.Writable = append(c.Writable, virtio.Buffer{Bytes: status[:1]})
		st, w := dev.serve(c, nil)
		if st != sOK && st != sIOErr && st != sUnsupp {
			t.Fatalf("status %d", st)
		}
		if w > uint64(len(data)) {
			t.Fatalf("wrote %d bytes into %d", w, len(data))
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != 64<<10 {
			t.Fatalf("image size changed: %v %v", fi.Size(), err)
		}
	})
}

// FuzzDirect serves the same fuzzer-chosen request on a buffered disk
// and on a direct one at 4 KiB alignment, with the request's data in
// buffers whose lengths (cuts, one byte each, 0 meaning "the rest") and
// starting misalignment the fuzzer chooses: both must give the same
// status and the same data, and the two images must stay byte for byte
// the same. The images are 64 KiB + 1536 bytes, so that the direct disk
// also serves the bytes past its last aligned block through the buffered
// descriptor.
func FuzzDirect(f *testing.F) {
	f.Add(uint32(tIn), uint64(3), uint16(1024), uint16(7), []byte{100, 0}, []byte{})
	f.Add(uint32(tOut), uint64(9), uint16(1536), uint16(1), []byte{1, 255, 13}, []byte{1, 2, 3})
	f.Add(uint32(tOut), uint64(128), uint16(1536), uint16(0), []byte{}, []byte{9})
	f.Add(uint32(tIn), uint64(126), uint16(2560), uint16(3), []byte{200, 200}, []byte{})
	f.Add(uint32(tWriteZeroes), uint64(0), uint16(16), uint16(0), []byte{}, []byte{5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0})
	f.Add(uint32(tDiscard), uint64(0), uint16(16), uint16(0), []byte{}, []byte{120, 0, 0, 0, 0, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0})
	const size = 64<<10 + 1536
	dir := directDir(f)
	init := make([]byte, size)
	for i := range init {
		init[i] = byte(i*7 + i/512)
	}
	pb, pd := filepath.Join(dir, "buffered.img"), filepath.Join(dir, "direct.img")
	for _, p := range []string{pb, pd} {
		if err := os.WriteFile(p, init, 0o644); err != nil {
			f.Fatal(err)
		}
	}
	db, err := Open(Config{Path: pb, Serial: "fuzz"}, "vda")
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	dd, err := Open(Config{Path: pd, Serial: "fuzz", Direct: true}, "vdb")
	if err != nil {
		f.Fatal(err)
	}
	defer dd.Close()
	forceAlign(f, dd, 4096)
	bounce, err := allocBounce(dd.dio.bounceSize())
	if err != nil {
		f.Fatal(err)
	}
	defer freeBounce(bounce)
	for _, d := range []*Device{db, dd} {
		d.Activate(fDiscard | fWriteZeroes | fFlush)
	}
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, n uint16, skew uint16, cuts, payload []byte) {
		hdr := make([]byte, 16)
		binary.LittleEndian.PutUint32(hdr, typ)
		binary.LittleEndian.PutUint64(hdr[8:], sector)
		// chain builds the request with its data in buffers cut from
		// one allocation, the first skew%4096 bytes in.
		chain := func() (*virtio.Chain, [][]byte) {
			mem := make([]byte, int(skew%4096)+int(n))
			data := mem[skew%4096:]
			copy(data, payload)
			var bufs [][]byte
			for i := 0; len(data) > 0; i++ {
				k := len(data)
				if i < len(cuts) && cuts[i] != 0 {
					k = min(k, int(cuts[i])*32)
				}
				bufs, data = append(bufs, data[:k:k]), data[k:]
			}
			c := &virtio.Chain{Readable: []virtio.Buffer{{Bytes: append([]byte(nil), hdr...)}}}
			for _, b := range bufs {
				if typ == tIn || typ == tGetID {
					c.Writable = append(c.Writable, virtio.Buffer{Bytes: b})
				} else {
					c.Readable = append(c.Readable, virtio.Buffer{Bytes: b})
				}
			}
			c.Writable = append(c.Writable, virtio.Buffer{Bytes: []byte{0xee}})
			return c, bufs
		}
		cb, bb := chain()
		cd, bd := chain()
		sb, wb := db.serve(cb, nil)
		sd, wd := dd.serve(cd, bounce)
		if sb != sd || wb != wd {
			t.Fatalf("buffered: status %d, %d bytes; direct: status %d, %d bytes", sb, wb, sd, wd)
		}
		if sd != sOK && sd != sIOErr && sd != sUnsupp {
			t.Fatalf("status %d", sd)
		}
		if typ == tIn && !bytes.Equal(bytes.Join(bb, nil), bytes.Join(bd, nil)) {
			t.Fatal("the direct disk read other bytes than the buffered one")
		}
		ib, err1 := os.ReadFile(pb)
		id, err2 := os.ReadFile(pd)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if len(id) != size {
			t.Fatalf("the direct image is %d bytes, was %d", len(id), size)
		}
		if !bytes.Equal(ib, id) {
			t.Fatal("the images differ")
		}
	})
}
