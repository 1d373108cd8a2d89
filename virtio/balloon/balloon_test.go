package balloon

import (
	"encoding/binary"
	"log/slog"
	"slices"
	"testing"
	"time"

	"govmm/memory"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

const wait = 5 * time.Second

var quiet = slog.New(slog.DiscardHandler)

// ramSize is the test guest's RAM; pfnBase is where the test's
// balloon pages start (above the driver's rings and buffers).
const (
	ramSize = 16 << 20
	pfnBase = 0x800
	pfnBuf  = 0x200000 // where the driver's PFN arrays are
)

type rig struct {
	t   *testing.T
	d   *virtiotest.Driver
	tr  *virtio.PCI
	dev *Device
	mem *virtiotest.Mem
}

// newRig is a balloon behind the transport over memory.Memory-backed RAM,
// driven by the test driver; keep makes it keep inflated pages.
func newRig(t *testing.T, keep bool) *rig {
	t.Helper()
	return newRigReporting(t, keep, false)
}

// newRigReporting is newRig with free page reporting offered or not (the
// driver asks for every feature).
func newRigReporting(t *testing.T, keep, reporting bool) *rig {
	t.Helper()
	return newRigOpts(t, keep, Options{Reporting: reporting})
}

// newRigOpts is newRig with the options offered (the driver asks for
// every feature): it checks the features and the queues negotiated.
func newRigOpts(t *testing.T, keep bool, o Options) *rig {
	t.Helper()
	mem, err := virtiotest.NewMem(ramSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.RAM.Close() })
	c := Config{Release: mem.RAM, Log: quiet}
	if keep {
		c = Config{KeepReason: "test keeps them", Log: quiet}
	}
	c.Options = o
	dev := New(mem, c)
	vm, tb := virtiotest.NewVM()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb, Log: quiet, Class: virtio.PCIClass{Class: 0xff}})
	if err != nil {
		t.Fatal(err)
	}
	dev.SetNotify(tr.ConfigChanged)
	t.Cleanup(func() { tr.Close(); tb.Close() })
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(virtio.FIndirectDesc|virtio.FEventIdx|FDeflateOnOOM|FStatsVQ|FPageReporting, 0); err != nil {
		t.Fatal(err)
	}
	wantQueues, wantFeats := 2, uint64(0)
	if o.Stats {
		wantQueues, wantFeats = wantQueues+1, wantFeats|FStatsVQ
	}
	if o.Reporting {
		wantQueues, wantFeats = wantQueues+1, wantFeats|FPageReporting
	}
	if o.DeflateOnOOM {
		wantFeats |= FDeflateOnOOM
	}
	if d.NumQueue != wantQueues {
		t.Fatalf("%d queues, want %d", d.NumQueue, wantQueues)
	}
	if got := d.Feats & (FMustTellHost | FStatsVQ | FDeflateOnOOM | FPageReporting); got != wantFeats {
		t.Fatalf("balloon features %#x, want %#x", got, wantFeats)
	}
	return &rig{t: t, d: d, tr: tr, dev: dev, mem: mem}
}

// fill writes a pattern into every test page.
func (r *rig) fill(first, n uint32) {
	for p := first; p < first+n; p++ {
		b := r.mem.B[uint64(p)*PageSize : uint64(p+1)*PageSize]
		for i := range b {
			b[i] = byte(p) | 1
		}
	}
}

// page reports whether page p holds its pattern (true) or zeros (false).
func (r *rig) page(p uint32) bool {
	r.t.Helper()
	b := r.mem.B[uint64(p)*PageSize : uint64(p+1)*PageSize]
	switch {
	case b[0] == byte(p)|1 && b[PageSize-1] == byte(p)|1:
		return true
	case !slices.ContainsFunc(b, func(x byte) bool { return x != 0 }):
		return false
	}
	r.t.Fatalf("page %#x holds neither its pattern nor zeros", p)
	return false
}

// send puts the PFNs on queue q as one readable buffer per split (the
// split sizes are in PFNs; none: one buffer), and waits for the chain.
func (r *rig) send(q int, pfns []uint32, split ...int) virtiotest.Used {
	r.t.Helper()
	gpa := uint64(pfnBuf)
	for i, p := range pfns {
		binary.LittleEndian.PutUint32(r.mem.B[gpa+4*uint64(i):], p)
	}
	if len(split) == 0 {
		split = []int{len(pfns)}
	}
	var segs []virtiotest.Seg
	for _, k := range split {
		segs = append(segs, virtiotest.Seg{GPA: gpa, Len: uint32(4 * k)})
		gpa += uint64(4 * k)
	}
	r.d.Put(q, segs, 0)
	u, err := r.d.Wait(q, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	return u
}

func (r *rig) config() (numPages, actual uint32) {
	var b [8]byte
	r.d.DeviceConfig(0, b[:])
	return binary.LittleEndian.Uint32(b[:]), binary.LittleEndian.Uint32(b[4:])
}

func TestInflateReleasesPages(t *testing.T) {
	r := newRig(t, false)
	r.fill(pfnBase, 64)
	if err := r.mem.RAM.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	// Two runs (0-9 ascending, split across two buffers, and 20-21),
	// and 30 alone.
	var pfns []uint32
	for p := uint32(0); p < 10; p++ {
		pfns = append(pfns, pfnBase+p)
	}
	pfns = append(pfns, pfnBase+20, pfnBase+21, pfnBase+30)
	if u := r.send(InflateQ, pfns, 3, 10); u.Len != 0 {
		t.Errorf("inflate chain used with length %d, want 0", u.Len)
	}
	for p := uint32(pfnBase); p < pfnBase+64; p++ {
		if got, want := r.page(p), !slices.Contains(pfns, p); got != want {
			t.Errorf("page %#x: holds its data %v, want %v", p, got, want)
		}
	}
	i := r.dev.Info()
	if i.Inflated != 13 || i.Released != 13 || i.Deflated != 0 || i.KeepReason != "" {
		t.Errorf("info %+v, want 13 inflated and released", i)
	}
	// The released pages are in the VMM's dirty log: a migration sends
	// them again.
	bm := r.mem.RAM.TakeDirty(0, nil)
	for _, p := range pfns {
		if bm[p/64]&(1<<(p%64)) == 0 {
			t.Errorf("released page %#x is not marked dirty", p)
		}
	}
	// Deflate some: nothing changes on the host; a page used again
	// reads as zeros.
	if u := r.send(DeflateQ, pfns[:4]); u.Len != 0 {
		t.Errorf("deflate chain used with length %d, want 0", u.Len)
	}
	if i := r.dev.Info(); i.Deflated != 4 {
		t.Errorf("deflated %d, want 4", i.Deflated)
	}
	if r.page(pfns[0]) {
		t.Error("a deflated page holds its old data")
	}
	if r.d.Status()&virtio.StatusNeedsReset != 0 {
		t.Error("device needs a reset")
	}
}

func TestKeepDoesNotRelease(t *testing.T) {
	r := newRig(t, true)
	r.fill(pfnBase, 4)
	r.send(InflateQ, []uint32{pfnBase, pfnBase + 1})
	if !r.page(pfnBase) || !r.page(pfnBase+1) {
		t.Error("a balloon that keeps pages released them")
	}
	if i := r.dev.Info(); i.Inflated != 2 || i.Released != 0 || i.KeepReason != "test keeps them" {
		t.Errorf("info %+v", i)
	}
}

// broken sends a chain the device must refuse and checks that it asks
// for a reset and released nothing.
func TestBadChainsNeedReset(t *testing.T) {
	outside := uint32(ramSize / PageSize)
	for _, c := range []struct {
		name string
		put  func(r *rig)
	}{
		{"PFN past RAM", func(r *rig) {
			r.putPFNs(InflateQ, []uint32{pfnBase, outside})
		}},
		{"PFN far past RAM", func(r *rig) {
			r.putPFNs(InflateQ, []uint32{pfnBase, 0xffffffff})
		}},
		{"run runs past RAM", func(r *rig) {
			r.putPFNs(InflateQ, []uint32{pfnBase, outside - 1, outside})
		}},
		{"deflate PFN past RAM", func(r *rig) {
			r.putPFNs(DeflateQ, []uint32{outside + 5})
		}},
		{"partial PFN", func(r *rig) {
			binary.LittleEndian.PutUint32(r.mem.B[pfnBuf:], pfnBase)
			r.d.Put(InflateQ, []virtiotest.Seg{{GPA: pfnBuf, Len: 6}}, 0)
		}},
		{"writable buffer", func(r *rig) {
			binary.LittleEndian.PutUint32(r.mem.B[pfnBuf:], pfnBase)
			r.d.Put(InflateQ, []virtiotest.Seg{{GPA: pfnBuf, Len: 4}, {GPA: pfnBuf + 0x1000, Len: 4, Write: true}}, 0)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, false)
			r.fill(pfnBase, 1)
			r.d.Interrupts(2)
			c.put(r)
			end := time.Now().Add(wait)
			for r.d.Status()&virtio.StatusNeedsReset == 0 {
				if time.Now().After(end) {
					t.Fatal("the device did not ask for a reset")
				}
				time.Sleep(time.Millisecond)
			}
			if r.d.WaitInterrupts(2, wait) == 0 {
				t.Error("no configuration interrupt for NEEDS_RESET")
			}
			if !r.page(pfnBase) {
				t.Error("a refused chain released a page")
			}
			if i := r.dev.Info(); i.Inflated+i.Deflated+i.Released != 0 {
				t.Errorf("a refused chain counted: %+v", i)
			}
		})
	}
}

// putPFNs makes the PFNs available on queue q without waiting.
func (r *rig) putPFNs(q int, pfns []uint32) {
	for i, p := range pfns {
		binary.LittleEndian.PutUint32(r.mem.B[pfnBuf+4*i:], p)
	}
	r.d.Put(q, []virtiotest.Seg{{GPA: pfnBuf, Len: uint32(4 * len(pfns))}}, 0)
}

func TestConfigAndTarget(t *testing.T) {
	r := newRig(t, false)
	if n, a := r.config(); n != 0 || a != 0 {
		t.Fatalf("config num_pages %d actual %d, want 0 0", n, a)
	}
	gen := r.d.Common(0x15, 1)
	r.d.Interrupts(2)
	r.dev.SetTarget(1234)
	if r.d.WaitInterrupts(2, wait) != 1 {
		t.Error("no configuration interrupt for a new target")
	}
	if r.d.Common(0x15, 1) == gen {
		t.Error("configuration generation did not change")
	}
	// The driver writes actual; num_pages is read-only to it.
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 1000)
	bar := r.tr.BAR()
	bar.Write(0x2004, b[:])
	binary.LittleEndian.PutUint32(b[:], 7)
	bar.Write(0x2000, b[:])
	bar.Write(0x2008, b[:]) // past the structure: dropped
	if n, a := r.config(); n != 1234 || a != 1000 {
		t.Errorf("config num_pages %d actual %d, want 1234 1000", n, a)
	}
	// A byte-wide write to actual's high byte.
	bar.Write(0x2007, []byte{1})
	if _, a := r.config(); a != 1000|1<<24 {
		t.Errorf("actual %#x after a byte write, want %#x", a, 1000|1<<24)
	}
	var past [4]byte
	r.d.DeviceConfig(8, past[:])
	if past != [4]byte{} {
		t.Errorf("configuration past actual reads %x", past)
	}

	s := r.dev.Save()
	if s.TargetPages != 1234 || s.ActualPages != 1000|1<<24 {
		t.Errorf("saved %+v", s)
	}
	// A reset empties the driver's balloon; the target stays.
	r.d.SetCommon(0x14, 1, 0)
	if n, a := r.config(); n != 1234 || a != 0 {
		t.Errorf("after reset num_pages %d actual %d, want 1234 0", n, a)
	}
	r.dev.Restore(State{TargetPages: 5, ActualPages: 3})
	if n, a := r.config(); n != 5 || a != 3 {
		t.Errorf("restored num_pages %d actual %d, want 5 3", n, a)
	}
}

func TestTargetBeforeDriverOK(t *testing.T) {
	// A target set before the driver is ready raises no interrupt (the
	// driver reads num_pages when it starts).
	mem, err := virtiotest.NewMem(ramSize)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.RAM.Close()
	dev := New(mem, Config{Release: mem.RAM, Log: quiet})
	_, tb := virtiotest.NewVM()
	defer tb.Close()
	tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Mem: mem, Router: tb, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	dev.SetNotify(tr.ConfigChanged)
	dev.SetTarget(10)
	if n, _ := readConfig(dev); n != 10 {
		t.Errorf("num_pages %d, want 10", n)
	}
}

func readConfig(d *Device) (uint32, uint32) {
	var b [8]byte
	d.ReadConfig(0, b[:])
	return binary.LittleEndian.Uint32(b[:]), binary.LittleEndian.Uint32(b[4:])
}

var _ Releaser = (*memory.Memory)(nil)

// report puts free ranges (GPA, bytes) on the reporting queue as
// device-writable buffers, as Linux's page reporting does, and waits for
// the chain.
func (r *rig) report(ranges ...[2]uint64) virtiotest.Used {
	r.t.Helper()
	var segs []virtiotest.Seg
	for _, g := range ranges {
		segs = append(segs, virtiotest.Seg{GPA: g[0], Len: uint32(g[1]), Write: true})
	}
	r.d.Put(ReportingQ, segs, 0)
	u, err := r.d.Wait(ReportingQ, wait)
	if err != nil {
		r.t.Fatal(err)
	}
	return u
}

// TestPageReporting: reported free ranges are given back to the host
// (they read as zeros, and are marked dirty) and counted, MemTotal's
// actual is untouched; a device that keeps pages counts them only; a
// range that is not whole pages of RAM, or a readable buffer, needs a
// reset with nothing released; without the feature there is no queue 2.
func TestPageReporting(t *testing.T) {
	r := newRigReporting(t, false, true)
	if got := r.dev.Describe(); got != "virtio-balloon free_page_reporting=on" {
		t.Errorf("description %q", got)
	}
	r.fill(pfnBase, 64)
	if err := r.mem.RAM.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	first := uint64(pfnBase) * PageSize
	if u := r.report([2]uint64{first, 16 * PageSize}, [2]uint64{first + 32*PageSize, 8 * PageSize}); u.Len != 0 {
		t.Errorf("reporting chain used with length %d, want 0", u.Len)
	}
	for p := uint32(pfnBase); p < pfnBase+64; p++ {
		reported := p < pfnBase+16 || p >= pfnBase+32 && p < pfnBase+40
		if got := r.page(p); got == reported {
			t.Errorf("page %#x: holds its data %v, reported %v", p, got, reported)
		}
	}
	bm := r.mem.RAM.TakeDirty(0, nil)
	if p := pfnBase + 33; bm[p/64]&(1<<(p%64)) == 0 {
		t.Errorf("released page %#x is not marked dirty", p)
	}
	if i := r.dev.Info(); i.Reported != 24 || i.ReportReleased != 24 || i.Inflated != 0 || i.ActualPages != 0 || !i.Reporting {
		t.Errorf("info %+v, want 24 pages reported and released, nothing inflated", i)
	}

	// Kept: counted, not released.
	k := newRigReporting(t, true, true)
	k.fill(pfnBase, 4)
	k.report([2]uint64{first, 4 * PageSize})
	if !k.page(pfnBase) {
		t.Error("a balloon that keeps pages released reported ones")
	}
	if i := k.dev.Info(); i.Reported != 4 || i.ReportReleased != 0 {
		t.Errorf("keeping balloon: info %+v", i)
	}

	for _, c := range []struct {
		name string
		segs []virtiotest.Seg
	}{
		{"unaligned", []virtiotest.Seg{{GPA: first + 512, Len: PageSize, Write: true}}},
		{"partial page", []virtiotest.Seg{{GPA: first, Len: PageSize + 100, Write: true}}},
		{"past RAM", []virtiotest.Seg{{GPA: first, Len: PageSize, Write: true}, {GPA: ramSize - PageSize, Len: 2 * PageSize, Write: true}}},
		{"readable", []virtiotest.Seg{{GPA: first, Len: PageSize}}},
	} {
		b := newRigReporting(t, false, true)
		b.fill(pfnBase, 4)
		b.d.Put(ReportingQ, c.segs, 0)
		deadline := time.Now().Add(wait)
		for b.d.Status()&virtio.StatusNeedsReset == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if b.d.Status()&virtio.StatusNeedsReset == 0 {
			t.Errorf("%s: no reset asked for", c.name)
		}
		if !b.page(pfnBase) || b.dev.Info().Reported != 0 {
			t.Errorf("%s: something was released or counted", c.name)
		}
	}

	// Without the feature the device has two queues and refuses queue 2.
	plain := newRig(t, false)
	if plain.dev.Describe() != "virtio-balloon" || len(plain.dev.QueueMax()) != 2 {
		t.Errorf("without reporting: %q, %d queues", plain.dev.Describe(), len(plain.dev.QueueMax()))
	}
}

// statsAt is where the test driver keeps its statistics buffer.
const statsAt = pfnBuf + 0x10000

// postStats writes the (tag, value) entries as the driver's statistics
// buffer and posts it on the statistics queue.
func (r *rig) postStats(entries ...[2]uint64) {
	for i, e := range entries {
		b := r.mem.B[statsAt+statEntryLen*uint64(i):]
		binary.LittleEndian.PutUint16(b, uint16(e[0]))
		binary.LittleEndian.PutUint64(b[2:], e[1])
	}
	r.d.Put(StatsQ, []virtiotest.Seg{{GPA: statsAt, Len: uint32(statEntryLen * len(entries))}}, 0)
}

// waitStats waits until the device has read statistics with free_memory
// equal to free.
func (r *rig) waitStats(free uint64) map[uint16]uint64 {
	r.t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if st := r.dev.Info().Stats; st[4] == free {
			return st
		}
		time.Sleep(time.Millisecond)
	}
	r.t.Fatalf("no statistics with free_memory %d: %+v", free, r.dev.Info())
	return nil
}

// TestStats: with statistics and page reporting offered the statistics
// queue is 2 and reporting 3; the device reads the driver's buffer and
// keeps it, RequestStats gives it back and gets the refilled one, a pause
// takes the kept buffer back, and a buffer that is not whole entries
// needs a reset. Deflate on OOM is offered when asked for, and the
// description names every option.
func TestStats(t *testing.T) {
	r := newRigOpts(t, false, Options{Reporting: true, DeflateOnOOM: true, Stats: true})
	if got := r.dev.Describe(); got != "virtio-balloon free_page_reporting=on deflate_on_oom=on statistics=on" {
		t.Errorf("description %q", got)
	}
	if r.dev.RequestStats(10 * time.Millisecond) {
		t.Error("RequestStats before the driver posted a buffer")
	}
	r.postStats([2]uint64{4, 100 << 20}, [2]uint64{5, 512 << 20}, [2]uint64{99, 7})
	st := r.waitStats(100 << 20)
	if st[5] != 512<<20 || st[99] != 7 || StatName(99) != "tag_99" || StatName(6) != "available_memory" {
		t.Errorf("stats %v", st)
	}
	if _, err := r.d.Wait(StatsQ, 20*time.Millisecond); err == nil {
		t.Error("the device gave the statistics buffer back unasked")
	}
	// The driver refills the buffer when it comes back, as Linux's
	// stats_request does.
	refilled := make(chan error, 1)
	go func() {
		if _, err := r.d.Wait(StatsQ, wait); err != nil {
			refilled <- err
			return
		}
		r.postStats([2]uint64{4, 90 << 20}, [2]uint64{5, 512 << 20})
		refilled <- nil
	}()
	if !r.dev.RequestStats(wait) {
		t.Fatal("RequestStats: no fresh statistics")
	}
	if err := <-refilled; err != nil {
		t.Fatal(err)
	}
	if st := r.dev.Info().Stats; st[4] != 90<<20 || len(st) != 2 {
		t.Errorf("fresh stats %v", st)
	}
	// Page reporting is queue 3 now.
	r.fill(pfnBase, 4)
	first := uint64(pfnBase) * PageSize
	r.d.Put(3, []virtiotest.Seg{{GPA: first, Len: 4 * PageSize, Write: true}}, 0)
	if _, err := r.d.Wait(3, wait); err != nil {
		t.Fatal(err)
	}
	if i := r.dev.Info(); i.Reported != 4 || !i.Options.Stats || !i.DeflateOnOOM {
		t.Errorf("info %+v", i)
	}
	// A pause takes the kept buffer back (the transport rewinds the
	// queue over it) and the resume hands it to the device again.
	kept := func() bool {
		r.dev.mu.Lock()
		defer r.dev.mu.Unlock()
		return r.dev.statsDone != nil
	}
	r.tr.Pause()
	if kept() {
		t.Error("a paused device still keeps the statistics buffer")
	}
	r.tr.Resume()
	deadline := time.Now().Add(wait)
	for !kept() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !kept() {
		t.Error("after the resume the device did not get the statistics buffer back")
	}

	for name, segs := range map[string][]virtiotest.Seg{
		"ragged":   {{GPA: statsAt, Len: 9}},
		"writable": {{GPA: statsAt, Len: 10, Write: true}},
	} {
		b := newRigOpts(t, false, Options{Stats: true})
		b.d.Put(StatsQ, segs, 0)
		deadline := time.Now().Add(wait)
		for b.d.Status()&virtio.StatusNeedsReset == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if b.d.Status()&virtio.StatusNeedsReset == 0 || b.dev.Info().Stats != nil {
			t.Errorf("%s statistics buffer: no reset asked for, or read", name)
		}
	}
}
