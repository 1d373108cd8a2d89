package memory

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// newLogged is size bytes of guest RAM, closed when the test ends, with
// the VMM's dirty log on.
func newLogged(t testing.TB, size uint64) *Memory {
	t.Helper()
	m, err := New(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	return m
}

// pagesOf lists the GPAs of the set bits of a region's bitmap.
func pagesOf(r Region, bm []uint64) []uint64 {
	var out []uint64
	for p := uint64(0); p < uint64(len(r.Host))/PageSize; p++ {
		if p/64 < uint64(len(bm)) && bm[p/64]&(1<<(p%64)) != 0 {
			out = append(out, r.GPA+p*PageSize)
		}
	}
	return out
}

func TestDirtyLogMarksPages(t *testing.T) {
	// 3 GiB + 8 MiB: a region below the MMIO hole and one above 4 GiB.
	m, err := New(MMIOHoleStart + 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rs := m.Regions()
	if len(rs) != 2 {
		t.Fatalf("%d regions, want 2", len(rs))
	}
	// Off: marks are not recorded, and taking adds nothing.
	m.MarkDirty(0x1000, 1)
	if m.DirtyLogging() {
		t.Fatal("the log is on before StartDirtyLog")
	}
	if err := m.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if err := m.StartDirtyLog(); err == nil {
		t.Fatal("a second StartDirtyLog succeeded")
	}
	if got := pagesOf(rs[0], m.TakeDirty(0, nil)); len(got) != 0 {
		t.Fatalf("a mark made while the log was off shows up: %#x", got)
	}
	m.MarkDirty(0x1fff, 2)                          // straddles pages 1 and 2
	m.MarkDirty(0x10000, 0)                         // nothing
	m.MarkDirty(0x40000, 1)                         // page 0x40
	m.MarkDirty(MMIOHoleStart-PageSize, 3*PageSize) // the last low page, then the hole
	m.MarkDirty(MMIOHoleEnd+0x3000, 0x2000)         // pages 3 and 4 above 4 GiB
	m.MarkDirty(^uint64(0)-10, 100)                 // wraps, outside RAM
	accel := make([]uint64, 1)
	accel[0] = 1 // the accelerator's own page 0 stays
	low := pagesOf(rs[0], m.TakeDirty(0, accel))
	if want := []uint64{0, 0x1000, 0x2000, 0x40000, MMIOHoleStart - PageSize}; !slices.Equal(low, want) {
		t.Fatalf("low region: %#x, want %#x", low, want)
	}
	high := pagesOf(rs[1], m.TakeDirty(1, nil))
	if want := []uint64{MMIOHoleEnd + 0x3000, MMIOHoleEnd + 0x4000}; !slices.Equal(high, want) {
		t.Fatalf("high region: %#x, want %#x", high, want)
	}
	// Taken bits are cleared: the next round sees only new marks.
	m.MarkDirty(0x5000, 1)
	if got := pagesOf(rs[0], m.TakeDirty(0, nil)); !slices.Equal(got, []uint64{0x5000}) {
		t.Fatalf("next round: %#x, want [0x5000]", got)
	}
	if got := pagesOf(rs[1], m.TakeDirty(1, nil)); len(got) != 0 {
		t.Fatalf("high region, next round: %#x", got)
	}
	m.StopDirtyLog()
	m.MarkDirty(0x6000, 1)
	if err := m.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if got := pagesOf(rs[0], m.TakeDirty(0, nil)); len(got) != 0 {
		t.Fatalf("a restarted log is not clean: %#x", got)
	}
}

// Marks of any length at any offset set exactly the pages they touch
// (the per-word masks against a page-by-page reference).
func TestDirtyLogRanges(t *testing.T) {
	m := newLogged(t, 2<<20) // 512 pages: 8 words
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		ref := make([]uint64, 8)
		for range 1 + rng.IntN(3) {
			gpa := rng.Uint64N(2 << 20)
			n := rng.Uint64N(300 * PageSize)
			if n > 0 {
				for p := gpa / PageSize; p <= min(gpa+n-1, 2<<20-1)/PageSize; p++ {
					ref[p/64] |= 1 << (p % 64)
				}
			}
			m.MarkDirty(gpa, n)
		}
		if got := m.TakeDirty(0, nil); !slices.Equal(got, ref) {
			t.Fatalf("marked %x, want %x", got, ref)
		}
	}
}

// Concurrent marks are all seen, whether they land before or after a take.
func TestDirtyLogConcurrent(t *testing.T) {
	m := newLogged(t, 64<<20)
	const writers, pages = 4, 4096
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := w; p < pages; p += writers {
				m.MarkDirty(uint64(p)*PageSize, 1)
			}
		}()
	}
	seen := make([]uint64, 0)
	for range 100 {
		seen = m.TakeDirty(0, seen)
	}
	wg.Wait()
	seen = m.TakeDirty(0, seen)
	if got := len(pagesOf(m.Regions()[0], seen)); got != pages {
		t.Fatalf("%d pages seen, want %d", got, pages)
	}
}

// With the log off, MarkDirty allocates nothing and records nothing.
func TestDirtyLogOffCostsNothing(t *testing.T) {
	m, err := New(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if a := testing.AllocsPerRun(100, func() { m.MarkDirty(0x1000, 64<<10) }); a != 0 {
		t.Fatalf("MarkDirty with the log off: %v allocations", a)
	}
	if m.dirty.Load() != nil {
		t.Fatal("MarkDirty with the log off made a log")
	}
}

// BenchmarkMarkDirty is the cost a virtio request pays per buffer: off
// (every request outside a migration) and on, for a 4 KiB and a 64 KiB
// buffer.
func BenchmarkMarkDirty(b *testing.B) {
	m, err := New(64 << 20)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for _, on := range []bool{false, true} {
		for _, n := range []uint64{4 << 10, 64 << 10} {
			name := "off"
			if on {
				name = "on"
				if !m.DirtyLogging() {
					if err := m.StartDirtyLog(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.Run(name+"/"+map[uint64]string{4 << 10: "4KiB", 64 << 10: "64KiB"}[n], func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					// Fresh pages every time (16 MiB of 64 MiB apart
					// from the last pass's, which a take cleared).
					if on && i%1000 == 0 {
						m.TakeDirty(0, nil)
					}
					m.MarkDirty(uint64(i%1000)*PageSize*16, n)
				}
			})
		}
	}
}
