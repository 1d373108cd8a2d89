package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func bit(bm []uint64, p int) bool { return bm[p/64]&(1<<(p%64)) != 0 }

// checkSound fails if a page holding non-zero bytes has its bit clear:
// that page would be lost from a snapshot or a migration.
func checkSound(t *testing.T, m *Memory) {
	t.Helper()
	zero := make([]byte, PageSize)
	for i, r := range m.Regions() {
		bm := m.MaybeNonZero(i)
		for p := 0; p < len(r.Host)/PageSize; p++ {
			if !bit(bm, p) && !bytes.Equal(r.Host[p*PageSize:(p+1)*PageSize], zero) {
				t.Fatalf("region %#x page %d holds data but MaybeNonZero says zero", r.GPA, p)
			}
		}
	}
}

func pagemapReadable(t *testing.T) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Skipf("no pagemap (%v): MaybeNonZero reports every page", err)
	}
	f.Close()
}

func TestMaybeNonZeroAnonymous(t *testing.T) {
	pagemapReadable(t)
	m, err := New(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, p := range []uint64{0, 5, 1000, 2047} {
		if err := m.Write(p*PageSize+100, []byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	bm := m.MaybeNonZero(0)
	for _, p := range []int{0, 5, 1000, 2047} {
		if !bit(bm, p) {
			t.Errorf("written page %d: bit clear", p)
		}
	}
	// Pages in a 2 MiB range nobody touched (THP may back the
	// neighbourhood of a written page whole) must be found zero.
	for p := 1024; p < 1536; p++ {
		if p != 1000 && bit(bm, p) {
			t.Fatalf("untouched page %d: bit set, the scan would read it", p)
		}
	}
	checkSound(t, m)
}

// TestMaybeNonZeroFile: RAM mapped from a sparse file is zero only in the
// file's holes and where nothing was written since.
func TestMaybeNonZeroFile(t *testing.T) {
	pagemapReadable(t)
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// Data at pages 3 and 700..703 (a run not page aligned at its end).
	if _, err := f.WriteAt([]byte{7}, 3*PageSize+9); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{9}, 3*PageSize+1), 700*PageSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	m, err := NewFromFile(f, size)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Write(1500*PageSize, []byte{1}); err != nil {
		t.Fatal(err)
	}
	bm := m.MaybeNonZero(0)
	for _, p := range []int{3, 700, 703, 1500} {
		if !bit(bm, p) {
			t.Errorf("page %d (file data or written): bit clear", p)
		}
	}
	holes := 0
	for p := 1024; p < 1400; p++ {
		if !bit(bm, p) {
			holes++
		}
	}
	// A file system without SEEK_HOLE reports all data, which is sound
	// but slow; tmpfs and ext4 have holes.
	if ext := dataExtents(int(f.Fd()), size); len(ext) == 1 && ext[0] == (extent{0, size}) {
		t.Logf("the file system reports no holes: every page is read")
	} else if holes != 376 {
		t.Errorf("%d of the 376 hole pages 1024..1399 found zero (extents %v)", holes, ext)
	}
	checkSound(t, m)
}

// TestMaybeNonZeroAbove4G: the region above the MMIO hole is indexed by
// its own pages.
func TestMaybeNonZeroAbove4G(t *testing.T) {
	pagemapReadable(t)
	m, err := New(MMIOHoleStart + 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Write(MMIOHoleEnd+5*PageSize, []byte{1}); err != nil {
		t.Fatal(err)
	}
	bm := m.MaybeNonZero(1)
	if !bit(bm, 5) {
		t.Fatal("page 5 above 4 GiB: bit clear")
	}
	if bit(bm, 700) {
		t.Fatal("untouched page 700 above 4 GiB: bit set")
	}
	checkSound(t, m)
}

func TestAlignedAndHugePages(t *testing.T) {
	for _, hp := range []bool{false, true} {
		m, err := NewWithOptions(64<<20, Options{HugePages: hp})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range m.Regions() {
			if a := reflect.ValueOf(r.Host).Pointer(); a%hugePage != 0 || len(r.Host) != 64<<20 {
				t.Errorf("huge pages %v: region at host %#x, %d bytes: want 2 MiB aligned, 64 MiB", hp, a, len(r.Host))
			}
		}
		if err := m.Write(0x1000, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
