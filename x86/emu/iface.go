package emu

import (
	"errors"
	"fmt"
)

// General register indices, in x86 encoding order (the value of ModRM.reg
// or ModRM.rm extended by REX). CPU.Reg and CPU.SetReg take these.
const (
	RAX = iota
	RCX
	RDX
	RBX
	RSP
	RBP
	RSI
	RDI
	R8
	R9
	R10
	R11
	R12
	R13
	R14
	R15
)

// SegReg names a segment register. The first six are in encoding order
// (the value of the sreg field of MOV Sreg and of the segment prefixes).
type SegReg int

const (
	ES SegReg = iota
	CS
	SS
	DS
	FS
	GS
	// TR is the task register. The emulator reads it only for the I/O
	// permission bitmap (IN/OUT/INS/OUTS at CPL > IOPL in protected mode).
	TR
)

var segNames = [...]string{"es", "cs", "ss", "ds", "fs", "gs", "tr"}

func (s SegReg) String() string {
	if s >= 0 && int(s) < len(segNames) {
		return segNames[s]
	}
	return fmt.Sprintf("seg(%d)", int(s))
}

// Segment is a segment register with its hidden descriptor cache, as the
// vCPU holds it (the same fields as accel.Segment).
type Segment struct {
	Base uint64
	// Limit is the byte-granular limit (already expanded when G is set).
	Limit    uint32
	Selector uint16
	// Type is the 4-bit descriptor type (bit 3 code, bit 1 writable for
	// data or readable for code, bit 2 expand-down for data).
	Type uint8
	// S is true for code/data segments, false for system segments.
	S       bool
	DPL     uint8
	Present bool
	// DB is the default operation size (D/B) bit.
	DB bool
	// L is the 64-bit code segment bit.
	L bool
	G bool
	// Unusable marks a null/unusable segment (VMX "unusable"); any access
	// through it raises #GP (#SS for SS) outside 64-bit mode.
	Unusable bool
}

// ControlReg names a control register the emulator reads.
type ControlReg int

const (
	CR0 ControlReg = iota
	CR3
	CR4
	EFER
)

// CPU is what a backend provides for one vCPU: its registers, its guest
// physical memory and its I/O callbacks. The emulator reads registers when
// it needs them and writes back only what an instruction changed, after
// the instruction completed (or, for REP string instructions, after the
// iterations that completed). Methods are called from the goroutine that
// calls Step and never concurrently.
type CPU interface {
	// Reg returns general register i (RAX=0 ... R15=15), all 64 bits.
	Reg(i int) uint64
	// SetReg sets all 64 bits of general register i. The emulator
	// applies the sub-register rules itself (8/16-bit writes merge,
	// 32-bit writes zero-extend in 64-bit mode and keep the upper half
	// in other modes, where it is architecturally undefined).
	SetReg(i int, v uint64)
	RIP() uint64
	SetRIP(v uint64)
	RFLAGS() uint64
	SetRFLAGS(v uint64)
	// Segment returns segment register s with its descriptor cache.
	Segment(s SegReg) Segment
	// Control returns CR0, CR3, CR4 or EFER.
	Control(r ControlReg) uint64

	// ReadVector stores vector register i (0-15) in v: bytes 0-15 are
	// XMMi, bytes 16-31 the upper half of YMMi (zero if AVX is off).
	ReadVector(i int, v *[32]byte)
	// WriteVector writes vector register i. With vex false it writes
	// bytes 0-15 (XMMi) and preserves everything above (legacy SSE
	// semantics). With vex true it writes bytes 0-31 (YMMi) and clears
	// every bit above 255 (VEX semantics; a VEX.128 write arrives with
	// bytes 16-31 already zero).
	WriteVector(i int, v *[32]byte, vex bool)

	// ReadPhys reads guest RAM at gpa into data and reports true, or
	// reports false (reading nothing) when any byte of [gpa, gpa+len)
	// is not RAM. The emulator never passes a range that crosses a 4 KiB
	// page.
	ReadPhys(gpa uint64, data []byte) bool
	// WritePhys writes data to guest RAM at gpa and reports true, or
	// reports false (writing nothing) when any byte is not writable RAM
	// (MMIO, ROM). Then the emulator sends the write to MMIOWrite.
	WritePhys(gpa uint64, data []byte) bool
	// MMIORead and MMIOWrite are one device access of len(data) bytes
	// (little endian) at a GPA that is not RAM. The emulator issues one
	// access of the instruction's natural size (1, 2, 4, 8, 16 or 32;
	// 64 for MOVDIR64B) and splits it only where the guest access itself
	// crosses a 4 KiB page (then the pieces may have any size from 1 to
	// 63) or crosses from RAM into MMIO. Implementations must not retain
	// data.
	MMIORead(gpa uint64, data []byte)
	MMIOWrite(gpa uint64, data []byte)
	// PIORead and PIOWrite are one port access of len(data) bytes
	// (1, 2 or 4). Implementations must not retain data.
	PIORead(port uint16, data []byte)
	PIOWrite(port uint16, data []byte)
}

// BusLocker is optionally implemented by a CPU. For a LOCK-prefixed
// read-modify-write instruction (and XCHG with memory, which is always
// locked) the emulator calls LockBus before the read and UnlockBus after the
// write, so that other vCPUs emulating at the same time cannot interleave
// accesses: the device sees one read followed by one write of the operand
// size at the same address. Without a BusLocker the pair is still issued
// back to back from this goroutine.
type BusLocker interface {
	LockBus()
	UnlockBus()
}

// Exception vectors carried by Fault.
const (
	VectorDE = 0  // divide error (not raised by the emulator)
	VectorUD = 6  // invalid opcode
	VectorNM = 7  // device not available (CR0.TS with SSE/AVX)
	VectorSS = 12 // stack-segment fault
	VectorGP = 13 // general protection
	VectorPF = 14 // page fault
	VectorAC = 17 // alignment check
)

// Page-fault error code bits (Fault.ErrorCode for VectorPF).
const (
	PFPresent  = 1 << 0 // the page was present (protection violation)
	PFWrite    = 1 << 1
	PFUser     = 1 << 2
	PFReserved = 1 << 3 // a reserved bit was set in a paging entry
	PFFetch    = 1 << 4 // instruction fetch
)

// Fault is an exception the instruction raised. The backend injects it
// into the guest (vector, error code, and CR2 for #PF). When Step returns a
// Fault, RIP is unchanged and no register was written, except that a REP
// string instruction keeps the progress (RCX, RSI, RDI) of the iterations
// that completed before the faulting one, exactly as the CPU does.
type Fault struct {
	Vector       uint8
	HasErrorCode bool
	ErrorCode    uint32
	// CR2 is the faulting linear address for #PF.
	CR2 uint64
	// RIP is the address of the faulting instruction.
	RIP uint64
}

var vectorNames = map[uint8]string{
	VectorDE: "#DE", VectorUD: "#UD", VectorNM: "#NM", VectorSS: "#SS",
	VectorGP: "#GP", VectorPF: "#PF", VectorAC: "#AC",
}

func (f *Fault) Error() string {
	name, ok := vectorNames[f.Vector]
	if !ok {
		name = fmt.Sprintf("vector %d", f.Vector)
	}
	switch {
	case f.Vector == VectorPF:
		return fmt.Sprintf("%s at rip %#x: error code %#x, cr2 %#x", name, f.RIP, f.ErrorCode, f.CR2)
	case f.HasErrorCode:
		return fmt.Sprintf("%s(%#x) at rip %#x", name, f.ErrorCode, f.RIP)
	}
	return fmt.Sprintf("%s at rip %#x", name, f.RIP)
}

// ErrTruncated is wrapped by the error Step returns when the instruction
// is longer than the bytes given and the rest could not be fetched from
// guest RAM at CS:RIP (for example because it continues in MMIO). Test
// with errors.Is.
var ErrTruncated = errors.New("truncated instruction")

// UnsupportedError is returned for a valid instruction that the emulator
// does not execute. Nothing was changed. The backend stops the vCPU with
// the message (or injects #UD if it prefers).
type UnsupportedError struct {
	// Name is the instruction's mnemonic (for example "vmovdqu32",
	// "cpuid"), or a description of the opcode when it has none.
	Name string
	// Bytes are the instruction's bytes (its full decoded length).
	Bytes []byte
	RIP   uint64
	// Reason says why, when the mnemonic alone does not (for example
	// "MMX register form", "EVEX encoding").
	Reason string
}

func (e *UnsupportedError) Error() string {
	s := fmt.Sprintf("unsupported instruction %s (% x) at rip %#x", e.Name, e.Bytes, e.RIP)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// IO describes a port I/O intercept as a hypervisor reports it (MSHV's
// io_port intercept message, VMX exit qualification), for PortIO.
type IO struct {
	Port uint16
	// Size is the access size: 1, 2 or 4.
	Size int
	// In is true for IN/INS, false for OUT/OUTS.
	In bool
	// String marks INS/OUTS; Rep a REP prefix on them.
	String, Rep bool
	// InsnLen is the instruction length; RIP advances by it when the
	// instruction completes.
	InsnLen int
	// Insn, when not empty, are the instruction's bytes as the
	// intercept reported them (possibly fewer than InsnLen). PortIO then
	// decodes them for the prefixes the description lacks (address
	// size, segment override) and checks that they are the described
	// I/O instruction; otherwise string forms use the mode's address
	// size and DS.
	Insn []byte
}

// DefaultMaxRepeat is the MaxRepeat New sets.
const DefaultMaxRepeat = 1024

// Emulator executes instructions for one vCPU. It holds the decoder state
// and scratch buffers so that Step does not allocate; create one per vCPU
// with New and reuse it. It is not safe for concurrent use.
type Emulator struct {
	// MaxRepeat bounds the iterations one Step runs of a REP string
	// instruction (values < 1 mean 1); see Step.
	MaxRepeat int

	st state // implementation state (emu.go)
}

// New returns an Emulator for cpu.
func New(cpu CPU) *Emulator {
	e := &Emulator{MaxRepeat: DefaultMaxRepeat}
	e.st.cpu = cpu
	return e
}

// Step is New(cpu).Step(insn) for callers that do not keep an Emulator.
// It allocates the Emulator; use New and Emulator.Step on hot paths.
func Step(cpu CPU, insn []byte) error { return New(cpu).Step(insn) }

// Step decodes and executes one instruction at CS:RIP whose first bytes
// are insn (it fetches the rest from guest RAM when insn is short, as an
// intercept may give fewer bytes than the instruction near a page
// boundary; insn may be empty). It writes back the registers and RFLAGS
// the instruction changed and advances RIP.
//
// It returns nil, a *Fault to inject (nothing written back, RIP
// unchanged; this includes a #PF or #GP raised while fetching the rest of
// the instruction), an *UnsupportedError (nothing changed), or an error
// wrapping ErrTruncated when the rest of the instruction is not in RAM
// (nothing changed). A REP string instruction with more than
// MaxRepeat iterations left executes MaxRepeat of them, writes back RCX,
// RSI and RDI and returns nil without advancing RIP: the guest re-executes
// it, so the next intercept continues where this one stopped, after
// pending interrupts had a chance to be delivered.
func (e *Emulator) Step(insn []byte) error { return e.step(insn) }

// PortIO completes a port I/O intercept described by io (IN, OUT, INS,
// OUTS with or without REP) and advances RIP, with the same results and
// REP rules as Step.
func (e *Emulator) PortIO(io IO) error { return e.portIO(&io) }

// Hint tells the next Step (only) that linear address gva translates to
// guest physical address gpa, as an MMIO intercept reports it (MSHV's
// gva_gpa_valid), so that accesses to that 4 KiB page skip the page walk.
// Accessed/dirty bits are then not updated for that page (the CPU did it
// when it made the intercepted access).
func (e *Emulator) Hint(gva, gpa uint64) { e.st.setHint(gva, gpa) }
