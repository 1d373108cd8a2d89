// Package mshvabi is the /dev/mshv ABI (upstream Linux 6.15 plus the merged
// later additions) as Go structs, request numbers and constants, and the
// Device seam the MSHV backend talks through.
//
// It exists so that everything the kernel defines byte for byte lives in one
// place with size/offset tests against the reference layouts, and so that
// unsafe is confined here: the backend in package mshv never builds a raw
// pointer itself, it calls the typed wrappers in calls.go. The Device
// interface lets the same backend run on the real /dev/mshv (OSDevice) or
// on an in-process stand-in (package mshvsim).
package mshvabi

// ioctl encoding (_IOC): dir<<30 | size<<16 | type<<8 | nr.
const (
	iocWrite = 1
	iocRead  = 2

	// IoctlType is MSHV_IOCTL, the ioctl type letter.
	IoctlType = 0xB8
)

func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | IoctlType<<8 | nr }

// Request numbers. The same value can mean different things on different
// fds (for example 0xC010B801 is GET_VP_STATE on a VP fd and the downstream
// GET_HOST_PARTITION_PROPERTY on /dev/mshv).
var (
	// /dev/mshv
	ReqCreatePartition = ioc(iocWrite, 0x00, 16)
	// Partition fd.
	ReqInitializePartition  = ioc(0, 0x00, 0)
	ReqCreateVP             = ioc(iocWrite, 0x01, 4)
	ReqSetGuestMemory       = ioc(iocWrite, 0x02, 32)
	ReqIRQFD                = ioc(iocWrite, 0x03, 16)
	ReqIOEventFD            = ioc(iocWrite, 0x04, 32)
	ReqSetMSIRouting        = ioc(iocWrite, 0x05, 8)
	ReqGetGPAPAccessBitmap  = ioc(iocRead|iocWrite, 0x06, 32)
	ReqRootHvcall           = ioc(iocRead|iocWrite, 0x07, 32)
	ReqGetHostPartitionProp = ioc(iocRead|iocWrite, 0x01, 16) // downstream only, /dev/mshv
	// VP fd.
	ReqRunVP      = ioc(iocRead, 0x00, 256)
	ReqGetVPState = ioc(iocRead|iocWrite, 0x01, 16)
	ReqSetVPState = ioc(iocRead|iocWrite, 0x02, 16)
)

// Partition creation flags (bit numbers of pt_flags).
const (
	PTBitLAPIC               = 0
	PTBitX2APIC              = 1
	PTBitGPASuperPages       = 2
	PTBitCPUAndXSaveFeatures = 3
	PTBitCount               = 4
	PTFlagsMask              = 1<<PTBitCount - 1

	PTIsolationNone = 0

	NumCPUFeatureBanks = 2
)

// mshv_user_mem_region flags.
const (
	MemWritable   = 1 << 0
	MemExecutable = 1 << 1
	MemUnmap      = 1 << 2
)

// mshv_user_irqfd flags.
const (
	IRQFDDeassign = 1 << 0
	IRQFDResample = 1 << 1
)

// mshv_user_ioeventfd flags.
const (
	IOEventFDDatamatch = 1 << 0
	IOEventFDPIO       = 1 << 1
	IOEventFDDeassign  = 1 << 2
)

// MaxGuestIRQs is MSHV_MAX_GUEST_IRQS, the routing table limit.
const MaxGuestIRQs = 4096

// GPAP access bitmap.
const (
	GPAPAccessTypeAccessed = 0
	GPAPAccessTypeDirty    = 1
	GPAPAccessOpNoop       = 0
	GPAPAccessOpClear      = 1
	GPAPAccessOpSet        = 2
	// GPAPBatchPages is how many pages one call covers at most (rust-vmm).
	GPAPBatchPages = 0x10000
)

// MSHV_GET/SET_VP_STATE types.
const (
	VPStateLAPIC           = 0
	VPStateXSave           = 1
	VPStateSIMP            = 2
	VPStateSIEFP           = 3
	VPStateSyntheticTimers = 4
)

// RunVPBufSize is MSHV_RUN_VP_BUF_SZ.
const RunVPBufSize = 256

// VP mmap offsets (in pages).
const (
	VPMmapRegisters        = 0
	VPMmapInterceptMessage = 1
	VPMmapGHCB             = 2
)

// Hypercall codes.
const (
	HvcallGetPartitionProperty    = 0x0044
	HvcallSetPartitionProperty    = 0x0045
	HvcallInstallIntercept        = 0x004d
	HvcallGetVPRegisters          = 0x0050
	HvcallSetVPRegisters          = 0x0051
	HvcallTranslateVirtualAddress = 0x0052
	HvcallReadGPA                 = 0x0053
	HvcallWriteGPA                = 0x0054
	HvcallClearVirtualInterrupt   = 0x0056
	HvcallScrubPartition          = 0x008d
	HvcallRegisterInterceptResult = 0x0091
	HvcallAssertVirtualInterrupt  = 0x0094
	HvcallSignalEventDirect       = 0x00c0
	HvcallPostMessageDirect       = 0x00c1
	HvcallGetGPAPagesAccessStates = 0x00c9
	HvcallGetVPCPUIDValues        = 0x00f4
	HvcallGetPartitionPropertyEx  = 0x0101
	HvcallMaxInput                = 4096
	HvcallMinInput                = 8
	MaxGetRegistersPerCall        = 256
	MaxSetRegistersPerCall        = 127
)

// HV_STATUS values.
const (
	HvStatusSuccess               = 0
	HvStatusInvalidHypercallCode  = 2
	HvStatusInvalidHypercallInput = 3
	HvStatusInvalidAlignment      = 4
	HvStatusInvalidParameter      = 5
	HvStatusAccessDenied          = 6
	HvStatusInvalidPartitionState = 7
	HvStatusOperationDenied       = 8
	HvStatusUnknownProperty       = 9
	HvStatusPropertyOutOfRange    = 0xA
	HvStatusInsufficientMemory    = 0xB
	HvStatusInvalidPartitionID    = 0xD
	HvStatusInvalidVPIndex        = 0xE
	HvStatusNotFound              = 0x10
	HvStatusInvalidVPState        = 0x15
	HvStatusInvalidRegisterValue  = 0x50
	HvStatusOperationFailed       = 0x71
	HvStatusCallPending           = 0x79
)

// Partition property codes.
const (
	PropSyntheticProcFeatures       = 0x00010001
	PropSuspend                     = 0x00020000
	PropTimeFreeze                  = 0x00030003
	PropReferenceTime               = 0x00030005
	PropProcessorsPerSocket         = 0x00050003
	PropGPAPageAccessTracking       = 0x00050005
	PropImplementedPABits           = 0x00050010
	PropUnimplementedMSRAction      = 0x00050017
	PropProcessorXSaveFeatures      = 0x00060002
	PropPhysicalAddressWidth        = 0x00060006
	PropXSaveStates                 = 0x00060007
	PropMaxXSaveDataSize            = 0x00060008
	PropProcessorClockFrequency     = 0x00060009
	PropProcessorFeatures0          = 0x0006000a
	PropProcessorFeatures1          = 0x0006000b
	PropGuestOSID                   = 0x00070000
	PropVMMCapabilities             = 0x00090007
	PropAssignableSyntheticFeatures = 0x00090009

	UnimplementedMSRActionFault       = 0
	UnimplementedMSRActionIgnoreWrite = 1
)

// Synthetic processor feature bits (bank 0).
const (
	SynHypervisorPresent           = 0
	SynHv1                         = 1
	SynAccessVPRunTimeReg          = 2
	SynAccessPartitionRefCounter   = 3
	SynAccessSynICRegs             = 4
	SynAccessSyntheticTimerRegs    = 5
	SynAccessIntrCtrlRegs          = 6
	SynAccessHypercallRegs         = 7
	SynAccessVPIndex               = 8
	SynAccessPartitionReferenceTSC = 9
	SynAccessGuestIdleReg          = 10
	SynAccessFrequencyRegs         = 12
	SynDirectSyntheticTimers       = 24
	SynTBFlushHypercalls           = 27
	SynSyntheticClusterIPI         = 28
	SynAccessVPRegs                = 46
)

// DefaultSyntheticProcFeatures is QEMU's x86 set (mshv-abi.md §2.6).
const DefaultSyntheticProcFeatures uint64 = 1<<SynHypervisorPresent | 1<<SynHv1 |
	1<<SynAccessPartitionRefCounter | 1<<SynAccessSynICRegs | 1<<SynAccessSyntheticTimerRegs |
	1<<SynAccessPartitionReferenceTSC | 1<<SynAccessFrequencyRegs | 1<<SynAccessIntrCtrlRegs |
	1<<SynAccessVPIndex | 1<<SynAccessHypercallRegs | 1<<SynTBFlushHypercalls |
	1<<SynSyntheticClusterIPI | 1<<SynDirectSyntheticTimers | 1<<SynAccessGuestIdleReg

// Interrupt types for ASSERT_VIRTUAL_INTERRUPT (x64).
const (
	InterruptTypeFixed          = 0
	InterruptTypeLowestPriority = 1
	InterruptTypeSMI            = 2
	InterruptTypeRemoteRead     = 3
	InterruptTypeNMI            = 4
	InterruptTypeINIT           = 5
	InterruptTypeSIPI           = 6
	InterruptTypeExtINT         = 7
	InterruptTypeLocalInt0      = 8
	InterruptTypeLocalInt1      = 9

	InterruptControlLevel   = 1 << 32
	InterruptControlLogical = 1 << 33
)

// Intercept types (INSTALL_INTERCEPT, REGISTER_INTERCEPT_RESULT).
const (
	InterceptTypeX64IOPort = 0
	InterceptTypeX64MSR    = 1
	InterceptTypeX64CPUID  = 2
	InterceptTypeException = 3
	InterceptTypeMMIO      = 5

	InterceptAccessRead    = 1
	InterceptAccessWrite   = 2
	InterceptAccessExecute = 4
)

// hv_x64_intercept_message_header execution_state bits.
const (
	ExecStateCPLMask             = 0x3
	ExecStateCR0PE               = 1 << 2
	ExecStateEFERLMA             = 1 << 4
	ExecStateInterruptionPending = 1 << 6
	ExecStateInterruptShadow     = 1 << 12
)

// TRANSLATE_VIRTUAL_ADDRESS control flags and result codes.
const (
	TranslateValidateRead     = 0x1
	TranslateValidateWrite    = 0x2
	TranslateValidateExecute  = 0x4
	TranslatePrivilegeExempt  = 0x8
	TranslateSetPageTableBits = 0x10

	TranslateSuccess            = 0
	TranslatePageNotPresent     = 1
	TranslatePrivilegeViolation = 2
	TranslateInvalidPageTable   = 3
	TranslateGPAUnmapped        = 4
	TranslateGPANoReadAccess    = 5
	TranslateGPANoWriteAccess   = 6
)

// Message types (hv_message_type).
const (
	MsgNone                       = 0x00000000
	MsgUnmappedGPA                = 0x80000000
	MsgGPAIntercept               = 0x80000001
	MsgUnacceptedGPA              = 0x80000003
	MsgGPAAttributeIntercept      = 0x80000004
	MsgTimerExpired               = 0x80000010
	MsgInvalidVPRegisterValue     = 0x80000020
	MsgUnrecoverableException     = 0x80000021
	MsgUnsupportedFeature         = 0x80000022
	MsgOpaqueIntercept            = 0x8000003F
	MsgEventLogBufferComplete     = 0x80000040
	MsgHypercallIntercept         = 0x80000050
	MsgSynICEventIntercept        = 0x80000060
	MsgSynICSINTIntercept         = 0x80000061
	MsgSynICSINTDeliverable       = 0x80000062
	MsgAsyncCallCompletion        = 0x80000070
	MsgSchedulerVPSignalBitset    = 0x80000100
	MsgSchedulerVPSignalPair      = 0x80000101
	MsgX64IOPortIntercept         = 0x80010000
	MsgX64MSRIntercept            = 0x80010001
	MsgX64CPUIDIntercept          = 0x80010002
	MsgX64ExceptionIntercept      = 0x80010003
	MsgX64APICEOI                 = 0x80010004
	MsgX64LegacyFPError           = 0x80010005
	MsgX64IOMMUPRQ                = 0x80010006
	MsgX64Halt                    = 0x80010007
	MsgX64InterruptionDeliverable = 0x80010008
	MsgX64SIPIIntercept           = 0x80010009
	MsgARM64ResetIntercept        = 0x8001000C
	MsgX64SEVVMGEXITIntercept     = 0x80010013
)

var msgNames = map[uint32]string{
	MsgNone: "HVMSG_NONE", MsgUnmappedGPA: "HVMSG_UNMAPPED_GPA", MsgGPAIntercept: "HVMSG_GPA_INTERCEPT",
	MsgUnacceptedGPA: "HVMSG_UNACCEPTED_GPA", MsgGPAAttributeIntercept: "HVMSG_GPA_ATTRIBUTE_INTERCEPT",
	MsgTimerExpired: "HVMSG_TIMER_EXPIRED", MsgInvalidVPRegisterValue: "HVMSG_INVALID_VP_REGISTER_VALUE",
	MsgUnrecoverableException: "HVMSG_UNRECOVERABLE_EXCEPTION", MsgUnsupportedFeature: "HVMSG_UNSUPPORTED_FEATURE",
	MsgOpaqueIntercept: "HVMSG_OPAQUE_INTERCEPT", MsgEventLogBufferComplete: "HVMSG_EVENTLOG_BUFFERCOMPLETE",
	MsgHypercallIntercept: "HVMSG_HYPERCALL_INTERCEPT", MsgSynICEventIntercept: "HVMSG_SYNIC_EVENT_INTERCEPT",
	MsgSynICSINTIntercept: "HVMSG_SYNIC_SINT_INTERCEPT", MsgSynICSINTDeliverable: "HVMSG_SYNIC_SINT_DELIVERABLE",
	MsgAsyncCallCompletion: "HVMSG_ASYNC_CALL_COMPLETION", MsgSchedulerVPSignalBitset: "HVMSG_SCHEDULER_VP_SIGNAL_BITSET",
	MsgSchedulerVPSignalPair: "HVMSG_SCHEDULER_VP_SIGNAL_PAIR", MsgX64IOPortIntercept: "HVMSG_X64_IO_PORT_INTERCEPT",
	MsgX64MSRIntercept: "HVMSG_X64_MSR_INTERCEPT", MsgX64CPUIDIntercept: "HVMSG_X64_CPUID_INTERCEPT",
	MsgX64ExceptionIntercept: "HVMSG_X64_EXCEPTION_INTERCEPT", MsgX64APICEOI: "HVMSG_X64_APIC_EOI",
	MsgX64LegacyFPError: "HVMSG_X64_LEGACY_FP_ERROR", MsgX64IOMMUPRQ: "HVMSG_X64_IOMMU_PRQ",
	MsgX64Halt: "HVMSG_X64_HALT", MsgX64InterruptionDeliverable: "HVMSG_X64_INTERRUPTION_DELIVERABLE",
	MsgX64SIPIIntercept: "HVMSG_X64_SIPI_INTERCEPT", MsgARM64ResetIntercept: "HVMSG_ARM64_RESET_INTERCEPT",
	MsgX64SEVVMGEXITIntercept: "HVMSG_X64_SEV_VMGEXIT_INTERCEPT",
}

// MessageName names a message type (or gives its hex value).
func MessageName(t uint32) string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return "unknown message type"
}

// Intercept access types (header.intercept_access_type).
const (
	AccessRead    = 0
	AccessWrite   = 1
	AccessExecute = 2
)

// Memory intercept access info bits.
const (
	MemAccessGVAValid    = 1 << 0
	MemAccessGVAGPAValid = 1 << 1
)

// I/O port access info bits.
const (
	IOAccessSizeMask = 0x7
	IOAccessString   = 1 << 3
	IOAccessRep      = 1 << 4
)

// Register page dirty classes.
const (
	RegPageDirtyGeneral = 1 << 0
	RegPageDirtyIP      = 1 << 1
	RegPageDirtyXMM     = 1 << 2
	RegPageDirtySegment = 1 << 3
	RegPageDirtyFlags   = 1 << 4
)
