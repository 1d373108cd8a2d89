package snapshot

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"govmm/memory"
)

// naiveIsZero is the definition IsZero must agree with.
func naiveIsZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 63, 4095, 4096, 4097, 3*4096 + 5} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Fatalf("%d zero bytes: IsZero = false", n)
		}
		// A single non-zero byte anywhere, with any bit set, is seen.
		for i := 0; i < n; i++ {
			b[i] = 1 << (i % 8)
			if IsZero(b) {
				t.Fatalf("%d bytes with byte %d = %#x: IsZero = true", n, i, b[i])
			}
			b[i] = 0
		}
	}
}

func FuzzIsZero(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 4096))
	f.Add(append(make([]byte, 5000), 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := IsZero(b), naiveIsZero(b); got != want {
			t.Fatalf("IsZero(%d bytes) = %v, want %v", len(b), got, want)
		}
	})
}

// TestWriteDirMemory writes a snapshot of a guest with a few non-zero
// pages (first, last, one lone byte, a run across a 1 MiB chunk border)
// and reads the memory file back through memory.NewFromFile: every byte
// must match, and the zero pages must not take disk space.
func TestWriteDirMemory(t *testing.T) {
	const size = 8 << 20
	mem, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	writes := map[uint64][]byte{
		0:                  {0xaa},
		size - 1:           {0x55},
		3<<20 + 123:        {0x01},
		1<<20 - 2*4096 + 7: bytes.Repeat([]byte{0xee}, 4*4096),
	}
	for gpa, b := range writes {
		if err := mem.Write(gpa, b); err != nil {
			t.Fatal(err)
		}
	}
	var st State
	if err := st.Add("machine", 1, map[string]int{"x": 1}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	var last uint64
	if err := WriteDir(dir, &st, mem, func(done, total uint64) {
		if total != size || done < last || done > total {
			t.Fatalf("progress %d/%d after %d", done, total, last)
		}
		last = done
	}); err != nil {
		t.Fatal(err)
	}
	if last != size {
		t.Fatalf("progress ended at %d of %d", last, size)
	}
	got, f, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got.Names()[0] != "machine" {
		t.Fatalf("state sections %v", got.Names())
	}
	if err := CheckMemoryFile(f, size); err != nil {
		t.Fatal(err)
	}
	back, err := memory.NewFromFile(f, size)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	for i, r := range mem.Regions() {
		if !bytes.Equal(r.Host, back.Regions()[i].Host) {
			t.Fatalf("region %#x differs after the round trip", r.GPA)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, MemoryFile))
	if err != nil {
		t.Fatal(err)
	}
	// 8 non-zero pages: allow the file system some slack, but an
	// 8 MiB file that is not sparse fails.
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 1<<20 {
		t.Errorf("memory file uses %d bytes on disk for 8 non-zero pages: zero pages are not holes", used)
	}
}

// TestWriteThenCommit: Write takes the copy of guest memory (the guest may
// change it afterwards, while Commit runs), nothing appears under the real
// names before Commit, and replacing an older snapshot never pairs the old
// state with the new memory. Abort leaves nothing behind.
func TestWriteThenCommit(t *testing.T) {
	const size = 1 << 20
	mem, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	state := func(gen int) *State {
		var st State
		if err := st.Add("machine", 1, map[string]int{"gen": gen}); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	dir := filepath.Join(t.TempDir(), "snap")
	if err := mem.Write(0x1000, []byte("old")); err != nil {
		t.Fatal(err)
	}
	if err := WriteDir(dir, state(1), mem, nil); err != nil {
		t.Fatal(err)
	}

	if err := mem.Write(0x1000, []byte("new")); err != nil {
		t.Fatal(err)
	}
	p, err := Write(dir, state(2), mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The guest runs on and writes again before the commit.
	if err := mem.Write(0x1000, []byte("later")); err != nil {
		t.Fatal(err)
	}
	if gen, page := readSnap(t, dir); gen != 1 || page != "old" {
		t.Fatalf("before Commit the directory holds gen %d with %q, want the old snapshot (1, \"old\")", gen, page)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if gen, page := readSnap(t, dir); gen != 2 || page != "new" {
		t.Fatalf("after Commit: gen %d with %q, want 2 with \"new\" (the memory as Write saw it)", gen, page)
	}

	p, err = Write(dir, state(3), mem, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Abort()
	if gen, page := readSnap(t, dir); gen != 2 || page != "new" {
		t.Fatalf("after Abort: gen %d with %q, want the committed snapshot (2, \"new\")", gen, page)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("after Abort the directory holds %v, want only %s and %s", names, StateFile, MemoryFile)
	}
}

// readSnap returns a test snapshot's "gen" and the 3 bytes at GPA 0x1000.
func readSnap(t *testing.T, dir string) (int, string) {
	t.Helper()
	st, f, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m map[string]int
	if _, err := st.Get("machine", 1, 1, &m); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	if _, err := f.ReadAt(b, 0x1000); err != nil {
		t.Fatal(err)
	}
	return m["gen"], string(b)
}

// TestWriteDirFromRestored snapshots a VM that was itself restored from a
// snapshot (RAM mapped from the first memory file) and changed since: the
// second snapshot holds both the pages that came from the file and the
// new ones.
func TestWriteDirFromRestored(t *testing.T) {
	const size = 4 << 20
	mem, err := memory.New(size)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := mem.Write(0x3000, []byte("from the first snapshot")); err != nil {
		t.Fatal(err)
	}
	var st State
	if err := st.Add("machine", 1, 1); err != nil {
		t.Fatal(err)
	}
	d1, d2 := filepath.Join(t.TempDir(), "1"), filepath.Join(t.TempDir(), "2")
	if err := WriteDir(d1, &st, mem, nil); err != nil {
		t.Fatal(err)
	}
	_, f, err := ReadDir(d1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	restored, err := memory.NewFromFile(f, size)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if err := restored.Write(0x200000, []byte("written after the restore")); err != nil {
		t.Fatal(err)
	}
	if err := WriteDir(d2, &st, restored, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(d2, MemoryFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, restored.Regions()[0].Host) {
		t.Fatal("the snapshot of the restored VM differs from its memory")
	}
	if !bytes.HasPrefix(b[0x3000:], []byte("from the first snapshot")) || !bytes.HasPrefix(b[0x200000:], []byte("written after the restore")) {
		t.Fatal("the snapshot of the restored VM lost a page")
	}
}
