package kvm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/cpu"
)

// KickSignal is the real-time signal (SIGRTMIN+6 under glibc numbering)
// that Kick sends to a vCPU thread to make KVM_RUN return EINTR. The Go
// runtime installs its own handler for every real-time signal at start-up
// and drops the ones os/signal was not asked for, so a kick interrupts
// KVM_RUN and is otherwise ignored: no os/signal registration, which would
// cost a signal-mask thread at start and a goroutine wake-up per kick.
const KickSignal = syscall.Signal(40)

// unblockKickSignal makes sure the calling thread (the vCPU's) can receive
// KickSignal even if the process inherited it blocked.
func unblockKickSignal() error {
	var set unix.Sigset_t
	n := uint(KickSignal) - 1
	set.Val[n/64] |= 1 << (n % 64)
	return unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
}

// Offsets into struct kvm_run (checked in abi_test.go).
const (
	runExitUnion = 32
	mmioDataOff  = runExitUnion + 8
)

// VCPU is one KVM vCPU. It implements accel.VCPU and accel.ExtINTReceiver.
//
// Threading: Run (and RunRaw) must be called on the OS thread that Kick
// will signal, i.e. from a goroutine locked with runtime.LockOSThread for
// the vCPU's whole life (one OS thread per vCPU is the caller's job). The
// state getters and setters may be called from any goroutine while the
// vCPU is not running.
type VCPU struct {
	// msrList caches MSRIndexList (see probeMSRIndexList); turning the
	// SynIC on empties it, as the list then changes.
	msrMu   sync.Mutex
	msrList []uint32

	// synic is set once KVM's Hyper-V SynIC is on for this vCPU (see
	// synic.go).
	synic atomic.Bool
	// shstk is set when the vCPU's CPUID offers CET shadow stacks, whose
	// current pointer is state of its own (cet.go).
	shstk atomic.Bool

	vm     *VM
	index  int
	fd     int
	runMem []byte
	run    *kvmRun
	// word0 aliases the first 4 bytes of kvm_run (request_interrupt_window,
	// immediate_exit, padding) so Kick can set immediate_exit atomically.
	word0 *uint32

	// kickMu serialises poke against Close, so a Kick racing with Close
	// never touches an unmapped kvm_run.
	kickMu sync.Mutex
	closed bool

	tid    atomic.Int32
	kicked atomic.Bool // Kick was requested and not yet reported
	woken  atomic.Bool // Wake was requested

	src      accel.ExtINTSource
	injected bool // an ExtINT was injected since the last exit
}

var (
	_ accel.VCPU           = (*VCPU)(nil)
	_ accel.ExtINTReceiver = (*VCPU)(nil)
)

// CreateVCPU creates vCPU index (its APIC ID). The vCPU gets the VM's
// CPUID table specialised with cpu.ForVCPUTopology (APIC ID, topology) here,
// because KVM accepts only an identical KVM_SET_CPUID2 after the first run.
// The LAPIC is initialised as a BIOS leaves it: software-enabled, LINT0
// ExtINT on the BSP (virtual wire mode for the PIC), LINT1 NMI.
func (vm *VM) CreateVCPU(index int) (accel.VCPU, error) {
	return vm.NewVCPU(index)
}

// NewVCPU is CreateVCPU returning the concrete type.
func (vm *VM) NewVCPU(index int) (*VCPU, error) {
	if index < 0 || (vm.cfg.NumVCPUs > 0 && index >= vm.cfg.NumVCPUs) {
		return nil, fmt.Errorf("create vCPU %d: the VM has %d vCPUs", index, vm.cfg.NumVCPUs)
	}
	if err := unblockKickSignal(); err != nil {
		return nil, fmt.Errorf("create vCPU %d: unblock the kick signal: %w", index, err)
	}
	r, err := ioctl(vm.fd, ioctlCreateVCPU, uintptr(index))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", index, err)
	}
	fd := int(r)
	mem, err := unix.Mmap(fd, 0, vm.acc.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", index, err)
	}
	v := &VCPU{vm: vm, index: index, fd: fd, runMem: mem}
	v.run = (*kvmRun)(unsafe.Pointer(&mem[0]))
	v.word0 = (*uint32)(unsafe.Pointer(&mem[0]))
	v.tid.Store(int32(unix.Gettid()))
	{
		if err := v.SetCPUID(cpu.ForVCPUTopology(vm.cfg.CPUID, index, vm.cfg.Topology)); err != nil {
			v.Close()
			return nil, fmt.Errorf("create vCPU %d: %w", index, err)
		}
	}
	if err := v.setFeatureMSRs(vm.cfg.FeatureMSRs); err != nil {
		v.Close()
		return nil, fmt.Errorf("create vCPU %d: %w", index, err)
	}
	if err := v.initLAPIC(); err != nil {
		v.Close()
		return nil, fmt.Errorf("create vCPU %d: %w", index, err)
	}
	return v, nil
}

// LAPIC register offsets used at reset.
const (
	apicSVR  = 0xf0
	apicLVT0 = 0x350
	apicLVT1 = 0x360
)

func (v *VCPU) initLAPIC() error {
	l, err := v.LAPIC()
	if err != nil {
		return err
	}
	put := func(off int, val uint32) {
		l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(val), byte(val>>8), byte(val>>16), byte(val>>24)
	}
	if v.index == 0 {
		put(apicSVR, 0x1ff)  // software enabled, spurious vector 0xff
		put(apicLVT0, 0x700) // ExtINT, unmasked
	}
	put(apicLVT1, 0x400) // NMI
	return v.SetLAPIC(&l)
}

// Index is the vCPU index (and APIC ID).
func (v *VCPU) Index() int { return v.index }

// Close unmaps kvm_run and closes the vCPU fd. It must not run
// concurrently with Run; concurrent Kick and Wake calls are harmless.
func (v *VCPU) Close() error {
	v.kickMu.Lock()
	defer v.kickMu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	err1 := unix.Munmap(v.runMem)
	err2 := unix.Close(v.fd)
	v.fd = -1
	if err1 != nil {
		return err1
	}
	return err2
}

// SetExtINTSource wires the legacy PIC to this vCPU: before each entry Run
// injects its pending interrupt with KVM_INTERRUPT when the guest can take
// it, or asks KVM for an interrupt-window exit. When the source's output
// rises while the vCPU may be halted in the kernel, call Wake.
func (v *VCPU) SetExtINTSource(src accel.ExtINTSource) { v.src = src }

// setRunByte atomically sets byte i (0 request_interrupt_window, 1
// immediate_exit) of kvm_run's first word.
func (v *VCPU) setRunByte(i uint, val uint8) {
	for {
		old := atomic.LoadUint32(v.word0)
		nw := old&^(0xff<<(8*i)) | uint32(val)<<(8*i)
		if old == nw || atomic.CompareAndSwapUint32(v.word0, old, nw) {
			return
		}
	}
}

// Kick makes Run return ExitInterrupted as soon as possible: it sets
// immediate_exit (so a KVM_RUN that has not started yet returns at once)
// and signals the vCPU thread with KickSignal (so a running one exits).
// Safe from any goroutine.
func (v *VCPU) Kick() {
	v.kicked.Store(true)
	v.poke()
}

// Wake makes a vCPU that is in Run re-evaluate its ExtINT source (e.g. the
// PIC raised an interrupt while the guest halted in the kernel) without
// Run returning. Safe from any goroutine.
func (v *VCPU) Wake() {
	v.woken.Store(true)
	v.poke()
}

func (v *VCPU) poke() {
	v.kickMu.Lock()
	defer v.kickMu.Unlock()
	if v.closed {
		return
	}
	v.setRunByte(1, 1)
	// A kick from the vCPU's own thread (a device handler stopping the VM)
	// comes while it is outside KVM_RUN: immediate_exit alone stops the
	// next entry, and no signal is needed.
	if tid := v.tid.Load(); tid != 0 && int(tid) != unix.Gettid() {
		// ESRCH (thread gone) is harmless: immediate_exit is set.
		_ = unix.Tgkill(unix.Getpid(), int(tid), KickSignal)
	}
}

// SetImmediateExit sets or clears kvm_run.immediate_exit. With it set,
// KVM_RUN completes a pending PIO/MMIO (the data the caller left in the
// RawExit slices) and returns EINTR without running guest code.
func (v *VCPU) SetImmediateExit(on bool) {
	var b uint8
	if on {
		b = 1
	}
	v.setRunByte(1, b)
}

// injectExtINT runs before each entry when an ExtINT source is wired.
func (v *VCPU) injectExtINT() error {
	want := false
	if v.src.Pending() {
		if !v.injected && v.run.ReadyForInterruptInjection != 0 && v.run.IfFlag != 0 {
			if vec, ok := v.src.Ack(); ok {
				irq := kvmInterrupt{IRQ: uint32(vec)}
				if _, err := ioctlPtr(v.fd, ioctlInterrupt, unsafe.Pointer(&irq)); err != nil {
					return fmt.Errorf("vCPU %d: KVM_INTERRUPT vector %#x: %w", v.index, vec, err)
				}
				v.injected = true
			}
			want = v.src.Pending()
		} else {
			want = true
		}
	}
	var b uint8
	if want {
		b = 1
	}
	if v.run.RequestInterruptWindow != b {
		v.setRunByte(0, b)
	}
	return nil
}

// Run enters the guest until an exit that is not port I/O or MMIO (those
// go to h, including string/REP port I/O one element at a time). EINTR
// from a signal that was not a Kick (Go's runtime preempts threads with
// SIGURG) re-enters; a Kick returns ExitInterrupted. Run must be called on
// the vCPU's locked OS thread (see VCPU). The I/O path does not allocate.
func (v *VCPU) Run(h accel.IOHandler) (accel.Exit, error) {
	if v.fd < 0 {
		return accel.Exit{}, fmt.Errorf("vCPU %d: run after close", v.index)
	}
	v.tid.Store(int32(unix.Gettid()))
	for {
		if v.src != nil {
			if err := v.injectExtINT(); err != nil {
				return accel.Exit{}, err
			}
		}
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
		v.injected = false
		if e != 0 {
			switch e {
			case unix.EINTR:
				v.setRunByte(1, 0)
				v.woken.Store(false)
				if v.kicked.Swap(false) {
					return accel.Exit{Reason: accel.ExitInterrupted}, nil
				}
				continue
			case unix.EAGAIN:
				// An AP leaving wait-for-SIPI returns EAGAIN once.
				continue
			}
			return accel.Exit{}, fmt.Errorf("vCPU %d: KVM_RUN: %w", v.index, e)
		}
		switch v.run.ExitReason {
		case exitIO:
			if err := v.handleIO(h); err != nil {
				return accel.Exit{}, err
			}
		case exitMMIO:
			if err := v.handleMMIO(h); err != nil {
				return accel.Exit{}, err
			}
		case exitIRQWindowOpen, exitIntr:
			// Loop: injectExtINT runs before the next entry.
		case exitHyperV:
			v.answerHyperV()
		default:
			return v.otherExit()
		}
	}
}

func (v *VCPU) handleIO(h accel.IOHandler) error {
	io := (*kvmRunIO)(unsafe.Pointer(&v.run.Exit[0]))
	size := uint64(io.Size)
	n := size * uint64(io.Count)
	if (size != 1 && size != 2 && size != 4) || io.DataOffset < runExitUnion || io.DataOffset+n > uint64(len(v.runMem)) {
		return fmt.Errorf("vCPU %d: bad KVM_EXIT_IO from kernel (port %#x size %d count %d offset %#x)", v.index, io.Port, io.Size, io.Count, io.DataOffset)
	}
	data := v.runMem[io.DataOffset : io.DataOffset+n]
	port := io.Port
	if io.Direction == exitIOOut {
		for i := uint64(0); i < n; i += size {
			h.PIOWrite(port, data[i:i+size:i+size])
		}
	} else {
		for i := uint64(0); i < n; i += size {
			h.PIORead(port, data[i:i+size:i+size])
		}
	}
	return nil
}

func (v *VCPU) handleMMIO(h accel.IOHandler) error {
	m := (*kvmRunMMIO)(unsafe.Pointer(&v.run.Exit[0]))
	l := m.Len
	if l == 0 || l > 8 {
		return fmt.Errorf("vCPU %d: bad KVM_EXIT_MMIO from kernel (addr %#x len %d)", v.index, m.PhysAddr, l)
	}
	data := v.runMem[mmioDataOff : mmioDataOff+l : mmioDataOff+l]
	if m.IsWrite != 0 {
		h.MMIOWrite(m.PhysAddr, data)
	} else {
		h.MMIORead(m.PhysAddr, data)
	}
	return nil
}

// answerHyperV completes a KVM_EXIT_HYPERV. KVM's Hyper-V emulation (on
// when the guest's CPUID carries Hyper-V's leaves, as a guest restored
// from an MSHV snapshot does) serves the clocks, the hypercall page and
// the TLB-flush and IPI hypercalls itself, and leaves to userspace only
// the hypercalls that need a VMM's Hyper-V services (messages and events
// for VMBus, extended hypercalls). Neither govmm nor mshvsim offers those:
// the guest gets HV_STATUS_INVALID_HYPERCALL_CODE, as from a hypervisor
// without them. SynIC and synthetic-debugger MSR writes have already taken
// effect in KVM and need no answer.
func (v *VCPU) answerHyperV() {
	h := (*kvmRunHyperV)(unsafe.Pointer(&v.run.Exit[0]))
	if h.Type == hypervExitHcall {
		h.Result = hvStatusInvalidHypercallCode
	}
}

// otherExit converts the exits Run returns.
func (v *VCPU) otherExit() (accel.Exit, error) {
	reason := v.run.ExitReason
	switch reason {
	case exitHLT:
		return accel.Exit{Reason: accel.ExitHalt}, nil
	case exitIOAPICEOI:
		return accel.Exit{Reason: accel.ExitIOAPICEOI, Vector: v.run.Exit[0]}, nil
	case exitSystemEvent:
		se := (*kvmRunSystemEvent)(unsafe.Pointer(&v.run.Exit[0]))
		switch se.Type {
		case systemEventShutdown:
			return accel.Exit{Reason: accel.ExitPowerOff}, nil
		case systemEventReset:
			return accel.Exit{Reason: accel.ExitReset}, nil
		case systemEventCrash:
			return v.fatal(accel.ExitShutdown, "guest reported a crash (system event)"), nil
		}
		return v.fatal(accel.ExitUnknown, fmt.Sprintf("system event type %d", se.Type)), nil
	case exitShutdown:
		return v.fatal(accel.ExitShutdown, "shutdown (triple fault)"), nil
	case exitDebug:
		d := (*kvmRunDebug)(unsafe.Pointer(&v.run.Exit[0]))
		return accel.Exit{Reason: accel.ExitDebug, RIP: d.PC,
			Detail: fmt.Sprintf("debug exception %d dr6 %#x dr7 %#x", d.Exception, d.DR6, d.DR7)}, nil
	case exitFailEntry:
		f := (*kvmRunFailEntry)(unsafe.Pointer(&v.run.Exit[0]))
		return v.fatal(accel.ExitFailEntry, fmt.Sprintf("hardware entry failure reason %#x on host CPU %d", f.HardwareEntryFailureReason, f.CPU)), nil
	case exitInternalError:
		return v.internalError(), nil
	}
	return v.fatal(accel.ExitUnknown, fmt.Sprintf("unexpected KVM exit reason %d (%s)", reason, exitName(reason))), nil
}

func (v *VCPU) fatal(r accel.ExitReason, detail string) accel.Exit {
	x := accel.Exit{Reason: r, Detail: detail}
	if regs, err := v.Regs(); err == nil {
		x.RIP = regs.RIP
	}
	return x
}

func (v *VCPU) internalError() accel.Exit {
	ie := (*kvmRunInternal)(unsafe.Pointer(&v.run.Exit[0]))
	var detail string
	switch ie.Suberror {
	case internalErrorEmulation:
		detail = "emulation failure (KVM cannot emulate the instruction)"
	case internalErrorSimulEx:
		detail = "exception while delivering an exception"
	case internalErrorDeliveryEv:
		detail = "event delivery failed"
	case internalErrorUnexpectedEx:
		detail = "unexpected hardware exit reason"
	default:
		detail = fmt.Sprintf("internal error suberror %d", ie.Suberror)
	}
	x := v.fatal(accel.ExitInternalError, fmt.Sprintf("%s (KVM internal error suberror %d)", detail, ie.Suberror))
	if ie.Suberror == internalErrorEmulation {
		ef := (*kvmRunEmulationFailure)(unsafe.Pointer(&v.run.Exit[0]))
		if ef.Ndata >= 3 && ef.Flags&emulationFlagInsnBytes != 0 && ef.InsnSize > 0 && ef.InsnSize <= 15 {
			x.Insn = append([]byte(nil), ef.InsnBytes[:ef.InsnSize]...)
			return x
		}
	}
	n := ie.Ndata
	if n > 16 {
		n = 16
	}
	if n > 0 {
		x.Detail += fmt.Sprintf(" (data %#x)", ie.Data[:n])
	}
	return x
}

func exitName(r uint32) string {
	names := map[uint32]string{
		exitUnknown: "unknown", exitException: "exception", exitHypercall: "hypercall",
		exitSetTPR: "set-tpr", exitTPRAccess: "tpr-access", exitNMI: "nmi",
		exitX86RDMSR: "rdmsr", exitX86WRMSR: "wrmsr", exitDirtyRingFull: "dirty-ring-full",
		exitX86BusLock: "bus-lock", exitNotify: "notify",
	}
	if s, ok := names[r]; ok {
		return s
	}
	return "?"
}

// RawExit is one KVM exit as RunRaw reports it, for callers (mshvsim) that
// handle exits themselves. Reason is the KVM_EXIT_* value (RawExitIO, ...).
// The IO.Data and MMIO.Data slices alias the vCPU's kvm_run page: fill
// them for reads before the next entry, and do not keep them past it.
type RawExit struct {
	// Interrupted is true when KVM_RUN returned EINTR (a signal, a Kick,
	// or immediate_exit); Reason is then meaningless. Kicked is true when
	// a Kick was requested since the last RunRaw that reported one.
	Interrupted bool
	Kicked      bool
	Reason      uint32
	IO          RawIO
	MMIO        RawMMIO
	// SystemEvent is the KVM_SYSTEM_EVENT_* type for RawExitSystemEvent;
	// EOIVector the vector for RawExitIOAPICEOI.
	SystemEvent uint32
	EOIVector   uint8
	// InternalSuberror is the suberror of RawExitInternalError and Insn
	// the instruction bytes KVM fetched at RIP for an emulation failure
	// (up to 15 bytes, more than the instruction itself).
	InternalSuberror uint32
	Insn             []byte
	// FailEntryReason is the hardware reason of RawExitFailEntry.
	FailEntryReason uint64
}

// RawIO is a KVM_EXIT_IO: Count elements of Size bytes each in Data.
type RawIO struct {
	Out   bool
	Size  uint8
	Port  uint16
	Count uint32
	Data  []byte
}

// RawMMIO is a KVM_EXIT_MMIO of len(Data) bytes at Addr.
type RawMMIO struct {
	Addr  uint64
	Write bool
	Data  []byte
}

// KVM exit reasons RunRaw reports.
const (
	RawExitUnknown         = exitUnknown
	RawExitIO              = exitIO
	RawExitDebug           = exitDebug
	RawExitHLT             = exitHLT
	RawExitMMIO            = exitMMIO
	RawExitIRQWindowOpen   = exitIRQWindowOpen
	RawExitShutdown        = exitShutdown
	RawExitFailEntry       = exitFailEntry
	RawExitIntr            = exitIntr
	RawExitInternalError   = exitInternalError
	RawExitSystemEvent     = exitSystemEvent
	RawExitIOAPICEOI       = exitIOAPICEOI
	SystemEventShutdown    = systemEventShutdown
	SystemEventReset       = systemEventReset
	SystemEventCrash       = systemEventCrash
	InternalErrorEmulation = internalErrorEmulation
)

// RunRaw enters the guest once (KVM_RUN; EAGAIN from an AP leaving
// wait-for-SIPI is retried) and returns the raw exit without handling it,
// except KVM_EXIT_HYPERV, which it answers as Run does (answerHyperV) and
// re-enters.
//
// Completing I/O: for an IO-in or MMIO-read exit, write the value into
// RawExit.IO.Data / MMIO.Data; KVM finishes the instruction on the next
// KVM_RUN. To finish a pending PIO/MMIO without running any further guest
// code, call SetImmediateExit(true) and RunRaw again: KVM completes the
// access and returns EINTR (Interrupted), and RunRaw clears immediate_exit.
//
// RIP at the exit (measured on this project's KVM, kvm_pvm with CPL0 code
// emulated; see TestRIPAtIOExit): for port OUT and MMIO writes KVM has
// already advanced RIP past the instruction when it reports the exit; for
// port IN and MMIO reads RIP still points at the instruction and KVM
// advances it when the next KVM_RUN completes the access. (This matches
// KVM's emulator path; hardware KVM's fast PIO path for natively executed
// OUT leaves RIP at the instruction.) Do not rely on either: compare RIP
// with where the instruction is.
func (v *VCPU) RunRaw() (RawExit, error) {
	if v.fd < 0 {
		return RawExit{}, fmt.Errorf("vCPU %d: run after close", v.index)
	}
	v.tid.Store(int32(unix.Gettid()))
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), ioctlRun, 0)
		if e == unix.EAGAIN {
			continue
		}
		if e == unix.EINTR {
			v.setRunByte(1, 0)
			v.woken.Store(false)
			return RawExit{Interrupted: true, Kicked: v.kicked.Swap(false)}, nil
		}
		if e != 0 {
			return RawExit{}, fmt.Errorf("vCPU %d: KVM_RUN: %w", v.index, e)
		}
		if v.run.ExitReason == exitHyperV {
			v.answerHyperV() // as Run does: see answerHyperV
			continue
		}
		break
	}
	x := RawExit{Reason: v.run.ExitReason}
	switch x.Reason {
	case exitIO:
		io := (*kvmRunIO)(unsafe.Pointer(&v.run.Exit[0]))
		n := uint64(io.Size) * uint64(io.Count)
		if io.DataOffset < runExitUnion || io.DataOffset+n > uint64(len(v.runMem)) {
			return x, fmt.Errorf("vCPU %d: bad KVM_EXIT_IO from kernel (offset %#x, %d bytes)", v.index, io.DataOffset, n)
		}
		x.IO = RawIO{Out: io.Direction == exitIOOut, Size: io.Size, Port: io.Port, Count: io.Count, Data: v.runMem[io.DataOffset : io.DataOffset+n]}
	case exitMMIO:
		m := (*kvmRunMMIO)(unsafe.Pointer(&v.run.Exit[0]))
		l := m.Len
		if l > 8 {
			return x, fmt.Errorf("vCPU %d: bad KVM_EXIT_MMIO from kernel (len %d)", v.index, l)
		}
		x.MMIO = RawMMIO{Addr: m.PhysAddr, Write: m.IsWrite != 0, Data: v.runMem[mmioDataOff : mmioDataOff+l]}
	case exitSystemEvent:
		x.SystemEvent = (*kvmRunSystemEvent)(unsafe.Pointer(&v.run.Exit[0])).Type
	case exitIOAPICEOI:
		x.EOIVector = v.run.Exit[0]
	case exitFailEntry:
		x.FailEntryReason = (*kvmRunFailEntry)(unsafe.Pointer(&v.run.Exit[0])).HardwareEntryFailureReason
	case exitInternalError:
		ie := v.internalError()
		x.InternalSuberror = (*kvmRunInternal)(unsafe.Pointer(&v.run.Exit[0])).Suberror
		x.Insn = ie.Insn
	}
	return x, nil
}

// ReadyForInterrupt reports kvm_run.ready_for_interrupt_injection and the
// guest's RFLAGS.IF as of the last exit.
func (v *VCPU) ReadyForInterrupt() (ready, ifFlag bool) {
	return v.run.ReadyForInterruptInjection != 0, v.run.IfFlag != 0
}

// RequestInterruptWindow sets kvm_run.request_interrupt_window: KVM exits
// with RawExitIRQWindowOpen as soon as the guest can take an interrupt.
func (v *VCPU) RequestInterruptWindow(on bool) {
	var b uint8
	if on {
		b = 1
	}
	v.setRunByte(0, b)
}

// InjectExtINT queues an external interrupt vector (KVM_INTERRUPT; on a
// split irqchip it is delivered through LINT0 when the LAPIC accepts it).
func (v *VCPU) InjectExtINT(vector uint8) error {
	irq := kvmInterrupt{IRQ: uint32(vector)}
	if _, err := ioctlPtr(v.fd, ioctlInterrupt, unsafe.Pointer(&irq)); err != nil {
		return fmt.Errorf("vCPU %d: KVM_INTERRUPT vector %#x: %w", v.index, vector, err)
	}
	return nil
}

// InjectNMI queues an NMI (KVM_NMI).
func (v *VCPU) InjectNMI() error {
	if _, err := ioctl(v.fd, ioctlNMI, 0); err != nil {
		return fmt.Errorf("vCPU %d: KVM_NMI: %w", v.index, err)
	}
	return nil
}

var errClosed = errors.New("vCPU is closed")

var _ accel.ExtINTWaker = (*VCPU)(nil)
