//go:build arm64

package mshvabi

import "fmt"

// The arm64 side of the /dev/mshv ABI: what an arm64 backend would read and
// write through the same ioctls and pass-through hypercalls as on x86. No
// backend uses it yet (see package mshvarm and the README, "MSHV on arm64").
//
// Sources: the register ids are those of hvgdk_mini.h as carried by
// rust-vmm/mshv (HVGDK_MINI_H_VERSION 25294); the message layouts are
// include/hyperv/hvhdk.h (hv_arm64_memory_intercept_message, kernel v6.19+)
// and rust-vmm/mshv's hvhdk.h (hv_arm64_reset_intercept_message, which the
// kernel headers do not define). Every hypervisor struct is packed; the Go
// structs below have the same offsets without padding, which
// abi_arm64_test.go checks. Values that no readable source confirmed (the
// codes of the GIC LPI/PPI partition properties) are deliberately absent.

// Arm64 hv_register_name values, for HVCALL_GET/SET_VP_REGISTERS. The VP
// register page has no arm64 layout, so hypercalls are the only way in.
const (
	Arm64RegX0     = 0x00020000 // X0..X28 consecutive, see Arm64RegX
	Arm64RegFP     = 0x0002001D // X29
	Arm64RegLR     = 0x0002001E // X30
	Arm64RegSP     = 0x0002001F // the SP of the current EL
	Arm64RegSPEL0  = 0x00020020
	Arm64RegSPEL1  = 0x00020021
	Arm64RegPC     = 0x00020022
	Arm64RegPSTATE = 0x00020023
	Arm64RegQ0     = 0x00030000 // Q0..Q31 consecutive, 128-bit values

	Arm64RegDAIF = 0x00021004

	Arm64RegMPIDREL1      = 0x00040001
	Arm64RegSCTLREL1      = 0x00040002
	Arm64RegACTLREL1      = 0x00040003
	Arm64RegCPACREL1      = 0x00040004
	Arm64RegTTBR0EL1      = 0x00040005
	Arm64RegTTBR1EL1      = 0x00040006
	Arm64RegTCREL1        = 0x00040007
	Arm64RegESREL1        = 0x00040008
	Arm64RegFAREL1        = 0x00040009
	Arm64RegPAREL1        = 0x0004000A
	Arm64RegMAIREL1       = 0x0004000B
	Arm64RegVBAREL1       = 0x0004000C
	Arm64RegCONTEXTIDREL1 = 0x0004000D
	Arm64RegTPIDREL1      = 0x0004000E
	Arm64RegTPIDRROEL0    = 0x00040010
	Arm64RegTPIDREL0      = 0x00040011
	Arm64RegFPCR          = 0x00040012
	Arm64RegFPSR          = 0x00040013
	Arm64RegSPSREL1       = 0x00040014
	Arm64RegELREL1        = 0x00040015
	Arm64RegISREL1        = 0x0004004A

	Arm64RegIDAA64PFR0EL1  = 0x00022020
	Arm64RegIDAA64PFR1EL1  = 0x00022021
	Arm64RegIDAA64DFR0EL1  = 0x00022028
	Arm64RegIDAA64ISAR0EL1 = 0x00022030
	Arm64RegIDAA64ISAR1EL1 = 0x00022031
	Arm64RegIDAA64MMFR0EL1 = 0x00022038
	Arm64RegIDAA64MMFR1EL1 = 0x00022039
	Arm64RegIDAA64MMFR2EL1 = 0x0002203A

	Arm64RegCNTKCTLEL1  = 0x00058008
	Arm64RegCNTVCTLEL0  = 0x0005800E
	Arm64RegCNTVCVALEL0 = 0x0005800F
	Arm64RegCNTVCTEL0   = 0x00058011
	// Arm64RegCNTVOFFEL2 exists in the enum, but QEMU's arm64 MSHV series
	// reports that the hypervisor refuses both reads and writes of it.
	Arm64RegCNTVOFFEL2 = 0x00058012

	// Arm64RegGICRBaseGPA is per VP: where that VP's GICv3 redistributor
	// (RD and SGI frames) appears in the guest's physical address space.
	Arm64RegGICRBaseGPA = 0x00063000
	// Arm64RegSINTReservedInterruptID is read by the root partition's own
	// kernel (the PPI its SynIC interrupts use), not by a VMM.
	Arm64RegSINTReservedInterruptID = 0x00070001
)

// Arm64RegX returns the register name of Xn for n in 0..30 (29 is FP, 30
// is LR). n = 31 is XZR or SP depending on the instruction and has no
// single name, so it is refused like any other n out of range.
func Arm64RegX(n int) (uint32, error) {
	switch {
	case n >= 0 && n <= 28:
		return Arm64RegX0 + uint32(n), nil
	case n == 29:
		return Arm64RegFP, nil
	case n == 30:
		return Arm64RegLR, nil
	}
	return 0, fmt.Errorf("arm64 general register X%d has no MSHV register name", n)
}

// Arm64RegQ returns the register name of the 128-bit SIMD register Qn.
func Arm64RegQ(n int) (uint32, error) {
	if n < 0 || n > 31 {
		return 0, fmt.Errorf("arm64 SIMD register Q%d does not exist", n)
	}
	return Arm64RegQ0 + uint32(n), nil
}

// Partition properties that place the hypervisor's GICv3, set with
// HVCALL_SET_PARTITION_PROPERTY before MSHV_INITIALIZE_PARTITION.
// GIC_LPI_INT_ID_BITS, GIC_PPI_OVERFLOW_INTERRUPT_FROM_CNTV and
// GIC_PPI_PERFORMANCE_MONITORS_INTERRUPT are needed too; their codes were
// not in any source that could be read, so they are not defined here.
const (
	PropGICDBaseAddress           = 0x00050028
	PropGITSTranslaterBaseAddress = 0x00050029
)

// Arm64SynInterceptSystemReset is the bit number, in bank 0 of
// hv_partition_synthetic_processor_features, of intercept_system_reset (arm64
// only): the hypervisor can report PSCI SYSTEM_OFF/SYSTEM_RESET to the VMM as
// MsgARM64ResetIntercept. Whether a VMM must set it to get that message is
// not confirmed by any VMM.
const Arm64SynInterceptSystemReset = 42

// hv_interrupt_control on arm64: the low 32 bits are the interrupt type, and
// in the high 32 bits bit 2 is "asserted" (x86 has level/logical-mode bits
// there instead).
const (
	Arm64InterruptTypeFixed       = 0
	Arm64InterruptControlAsserted = uint64(1) << (32 + 2)
)

// Arm64AssertInterrupt builds the HVCALL_ASSERT_VIRTUAL_INTERRUPT input that
// raises (asserted) or lowers an SPI by INTID. DestAddr is not used on arm64
// (the kernel's own helper leaves it zero there); the target is whatever the
// guest programmed in the GIC for that SPI. PPIs and SGIs are refused: they
// belong to one VP and the input names none. The partition id is filled in
// by the kernel.
func Arm64AssertInterrupt(intid uint32, asserted bool) (InputAssertVirtualInterrupt, error) {
	if intid < 32 || intid >= 1020 {
		return InputAssertVirtualInterrupt{}, fmt.Errorf("GIC INTID %d is not an SPI (32..1019)", intid)
	}
	ctl := uint64(Arm64InterruptTypeFixed)
	if asserted {
		ctl |= Arm64InterruptControlAsserted
	}
	return InputAssertVirtualInterrupt{Control: ctl, Vector: intid}, nil
}

// Arm64RouteEntry builds an MSHV_SET_MSI_ROUTING entry that sends an irqfd
// on gsi to a GIC INTID. The kernel (mshv_copy_girq_info) takes the INTID
// from data & 0xff and the target VP from address_lo bits 12-19, and
// refuses a nonzero address_hi, so an INTID or VP index above 255 cannot be
// routed at all.
func Arm64RouteEntry(gsi, intid, vp uint32) (UserIRQEntry, error) {
	if intid < 32 || intid > 0xff {
		return UserIRQEntry{}, fmt.Errorf("GSI %d: INTID %d cannot be routed (the kernel keeps 8 bits; SPIs start at 32)", gsi, intid)
	}
	if vp > 0xff {
		return UserIRQEntry{}, fmt.Errorf("GSI %d: VP index %d cannot be routed (the kernel keeps 8 bits)", gsi, vp)
	}
	return UserIRQEntry{GSI: gsi, AddressLo: vp << 12, Data: intid}, nil
}

// Arm64InterceptMessageHeader is struct hv_arm64_intercept_message_header
// (24 B).
type Arm64InterceptMessageHeader struct {
	VPIndex           uint32
	InstructionLength uint8
	// InterceptAccessType is 0 read, 1 write, 2 execute.
	InterceptAccessType uint8
	// ExecutionState: bits 0-1 EL, 2 debug_active, 3 interruption_pending,
	// 4-7 VTL, 8 virtualization_fault_active.
	ExecutionState uint16
	PC             uint64
	CPSR           uint64
}

// Arm64 memory_access_info bits.
const (
	Arm64MemAccessGVAValid     = 1 << 0
	Arm64MemAccessGVAGPAValid  = 1 << 1
	Arm64MemAccessHypercallOut = 1 << 2
)

// Arm64MemoryInterceptMessage is struct hv_arm64_memory_intercept_message
// (64 B), the payload of MsgUnmappedGPA and MsgGPAIntercept on arm64. The
// hypervisor does not emulate the access: Syndrome is the data abort's ESR
// (EC, IL, and an ISS whose ISV, SAS, SSE, SRT, SF and WnR fields describe
// the access when ISV is set), and the VMM performs the access, writes the
// transfer register and advances PC (by 4, or 2 when IL is clear).
type Arm64MemoryInterceptMessage struct {
	Header               Arm64InterceptMessageHeader
	CacheType            uint32
	InstructionByteCount uint8
	MemoryAccessInfo     uint8
	Reserved1            uint16
	InstructionBytes     [4]byte
	Reserved2            uint32
	GuestVirtualAddress  uint64
	GuestPhysicalAddress uint64
	Syndrome             uint64
}

// Arm64ResetInterceptMessage is struct hv_arm64_reset_intercept_message
// (32 B), the payload of MsgARM64ResetIntercept.
type Arm64ResetInterceptMessage struct {
	Header    Arm64InterceptMessageHeader
	ResetType uint32
	ResetCode uint32
}

// Arm64 reset types (enum hv_arm64_reset_type).
const (
	Arm64ResetPowerOff     = 0
	Arm64ResetReboot       = 1
	Arm64ResetSystemReset2 = 2
	Arm64ResetHibernate    = 3
)

// Arm64MemoryIntercept decodes the payload of an arm64 memory intercept.
// It refuses any other message type and an instruction byte count the
// structure cannot hold. Like the kernel and the other VMMs it does not
// trust payload_size: the 240-byte payload always holds the structure.
func (m *Message) Arm64MemoryIntercept() (Arm64MemoryInterceptMessage, error) {
	var v Arm64MemoryInterceptMessage
	switch m.Header.MessageType {
	case MsgUnmappedGPA, MsgGPAIntercept:
	default:
		return v, fmt.Errorf("message type %#x is not an arm64 memory intercept", m.Header.MessageType)
	}
	v, _ = Load[Arm64MemoryInterceptMessage](m.Payload[:])
	if n := v.InstructionByteCount; n > uint8(len(v.InstructionBytes)) {
		return v, fmt.Errorf("arm64 memory intercept at GPA %#x claims %d instruction bytes (at most %d)",
			v.GuestPhysicalAddress, n, len(v.InstructionBytes))
	}
	return v, nil
}

// Arm64ResetIntercept decodes the payload of MsgARM64ResetIntercept.
func (m *Message) Arm64ResetIntercept() (Arm64ResetInterceptMessage, error) {
	var v Arm64ResetInterceptMessage
	if m.Header.MessageType != MsgARM64ResetIntercept {
		return v, fmt.Errorf("message type %#x is not an arm64 reset intercept", m.Header.MessageType)
	}
	v, _ = Load[Arm64ResetInterceptMessage](m.Payload[:])
	if v.ResetType > Arm64ResetHibernate {
		return v, fmt.Errorf("arm64 reset intercept from VP %d has unknown reset type %d", v.Header.VPIndex, v.ResetType)
	}
	return v, nil
}

// C sizes of the arm64 message structures (packed).
const (
	SizeofArm64InterceptHeader = 24
	SizeofArm64MemoryIntercept = 64
	SizeofArm64ResetIntercept  = 32
)
