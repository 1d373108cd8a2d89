// Package balloon is the traditional virtio-balloon device (virtio 1.2
// §5.5, device ID 5): the host sets a target (num_pages, in 4 KiB pages)
// and the guest's driver inflates its balloon towards it by handing page
// frame numbers to the device on the inflate queue, and deflates it by
// taking pages back on the deflate queue; it reports the balloon's size in
// actual. Inflated pages are given back to the host kernel
// (memory.Memory.Discard, MADV_DONTNEED), so an idle sandbox's memory can
// be taken back and given again without a reboot.
//
// Every PFN is untrusted: one outside guest RAM, a buffer that is not a
// whole number of 32-bit PFNs, or a device-writable buffer breaks the
// protocol, and the transport puts the device into DEVICE_NEEDS_RESET.
// Nothing is released before the whole chain was checked.
//
// Free page reporting (VIRTIO_BALLOON_F_PAGE_REPORTING, with
// Options.Reporting) is offered when asked for: the guest's free-page
// reporting hands the device large free ranges (Linux: 2 MiB and up, a
// few seconds after they were freed) on the reporting queue, and the
// device gives them back to the host as it does inflated pages; the guest
// keeps them (MemTotal does not change) and gets them back, zeroed, on
// its next touch. Each range is checked (page-aligned, guest RAM) before
// any of a chain's is released.
//
// Deflate on OOM (VIRTIO_BALLOON_F_DEFLATE_ON_OOM, Options.DeflateOnOOM)
// is offered when asked for: the guest's driver may then deflate on its
// own under memory pressure (Linux: its OOM notifier), so the host's
// target becomes a wish the guest may override, rather than a limit.
// The device serves those deflates like any other.
//
// Memory statistics (VIRTIO_BALLOON_F_STATS_VQ, Options.Stats) are
// offered when asked for: the driver posts one buffer of (tag, value)
// pairs on the statistics queue, the device reads it and keeps it, and
// asks for fresh figures by giving the buffer back (RequestStats), upon
// which the driver fills and posts it again. Tags the device does not
// know are kept by number; a buffer that is not whole 10-byte entries,
// or device-writable, breaks the protocol.
//
// Not offered: free-page hinting.
package balloon

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"govmm/virtio"
)

// ID is virtio-balloon's device ID.
const ID = 5

// Feature bits (virtio 1.2 §5.5.3).
const (
	FMustTellHost  = 1 << 0
	FStatsVQ       = 1 << 1
	FDeflateOnOOM  = 1 << 2
	FPageReporting = 1 << 5
)

// Queues. A queue whose feature was not negotiated takes no index: Linux
// numbers the queues it uses in order (virtio_pci's vp_find_vqs), so the
// statistics queue, when negotiated, is queue 2, and the reporting queue
// follows it: queue 2 without statistics (as in Cloud Hypervisor), 3
// with them.
const (
	InflateQ = 0
	DeflateQ = 1
	// StatsQ is the statistics queue (with FStatsVQ).
	StatsQ = 2
	// ReportingQ is the reporting queue without statistics.
	ReportingQ = 2
)

// Options are the balloon's optional features, each offered only when
// set.
type Options struct {
	// Reporting offers free page reporting.
	Reporting bool
	// DeflateOnOOM offers deflate on OOM.
	DeflateOnOOM bool
	// Stats offers the memory statistics queue.
	Stats bool
}

// Statistics tags (virtio 1.2 §5.5.6.3, Linux's
// include/uapi/linux/virtio_balloon.h), by their names in Stats.
var statNames = [...]string{
	0: "swap_in", 1: "swap_out", 2: "major_faults", 3: "minor_faults",
	4: "free_memory", 5: "total_memory", 6: "available_memory", 7: "disk_caches",
	8: "hugetlb_allocations", 9: "hugetlb_failures", 10: "oom_kills", 11: "alloc_stalls",
	12: "async_scans", 13: "direct_scans", 14: "async_reclaims", 15: "direct_reclaims",
}

// statEntryLen is one struct virtio_balloon_stat: le16 tag, le64 val.
const statEntryLen = 10

// StatName names a statistics tag ("tag_N" for one the device does not
// know).
func StatName(tag uint16) string {
	if int(tag) < len(statNames) {
		return statNames[tag]
	}
	return fmt.Sprintf("tag_%d", tag)
}

// QueueSize is each queue's maximum size.
const QueueSize = 128

// PageSize is the size of the page a PFN names: always 4 KiB, whatever
// the guest's page size.
const PageSize = 4096

// configLen is the configuration structure without the optional fields
// (free_page_hint_cmd_id, poison_val), whose features are not offered.
const configLen = 8

// Releaser gives guest RAM back to the host (memory.Memory implements
// it): a range of whole pages that must lie in RAM.
type Releaser interface {
	Discard(gpa, n uint64) error
}

// Config is one balloon device.
type Config struct {
	// Release gives inflated pages back to the host; nil keeps them
	// (KeepReason says why).
	Release Releaser
	// KeepReason says why inflated pages are not released (guest RAM
	// that a hypervisor or an IOMMU pins cannot be given back without
	// the guest and the VMM seeing different pages); logged once.
	KeepReason string
	// Options are the features offered besides the inflate and deflate
	// queues.
	Options
	// Log receives the device's messages.
	Log *slog.Logger
}

// Device is one virtio-balloon device. It is safe for concurrent use.
type Device struct {
	mem     virtio.Memory
	release Releaser
	keep    string
	opts    Options
	log     *slog.Logger

	mu     sync.Mutex
	target uint32 // num_pages
	actual uint32
	notify func()
	// negotiated are the features the driver accepted (Activate).
	negotiated uint64
	// statsDone returns the kept statistics buffer (nil when none is
	// kept); stats are the figures it held, read at statsAt; statsSeq
	// counts the buffers read, statsCond wakes RequestStats.
	statsDone func(uint32)
	stats     map[uint16]uint64
	statsAt   time.Time
	statsSeq  uint64
	statsCond *sync.Cond
	// Counters since the VM started, for info.
	inflated, deflated, released uint64
	// reported counts the pages of free ranges the guest reported, and
	// reportReleased those given back to the host.
	reported, reportReleased uint64
	keptLogged               bool
}

// New returns a balloon over guest RAM mem (to check the PFNs) with a
// target of zero.
func New(mem virtio.Memory, c Config) *Device {
	d := &Device{mem: mem, release: c.Release, keep: c.KeepReason, opts: c.Options, log: c.Log}
	d.statsCond = sync.NewCond(&d.mu)
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.release == nil && d.keep == "" {
		d.keep = "no way to release guest RAM here"
	}
	return d
}

// SetNotify sets the function that raises the configuration-change
// interrupt (the transport's ConfigChanged), called when the target moves.
func (d *Device) SetNotify(f func()) {
	d.mu.Lock()
	d.notify = f
	d.mu.Unlock()
}

func (*Device) Type() uint16 { return ID }
func (*Device) Name() string { return "virtio-balloon" }

// Features offers the configured options.
func (d *Device) Features() uint64 {
	var f uint64
	if d.opts.Stats {
		f |= FStatsVQ
	}
	if d.opts.DeflateOnOOM {
		f |= FDeflateOnOOM
	}
	if d.opts.Reporting {
		f |= FPageReporting
	}
	return f
}

// QueueMax is the inflate and deflate queues, then the statistics and
// the reporting queue when offered.
func (d *Device) QueueMax() []uint16 {
	q := []uint16{QueueSize, QueueSize}
	if d.opts.Stats {
		q = append(q, QueueSize)
	}
	if d.opts.Reporting {
		q = append(q, QueueSize)
	}
	return q
}

// Describe names the device and, for restores to compare, the options it
// offers (in a fixed order).
func (d *Device) Describe() string {
	s := "virtio-balloon"
	if d.opts.Reporting {
		s += " free_page_reporting=on"
	}
	if d.opts.DeflateOnOOM {
		s += " deflate_on_oom=on"
	}
	if d.opts.Stats {
		s += " statistics=on"
	}
	return s
}

// Activate accepts any subset of the offered features; they decide the
// queues' numbers.
func (d *Device) Activate(features uint64) error {
	d.mu.Lock()
	d.negotiated = features
	d.mu.Unlock()
	return nil
}

// queueRole is what queue q carries under the negotiated features.
func (d *Device) queueRole(q int) string {
	d.mu.Lock()
	f := d.negotiated
	d.mu.Unlock()
	next := 2
	if f&FStatsVQ != 0 {
		if q == next {
			return "stats"
		}
		next++
	}
	if f&FPageReporting != 0 && q == next {
		return "reporting"
	}
	switch q {
	case InflateQ:
		return "inflate"
	case DeflateQ:
		return "deflate"
	}
	return ""
}

// Reset forgets the driver's balloon (a new driver starts with an empty
// one and the guest may use all its RAM again); the host's target stays.
func (d *Device) Reset() {
	d.mu.Lock()
	d.actual = 0
	d.negotiated = 0
	d.statsDone = nil
	d.mu.Unlock()
}

func (d *Device) config() [configLen]byte {
	var b [configLen]byte
	binary.LittleEndian.PutUint32(b[0:], d.target)
	binary.LittleEndian.PutUint32(b[4:], d.actual)
	return b
}

// ReadConfig reads num_pages and actual.
func (d *Device) ReadConfig(off uint64, data []byte) {
	d.mu.Lock()
	b := d.config()
	d.mu.Unlock()
	virtio.ReadConfigImage(b[:], off, data)
}

// WriteConfig takes the driver's writes to actual (bytes 4-7); num_pages
// is the host's and read-only.
func (d *Device) WriteConfig(off uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.config()
	changed := false
	for i, v := range data {
		o := off + uint64(i)
		if o < off || o < 4 || o >= configLen {
			continue
		}
		b[o], changed = v, true
	}
	if changed {
		d.actual = binary.LittleEndian.Uint32(b[4:])
	}
}

// SetTarget sets the balloon's target in pages and tells the driver.
func (d *Device) SetTarget(pages uint32) {
	d.mu.Lock()
	d.target = pages
	notify := d.notify
	d.mu.Unlock()
	if notify != nil {
		notify()
	}
}

// Info is the balloon as the host sees it.
type Info struct {
	// TargetPages is num_pages, ActualPages the driver's actual.
	TargetPages uint32
	ActualPages uint32
	// Inflated and Deflated count the pages the driver put into and took
	// out of the balloon; Released the inflated pages given back to the
	// host.
	Inflated, Deflated, Released uint64
	// Reported counts the pages of free ranges the guest reported
	// (page reporting), ReportReleased those given back to the host.
	Reported, ReportReleased uint64
	// Options are the features offered.
	Options
	// Stats are the guest's latest memory statistics by tag (Stats on,
	// once the driver sent them), read at StatsAt.
	Stats   map[uint16]uint64
	StatsAt time.Time
	// KeepReason is set when inflated pages are not released.
	KeepReason string
}

// Info returns the balloon's state and counters.
func (d *Device) Info() Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := Info{TargetPages: d.target, ActualPages: d.actual, Inflated: d.inflated, Deflated: d.deflated, Released: d.released,
		Reported: d.reported, ReportReleased: d.reportReleased, Options: d.opts, StatsAt: d.statsAt}
	if d.stats != nil {
		i.Stats = make(map[uint16]uint64, len(d.stats))
		for k, v := range d.stats {
			i.Stats[k] = v
		}
	}
	if d.release == nil {
		i.KeepReason = d.keep
	}
	return i
}

// State is the device's state for snapshots and migration.
type State struct {
	TargetPages uint32 `json:"target_pages"`
	ActualPages uint32 `json:"actual_pages"`
}

// Save returns the state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{TargetPages: d.target, ActualPages: d.actual}
}

// Restore loads a saved state; the driver keeps the balloon it had.
func (d *Device) Restore(s State) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.target, d.actual = s.TargetPages, s.ActualPages
}

// Handle serves one inflate or deflate chain (device-readable buffers
// holding little-endian 32-bit PFNs) or one page-reporting chain.
func (d *Device) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	switch d.queueRole(q) {
	case "reporting":
		return d.report(c, done)
	case "stats":
		return d.statsBuffer(c, done)
	}
	if len(c.Writable) > 0 {
		return fmt.Errorf("chain %d has %d device-writable buffers; a balloon queue carries PFNs for the device to read", c.Head, len(c.Writable))
	}
	n := c.ReadableLen()
	if n%4 != 0 {
		return fmt.Errorf("chain %d holds %d bytes, not a whole number of 32-bit PFNs", c.Head, n)
	}
	// Check every PFN before acting on any.
	if err := forEachRun(c, func(gpa, len uint64) error {
		if _, err := d.mem.Slice(gpa, len); err != nil {
			if len == PageSize {
				return fmt.Errorf("chain %d: PFN %#x (GPA %#x) is not guest RAM", c.Head, gpa/PageSize, gpa)
			}
			return fmt.Errorf("chain %d: PFNs %#x-%#x (GPA %#x-%#x) are not all guest RAM", c.Head, gpa/PageSize, (gpa+len)/PageSize-1, gpa, gpa+len-1)
		}
		return nil
	}); err != nil {
		return err
	}
	pages := n / 4
	switch q {
	case InflateQ:
		var released uint64
		if d.release != nil {
			if err := forEachRun(c, func(gpa, len uint64) error {
				if err := d.release.Discard(gpa, len); err != nil {
					return err
				}
				released += len / PageSize
				return nil
			}); err != nil {
				// The PFNs were checked: the host failed, not the
				// guest. The pages stay with the guest (it does not
				// use them); the chain completes.
				d.log.Error("virtio-balloon: releasing inflated pages failed", "err", err)
			}
		}
		d.mu.Lock()
		d.inflated += pages
		d.released += released
		logKeep := d.release == nil && !d.keptLogged && pages > 0
		d.keptLogged = d.keptLogged || logKeep
		d.mu.Unlock()
		if logKeep {
			d.log.Warn("virtio-balloon: inflated pages stay with the guest", "reason", d.keep)
		}
	case DeflateQ:
		// A deflated page is used again by touching it: it faults in
		// (zeroed, or from the snapshot's memory file) on the host.
		d.mu.Lock()
		d.deflated += pages
		d.mu.Unlock()
	default:
		return fmt.Errorf("chain %d on queue %d: the balloon has queues 0 (inflate) and 1 (deflate)%s", c.Head, q, d.extraQueues())
	}
	done(0)
	return nil
}

// extraQueues names, for errors, the queues the negotiated features add
// after inflate and deflate.
func (d *Device) extraQueues() string {
	var extra string
	for q := 2; q < 4; q++ {
		switch d.queueRole(q) {
		case "stats":
			extra += fmt.Sprintf(", %d (statistics)", q)
		case "reporting":
			extra += fmt.Sprintf(", %d (page reporting)", q)
		}
	}
	return extra
}

// statsBuffer reads the driver's statistics buffer (device-readable
// struct virtio_balloon_stat entries) and keeps it until RequestStats
// gives it back for fresh figures.
func (d *Device) statsBuffer(c *virtio.Chain, done func(uint32)) error {
	if len(c.Writable) > 0 {
		return fmt.Errorf("statistics chain %d has %d device-writable buffers; the driver's statistics are for the device to read", c.Head, len(c.Writable))
	}
	n := c.ReadableLen()
	if n%statEntryLen != 0 || n > 64*statEntryLen {
		return fmt.Errorf("statistics chain %d holds %d bytes, not whole 10-byte entries (at most 64)", c.Head, n)
	}
	buf := make([]byte, n)
	c.Read(0, buf)
	stats := make(map[uint16]uint64, n/statEntryLen)
	for off := uint64(0); off < n; off += statEntryLen {
		stats[binary.LittleEndian.Uint16(buf[off:])] = binary.LittleEndian.Uint64(buf[off+2:])
	}
	d.mu.Lock()
	prev := d.statsDone
	d.stats, d.statsAt, d.statsDone = stats, time.Now(), done
	d.statsSeq++
	d.statsCond.Broadcast()
	d.mu.Unlock()
	if prev != nil {
		// A driver has one statistics buffer; a second while the first
		// is kept returns the first. (The transport's completion is
		// called without the device's lock.)
		prev(0)
	}
	return nil
}

// RequestStats asks the driver for fresh statistics by giving back the
// buffer it keeps, and waits up to wait for the new figures. It reports
// whether they came (false: the driver has posted no buffer yet, or did
// not answer in time; Info then has the last figures and their time).
func (d *Device) RequestStats(wait time.Duration) bool {
	d.mu.Lock()
	done, seq := d.statsDone, d.statsSeq
	d.statsDone = nil
	d.mu.Unlock()
	if done == nil {
		return false
	}
	done(0)
	d.mu.Lock()
	defer d.mu.Unlock()
	timer := time.AfterFunc(wait, func() {
		d.mu.Lock()
		d.statsCond.Broadcast()
		d.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(wait)
	for d.statsSeq == seq && time.Now().Before(deadline) {
		d.statsCond.Wait()
	}
	return d.statsSeq != seq
}

// Unkeep gives back the statistics buffer the device keeps (a pause, a
// reset or a close takes it; the queue is rewound over it, so the driver's
// buffer comes back on resume).
func (d *Device) Unkeep(q int) int {
	if d.queueRole(q) != "stats" {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.statsDone == nil {
		return 0
	}
	d.statsDone = nil
	return 1
}

// report serves a page-reporting chain: device-writable buffers, each a
// free range of whole pages of guest RAM (the device reads nor writes
// them), given back to the host once every one was checked.
func (d *Device) report(c *virtio.Chain, done func(uint32)) error {
	if len(c.Readable) > 0 {
		return fmt.Errorf("page-reporting chain %d has %d device-readable buffers; reported ranges are device-writable", c.Head, len(c.Readable))
	}
	var pages uint64
	for _, b := range c.Writable {
		n := uint64(len(b.Bytes))
		if b.GPA%PageSize != 0 || n%PageSize != 0 {
			return fmt.Errorf("page-reporting chain %d: range GPA %#x, %#x bytes is not whole 4 KiB pages", c.Head, b.GPA, n)
		}
		if _, err := d.mem.Slice(b.GPA, n); err != nil {
			return fmt.Errorf("page-reporting chain %d: range GPA %#x-%#x is not all guest RAM", c.Head, b.GPA, b.GPA+n-1)
		}
		pages += n / PageSize
	}
	var released uint64
	if d.release != nil {
		for _, b := range c.Writable {
			n := uint64(len(b.Bytes))
			if err := d.release.Discard(b.GPA, n); err != nil {
				d.log.Error("virtio-balloon: releasing reported free pages failed", "err", err)
				break
			}
			released += n / PageSize
		}
	}
	d.mu.Lock()
	d.reported += pages
	d.reportReleased += released
	d.mu.Unlock()
	done(0)
	return nil
}

// forEachRun calls f with each run of consecutive ascending PFNs of the
// chain's readable part, as a GPA range. The caller checked the length.
func forEachRun(c *virtio.Chain, f func(gpa, len uint64) error) error {
	var buf [1024]byte
	var start, next uint64
	have := false
	flush := func() error {
		if !have {
			return nil
		}
		have = false
		return f(start*PageSize, (next-start)*PageSize)
	}
	total := c.ReadableLen()
	for off := uint64(0); off < total; {
		k := c.Read(off, buf[:min(uint64(len(buf)), total-off)])
		for i := 0; i+4 <= k; i += 4 {
			pfn := uint64(binary.LittleEndian.Uint32(buf[i:]))
			if have && pfn == next {
				next++
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			start, next, have = pfn, pfn+1, true
		}
		off += uint64(k)
	}
	return flush()
}
