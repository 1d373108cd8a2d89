package memory

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// NewAt maps one region at the given GPA (the arm64 layout): accesses
// below and above it are refused, and CollectDirty merges the
// accelerator's bitmap with the VMM's marks into GPAs of that region.
func TestNewAtAndCollectDirty(t *testing.T) {
	const base, size = 0x4000_0000, 1 << 20
	m, err := NewAt(base, size, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if rs := m.Regions(); len(rs) != 1 || rs[0].GPA != base || len(rs[0].Host) != size || m.Size() != size {
		t.Fatalf("regions %v, size %d", rs, m.Size())
	}
	if m.IsRAM(base-PageSize, PageSize) || m.IsRAM(base+size, 1) || !m.IsRAM(base, size) {
		t.Fatal("IsRAM is wrong at the region's edges")
	}
	if err := m.Write(0x1000, []byte{1}); err == nil {
		t.Fatal("a write below the region succeeded")
	}
	if err := m.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	m.MarkDirty(base+5*PageSize+100, 10)
	m.MarkDirty(base+size-1, 1)
	got, err := m.CollectDirty(func(gpa uint64) ([]uint64, error) {
		if gpa != base {
			t.Errorf("accelerator log asked for region %#x", gpa)
		}
		return []uint64{1<<2 | 1<<5}, nil // the vCPUs wrote pages 2 and 5
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{base + 2*PageSize, base + 5*PageSize, base + size - PageSize}
	if !slices.Equal(got, want) {
		t.Fatalf("dirty %#x, want %#x", got, want)
	}
	// Taken: the next round has only what was written since.
	got, _ = m.CollectDirty(func(uint64) ([]uint64, error) { return make([]uint64, size/PageSize/64), nil })
	if len(got) != 0 {
		t.Fatalf("second round %#x, want none", got)
	}
	for _, c := range []struct{ gpa, size uint64 }{{base, 0}, {base + 1, PageSize}, {base, 100}, {^uint64(0) &^ (PageSize - 1), 2 * PageSize}} {
		if m, err := NewAt(c.gpa, c.size, Options{}); err == nil {
			m.Close()
			t.Errorf("NewAt(%#x, %d) succeeded", c.gpa, c.size)
		}
	}
}

// NewAtFromFile maps the file at the region's GPA and knows its holes.
func TestNewAtFromFile(t *testing.T) {
	const base, size = 0x4000_0000, 256 << 10
	p := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("data"), 3*PageSize); err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	m, err := NewAtFromFile(f, base, size)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, err := m.Slice(base+3*PageSize, 4)
	if err != nil || string(b) != "data" {
		t.Fatalf("read %q, %v", b, err)
	}
	if nz := m.MaybeNonZero(0); nz[0]&(1<<3) == 0 {
		t.Fatalf("page 3 (written in the file) is reported zero: %b", nz[0])
	}
}
