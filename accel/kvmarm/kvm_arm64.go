//go:build linux && arm64

package kvmarm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// KickSignal is the real-time signal Kick sends to a vCPU thread to make
// KVM_RUN return EINTR (the same one package accel/kvm uses on x86: the Go
// runtime handles every real-time signal and ignores the ones os/signal was
// not asked for).
const KickSignal = syscall.Signal(40)

// ErrNotSupported is wrapped by errors for what this host's KVM lacks.
var ErrNotSupported = accel.ErrNotSupported

func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// KVM is an open /dev/kvm.
type KVM struct {
	fd       int
	mmapSize int
}

// Open opens the KVM device at path (normally /dev/kvm) and checks the API
// version and the capabilities this package relies on.
func Open(path string) (*KVM, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	k := &KVM{fd: fd}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != apiVersion {
		k.Close()
		return nil, fmt.Errorf("KVM API version %d, want %d", v, apiVersion)
	}
	for _, c := range []struct {
		cap  uintptr
		name string
	}{{capUserMemory, "KVM_CAP_USER_MEMORY"}, {capOneReg, "KVM_CAP_ONE_REG"}, {capARMPSCI02, "KVM_CAP_ARM_PSCI_0_2"}, {capDeviceCtrl, "KVM_CAP_DEVICE_CTRL"}} {
		if k.Extension(c.cap) <= 0 {
			k.Close()
			return nil, fmt.Errorf("%s: %s missing: %w", path, c.name, ErrNotSupported)
		}
	}
	n, err := ioctl(fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	k.mmapSize = int(n)
	return k, nil
}

// Extension is KVM_CHECK_EXTENSION on /dev/kvm (0 when absent).
func (k *KVM) Extension(c uintptr) int {
	r, err := ioctl(k.fd, ioctlCheckExtension, c)
	if err != nil {
		return 0
	}
	return int(r)
}

// MaxVCPUs is the number of vCPUs a VM may have on this host.
func (k *KVM) MaxVCPUs() int {
	if n := k.Extension(capMaxVCPUs); n > 0 {
		return n
	}
	return k.Extension(capNrVCPUs)
}

// Close closes /dev/kvm.
func (k *KVM) Close() error { return unix.Close(k.fd) }

// Caps reports the API version, the vCPU limits, capTable's values and
// whether devTable's devices can be created, asked of a scratch VM that
// has a vGICv3 and an ITS as govmm's machine does (KVM answers MSI_DEVID
// for a VM once it has an ITS), and the host's preferred vCPU target.
func (k *KVM) Caps() (accel.Caps, error) {
	c := accel.Caps{
		Accel:      "kvm",
		APIVersion: apiVersion,
		MaxVCPUs:   k.MaxVCPUs(),
		Info: map[string]string{
			"recommended_vcpus": strconv.Itoa(k.Extension(capNrVCPUs)),
			"vcpu_mmap_size":    strconv.Itoa(k.mmapSize),
		},
	}
	fd, err := ioctl(k.fd, ioctlCreateVM, 0)
	if err != nil {
		return c, fmt.Errorf("scratch VM: KVM_CREATE_VM: %w", err)
	}
	vmfd := int(fd)
	defer unix.Close(vmfd)
	var init vcpuInit
	if _, err := ioctlPtr(vmfd, ioctlARMPreferredTarget, unsafe.Pointer(&init)); err != nil {
		return c, fmt.Errorf("scratch VM: KVM_ARM_PREFERRED_TARGET: %w", err)
	}
	c.Info["preferred_target"] = targetName(init.Target)
	var devs []accel.Capability
	var devErrs []string
	for _, d := range devTable {
		cd := createDevice{Type: uint32(d.num)}
		v := int64(0)
		if _, err := ioctlPtr(vmfd, ioctlCreateDevice, unsafe.Pointer(&cd)); err == nil {
			defer unix.Close(int(cd.FD))
			v = 1
		} else {
			devErrs = append(devErrs, fmt.Sprintf("%s: %v", d.name, err))
		}
		devs = append(devs, accel.Capability{Name: d.name, Value: v, Used: d.need != capListed})
	}
	for _, ce := range capTable {
		v, err := ioctl(vmfd, ioctlCheckExtension, ce.num)
		if err != nil {
			v = 0
		}
		c.Features = append(c.Features, accel.Capability{Name: ce.name, Value: int64(v), Used: ce.need != capListed})
	}
	c.Features = append(c.Features, devs...)
	ipa := defaultIPABits
	for _, f := range c.Features {
		if f.Name == "ARM_VM_IPA_SIZE" && f.Value > 0 {
			ipa = int(f.Value)
		}
	}
	c.Info["max_ipa_bits"] = strconv.Itoa(ipa)
	required, optional, missing := capsVerdict(c.Features)
	c.Info["required"] = strings.Join(required, " ")
	c.Info["optional"] = strings.Join(optional, " ")
	if len(missing) > 0 {
		c.Info["missing_required"] = strings.Join(missing, " ")
	}
	if len(devErrs) > 0 {
		c.Info["device_errors"] = strings.Join(devErrs, "; ")
	}
	return c, nil
}

// MissingRequired names the capabilities and devices in c that govmm's
// arm64 machine needs and the host lacks.
func MissingRequired(c accel.Caps) []string {
	_, _, missing := capsVerdict(c.Features)
	return missing
}

// VM is one KVM VM on arm64.
type VM struct {
	kvm    *KVM
	fd     int
	gicFD  int
	itsFD  int
	target uint32
	vcpus  []*VCPU
	// resample is KVM_CAP_IRQFD_RESAMPLE, asked when the VM is created:
	// an INTx line's resample irqfd is assigned later, by the device
	// thread that first raises it, whose seccomp filter allows KVM_IRQFD
	// and no query of /dev/kvm.
	resample bool

	// slots are the mapped memory regions, slot i at index i, and
	// whether KVM logs writes to them (EnableDirtyLog).
	memMu sync.Mutex
	slots []*slot

	// devIDs are the ITS device IDs of the GSIs whose MSI routes carry
	// one (SetMSIDevID).
	devMu  sync.Mutex
	devIDs map[uint32]uint32
	// chipGSIs are the GSIs with an irqchip (SPI) route in the table
	// KVM has (under devMu).
	chipGSIs map[uint32]bool
}

// CreateVM creates a VM with the default (40-bit) IPA space, and turns on
// KVM_CAP_ARM_NISV_TO_USER where the host has it so that an MMIO access
// KVM cannot decode comes back as an exit naming its address and syndrome.
func (k *KVM) CreateVM() (*VM, error) {
	fd, err := ioctl(k.fd, ioctlCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	vm := &VM{kvm: k, fd: int(fd), gicFD: -1, itsFD: -1, devIDs: map[uint32]uint32{},
		resample: k.Extension(capIRQFDResample) > 0}
	var init vcpuInit
	if _, err := ioctlPtr(vm.fd, ioctlARMPreferredTarget, unsafe.Pointer(&init)); err != nil {
		vm.Close()
		return nil, fmt.Errorf("KVM_ARM_PREFERRED_TARGET: %w", err)
	}
	vm.target = init.Target
	if k.Extension(capARMNISVToUser) > 0 {
		c := enableCap{Cap: capARMNISVToUser}
		if _, err := ioctlPtr(vm.fd, ioctlEnableCap, unsafe.Pointer(&c)); err != nil {
			vm.Close()
			return nil, fmt.Errorf("enable KVM_CAP_ARM_NISV_TO_USER: %w", err)
		}
	}
	return vm, nil
}

// Target is the vCPU target KVM prefers on this host (KVM_ARM_TARGET_*).
func (vm *VM) Target() uint32 { return vm.target }

// slot is one KVM memory slot.
type slot struct {
	id     uint32
	region accel.MemoryRegion
	dirty  bool // KVM_MEM_LOG_DIRTY_PAGES is set
}

// MapMemory maps guest RAM (with KVM_MEM_LOG_DIRTY_PAGES when r.DirtyLog
// asks for it).
func (vm *VM) MapMemory(r accel.MemoryRegion) error {
	if len(r.Host) == 0 {
		return errors.New("map memory: empty region")
	}
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	s := &slot{id: uint32(len(vm.slots)), region: r, dirty: r.DirtyLog}
	if err := vm.setSlot(s); err != nil {
		return err
	}
	vm.slots = append(vm.slots, s)
	return nil
}

// setSlot registers s with KVM (again, when its flags changed).
func (vm *VM) setSlot(s *slot) error {
	r := s.region
	var flags uint32
	if r.ReadOnly {
		flags |= memReadonly
	}
	if s.dirty {
		flags |= memLogDirtyPages
	}
	m := memoryRegion{Slot: s.id, Flags: flags, GuestPhysAddr: r.GPA, MemorySize: r.Size(),
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&r.Host[0])))}
	if _, err := ioctlPtr(vm.fd, ioctlSetUserMemoryRegion, unsafe.Pointer(&m)); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION at %#x (%d bytes, slot %d, flags %#x): %w", r.GPA, r.Size(), s.id, flags, err)
	}
	return nil
}

// EnableDirtyLog sets KVM_MEM_LOG_DIRTY_PAGES on every writable region
// (live migration): KVM write-protects the slot's stage-2 mappings and
// logs the pages the vCPUs write, and the vGIC's own writes to guest RAM
// (ITS tables, LPI pending bits) go through the same log.
func (vm *VM) EnableDirtyLog() error { return vm.setDirtyAll(true) }

// DisableDirtyLog clears KVM_MEM_LOG_DIRTY_PAGES on every region that was
// not mapped with DirtyLog set.
func (vm *VM) DisableDirtyLog() error { return vm.setDirtyAll(false) }

func (vm *VM) setDirtyAll(on bool) error {
	vm.memMu.Lock()
	defer vm.memMu.Unlock()
	for _, s := range vm.slots {
		want := (on && !s.region.ReadOnly) || s.region.DirtyLog
		if want == s.dirty {
			continue
		}
		s.dirty = want
		if err := vm.setSlot(s); err != nil {
			s.dirty = !want
			return fmt.Errorf("set dirty logging %v on region %#x: %w", want, s.region.GPA, err)
		}
	}
	return nil
}

// DirtyLog returns and clears the dirty bitmap (KVM_GET_DIRTY_LOG) of the
// region that starts at gpa: bit p%64 of word p/64 for its page p.
func (vm *VM) DirtyLog(gpa uint64) ([]uint64, error) {
	vm.memMu.Lock()
	var s *slot
	for _, x := range vm.slots {
		if x.region.GPA == gpa {
			s = x
		}
	}
	dirty := s != nil && s.dirty
	vm.memMu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("dirty log of %#x: no region starts there", gpa)
	}
	if !dirty {
		return nil, fmt.Errorf("dirty log of region %#x: dirty logging is not enabled on it", gpa)
	}
	pages := s.region.Size() / 4096
	bm := make([]uint64, (pages+63)/64)
	dl := dirtyLog{Slot: s.id, Bitmap: uint64(uintptr(unsafe.Pointer(&bm[0])))}
	_, err := ioctlPtr(vm.fd, ioctlGetDirtyLog, unsafe.Pointer(&dl))
	runtime.KeepAlive(bm)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_DIRTY_LOG of region %#x (slot %d): %w", gpa, s.id, err)
	}
	return bm, nil
}

func (vm *VM) setGICAttr(group uint32, attr uint64, val unsafe.Pointer) error {
	return setAttr(vm.gicFD, group, attr, val)
}

// setAttr is KVM_SET_DEVICE_ATTR on a device fd.
func setAttr(fd int, group uint32, attr uint64, val unsafe.Pointer) error {
	a := deviceAttr{Group: group, Attr: attr, Addr: uint64(uintptr(val))}
	_, err := ioctlPtr(fd, ioctlSetDeviceAttr, unsafe.Pointer(&a))
	return err
}

// CreateGICv3 creates the in-kernel vGICv3 with its distributor at dist and
// the redistributors of all vCPUs from redist (128 KiB each), handling
// nrIRQs interrupt IDs (SGIs and PPIs included; a multiple of 32).
func (vm *VM) CreateGICv3(dist, redist uint64, nrIRQs uint32) error {
	cd := createDevice{Type: devTypeVGICv3}
	if _, err := ioctlPtr(vm.fd, ioctlCreateDevice, unsafe.Pointer(&cd)); err != nil {
		return fmt.Errorf("KVM_CREATE_DEVICE vGICv3: %w (the host's GIC cannot host a virtual GICv3)", err)
	}
	vm.gicFD = int(cd.FD)
	if err := vm.setGICAttr(vgicGroupAddr, vgicV3AddrDist, unsafe.Pointer(&dist)); err != nil {
		return fmt.Errorf("vGICv3 distributor at %#x: %w", dist, err)
	}
	if err := vm.setGICAttr(vgicGroupAddr, vgicV3AddrRedist, unsafe.Pointer(&redist)); err != nil {
		return fmt.Errorf("vGICv3 redistributors at %#x: %w", redist, err)
	}
	if err := vm.setGICAttr(vgicGroupNrIRQs, 0, unsafe.Pointer(&nrIRQs)); err != nil {
		return fmt.Errorf("vGICv3 with %d interrupts: %w", nrIRQs, err)
	}
	return nil
}

// InitGIC finishes the vGIC once every vCPU exists (KVM sizes the
// redistributors by the vCPUs present).
func (vm *VM) InitGIC() error {
	if vm.gicFD < 0 {
		return errors.New("vGIC init: no vGIC created")
	}
	if err := vm.setGICAttr(vgicGroupCtrl, vgicCtrlInit, nil); err != nil {
		return fmt.Errorf("vGICv3 init: %w", err)
	}
	return nil
}

// CreateITS adds a GICv3 ITS to the vGIC with its 128 KiB frame at base
// (64 KiB aligned), so that MSIs reach the guest as LPIs. Call it after
// CreateGICv3 and before InitGIC. The ITS keeps its device, collection
// and interrupt translation tables in guest memory, where the guest's
// driver puts them (GITS_BASER<n>, MAPD); from then on every MSI route
// must name the device it comes from (SetMSIDevID).
func (vm *VM) CreateITS(base uint64) error {
	if vm.gicFD < 0 {
		return errors.New("ITS: no vGICv3 created")
	}
	if vm.kvm.Extension(capIRQRouting) <= 0 || vm.kvm.Extension(capIRQFD) <= 0 || vm.kvm.Extension(capIOEventFD) <= 0 {
		return fmt.Errorf("ITS at %#x: KVM lacks GSI routing, irqfd or ioeventfd: %w", base, ErrNotSupported)
	}
	cd := createDevice{Type: devTypeVGICITS}
	if _, err := ioctlPtr(vm.fd, ioctlCreateDevice, unsafe.Pointer(&cd)); err != nil {
		return fmt.Errorf("KVM_CREATE_DEVICE vGIC ITS: %w", err)
	}
	vm.itsFD = int(cd.FD)
	if err := setAttr(vm.itsFD, vgicGroupAddr, vgicITSAddrType, unsafe.Pointer(&base)); err != nil {
		return fmt.Errorf("vGIC ITS at %#x: %w", base, err)
	}
	if err := setAttr(vm.itsFD, vgicGroupCtrl, vgicCtrlInit, nil); err != nil {
		return fmt.Errorf("vGIC ITS init: %w", err)
	}
	return nil
}

// SetMSIDevID makes the MSI route of gsi carry devID (an ITS device ID,
// the PCI requester ID of the function that owns the GSI) from the next
// SetGSIRouting on. KVM's ITS translates an MSI by the device ID and the
// event ID (the MSI's data) and cannot deliver an MSI that has none.
func (vm *VM) SetMSIDevID(gsi, devID uint32) {
	vm.devMu.Lock()
	vm.devIDs[gsi] = devID
	vm.devMu.Unlock()
}

// SetGSIRouting replaces KVM's GSI routing table (KVM_SET_GSI_ROUTING).
// MSI routes go to the ITS; a route whose GSI has a device ID
// (SetMSIDevID) carries it with KVM_MSI_VALID_DEVID. Irqchip routes
// (chip 0, pin p) drive the SPI with INTID 32+p, as KVM's default
// routing does for GSI p (vgic-irqfd.c): those are the level lines
// resample irqfds serve (a PCI function's INTx). The table replaces
// KVM's default one whole, so an SPI without a route here can still be
// driven by KVM_IRQ_LINE (SetSPI) but not by an irqfd.
func (vm *VM) SetGSIRouting(routes []accel.Route) error {
	buf := make([]uint64, (sizeofIRQRouting+len(routes)*sizeofIRQRoutingEntry)/8)
	base := unsafe.Pointer(&buf[0])
	(*irqRoutingHeader)(base).Nr = uint32(len(routes))
	ents := unsafe.Slice((*irqRoutingEntry)(unsafe.Add(base, sizeofIRQRouting)), len(routes))
	chips := map[uint32]bool{}
	vm.devMu.Lock()
	for i, r := range routes {
		e := &ents[i]
		switch r.Kind {
		case accel.RouteMSI:
			e.GSI, e.Type = r.GSI, irqRoutingMSI
			e.AddressLo, e.AddressHi, e.Data = r.MSI.AddressLo, r.MSI.AddressHi, r.MSI.Data
			if id, ok := vm.devIDs[r.GSI]; ok {
				e.Flags, e.DevID = msiValidDevID, id
			}
		case accel.RouteIrqchip:
			if r.Chip != 0 || r.Pin >= irqchipNumPins {
				vm.devMu.Unlock()
				return fmt.Errorf("set GSI routing: route %d (GSI %d) is irqchip %d pin %d: the vGIC is irqchip 0 with SPI pins 0-%d", i, r.GSI, r.Chip, r.Pin, irqchipNumPins-1)
			}
			c := (*irqRoutingIrqchip)(unsafe.Pointer(e))
			c.GSI, c.Type, c.Irqchip, c.Pin = r.GSI, irqRoutingIrqchipType, r.Chip, r.Pin
			chips[r.GSI] = true
		default:
			vm.devMu.Unlock()
			return fmt.Errorf("set GSI routing: route %d (GSI %d) has kind %d, neither MSI nor irqchip", i, r.GSI, r.Kind)
		}
	}
	vm.devMu.Unlock()
	_, err := ioctlPtr(vm.fd, ioctlSetGSIRouting, base)
	runtime.KeepAlive(buf)
	if err != nil {
		return fmt.Errorf("KVM_SET_GSI_ROUTING (%d routes): %w", len(routes), err)
	}
	vm.devMu.Lock()
	vm.chipGSIs = chips
	vm.devMu.Unlock()
	return nil
}

// AssignIRQFD binds f.FD to f.GSI: a write to the eventfd injects the
// GSI's route without a VMM exit (an MSI through the ITS, or an SPI). A
// resample irqfd (f.ResampleFD >= 0) is a level line: it must be on an
// irqchip route (an SPI; MSIs through an ITS are edges, with nothing to
// resample), and KVM must resample (KVM_CAP_IRQFD_RESAMPLE). KVM then
// raises the SPI on a signal, and when the guest EOIs it lowers the SPI
// and signals ResampleFD.
func (vm *VM) AssignIRQFD(f accel.IRQFD) error {
	if f.ResampleFD >= 0 {
		vm.devMu.Lock()
		chip := vm.chipGSIs[f.GSI]
		vm.devMu.Unlock()
		if !chip {
			return fmt.Errorf("irqfd fd %d GSI %d with resample fd %d: the GSI is not routed to an SPI (only SPIs are level lines on arm64; MSIs through the ITS are edges): %w", f.FD, f.GSI, f.ResampleFD, ErrNotSupported)
		}
		if !vm.resample {
			return fmt.Errorf("irqfd fd %d GSI %d with resample fd %d: this host's KVM does not resample irqfds (KVM_CAP_IRQFD_RESAMPLE): %w", f.FD, f.GSI, f.ResampleFD, ErrNotSupported)
		}
	}
	return vm.irqfd(f, false)
}

// DeassignIRQFD removes a binding made by AssignIRQFD.
func (vm *VM) DeassignIRQFD(f accel.IRQFD) error { return vm.irqfd(f, true) }

func (vm *VM) irqfd(f accel.IRQFD, deassign bool) error {
	if f.FD < 0 {
		return fmt.Errorf("irqfd for GSI %d: invalid fd %d", f.GSI, f.FD)
	}
	k := irqfd{FD: uint32(f.FD), GSI: f.GSI}
	op := "assign"
	if deassign {
		k.Flags, op = irqfdFlagDeassign, "deassign"
	} else if f.ResampleFD >= 0 {
		k.Flags, k.ResampleFD = irqfdFlagResample, uint32(f.ResampleFD)
	}
	if _, err := ioctlPtr(vm.fd, ioctlIRQFD, unsafe.Pointer(&k)); err != nil {
		return fmt.Errorf("KVM_IRQFD %s fd %d GSI %d: %w", op, f.FD, f.GSI, err)
	}
	return nil
}

// AssignIOEventFD registers an MMIO ioeventfd (arm64 has no port I/O).
func (vm *VM) AssignIOEventFD(e accel.IOEventFD) error { return vm.ioeventfd(e, false) }

// DeassignIOEventFD removes an ioeventfd registered with the same fields.
func (vm *VM) DeassignIOEventFD(e accel.IOEventFD) error { return vm.ioeventfd(e, true) }

func (vm *VM) ioeventfd(e accel.IOEventFD, deassign bool) error {
	if e.PIO {
		return fmt.Errorf("ioeventfd at port %#x: arm64 has no port I/O", e.Addr)
	}
	switch e.Len {
	case 1, 2, 4, 8:
	default:
		return fmt.Errorf("ioeventfd at MMIO %#x: length %d (want 1, 2, 4 or 8)", e.Addr, e.Len)
	}
	if e.FD < 0 {
		return fmt.Errorf("ioeventfd at MMIO %#x: invalid fd %d", e.Addr, e.FD)
	}
	k := ioeventfd{Addr: e.Addr, Len: uint32(e.Len), FD: int32(e.FD)}
	if e.DataMatch {
		k.Flags |= ioeventfdFlagDatamatch
		k.Datamatch = e.Data
	}
	op := "assign"
	if deassign {
		k.Flags |= ioeventfdFlagDeassign
		op = "deassign"
	}
	if _, err := ioctlPtr(vm.fd, ioctlIOEventFD, unsafe.Pointer(&k)); err != nil {
		return fmt.Errorf("KVM_IOEVENTFD %s MMIO %#x length %d: %w", op, e.Addr, e.Len, err)
	}
	return nil
}

// SetSPI drives the line of shared peripheral interrupt intid (32 and up)
// of the in-kernel vGIC.
func (vm *VM) SetSPI(intid uint32, level bool) error {
	irq, err := spiLine(intid)
	if err != nil {
		return err
	}
	l := irqLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	if _, err := ioctlPtr(vm.fd, ioctlIRQLine, unsafe.Pointer(&l)); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE SPI %d: %w", intid, err)
	}
	return nil
}

// Close closes the VM's vCPUs, its vGIC and the VM.
func (vm *VM) Close() error {
	for _, v := range vm.vcpus {
		v.Close()
	}
	vm.vcpus = nil
	if vm.itsFD >= 0 {
		unix.Close(vm.itsFD)
		vm.itsFD = -1
	}
	if vm.gicFD >= 0 {
		unix.Close(vm.gicFD)
		vm.gicFD = -1
	}
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	return err
}

// VCPU is one arm64 vCPU.
type VCPU struct {
	index  int
	fd     int
	run    []byte
	word0  *uint32 // kvm_run's first word: immediate_exit is byte 1
	tid    atomic.Int32
	kicked atomic.Bool
}

// CreateVCPU creates vCPU index and initialises it for the preferred
// target with PSCI 0.2+ handled in the kernel. A vCPU created powered off
// waits in KVM_RUN until another calls PSCI CPU_ON for it.
func (vm *VM) CreateVCPU(index int, poweredOff bool) (*VCPU, error) {
	fd, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(index))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", index, err)
	}
	v := &VCPU{index: index, fd: int(fd)}
	v.run, err = unix.Mmap(v.fd, 0, vm.kvm.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(v.fd)
		return nil, fmt.Errorf("vCPU %d: mmap kvm_run: %w", index, err)
	}
	v.word0 = (*uint32)(unsafe.Pointer(&v.run[0]))
	init := vcpuInit{Target: vm.target}
	init.Features[0] |= 1 << featPSCI02
	if poweredOff {
		init.Features[0] |= 1 << featPowerOff
	}
	if _, err := ioctlPtr(v.fd, ioctlARMVCPUInit, unsafe.Pointer(&init)); err != nil {
		v.Close()
		return nil, fmt.Errorf("KVM_ARM_VCPU_INIT vCPU %d (target %d, PSCI 0.2): %w", index, vm.target, err)
	}
	vm.vcpus = append(vm.vcpus, v)
	return v, nil
}

// Index is the vCPU's number (0 boots).
func (v *VCPU) Index() int { return v.index }

// Reg reads one register (KVM_GET_ONE_REG; 64-bit ids only).
func (v *VCPU) Reg(id uint64) (uint64, error) {
	var val uint64
	r := oneReg{ID: id, Addr: uint64(uintptr(unsafe.Pointer(&val)))}
	if _, err := ioctlPtr(v.fd, ioctlGetOneReg, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("vCPU %d: KVM_GET_ONE_REG %#x: %w", v.index, id, err)
	}
	return val, nil
}

// SetReg writes one register (KVM_SET_ONE_REG; 64-bit ids only).
func (v *VCPU) SetReg(id, val uint64) error {
	r := oneReg{ID: id, Addr: uint64(uintptr(unsafe.Pointer(&val)))}
	if _, err := ioctlPtr(v.fd, ioctlSetOneReg, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("vCPU %d: KVM_SET_ONE_REG %#x: %w", v.index, id, err)
	}
	return nil
}

// RegList is the list of register ids KVM saves and restores for this vCPU
// (KVM_GET_REG_LIST).
func (v *VCPU) RegList() ([]uint64, error) {
	var n uint64
	_, err := ioctlPtr(v.fd, ioctlGetRegList, unsafe.Pointer(&n))
	if err != nil && !errors.Is(err, unix.E2BIG) {
		return nil, fmt.Errorf("vCPU %d: KVM_GET_REG_LIST: %w", v.index, err)
	}
	buf := make([]uint64, 1+n)
	buf[0] = n
	if _, err := ioctlPtr(v.fd, ioctlGetRegList, unsafe.Pointer(&buf[0])); err != nil {
		return nil, fmt.Errorf("vCPU %d: KVM_GET_REG_LIST (%d registers): %w", v.index, n, err)
	}
	return buf[1 : 1+buf[0]], nil
}

// setImmediateExit atomically sets kvm_run.immediate_exit.
func (v *VCPU) setImmediateExit(val uint8) {
	for {
		old := atomic.LoadUint32(v.word0)
		nw := old&^0xff00 | uint32(val)<<8
		if old == nw || atomic.CompareAndSwapUint32(v.word0, old, nw) {
			return
		}
	}
}

// Kick makes Run return ExitInterrupted as soon as possible. Safe from any
// goroutine.
func (v *VCPU) Kick() {
	v.kicked.Store(true)
	v.setImmediateExit(1)
	if tid := v.tid.Load(); tid != 0 {
		unix.Tgkill(os.Getpid(), int(tid), KickSignal)
	}
}

// Run enters the guest until an exit that is not MMIO; MMIO accesses KVM
// decoded are completed through h. It must be called from a goroutine
// locked to its OS thread, always the same one.
//
// An access h served is complete in the vCPU only after the next
// KVM_RUN: that is where KVM writes a read's data into its register and
// moves the PC past the instruction, the state KVM_GET_ONE_REG reports.
// So a Kick that comes while h serves an access re-enters KVM_RUN with
// immediate_exit set, which completes the access and returns EINTR
// without running the guest, before Run returns ExitInterrupted: a state
// saved after the kick (a snapshot, a live migration) holds the access
// done. Saved before it, the restored vCPU would execute the access a
// second time, and a read-to-clear register (virtio's ISR) would read
// cleared, losing the interrupt it stood for.
func (v *VCPU) Run(h accel.IOHandler) (accel.Exit, error) {
	if v.tid.Load() == 0 {
		var set unix.Sigset_t
		n := uint(KickSignal) - 1
		set.Val[n/64] |= 1 << (n % 64)
		if err := unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil); err != nil {
			return accel.Exit{}, fmt.Errorf("vCPU %d: unblock the kick signal: %w", v.index, err)
		}
		v.tid.Store(int32(unix.Gettid()))
	}
	le := binary.LittleEndian
	// pending: h served an access that the next KVM_RUN completes.
	pending := false
	for {
		if v.kicked.Load() {
			if !pending {
				v.kicked.Store(false)
				v.setImmediateExit(0)
				return accel.Exit{Reason: accel.ExitInterrupted}, nil
			}
			// Kick set it too, maybe not yet: the KVM_RUN below
			// must not enter the guest.
			v.setImmediateExit(1)
		}
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
		pending = false
		switch e {
		case 0:
		case unix.EINTR, unix.EAGAIN:
			continue
		case unix.ENOSYS:
			return v.fatal(accel.ExitInternalError, "KVM could not emulate a data abort outside guest RAM (no valid syndrome, and the host lacks KVM_CAP_ARM_NISV_TO_USER)"), nil
		default:
			return accel.Exit{}, fmt.Errorf("vCPU %d: KVM_RUN: %w", v.index, e)
		}
		switch reason := le.Uint32(v.run[runExitReason:]); reason {
		case exitMMIO:
			addr := le.Uint64(v.run[mmioAddrOff:])
			n := le.Uint32(v.run[mmioLenOff:])
			if n > 8 {
				return v.fatal(accel.ExitInternalError, fmt.Sprintf("MMIO exit at %#x with length %d", addr, n)), nil
			}
			data := v.run[mmioDataOff : mmioDataOff+n]
			if v.run[mmioIsWriteOff] != 0 {
				h.MMIOWrite(addr, data)
			} else {
				h.MMIORead(addr, data)
			}
			pending = true
		case exitSystemEvent:
			switch t := le.Uint32(v.run[sysEventTypeOff:]); t {
			case systemEventShutdown:
				return accel.Exit{Reason: accel.ExitPowerOff}, nil
			case systemEventReset:
				return accel.Exit{Reason: accel.ExitReset}, nil
			case systemEventCrash:
				return v.fatal(accel.ExitShutdown, "PSCI reported a guest crash"), nil
			default:
				return v.fatal(accel.ExitUnknown, fmt.Sprintf("system event type %d", t)), nil
			}
		case exitARMNISV:
			iss := le.Uint64(v.run[nisvESROff:])
			ipa := le.Uint64(v.run[nisvAddrOff:])
			return v.fatal(accel.ExitInternalError, fmt.Sprintf("MMIO access KVM cannot decode at %#x, ESR ISS %#x: %s", ipa, iss, DescribeDataAbort(iss))), nil
		case exitFailEntry:
			return v.fatal(accel.ExitFailEntry, fmt.Sprintf("hardware entry failure reason %#x", le.Uint64(v.run[failEntryReasonOff:]))), nil
		case exitInternalError:
			return v.fatal(accel.ExitInternalError, fmt.Sprintf("KVM internal error, suberror %d", le.Uint32(v.run[internalSuberrorOff:]))), nil
		case exitIntr:
			continue
		default:
			return v.fatal(accel.ExitUnknown, fmt.Sprintf("KVM exit reason %d", reason)), nil
		}
	}
}

// fatal builds a fatal exit with the guest's PC.
func (v *VCPU) fatal(r accel.ExitReason, detail string) accel.Exit {
	x := accel.Exit{Reason: r, Detail: detail}
	if pc, err := v.Reg(RegPC); err == nil {
		x.RIP = pc
	}
	return x
}

// Close unmaps kvm_run and closes the vCPU.
func (v *VCPU) Close() error {
	if v.fd < 0 {
		return nil
	}
	if v.run != nil {
		unix.Munmap(v.run)
		v.run = nil
	}
	err := unix.Close(v.fd)
	v.fd = -1
	return err
}
