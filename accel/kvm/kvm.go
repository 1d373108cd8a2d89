// Package kvm is govmm's Linux KVM backend: it implements the accel
// interfaces on /dev/kvm. It is the only package in govmm that issues KVM
// ioctls or touches KVM's structs through unsafe, so that the rest of the
// VMM never depends on the kernel ABI; abi_test.go pins every struct to the
// C headers.
//
// A VM uses a split irqchip (LAPIC in the kernel, IOAPIC and PIC in
// userspace), so guests start their APs with INIT/SIPI through the in-kernel
// LAPIC while govmm's own devices model the IOAPIC and PIC.
//
// The package also exposes a small low-level API (VCPU.RunRaw,
// VCPU.SetImmediateExit, RawExit) for the MSHV simulator, which serves the
// /dev/mshv ABI on top of KVM.
package kvm

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// DevicePath is the KVM device node.
const DevicePath = "/dev/kvm"

// Accelerator is an opened /dev/kvm. It implements accel.Accelerator.
type Accelerator struct {
	fd       int
	mmapSize int
}

var _ accel.Accelerator = (*Accelerator)(nil)

// Open opens /dev/kvm and checks the API version. A missing device or
// missing permission wraps the errno, so errors.Is(err, fs.ErrNotExist)
// and errors.Is(err, fs.ErrPermission) tell "accelerator unavailable".
func Open() (*Accelerator, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("open %s: %w (KVM is not available on this host: load kvm_intel/kvm_amd or enable virtualization)", DevicePath, err)
		}
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("open %s: %w (add the user to the kvm group or run as root)", DevicePath, err)
		}
		return nil, fmt.Errorf("open %s: %w", DevicePath, err)
	}
	v, err := ioctl(fd, ioctlGetAPIVersion, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_API_VERSION on %s: %w", DevicePath, err)
	}
	if v != apiVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("%s speaks KVM API version %d, govmm needs %d", DevicePath, v, apiVersion)
	}
	sz, err := ioctl(fd, ioctlGetVCPUMmapSize, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if int(sz) < int(unsafe.Sizeof(kvmRun{})) {
		unix.Close(fd)
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE returned %d bytes, too small for struct kvm_run", sz)
	}
	return &Accelerator{fd: fd, mmapSize: int(sz)}, nil
}

// Name is "kvm".
func (a *Accelerator) Name() string { return "kvm" }

// Close closes /dev/kvm (VMs created from it stay valid).
func (a *Accelerator) Close() error {
	if a.fd < 0 {
		return nil
	}
	err := unix.Close(a.fd)
	a.fd = -1
	return err
}

// checkExtension returns KVM_CHECK_EXTENSION(cap) on fd (the system fd or a
// VM fd); errors count as absent.
func checkExtension(fd int, c int) int64 {
	r, err := ioctl(fd, ioctlCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int64(int32(r))
}

type capInfo struct {
	name string
	num  int
	used bool
}

// capTable lists the capabilities `govmm caps` reports. used marks those
// govmm relies on or uses when present (including those the snapshot and
// migration work plans on: dirty ring, manual dirty-log protect, TSC
// control, nested state, userspace MSRs).
var capTable = []capInfo{
	{"USER_MEMORY", capUserMemory, true},
	{"SET_TSS_ADDR", capSetTSSAddr, true},
	{"SET_IDENTITY_MAP_ADDR", capSetIdentityMapAddr, true},
	{"EXT_CPUID", capExtCPUID, true},
	{"MP_STATE", capMPState, true},
	{"SYNC_MMU", capSyncMMU, true},
	{"IRQ_ROUTING", capIRQRouting, true},
	{"IRQFD", capIRQFD, true},
	{"IRQFD_RESAMPLE", capIRQFDResample, false},
	{"IOEVENTFD", capIOEventFD, true},
	{"IOEVENTFD_ANY_LENGTH", capIOEventFDAnyLength, true},
	{"SIGNAL_MSI", capSignalMSI, true},
	{"SPLIT_IRQCHIP", capSplitIRQChip, true},
	{"X2APIC_API", capX2APICAPI, true},
	{"ADJUST_CLOCK", capAdjustClock, true},
	{"VCPU_EVENTS", capVCPUEvents, true},
	{"DEBUGREGS", capDebugRegs, true},
	{"XSAVE", capXSave, true},
	{"XSAVE2", capXSave2, true},
	{"PMU_CAPABILITY", capPMUCapability, true},
	{"XCRS", capXCRs, true},
	{"READONLY_MEM", capReadonlyMem, true},
	{"IMMEDIATE_EXIT", capImmediateExit, true},
	{"EXIT_ON_EMULATION_FAILURE", capExitOnEmulationFailure, true},
	{"GET_MSR_FEATURES", capGetMSRFeatures, true},
	{"GET_TSC_KHZ", capGetTSCKHz, true},
	{"TSC_DEADLINE_TIMER", capTSCDeadlineTimer, true},
	{"MAX_VCPU_ID", capMaxVCPUID, false},
	{"IRQCHIP", capIRQChip, false},
	{"HLT", capHLT, false},
	{"PIT2", capPIT2, false},
	{"COALESCED_MMIO", capCoalescedMMIO, false},
	{"SET_GUEST_DEBUG", capSetGuestDebug, false},
	{"GUEST_DEBUG_HW_BPS", capGuestDebugHWBPs, false},
	{"DIRTY_LOG_RING", capDirtyLogRing, false},
	{"DIRTY_LOG_RING_ACQ_REL", capDirtyLogRingAcqRel, false},
	{"MANUAL_DIRTY_LOG_PROTECT2", capManualDirtyLogProtect2, false},
	{"X86_USER_SPACE_MSR", capX86UserSpaceMSR, false},
	{"X86_MSR_FILTER", capX86MSRFilter, false},
	{"TSC_CONTROL", capTSCControl, false},
	{"NESTED_STATE", capNestedState, false},
	{"SREGS2", capSregs2, false},
	{"EXCEPTION_PAYLOAD", capExceptionPayload, false},
	{"X86_SMM", capX86SMM, false},
	{"KVMCLOCK_CTRL", capKVMClockCtrl, false},
	{"HYPERV", capHyperV, false},
	{"HYPERV_SYNIC2", capHyperVSynIC2, false},
}

// Caps reports the API version, vCPU limits and the capabilities in
// capTable (values from KVM_CHECK_EXTENSION on /dev/kvm; XSAVE2 and other
// VM-scoped values are asked of a scratch VM when one can be created).
func (a *Accelerator) Caps() (accel.Caps, error) {
	c := accel.Caps{
		Accel:      "kvm",
		Device:     DevicePath,
		APIVersion: apiVersion,
		Info:       map[string]string{},
	}
	c.MaxVCPUs = int(checkExtension(a.fd, capMaxVCPUs))
	if c.MaxVCPUs == 0 {
		c.MaxVCPUs = int(checkExtension(a.fd, capNrVCPUs))
	}
	c.Info["recommended_vcpus"] = strconv.FormatInt(checkExtension(a.fd, capNrVCPUs), 10)
	c.Info["vcpu_mmap_size"] = strconv.Itoa(a.mmapSize)
	qfd := a.fd
	if vfd, err := a.createVM(); err == nil {
		defer unix.Close(int(vfd))
		qfd = int(vfd)
	}
	for _, ci := range capTable {
		c.Features = append(c.Features, accel.Capability{Name: ci.name, Value: checkExtension(qfd, ci.num), Used: ci.used})
	}
	if khz, err := ioctl(qfd, ioctlGetTSCKHz, 0); err == nil && qfd != a.fd {
		c.Info["tsc_khz"] = strconv.FormatUint(uint64(khz), 10)
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		c.Info["hardware_virt"] = strconv.FormatBool(hasVirtFlag(string(b)))
	}
	return c, nil
}

// hasVirtFlag reports whether /proc/cpuinfo shows hardware virtualization
// (vmx or svm); without it /dev/kvm is a software backend such as PVM.
func hasVirtFlag(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		name, flags, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) != "flags" {
			continue
		}
		for _, f := range strings.Fields(flags) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
	}
	return false
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID, with KVM's paravirtual
// leaves trimmed to what govmm offers, the timing leaf added and the
// TSC-deadline timer offered where KVM emulates it (withTSCDeadline),
// sorted by leaf and subleaf.
func (a *Accelerator) SupportedCPUID() ([]accel.CPUIDEntry, error) {
	for n := 64; n <= 4096; n *= 2 {
		buf := newCPUID2(n)
		_, err := ioctlPtr(a.fd, ioctlGetSupportedCPUID, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		return supportedFrom(cpuid2Entries(buf), checkExtension(a.fd, capTSCDeadlineTimer) > 0), nil
	}
	return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

// supportedFrom turns KVM_GET_SUPPORTED_CPUID's table into what govmm
// offers (SupportedCPUID): tscDeadline is KVM_CAP_TSC_DEADLINE_TIMER.
func supportedFrom(tab []accel.CPUIDEntry, tscDeadline bool) []accel.CPUIDEntry {
	out := withTSCDeadline(paravirtLeaves(tab), tscDeadline)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Function != out[j].Function {
			return out[i].Function < out[j].Function
		}
		return out[i].Index < out[j].Index
	})
	return out
}

// newCPUID2 allocates a struct kvm_cpuid2 with room for n entries (8-byte
// aligned) and sets nent.
func newCPUID2(n int) []uint64 {
	sz := int(unsafe.Sizeof(kvmCPUID2Header{})) + n*int(unsafe.Sizeof(kvmCPUIDEntry2{}))
	buf := make([]uint64, (sz+7)/8)
	(*kvmCPUID2Header)(unsafe.Pointer(&buf[0])).Nent = uint32(n)
	return buf
}

func cpuid2Slice(buf []uint64) []kvmCPUIDEntry2 {
	h := (*kvmCPUID2Header)(unsafe.Pointer(&buf[0]))
	p := (*kvmCPUIDEntry2)(unsafe.Add(unsafe.Pointer(&buf[0]), unsafe.Sizeof(kvmCPUID2Header{})))
	return unsafe.Slice(p, h.Nent)
}

func cpuid2Entries(buf []uint64) []accel.CPUIDEntry {
	var out []accel.CPUIDEntry
	for _, e := range cpuid2Slice(buf) {
		out = append(out, accel.CPUIDEntry{
			Function: e.Function, Index: e.Index, Flags: e.Flags & cpuidFlagSignificantIndex,
			EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX,
		})
	}
	return out
}

// MSRFeatureIndexList returns KVM_GET_MSR_FEATURE_INDEX_LIST (the feature
// MSRs such as IA32_ARCH_CAPABILITIES that describe the host).
func (a *Accelerator) MSRFeatureIndexList() ([]uint32, error) {
	return msrList(a.fd, ioctlGetMSRFeatureIndexLst, "KVM_GET_MSR_FEATURE_INDEX_LIST")
}

func msrList(fd int, req uintptr, name string) ([]uint32, error) {
	for n := 64; n <= 65536; n *= 4 {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := ioctlPtr(fd, req, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return append([]uint32(nil), buf[1:1+buf[0]]...), nil
	}
	return nil, fmt.Errorf("%s: list too long", name)
}
