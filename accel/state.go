package accel

import (
	"encoding/json"
	"fmt"
)

// The vCPU state below is accelerator-neutral: KVM and MSHV backends
// convert to and from it, and snapshots store it. Field sets follow the
// architecture, not either kernel's structs.

// Regs are the general registers, RIP and RFLAGS.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is a segment register with its hidden descriptor cache.
// Limit is the byte-granular (expanded) limit.
type Segment struct {
	Base     uint64 `json:"base"`
	Limit    uint32 `json:"limit"`
	Selector uint16 `json:"selector"`
	Type     uint8  `json:"type"`
	Present  bool   `json:"present"`
	DPL      uint8  `json:"dpl"`
	DB       bool   `json:"db"`
	S        bool   `json:"s"`
	L        bool   `json:"l"`
	G        bool   `json:"g"`
	AVL      bool   `json:"avl"`
	Unusable bool   `json:"unusable"`
}

// DTable is a descriptor-table register (GDTR, IDTR).
type DTable struct {
	Base  uint64 `json:"base"`
	Limit uint16 `json:"limit"`
}

// Sregs are the segment, descriptor-table and control registers.
type Sregs struct {
	CS, DS, ES, FS, GS, SS  Segment
	TR, LDT                 Segment
	GDT, IDT                DTable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
}

// FPU is the legacy x87/SSE state (the FXSAVE image, in named fields).
type FPU struct {
	FCW, FSW  uint16
	FTW       uint8 // abridged tag word (one bit per register, as FXSAVE)
	FOP       uint16
	FIP, FDP  uint64
	MXCSR     uint32
	MXCSRMask uint32
	ST        [8][16]byte // 80-bit values in 16-byte slots
	XMM       [16][16]byte
}

// XSave is an XSAVE area in the standard (non-compacted) format, the form
// XSAVE writes without XSAVEC/XSAVES. Backends whose accelerator speaks the
// compacted format convert.
type XSave struct {
	Data []byte
}

// XCR is one extended control register (index 0 is XCR0).
type XCR struct {
	Index uint32
	Value uint64
}

// MSR is one model-specific register.
type MSR struct {
	Index uint32
	Value uint64
}

// LAPIC is the local APIC state as the 1 KiB xAPIC register page image
// (register at offset R lives at Regs[R:R+4]), the layout KVM uses and the
// neutral form snapshots store. MSHV converts its own LAPIC blob to it.
type LAPIC struct {
	Regs [1024]byte
}

// MarshalJSON stores the register page as one base64 string (an array of
// 1024 numbers would be four times larger and slow to decode on the
// restore path).
func (l LAPIC) MarshalJSON() ([]byte, error) { return json.Marshal(l.Regs[:]) }

// UnmarshalJSON reads what MarshalJSON wrote.
func (l *LAPIC) UnmarshalJSON(b []byte) error {
	var regs []byte
	if err := json.Unmarshal(b, &regs); err != nil {
		return fmt.Errorf("LAPIC state: %w", err)
	}
	if len(regs) != len(l.Regs) {
		return fmt.Errorf("LAPIC state: %d bytes, want %d", len(regs), len(l.Regs))
	}
	copy(l.Regs[:], regs)
	return nil
}

// Events are the pending and injected events of a vCPU.
type Events struct {
	Exception struct {
		Injected     bool
		Pending      bool
		Nr           uint8
		HasErrorCode bool
		ErrorCode    uint32
		HasPayload   bool
		Payload      uint64
	}
	Interrupt struct {
		Injected bool
		Nr       uint8
		Soft     bool
		// Shadow: interrupts are blocked for one instruction; bit 0
		// after STI, bit 1 after MOV SS. AMD's SVM (and MSHV) keep a
		// single shadow bit: KVM on SVM reports any shadow as 3.
		Shadow uint8
	}
	NMI struct {
		Injected bool
		Pending  bool
		Masked   bool
	}
	SIPIVector uint32
}

// MPState is the multiprocessing state of a vCPU.
type MPState int

const (
	MPRunnable MPState = iota
	MPUninitialized
	MPInitReceived
	MPHalted
	MPSIPIReceived
)

var mpNames = [...]string{"runnable", "uninitialized", "init-received", "halted", "sipi-received"}

func (s MPState) String() string {
	if int(s) >= 0 && int(s) < len(mpNames) {
		return mpNames[s]
	}
	return "mpstate(?)"
}

// DebugRegs are DR0-DR3, DR6 and DR7.
type DebugRegs struct {
	DR  [4]uint64
	DR6 uint64
	DR7 uint64
}

// SynIC is the Hyper-V synthetic interrupt controller state of a vCPU,
// for accelerators that have one (MSHV): the message page (SIMP) and the
// event-flags page (SIEFP), which the hypervisor overlays on guest memory
// and so are not in the guest RAM image, and the four synthetic timers.
// The SynIC MSRs (SCONTROL, SIMP, SIEFP, SINTn) travel with the MSRs.
type SynIC struct {
	MessagePage    []byte    `json:"message_page,omitempty"`
	EventFlagsPage []byte    `json:"event_flags_page,omitempty"`
	Timers         [4]STimer `json:"timers"`
}

// STimer is one synthetic timer.
type STimer struct {
	Config             uint64 `json:"config"`
	Count              uint64 `json:"count"`
	Adjustment         uint64 `json:"adjustment"`
	UndeliveredExpTime uint64 `json:"undelivered_exp_time"`
	// UndeliveredMessagePending: the expiry message is still owed.
	UndeliveredMessagePending bool `json:"undelivered_msg_pending"`
}

// InUse reports whether the guest has touched the SynIC: any timer
// configured or running, or anything in the pages.
func (s *SynIC) InUse() bool {
	for _, t := range s.Timers {
		if t != (STimer{}) {
			return true
		}
	}
	for _, p := range [][]byte{s.MessagePage, s.EventFlagsPage} {
		for _, b := range p {
			if b != 0 {
				return true
			}
		}
	}
	return false
}

// ShadowStackVCPU is implemented by vCPUs whose accelerator can carry
// CET's current shadow-stack pointer (SSP), the one piece of CET state that
// no MSR holds (the others travel as MSRs: U_CET, S_CET, PL0-3_SSP and the
// interrupt SSP table).
type ShadowStackVCPU interface {
	// SSP returns the pointer. It returns an error wrapping
	// ErrNotSupported when the vCPU's CPUID offers no shadow stacks
	// (CPUID.(EAX=7,ECX=0):ECX.CET_SS): there is nothing to carry.
	SSP() (uint64, error)
	SetSSP(ssp uint64) error
}

// SynICVCPU is implemented by vCPUs whose accelerator has a SynIC.
type SynICVCPU interface {
	SynIC() (SynIC, error)
	SetSynIC(s *SynIC) error
}
