package blk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestVectored reads and writes scatter lists of more buffers than one
// preadv or pwritev takes (iovMax), empty buffers among them, and checks
// every byte lands where consecutive pread and pwrite calls would put it;
// a read past the end of the file is io.ErrUnexpectedEOF.
func TestVectored(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	// 2.5 iovMax buffers of 1..7 bytes, every 10th empty.
	var segs [][]byte
	var want []byte
	for i := range iovMax*5/2 + 3 {
		n := 1 + i%7
		if i%10 == 9 {
			n = 0
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(i*31 + j)
		}
		segs = append(segs, b)
		want = append(want, b...)
	}
	const off = 4096 + 3
	if err := pwriteSegs(fd, segs, off); err != nil {
		t.Fatalf("pwriteSegs: %v", err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("pwriteSegs wrote %d bytes that differ from the buffers in order", len(want))
	}
	// Read back into a differently cut list.
	var rsegs [][]byte
	for rest := len(want); rest > 0; {
		n := min(rest, 1+len(rsegs)%5)
		rsegs = append(rsegs, make([]byte, n), nil)
		rest -= n
	}
	if err := preadSegs(fd, rsegs, off); err != nil {
		t.Fatalf("preadSegs: %v", err)
	}
	if got := bytes.Join(rsegs, nil); !bytes.Equal(got, want) {
		t.Fatalf("preadSegs read %d bytes that differ from the file's", len(got))
	}
	// The file ends at off+len(want): a read across the end fails.
	err = preadSegs(fd, [][]byte{make([]byte, 8), make([]byte, 8)}, off+int64(len(want))-4)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("preadSegs across the end of the file: %v, want io.ErrUnexpectedEOF", err)
	}
}
