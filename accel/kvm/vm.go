package kvm

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/cpu"
)

// Fixed guest-physical addresses KVM needs for its own use on Intel hosts
// (three pages of TSS and one identity-map page), in the MMIO hole below
// the BIOS, as QEMU places them.
const (
	TSSAddr         = 0xfeffd000
	IdentityMapAddr = 0xfeffc000
	// NumIOAPICRoutes is the number of IOAPIC pins reserved in KVM's GSI
	// space by the split irqchip.
	NumIOAPICRoutes = 24
)

// VM is a KVM virtual machine with a split irqchip. It implements accel.VM.
type VM struct {
	acc       *Accelerator
	fd        int
	cfg       accel.VMConfig
	xsaveSize int  // bytes of KVM_GET_XSAVE2 (4096 without XSAVE2)
	xsave2    bool // KVM_GET_XSAVE2 is available
	anyLenIOE bool

	mu       sync.Mutex
	regions  map[uint64]*slot // by GPA
	usedSlot map[uint32]bool
	dirtyAll bool
	paused   bool
	pauseNS  uint64
}

type slot struct {
	id     uint32
	region accel.MemoryRegion
	dirty  bool // KVM_MEM_LOG_DIRTY_PAGES is set
}

var _ accel.VM = (*VM)(nil)

// CreateVM creates a VM: KVM_CREATE_VM, the TSS and identity-map pages, a
// split irqchip with NumIOAPICRoutes IOAPIC routes, the x2APIC API (32-bit
// APIC IDs in MSI routes, no broadcast quirk) when offered, and exits on
// emulation failure (with instruction bytes) when offered. cfg.CPUID is
// given to every vCPU (specialised by cpu.ForVCPU); when it is empty the
// "host" CPU model is used.
func (a *Accelerator) CreateVM(cfg accel.VMConfig) (accel.VM, error) {
	return a.NewVM(cfg)
}

// NewVM is CreateVM returning the concrete type (for mshvsim and tests).
func (a *Accelerator) NewVM(cfg accel.VMConfig) (*VM, error) {
	return a.NewVMWithEOIRoutes(cfg, NumIOAPICRoutes)
}

// MaxEOIRoutes is the largest split-irqchip IOAPIC route count that works:
// KVM_CAP_SPLIT_IRQCHIP accepts up to KVM_MAX_IRQ_ROUTES, but KVM keeps the
// count in a u8 (kvm->arch.nr_reserved_ioapic_pins), so 256 silently
// becomes 0 and no EOI is reported at all.
const MaxEOIRoutes = 255

// NewVMWithEOIRoutes is NewVM with the split irqchip's IOAPIC route count
// set to routes (NumIOAPICRoutes..MaxEOIRoutes). KVM reports the EOI of a
// level-triggered vector (KVM_EXIT_IOAPIC_EOI) only when it finds the
// vector among the level-triggered MSI routes of the GSIs below that
// count; mshvsim, which emulates MSHV's resampling of level-triggered MSI
// routes at any GSI, needs the EOIs of all of them.
func (a *Accelerator) NewVMWithEOIRoutes(cfg accel.VMConfig, routes int) (*VM, error) {
	if routes < NumIOAPICRoutes || routes > MaxEOIRoutes {
		return nil, fmt.Errorf("create VM: %d IOAPIC routes (want %d..%d)", routes, NumIOAPICRoutes, MaxEOIRoutes)
	}
	if cfg.NumVCPUs < 0 {
		return nil, fmt.Errorf("create VM: %d vCPUs", cfg.NumVCPUs)
	}
	if max := int(checkExtension(a.fd, capMaxVCPUs)); max > 0 && cfg.NumVCPUs > max {
		return nil, fmt.Errorf("create VM: %d vCPUs requested, KVM allows at most %d", cfg.NumVCPUs, max)
	}
	// Resolved once here; every vCPU's CPUID is specialised for it.
	topo, err := cpu.ResolveTopology(cfg.Topology, max(cfg.NumVCPUs, 1))
	if err != nil {
		return nil, fmt.Errorf("create VM: %w", err)
	}
	cfg.Topology = topo
	r, err := a.createVM()
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	vm := &VM{acc: a, fd: int(r), cfg: cfg, regions: map[uint64]*slot{}, usedSlot: map[uint32]bool{}}
	fail := func(err error) (*VM, error) {
		unix.Close(vm.fd)
		return nil, err
	}
	if _, err := ioctl(vm.fd, ioctlSetTSSAddr, TSSAddr); err != nil {
		return fail(fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", TSSAddr, err))
	}
	if checkExtension(vm.fd, capSetIdentityMapAddr) != 0 {
		addr := uint64(IdentityMapAddr)
		if _, err := ioctlPtr(vm.fd, ioctlSetIdentityMapAddr, unsafe.Pointer(&addr)); err != nil {
			return fail(fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err))
		}
	}
	if checkExtension(vm.fd, capSplitIRQChip) == 0 {
		return fail(fmt.Errorf("create VM: KVM lacks KVM_CAP_SPLIT_IRQCHIP (needed for the in-kernel LAPIC with a userspace IOAPIC): %w", accel.ErrNotSupported))
	}
	if err := vm.enableCap(capSplitIRQChip, 0, uint64(routes)); err != nil {
		return fail(fmt.Errorf("enable split irqchip with %d IOAPIC routes: %w", routes, err))
	}
	if checkExtension(vm.fd, capX2APICAPI) != 0 {
		if err := vm.enableCap(capX2APICAPI, 0, x2apicAPIUse32BitIDs|x2apicAPIDisableBroadcastQuirk); err != nil {
			return fail(fmt.Errorf("enable KVM_CAP_X2APIC_API: %w", err))
		}
	}
	if cfg.NoPMU {
		// Without this, KVM on AMD keeps virtualizing the four legacy
		// counters, which no CPUID bit announces. KVMs before 5.18 lack
		// the capability; there CPUID alone describes the PMU.
		if checkExtension(vm.fd, capPMUCapability)&pmuCapDisable != 0 {
			if err := vm.enableCap(capPMUCapability, 0, pmuCapDisable); err != nil {
				return fail(fmt.Errorf("disable the vPMU (KVM_CAP_PMU_CAPABILITY): %w", err))
			}
		}
	}
	if checkExtension(vm.fd, capExitOnEmulationFailure) != 0 {
		if err := vm.enableCap(capExitOnEmulationFailure, 0, 1); err != nil {
			return fail(fmt.Errorf("enable KVM_CAP_EXIT_ON_EMULATION_FAILURE: %w", err))
		}
	}
	vm.xsaveSize = int(unsafe.Sizeof(kvmXSave{}))
	if n := int(checkExtension(vm.fd, capXSave2)); n > 0 {
		vm.xsave2 = true
		if n > vm.xsaveSize {
			vm.xsaveSize = n
		}
	}
	vm.anyLenIOE = checkExtension(vm.fd, capIOEventFDAnyLength) != 0
	if len(vm.cfg.CPUID) == 0 {
		// No CPU model given: present the host model (KVM's supported
		// CPUID with the dynamic bits cleared), never an empty table.
		sup, err := a.SupportedCPUID()
		if err != nil {
			return fail(fmt.Errorf("create VM: %w", err))
		}
		if vm.cfg.CPUID, err = (cpu.Model{Name: "host"}).Apply(sup); err != nil {
			return fail(fmt.Errorf("create VM: %w", err))
		}
	}
	return vm, nil
}

func (vm *VM) enableCap(c uint32, flags uint32, arg0 uint64) error {
	ec := kvmEnableCap{Cap: c, Flags: flags}
	ec.Args[0] = arg0
	_, err := ioctlPtr(vm.fd, ioctlEnableCap, unsafe.Pointer(&ec))
	return err
}

// Close closes the VM fd. vCPUs keep the VM alive in the kernel until each
// of them is closed as well.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	return err
}

// MapMemory registers r with KVM in a free slot.
func (vm *VM) MapMemory(r accel.MemoryRegion) error {
	size := r.Size()
	if size == 0 || size%4096 != 0 || r.GPA%4096 != 0 {
		return fmt.Errorf("map guest memory at %#x (+%#x): GPA and size must be non-zero multiples of 4 KiB", r.GPA, size)
	}
	host := uintptr(unsafe.Pointer(&r.Host[0]))
	if host%4096 != 0 {
		return fmt.Errorf("map guest memory at %#x: host memory %#x is not page aligned", r.GPA, host)
	}
	if r.ReadOnly && checkExtension(vm.fd, capReadonlyMem) == 0 {
		return fmt.Errorf("map read-only guest memory at %#x: KVM_CAP_READONLY_MEM: %w", r.GPA, accel.ErrNotSupported)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for _, s := range vm.regions {
		o := s.region
		if r.GPA < o.GPA+o.Size() && o.GPA < r.GPA+size {
			return fmt.Errorf("map guest memory at %#x (+%#x): overlaps the region at %#x (+%#x)", r.GPA, size, o.GPA, o.Size())
		}
		oh := uintptr(unsafe.Pointer(&o.Host[0]))
		if host < oh+uintptr(o.Size()) && oh < host+uintptr(size) {
			return fmt.Errorf("map guest memory at %#x: host memory overlaps the region at %#x", r.GPA, o.GPA)
		}
	}
	var id uint32
	for vm.usedSlot[id] {
		id++
	}
	s := &slot{id: id, region: r, dirty: r.DirtyLog || vm.dirtyAll}
	if err := vm.setSlot(s, size); err != nil {
		return fmt.Errorf("map guest memory at %#x (+%#x) in slot %d: %w", r.GPA, size, id, err)
	}
	vm.regions[r.GPA] = s
	vm.usedSlot[id] = true
	return nil
}

func (vm *VM) setSlot(s *slot, size uint64) error {
	m := kvmUserspaceMemoryRegion{
		Slot:          s.id,
		GuestPhysAddr: s.region.GPA,
		MemorySize:    size,
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&s.region.Host[0]))),
	}
	if s.region.ReadOnly {
		m.Flags |= memReadonly
	}
	if s.dirty {
		m.Flags |= memLogDirtyPages
	}
	_, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, unsafe.Pointer(&m))
	runtime.KeepAlive(s)
	if err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	return nil
}

// UnmapMemory removes the region starting at gpa.
func (vm *VM) UnmapMemory(gpa uint64) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	s, ok := vm.regions[gpa]
	if !ok {
		return fmt.Errorf("unmap guest memory at %#x: no region starts there", gpa)
	}
	if err := vm.setSlot(s, 0); err != nil {
		return fmt.Errorf("unmap guest memory at %#x (slot %d): %w", gpa, s.id, err)
	}
	delete(vm.regions, gpa)
	delete(vm.usedSlot, s.id)
	return nil
}

// EnableDirtyLog sets KVM_MEM_LOG_DIRTY_PAGES on every region (and on
// regions mapped later) by re-registering their slots.
func (vm *VM) EnableDirtyLog() error { return vm.setDirtyAll(true) }

// DisableDirtyLog clears KVM_MEM_LOG_DIRTY_PAGES on every region that was
// not mapped with DirtyLog set.
func (vm *VM) DisableDirtyLog() error { return vm.setDirtyAll(false) }

func (vm *VM) setDirtyAll(on bool) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.dirtyAll = on
	for _, gpa := range vm.sortedGPAs() {
		s := vm.regions[gpa]
		want := on || s.region.DirtyLog
		if want == s.dirty {
			continue
		}
		s.dirty = want
		if err := vm.setSlot(s, s.region.Size()); err != nil {
			s.dirty = !want
			return fmt.Errorf("set dirty logging %v on region %#x: %w", want, gpa, err)
		}
	}
	return nil
}

func (vm *VM) sortedGPAs() []uint64 {
	gpas := make([]uint64, 0, len(vm.regions))
	for g := range vm.regions {
		gpas = append(gpas, g)
	}
	sort.Slice(gpas, func(i, j int) bool { return gpas[i] < gpas[j] })
	return gpas
}

// DirtyLog returns and clears the dirty bitmap of the region at gpa.
func (vm *VM) DirtyLog(gpa uint64) ([]uint64, error) {
	vm.mu.Lock()
	s, ok := vm.regions[gpa]
	dirty := ok && s.dirty
	vm.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("dirty log of %#x: no region starts there", gpa)
	}
	if !dirty {
		return nil, fmt.Errorf("dirty log of region %#x: dirty logging is not enabled on it", gpa)
	}
	pages := s.region.Size() / 4096
	bm := make([]uint64, (pages+63)/64)
	dl := kvmDirtyLog{Slot: s.id, Bitmap: uint64(uintptr(unsafe.Pointer(&bm[0])))}
	_, err := ioctlPtr(vm.fd, ioctlGetDirtyLog, unsafe.Pointer(&dl))
	runtime.KeepAlive(bm)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_DIRTY_LOG of region %#x (slot %d): %w", gpa, s.id, err)
	}
	return bm, nil
}

// SetGSIRouting replaces KVM's GSI routing table. Irqchip routes need an
// in-kernel IOAPIC/PIC, which a split irqchip does not have: KVM rejects
// them (EINVAL) on govmm's VMs.
func (vm *VM) SetGSIRouting(routes []accel.Route) error {
	hdr := int(unsafe.Sizeof(kvmIRQRoutingHeader{}))
	esz := int(unsafe.Sizeof(kvmIRQRoutingEntry{}))
	buf := make([]uint64, (hdr+len(routes)*esz+7)/8)
	base := unsafe.Pointer(&buf[0])
	(*kvmIRQRoutingHeader)(base).Nr = uint32(len(routes))
	ents := unsafe.Slice((*kvmIRQRoutingEntry)(unsafe.Add(base, hdr)), len(routes))
	for i, r := range routes {
		e := &ents[i]
		e.GSI = r.GSI
		switch r.Kind {
		case accel.RouteMSI:
			e.Type = irqRoutingMSI
			e.U[0], e.U[1], e.U[2] = r.MSI.AddressLo, r.MSI.AddressHi, r.MSI.Data
		case accel.RouteIrqchip:
			e.Type = irqRoutingIRQChip
			e.U[0], e.U[1] = r.Chip, r.Pin
		default:
			return fmt.Errorf("set GSI routing: route %d (GSI %d) has unknown kind %d", i, r.GSI, r.Kind)
		}
	}
	_, err := ioctlPtr(vm.fd, ioctlSetGSIRouting, base)
	runtime.KeepAlive(buf)
	if err != nil {
		return fmt.Errorf("KVM_SET_GSI_ROUTING (%d routes): %w", len(routes), err)
	}
	return nil
}

// SignalMSI injects one MSI. An MSI the guest's LAPICs block (e.g. no
// destination) is not an error.
func (vm *VM) SignalMSI(msi accel.MSI) error {
	m := kvmMSI{AddressLo: msi.AddressLo, AddressHi: msi.AddressHi, Data: msi.Data}
	if _, err := ioctlPtr(vm.fd, ioctlSignalMSI, unsafe.Pointer(&m)); err != nil {
		return fmt.Errorf("KVM_SIGNAL_MSI addr %#x:%#x data %#x: %w", msi.AddressHi, msi.AddressLo, msi.Data, err)
	}
	return nil
}

// AssignIRQFD binds f.FD to f.GSI. Resampling (f.ResampleFD >= 0) is not
// supported: KVM implements it only with its in-kernel IOAPIC, and govmm's
// split irqchip keeps the IOAPIC in userspace. Level-triggered sources take
// a resample irqfd on an IOAPIC pin (GSI 0-23) instead, which govmm's
// routing table serves in userspace (irq/routes); level-triggered MSIs
// cannot be resampled on KVM.
func (vm *VM) AssignIRQFD(f accel.IRQFD) error {
	return vm.irqfd(f, false)
}

// DeassignIRQFD removes a binding made by AssignIRQFD.
func (vm *VM) DeassignIRQFD(f accel.IRQFD) error {
	return vm.irqfd(f, true)
}

func (vm *VM) irqfd(f accel.IRQFD, deassign bool) error {
	if f.FD < 0 {
		return fmt.Errorf("irqfd for GSI %d: invalid fd %d", f.GSI, f.FD)
	}
	if !deassign && f.ResampleFD >= 0 {
		// KVM resamples only through its own IOAPIC (irqchip_kernel).
		return fmt.Errorf("irqfd fd %d GSI %d with resample fd %d: KVM resamples only with its in-kernel IOAPIC and govmm runs a split irqchip, so a level-triggered MSI cannot be resampled on KVM; give the level-triggered source a resample irqfd on an IOAPIC pin (GSI 0-%d), which govmm's IOAPIC serves in userspace: %w",
			f.FD, f.GSI, f.ResampleFD, NumIOAPICRoutes-1, accel.ErrNotSupported)
	}
	k := kvmIRQFD{FD: uint32(f.FD), GSI: f.GSI}
	if deassign {
		k.Flags |= irqfdFlagDeassign
	} else if f.ResampleFD >= 0 {
		k.Flags |= irqfdFlagResample
		k.ResampleFD = uint32(f.ResampleFD)
	}
	if _, err := ioctlPtr(vm.fd, ioctlIRQFD, unsafe.Pointer(&k)); err != nil {
		op := "assign"
		if deassign {
			op = "deassign"
		}
		return fmt.Errorf("KVM_IRQFD %s fd %d GSI %d: %w", op, f.FD, f.GSI, err)
	}
	return nil
}

// AssignIOEventFD registers an ioeventfd. Len 0 (any access length) needs
// KVM_CAP_IOEVENTFD_ANY_LENGTH and cannot be combined with DataMatch.
func (vm *VM) AssignIOEventFD(e accel.IOEventFD) error {
	return vm.ioeventfd(e, false)
}

// DeassignIOEventFD removes an ioeventfd registered with the same fields.
func (vm *VM) DeassignIOEventFD(e accel.IOEventFD) error {
	return vm.ioeventfd(e, true)
}

func (vm *VM) ioeventfd(e accel.IOEventFD, deassign bool) error {
	kind := "MMIO"
	if e.PIO {
		kind = "port"
	}
	switch e.Len {
	case 1, 2, 4, 8:
	case 0:
		if e.DataMatch {
			return fmt.Errorf("ioeventfd at %s %#x: length 0 (any length) cannot match data", kind, e.Addr)
		}
		if !vm.anyLenIOE {
			return fmt.Errorf("ioeventfd at %s %#x: length 0 needs KVM_CAP_IOEVENTFD_ANY_LENGTH: %w", kind, e.Addr, accel.ErrNotSupported)
		}
	default:
		return fmt.Errorf("ioeventfd at %s %#x: length %d (want 0, 1, 2, 4 or 8)", kind, e.Addr, e.Len)
	}
	if e.PIO && e.Addr > 0xffff {
		return fmt.Errorf("ioeventfd at port %#x: not a port number", e.Addr)
	}
	if e.FD < 0 {
		return fmt.Errorf("ioeventfd at %s %#x: invalid fd %d", kind, e.Addr, e.FD)
	}
	k := kvmIOEventFD{Addr: e.Addr, Len: uint32(e.Len), FD: int32(e.FD)}
	if e.PIO {
		k.Flags |= ioeventfdFlagPIO
	}
	if e.DataMatch {
		k.Flags |= ioeventfdFlagDatamatch
		k.Datamatch = e.Data
	}
	if deassign {
		k.Flags |= ioeventfdFlagDeassign
	}
	if _, err := ioctlPtr(vm.fd, ioctlIOEventFD, unsafe.Pointer(&k)); err != nil {
		op := "assign"
		if deassign {
			op = "deassign"
		}
		return fmt.Errorf("KVM_IOEVENTFD %s at %s %#x len %d: %w", op, kind, e.Addr, e.Len, err)
	}
	return nil
}

// Clock returns the kvmclock value in nanoseconds.
func (vm *VM) Clock() (uint64, error) {
	var c kvmClockData
	if _, err := ioctlPtr(vm.fd, ioctlGetClock, unsafe.Pointer(&c)); err != nil {
		return 0, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c.Clock, nil
}

// SetClock sets the kvmclock. While paused, it also becomes the value
// Resume restores.
func (vm *VM) SetClock(ns uint64) error {
	vm.mu.Lock()
	if vm.paused {
		vm.pauseNS = ns
	}
	vm.mu.Unlock()
	return vm.setClock(ns)
}

func (vm *VM) setClock(ns uint64) error {
	c := kvmClockData{Clock: ns}
	if _, err := ioctlPtr(vm.fd, ioctlSetClock, unsafe.Pointer(&c)); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK %d: %w", ns, err)
	}
	return nil
}

// Pause records the kvmclock; Resume sets it back, so guest kvmclock time
// does not advance while the vCPUs are stopped (as QEMU does). KVM has no
// other notion of a paused VM: stopping the vCPUs is the caller's job.
func (vm *VM) Pause() error {
	ns, err := vm.Clock()
	if err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.paused {
		return errors.New("pause: VM is already paused")
	}
	vm.paused, vm.pauseNS = true, ns
	return nil
}

// Resume restores the clock Pause recorded (or SetClock set meanwhile).
func (vm *VM) Resume() error {
	vm.mu.Lock()
	if !vm.paused {
		vm.mu.Unlock()
		return nil
	}
	ns := vm.pauseNS
	vm.paused = false
	vm.mu.Unlock()
	if err := vm.setClock(ns); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// createVM issues KVM_CREATE_VM, again while it fails with EINTR: the
// kernel gives up creating a VM when a signal is pending (x86's MMU set-up
// checks), and the Go runtime signals its threads all the time (SIGURG
// preemption). QEMU retries the same way.
func (a *Accelerator) createVM() (uintptr, error) {
	for {
		r, err := ioctl(a.fd, ioctlCreateVM, 0)
		if !errors.Is(err, unix.EINTR) {
			return r, err
		}
	}
}
