package mshvabi

// hv_register_name values (x64), mshv-abi.md §4.1.
const (
	RegExplicitSuspend       = 0x0
	RegInterceptSuspend      = 0x1
	RegInstructionEmuHints   = 0x2
	RegDispatchSuspend       = 0x3
	RegInternalActivityState = 0x4
	RegHypervisorVersion     = 0x100
	RegGuestIdle             = 0x250

	RegPendingInterruption   = 0x00010002
	RegInterruptState        = 0x00010003
	RegPendingEvent0         = 0x00010004
	RegPendingEvent1         = 0x00010005
	RegDeliverabilityNotif   = 0x00010006
	RegPendingDebugException = 0x00010007

	RegRAX    = 0x00020000
	RegRCX    = 0x00020001
	RegRDX    = 0x00020002
	RegRBX    = 0x00020003
	RegRSP    = 0x00020004
	RegRBP    = 0x00020005
	RegRSI    = 0x00020006
	RegRDI    = 0x00020007
	RegR8     = 0x00020008
	RegR9     = 0x00020009
	RegR10    = 0x0002000A
	RegR11    = 0x0002000B
	RegR12    = 0x0002000C
	RegR13    = 0x0002000D
	RegR14    = 0x0002000E
	RegR15    = 0x0002000F
	RegRIP    = 0x00020010
	RegRFLAGS = 0x00020011

	RegXMM0             = 0x00030000 // XMM0..XMM15 consecutive
	RegFPMMX0           = 0x00030010 // FP_MMX0..7 consecutive
	RegFPControlStatus  = 0x00030018
	RegXMMControlStatus = 0x00030019

	RegCR0  = 0x00040000
	RegCR2  = 0x00040001
	RegCR3  = 0x00040002
	RegCR4  = 0x00040003
	RegCR8  = 0x00040004
	RegXFEM = 0x00040005

	RegIntermediateCR0 = 0x00041000
	RegIntermediateCR3 = 0x00041002
	RegIntermediateCR4 = 0x00041003
	RegIntermediateCR8 = 0x00041004

	RegDR0 = 0x00050000
	RegDR1 = 0x00050001
	RegDR2 = 0x00050002
	RegDR3 = 0x00050003
	RegDR6 = 0x00050004
	RegDR7 = 0x00050005

	RegES   = 0x00060000
	RegCS   = 0x00060001
	RegSS   = 0x00060002
	RegDS   = 0x00060003
	RegFS   = 0x00060004
	RegGS   = 0x00060005
	RegLDTR = 0x00060006
	RegTR   = 0x00060007
	RegIDTR = 0x00070000
	RegGDTR = 0x00070001

	RegTSC             = 0x80000
	RegEFER            = 0x80001
	RegKernelGSBase    = 0x80002
	RegAPICBase        = 0x80003
	RegPAT             = 0x80004
	RegSysenterCS      = 0x80005
	RegSysenterEIP     = 0x80006
	RegSysenterESP     = 0x80007
	RegSTAR            = 0x80008
	RegLSTAR           = 0x80009
	RegCSTAR           = 0x8000A
	RegSFMASK          = 0x8000B
	RegInitialAPICID   = 0x8000C
	RegMTRRCap         = 0x8000D
	RegMTRRDefType     = 0x8000E
	RegMTRRPhysBase0   = 0x80010 // ..0x8001F
	RegMTRRPhysMask0   = 0x80040 // ..0x8004F
	RegMTRRFix64K00000 = 0x80070
	RegMTRRFix16K80000 = 0x80071
	RegMTRRFix16KA0000 = 0x80072
	RegMTRRFix4KC0000  = 0x80073 // ..0x8007A
	RegTSCAux          = 0x8007B
	RegBNDCFGS         = 0x8007C
	RegDebugCtl        = 0x8007D
	RegSpecCtrl        = 0x80084
	RegUXSS            = 0x8008B
	// CET: the registers behind the XSAVE components CET_U (U_CET,
	// PL3_SSP) and CET_S (PL0-2_SSP), and S_CET and the interrupt SSP
	// table, as hvgdk_mini.h numbers them (rust-vmm msr_to_hv_reg_name
	// maps the MSRs to them). SSP, the current shadow-stack pointer, has
	// no MSR.
	RegUCET   = 0x8008C
	RegSCET   = 0x8008D
	RegSSP    = 0x8008E
	RegPL0SSP = 0x8008F // ..PL3_SSP 0x80092
	RegISST   = 0x80093
	// RegTSCDeadline is IA32_TSC_DEADLINE, the LAPIC timer's deadline in
	// TSC-deadline mode. Not in the Linux headers' hv_register_name (nor
	// in rust-vmm's msr_to_hv_reg_name), but Microsoft's own hypervisor
	// definitions in OpenVMM (vm/hv1/hvdef, HvX64RegisterName) list it as
	// TscDeadline 0x00080095, between TscVirtualMultiplier 0x80094 and
	// TscAdjust 0x80096; Windows' WHv API has it as 0x2095.
	RegTSCDeadline = 0x80095
	RegTSCAdjust   = 0x80096
	RegMiscEnable  = 0x800A0

	RegHypercall    = 0x90001
	RegGuestOSID    = 0x90002
	RegVPIndex      = 0x90003
	RegTimeRefCount = 0x90004
	RegVPAssistPage = 0x90013
	RegReferenceTSC = 0x90017

	RegSINT0    = 0xA0000
	RegSCONTROL = 0xA0010
	RegSVERSION = 0xA0011
	RegSIEFP    = 0xA0012
	RegSIMP     = 0xA0013
	RegEOM      = 0xA0014
)

// Segment attribute bits (hv_x64_segment_register.attributes).
const (
	SegAttrTypeMask = 0xF
	SegAttrS        = 1 << 4
	SegAttrDPLShift = 5
	SegAttrP        = 1 << 7
	SegAttrAVL      = 1 << 12
	SegAttrL        = 1 << 13
	SegAttrDB       = 1 << 14
	SegAttrG        = 1 << 15
)

// Pending interruption register bits.
const (
	PendingIntrPending      = 1 << 0
	PendingIntrTypeShift    = 1
	PendingIntrTypeMask     = 0x7
	PendingIntrDeliverErr   = 1 << 4
	PendingIntrInsnLenShift = 5
	PendingIntrVectorShift  = 16
	PendingIntrErrorShift   = 32

	PendingTypeExtInt    = 0
	PendingTypeNMI       = 2
	PendingTypeException = 3
	PendingTypeSoftInt   = 4
	PendingTypePrivSWExc = 5
	PendingTypeSWExc     = 6

	// hv_x64_pending_exception_event (PENDING_EVENT0/1): event_pending
	// bit 0, event_type bits 1-3, deliver_error_code bit 8, vector bits
	// 16-31, error_code bits 32-63, exception_parameter in the high half.
	// Types from enum hv_x64_pending_event_type: an exception is 0.
	PendingEventPending         = 1 << 0
	PendingEventTypeShift       = 1
	PendingEventDeliverErr      = 1 << 8
	PendingEventException       = 0
	PendingEventMemoryIntercept = 1
	PendingEventNestedMemory    = 2
	PendingEventVirtualization  = 3
	PendingEventHypercallOutput = 4
	PendingEventExtInt          = 5
	PendingEventShadowIPT       = 6

	InterruptStateShadow    = 1 << 0
	InterruptStateNMIMasked = 1 << 1

	InternalActivityStartupSuspend = 1 << 0
	InternalActivityHaltSuspend    = 1 << 1
	InternalActivityIdleSuspend    = 1 << 2
)

// MSRRegisterName maps an MSR index to the hv_register_name that reaches
// it; ok is false for MSRs MSHV cannot get or set (rust-vmm's
// msr_to_hv_reg_name set, mshv-abi.md §4.1).
func MSRRegisterName(msr uint32) (name uint32, ok bool) {
	switch {
	case msr >= 0x200 && msr <= 0x20F: // MTRR phys base/mask pairs 0-7
		i := (msr - 0x200) / 2
		if (msr-0x200)%2 == 0 {
			return RegMTRRPhysBase0 + i, true
		}
		return RegMTRRPhysMask0 + i, true
	case msr >= 0x268 && msr <= 0x26F:
		return RegMTRRFix4KC0000 + (msr - 0x268), true
	case msr >= 0x40000090 && msr <= 0x4000009F:
		return RegSINT0 + (msr - 0x40000090), true
	case msr >= 0x6A4 && msr <= 0x6A7: // IA32_PL0_SSP..IA32_PL3_SSP
		return RegPL0SSP + (msr - 0x6A4), true
	}
	n, ok := msrNames[msr]
	return n, ok
}

var msrNames = map[uint32]uint32{
	0x10:       RegTSC,
	0xC0000080: RegEFER,
	0xC0000102: RegKernelGSBase,
	0x1B:       RegAPICBase,
	0x277:      RegPAT,
	0x174:      RegSysenterCS,
	0x176:      RegSysenterEIP,
	0x175:      RegSysenterESP,
	0xC0000081: RegSTAR,
	0xC0000082: RegLSTAR,
	0xC0000083: RegCSTAR,
	0xC0000084: RegSFMASK,
	0xFE:       RegMTRRCap,
	0x2FF:      RegMTRRDefType,
	0x250:      RegMTRRFix64K00000,
	0x258:      RegMTRRFix16K80000,
	0x259:      RegMTRRFix16KA0000,
	0xC0000103: RegTSCAux,
	0xD90:      RegBNDCFGS,
	0x1D9:      RegDebugCtl,
	0x3B:       RegTSCAdjust,
	0x6E0:      RegTSCDeadline,
	0x48:       RegSpecCtrl,
	0x1A0:      RegMiscEnable,
	0xDA0:      RegUXSS,
	0x6A0:      RegUCET, // IA32_U_CET
	0x6A2:      RegSCET, // IA32_S_CET
	0x6A8:      RegISST, // IA32_INTERRUPT_SSP_TABLE_ADDR
	0x40000000: RegGuestOSID,
	0x40000001: RegHypercall,
	0x40000080: RegSCONTROL,
	0x40000082: RegSIEFP,
	0x40000083: RegSIMP,
	0x40000084: RegEOM,
	0x40000021: RegReferenceTSC,
	0x40000073: RegVPAssistPage,
}

// MSRIndexList is every MSR index MSRRegisterName accepts, in a stable order.
func MSRIndexList() []uint32 {
	l := []uint32{0x10, 0xC0000080, 0xC0000102, 0x1B, 0x277, 0x174, 0x175, 0x176,
		0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xFE, 0x2FF}
	for i := uint32(0x200); i <= 0x20F; i++ {
		l = append(l, i)
	}
	l = append(l, 0x250, 0x258, 0x259)
	for i := uint32(0x268); i <= 0x26F; i++ {
		l = append(l, i)
	}
	l = append(l, 0xC0000103, 0x1D9, 0x3B, 0x6E0, 0x48, 0x1A0, 0xDA0, 0x6A0, 0x6A2, 0x6A4, 0x6A5, 0x6A6, 0x6A7, 0x6A8, 0x40000000, 0x40000001,
		0x40000080, 0x40000082, 0x40000083, 0x40000084, 0x40000021, 0x40000073)
	for i := uint32(0x40000090); i <= 0x4000009F; i++ {
		l = append(l, i)
	}
	return l
}
