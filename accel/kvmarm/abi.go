// Package kvmarm drives KVM on arm64 hosts (/dev/kvm on an AArch64 kernel):
// vCPU initialisation with the preferred target and in-kernel PSCI, core and
// system registers through KVM_GET/SET_ONE_REG, the in-kernel vGICv3, SPI
// lines and the exits a Linux guest needs (MMIO, PSCI system events).
//
// It is a sibling of package accel/kvm, not a backend behind accel.VCPU:
// that interface speaks x86 (general and segment registers, CPUID, MSRs,
// the LAPIC), none of which an arm64 vCPU has. What is neutral is shared:
// guest memory is an accel.MemoryRegion, MMIO goes to an accel.IOHandler
// and exits are accel.Exit values.
//
// This file holds the arm64 KVM ABI (from <linux/kvm.h> and arm64's
// <asm/kvm.h>). The layouts are plain fixed-size data, so abi_test.go checks
// them on any host; the ioctls themselves are in kvm_arm64.go.
package kvmarm

import (
	"fmt"

	"govmm/accel"
)

const apiVersion = 12

// ioctl encodes an ioctl request number the way arm64 (asm-generic) does.
func ioctlNum(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | 0xae<<8 | nr
}

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// ioctl request numbers.
var (
	ioctlGetAPIVersion       = ioctlNum(iocNone, 0x00, 0)
	ioctlCreateVM            = ioctlNum(iocNone, 0x01, 0)
	ioctlCheckExtension      = ioctlNum(iocNone, 0x03, 0)
	ioctlGetVCPUMmapSize     = ioctlNum(iocNone, 0x04, 0)
	ioctlCreateVCPU          = ioctlNum(iocNone, 0x41, 0)
	ioctlSetUserMemoryRegion = ioctlNum(iocWrite, 0x46, sizeofMemoryRegion)
	ioctlGetDirtyLog         = ioctlNum(iocWrite, 0x42, sizeofDirtyLog)
	ioctlIRQLine             = ioctlNum(iocWrite, 0x61, sizeofIRQLevel)
	ioctlSetGSIRouting       = ioctlNum(iocWrite, 0x6a, sizeofIRQRouting)
	ioctlIRQFD               = ioctlNum(iocWrite, 0x76, sizeofIRQFD)
	ioctlIOEventFD           = ioctlNum(iocWrite, 0x79, sizeofIOEventFD)
	ioctlRun                 = ioctlNum(iocNone, 0x80, 0)
	ioctlEnableCap           = ioctlNum(iocWrite, 0xa3, sizeofEnableCap)
	ioctlGetOneReg           = ioctlNum(iocWrite, 0xab, sizeofOneReg)
	ioctlSetOneReg           = ioctlNum(iocWrite, 0xac, sizeofOneReg)
	ioctlARMVCPUInit         = ioctlNum(iocWrite, 0xae, sizeofVCPUInit)
	ioctlARMPreferredTarget  = ioctlNum(iocRead, 0xaf, sizeofVCPUInit)
	ioctlGetRegList          = ioctlNum(iocRead|iocWrite, 0xb0, 8)
	ioctlCreateDevice        = ioctlNum(iocRead|iocWrite, 0xe0, sizeofCreateDevice)
	ioctlSetDeviceAttr       = ioctlNum(iocWrite, 0xe1, sizeofDeviceAttr)
)

// Capabilities (KVM_CAP_*).
const (
	capIRQChip          = 0
	capUserMemory       = 3
	capNrVCPUs          = 9
	capMaxVCPUs         = 66
	capOneReg           = 70
	capARMPSCI          = 87
	capARMPSCI02        = 102
	capDeviceCtrl       = 89
	capARMNISVToUser    = 177
	capARMVMIPASize     = 165
	capARMPMUv3         = 126
	capARMEL132Bit      = 93
	capARMIRQLineLayout = 174 // KVM_CAP_ARM_IRQ_LINE_LAYOUT_2
	capIRQRouting       = 25
	capIRQFD            = 32
	capIOEventFD        = 36
	capMSIDevID         = 131
	capSignalMSI        = 77
	capIRQFDResample    = 82 // KVM_CAP_IRQFD_RESAMPLE
)

// capNeed says how govmm uses a capability on arm64.
type capNeed int

const (
	capListed   capNeed = iota // reported for the operator; govmm does not use it
	capOptional                // used when the host has it
	capRequired                // `govmm run` cannot build the machine without it
)

func (n capNeed) String() string {
	switch n {
	case capRequired:
		return "required"
	case capOptional:
		return "optional"
	}
	return "not used"
}

// capEntry is one KVM_CHECK_EXTENSION value `govmm caps` reports.
type capEntry struct {
	name string
	num  uintptr
	need capNeed
}

// capTable is what `govmm caps` asks KVM on arm64 (of a scratch VM, as
// several answers are per VM), with how govmm uses each: the platform
// always builds a vGICv3 with an ITS whose MSI routes carry device IDs,
// fed by irqfds and MMIO ioeventfds; NISV_TO_USER is turned on when there.
var capTable = []capEntry{
	{"USER_MEMORY", capUserMemory, capRequired},
	{"ONE_REG", capOneReg, capRequired},
	{"ARM_PSCI_0_2", capARMPSCI02, capRequired},
	{"DEVICE_CTRL", capDeviceCtrl, capRequired},
	{"IRQ_ROUTING", capIRQRouting, capRequired},
	{"IRQFD", capIRQFD, capRequired},
	{"IOEVENTFD", capIOEventFD, capRequired},
	{"MSI_DEVID", capMSIDevID, capRequired},
	{"IRQFD_RESAMPLE", capIRQFDResample, capOptional},
	{"ARM_NISV_TO_USER", capARMNISVToUser, capOptional},
	{"SIGNAL_MSI", capSignalMSI, capListed},
	{"ARM_PMU_V3", capARMPMUv3, capListed},
	{"ARM_VM_IPA_SIZE", capARMVMIPASize, capListed},
	{"ARM_PSCI", capARMPSCI, capListed},
	{"ARM_EL1_32BIT", capARMEL132Bit, capListed},
	{"ARM_IRQ_LINE_LAYOUT_2", capARMIRQLineLayout, capListed},
	{"IRQCHIP", capIRQChip, capListed},
}

// devTable are the in-kernel devices `govmm caps` creates in the scratch
// VM to see whether the host can give a guest one (KVM_CREATE_DEVICE; num
// is the device type): the vGICv3 first, as the ITS attaches to it.
var devTable = []capEntry{
	{"DEV_ARM_VGIC_V3", devTypeVGICv3, capRequired},
	{"DEV_ARM_VGIC_ITS", devTypeVGICITS, capRequired},
}

// defaultIPABits is the guest physical address size of a VM created with
// machine type 0, which govmm's memory map fits in (KVM_CAP_ARM_VM_IPA_SIZE
// is the largest a VM could ask for; 0 means only this default).
const defaultIPABits = 40

// targetNames are the KVM_ARM_TARGET_* values KVM_ARM_PREFERRED_TARGET
// returns.
var targetNames = map[uint32]string{
	0: "AEM_V8", 1: "FOUNDATION_V8", 2: "CORTEX_A57", 3: "XGENE_POTENZA",
	4: "CORTEX_A53", 5: "GENERIC_V8",
}

// targetName spells out a KVM_ARM_TARGET_* value.
func targetName(t uint32) string {
	if n, ok := targetNames[t]; ok {
		return fmt.Sprintf("%d (KVM_ARM_TARGET_%s)", t, n)
	}
	return fmt.Sprintf("%d (unknown)", t)
}

// capsVerdict returns the names of the features govmm uses, split into
// required and optional, and the required ones the host lacks (value 0),
// in table order.
func capsVerdict(feats []accel.Capability) (required, optional, missing []string) {
	need := map[string]capNeed{}
	for _, c := range capTable {
		need[c.name] = c.need
	}
	for _, d := range devTable {
		need[d.name] = d.need
	}
	for _, f := range feats {
		switch need[f.Name] {
		case capRequired:
			required = append(required, f.Name)
			if f.Value == 0 {
				missing = append(missing, f.Name)
			}
		case capOptional:
			optional = append(optional, f.Name)
		}
	}
	return required, optional, missing
}

// struct kvm_vcpu_init and its feature bits.
type vcpuInit struct {
	Target   uint32
	Features [7]uint32
}

const sizeofVCPUInit = 32

const (
	featPowerOff = 0 // KVM_ARM_VCPU_POWER_OFF: start in the PSCI off state
	featPSCI02   = 2 // KVM_ARM_VCPU_PSCI_0_2
)

// struct kvm_one_reg.
type oneReg struct {
	ID   uint64
	Addr uint64
}

const sizeofOneReg = 16

// struct kvm_userspace_memory_region.
type memoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

const sizeofMemoryRegion = 32

// kvm_userspace_memory_region.flags.
const (
	memLogDirtyPages = 1 << 0 // KVM_MEM_LOG_DIRTY_PAGES
	memReadonly      = 1 << 1 // KVM_MEM_READONLY
)

// struct kvm_dirty_log (KVM_GET_DIRTY_LOG): the slot, padding, and a
// pointer to a bitmap of one bit per page of the slot. The same layout
// and request number as on x86 (package accel/kvm), which an arm64
// binary does not link.
type dirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64 // pointer
}

const sizeofDirtyLog = 16

// struct kvm_irq_level.
type irqLevel struct {
	IRQ   uint32
	Level uint32
}

const sizeofIRQLevel = 8

// struct kvm_enable_cap.
type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	Pad   [64]uint8
}

const sizeofEnableCap = 104

// struct kvm_create_device.
type createDevice struct {
	Type  uint32
	FD    uint32
	Flags uint32
}

const sizeofCreateDevice = 12

// struct kvm_device_attr.
type deviceAttr struct {
	Flags uint32
	Group uint32
	Attr  uint64
	Addr  uint64
}

const sizeofDeviceAttr = 24

// The vGICv3 device (KVM_DEV_TYPE_ARM_VGIC_V3), its ITS
// (KVM_DEV_TYPE_ARM_VGIC_ITS) and their attributes.
const (
	devTypeVGICv3     = 7
	devTypeVGICITS    = 8
	vgicITSAddrType   = 4 // KVM_VGIC_ITS_ADDR_TYPE
	vgicGroupAddr     = 0 // KVM_DEV_ARM_VGIC_GRP_ADDR
	vgicGroupNrIRQs   = 3 // KVM_DEV_ARM_VGIC_GRP_NR_IRQS
	vgicGroupCtrl     = 4 // KVM_DEV_ARM_VGIC_GRP_CTRL
	vgicV3AddrDist    = 2 // KVM_VGIC_V3_ADDR_TYPE_DIST
	vgicV3AddrRedist  = 3 // KVM_VGIC_V3_ADDR_TYPE_REDIST
	vgicCtrlInit      = 0 // KVM_DEV_ARM_VGIC_CTRL_INIT
	irqTypeShift      = 24
	irqTypeSPI        = 1 // KVM_ARM_IRQ_TYPE_SPI
	irqVCPU2Shift     = 28
	irqVCPUShift      = 16
	irqNumMask        = 0xffff
	firstSPI          = 32
	maxIRQNumInLayout = irqNumMask
)

// spiLine is the kvm_irq_level.irq value for shared peripheral interrupt
// intid (32 and up): the type field says SPI, the vCPU fields are unused.
func spiLine(intid uint32) (uint32, error) {
	if intid < firstSPI || intid > maxIRQNumInLayout {
		return 0, fmt.Errorf("interrupt %d is not an SPI (32..%d)", intid, maxIRQNumInLayout)
	}
	return irqTypeSPI<<irqTypeShift | intid, nil
}

// struct kvm_irq_routing: a header (u32 nr, u32 flags) followed by nr
// struct kvm_irq_routing_entry.
type irqRoutingHeader struct {
	Nr    uint32
	Flags uint32
}

const sizeofIRQRouting = 8

// struct kvm_irq_routing_entry with its union as the MSI member
// (struct kvm_irq_routing_msi: address_lo, address_hi, data, devid) and
// the rest of the union's 32 bytes.
type irqRoutingEntry struct {
	GSI       uint32
	Type      uint32
	Flags     uint32
	Pad       uint32
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	DevID     uint32
	_         [4]uint32
}

const sizeofIRQRoutingEntry = 48

// irqRoutingIrqchip is struct kvm_irq_routing_entry with its union as the
// irqchip member (struct kvm_irq_routing_irqchip: irqchip, pin): on
// arm64, pin p of irqchip 0 is the SPI with INTID 32+p.
type irqRoutingIrqchip struct {
	GSI     uint32
	Type    uint32
	Flags   uint32
	Pad     uint32
	Irqchip uint32
	Pin     uint32
	_       [6]uint32
}

// irqchipNumPins is KVM_IRQCHIP_NUM_PINS on arm64 (1020 - 32: the SPIs).
const irqchipNumPins = 988

const (
	irqRoutingIrqchipType = 1      // KVM_IRQ_ROUTING_IRQCHIP
	irqRoutingMSI         = 2      // KVM_IRQ_ROUTING_MSI
	msiValidDevID         = 1 << 0 // KVM_MSI_VALID_DEVID
)

// struct kvm_irqfd.
type irqfd struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

const sizeofIRQFD = 32

const (
	irqfdFlagDeassign = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN
	irqfdFlagResample = 1 << 1 // KVM_IRQFD_FLAG_RESAMPLE
)

// struct kvm_ioeventfd.
type ioeventfd struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

const sizeofIOEventFD = 64

const (
	ioeventfdFlagDatamatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdFlagPIO       = 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	ioeventfdFlagDeassign  = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
)

// RequesterID is the PCI requester ID of bus/device/function, which a
// GICv3 ITS takes as the device ID of the function's MSIs (the device
// tree's msi-map maps requester IDs to device IDs one to one).
func RequesterID(bus, dev, fn int) uint32 {
	return uint32(bus&0xff)<<8 | uint32(dev&0x1f)<<3 | uint32(fn&7)
}

// struct kvm_run: the offsets this package reads.
const (
	runExitReason = 8
	runExitUnion  = 32
	// mmio: u64 phys_addr; u8 data[8]; u32 len; u8 is_write.
	mmioAddrOff    = runExitUnion
	mmioDataOff    = runExitUnion + 8
	mmioLenOff     = runExitUnion + 16
	mmioIsWriteOff = runExitUnion + 20
	// system_event: u32 type; u32 ndata; u64 data[16].
	sysEventTypeOff = runExitUnion
	// arm_nisv: u64 esr_iss; u64 fault_ipa.
	nisvESROff  = runExitUnion
	nisvAddrOff = runExitUnion + 8
	// fail_entry: u64 hardware_entry_failure_reason; u32 cpu.
	failEntryReasonOff = runExitUnion
	// internal: u32 suberror.
	internalSuberrorOff = runExitUnion
)

// Exit reasons (KVM_EXIT_*).
const (
	exitUnknown       = 0
	exitException     = 1
	exitHypercall     = 3
	exitDebug         = 4
	exitMMIO          = 6
	exitShutdown      = 8
	exitFailEntry     = 9
	exitIntr          = 10
	exitInternalError = 17
	exitSystemEvent   = 24
	exitARMNISV       = 28
)

// System event types (KVM_SYSTEM_EVENT_*).
const (
	systemEventShutdown = 1
	systemEventReset    = 2
	systemEventCrash    = 3
)

// ONE_REG identifiers: KVM_REG_ARM64 | KVM_REG_SIZE_U64 | class | index.
const (
	regARM64   = 0x6000000000000000
	regSizeU64 = 0x0030000000000000
	regCore    = 0x0010 << 16 // KVM_REG_ARM_CORE
	regSysreg  = 0x0013 << 16 // KVM_REG_ARM64_SYSREG
)

// CoreReg is the ONE_REG id of a 64-bit field of struct kvm_regs, given
// its byte offset (the id carries the offset in 32-bit words).
func CoreReg(offset uint64) uint64 {
	return regARM64 | regSizeU64 | regCore | offset/4
}

// Offsets in struct kvm_regs (struct user_pt_regs first: x0..x30, sp, pc,
// pstate).
const (
	offX0     = 0
	offPC     = 32 * 8
	offPState = 33 * 8
)

// XReg is the ONE_REG id of general-purpose register Xn (0..30).
func XReg(n int) uint64 { return CoreReg(uint64(offX0 + 8*n)) }

// Register ids the platform uses.
var (
	RegPC     = CoreReg(offPC)
	RegPState = CoreReg(offPState)
	// RegMPIDR is MPIDR_EL1 (op0 3, op1 0, CRn 0, CRm 0, op2 5).
	RegMPIDR = SysReg(3, 0, 0, 0, 5)
)

// SysReg is the ONE_REG id of the system register op0, op1, CRn, CRm, op2.
func SysReg(op0, op1, crn, crm, op2 uint64) uint64 {
	return regARM64 | regSizeU64 | regSysreg | op0<<14 | op1<<11 | crn<<7 | crm<<3 | op2
}

// ESR_EL2 data-abort syndrome fields (ARM ARM D17.2.37), for the report of
// an access KVM could not decode.
const (
	esrISV   = 1 << 24
	esrWnR   = 1 << 6
	esrS1PTW = 1 << 7
)

// DescribeDataAbort spells out an ESR ISS that KVM handed back because it
// carries no valid instruction syndrome (ISV clear): the guest accessed
// MMIO with an instruction a VMM cannot emulate from the syndrome alone
// (a load/store pair, writeback addressing, SIMD).
func DescribeDataAbort(iss uint64) string {
	dir := "read"
	if iss&esrWnR != 0 {
		dir = "write"
	}
	s := dir
	if iss&esrISV == 0 {
		s += ", no instruction syndrome (ISV=0: load/store pair, writeback or SIMD access)"
	}
	if iss&esrS1PTW != 0 {
		s += ", during a stage-1 page-table walk"
	}
	return s
}

// Snapshot ABI: MP state, device attributes read back, and the vGICv3 and
// ITS register groups and control attributes
// (Documentation/virt/kvm/devices/arm-vgic-v3.rst, arm-vgic-its.rst).
var (
	ioctlGetMPState     = ioctlNum(iocRead, 0x98, sizeofMPState)
	ioctlSetMPState     = ioctlNum(iocWrite, 0x99, sizeofMPState)
	ioctlGetDeviceAttr  = ioctlNum(iocWrite, 0xe2, sizeofDeviceAttr)
	ioctlHasDeviceAttr  = ioctlNum(iocWrite, 0xe3, sizeofDeviceAttr)
	sizeofMPState       = uintptr(4) // struct kvm_mp_state { __u32 mp_state; }
	regSizeMask         = uint64(0x00f0000000000000)
	regSizeShift        = 52
	maxRegBytes         = 256       // KVM_REG_SIZE_U2048, an SVE Z register
	vgicGroupDistRegs   = uint32(1) // KVM_DEV_ARM_VGIC_GRP_DIST_REGS
	vgicGroupRedistRegs = uint32(5) // KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
	vgicGroupCPUSysregs = uint32(6) // KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS
	vgicGroupLevelInfo  = uint32(7) // KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO
	vgicGroupITSRegs    = uint32(8) // KVM_DEV_ARM_VGIC_GRP_ITS_REGS
	vgicSavePending     = uint64(3) // KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES
	itsSaveTables       = uint64(1) // KVM_DEV_ARM_ITS_SAVE_TABLES
	itsRestoreTables    = uint64(2) // KVM_DEV_ARM_ITS_RESTORE_TABLES
	levelInfoShift      = 10        // KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT
	levelInfoLineLevel  = uint64(0) // VGIC_LEVEL_INFO_LINE_LEVEL
)

// MP states of an arm64 vCPU (KVM_MP_STATE_*).
const (
	MPRunnable  = 0  // KVM_MP_STATE_RUNNABLE
	MPStopped   = 5  // KVM_MP_STATE_STOPPED: PSCI CPU_OFF, or created powered off
	MPSuspended = 10 // KVM_MP_STATE_SUSPENDED: suspended in KVM (PSCI SYSTEM_SUSPEND)
)

// The architected timer's ONE_REG ids. <uapi/asm/kvm.h> gives
// KVM_REG_ARM_TIMER_CNT and KVM_REG_ARM_TIMER_CVAL each other's system
// register encodings (a mistake kept for the ABI's sake): the ids below
// are the header's, not the architectural encodings of CNTVCT_EL0 and
// CNTV_CVAL_EL0.
var (
	RegTimerCtl  = SysReg(3, 3, 14, 3, 1)
	RegTimerCnt  = SysReg(3, 3, 14, 3, 2)
	RegTimerCval = SysReg(3, 3, 14, 0, 2)
)

// RegBytes is the size in bytes of the register id names (the
// KVM_REG_SIZE field), or an error for a size no register has.
func RegBytes(id uint64) (int, error) {
	n := 1 << ((id & regSizeMask) >> regSizeShift)
	if n > maxRegBytes {
		return 0, fmt.Errorf("register %#x: size field says %d bytes (the largest register is %d)", id, n, maxRegBytes)
	}
	return n, nil
}

// AffinityAttr is an MPIDR_EL1 value as the vGIC's device attributes
// encode a CPU: Aff3..Aff0 in bits 63..32 of the attribute.
func AffinityAttr(mpidr uint64) uint64 {
	return (mpidr&0xffffff | (mpidr>>32&0xff)<<24) << 32
}
