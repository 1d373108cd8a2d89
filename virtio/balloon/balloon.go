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
// Config.Reporting) is offered when asked for: the guest's free-page
// reporting hands the device large free ranges (Linux: 2 MiB and up, a
// few seconds after they were freed) on the reporting queue, and the
// device gives them back to the host as it does inflated pages; the guest
// keeps them (MemTotal does not change) and gets them back, zeroed, on
// its next touch. Each range is checked (page-aligned, guest RAM) before
// any of a chain's is released.
//
// Not offered: VIRTIO_BALLOON_F_DEFLATE_ON_OOM (a Linux driver that has
// it leaves MemTotal as it is and deflates on its own under memory
// pressure, so the host's target would not hold; the device would serve
// such deflates like any other), statistics, free-page hinting.
package balloon

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"

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

// Queues. A queue whose feature is not offered takes no index: Linux
// numbers the queues it uses in order (virtio_pci's vp_find_vqs), so with
// page reporting and without statistics or hinting the reporting queue is
// queue 2, as in Cloud Hypervisor.
const (
	InflateQ   = 0
	DeflateQ   = 1
	ReportingQ = 2
)

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
	// Reporting offers free page reporting.
	Reporting bool
	// Log receives the device's messages.
	Log *slog.Logger
}

// Device is one virtio-balloon device. It is safe for concurrent use.
type Device struct {
	mem       virtio.Memory
	release   Releaser
	keep      string
	reporting bool
	log       *slog.Logger

	mu     sync.Mutex
	target uint32 // num_pages
	actual uint32
	notify func()
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
	d := &Device{mem: mem, release: c.Release, keep: c.KeepReason, reporting: c.Reporting, log: c.Log}
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

// Features offers page reporting when configured, nothing else.
func (d *Device) Features() uint64 {
	if d.reporting {
		return FPageReporting
	}
	return 0
}

// QueueMax is the inflate and deflate queues, and the reporting queue
// when offered.
func (d *Device) QueueMax() []uint16 {
	if d.reporting {
		return []uint16{QueueSize, QueueSize, QueueSize}
	}
	return []uint16{QueueSize, QueueSize}
}

// Describe names the device and, for restores to compare, whether it
// offers page reporting.
func (d *Device) Describe() string {
	if d.reporting {
		return "virtio-balloon free_page_reporting=on"
	}
	return "virtio-balloon"
}

// Activate accepts any subset of the offered features.
func (*Device) Activate(uint64) error { return nil }

// Reset forgets the driver's balloon (a new driver starts with an empty
// one and the guest may use all its RAM again); the host's target stays.
func (d *Device) Reset() {
	d.mu.Lock()
	d.actual = 0
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
	// Reporting says whether page reporting is offered.
	Reporting bool
	// KeepReason is set when inflated pages are not released.
	KeepReason string
}

// Info returns the balloon's state and counters.
func (d *Device) Info() Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := Info{TargetPages: d.target, ActualPages: d.actual, Inflated: d.inflated, Deflated: d.deflated, Released: d.released,
		Reported: d.reported, ReportReleased: d.reportReleased, Reporting: d.reporting}
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
	if q == ReportingQ && d.reporting {
		return d.report(c, done)
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
		return fmt.Errorf("chain %d on queue %d: the balloon has queues 0 (inflate) and 1 (deflate)%s", c.Head, q, d.reportingQueue())
	}
	done(0)
	return nil
}

func (d *Device) reportingQueue() string {
	if d.reporting {
		return " and 2 (page reporting)"
	}
	return ""
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
