package blk

import (
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
		st, w := dev.serve(c)
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
