package mshvabi

// The structs below mirror the kernel and hypervisor headers byte for byte
// (mshv-abi.md; checked by layout_test.go against mshv-layouts.txt). Where C
// packs a struct to a size that is not a multiple of 8, Go pads the tail;
// the Sizeof* constants give the C size to use in in_sz and buffer lengths.

// CreatePartition is struct mshv_create_partition (16 B).
type CreatePartition struct {
	Flags     uint64
	Isolation uint64
}

// CreatePartitionV2 is struct mshv_create_partition_v2 (64 B).
type CreatePartitionV2 struct {
	Flags         uint64
	Isolation     uint64
	NumCPUFBanks  uint16
	Rsvd          [6]uint8
	CPUFBanks     [NumCPUFeatureBanks]uint64 // disabled features (bit set = off)
	Rsvd1         [NumCPUFeatureBanks]uint64
	DisabledXSave uint64
}

// CreateVP is struct mshv_create_vp (4 B).
type CreateVP struct {
	VPIndex uint32
}

// UserMemRegion is struct mshv_user_mem_region (32 B).
type UserMemRegion struct {
	Size          uint64
	GuestPFN      uint64
	UserspaceAddr uint64
	Flags         uint8
	Rsvd          [7]uint8
}

// UserIRQFD is struct mshv_user_irqfd (16 B).
type UserIRQFD struct {
	FD         int32
	ResampleFD int32
	GSI        uint32
	Flags      uint32
}

// UserIOEventFD is struct mshv_user_ioeventfd (32 B).
type UserIOEventFD struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	Rsvd      [4]uint8
}

// UserIRQEntry is struct mshv_user_irq_entry (16 B).
type UserIRQEntry struct {
	GSI       uint32
	AddressLo uint32
	AddressHi uint32
	Data      uint32
}

// UserIRQTable is the 8-byte header of struct mshv_user_irq_table; Nr
// entries follow it.
type UserIRQTable struct {
	Nr   uint32
	Rsvd uint32
}

// GPAPAccessBitmap is struct mshv_gpap_access_bitmap (32 B).
type GPAPAccessBitmap struct {
	AccessType uint8
	AccessOp   uint8
	Rsvd       [6]uint8
	PageCount  uint64
	GPAPBase   uint64
	BitmapPtr  uint64
}

// RootHvcall is struct mshv_root_hvcall (32 B).
type RootHvcall struct {
	Code   uint16
	Reps   uint16
	InSz   uint16
	OutSz  uint16
	Status uint16
	Rsvd   [6]uint8
	InPtr  uint64
	OutPtr uint64
}

// GetSetVPState is struct mshv_get_set_vp_state (16 B).
type GetSetVPState struct {
	Type   uint8
	Rsvd   [3]uint8
	BufSz  uint32
	BufPtr uint64
}

// MessageHeader is struct hv_message_header (16 B).
type MessageHeader struct {
	MessageType uint32
	PayloadSize uint8
	Flags       uint8
	Reserved    uint16
	Sender      uint64
}

// Message is struct hv_message (256 B), what MSHV_RUN_VP returns.
type Message struct {
	Header  MessageHeader
	Payload [240]byte
}

// SegmentRegister is struct hv_x64_segment_register (16 B).
type SegmentRegister struct {
	Base       uint64
	Limit      uint32
	Selector   uint16
	Attributes uint16
}

// TableRegister is struct hv_x64_table_register (16 B).
type TableRegister struct {
	Pad   [3]uint16
	Limit uint16
	Base  uint64
}

// InterceptMessageHeader is struct hv_x64_intercept_message_header (40 B).
type InterceptMessageHeader struct {
	VPIndex             uint32
	InsnLenCR8          uint8 // bits 0-3 instruction length, 4-7 cr8
	InterceptAccessType uint8
	ExecutionState      uint16
	CS                  SegmentRegister
	RIP                 uint64
	RFLAGS              uint64
}

// InstructionLength is the intercepted instruction's length.
func (h *InterceptMessageHeader) InstructionLength() int { return int(h.InsnLenCR8 & 0xF) }

// MemoryInterceptMessage is struct hv_x64_memory_intercept_message (80 B).
type MemoryInterceptMessage struct {
	Header               InterceptMessageHeader
	CacheType            uint32
	InstructionByteCount uint8
	MemoryAccessInfo     uint8
	TPRPriority          uint8
	Reserved1            uint8
	GVA                  uint64
	GPA                  uint64
	InstructionBytes     [16]uint8
}

// IOPortInterceptMessage is struct hv_x64_io_port_intercept_message (128 B).
type IOPortInterceptMessage struct {
	Header               InterceptMessageHeader
	PortNumber           uint16
	AccessInfo           uint8
	InstructionByteCount uint8
	Reserved             uint32
	RAX                  uint64
	InstructionBytes     [16]uint8
	DS                   SegmentRegister
	ES                   SegmentRegister
	RCX                  uint64
	RSI                  uint64
	RDI                  uint64
}

// CPUIDInterceptMessage is struct hv_x64_cpuid_intercept_message (104 B).
type CPUIDInterceptMessage struct {
	Header                 InterceptMessageHeader
	RAX, RCX, RDX, RBX     uint64
	DefaultRAX, DefaultRCX uint64
	DefaultRDX, DefaultRBX uint64
}

// MSRInterceptMessage is struct hv_x64_msr_intercept_message (64 B).
type MSRInterceptMessage struct {
	Header    InterceptMessageHeader
	MSRNumber uint32
	Reserved  uint32
	RDX       uint64
	RAX       uint64
}

// ExceptionInterceptMessage is struct hv_x64_exception_intercept_message (240 B).
type ExceptionInterceptMessage struct {
	Header               InterceptMessageHeader
	ExceptionVector      uint16
	ExceptionInfo        uint8
	InstructionByteCount uint8
	ErrorCode            uint32
	ExceptionParameter   uint64
	Reserved             uint64
	InstructionBytes     [16]uint8
	DS, SS               SegmentRegister
	RAX, RCX, RDX, RBX   uint64
	RSP, RBP, RSI, RDI   uint64
	R8, R9, R10, R11     uint64
	R12, R13, R14, R15   uint64
}

// APICEOIMessage is struct hv_x64_apic_eoi_message (8 B, no common header).
type APICEOIMessage struct {
	VPIndex         uint32
	InterruptVector uint32
}

// InterruptionDeliverableMessage is hv_x64_interruption_deliverable_message (48 B).
type InterruptionDeliverableMessage struct {
	Header          InterceptMessageHeader
	DeliverableType uint32
	Rsvd            uint32
}

// SIPIInterceptMessage is struct hv_x64_sipi_intercept_message (48 B).
type SIPIInterceptMessage struct {
	Header          InterceptMessageHeader
	TargetVPIndex   uint32
	InterruptVector uint32
}

// SINTDeliverableMessage is struct hv_x64_sint_deliverable_message (48 B).
type SINTDeliverableMessage struct {
	Header           InterceptMessageHeader
	DeliverableSINTs uint16
	Rsvd1            uint16
	Rsvd2            uint32
}

// HypercallInterceptMessage is hv_x64_hypercall_intercept_message (C: 196 B).
type HypercallInterceptMessage struct {
	Header             InterceptMessageHeader
	RAX, RBX, RCX, RDX uint64
	R8, RSI, RDI       uint64
	XMMRegisters       [6][16]byte
	Isolated           uint32
}

// SizeofHypercallInterceptMessage is the packed C size.
const SizeofHypercallInterceptMessage = 196

// RegisterValue is union hv_register_value (16 B), little endian.
type RegisterValue struct {
	Low  uint64
	High uint64
}

// RegisterAssoc is struct hv_register_assoc (32 B).
type RegisterAssoc struct {
	Name      uint32
	Reserved1 uint32
	Reserved2 uint64
	Value     RegisterValue
}

// InputVPRegisters is the 16-byte header of hv_input_get_vp_registers and
// hv_input_set_vp_registers; names (u32) or elements (RegisterAssoc) follow.
type InputVPRegisters struct {
	PartitionID uint64
	VPIndex     uint32
	InputVTL    uint8
	RsvdZ8      uint8
	RsvdZ16     uint16
}

// InputAssertVirtualInterrupt is struct hv_input_assert_virtual_interrupt (32 B).
type InputAssertVirtualInterrupt struct {
	PartitionID uint64
	Control     uint64
	DestAddr    uint64
	Vector      uint32
	TargetVTL   uint8
	RsvdZ0      uint8
	RsvdZ1      uint16
}

// InputInstallIntercept is struct hv_input_install_intercept (24 B).
type InputInstallIntercept struct {
	PartitionID        uint64
	AccessType         uint32
	InterceptType      uint32
	InterceptParameter uint64
}

// CPUIDResultParameters is hv_register_x64_cpuid_result_parameters (44 B).
type CPUIDResultParameters struct {
	EAX, ECX        uint32
	SubleafSpecific uint8
	AlwaysOverride  uint8
	Padding         uint16
	Result          struct {
		EAX, EAXMask uint32
		EBX, EBXMask uint32
		ECX, ECXMask uint32
		EDX, EDXMask uint32
	}
}

// MSRResultParameters is hv_register_x64_msr_result_parameters (12 B).
type MSRResultParameters struct {
	MSRIndex   uint32
	AccessType uint32
	Action     uint32
}

// InputRegisterInterceptResult is hv_input_register_intercept_result
// (C: 60 B; the parameters union is the CPUID form, 44 B).
type InputRegisterInterceptResult struct {
	PartitionID   uint64
	VPIndex       uint32
	InterceptType uint32
	Parameters    CPUIDResultParameters
}

// SizeofInputRegisterInterceptResult is the packed C size.
const SizeofInputRegisterInterceptResult = 60

// InputTranslateVirtualAddress is hv_input_translate_virtual_address (32 B).
type InputTranslateVirtualAddress struct {
	PartitionID  uint64
	VPIndex      uint32
	Padding      uint32
	ControlFlags uint64
	GVAPage      uint64
}

// OutputTranslateVirtualAddress is hv_output_translate_virtual_address (16 B).
type OutputTranslateVirtualAddress struct {
	ResultCode uint32
	CacheType  uint32 // bits 0-7 cache type, bit 8 overlay page
	GPAPage    uint64
}

// InputGetPartitionProperty is hv_input_get_partition_property (16 B).
type InputGetPartitionProperty struct {
	PartitionID  uint64
	PropertyCode uint32
	Padding      uint32
}

// OutputGetPartitionProperty is hv_output_get_partition_property (8 B).
type OutputGetPartitionProperty struct {
	PropertyValue uint64
}

// InputSetPartitionProperty is hv_input_set_partition_property (24 B).
type InputSetPartitionProperty struct {
	PartitionID   uint64
	PropertyCode  uint32
	Padding       uint32
	PropertyValue uint64
}

// InputGetPartitionPropertyEx is hv_input_get_partition_property_ex (24 B).
type InputGetPartitionPropertyEx struct {
	PartitionID  uint64
	PropertyCode uint32
	Padding      uint32
	Arg          uint64
}

// InputClearVirtualInterrupt is hv_input_clear_virtual_interrupt.
type InputClearVirtualInterrupt struct {
	PartitionID uint64
}

// InputGetGPAPagesAccessState is hv_input_get_gpa_pages_access_state.
type InputGetGPAPagesAccessState struct {
	PartitionID  uint64
	Flags        uint64
	FirstGPAPage uint64
}

// CPUIDLeafInfo is struct hv_cpuid_leaf_info (24 B).
type CPUIDLeafInfo struct {
	EAX  uint32
	ECX  uint32
	XFEM uint64
	XSS  uint64
}

// InputGetVPCPUIDValues is the 24-byte header of hv_input_get_vp_cpuid_values.
type InputGetVPCPUIDValues struct {
	PartitionID uint64
	VPIndex     uint32
	Flags       uint32
	Reserved    uint32
	Padding     uint32
}

// OutputGetVPCPUIDValues is hv_output_get_vp_cpuid_values (16 B).
type OutputGetVPCPUIDValues struct {
	EAX, EBX, ECX, EDX uint32
}

// InputSignalEventDirect is hv_input_signal_event_direct (16 B).
type InputSignalEventDirect struct {
	TargetPartition uint64
	TargetVP        uint32
	TargetVTL       uint8
	TargetSINT      uint8
	FlagNumber      uint16
}

// InputPostMessageDirect is hv_input_post_message_direct (280 B).
type InputPostMessageDirect struct {
	PartitionID uint64
	VPIndex     uint32
	VTL         uint8
	Padding     [3]uint8
	SINTIndex   uint32
	Message     [256]uint8
	Padding2    uint32
}

// PartitionProperty is struct mshv_partition_property (16 B).
type PartitionProperty struct {
	PropertyCode  uint32
	Pad           uint32
	PropertyValue uint64
}

// VPStateDataXSave is struct hv_vp_state_data_xsave (16 B).
type VPStateDataXSave struct {
	Flags  uint64
	States uint64
}

// LocalInterruptControllerState is hv_local_interrupt_controller_state (176 B).
type LocalInterruptControllerState struct {
	APICID           uint32
	APICVersion      uint32
	APICLDR          uint32
	APICDFR          uint32
	APICSpurious     uint32
	APICISR          [8]uint32
	APICTMR          [8]uint32
	APICIRR          [8]uint32
	APICESR          uint32
	APICICRHigh      uint32
	APICICRLow       uint32
	APICLVTTimer     uint32
	APICLVTThermal   uint32
	APICLVTPerfmon   uint32
	APICLVTLINT0     uint32
	APICLVTLINT1     uint32
	APICLVTError     uint32
	APICLVTCMCI      uint32
	APICErrorStatus  uint32
	APICInitialCount uint32
	APICCounterValue uint32
	APICDivideConfig uint32
	APICRemoteRead   uint32
}

// StimerState is struct hv_stimer_state (40 B).
type StimerState struct {
	Flags              uint32
	Resvd              uint32
	Config             uint64
	Count              uint64
	Adjustment         uint64
	UndeliveredExpTime uint64
}

// SyntheticTimersState is struct hv_synthetic_timers_state (200 B).
type SyntheticTimersState struct {
	Timers   [4]StimerState
	Reserved [5]uint64
}

// VPRegisterPage is struct hv_vp_register_page (696 B used, x86), the
// page mmapped at VP offset 0.
type VPRegisterPage struct {
	Version                   uint16
	IsValid                   uint8
	RsvdZ                     uint8
	Dirty                     uint32
	GPRs                      [16]uint64 // RAX RCX RDX RBX RSP RBP RSI RDI R8..R15
	RIP                       uint64
	RFLAGS                    uint64
	Reserved                  uint64
	XMM                       [6][16]byte
	Segments                  [6]SegmentRegister // ES CS SS DS FS GS
	CR0, CR3, CR4             uint64
	CR8, EFER, DR7            uint64
	PendingInterruption       uint64
	InterruptState            uint64
	InstructionEmulationHints uint64
	XFEM                      uint64
	Reserved1                 [256]byte
	InterruptVectors          uint64
}

// Register-page GPR indices (hv order, not KVM's).
const (
	PageRAX = iota
	PageRCX
	PageRDX
	PageRBX
	PageRSP
	PageRBP
	PageRSI
	PageRDI
)

// Register-page segment indices.
const (
	PageES = iota
	PageCS
	PageSS
	PageDS
	PageFS
	PageGS
)

// InputReadGPA is hv_input_read_gpa (32 B).
type InputReadGPA struct {
	PartitionID  uint64
	VPIndex      uint32
	ByteCount    uint32
	BaseGPA      uint64
	ControlFlags uint64
}

// OutputReadGPA is hv_output_read_gpa (24 B).
type OutputReadGPA struct {
	AccessResult uint64
	Data         [16]uint8
}

// InputWriteGPA is hv_input_write_gpa (48 B).
type InputWriteGPA struct {
	PartitionID  uint64
	VPIndex      uint32
	ByteCount    uint32
	BaseGPA      uint64
	ControlFlags uint64
	Data         [16]uint8
}
