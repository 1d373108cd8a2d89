package memory

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestDiscardZeroesAndMarksDirty(t *testing.T) {
	m := newLogged(t, 8<<20)
	r := m.Regions()[0]
	for i := range r.Host {
		r.Host[i] = 0xa5
	}
	if err := m.Discard(0x3000, 2*PageSize); err != nil {
		t.Fatal(err)
	}
	// A discarded anonymous page is not backed (until read): the
	// zero-page scans (snapshot, migration) skip it.
	bm := m.MaybeNonZero(0)
	if p := 0x3000 / PageSize; bm[p/64]&(1<<(p%64)) != 0 {
		t.Error("a discarded page is still backed")
	}
	for gpa := uint64(0x2000); gpa < 0x6000; gpa += PageSize {
		want := byte(0xa5)
		if gpa >= 0x3000 && gpa < 0x5000 {
			want = 0
		}
		b, _ := m.Slice(gpa, PageSize)
		for _, x := range b {
			if x != want {
				t.Fatalf("page %#x reads %#x after the discard, want %#x", gpa, x, want)
			}
		}
	}
	if got, want := pagesOf(r, m.TakeDirty(0, nil)), []uint64{0x3000, 0x4000}; !slices.Equal(got, want) {
		t.Errorf("dirty pages %#x, want %#x", got, want)
	}
}

func TestDiscardRefusesWhatIsNotRAM(t *testing.T) {
	m := newLogged(t, 8<<20)
	for _, c := range []struct{ gpa, n uint64 }{
		{8 << 20, PageSize},              // past RAM
		{8<<20 - PageSize, 2 * PageSize}, // runs past RAM
		{0x1001, PageSize},               // not page aligned
		{0x1000, 100},                    // not whole pages
		{^uint64(0) &^ (PageSize - 1), PageSize},
	} {
		if err := m.Discard(c.gpa, c.n); err == nil {
			t.Errorf("Discard(%#x, %#x) succeeded", c.gpa, c.n)
		}
	}
	if err := m.Discard(8<<20, PageSize); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Discard past RAM: %v, want ErrOutOfRange", err)
	}
	if got := m.TakeDirty(0, nil); slices.ContainsFunc(got, func(w uint64) bool { return w != 0 }) {
		t.Error("a refused discard marked pages dirty")
	}
}

func TestDiscardFileBackedReadsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = 0x11
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := NewFromFile(f, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, _ := m.Slice(0x1000, PageSize)
	b[0] = 0x22
	if err := m.Discard(0x1000, PageSize); err != nil {
		t.Fatal(err)
	}
	if b[0] != 0x11 {
		t.Errorf("a discarded page of a private file mapping reads %#x, want the file's %#x", b[0], 0x11)
	}
}
