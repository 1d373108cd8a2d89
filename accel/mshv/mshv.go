// Package mshv is govmm's Microsoft Hypervisor backend: it implements the
// accel interfaces on the Linux /dev/mshv root-partition ABI (Linux 6.15+,
// as a root partition or L1 virtual host).
//
// MSHV differs from KVM in the ways that shape this package: the VMM, not
// the kernel, decodes and emulates the instruction behind an unmapped-GPA
// intercept and advances RIP after port I/O (done here with package
// x86/emu, so the layers above see the same completed PIO/MMIO as on KVM);
// registers are named hypervisor registers reached through the generic
// MSHV_ROOT_HVCALL ioctl (or the mmapped register page); CPU features are
// fixed when the partition is created; the LAPIC lives in the hypervisor
// and the IOAPIC/PIC in userspace.
//
// Everything goes through an mshvabi.Device, so the same code runs on the
// real /dev/mshv (OpenDevice) and on the in-process simulator
// (package mshvsim), which serves the ABI on top of KVM for testing.
//
// Verified against the ABI reference (mshv-abi.md) and mshvsim; not yet on
// an MSHV host. Not supported (each fails with a clear error wrapping
// accel.ErrNotSupported or a fatal exit naming the message): port-I/O
// ioeventfds (MSHV has none), irqchip GSI routes (MSHV routes MSIs only),
// XCRs other than XCR0, MSRs without a named hypervisor register,
// isolated (SNP) partitions, and hypercall/exception intercepts. The CPU
// model is applied twice: the partition's processor and XSAVE feature
// banks (MSHV_CREATE_PARTITION's v2 payload) disable every feature the
// guest's CPUID lacks, so that the hypervisor refuses it, and per-VP CPUID
// overrides present the model's exact CPUID. Kernels without the v2
// payload (mainline) enable everything the hypervisor supports; there the
// overrides change only what the guest sees, and NewVM says so.
package mshv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
	"govmm/cpu"
)

// MaxVCPUs is the number of VPs govmm creates at most (Cloud Hypervisor's
// limit; vp_index travels as a u8 in several tools).
const MaxVCPUs = 256

// Accelerator is an opened MSHV device. It implements accel.Accelerator.
type Accelerator struct {
	dev  mshvabi.Device
	name string // device description for messages and caps
	// warnedV1: the warning that a kernel without the v2 payload cannot
	// enforce the CPU model was given.
	warnedV1 atomic.Bool
}

var _ accel.Accelerator = (*Accelerator)(nil)

// OpenDevice opens the real MSHV device node (normally /dev/mshv). When
// the node is absent the error wraps os.ErrNotExist and says what MSHV
// needs.
func OpenDevice(path string) (mshvabi.Device, error) {
	d, err := mshvabi.OpenOS(path)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: this host is not a Microsoft Hypervisor root partition or L1 virtual host (MSHV needs Linux 6.15+ with the mshv_root module)", err)
		}
		return nil, err
	}
	return d, nil
}

// Open wraps a Device (the real /dev/mshv from OpenDevice, or the
// simulator) as an accelerator.
func Open(dev mshvabi.Device) (*Accelerator, error) {
	if dev == nil {
		return nil, errors.New("mshv: nil device")
	}
	name := mshvabi.DevicePath
	if s, ok := dev.(interface{ Name() string }); ok {
		name = s.Name()
	} else if o, ok := dev.(*mshvabi.OSDevice); ok {
		name = o.Path
	}
	return &Accelerator{dev: dev, name: name}, nil
}

// Name is "mshv".
func (a *Accelerator) Name() string { return "mshv" }

// Device returns the device the accelerator talks through.
func (a *Accelerator) Device() mshvabi.Device { return a.dev }

// Close closes the device. Partitions created from it stay valid.
func (a *Accelerator) Close() error {
	return a.dev.Close(a.dev.SystemFD())
}

func (a *Accelerator) self() hvcaller { return hvcaller{dev: a.dev, fd: a.dev.SystemFD()} }

// hostProperty reads a property of the root partition itself
// (MSHV_ROOT_HVCALL on /dev/mshv, a later kernel addition); ok is false
// when the kernel does not offer that or the hypervisor refused.
func (a *Accelerator) hostProperty(code uint32) (uint64, bool) {
	v, err := a.self().getProperty(code)
	return v, err == nil
}

// hostPropertyEx reads bank 0 of a banked property with
// GET_PARTITION_PROPERTY_EX on /dev/mshv.
func (a *Accelerator) hostPropertyEx(code uint32) (uint64, error) {
	in := make([]byte, 24)
	binary.LittleEndian.PutUint32(in[8:], code)
	out := make([]byte, 16)
	if _, err := a.self().call(mshvabi.HvcallGetPartitionPropertyEx, 0, in, out); err != nil {
		return 0, err
	}
	if binary.LittleEndian.Uint16(out) == 0 {
		return 0, nil
	}
	return binary.LittleEndian.Uint64(out[8:]), nil
}

// notSupported reports whether err means "this kernel does not know the
// request": ENOTTY (an ioctl it lacks: mainline's mshv_dev_ioctl knows
// only MSHV_CREATE_PARTITION), or EINVAL from the kernel's own checks (a
// pt_flags bit outside MSHV_PT_FLAGS_MASK, a hypercall code off the
// pass-through list), which fail before any hypercall and leave the status
// zero. An EINVAL carrying a hypervisor status is the hypervisor refusing
// the input, and an EIO is any other hypervisor failure (upstream
// hv_status_infos[] makes ACCESS_DENIED, OPERATION_DENIED,
// INVALID_PARTITION_STATE, UNKNOWN_PROPERTY, PROPERTY_VALUE_OUT_OF_RANGE
// and most others EIO): the request exists, it just failed.
func notSupported(err error) bool {
	if errors.Is(err, unix.ENOTTY) {
		return true
	}
	var he *HvcallError
	if errors.As(err, &he) && he.Status != mshvabi.HvStatusSuccess {
		return false
	}
	return errors.Is(err, unix.EINVAL)
}

const baseFlags = 1<<mshvabi.PTBitLAPIC | 1<<mshvabi.PTBitX2APIC | 1<<mshvabi.PTBitGPASuperPages

// createPartition issues MSHV_CREATE_PARTITION with the v2 payload and
// falls back to v1 when the kernel does not take it. CREATE is retried on
// EINTR. guest is the CPUID every vCPU will present (nil for a scratch
// partition): the v2 payload's feature banks disable what it lacks
// (partitionBanks), so that the hypervisor refuses the guest what its
// CPU model does not have.
func (a *Accelerator) createPartition(guest []accel.CPUIDEntry) (fd int, v2 bool, err error) {
	p := &mshvabi.CreatePartitionV2{
		Flags:        baseFlags | 1<<mshvabi.PTBitCPUAndXSaveFeatures,
		Isolation:    mshvabi.PTIsolationNone,
		NumCPUFBanks: mshvabi.NumCPUFeatureBanks,
	}
	disabled, hidden := partitionBanks(guest, a.hostBanks())
	p.CPUFBanks = [2]uint64{disabled[mshvabi.Bank0], disabled[mshvabi.Bank1]}
	p.DisabledXSave = disabled[mshvabi.BankXSave]
	for {
		fd, err = mshvabi.CreatePartitionV2FD(a.dev, p)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err == nil {
		if guest != nil {
			slog.Debug("mshv: partition feature banks derived from the guest CPUID",
				"disabled_bank0", fmt.Sprintf("%#x", disabled[0]), "disabled_bank1", fmt.Sprintf("%#x", disabled[1]),
				"disabled_xsave", fmt.Sprintf("%#x", disabled[2]), "hidden_by_model", strings.Join(hidden, " "))
		}
		return fd, true, nil
	}
	if !notSupported(err) {
		return -1, false, fmt.Errorf("MSHV_CREATE_PARTITION (v2 payload): %w", err)
	}
	v1 := &mshvabi.CreatePartition{Flags: baseFlags, Isolation: mshvabi.PTIsolationNone}
	for {
		fd, err = mshvabi.CreatePartitionFD(a.dev, v1)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return -1, false, fmt.Errorf("MSHV_CREATE_PARTITION (v1 payload, after v2 was refused): %w", err)
	}
	return fd, false, nil
}

// hostBanks reads the features the host offers to partitions (the root
// partition's PROCESSOR_FEATURES0/1 and PROCESSOR_XSAVE_FEATURES, through
// a self-targeted MSHV_ROOT_HVCALL that mainline lacks); known[b] is false
// for a bank it could not read.
func (a *Accelerator) hostBanks() (h hostFeatures) {
	for b, code := range [3]uint32{mshvabi.PropProcessorFeatures0, mshvabi.PropProcessorFeatures1, mshvabi.PropProcessorXSaveFeatures} {
		h.offered[b], h.known[b] = a.hostProperty(code)
	}
	return h
}

// hostFeatures are the host's feature banks (bit set = offered).
type hostFeatures struct {
	offered [3]uint64
	known   [3]bool
}

// cpuidReader looks leaves up in a CPUID table for mshvabi.CPUIDBit.Has.
func cpuidReader(tab []accel.CPUIDEntry) func(leaf, sub uint32) ([4]uint32, bool) {
	return func(leaf, sub uint32) ([4]uint32, bool) {
		for _, e := range tab {
			if e.Function == leaf && (e.Index == sub || e.Flags&accel.CPUIDFlagSignificantIndex == 0 && sub == 0) {
				return [4]uint32{e.EAX, e.EBX, e.ECX, e.EDX}, true
			}
		}
		return [4]uint32{}, false
	}
}

// partitionBanks computes the disabled processor banks 0 and 1 and the
// disabled XSAVE bank of a v2 payload (bit set = off): everything the host
// does not offer, and every feature with a CPUID counterpart that guest's
// CPUID lacks. Bits without a CPUID counterpart keep the host's value;
// reserved bits are disabled when the host's value is unknown, as
// rust-vmm does, so that a newer hypervisor adds nothing the guest was not
// promised. With guest nil (a scratch partition) only what the host does
// not offer is disabled, and nothing when the host does not say. hidden
// names the features disabled because the guest lacks them although the
// host offers them (or may: its banks unknown).
func partitionBanks(guest []accel.CPUIDEntry, host hostFeatures) (disabled [3]uint64, hidden []string) {
	for b := range disabled {
		if host.known[b] {
			disabled[b] = ^host.offered[b]
		}
	}
	if guest == nil {
		return disabled, nil
	}
	var named [3]uint64
	for _, bf := range mshvabi.BankFeatures {
		named[bf.Bank] |= 1 << bf.Bit
	}
	for b := range disabled {
		if !host.known[b] {
			disabled[b] |= ^named[b]
		}
	}
	has := cpuidReader(guest)
	for _, bf := range mshvabi.BankFeatures {
		bit := uint64(1) << bf.Bit
		if bf.NoCPUID || bf.CPUID.Has(has) {
			continue
		}
		if disabled[bf.Bank]&bit == 0 {
			hidden = append(hidden, bf.Name)
		}
		disabled[bf.Bank] |= bit
	}
	return disabled, hidden
}

// warnUnenforced says once per accelerator, on a kernel without the v2
// payload (mainline: the hypervisor enables every feature it supports),
// which features the guest's CPUID hides that the hypervisor offers all
// the same: a guest that uses them anyway gets them, and a migration or
// restore onto a host without them breaks it.
func (a *Accelerator) warnUnenforced(guest []accel.CPUIDEntry) {
	if len(guest) == 0 || a.warnedV1.Load() {
		return
	}
	sup, err := a.SupportedCPUID()
	if err != nil {
		slog.Warn("mshv: this kernel has no MSHV_CREATE_PARTITION v2 payload, so the hypervisor cannot enforce the CPU model (it enables every feature it supports); reading its CPUID to name them failed", "err", err)
		a.warnedV1.Store(true)
		return
	}
	inSup, inGuest := cpuidReader(sup), cpuidReader(guest)
	var names []string
	for _, bf := range mshvabi.BankFeatures {
		if !bf.NoCPUID && bf.CPUID.Has(inSup) && !bf.CPUID.Has(inGuest) {
			names = append(names, bf.Name)
		}
	}
	if len(names) == 0 || a.warnedV1.Swap(true) {
		return
	}
	slog.Warn("mshv: this kernel has no MSHV_CREATE_PARTITION v2 payload, so the hypervisor cannot enforce the CPU model: the guest's CPUID hides these features but the hypervisor lets the guest use them",
		"features", strings.Join(names, " "))
}

// setupPartition runs bring-up steps 4-6 of mshv-abi.md §7 on a new
// partition: synthetic features, INITIALIZE, unimplemented-MSR action, and
// time freeze.
func (a *Accelerator) setupPartition(pfd int) error {
	hv := hvcaller{dev: a.dev, fd: pfd}
	syn := mshvabi.DefaultSyntheticProcFeatures
	if assignable, err := a.hostPropertyEx(mshvabi.PropAssignableSyntheticFeatures); err == nil && assignable != 0 {
		syn &= assignable
	}
	if err := hv.setProperty(mshvabi.PropSyntheticProcFeatures, syn); err != nil {
		return fmt.Errorf("set synthetic processor features: %w", err)
	}
	if err := mshvabi.InitializePartition(a.dev, pfd); err != nil {
		return fmt.Errorf("MSHV_INITIALIZE_PARTITION: %w", err)
	}
	if err := hv.setProperty(mshvabi.PropUnimplementedMSRAction, mshvabi.UnimplementedMSRActionIgnoreWrite); err != nil {
		return fmt.Errorf("set unimplemented-MSR action: %w", err)
	}
	if err := hv.setProperty(mshvabi.PropTimeFreeze, 1); err != nil {
		return fmt.Errorf("freeze partition time for setup: %w", err)
	}
	return nil
}

// CreateVM creates and initialises a partition (mshv-abi.md §7 steps 3-6).
// Guest time stays frozen until the first VCPU.Run (or Resume).
func (a *Accelerator) CreateVM(cfg accel.VMConfig) (accel.VM, error) {
	return a.NewVM(cfg)
}

// NewVM is CreateVM returning the concrete type.
func (a *Accelerator) NewVM(cfg accel.VMConfig) (*VM, error) {
	if cfg.NumVCPUs < 0 || cfg.NumVCPUs > MaxVCPUs {
		return nil, fmt.Errorf("mshv: %d vCPUs requested, at most %d supported", cfg.NumVCPUs, MaxVCPUs)
	}
	if err := checkFeatureMSRs(cfg.FeatureMSRs); err != nil {
		return nil, err
	}
	// Resolved once here; every vCPU's CPUID is specialised for it.
	topo, err := cpu.ResolveTopology(cfg.Topology, max(cfg.NumVCPUs, 1))
	if err != nil {
		return nil, fmt.Errorf("mshv: %w", err)
	}
	cfg.Topology = topo
	pfd, v2, err := a.createPartition(cfg.CPUID)
	if err != nil {
		return nil, err
	}
	if err := a.setupPartition(pfd); err != nil {
		a.dev.Close(pfd)
		return nil, err
	}
	if !v2 {
		a.warnUnenforced(cfg.CPUID)
	}
	vm := newVM(a, pfd, cfg, v2)
	return vm, nil
}

// Caps reports what this MSHV offers. It creates a scratch partition to
// probe partition creation and the VP pages.
func (a *Accelerator) Caps() (accel.Caps, error) {
	c := accel.Caps{Accel: "mshv", Device: a.name, MaxVCPUs: MaxVCPUs, Info: map[string]string{}}
	add := func(name string, v int64, used bool) {
		c.Features = append(c.Features, accel.Capability{Name: name, Value: v, Used: used})
	}
	b := func(ok bool) int64 {
		if ok {
			return 1
		}
		return 0
	}
	// The kernel offers a request when it does not refuse it as unknown,
	// whatever the hypervisor then answers.
	_, err := a.self().getProperty(mshvabi.PropProcessorFeatures0)
	add("SELF_PARTITION_PROPERTY", b(!notSupported(err)), true)
	_, err = a.hostPropertyEx(mshvabi.PropAssignableSyntheticFeatures)
	add("GET_PARTITION_PROPERTY_EX", b(!notSupported(err)), true)
	for _, p := range []struct {
		name string
		code uint32
	}{
		{"processor_features0", mshvabi.PropProcessorFeatures0},
		{"processor_features1", mshvabi.PropProcessorFeatures1},
		{"processor_xsave_features", mshvabi.PropProcessorXSaveFeatures},
		{"max_xsave_data_size", mshvabi.PropMaxXSaveDataSize},
		{"processor_clock_frequency", mshvabi.PropProcessorClockFrequency},
		{"physical_address_width", mshvabi.PropPhysicalAddressWidth},
	} {
		if v, ok := a.hostProperty(p.code); ok {
			c.Info[p.name] = "0x" + strconv.FormatUint(v, 16)
		}
	}
	pfd, v2, err := a.createPartition(nil)
	if err != nil {
		return c, fmt.Errorf("probe partition: %w", err)
	}
	defer a.dev.Close(pfd)
	add("CREATE_PARTITION_V2", b(v2), true)
	if err := a.setupPartition(pfd); err != nil {
		return c, fmt.Errorf("probe partition: %w", err)
	}
	hv := hvcaller{dev: a.dev, fd: pfd}
	if v, err := hv.getProperty(mshvabi.PropMaxXSaveDataSize); err == nil {
		c.Info["partition_max_xsave_data_size"] = strconv.FormatUint(v, 10)
	}
	vpfd, err := mshvabi.CreateVPFD(a.dev, pfd, 0)
	if err != nil {
		return c, fmt.Errorf("probe partition: MSHV_CREATE_VP: %w", err)
	}
	defer a.dev.Close(vpfd)
	regPage := false
	if m, err := a.dev.Mmap(vpfd, mshvabi.VPMmapRegisters, 4096); err == nil {
		regPage = true
		a.dev.Munmap(m)
	}
	add("VP_REGISTER_PAGE", b(regPage), true)
	err = mshvabi.SetIOEventFD(a.dev, pfd, mshvabi.UserIOEventFD{Addr: 0x1000, Len: 1, FD: -1, Flags: mshvabi.IOEventFDPIO})
	add("PIO_IOEVENTFD", b(err == nil || !errors.Is(err, unix.EOPNOTSUPP)), false)
	add("MMIO_IOEVENTFD", 1, true)
	add("IRQFD", 1, true)
	add("IRQFD_RESAMPLE", 1, true)
	add("MSI_ROUTING", 1, true)
	add("GPAP_ACCESS_BITMAP", 1, true)
	return c, nil
}

// cpuidLeavesWithSubleaves are the leaves whose ECX selects the result.
var cpuidSubleaves = map[uint32]uint32{
	4: 8, 7: 4, 0xb: 4, 0xd: 64, 0xf: 2, 0x10: 4, 0x12: 4, 0x14: 2, 0x17: 4, 0x18: 4, 0x1d: 2, 0x1e: 1, 0x1f: 6,
	0x24: 2, 0x8000001d: 8, 0x80000020: 4, 0x80000026: 4,
}

// SupportedCPUID reads the CPUID the hypervisor computes for a fresh VP of
// a scratch partition (HvCallGetVpCpuidValues without registered
// overrides).
func (a *Accelerator) SupportedCPUID() ([]accel.CPUIDEntry, error) {
	pfd, _, err := a.createPartition(nil)
	if err != nil {
		return nil, err
	}
	defer a.dev.Close(pfd)
	if err := a.setupPartition(pfd); err != nil {
		return nil, err
	}
	vpfd, err := mshvabi.CreateVPFD(a.dev, pfd, 0)
	if err != nil {
		return nil, fmt.Errorf("MSHV_CREATE_VP for the CPUID probe: %w", err)
	}
	defer a.dev.Close(vpfd)
	hv := hvcaller{dev: a.dev, fd: vpfd}
	xfem := uint64(3)
	if v, err := (hvcaller{dev: a.dev, fd: pfd}).getProperty(mshvabi.PropXSaveStates); err == nil {
		xfem |= v
	}
	get := func(q [][2]uint32) ([][4]uint32, error) {
		var out [][4]uint32
		for len(q) > 0 {
			n := min(len(q), 128)
			in := make([]byte, 24+24*n)
			for i := 0; i < n; i++ {
				o := 24 + 24*i
				binary.LittleEndian.PutUint32(in[o:], q[i][0])
				binary.LittleEndian.PutUint32(in[o+4:], q[i][1])
				binary.LittleEndian.PutUint64(in[o+8:], xfem)
			}
			ob := make([]byte, 16*n)
			reps, err := hv.call(mshvabi.HvcallGetVPCPUIDValues, uint16(n), in, ob)
			if err != nil {
				return nil, err
			}
			if int(reps) != n {
				return nil, fmt.Errorf("GET_VP_CPUID_VALUES completed %d of %d reps", reps, n)
			}
			for i := 0; i < n; i++ {
				var r [4]uint32
				for j := range r {
					r[j] = binary.LittleEndian.Uint32(ob[16*i+4*j:])
				}
				out = append(out, r)
			}
			q = q[n:]
		}
		return out, nil
	}
	heads, err := get([][2]uint32{{0, 0}, {0x80000000, 0}, {0x40000000, 0}})
	if err != nil {
		return nil, fmt.Errorf("read CPUID from the hypervisor: %w", err)
	}
	maxBasic, maxExt := min(heads[0][0], 0x40), min(heads[1][0], 0x80000028)
	// The hypervisor's own leaves (Hyper-V's, from the synthetic features
	// set up above) are part of what the guest sees: read them too, so a
	// snapshot records them and another accelerator can present the same
	// interface (KVM's Hyper-V emulation).
	maxHv := heads[2][0]
	if !cpu.HypervisorLeaf(maxHv) {
		maxHv = 0
	}
	var q [][2]uint32
	var flags []uint32
	addLeaf := func(f uint32) {
		n, ok := cpuidSubleaves[f]
		if !ok {
			q = append(q, [2]uint32{f, 0})
			flags = append(flags, 0)
			return
		}
		for i := uint32(0); i < n; i++ {
			q = append(q, [2]uint32{f, i})
			flags = append(flags, accel.CPUIDFlagSignificantIndex)
		}
	}
	for f := uint32(0); f <= maxBasic; f++ {
		addLeaf(f)
	}
	if maxExt >= 0x80000000 {
		for f := uint32(0x80000000); f <= maxExt; f++ {
			addLeaf(f)
		}
	}
	if maxHv != 0 {
		for f := uint32(0x40000000); f <= maxHv; f++ {
			addLeaf(f)
		}
	}
	res, err := get(q)
	if err != nil {
		return nil, fmt.Errorf("read CPUID from the hypervisor: %w", err)
	}
	var out []accel.CPUIDEntry
	for i, k := range q {
		r := res[i]
		if flags[i] != 0 && k[1] > 0 && r == [4]uint32{} {
			continue // subleaf beyond the last valid one
		}
		// hv_output_get_vp_cpuid_values is {eax, ebx, ecx, edx}.
		out = append(out, accel.CPUIDEntry{Function: k[0], Index: k[1], Flags: flags[i],
			EAX: r[0], EBX: r[1], ECX: r[2], EDX: r[3]})
	}
	return out, nil
}
