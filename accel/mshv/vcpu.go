package mshv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
	"govmm/cpu"
	"govmm/x86/emu"
)

// VCPU is one MSHV virtual processor. It implements accel.VCPU and
// accel.ExtINTReceiver.
//
// Run must be called from one goroutine locked to its OS thread (Kick
// signals that thread); the state getters and setters may be called from
// any goroutine while the VP is not running.
type VCPU struct {
	vm    *VM
	index int
	fd    int
	hv    hvcaller // on the VP fd
	bufs  *regBufs
	msg   *mshvabi.Message

	pageMem []byte
	page    *mshvabi.VPRegisterPage // nil without a register page
	// pagePending: completion registers were written to the page (dirty
	// bits set) and no dispatch has consumed them yet.
	pagePending bool

	emu *emu.Emulator
	cpu *emuCPU

	// shstk: the CPUID table the VMM gave this VP offers CET shadow
	// stacks, so the VP has a current shadow-stack pointer to carry
	// (cet.go).
	shstk atomic.Bool

	tid      atomic.Int32
	kicked   atomic.Bool
	woken    atomic.Bool
	inRun    atomic.Bool
	retrying atomic.Bool

	src accel.ExtINTSource
	// extLine: this VP raised the partition's ExtINT line
	// (ASSERT_VIRTUAL_INTERRUPT, type EXTINT) and has not yet seen a
	// dispatch return since. The hypervisor keeps an ExtINT asserted
	// until CLEAR_VIRTUAL_INTERRUPT lowers it, as upstream's resampler
	// does for an EXTINT irqfd (drivers/hv/mshv_eventfd.c,
	// mshv_irqfd_resampler_ack: hv_should_clear_interrupt is true for
	// HV_X64_INTERRUPT_TYPE_EXTINT only); left up, the guest would take
	// the vector again at every entry with interrupts enabled.
	extLine bool
	extVec  uint8 // the vector extLine carries
}

var (
	_ accel.VCPU           = (*VCPU)(nil)
	_ accel.ExtINTReceiver = (*VCPU)(nil)
	_ accel.ExtINTWaker    = (*VCPU)(nil)
)

// Boot MSR values (mshv-abi.md §7 step 8, as Cloud Hypervisor sets them).
const mtrrDefTypeEnableWB = 1<<11 | 6

// NewVCPU creates VP index: MSHV_CREATE_VP, the register page, boot MSRs,
// the CPUID overrides of the VM's CPU model and the LAPIC (LINT0 ExtINT on
// the BSP for the PIC, LINT1 NMI), as the KVM backend does.
func (vm *VM) NewVCPU(index int) (*VCPU, error) {
	if index < 0 || index >= MaxVCPUs || (vm.cfg.NumVCPUs > 0 && index >= vm.cfg.NumVCPUs) {
		return nil, fmt.Errorf("create vCPU %d: the VM has %d vCPUs", index, vm.cfg.NumVCPUs)
	}
	fd, err := mshvabi.CreateVPFD(vm.dev, vm.pfd, uint32(index))
	if err != nil {
		return nil, fmt.Errorf("create vCPU %d: MSHV_CREATE_VP: %w", index, err)
	}
	v := &VCPU{vm: vm, index: index, fd: fd, hv: hvcaller{dev: vm.dev, fd: fd}, bufs: new(regBufs), msg: new(mshvabi.Message)}
	if m, err := vm.dev.Mmap(fd, mshvabi.VPMmapRegisters, 4096); err == nil {
		if p, err := mshvabi.RegisterPage(m); err == nil {
			v.pageMem, v.page = m, p
		} else {
			vm.dev.Munmap(m)
		}
	} else if !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
		vm.dev.Close(fd)
		return nil, fmt.Errorf("create vCPU %d: mmap register page: %w", index, err)
	}
	v.cpu = &emuCPU{v: v}
	v.emu = emu.New(v.cpu)
	fail := func(err error) (*VCPU, error) {
		v.Close()
		return nil, fmt.Errorf("create vCPU %d: %w", index, err)
	}
	boot := []mshvabi.RegisterAssoc{
		reg(mshvabi.RegSysenterCS, 0), reg(mshvabi.RegSysenterEIP, 0), reg(mshvabi.RegSysenterESP, 0),
		reg(mshvabi.RegSTAR, 0), reg(mshvabi.RegLSTAR, 0), reg(mshvabi.RegCSTAR, 0),
		reg(mshvabi.RegKernelGSBase, 0), reg(mshvabi.RegSFMASK, 0),
		reg(mshvabi.RegMTRRDefType, mtrrDefTypeEnableWB),
	}
	if err := v.hv.setRegs(v.bufs, uint32(index), boot); err != nil {
		return fail(fmt.Errorf("boot MSRs: %w", err))
	}
	if len(vm.cfg.CPUID) > 0 {
		if err := v.SetCPUID(cpu.ForVCPUTopology(vm.cfg.CPUID, index, vm.cfg.Topology)); err != nil {
			return fail(err)
		}
	}
	if err := v.initLAPIC(); err != nil {
		return fail(err)
	}
	vm.vcpus.Store(index, v)
	return v, nil
}

func (v *VCPU) initLAPIC() error {
	l, err := v.LAPIC()
	if err != nil {
		return err
	}
	put := func(off int, val uint32) {
		l.Regs[off], l.Regs[off+1], l.Regs[off+2], l.Regs[off+3] = byte(val), byte(val>>8), byte(val>>16), byte(val>>24)
	}
	if v.index == 0 {
		put(0xf0, 0x1ff)  // software enabled, spurious vector 0xff
		put(0x350, 0x700) // LINT0 ExtINT, unmasked
	}
	put(0x360, 0x400) // LINT1 NMI
	if err := v.SetLAPIC(&l); err != nil {
		return fmt.Errorf("initial LAPIC state: %w", err)
	}
	return nil
}

// Index is the VP index (and APIC ID).
func (v *VCPU) Index() int { return v.index }

// Close unmaps the register page and closes the VP fd.
func (v *VCPU) Close() error {
	if v.fd < 0 {
		return nil
	}
	if v.pageMem != nil {
		v.vm.dev.Munmap(v.pageMem)
		v.pageMem, v.page = nil, nil
	}
	v.vm.vcpus.Delete(v.index)
	err := v.vm.dev.Close(v.fd)
	v.fd = -1
	return err
}

// SetExtINTSource wires the legacy PIC to this VP: before each entry a
// pending PIC interrupt is acknowledged and asserted as an ExtINT.
func (v *VCPU) SetExtINTSource(src accel.ExtINTSource) { v.src = src }

// Kick makes Run return ExitInterrupted as soon as possible. MSHV has no
// immediate_exit, so a signal that lands just before MSHV_RUN_VP enters
// the kernel would be lost; Kick therefore repeats the signal until Run
// has noticed it.
func (v *VCPU) Kick() {
	v.kicked.Store(true)
	v.poke()
}

// Wake makes a VP in Run re-evaluate its ExtINT source without Run
// returning (the PIC raised an interrupt while the guest was halted).
func (v *VCPU) Wake() {
	v.woken.Store(true)
	v.poke()
}

func (v *VCPU) poke() {
	tid := int(v.tid.Load())
	if tid == 0 || !v.inRun.Load() {
		return
	}
	_ = v.vm.dev.Kick(v.fd, tid)
	if !v.retrying.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer v.retrying.Store(false)
		for i := 0; i < 10000 && (v.kicked.Load() || v.woken.Load()) && v.inRun.Load(); i++ {
			time.Sleep(time.Millisecond)
			if v.inRun.Load() {
				_ = v.vm.dev.Kick(v.fd, int(v.tid.Load()))
			}
		}
	}()
}

// Run enters the guest (MSHV_RUN_VP) until an exit that is not port I/O
// or MMIO; those are completed here through h.
func (v *VCPU) Run(h accel.IOHandler) (accel.Exit, error) {
	if v.fd < 0 {
		return accel.Exit{}, fmt.Errorf("vCPU %d: run after close", v.index)
	}
	v.tid.Store(int32(unix.Gettid()))
	if err := v.vm.unfreezeForRun(); err != nil {
		return accel.Exit{}, fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	v.cpu.h = h
	for {
		if v.kicked.Swap(false) {
			return v.leave(accel.Exit{Reason: accel.ExitInterrupted})
		}
		v.woken.Store(false)
		if err := v.injectExtINT(); err != nil {
			return accel.Exit{}, err
		}
		v.inRun.Store(true)
		if v.kicked.Load() {
			v.inRun.Store(false)
			continue
		}
		err := mshvabi.RunVP(v.vm.dev, v.fd, v.msg)
		v.inRun.Store(false)
		if err == nil && v.extLine {
			// The VP ran with the line up, and was ready for it (see
			// injectExtINT): the hypervisor delivered the vector at
			// entry. A dispatch that returned EINTR may not have entered
			// the guest, so the line stays up for the next one.
			if err := v.vm.hv.clearInterrupt(); err != nil {
				return accel.Exit{}, fmt.Errorf("vCPU %d: after delivering an ExtINT: %w", v.index, err)
			}
			v.extLine = false
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue // a kick (checked at the top), a wake, or a stray signal
			}
			if d, ok := v.vm.dev.(interface{ LastError(fd int) string }); ok {
				// The device (the simulator) says why it could not run
				// the guest: that is a fatal exit, not a VMM failure.
				if why := d.LastError(v.fd); why != "" {
					e := accel.Exit{Reason: accel.ExitInternalError, Detail: fmt.Sprintf("MSHV_RUN_VP failed (%v): %s", err, why)}
					if r, rerr := v.Regs(); rerr == nil {
						e.RIP = r.RIP
					}
					return v.leave(e)
				}
			}
			return accel.Exit{}, fmt.Errorf("vCPU %d: MSHV_RUN_VP: %w", v.index, err)
		}
		v.pagePending = false
		exit, done, err := v.handle()
		if err != nil {
			v.flushPage()
			return accel.Exit{}, fmt.Errorf("vCPU %d: %w", v.index, err)
		}
		if done {
			return v.leave(exit)
		}
	}
}

// leave flushes completion registers still waiting in the register page.
func (v *VCPU) leave(e accel.Exit) (accel.Exit, error) {
	if err := v.flushPage(); err != nil {
		return accel.Exit{}, fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	return e, nil
}

// flushPage writes register-page classes marked dirty through
// SET_VP_REGISTERS and clears their dirty bits, so that state getters and
// setters (which use hypercalls) see them without a dispatch in between.
func (v *VCPU) flushPage() error {
	if !v.pagePending || v.page == nil {
		v.pagePending = false
		return nil
	}
	p := v.page
	var regs []mshvabi.RegisterAssoc
	if p.Dirty&mshvabi.RegPageDirtyGeneral != 0 {
		for i := 0; i < 16; i++ {
			regs = append(regs, reg(mshvabi.RegRAX+uint32(i), p.GPRs[i]))
		}
	}
	if p.Dirty&mshvabi.RegPageDirtyIP != 0 {
		regs = append(regs, reg(mshvabi.RegRIP, p.RIP))
	}
	if p.Dirty&mshvabi.RegPageDirtyFlags != 0 {
		regs = append(regs, reg(mshvabi.RegRFLAGS, p.RFLAGS))
	}
	if len(regs) > 0 {
		if err := v.hv.setRegs(v.bufs, uint32(v.index), regs); err != nil {
			return fmt.Errorf("write back registers from the register page: %w", err)
		}
	}
	p.Dirty = 0
	v.pagePending = false
	return nil
}

// injectExtINT delivers a pending PIC interrupt as an ExtINT when the
// guest can take it now (RFLAGS.IF set, no interrupt shadow, nothing else
// being injected); otherwise it asks the hypervisor for an
// interruption-deliverable message, so that the PIC is acknowledged only
// when the interrupt really reaches the guest (as on KVM).
//
// The line the hypervisor raises stays up until it is cleared: Run clears
// it after the first dispatch that returns, and no other vector is
// acknowledged while it is up (the asserted one may not be delivered yet).
func (v *VCPU) injectExtINT() error {
	if v.src == nil || v.extLine || !v.src.Pending() {
		return nil
	}
	vals, err := v.get([]uint32{mshvabi.RegRFLAGS, mshvabi.RegInterruptState, mshvabi.RegPendingInterruption})
	if err != nil {
		return err
	}
	rflags := vals[0].Low
	if p := v.page; v.pagePending && p != nil && p.Dirty&mshvabi.RegPageDirtyFlags != 0 {
		rflags = p.RFLAGS
	}
	if rflags&(1<<9) == 0 || vals[1].Low&mshvabi.InterruptStateShadow != 0 || vals[2].Low&mshvabi.PendingIntrPending != 0 {
		return v.set([]mshvabi.RegisterAssoc{reg(mshvabi.RegDeliverabilityNotif, deliverabilityInterrupt)})
	}
	vec, ok := v.src.Ack()
	if !ok {
		return nil
	}
	if err := v.vm.hv.assertInterrupt(mshvabi.InterruptTypeExtINT, uint32(vec), uint64(v.index), false, false); err != nil {
		return fmt.Errorf("vCPU %d: ExtINT vector %#x: %w", v.index, vec, err)
	}
	v.extLine, v.extVec = true, vec
	return nil
}

// deliverabilityInterrupt is interrupt_notification in
// HV_X64_REGISTER_DELIVERABILITY_NOTIFICATIONS.
const deliverabilityInterrupt = 1 << 1

// fatal builds a fatal exit naming the message, RIP and bytes.
func fatal(r accel.ExitReason, rip uint64, insn []byte, format string, args ...any) accel.Exit {
	return accel.Exit{Reason: r, RIP: rip, Insn: append([]byte(nil), insn...), Detail: fmt.Sprintf(format, args...)}
}

// handle dispatches one message. done is true when Run must return exit.
func (v *VCPU) handle() (exit accel.Exit, done bool, err error) {
	m := v.msg
	t := m.Header.MessageType
	hdr := m.InterceptHeader()
	switch t {
	case mshvabi.MsgNone, mshvabi.MsgTimerExpired, mshvabi.MsgSynICEventIntercept, mshvabi.MsgSynICSINTIntercept,
		mshvabi.MsgSynICSINTDeliverable, mshvabi.MsgAsyncCallCompletion, mshvabi.MsgSchedulerVPSignalBitset,
		mshvabi.MsgSchedulerVPSignalPair, mshvabi.MsgEventLogBufferComplete, mshvabi.MsgX64InterruptionDeliverable,
		mshvabi.MsgX64SIPIIntercept, mshvabi.MsgX64LegacyFPError, mshvabi.MsgX64IOMMUPRQ:
		// Not VP exits for govmm (consumed by the kernel, notifications
		// govmm never registers for, or handled by the hypervisor): re-enter.
		return exit, false, nil
	case mshvabi.MsgX64IOPortIntercept:
		return v.handlePIO()
	case mshvabi.MsgUnmappedGPA, mshvabi.MsgGPAIntercept:
		return v.handleMMIO()
	case mshvabi.MsgX64Halt:
		return accel.Exit{Reason: accel.ExitHalt, RIP: hdr.RIP}, true, nil
	case mshvabi.MsgUnrecoverableException:
		return fatal(accel.ExitShutdown, hdr.RIP, nil, "unrecoverable exception (triple fault) on vCPU %d at rip %#x", v.index, hdr.RIP), true, nil
	case mshvabi.MsgX64APICEOI:
		e := m.APICEOI()
		v.vm.resampleEOI(uint8(e.InterruptVector))
		return accel.Exit{Reason: accel.ExitIOAPICEOI, Vector: uint8(e.InterruptVector)}, true, nil
	case mshvabi.MsgX64CPUIDIntercept:
		return v.handleCPUID()
	case mshvabi.MsgX64MSRIntercept:
		return v.handleMSR()
	case mshvabi.MsgX64ExceptionIntercept:
		x := m.Exception()
		n := min(int(x.InstructionByteCount), 16)
		return fatal(accel.ExitInternalError, hdr.RIP, x.InstructionBytes[:n], "unexpected exception intercept: vector %d error code %#x at rip %#x (govmm installs no exception intercepts)", x.ExceptionVector, x.ErrorCode, hdr.RIP), true, nil
	case mshvabi.MsgInvalidVPRegisterValue:
		return fatal(accel.ExitInternalError, 0, nil, "%s: the hypervisor rejected a register value of vCPU %d", mshvabi.MessageName(t), v.index), true, nil
	case mshvabi.MsgUnsupportedFeature:
		return fatal(accel.ExitInternalError, 0, nil, "%s on vCPU %d (feature code %d)", mshvabi.MessageName(t), v.index, uint32(m.Payload[4])|uint32(m.Payload[5])<<8), true, nil
	case mshvabi.MsgUnacceptedGPA, mshvabi.MsgGPAAttributeIntercept, mshvabi.MsgX64SEVVMGEXITIntercept:
		return fatal(accel.ExitInternalError, hdr.RIP, nil, "%s at rip %#x: isolated (SNP) partitions are not supported by govmm", mshvabi.MessageName(t), hdr.RIP), true, nil
	case mshvabi.MsgHypercallIntercept:
		return fatal(accel.ExitInternalError, hdr.RIP, nil, "%s at rip %#x: govmm installs no hypercall intercepts", mshvabi.MessageName(t), hdr.RIP), true, nil
	case mshvabi.MsgOpaqueIntercept:
		return fatal(accel.ExitInternalError, 0, nil, "%s on vCPU %d: the message is only in the intercept page, which govmm does not read", mshvabi.MessageName(t), v.index), true, nil
	}
	return fatal(accel.ExitUnknown, hdr.RIP, nil, "unknown MSHV message type %#x on vCPU %d (rip %#x if the payload has the common header)", t, v.index, hdr.RIP), true, nil
}

// handleCPUID answers an (uninstalled, but listed) CPUID intercept with
// the hypervisor's default result and advances RIP.
func (v *VCPU) handleCPUID() (accel.Exit, bool, error) {
	c := v.msg.CPUID()
	regs := []mshvabi.RegisterAssoc{
		reg(mshvabi.RegRAX, c.DefaultRAX), reg(mshvabi.RegRBX, c.DefaultRBX),
		reg(mshvabi.RegRCX, c.DefaultRCX), reg(mshvabi.RegRDX, c.DefaultRDX),
		reg(mshvabi.RegRIP, c.Header.RIP+uint64(insnLen(&c.Header, 2))),
	}
	regs, err := v.endShadow(&c.Header, regs)
	if err == nil {
		err = v.hv.setRegs(v.bufs, uint32(v.index), regs)
	}
	if err != nil {
		return accel.Exit{}, false, fmt.Errorf("complete CPUID intercept at rip %#x: %w", c.Header.RIP, err)
	}
	return accel.Exit{}, false, nil
}

// handleMSR completes an MSR intercept the way UNIMPLEMENTED_MSR_ACTION
// IGNORE_WRITE_READ_ZERO would: reads give 0, writes are dropped.
func (v *VCPU) handleMSR() (accel.Exit, bool, error) {
	x := v.msg.MSR()
	regs := []mshvabi.RegisterAssoc{reg(mshvabi.RegRIP, x.Header.RIP+uint64(insnLen(&x.Header, 2)))}
	if x.Header.InterceptAccessType == mshvabi.AccessRead {
		regs = append(regs, reg(mshvabi.RegRAX, 0), reg(mshvabi.RegRDX, 0))
	}
	regs, err := v.endShadow(&x.Header, regs)
	if err == nil {
		err = v.hv.setRegs(v.bufs, uint32(v.index), regs)
	}
	if err != nil {
		return accel.Exit{}, false, fmt.Errorf("complete MSR %#x intercept at rip %#x: %w", x.MSRNumber, x.Header.RIP, err)
	}
	return accel.Exit{}, false, nil
}

// endShadow returns regs with HV_REGISTER_INTERRUPT_STATE added, its
// interrupt_shadow bit cleared, when the intercepted instruction ran in an
// interrupt shadow (execution_state bit 12 of
// hv_x64_intercept_message_header) and the VMM completes it: the shadow of
// STI or MOV SS/POP SS covers exactly the next instruction (Intel SDM
// vol. 3A 6.8.3 and the STI reference; AMD APM vol. 2 15.21.5), so once
// the VMM retires that instruction by moving RIP past it, the shadow must
// end, or the hypervisor would block interrupts over the following
// instruction too. KVM does the same whenever it retires an instruction
// for the guest: kvm_skip_emulated_instruction reaches svm.c
// __svm_skip_emulated_instruction / vmx.c skip_emulated_instruction,
// which call set_interrupt_shadow(vcpu, 0), and x86_emulate_instruction
// writes the emulated instruction's own interruptibility through
// toggle_interruptibility (arch/x86/kvm/x86.c). nmi_masked is kept as the
// hypervisor has it (read, modify, write). Without the bit, regs come back
// unchanged and nothing is read: the common path costs nothing.
func (v *VCPU) endShadow(h *mshvabi.InterceptMessageHeader, regs []mshvabi.RegisterAssoc) ([]mshvabi.RegisterAssoc, error) {
	if h.ExecutionState&mshvabi.ExecStateInterruptShadow == 0 {
		return regs, nil
	}
	vals, err := v.get([]uint32{mshvabi.RegInterruptState})
	if err != nil {
		return nil, fmt.Errorf("end the interrupt shadow of the instruction at rip %#x: %w", h.RIP, err)
	}
	return append(regs, reg(mshvabi.RegInterruptState, vals[0].Low&^mshvabi.InterruptStateShadow)), nil
}

// deliveryIntercept is the fatal exit for a memory intercept taken while
// the processor was delivering an event (execution_state bit 6,
// interruption_pending): the access belongs to the delivery (an IDT, GDT,
// LDT, TSS or stack access that reached GPA space without RAM), not to the
// instruction at RIP, which has not run. Emulating that instruction would
// perform an access the guest never made and skip it, and re-entering would
// fault on the same access forever. KVM stops the same way: an EPT
// violation or misconfiguration with valid IDT-vectoring information
// (vmx.c __vmx_handle_exit) and an emulation request during event
// vectoring (x86.c x86_emulate_instruction, X86EMUL_UNHANDLEABLE_VECTORING)
// both end in kvm_prepare_event_vectoring_exit: KVM_EXIT_INTERNAL_ERROR,
// suberror KVM_INTERNAL_ERROR_DELIVERY_EV, naming the event and the GPA.
// OpenVMM, on this hypervisor, gives up the same way
// (vm/x86/x86emu support, virt_support_x86emu emulate(): "an interrupt
// caused the memory access exit"), and for the reason that also rules out
// injecting a fault instead: its delivery would read the same table again.
// The event is read from HV_REGISTER_PENDING_INTERRUPTION, where the
// hypervisor keeps an interruption it has not finished delivering.
func (v *VCPU) deliveryIntercept(h *mshvabi.InterceptMessageHeader, msg string, gpa uint64, insn []byte) accel.Exit {
	event := "an event the hypervisor did not name (PENDING_INTERRUPTION is clear)"
	if vals, err := v.get([]uint32{mshvabi.RegPendingInterruption}); err != nil {
		event = fmt.Sprintf("an event that could not be read (%v)", err)
	} else if pi := vals[0].Low; pi&mshvabi.PendingIntrPending != 0 {
		event = pendingInterruptionName(pi)
	}
	return fatal(accel.ExitInternalError, h.RIP, insn,
		"%s at GPA %#x on vCPU %d while delivering %s (execution_state interruption_pending): the access is part of the event's delivery (IDT, GDT, TSS or stack outside RAM), not of the instruction at rip %#x, which govmm does not emulate",
		msg, gpa, v.index, event, h.RIP)
}

// pendingInterruptionName describes a pending HV_REGISTER_PENDING_INTERRUPTION
// value (hv_x64_pending_interruption_register): type, vector, error code.
func pendingInterruptionName(pi uint64) string {
	vec := uint8(pi >> mshvabi.PendingIntrVectorShift)
	var s string
	switch t := pi >> mshvabi.PendingIntrTypeShift & mshvabi.PendingIntrTypeMask; t {
	case mshvabi.PendingTypeExtInt:
		s = fmt.Sprintf("external interrupt vector %#x", vec)
	case mshvabi.PendingTypeNMI:
		s = "NMI"
	case mshvabi.PendingTypeException:
		s = fmt.Sprintf("exception vector %d", vec)
	case mshvabi.PendingTypeSoftInt:
		s = fmt.Sprintf("software interrupt vector %#x", vec)
	case mshvabi.PendingTypePrivSWExc:
		s = fmt.Sprintf("privileged software exception vector %d", vec)
	case mshvabi.PendingTypeSWExc:
		s = fmt.Sprintf("software exception vector %d", vec)
	default:
		s = fmt.Sprintf("interruption type %d vector %#x", t, vec)
	}
	if pi&mshvabi.PendingIntrDeliverErr != 0 {
		s += fmt.Sprintf(" error code %#x", uint32(pi>>mshvabi.PendingIntrErrorShift))
	}
	return s
}

func insnLen(h *mshvabi.InterceptMessageHeader, def int) int {
	if n := h.InstructionLength(); n != 0 {
		return n
	}
	return def
}

// handlePIO completes a port I/O intercept: scalar IN/OUT directly from
// the message, string and REP forms through the emulator. RIP is advanced
// by the intercept's instruction length.
func (v *VCPU) handlePIO() (accel.Exit, bool, error) {
	io := v.msg.IOPort()
	hdr := &io.Header
	size := int(io.AccessInfo & mshvabi.IOAccessSizeMask)
	nb := min(int(io.InstructionByteCount), 16)
	if size != 1 && size != 2 && size != 4 {
		return fatal(accel.ExitInternalError, hdr.RIP, io.InstructionBytes[:nb], "port I/O intercept on port %#x with access size %d", io.PortNumber, size), true, nil
	}
	str := io.AccessInfo&mshvabi.IOAccessString != 0
	rep := io.AccessInfo&mshvabi.IOAccessRep != 0
	in := hdr.InterceptAccessType == mshvabi.AccessRead
	if rep && !str {
		return fatal(accel.ExitInternalError, hdr.RIP, io.InstructionBytes[:nb], "port I/O intercept on port %#x: REP without a string operation", io.PortNumber), true, nil
	}
	ilen := hdr.InstructionLength()
	if ilen == 0 {
		return fatal(accel.ExitInternalError, hdr.RIP, io.InstructionBytes[:nb], "port I/O intercept on port %#x without an instruction length", io.PortNumber), true, nil
	}
	if !str {
		var buf [4]byte
		rax := io.RAX
		if in {
			v.cpu.h.PIORead(io.PortNumber, buf[:size])
			val := uint64(buf[0]) | uint64(buf[1])<<8 | uint64(buf[2])<<16 | uint64(buf[3])<<24
			switch size {
			case 1:
				rax = rax&^0xff | val
			case 2:
				rax = rax&^0xffff | val
			case 4:
				rax = val // 32-bit destinations zero-extend
			}
		} else {
			for i := 0; i < size; i++ {
				buf[i] = byte(io.RAX >> (8 * i))
			}
			v.cpu.h.PIOWrite(io.PortNumber, buf[:size])
		}
		if err := v.complete(hdr, hdr.RIP+uint64(ilen), rax, in); err != nil {
			return accel.Exit{}, false, fmt.Errorf("complete port I/O at rip %#x: %w", hdr.RIP, err)
		}
		return accel.Exit{}, false, nil
	}
	insn := io.InstructionBytes[:nb]
	if nb == 0 {
		// Without the bytes a string instruction's segment override and
		// address size are unknown: read them, never assume DS.
		b, err := v.fetchInsn(hdr, ilen)
		if err != nil {
			return fatal(accel.ExitInternalError, hdr.RIP, nil, "string port I/O on port %#x at rip %#x: the intercept carries no instruction bytes and reading the %d-byte instruction from guest memory failed (%v), so its segment and address size are unknown", io.PortNumber, hdr.RIP, ilen, err), true, nil
		}
		insn = b
	}
	c := v.cpu
	c.reset(hdr)
	c.seed(mshvabi.PageRAX, io.RAX)
	c.seed(mshvabi.PageRCX, io.RCX)
	c.seed(mshvabi.PageRSI, io.RSI)
	c.seed(mshvabi.PageRDI, io.RDI)
	c.seedSeg(emu.DS, io.DS)
	c.seedSeg(emu.ES, io.ES)
	err := v.emu.PortIO(emu.IO{Port: io.PortNumber, Size: size, In: in, String: true, Rep: rep, InsnLen: ilen, Insn: insn})
	return v.finishEmulation(err, hdr, insn, fmt.Sprintf("string port I/O on port %#x", io.PortNumber))
}

// fetchInsn reads the n bytes of the intercepted instruction at CS:RIP
// from guest memory, translating its linear address with
// TRANSLATE_VIRTUAL_ADDRESS (read and execute access), for an intercept
// that carries no instruction bytes.
func (v *VCPU) fetchInsn(h *mshvabi.InterceptMessageHeader, n int) ([]byte, error) {
	long := h.ExecutionState&mshvabi.ExecStateEFERLMA != 0 && h.CS.Attributes&mshvabi.SegAttrL != 0
	la := h.CS.Base + h.RIP
	if !long {
		la &= 0xffffffff
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		gpa, err := v.translate(la, mshvabi.TranslateValidateRead|mshvabi.TranslateValidateExecute)
		if err != nil {
			return nil, err
		}
		k := min(n-len(out), 4096-int(la&0xfff))
		b := v.vm.ram(gpa, k, false)
		if b == nil {
			return nil, fmt.Errorf("linear address %#x is GPA %#x, which is not RAM", la, gpa)
		}
		out = append(out, b...)
		la += uint64(k)
		if !long {
			la &= 0xffffffff
		}
	}
	return out, nil
}

// translate turns a linear address of this VP into a GPA with
// TRANSLATE_VIRTUAL_ADDRESS (gva_page in, gpa_page out).
func (v *VCPU) translate(la, flags uint64) (uint64, error) {
	in := make([]byte, 32)
	binary.LittleEndian.PutUint32(in[8:], uint32(v.index))
	binary.LittleEndian.PutUint64(in[16:], flags)
	binary.LittleEndian.PutUint64(in[24:], la>>12)
	out := make([]byte, 16)
	if _, err := v.hv.call(mshvabi.HvcallTranslateVirtualAddress, 0, in, out); err != nil {
		return 0, fmt.Errorf("translate linear address %#x: %w", la, err)
	}
	if r := binary.LittleEndian.Uint32(out); r != mshvabi.TranslateSuccess {
		return 0, fmt.Errorf("translate linear address %#x: result code %d", la, r)
	}
	return binary.LittleEndian.Uint64(out[8:])<<12 | la&0xfff, nil
}

// complete writes RIP (and RAX when setRAX) after a scalar port access,
// and ends the interrupt shadow the instruction ran in (endShadow).
func (v *VCPU) complete(hdr *mshvabi.InterceptMessageHeader, rip, rax uint64, setRAX bool) error {
	shadow, err := v.endShadow(hdr, nil)
	if err != nil {
		return err
	}
	if p := v.page; p != nil && p.IsValid != 0 {
		if len(shadow) > 0 {
			// The register page has no dirty bit for INTERRUPT_STATE.
			if err := v.hv.setRegs(v.bufs, uint32(v.index), shadow); err != nil {
				return fmt.Errorf("end the interrupt shadow: %w", err)
			}
		}
		p.RIP = rip
		p.Dirty |= mshvabi.RegPageDirtyIP
		if setRAX {
			p.GPRs[mshvabi.PageRAX] = rax
			p.Dirty |= mshvabi.RegPageDirtyGeneral
		}
		v.pagePending = true
		return nil
	}
	regs := append(shadow, reg(mshvabi.RegRIP, rip))
	if setRAX {
		regs = append(regs, reg(mshvabi.RegRAX, rax))
	}
	return v.hv.setRegs(v.bufs, uint32(v.index), regs)
}

// handleMMIO decodes and executes the instruction behind an unmapped-GPA
// or GPA intercept with the x86 emulator, against the device bus and
// guest memory, and writes back the registers it changed.
func (v *VCPU) handleMMIO() (accel.Exit, bool, error) {
	mm := v.msg.Memory()
	hdr := &mm.Header
	n := min(int(mm.InstructionByteCount), 16)
	what := fmt.Sprintf("MMIO at GPA %#x", mm.GPA)
	if hdr.ExecutionState&mshvabi.ExecStateInterruptionPending != 0 {
		return v.deliveryIntercept(hdr, mshvabi.MessageName(v.msg.Header.MessageType), mm.GPA, mm.InstructionBytes[:n]), true, nil
	}
	c := v.cpu
	c.reset(hdr)
	if mm.MemoryAccessInfo&mshvabi.MemAccessGVAGPAValid != 0 {
		v.emu.Hint(mm.GVA, mm.GPA)
	}
	err := v.emu.Step(mm.InstructionBytes[:n])
	return v.finishEmulation(err, hdr, mm.InstructionBytes[:n], what)
}

// finishEmulation turns the emulator's result into a completed intercept,
// an injected exception, or a fatal exit.
func (v *VCPU) finishEmulation(err error, hdr *mshvabi.InterceptMessageHeader, insn []byte, what string) (accel.Exit, bool, error) {
	c := v.cpu
	rip := hdr.RIP
	if c.err != nil {
		return accel.Exit{}, false, fmt.Errorf("emulate %s at rip %#x: %w", what, rip, c.err)
	}
	var f *emu.Fault
	var u *emu.UnsupportedError
	switch {
	case err == nil:
	case errors.As(err, &f):
		// The instruction faulted and did not retire: the shadow it ran
		// in stays (exception delivery is not blocked by it).
		if err := c.commit(nil); err != nil {
			return accel.Exit{}, false, err
		}
		if err := v.injectFault(f); err != nil {
			return accel.Exit{}, false, fmt.Errorf("inject %v: %w", f, err)
		}
		return accel.Exit{}, false, nil
	case errors.As(err, &u):
		b := u.Bytes
		if len(b) == 0 {
			b = insn
		}
		return fatal(accel.ExitInternalError, rip, b, "emulation failure (%s) on vCPU %d: %v", what, v.index, err), true, nil
	default:
		return fatal(accel.ExitInternalError, rip, insn, "emulation failure (%s) on vCPU %d at rip %#x, bytes % x: %v", what, v.index, rip, insn, err), true, nil
	}
	var shadow []mshvabi.RegisterAssoc
	if c.ripDirty && c.rip != rip {
		// The instruction retired (a REP string instruction the emulator
		// left unfinished keeps its RIP, and the shadow with it). The
		// emulator executes neither STI nor MOV SS/POP SS, so no emulated
		// instruction starts a shadow of its own.
		if shadow, err = v.endShadow(hdr, nil); err != nil {
			return accel.Exit{}, false, fmt.Errorf("complete %s at rip %#x: %w", what, rip, err)
		}
	}
	if err := c.commit(shadow); err != nil {
		return accel.Exit{}, false, fmt.Errorf("complete %s at rip %#x: %w", what, rip, err)
	}
	return accel.Exit{}, false, nil
}

// injectFault makes the guest take the exception the emulated instruction
// raised (PENDING_INTERRUPTION, and CR2 for #PF).
func (v *VCPU) injectFault(f *emu.Fault) error {
	pi := uint64(mshvabi.PendingIntrPending) | uint64(mshvabi.PendingTypeException)<<mshvabi.PendingIntrTypeShift |
		uint64(f.Vector)<<mshvabi.PendingIntrVectorShift
	if f.HasErrorCode {
		pi |= mshvabi.PendingIntrDeliverErr | uint64(f.ErrorCode)<<mshvabi.PendingIntrErrorShift
	}
	regs := []mshvabi.RegisterAssoc{}
	if f.Vector == emu.VectorPF {
		regs = append(regs, reg(mshvabi.RegCR2, f.CR2))
	}
	regs = append(regs, reg(mshvabi.RegPendingInterruption, pi))
	return v.hv.setRegs(v.bufs, uint32(v.index), regs)
}
