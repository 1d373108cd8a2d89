package kvm

// The KVM ABI: ioctl numbers, constants and structs, transcribed from
// <linux/kvm.h> and <asm/kvm.h> (x86-64). abi_test.go checks every size and
// field offset against the C headers.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const apiVersion = 12

// ioctl request numbers (x86-64).
const (
	ioctlGetAPIVersion         = 0xae00
	ioctlCreateVM              = 0xae01
	ioctlGetMSRIndexList       = 0xc004ae02
	ioctlCheckExtension        = 0xae03
	ioctlGetVCPUMmapSize       = 0xae04
	ioctlGetSupportedCPUID     = 0xc008ae05
	ioctlCreateVCPU            = 0xae41
	ioctlGetDirtyLog           = 0x4010ae42
	ioctlSetUserMemoryRegion   = 0x4020ae46
	ioctlSetTSSAddr            = 0xae47
	ioctlSetIdentityMapAddr    = 0x4008ae48
	ioctlSetGSIRouting         = 0x4008ae6a
	ioctlIRQFD                 = 0x4020ae76
	ioctlIOEventFD             = 0x4040ae79
	ioctlSetClock              = 0x4030ae7b
	ioctlGetClock              = 0x8030ae7c
	ioctlRun                   = 0xae80
	ioctlGetRegs               = 0x8090ae81
	ioctlSetRegs               = 0x4090ae82
	ioctlGetSregs              = 0x8138ae83
	ioctlSetSregs              = 0x4138ae84
	ioctlInterrupt             = 0x4004ae86
	ioctlGetMSRs               = 0xc008ae88
	ioctlSetMSRs               = 0x4008ae89
	ioctlGetFPU                = 0x81a0ae8c
	ioctlSetFPU                = 0x41a0ae8d
	ioctlGetLAPIC              = 0x8400ae8e
	ioctlSetLAPIC              = 0x4400ae8f
	ioctlSetCPUID2             = 0x4008ae90
	ioctlGetMPState            = 0x8004ae98
	ioctlSetMPState            = 0x4004ae99
	ioctlNMI                   = 0xae9a
	ioctlGetVCPUEvents         = 0x8040ae9f
	ioctlSetVCPUEvents         = 0x4040aea0
	ioctlGetDebugRegs          = 0x8080aea1
	ioctlSetDebugRegs          = 0x4080aea2
	ioctlEnableCap             = 0x4068aea3
	ioctlGetXSave              = 0x9000aea4
	ioctlSetXSave              = 0x5000aea5
	ioctlSignalMSI             = 0x4020aea5
	ioctlGetXCRs               = 0x8188aea6
	ioctlSetXCRs               = 0x4188aea7
	ioctlGetXSave2             = 0x9000aecf
	ioctlGetTSCKHz             = 0xaea3
	ioctlGetMSRFeatureIndexLst = 0xc004ae0a
	ioctlGetOneReg             = 0x4010aeab
	ioctlSetOneReg             = 0x4010aeac
)

// regGuestSSP is KVM_X86_REG_KVM(KVM_REG_GUEST_SSP), the ONE_REG id of the
// guest's current shadow-stack pointer (Linux 6.18, with CET
// virtualization): KVM_REG_X86, KVM_REG_SIZE_U64, register type
// KVM_X86_REG_TYPE_KVM (3) in bits 32-39, index 0. The kernel's
// Documentation/virt/kvm/api.rst lists it as 0x2030 0003 0000 0000.
const regGuestSSP = 0x2000000000000000 | 0x0030000000000000 | 3<<32 | 0

// kvmOneReg is struct kvm_one_reg.
type kvmOneReg struct {
	ID   uint64
	Addr uint64
}

// Capabilities (KVM_CAP_*).
const (
	capIRQChip                = 0
	capHLT                    = 1
	capUserMemory             = 3
	capSetTSSAddr             = 4
	capExtCPUID               = 7
	capNrVCPUs                = 9
	capMPState                = 14
	capCoalescedMMIO          = 15
	capSyncMMU                = 16
	capSetGuestDebug          = 23
	capIRQRouting             = 25
	capIRQFD                  = 32
	capPIT2                   = 33
	capIOEventFD              = 36
	capSetIdentityMapAddr     = 37
	capAdjustClock            = 39
	capVCPUEvents             = 41
	capHyperV                 = 44
	capDebugRegs              = 50
	capXSave                  = 55
	capXCRs                   = 56
	capTSCControl             = 60
	capGetTSCKHz              = 61
	capMaxVCPUs               = 66
	capTSCDeadlineTimer       = 72
	capKVMClockCtrl           = 76
	capSignalMSI              = 77
	capReadonlyMem            = 81
	capIRQFDResample          = 82
	capX86SMM                 = 117
	capGuestDebugHWBPs        = 119
	capSplitIRQChip           = 121
	capHyperVSynIC2           = 148
	capIOEventFDAnyLength     = 122
	capMaxVCPUID              = 128
	capX2APICAPI              = 129
	capImmediateExit          = 136
	capGetMSRFeatures         = 153
	capNestedState            = 157
	capExceptionPayload       = 164
	capManualDirtyLogProtect2 = 168
	capX86UserSpaceMSR        = 188
	capX86MSRFilter           = 189
	capDirtyLogRing           = 192
	capSregs2                 = 200
	capExitOnEmulationFailure = 204
	capXSave2                 = 208
	capPMUCapability          = 212
	capDirtyLogRingAcqRel     = 223
)

// Exit reasons (KVM_EXIT_*).
const (
	exitUnknown         = 0
	exitException       = 1
	exitIO              = 2
	exitHypercall       = 3
	exitDebug           = 4
	exitHLT             = 5
	exitMMIO            = 6
	exitIRQWindowOpen   = 7
	exitShutdown        = 8
	exitFailEntry       = 9
	exitIntr            = 10
	exitSetTPR          = 11
	exitTPRAccess       = 12
	exitNMI             = 16
	exitInternalError   = 17
	exitSystemEvent     = 24
	exitIOAPICEOI       = 26
	exitHyperV          = 27
	exitX86RDMSR        = 29
	exitX86WRMSR        = 30
	exitDirtyRingFull   = 31
	exitX86BusLock      = 33
	exitNotify          = 37
	exitIOIn            = 0
	exitIOOut           = 1
	systemEventShutdown = 1
	systemEventReset    = 2
	systemEventCrash    = 3

	internalErrorEmulation    = 1
	internalErrorSimulEx      = 2
	internalErrorDeliveryEv   = 3
	internalErrorUnexpectedEx = 4
	emulationFlagInsnBytes    = 1
)

// Flags.
const (
	memLogDirtyPages = 1 << 0
	memReadonly      = 1 << 1

	irqRoutingIRQChip = 1
	irqRoutingMSI     = 2

	irqfdFlagDeassign = 1 << 0
	irqfdFlagResample = 1 << 1

	ioeventfdFlagDatamatch = 1 << 0
	ioeventfdFlagPIO       = 1 << 1
	ioeventfdFlagDeassign  = 1 << 2

	pmuCapDisable = 1 << 0 // KVM_PMU_CAP_DISABLE

	x2apicAPIUse32BitIDs           = 1 << 0
	x2apicAPIDisableBroadcastQuirk = 1 << 1

	cpuidFlagSignificantIndex = 1 << 0

	vcpuEventValidNMIPending = 0x1
	vcpuEventValidSIPIVector = 0x2
	vcpuEventValidShadow     = 0x4
	vcpuEventValidPayload    = 0x10
)

// kvmRun is struct kvm_run, shared with the kernel through mmap. The exit
// union at offset 32 is read through the views below.
type kvmRun struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IfFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
	Exit                       [256]byte // the union
	KVMValidRegs               uint64
	KVMDirtyRegs               uint64
	S                          [2048]byte // union s (sync regs)
}

type kvmRunIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

type kvmRunMMIO struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
	_        [3]uint8
}

type kvmRunInternal struct {
	Suberror uint32
	Ndata    uint32
	Data     [16]uint64
}

type kvmRunEmulationFailure struct {
	Suberror  uint32
	Ndata     uint32
	Flags     uint64
	InsnSize  uint8
	InsnBytes [15]uint8
}

type kvmRunFailEntry struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
	_                          uint32
}

type kvmRunSystemEvent struct {
	Type  uint32
	Ndata uint32
	Data  [16]uint64
}

// kvmRunHyperV is struct kvm_hyperv_exit: type, then a union whose hcall
// member is input, result, params[2].
type kvmRunHyperV struct {
	Type   uint32
	_      uint32
	Input  uint64
	Result uint64
	Params [2]uint64
}

// kvm_hyperv_exit types.
const (
	hypervExitSynIC  = 1
	hypervExitHcall  = 2
	hypervExitSynDbg = 3
)

// hvStatusInvalidHypercallCode is HV_STATUS_INVALID_HYPERCALL_CODE.
const hvStatusInvalidHypercallCode = 2

type kvmRunDebug struct {
	Exception uint32
	_         uint32
	PC        uint64
	DR6       uint64
	DR7       uint64
}

type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

type kvmSegment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

type kvmDTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS  kvmSegment
	TR, LDT                 kvmSegment
	GDT, IDT                kvmDTable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64
}

type kvmFPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// kvmXSave is the fixed 4 KiB struct kvm_xsave; KVM_GET_XSAVE2 may use a
// larger buffer (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM).
type kvmXSave struct {
	Region [1024]uint32
}

type kvmXCR struct {
	XCR      uint32
	Reserved uint32
	Value    uint64
}

type kvmXCRs struct {
	NrXCRs  uint32
	Flags   uint32
	XCRs    [16]kvmXCR
	Padding [16]uint64
}

type kvmMSRsHeader struct {
	NMSRs uint32
	_     uint32
}

type kvmMSREntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

type kvmLAPICState struct {
	Regs [1024]byte
}

type kvmVCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		_        uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault         [27]uint8 // union { padding[27]; triple_fault.pending }
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

type kvmMPState struct {
	MPState uint32
}

type kvmDebugRegs struct {
	DB       [4]uint64
	DR6      uint64
	DR7      uint64
	Flags    uint64
	Reserved [9]uint64
}

type kvmCPUID2Header struct {
	Nent uint32
	_    uint32
}

type kvmCPUIDEntry2 struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

type kvmUserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

type kvmEnableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

type kvmIRQRoutingHeader struct {
	Nr    uint32
	Flags uint32
}

type kvmIRQRoutingEntry struct {
	GSI   uint32
	Type  uint32
	Flags uint32
	_     uint32
	U     [8]uint32 // irqchip {irqchip, pin} or msi {address_lo, address_hi, data, devid}
}

type kvmMSI struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	Flags     uint32
	DevID     uint32
	_         [12]uint8
}

type kvmIRQFD struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

type kvmIOEventFD struct {
	Datamatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

type kvmDirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64 // pointer
}

type kvmClockData struct {
	Clock    uint64
	Flags    uint32
	_        uint32
	Realtime uint64
	HostTSC  uint64
	_        [4]uint32
}

type kvmInterrupt struct {
	IRQ uint32
}

type kvmMSRListHeader struct {
	NMSRs uint32
}

// ioctl issues a blocking ioctl (the Go scheduler may run other goroutines
// while it waits).
func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlPtr is ioctl with a pointer argument.
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if e != 0 {
		return r, e
	}
	return r, nil
}
