// Package accel is the seam between govmm and the hardware accelerators it
// drives (Linux KVM through /dev/kvm, the Microsoft Hypervisor through
// /dev/mshv). It owns the vocabulary every layer above speaks: capabilities,
// guest memory regions, vCPU state in an accelerator-neutral form, exits,
// interrupt routes, irqfds and ioeventfds.
//
// Nothing above this package imports a backend or knows which accelerator
// it runs on; only the command line chooses one. Port I/O and MMIO are not
// returned as exits: a backend completes them inside VCPU.Run by calling the
// IOHandler it was given (on KVM the kernel decoded the access, on MSHV the
// backend decodes and emulates the instruction itself), so the device model
// sees the same accesses on every accelerator.
package accel

import (
	"errors"
	"fmt"
)

// ErrNotSupported is wrapped by errors for features an accelerator (or the
// kernel under it) does not offer. Callers test with errors.Is.
var ErrNotSupported = errors.New("not supported by this accelerator")

// Accelerator is one opened accelerator device (/dev/kvm or /dev/mshv).
type Accelerator interface {
	// Name is "kvm" or "mshv".
	Name() string
	// Caps reports what the host offers, for `govmm caps` and for callers
	// that adapt to the host.
	Caps() (Caps, error)
	// SupportedCPUID is the CPUID the accelerator can present to a guest,
	// before any CPU-model filtering.
	SupportedCPUID() ([]CPUIDEntry, error)
	// CreateVM creates a VM (a KVM VM or an MSHV partition). The CPU model
	// is part of the config because MSHV fixes it at partition creation.
	CreateVM(cfg VMConfig) (VM, error)
	Close() error
}

// VMConfig is what an accelerator needs to know before a VM exists.
type VMConfig struct {
	NumVCPUs int
	// CPUID is the CPUID table every vCPU presents (already filtered by
	// the CPU model). Backends that fix CPU features at creation time
	// derive them from it.
	CPUID []CPUIDEntry
	// NoPMU: the guest has no PMU. Backends that virtualize one whatever
	// CPUID says (KVM on AMD: the legacy counters have no CPUID bit) turn
	// it off.
	NoPMU bool
	// Topology arranges the vCPUs in sockets, cores and threads for the
	// CPUID topology leaves (cpu.ForVCPU); the zero value is one socket
	// with NumVCPUs single-threaded cores.
	Topology Topology
	// FeatureMSRs are the feature MSRs every vCPU presents instead of the
	// accelerator's default (a CPU model's IA32_ARCH_CAPABILITIES). Each
	// must be within what FeatureMSRSource reports; a backend that cannot
	// set one refuses the VM.
	FeatureMSRs []MSR
	// MarkDirty, when set, is told of every guest RAM write the
	// accelerator's own code makes in userspace, as opposed to the guest's
	// (MSHV's instruction emulator completing a string move into RAM):
	// the accelerator's dirty log never sees those, so the VMM's log must.
	MarkDirty func(gpa, n uint64)
}

// MSRArchCapabilities is IA32_ARCH_CAPABILITIES, the feature MSR CPU
// models set.
const MSRArchCapabilities = 0x10a

// FeatureMSRSource is implemented by accelerators that can present
// feature MSRs chosen by the VMM (VMConfig.FeatureMSRs).
type FeatureMSRSource interface {
	// SupportedFeatureMSR returns the bits of feature MSR index the
	// accelerator can present to a guest, or an error wrapping
	// ErrNotSupported.
	SupportedFeatureMSR(index uint32) (uint64, error)
}

// Topology is how the vCPUs are arranged: Sockets packages of Cores cores
// of Threads threads each. vCPU i has APIC ID i, so the arrangement must
// give contiguous APIC IDs (package cpu checks it).
type Topology struct {
	Sockets int `json:"sockets"`
	Cores   int `json:"cores"`   // per socket
	Threads int `json:"threads"` // per core
}

// IsZero reports whether t is unset (the default arrangement).
func (t Topology) IsZero() bool { return t == Topology{} }

// Caps describes an accelerator on this host.
type Caps struct {
	Accel      string            `json:"accel"`
	Device     string            `json:"device"`
	APIVersion int               `json:"api_version,omitempty"`
	MaxVCPUs   int               `json:"max_vcpus,omitempty"`
	Features   []Capability      `json:"features"`
	Info       map[string]string `json:"info,omitempty"`
}

// Capability is one named capability and the value the host reports for it
// (0 means absent; for most capabilities 1 means present).
type Capability struct {
	Name  string `json:"name"`
	Value int64  `json:"value"`
	// Used is true when govmm relies on this capability.
	Used bool `json:"used"`
}

// Has reports whether the named capability is present (non-zero).
func (c Caps) Has(name string) bool {
	for _, f := range c.Features {
		if f.Name == name {
			return f.Value != 0
		}
	}
	return false
}

// MemoryRegion is guest RAM (or ROM) backed by host memory. Regions are
// identified by their guest physical address, never by slot numbers (MSHV
// has no slots); they may not overlap in GPA or in host memory.
type MemoryRegion struct {
	GPA      uint64
	Host     []byte // page aligned, len is the region size
	ReadOnly bool
	// DirtyLog asks the accelerator to track writes to the region.
	DirtyLog bool
}

// Size is the region's length in bytes.
func (r MemoryRegion) Size() uint64 { return uint64(len(r.Host)) }

// VM is one virtual machine (a KVM VM or an MSHV partition).
type VM interface {
	MapMemory(r MemoryRegion) error
	// UnmapMemory removes the region that starts at gpa.
	UnmapMemory(gpa uint64) error
	// CreateVCPU creates vCPU index (0 is the bootstrap processor).
	CreateVCPU(index int) (VCPU, error)

	// SetGSIRouting replaces the whole GSI routing table in one call
	// (KVM_SET_GSI_ROUTING, MSHV_SET_MSI_ROUTING).
	SetGSIRouting(routes []Route) error
	// SignalMSI injects one MSI from userspace.
	SignalMSI(msi MSI) error
	AssignIRQFD(f IRQFD) error
	DeassignIRQFD(f IRQFD) error
	AssignIOEventFD(e IOEventFD) error
	DeassignIOEventFD(e IOEventFD) error

	// EnableDirtyLog starts write tracking on every mapped region.
	EnableDirtyLog() error
	// DisableDirtyLog stops write tracking.
	DisableDirtyLog() error
	// DirtyLog returns (and clears) the dirty bitmap of the region that
	// starts at gpa: bit i of word i/64 is page i of the region.
	DirtyLog(gpa uint64) ([]uint64, error)

	// Clock returns the guest clock (kvmclock on KVM, partition reference
	// time on MSHV) in nanoseconds; SetClock sets it.
	Clock() (uint64, error)
	SetClock(ns uint64) error
	// Pause stops guest time while the vCPUs are not running (MSHV time
	// freeze); Resume restarts it. Accelerators without the notion may
	// treat both as no-ops.
	Pause() error
	Resume() error

	Close() error
}

// IOHandler receives the port I/O and MMIO accesses a vCPU makes. Data
// holds the bytes written, or receives the bytes read, little endian: 1, 2
// or 4 bytes for port I/O; for MMIO usually 1 to 8, but an emulating
// backend (MSHV) hands whole SSE/AVX and MOVDIR64B accesses through as 16,
// 32 or 64 bytes, so devices must accept any length. Handlers must not
// retain data.
type IOHandler interface {
	PIORead(port uint16, data []byte)
	PIOWrite(port uint16, data []byte)
	MMIORead(addr uint64, data []byte)
	MMIOWrite(addr uint64, data []byte)
}

// VCPU is one virtual processor. Run must be called from the goroutine that
// created the vCPU, locked to its OS thread (runtime.LockOSThread), because
// kicks are delivered to that thread.
type VCPU interface {
	Index() int
	// Run enters the guest and returns on the first exit that is not port
	// I/O or MMIO (those are completed through h without returning).
	Run(h IOHandler) (Exit, error)
	// Kick makes a running (or about to run) Run return ExitInterrupted
	// as soon as possible. It is safe from any goroutine.
	Kick()

	SetCPUID(entries []CPUIDEntry) error
	Regs() (Regs, error)
	SetRegs(r *Regs) error
	Sregs() (Sregs, error)
	SetSregs(s *Sregs) error
	FPU() (FPU, error)
	SetFPU(f *FPU) error
	// XSave returns the XSAVE area in the standard (non-compacted) format.
	XSave() (XSave, error)
	SetXSave(x *XSave) error
	XCRs() ([]XCR, error)
	SetXCRs(x []XCR) error
	MSRs(indices []uint32) ([]MSR, error)
	SetMSRs(m []MSR) error
	// MSRIndexList is the list of MSRs this accelerator can save/restore.
	MSRIndexList() ([]uint32, error)
	LAPIC() (LAPIC, error)
	SetLAPIC(l *LAPIC) error
	Events() (Events, error)
	SetEvents(e *Events) error
	MPState() (MPState, error)
	SetMPState(s MPState) error
	DebugRegs() (DebugRegs, error)
	SetDebugRegs(d *DebugRegs) error

	Close() error
}

// ExitReason says why VCPU.Run returned.
type ExitReason int

const (
	// ExitInterrupted: the vCPU was kicked (or a signal arrived).
	ExitInterrupted ExitReason = iota + 1
	// ExitHalt: HLT with no interrupt controller in the accelerator to
	// wait on (KVM without in-kernel LAPIC), or MSHV's terminal halt.
	ExitHalt
	// ExitShutdown: triple fault or an unrecoverable exception.
	ExitShutdown
	// ExitReset / ExitPowerOff: the guest asked the platform (system event).
	ExitReset
	ExitPowerOff
	// ExitIOAPICEOI: the LAPIC saw an EOI for a level-triggered vector the
	// userspace IOAPIC must hear about.
	ExitIOAPICEOI
	// ExitInternalError: the accelerator could not go on (emulation
	// failure, unsupported instruction, ...). Fatal.
	ExitInternalError
	// ExitFailEntry: the hardware refused to enter the guest. Fatal.
	ExitFailEntry
	// ExitDebug: a single-step or breakpoint debug exit.
	ExitDebug
	// ExitUnknown: anything else the backend cannot classify. Fatal.
	ExitUnknown
)

var exitNames = map[ExitReason]string{
	ExitInterrupted: "interrupted", ExitHalt: "halt", ExitShutdown: "shutdown",
	ExitReset: "reset", ExitPowerOff: "power-off", ExitIOAPICEOI: "ioapic-eoi",
	ExitInternalError: "internal-error", ExitFailEntry: "fail-entry",
	ExitDebug: "debug", ExitUnknown: "unknown",
}

func (r ExitReason) String() string {
	if s, ok := exitNames[r]; ok {
		return s
	}
	return fmt.Sprintf("exit(%d)", int(r))
}

// Exit is what VCPU.Run returns.
type Exit struct {
	Reason ExitReason
	// Vector is the EOI'd vector for ExitIOAPICEOI.
	Vector uint8
	// RIP and Insn describe where the guest was, for fatal exits: Insn
	// holds the instruction bytes at RIP when the backend has them.
	RIP  uint64
	Insn []byte
	// Detail is a human-readable description for fatal exits
	// (e.g. "emulation failure", "hardware entry failure reason 0x80000021").
	Detail string
}

// CPUIDEntry is one CPUID leaf/subleaf.
type CPUIDEntry struct {
	Function uint32 `json:"function"`
	Index    uint32 `json:"index"`
	// Flags: CPUIDFlagSignificantIndex when Index matters.
	Flags uint32 `json:"flags,omitempty"`
	EAX   uint32 `json:"eax"`
	EBX   uint32 `json:"ebx"`
	ECX   uint32 `json:"ecx"`
	EDX   uint32 `json:"edx"`
}

// CPUIDFlagSignificantIndex marks leaves whose subleaf (ECX) selects the entry.
const CPUIDFlagSignificantIndex = 1

// Route is one GSI routing entry. Kind selects which of the fields apply.
type Route struct {
	GSI  uint32
	Kind RouteKind
	// MSI routes.
	MSI MSI
	// Irqchip routes (KVM only: a pin on an in-kernel irqchip).
	Chip, Pin uint32
}

// RouteKind is the type of a GSI route.
type RouteKind int

const (
	RouteMSI RouteKind = iota
	RouteIrqchip
)

// MSI is a message-signalled interrupt as the guest programmed it.
type MSI struct {
	AddressLo uint32
	AddressHi uint32
	Data      uint32
}

// IRQFD binds an eventfd to a GSI: a write to the eventfd injects the GSI's
// route without a userspace exit. With ResampleFD >= 0 the route is
// level-triggered and ResampleFD is signalled when the guest EOIs it.
type IRQFD struct {
	FD         int
	GSI        uint32
	ResampleFD int // -1 for none
}

// IOEventFD binds an eventfd to a guest write: a write of Len bytes to Addr
// (matching Data when DataMatch is set) signals FD without a userspace exit.
type IOEventFD struct {
	FD        int
	Addr      uint64
	Len       int // 0 = any length (MSHV), 1, 2, 4, 8
	PIO       bool
	DataMatch bool
	Data      uint64
}

// ExtINTSource is the legacy PIC as a vCPU sees it: interrupts delivered as
// ExtINT through LINT0 (KVM_INTERRUPT on a split irqchip, an EXTINT
// assert on MSHV). A backend that was given a source checks Pending before
// each guest entry; when the guest can take an interrupt it calls Ack and
// injects the vector, otherwise it asks to exit as soon as it can.
type ExtINTSource interface {
	Pending() bool
	// Ack acknowledges the highest-priority request (the INTA cycle) and
	// returns its vector; ok is false if the request went away.
	Ack() (vector uint8, ok bool)
}

// ExtINTReceiver is implemented by vCPUs that can take ExtINT interrupts
// (the BSP is wired to the PIC).
type ExtINTReceiver interface {
	SetExtINTSource(src ExtINTSource)
}

// ExtINTWaker is implemented by vCPUs that must be told when their
// ExtINTSource's output rises: a guest halted inside the accelerator
// (HLT with an in-kernel LAPIC) does not poll Pending, so whoever raises
// the PIC output calls Wake. Wake is safe from any goroutine and does not
// make Run return.
type ExtINTWaker interface {
	Wake()
}
