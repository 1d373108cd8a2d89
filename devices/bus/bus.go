// Package bus routes a vCPU's port I/O and MMIO accesses to the device that
// claims the address. A Bus is built before the vCPUs start and is read-only
// afterwards, so lookups take no lock. Accesses nobody claims read as all
// ones and writes are dropped; they are counted and logged once per address
// at debug level, because a guest probing for hardware is normal and must
// never stop the VM. The guest chooses the addresses, so the memory of which
// ones were logged is a fixed-size set (the oldest forgotten first) and the
// log lines are rate-limited: a guest touching millions of distinct
// addresses must not grow the VMM or flood its log.
package bus

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on what unclaimed accesses can make the bus keep or print. Both are
// variables so the tests can shrink them.
var (
	// loggedCap is how many distinct unclaimed addresses the bus remembers
	// having logged; a new address beyond that evicts the oldest.
	loggedCap = 1024
	// logBurst is how many "unclaimed access" lines the bus prints per
	// logInterval; the rest are counted and the count is reported with the
	// next line printed.
	logBurst    = 64
	logInterval = time.Second
)

// Device is something that answers accesses in its address range. offset
// is relative to the range's base; data is 1, 2, 4 or 8 bytes (little
// endian). A device must treat every value as hostile and never panic.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Resolver finds the device behind an address that no fixed range claims:
// the PCI host bridge resolves the BARs a guest placed, which move at run
// time while the Bus's own table is fixed. Lookup is called on every such
// access, from any vCPU, and must be safe for concurrent use.
type Resolver interface {
	Lookup(addr uint64) (Device, uint64, bool)
}

type entry struct {
	base, size uint64
	name       string
	dev        Device
	n          *accessCount
}

// accessCount counts a device's accesses: each one is a VMM exit, so the
// counts say where a guest spends them.
type accessCount struct{ reads, writes atomic.Uint64 }

// Count is one device's accesses since the bus was made.
type Count struct {
	Device       string `json:"device"`
	Base         uint64 `json:"base"`
	Reads        uint64 `json:"reads"`
	Writes       uint64 `json:"writes"`
	Size         uint64 `json:"size,omitempty"`
	Unregistered bool   `json:"-"` // the fallback's or the unclaimed row
}

// Bus is one address space (ports or MMIO).
type Bus struct {
	name    string
	entries []entry // sorted by base, non-overlapping
	// fallback answers what entries do not (nil: nothing does).
	fallback  Resolver
	fallbackN accessCount

	unclaimedReads  atomic.Uint64
	unclaimedWrites atomic.Uint64
	// lastUnclaimed is the last unclaimed address seen, plus one (0: none):
	// a guest polling an absent device hits the same address again and
	// again, and must not pay for a lock or an allocation each time.
	lastUnclaimed atomic.Uint64
	mu            sync.Mutex
	logged        map[uint64]struct{} // at most loggedCap entries
	order         []uint64            // ring of logged's keys, oldest at next
	next          int
	windowStart   time.Time // start of the current rate-limit window
	windowLines   int       // lines printed in it
	suppressed    uint64    // new addresses not printed since the last line
	log           *slog.Logger
}

// New returns an empty bus; name ("pio", "mmio") appears in log lines.
func New(name string, log *slog.Logger) *Bus {
	if log == nil {
		log = slog.Default()
	}
	return &Bus{name: name, log: log}
}

// Register claims [base, base+size) for dev. Overlaps are refused.
func (b *Bus) Register(base, size uint64, name string, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("%s bus: device %s: bad range base %#x size %#x", b.name, name, base, size)
	}
	for _, e := range b.entries {
		if base < e.base+e.size && e.base < base+size {
			return fmt.Errorf("%s bus: device %s at [%#x,%#x) overlaps %s at [%#x,%#x)",
				b.name, name, base, base+size, e.name, e.base, e.base+e.size)
		}
	}
	b.entries = append(b.entries, entry{base, size, name, dev, &accessCount{}})
	sort.Slice(b.entries, func(i, j int) bool { return b.entries[i].base < b.entries[j].base })
	return nil
}

// SetFallback makes r answer the addresses no registered range claims.
// Like Register, it is called before the vCPUs start.
func (b *Bus) SetFallback(r Resolver) { b.fallback = r }

// Lookup returns the device claiming addr and addr's offset in its range:
// a registered range first, then the fallback resolver.
func (b *Bus) Lookup(addr uint64) (Device, uint64, bool) {
	d, off, _, ok := b.find(addr)
	return d, off, ok
}

// find is Lookup with the access counter of what answers.
func (b *Bus) find(addr uint64) (Device, uint64, *accessCount, bool) {
	es := b.entries
	i := sort.Search(len(es), func(i int) bool { return es[i].base+es[i].size > addr })
	if i < len(es) && es[i].base <= addr {
		return es[i].dev, addr - es[i].base, es[i].n, true
	}
	if b.fallback != nil {
		if d, off, ok := b.fallback.Lookup(addr); ok {
			return d, off, &b.fallbackN, true
		}
	}
	return nil, 0, nil, false
}

// Counts returns every registered device's accesses, in address order,
// then those the fallback answered ("fallback") and the unclaimed ones
// ("unclaimed"), each where nonzero.
func (b *Bus) Counts() []Count {
	out := make([]Count, 0, len(b.entries)+2)
	for _, e := range b.entries {
		out = append(out, Count{Device: e.name, Base: e.base, Size: e.size, Reads: e.n.reads.Load(), Writes: e.n.writes.Load()})
	}
	if r, w := b.fallbackN.reads.Load(), b.fallbackN.writes.Load(); r+w > 0 {
		out = append(out, Count{Device: "fallback", Reads: r, Writes: w, Unregistered: true})
	}
	if r, w := b.unclaimedReads.Load(), b.unclaimedWrites.Load(); r+w > 0 {
		out = append(out, Count{Device: "unclaimed", Reads: r, Writes: w, Unregistered: true})
	}
	return out
}

// Read performs a read access.
func (b *Bus) Read(addr uint64, data []byte) {
	if d, off, n, ok := b.find(addr); ok {
		n.reads.Add(1)
		d.Read(off, data)
		return
	}
	for i := range data {
		data[i] = 0xff
	}
	b.unclaimedReads.Add(1)
	b.logOnce(addr, "read", len(data))
}

// Write performs a write access.
func (b *Bus) Write(addr uint64, data []byte) {
	if d, off, n, ok := b.find(addr); ok {
		n.writes.Add(1)
		d.Write(off, data)
		return
	}
	b.unclaimedWrites.Add(1)
	b.logOnce(addr, "write", len(data))
}

func (b *Bus) logOnce(addr uint64, op string, n int) {
	if b.lastUnclaimed.Load() == addr+1 {
		return
	}
	b.lastUnclaimed.Store(addr + 1)
	b.mu.Lock()
	if _, seen := b.logged[addr]; seen {
		b.mu.Unlock()
		return
	}
	b.remember(addr)
	now := time.Now()
	if now.Sub(b.windowStart) >= logInterval {
		b.windowStart, b.windowLines = now, 0
	}
	if b.windowLines >= logBurst {
		b.suppressed++
		b.mu.Unlock()
		return
	}
	b.windowLines++
	suppressed := b.suppressed
	b.suppressed = 0
	b.mu.Unlock()
	if suppressed > 0 {
		b.log.Debug("unclaimed access", "bus", b.name, "op", op, "addr", fmt.Sprintf("%#x", addr), "size", n,
			"not_logged_before", suppressed)
		return
	}
	b.log.Debug("unclaimed access", "bus", b.name, "op", op, "addr", fmt.Sprintf("%#x", addr), "size", n)
}

// remember adds addr to the set of logged addresses, evicting the oldest
// when the set is full. b.mu is held.
func (b *Bus) remember(addr uint64) {
	if b.logged == nil {
		b.logged = make(map[uint64]struct{}, loggedCap)
		b.order = make([]uint64, 0, loggedCap)
	}
	if len(b.order) < loggedCap {
		b.order = append(b.order, addr)
	} else {
		delete(b.logged, b.order[b.next])
		b.order[b.next] = addr
		b.next = (b.next + 1) % len(b.order)
	}
	b.logged[addr] = struct{}{}
}

// Unclaimed returns how many reads and writes hit no device.
func (b *Bus) Unclaimed() (reads, writes uint64) {
	return b.unclaimedReads.Load(), b.unclaimedWrites.Load()
}

// Devices lists the registered ranges, for diagnostics.
func (b *Bus) Devices() []string {
	out := make([]string, 0, len(b.entries))
	for _, e := range b.entries {
		out = append(out, fmt.Sprintf("%s [%#x,%#x)", e.name, e.base, e.base+e.size))
	}
	return out
}
