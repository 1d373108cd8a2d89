package mshv

import (
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// VM is one MSHV partition. It implements accel.VM.
type VM struct {
	acc *Accelerator
	dev mshvabi.Device
	pfd int
	hv  hvcaller
	cfg accel.VMConfig
	// V2 reports whether the partition was created with the v2 payload.
	V2 bool

	mu      sync.Mutex
	regions atomic.Pointer[[]region] // sorted by GPA; copy on write under mu
	irqfds  map[int]accel.IRQFD
	dirtyOn bool
	paused  bool

	// irqMu guards the MSI routes the kernel holds and the resample
	// irqfds govmm serves itself (see AssignIRQFD); the EOI path of every
	// vCPU reads them.
	irqMu      sync.Mutex
	msiRoutes  map[uint32]accel.MSI
	unroutable map[uint32]accel.MSI // routes left out of the table (SetGSIRouting)
	resamplers map[int]resampler    // by trigger eventfd

	// setupFrozen: time is frozen since creation and no Pause asked for
	// it; the first Run unfreezes.
	setupFrozen atomic.Bool

	// busMu serialises LOCK-prefixed emulated accesses across vCPUs.
	busMu sync.Mutex

	vcpus  sync.Map // index -> *VCPU
	xsave  layoutCache
	closed bool
}

// resampler is a resample irqfd served in userspace: the kernel has the
// trigger eventfd as a plain irqfd, and govmm signals fd (its own duplicate
// of the caller's resample eventfd, closed on deassign) when a vCPU reports
// the EOI of the GSI's level-triggered vector.
type resampler struct {
	gsi uint32
	fd  int
}

type region struct {
	gpa      uint64
	host     []byte
	readOnly bool
}

func (r region) end() uint64 { return r.gpa + uint64(len(r.host)) }

var _ accel.VM = (*VM)(nil)

func newVM(a *Accelerator, pfd int, cfg accel.VMConfig, v2 bool) *VM {
	vm := &VM{acc: a, dev: a.dev, pfd: pfd, hv: hvcaller{dev: a.dev, fd: pfd}, cfg: cfg, V2: v2,
		irqfds: map[int]accel.IRQFD{}, msiRoutes: map[uint32]accel.MSI{}, resamplers: map[int]resampler{}}
	vm.regions.Store(&[]region{})
	vm.setupFrozen.Store(true)
	return vm
}

// PartitionFD is the partition's fd (for tests and diagnostics).
func (vm *VM) PartitionFD() int { return vm.pfd }

func hostAddr(b []byte) uintptr { return mshvabi.Addr(b) }

// MapMemory maps a region with MSHV_SET_GUEST_MEMORY. MSHV has no slots:
// regions are identified by GPA and may not overlap in GPA or in host
// memory; an alias (one host range at two GPAs) is refused.
func (vm *VM) MapMemory(r accel.MemoryRegion) error {
	if len(r.Host) == 0 || r.GPA%4096 != 0 || len(r.Host)%4096 != 0 || hostAddr(r.Host)%4096 != 0 {
		return fmt.Errorf("map guest memory at %#x (%d bytes): GPA, size and host address must be non-zero multiples of 4 KiB", r.GPA, len(r.Host))
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	old := *vm.regions.Load()
	h0, h1 := hostAddr(r.Host), hostAddr(r.Host)+uintptr(len(r.Host))
	for _, o := range old {
		if r.GPA < o.end() && o.gpa < r.GPA+r.Size() {
			return fmt.Errorf("map guest memory at %#x-%#x: overlaps the region at %#x-%#x (MSHV regions may not overlap)", r.GPA, r.GPA+r.Size()-1, o.gpa, o.end()-1)
		}
		o0, o1 := hostAddr(o.host), hostAddr(o.host)+uintptr(len(o.host))
		if h0 < o1 && o0 < h1 {
			return fmt.Errorf("map guest memory at %#x: its host memory is already mapped at GPA %#x; MSHV cannot map one host range at two guest addresses (aliases are not supported)", r.GPA, o.gpa+uint64(max(h0, o0)-o0))
		}
	}
	flags := uint8(mshvabi.MemExecutable)
	if !r.ReadOnly {
		flags |= mshvabi.MemWritable
	}
	if err := mshvabi.SetGuestMemory(vm.dev, vm.pfd, r.GPA, r.Host, flags); err != nil {
		return fmt.Errorf("map guest memory at %#x (%d bytes): MSHV_SET_GUEST_MEMORY: %w", r.GPA, len(r.Host), err)
	}
	n := append(append([]region(nil), old...), region{gpa: r.GPA, host: r.Host, readOnly: r.ReadOnly})
	sort.Slice(n, func(i, j int) bool { return n[i].gpa < n[j].gpa })
	vm.regions.Store(&n)
	return nil
}

// UnmapMemory unmaps the region that starts at gpa.
func (vm *VM) UnmapMemory(gpa uint64) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	old := *vm.regions.Load()
	for i, o := range old {
		if o.gpa != gpa {
			continue
		}
		if err := mshvabi.SetGuestMemory(vm.dev, vm.pfd, o.gpa, o.host, mshvabi.MemUnmap); err != nil {
			return fmt.Errorf("unmap guest memory at %#x: %w", gpa, err)
		}
		n := append(append([]region(nil), old[:i]...), old[i+1:]...)
		vm.regions.Store(&n)
		return nil
	}
	return fmt.Errorf("unmap guest memory at %#x: no region starts there", gpa)
}

// ram returns the host bytes for [gpa, gpa+n) when they lie in one region.
func (vm *VM) ram(gpa uint64, n int, write bool) []byte {
	rs := *vm.regions.Load()
	i := sort.Search(len(rs), func(i int) bool { return rs[i].end() > gpa })
	if i == len(rs) || rs[i].gpa > gpa || gpa+uint64(n) > rs[i].end() || gpa+uint64(n) < gpa {
		return nil
	}
	if write && rs[i].readOnly {
		return nil
	}
	off := gpa - rs[i].gpa
	return rs[i].host[off : off+uint64(n)]
}

// CreateVCPU creates VP index.
func (vm *VM) CreateVCPU(index int) (accel.VCPU, error) { return vm.NewVCPU(index) }

// SetGSIRouting replaces the MSI routing table (MSHV routes MSIs only).
//
// Upstream mshv_update_routing_table (drivers/hv/mshv_irq.c) refuses the
// whole table (EINVAL) when one entry has a nonzero address_hi or a GSI
// appears twice. A route the guest programmed with an upper address (an
// MSI-X entry pointing above 4 GiB, which is not an x86 interrupt
// address) is therefore left out of the table, so that it cannot poison
// every other route, and reported: logged once per change, and an irqfd
// assigned to its GSI is refused naming it. A GSI given twice keeps its
// first route; the later ones are left out and logged.
func (vm *VM) SetGSIRouting(routes []accel.Route) error {
	if len(routes) > mshvabi.MaxGuestIRQs {
		return fmt.Errorf("set MSI routing: %d routes, MSHV takes at most %d", len(routes), mshvabi.MaxGuestIRQs)
	}
	ents := make([]mshvabi.UserIRQEntry, 0, len(routes))
	seen := make(map[uint32]bool, len(routes))
	unroutable := map[uint32]accel.MSI{}
	for _, r := range routes {
		if r.Kind != accel.RouteMSI {
			return fmt.Errorf("GSI %d: irqchip routes: %w (MSHV has no in-kernel IOAPIC/PIC; route MSIs only)", r.GSI, accel.ErrNotSupported)
		}
		if r.GSI >= mshvabi.MaxGuestIRQs {
			return fmt.Errorf("set MSI routing: GSI %d: MSHV takes GSIs below %d", r.GSI, mshvabi.MaxGuestIRQs)
		}
		if seen[r.GSI] {
			slog.Warn("mshv: a GSI routed twice; MSHV would refuse the whole table, so the later route is left out",
				"gsi", r.GSI, "address", fmt.Sprintf("%#x_%08x", r.MSI.AddressHi, r.MSI.AddressLo), "data", fmt.Sprintf("%#x", r.MSI.Data))
			continue
		}
		seen[r.GSI] = true
		if r.MSI.AddressHi != 0 {
			unroutable[r.GSI] = r.MSI
			continue
		}
		ents = append(ents, mshvabi.UserIRQEntry{GSI: r.GSI, AddressLo: r.MSI.AddressLo, AddressHi: r.MSI.AddressHi, Data: r.MSI.Data})
	}
	if err := mshvabi.SetMSIRouting(vm.dev, vm.pfd, ents); err != nil {
		return fmt.Errorf("MSHV_SET_MSI_ROUTING (%d routes): %w", len(ents), err)
	}
	m := make(map[uint32]accel.MSI, len(ents))
	for _, e := range ents {
		m[e.GSI] = accel.MSI{AddressLo: e.AddressLo, AddressHi: e.AddressHi, Data: e.Data}
	}
	vm.irqMu.Lock()
	old := vm.unroutable
	vm.msiRoutes, vm.unroutable = m, unroutable
	vm.irqMu.Unlock()
	for gsi, msi := range unroutable {
		if o, ok := old[gsi]; !ok || o != msi {
			slog.Warn("mshv: the guest programmed an MSI that MSHV cannot route; its route is left out of the table and its interrupts are lost",
				"gsi", gsi, "address", fmt.Sprintf("%#x_%08x", msi.AddressHi, msi.AddressLo), "data", fmt.Sprintf("%#x", msi.Data))
		}
	}
	return nil
}

// Unroutable returns the routes the last SetGSIRouting left out of the
// kernel's table (GSI -> MSI the guest programmed).
func (vm *VM) Unroutable() map[uint32]accel.MSI {
	vm.irqMu.Lock()
	defer vm.irqMu.Unlock()
	return maps.Clone(vm.unroutable)
}

// SignalMSI injects an MSI by decoding it the way the kernel decodes MSI
// routes (8-bit destination APIC ID) and asserting the interrupt.
func (vm *VM) SignalMSI(m accel.MSI) error {
	vector := m.Data & 0xff
	typ := (m.Data >> 8) & 7
	level := m.Data>>15&1 != 0
	logical := m.AddressLo>>2&1 != 0
	dest := uint64(m.AddressLo>>12) & 0xff
	if err := vm.hv.assertInterrupt(typ, vector, dest, level, logical); err != nil {
		return fmt.Errorf("signal MSI (address %#x data %#x): %w", m.AddressLo, m.Data, err)
	}
	return nil
}

// msiLevel is data bit 15 of an MSI: level-triggered.
const msiLevel = 1 << 15

// AssignIRQFD binds an eventfd to a GSI's MSI route.
//
// With ResampleFD >= 0 (a level-triggered source) the resample is served
// here, not by the kernel: the kernel gets a plain irqfd, and the vCPU
// that reports the guest's EOI of the route's vector (HVMSG_X64_APIC_EOI,
// which the hypervisor sends for level-triggered interrupts) signals
// ResampleFD, as govmm's IOAPIC does for its pins. The kernel's own
// RESAMPLE cannot be used: upstream mshv_intercept_isr (mshv_synic.c)
// hands the EOI'd vector to mshv_notify_acked_gsi (mshv_eventfd.c), which
// compares it with the irqfd's GSI number, so a resample irqfd fires only
// when the GSI happens to equal the vector; and with the intercept message
// page the kernel always enables, the EOI reaches the VMM as an opaque
// intercept and never that path. The route must exist and be
// level-triggered (data bit 15) when the irqfd is assigned, as the kernel
// requires for RESAMPLE (mshv_irqfd_assign).
func (vm *VM) AssignIRQFD(f accel.IRQFD) error {
	a := mshvabi.UserIRQFD{FD: int32(f.FD), ResampleFD: -1, GSI: f.GSI}
	vm.irqMu.Lock()
	defer vm.irqMu.Unlock()
	if m, ok := vm.unroutable[f.GSI]; ok {
		return fmt.Errorf("assign irqfd %d to GSI %d: the guest programmed the GSI's MSI with address %#x_%08x, which MSHV cannot route (upper address bits set), so the route is not in the table", f.FD, f.GSI, m.AddressHi, m.AddressLo)
	}
	dup := -1
	if f.ResampleFD >= 0 {
		r, ok := vm.msiRoutes[f.GSI]
		if !ok {
			return fmt.Errorf("assign resample irqfd %d to GSI %d: the GSI has no MSI route (set the level-triggered route first): there is no EOI to resample on", f.FD, f.GSI)
		}
		if r.Data&msiLevel == 0 {
			return fmt.Errorf("assign resample irqfd %d to GSI %d: the GSI's MSI route (data %#x) is edge-triggered, not level-triggered: there is no EOI to resample on", f.FD, f.GSI, r.Data)
		}
		d, err := unix.FcntlInt(uintptr(f.ResampleFD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("assign resample irqfd %d to GSI %d: duplicate resample eventfd %d: %w", f.FD, f.GSI, f.ResampleFD, err)
		}
		dup = d
	}
	if err := mshvabi.SetIRQFD(vm.dev, vm.pfd, a); err != nil {
		if dup >= 0 {
			unix.Close(dup)
		}
		hint := ""
		if d, ok := vm.dev.(interface{ LastError(fd int) string }); ok {
			if why := d.LastError(vm.pfd); why != "" {
				hint = " (" + why + ")"
			}
		}
		return fmt.Errorf("MSHV_IRQFD assign fd %d to GSI %d: %w%s", f.FD, f.GSI, err, hint)
	}
	if dup >= 0 {
		vm.resamplers[f.FD] = resampler{gsi: f.GSI, fd: dup}
	}
	vm.mu.Lock()
	vm.irqfds[f.FD] = f
	vm.mu.Unlock()
	return nil
}

// DeassignIRQFD unbinds an irqfd (and stops serving its resample).
func (vm *VM) DeassignIRQFD(f accel.IRQFD) error {
	a := mshvabi.UserIRQFD{FD: int32(f.FD), ResampleFD: -1, GSI: f.GSI, Flags: mshvabi.IRQFDDeassign}
	vm.irqMu.Lock()
	if r, ok := vm.resamplers[f.FD]; ok && r.gsi == f.GSI {
		delete(vm.resamplers, f.FD)
		unix.Close(r.fd)
	}
	vm.irqMu.Unlock()
	if err := mshvabi.SetIRQFD(vm.dev, vm.pfd, a); err != nil {
		return fmt.Errorf("MSHV_IRQFD deassign fd %d from GSI %d: %w", f.FD, f.GSI, err)
	}
	vm.mu.Lock()
	delete(vm.irqfds, f.FD)
	vm.mu.Unlock()
	return nil
}

// resampleEOI signals the resample eventfd of every resample irqfd whose
// GSI's current route is a level-triggered MSI with vector: a vCPU
// reported the guest's EOI of it. As with the IOAPIC, the EOI is matched
// by vector alone; a device sharing the vector only re-triggers if its line
// is still asserted.
func (vm *VM) resampleEOI(vector uint8) {
	var one [8]byte
	one[0] = 1
	vm.irqMu.Lock()
	defer vm.irqMu.Unlock()
	for _, r := range vm.resamplers {
		m, ok := vm.msiRoutes[r.gsi]
		if ok && m.Data&msiLevel != 0 && uint8(m.Data) == vector {
			unix.Write(r.fd, one[:])
		}
	}
}

func ioeventfdArgs(e accel.IOEventFD) (mshvabi.UserIOEventFD, error) {
	if e.PIO {
		return mshvabi.UserIOEventFD{}, fmt.Errorf("ioeventfd on port %#x: %w: MSHV has no port-I/O ioeventfd (use an MMIO doorbell)", e.Addr, accel.ErrNotSupported)
	}
	switch e.Len {
	case 0, 1, 2, 4, 8:
	default:
		return mshvabi.UserIOEventFD{}, fmt.Errorf("ioeventfd at %#x: length %d (want 0, 1, 2, 4 or 8)", e.Addr, e.Len)
	}
	a := mshvabi.UserIOEventFD{Addr: e.Addr, Len: uint32(e.Len), FD: int32(e.FD)}
	if e.DataMatch {
		a.Flags |= mshvabi.IOEventFDDatamatch
		a.Datamatch = e.Data
	}
	return a, nil
}

// AssignIOEventFD registers an MMIO doorbell. Port I/O ioeventfds are
// refused with an error wrapping accel.ErrNotSupported.
func (vm *VM) AssignIOEventFD(e accel.IOEventFD) error {
	a, err := ioeventfdArgs(e)
	if err != nil {
		return err
	}
	if err := mshvabi.SetIOEventFD(vm.dev, vm.pfd, a); err != nil {
		return fmt.Errorf("MSHV_IOEVENTFD assign at %#x len %d: %w", e.Addr, e.Len, err)
	}
	return nil
}

// DeassignIOEventFD removes an MMIO doorbell.
func (vm *VM) DeassignIOEventFD(e accel.IOEventFD) error {
	a, err := ioeventfdArgs(e)
	if err != nil {
		return err
	}
	a.Flags |= mshvabi.IOEventFDDeassign
	if err := mshvabi.SetIOEventFD(vm.dev, vm.pfd, a); err != nil {
		return fmt.Errorf("MSHV_IOEVENTFD deassign at %#x len %d: %w", e.Addr, e.Len, err)
	}
	return nil
}

// EnableDirtyLog turns on GPA page access tracking and clears the dirty
// state of every mapped region, so that DirtyLog reports writes made
// from now on.
func (vm *VM) EnableDirtyLog() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if err := vm.hv.setProperty(mshvabi.PropGPAPageAccessTracking, 1); err != nil {
		return fmt.Errorf("enable dirty tracking: %w", err)
	}
	for _, r := range *vm.regions.Load() {
		if _, err := vm.gpap(r, mshvabi.GPAPAccessOpClear); err != nil {
			return fmt.Errorf("enable dirty tracking: %w", err)
		}
	}
	vm.dirtyOn = true
	return nil
}

// DisableDirtyLog stops tracking. The hypervisor requires every dirty bit
// to be set before tracking can be disabled, so this sets them first.
func (vm *VM) DisableDirtyLog() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for _, r := range *vm.regions.Load() {
		if _, err := vm.gpap(r, mshvabi.GPAPAccessOpSet); err != nil {
			return fmt.Errorf("disable dirty tracking: %w", err)
		}
	}
	if err := vm.hv.setProperty(mshvabi.PropGPAPageAccessTracking, 0); err != nil {
		return fmt.Errorf("disable dirty tracking: %w", err)
	}
	vm.dirtyOn = false
	return nil
}

// gpap reads (and applies op to) the dirty states of region r, in
// batches of 64 Ki pages, and returns the bitmap as words.
func (vm *VM) gpap(r region, op uint8) ([]uint64, error) {
	pages := uint64(len(r.host)) / 4096
	words := make([]uint64, (pages+63)/64)
	bm := make([]byte, mshvabi.GPAPBatchPages/8)
	for done := uint64(0); done < pages; {
		n := min(pages-done, mshvabi.GPAPBatchPages)
		clear(bm)
		if err := mshvabi.GetGPAPAccessBitmap(vm.dev, vm.pfd, mshvabi.GPAPAccessTypeDirty, op, r.gpa/4096+done, n, bm[:(n+7)/8]); err != nil {
			return nil, fmt.Errorf("MSHV_GET_GPAP_ACCESS_BITMAP at GFN %#x (%d pages): %w", r.gpa/4096+done, n, err)
		}
		for i := uint64(0); i < n; i++ {
			if bm[i/8]>>(i%8)&1 != 0 {
				p := done + i
				words[p/64] |= 1 << (p % 64)
			}
		}
		done += n
	}
	return words, nil
}

// DirtyLog returns and clears the dirty bitmap of the region at gpa.
func (vm *VM) DirtyLog(gpa uint64) ([]uint64, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if !vm.dirtyOn {
		return nil, fmt.Errorf("dirty log of region %#x: dirty tracking is not enabled", gpa)
	}
	for _, r := range *vm.regions.Load() {
		if r.gpa == gpa {
			return vm.gpap(r, mshvabi.GPAPAccessOpClear)
		}
	}
	return nil, fmt.Errorf("dirty log: no region starts at %#x", gpa)
}

// Clock is the partition reference time (100 ns units) in nanoseconds.
func (vm *VM) Clock() (uint64, error) {
	v, err := vm.hv.getProperty(mshvabi.PropReferenceTime)
	if err != nil {
		return 0, fmt.Errorf("read guest clock: %w", err)
	}
	return v * 100, nil
}

// SetClock sets the partition reference time.
func (vm *VM) SetClock(ns uint64) error {
	if err := vm.hv.setProperty(mshvabi.PropReferenceTime, ns/100); err != nil {
		return fmt.Errorf("set guest clock: %w", err)
	}
	return nil
}

// Pause freezes partition time (TIME_FREEZE = 1). A partition whose
// vCPUs have not run yet is still frozen from set-up (a snapshot taken
// right after a restore): that freeze becomes the pause, and no second
// freeze is asked for.
func (vm *VM) Pause() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.setupFrozen.Swap(false) {
		vm.paused = true
		return nil
	}
	if err := vm.hv.setProperty(mshvabi.PropTimeFreeze, 1); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	vm.paused = true
	return nil
}

// Resume unfreezes partition time (TIME_FREEZE = 0).
func (vm *VM) Resume() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.setupFrozen.Store(false)
	if err := vm.hv.setProperty(mshvabi.PropTimeFreeze, 0); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	vm.paused = false
	return nil
}

// unfreezeForRun ends the setup freeze on the first Run.
func (vm *VM) unfreezeForRun() error {
	if !vm.setupFrozen.Load() {
		return nil
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if !vm.setupFrozen.Load() {
		return nil
	}
	if err := vm.hv.setProperty(mshvabi.PropTimeFreeze, 0); err != nil {
		return fmt.Errorf("unfreeze partition time: %w", err)
	}
	vm.setupFrozen.Store(false)
	return nil
}

// Close closes the partition fd (the VP fds must be closed first).
func (vm *VM) Close() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.closed {
		return nil
	}
	vm.closed = true
	vm.irqMu.Lock()
	for k, r := range vm.resamplers {
		unix.Close(r.fd)
		delete(vm.resamplers, k)
	}
	vm.irqMu.Unlock()
	return vm.dev.Close(vm.pfd)
}
