package bus

import (
	"bytes"
	"log/slog"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

type regs struct{ last []byte }

func (r *regs) Read(off uint64, d []byte) {
	for i := range d {
		d[i] = byte(off) + byte(i)
	}
}
func (r *regs) Write(off uint64, d []byte) { r.last = append([]byte(nil), d...) }

func TestRouteAndUnclaimed(t *testing.T) {
	var logs bytes.Buffer
	b := New("mmio", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	dev := &regs{}
	if err := b.Register(0x1000, 0x100, "dev", dev); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x10ff, 2, "overlap", dev); err == nil || !strings.Contains(err.Error(), "overlaps dev") {
		t.Fatalf("overlap accepted: %v", err)
	}
	d := make([]byte, 2)
	b.Read(0x1010, d)
	if d[0] != 0x10 || d[1] != 0x11 {
		t.Fatalf("read routed wrong: % x", d)
	}
	b.Write(0x1000, []byte{1, 2, 3, 4})
	if !bytes.Equal(dev.last, []byte{1, 2, 3, 4}) {
		t.Fatalf("write routed wrong: % x", dev.last)
	}
	for i := 0; i < 3; i++ {
		b.Read(0x2000, d)
		b.Write(0x2000, d)
		b.Write(0x3000, d)
	}
	if d[0] != 0xff || d[1] != 0xff {
		t.Fatalf("unclaimed read: % x, want all ones", d)
	}
	if r, w := b.Unclaimed(); r != 3 || w != 6 {
		t.Fatalf("unclaimed counts %d reads %d writes", r, w)
	}
	if n := strings.Count(logs.String(), "unclaimed access"); n != 2 {
		t.Fatalf("logged %d times, want once per address:\n%s", n, logs.String())
	}
}

func TestUnclaimedDoesNotAllocate(t *testing.T) {
	b := New("mmio", slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	d := make([]byte, 4)
	b.Write(0xfeb00000, d)
	if n := testing.AllocsPerRun(1000, func() { b.Write(0xfeb00000, d) }); n != 0 {
		t.Fatalf("a repeated unclaimed write allocates %v times", n)
	}
}

// A guest touching many distinct unbacked addresses must not grow the VMM:
// the set of logged addresses stays at its cap and the heap stays flat.
func TestUnclaimedBounded(t *testing.T) {
	var logs bytes.Buffer
	b := New("mmio", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	d := make([]byte, 4)
	const n = 500_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := uint64(0); i < n; i++ {
		b.Read(0x1_0000_0000+i*8, d)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if r, _ := b.Unclaimed(); r != n {
		t.Fatalf("counted %d unclaimed reads, want %d", r, n)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
		t.Errorf("%d distinct unclaimed reads grew the heap by %d KiB", n, grew>>10)
	}
	b.mu.Lock()
	kept := len(b.logged)
	b.mu.Unlock()
	if kept > loggedCap {
		t.Errorf("bus remembers %d addresses, cap %d", kept, loggedCap)
	}
	// The log is rate-limited: one window's burst, not one line per address.
	if lines := strings.Count(logs.String(), "unclaimed access"); lines == 0 || lines > 4*logBurst {
		t.Errorf("%d log lines for %d distinct addresses", lines, n)
	}
}

// Eviction: an address forgotten because the set filled is logged again,
// and one still remembered is not.
func TestUnclaimedEviction(t *testing.T) {
	defer func(c, burst int) { loggedCap, logBurst = c, burst }(loggedCap, logBurst)
	loggedCap, logBurst = 4, 1000
	var logs bytes.Buffer
	b := New("pio", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	d := make([]byte, 1)
	for a := uint64(0); a < 6; a++ { // 0 and 1 are evicted by 4 and 5
		b.Read(a, d)
	}
	b.Read(5, d)
	b.Read(3, d) // remembered: not logged again
	b.Read(0, d) // evicted: logged again
	if got := strings.Count(logs.String(), "unclaimed access"); got != 7 {
		t.Fatalf("%d lines, want 7:\n%s", got, logs.String())
	}
	if len(b.logged) != loggedCap {
		t.Fatalf("%d remembered, want %d", len(b.logged), loggedCap)
	}
}

type resolverFunc func(addr uint64) (Device, uint64, bool)

func (f resolverFunc) Lookup(addr uint64) (Device, uint64, bool) { return f(addr) }

// TestFallback checks that registered ranges win over the fallback, that
// the fallback answers the rest, and that what neither claims is unclaimed.
func TestFallback(t *testing.T) {
	b := New("pio", nil)
	fixed, moving := &regs{}, &regs{}
	if err := b.Register(0x100, 0x10, "fixed", fixed); err != nil {
		t.Fatal(err)
	}
	b.SetFallback(resolverFunc(func(addr uint64) (Device, uint64, bool) {
		if addr >= 0x100 && addr < 0x200 {
			return moving, addr - 0x100, true
		}
		return nil, 0, false
	}))
	b.Write(0x105, []byte{1})
	b.Write(0x120, []byte{2})
	b.Write(0x300, []byte{3})
	if !bytes.Equal(fixed.last, []byte{1}) || !bytes.Equal(moving.last, []byte{2}) {
		t.Fatalf("fixed %v fallback %v", fixed.last, moving.last)
	}
	d := make([]byte, 1)
	b.Read(0x130, d)
	if d[0] != 0x30 {
		t.Fatalf("fallback read offset %#x", d[0])
	}
	if _, w := b.Unclaimed(); w != 1 {
		t.Fatalf("%d unclaimed writes, want 1", w)
	}
}

// TestCounts: every access is counted against the device that answered it,
// the fallback, or the unclaimed row.
func TestCounts(t *testing.T) {
	b := New("pio", nil)
	if err := b.Register(0x3f8, 8, "serial", &regs{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x70, 2, "rtc", &regs{}); err != nil {
		t.Fatal(err)
	}
	b.SetFallback(fallbackAt{0x1000, &regs{}})
	var d [1]byte
	for i := 0; i < 3; i++ {
		b.Write(0x3f8, d[:])
	}
	b.Read(0x3fd, d[:])
	b.Read(0x71, d[:])
	b.Write(0x1000, d[:])
	b.Read(0x9999, d[:])
	got := b.Counts()
	want := []Count{
		{Device: "rtc", Base: 0x70, Size: 2, Reads: 1},
		{Device: "serial", Base: 0x3f8, Size: 8, Reads: 1, Writes: 3},
		{Device: "fallback", Writes: 1, Unregistered: true},
		{Device: "unclaimed", Reads: 1, Unregistered: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Counts = %+v\nwant %+v", got, want)
	}
}

type fallbackAt struct {
	addr uint64
	dev  Device
}

func (f fallbackAt) Lookup(addr uint64) (Device, uint64, bool) {
	return f.dev, 0, addr == f.addr
}
