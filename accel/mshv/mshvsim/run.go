package mshvsim

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/kvm"
	"govmm/x86/decode"
	"govmm/x86/emu"
)

// Message types (hv_message_type) the simulator produces.
const (
	msgUnmappedGPA   = 0x80000000
	msgGPAIntercept  = 0x80000001
	msgUnrecoverable = 0x80000021
	msgIOPort        = 0x80010000
	msgAPICEOI       = 0x80010004
	msgHalt          = 0x80010007
	msgDeliverable   = 0x80010008

	regDeliverability = 0x10006
)

// Register page offsets (hv_vp_register_page, x86).
const (
	rpVersion = 0
	rpIsValid = 2
	rpDirty   = 4
	rpGPRs    = 8
	rpRIP     = 136
	rpRFLAGS  = 144
	rpXMM     = 160
	rpSegs    = 256
	rpCR0     = 352
	rpCR3     = 360
	rpCR4     = 368
	rpCR8     = 376
	rpEFER    = 384
	rpPending = 400
	rpIntrSt  = 408
)

func (v *vp) fail(format string, args ...any) error {
	v.p.sim.lastErr.Store(v.fd, fmt.Sprintf(format, args...))
	return unix.EIO
}

// run serves MSHV_RUN_VP: arg is the 256-byte message buffer.
func (v *vp) run(msg []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.applyPage(); err != nil {
		return v.fail("apply register page: %v", err)
	}
	if v.cpuidDirty || !v.ran {
		if err := v.k.SetCPUID(v.effectiveCPUID(true)); err != nil && !v.ran {
			return v.fail("apply CPUID: %v", err)
		}
		v.cpuidDirty = false
	}
	for {
		// KVM exits when the guest can take an interrupt while the
		// ExtINT line is up and KVM cannot take it now (it holds one
		// already, or the guest cannot), or while the VMM waits for an
		// interruption-deliverable message; never otherwise, or the
		// window exit would repeat without the guest moving on.
		window := v.hvregs[regDeliverability][0]&2 != 0
		if ext := v.pendingExt.Load(); ext >= 0 {
			window = true
			ready, ifl := v.k.ReadyForInterrupt()
			if ready && ifl && v.ran {
				// The line stays up after delivery (see assertInterrupt):
				// the guest takes the vector again at the next entry
				// where it can, until the VMM clears the line.
				if err := v.k.InjectExtINT(uint8(ext)); err != nil {
					return v.fail("%v", err)
				}
				window = false
			}
		}
		v.k.RequestInterruptWindow(window)
		x, err := v.k.RunRaw()
		v.ran = true
		if err != nil {
			return v.fail("%v", err)
		}
		if x.Interrupted {
			if x.Kicked {
				return unix.EINTR
			}
			continue // a signal for someone else (Go's preemption) or a Wake
		}
		clear(msg)
		switch x.Reason {
		case kvm.RawExitIO:
			return v.ioIntercept(x, msg)
		case kvm.RawExitMMIO:
			return v.mmioIntercept(x, msg)
		case kvm.RawExitIRQWindowOpen:
			if n := v.hvregs[regDeliverability]; n[0]&2 != 0 && v.pendingExt.Load() < 0 {
				// One-shot interruption-deliverable notification.
				v.hvregs[regDeliverability] = [2]uint64{n[0] &^ 2, n[1]}
				v.k.RequestInterruptWindow(false)
				if err := v.simpleMessage(msg, msgDeliverable); err != nil {
					return err
				}
				msg[msgPayloadSize] = 48
				binary.LittleEndian.PutUint32(msg[msgPayload+idType:], 0)
				return nil // deliverable_type 0: interrupt
			}
			continue
		case kvm.RawExitIntr:
			continue
		case kvm.RawExitHLT:
			return v.simpleMessage(msg, msgHalt)
		case kvm.RawExitIOAPICEOI:
			if v.p.notifyAckedGSI(x.EOIVector) {
				continue // consumed by the kernel's resampler
			}
			binary.LittleEndian.PutUint32(msg[msgType:], msgAPICEOI)
			msg[msgPayloadSize] = 8
			binary.LittleEndian.PutUint32(msg[msgPayload+eoiVPIndex:], v.idx)
			binary.LittleEndian.PutUint32(msg[msgPayload+eoiVector:], uint32(x.EOIVector))
			return nil
		case kvm.RawExitShutdown:
			return v.simpleMessage(msg, msgUnrecoverable)
		case kvm.RawExitSystemEvent:
			return v.simpleMessage(msg, msgUnrecoverable)
		case kvm.RawExitInternalError:
			regs, _ := v.k.Regs()
			what := fmt.Sprintf("internal error suberror %d", x.InternalSuberror)
			if x.InternalSuberror == kvm.InternalErrorEmulation {
				what = "emulation failure"
			}
			return v.fail("KVM under the simulator could not run the guest: %s at rip %#x, instruction bytes % x", what, regs.RIP, x.Insn)
		case kvm.RawExitFailEntry:
			return v.fail("KVM under the simulator: hardware entry failure reason %#x", x.FailEntryReason)
		}
		return v.fail("KVM under the simulator: unexpected exit reason %d", x.Reason)
	}
}

// applyPage takes register classes the VMM wrote to the register page.
func (v *vp) applyPage() error {
	pg := v.regPage[:]
	dirty := binary.LittleEndian.Uint32(pg[rpDirty:])
	binary.LittleEndian.PutUint32(pg[rpDirty:], 0)
	pg[rpIsValid] = 0
	if dirty == 0 {
		return nil
	}
	if dirty&(1|2|16) != 0 {
		r, err := v.k.Regs()
		if err != nil {
			return err
		}
		if dirty&1 != 0 {
			for i := uint32(0); i < 16; i++ {
				*gprPtr(&r, i) = binary.LittleEndian.Uint64(pg[rpGPRs+8*i:])
			}
		}
		if dirty&2 != 0 {
			r.RIP = binary.LittleEndian.Uint64(pg[rpRIP:])
		}
		if dirty&16 != 0 {
			r.RFLAGS = binary.LittleEndian.Uint64(pg[rpRFLAGS:])
		}
		if err := v.k.SetRegs(&r); err != nil {
			return err
		}
	}
	if dirty&8 != 0 {
		s, err := v.k.Sregs()
		if err != nil {
			return err
		}
		for i := uint32(0); i < 6; i++ {
			o := rpSegs + 16*i
			*segPtr(&s, i) = hvToSeg(binary.LittleEndian.Uint64(pg[o:]), binary.LittleEndian.Uint64(pg[o+8:]))
		}
		if err := v.k.SetSregs(&s); err != nil {
			return err
		}
	}
	if dirty&4 != 0 {
		f, err := v.k.FPU()
		if err != nil {
			return err
		}
		for i := 0; i < 6; i++ {
			copy(f.XMM[i][:], pg[rpXMM+16*i:])
		}
		if err := v.k.SetFPU(&f); err != nil {
			return err
		}
	}
	return nil
}

// fillPage publishes the VP's registers in the register page (valid until
// the next RUN_VP).
func (v *vp) fillPage(r *accel.Regs, s *accel.Sregs) {
	pg := v.regPage[:]
	clear(pg)
	binary.LittleEndian.PutUint16(pg[rpVersion:], 1)
	for i := uint32(0); i < 16; i++ {
		binary.LittleEndian.PutUint64(pg[rpGPRs+8*i:], *gprPtr(r, i))
	}
	binary.LittleEndian.PutUint64(pg[rpRIP:], r.RIP)
	binary.LittleEndian.PutUint64(pg[rpRFLAGS:], r.RFLAGS)
	for i := uint32(0); i < 6; i++ {
		lo, hi := segToHV(*segPtr(s, i))
		binary.LittleEndian.PutUint64(pg[rpSegs+16*i:], lo)
		binary.LittleEndian.PutUint64(pg[rpSegs+16*i+8:], hi)
	}
	binary.LittleEndian.PutUint64(pg[rpCR0:], s.CR0)
	binary.LittleEndian.PutUint64(pg[rpCR3:], s.CR3)
	binary.LittleEndian.PutUint64(pg[rpCR4:], s.CR4)
	binary.LittleEndian.PutUint64(pg[rpCR8:], s.CR8)
	binary.LittleEndian.PutUint64(pg[rpEFER:], s.EFER)
	pg[rpIsValid] = 1
}

// header writes hv_x64_intercept_message_header at payload offset 0.
func (v *vp) header(msg []byte, typ uint32, size byte, r *accel.Regs, s *accel.Sregs, access byte, insnLen int, events uint16) {
	binary.LittleEndian.PutUint32(msg[msgType:], typ)
	msg[msgPayloadSize] = size
	p := msg[msgPayload:]
	binary.LittleEndian.PutUint32(p[ihVPIndex:], v.idx)
	p[ihInsnLen] = byte(insnLen&0xF) | byte(s.CR8&0xF)<<4
	p[ihAccess] = access
	var es uint16
	if s.CR0&1 != 0 {
		es |= uint16(s.CS.DPL & 3)
		es |= 1 << 2
	}
	if s.CR0&(1<<18) != 0 {
		es |= 1 << 3
	}
	if s.EFER&(1<<10) != 0 {
		es |= 1 << 4
	}
	es |= events
	binary.LittleEndian.PutUint16(p[ihExecState:], es)
	putSeg(p[ihCS:], s.CS)
	binary.LittleEndian.PutUint64(p[ihRIP:], r.RIP)
	binary.LittleEndian.PutUint64(p[ihRFLAGS:], r.RFLAGS)
}

func (v *vp) simpleMessage(msg []byte, typ uint32) error {
	r, err := v.k.Regs()
	if err != nil {
		return v.fail("%v", err)
	}
	s, err := v.k.Sregs()
	if err != nil {
		return v.fail("%v", err)
	}
	v.header(msg, typ, 40, &r, &s, 0, 0, v.eventBits())
	v.fillPage(&r, &s)
	return nil
}

// Execution-state bits of hv_x64_intercept_message_header that come from
// the vCPU's event state.
const (
	esInterruptionPending = 1 << 6
	esInterruptShadow     = 1 << 12
)

// eventBits reads KVM's event state as execution_state bits: an interrupt
// shadow (after STI or MOV SS) and an interruption being delivered. KVM has
// already retired an OUT or an MMIO write when it exits for it, and with
// it the shadow the instruction ran in; those intercepts carry only what is
// left.
func (v *vp) eventBits() uint16 {
	e, err := v.k.Events()
	if err != nil {
		return 0
	}
	return eventBits(&e)
}

func eventBits(e *accel.Events) uint16 {
	var b uint16
	if e.Interrupt.Shadow != 0 {
		b |= esInterruptShadow
	}
	if e.Exception.Injected || e.Interrupt.Injected || e.NMI.Injected {
		b |= esInterruptionPending
	}
	return b
}

// complete finishes KVM's pending PIO/MMIO at once: zeros for reads,
// writes dropped, immediate_exit so no further guest code runs. The
// instruction may need more accesses before KVM returns EINTR.
func (v *vp) complete(x kvm.RawExit) error {
	for i := 0; i < 4096; i++ {
		switch x.Reason {
		case kvm.RawExitIO:
			if !x.IO.Out {
				clear(x.IO.Data)
			}
		case kvm.RawExitMMIO:
			if !x.MMIO.Write {
				clear(x.MMIO.Data)
			}
		default:
			return fmt.Errorf("KVM exit %d while completing an access", x.Reason)
		}
		v.k.SetImmediateExit(true)
		var err error
		x, err = v.k.RunRaw()
		if err != nil {
			return err
		}
		if x.Interrupted {
			return nil
		}
	}
	return fmt.Errorf("KVM did not finish an instruction's accesses")
}

// stateThenComplete reads the vCPU's registers as KVM reported the exit,
// then completes KVM's pending access (see complete): what every
// intercept starts from.
func (v *vp) stateThenComplete(x kvm.RawExit) (accel.Regs, accel.Sregs, uint16, error) {
	regs, err := v.k.Regs()
	if err != nil {
		return regs, accel.Sregs{}, 0, err
	}
	s, err := v.k.Sregs()
	if err != nil {
		return regs, s, 0, err
	}
	e0, err := v.k.Events()
	if err != nil {
		return regs, s, 0, err
	}
	ev := eventBits(&e0)
	if err := v.complete(x); err != nil {
		return regs, s, ev, fmt.Errorf("complete the access: %w", err)
	}
	if e0.Interrupt.Shadow != 0 {
		// Completing the access retired the instruction in KVM, and KVM
		// ended its interrupt shadow with it (kvm_skip_emulated_instruction,
		// toggle_interruptibility). The hypervisor's intercept leaves the
		// VP at the instruction, not yet executed, so the shadow it runs in
		// is still there: INTERRUPT_STATE reads it, and it lasts until the
		// VMM ends it or the instruction runs again.
		e, err := v.k.Events()
		if err == nil && e.Interrupt.Shadow == 0 {
			e.Interrupt.Shadow = e0.Interrupt.Shadow
			err = v.k.SetEvents(&e)
		}
		if err != nil {
			return regs, s, ev, fmt.Errorf("keep the interrupt shadow of the intercepted instruction: %w", err)
		}
	}
	return regs, s, ev, nil
}

// ioIntercept turns a KVM_EXIT_IO into HVMSG_X64_IO_PORT_INTERCEPT.
func (v *vp) ioIntercept(x kvm.RawExit, msg []byte) error {
	io := x.IO
	regs0, s, ev, err := v.stateThenComplete(x)
	if err != nil {
		return v.fail("port I/O on port %#x: %v", io.Port, err)
	}
	pre, d, ok := v.findPIOStart(&regs0, &s, io)
	if !ok {
		return v.fail("port I/O on port %#x (size %d, out %v, count %d) near rip %#x (rcx %#x rsi %#x): cannot find the instruction", io.Port, io.Size, io.Out, io.Count, regs0.RIP, regs0.RCX, regs0.RSI)
	}
	if err := v.k.SetRegs(&pre); err != nil {
		return v.fail("%v", err)
	}
	access := byte(0)
	if io.Out {
		access = 1
	}
	v.header(msg, msgIOPort, 128, &pre, &s, access, d.length, ev)
	p := msg[msgPayload:]
	binary.LittleEndian.PutUint16(p[ioPort:], io.Port)
	ai := io.Size & 7
	if d.str {
		ai |= 1 << 3
	}
	if d.rep {
		ai |= 1 << 4
	}
	p[ioAccessInfo] = ai
	// No instruction bytes (instruction_byte_count 0): the processor's
	// I/O exit reports port, size, direction and the string and REP bits
	// but no bytes, and the simulator does not count on the hypervisor
	// fetching them. The VMM reads them when a string instruction needs
	// its segment override or address size.
	p[ioInsnCount] = 0
	binary.LittleEndian.PutUint64(p[ioRAX:], pre.RAX)
	putSeg(p[ioDS:], s.DS)
	putSeg(p[ioES:], s.ES)
	binary.LittleEndian.PutUint64(p[ioRCX:], pre.RCX)
	binary.LittleEndian.PutUint64(p[ioRSI:], pre.RSI)
	binary.LittleEndian.PutUint64(p[ioRDI:], pre.RDI)
	v.fillPage(&pre, &s)
	return nil
}

// mmioIntercept turns a KVM_EXIT_MMIO into HVMSG_UNMAPPED_GPA (or
// HVMSG_GPA_INTERCEPT for a write to read-only memory).
func (v *vp) mmioIntercept(x kvm.RawExit, msg []byte) error {
	m := x.MMIO
	m.Data = append([]byte(nil), m.Data...)
	regs0, s, ev, err := v.stateThenComplete(x)
	if err != nil {
		return v.fail("MMIO at %#x: %v", m.Addr, err)
	}
	pre := regs0
	if m.Write {
		var ok bool
		pre, ok = v.findWriteStart(&regs0, &s, m)
		if !ok {
			return v.fail("MMIO write of % x at %#x near rip %#x: cannot find the instruction that made it", m.Data, m.Addr, regs0.RIP)
		}
	}
	if err := v.k.SetRegs(&pre); err != nil {
		return v.fail("%v", err)
	}
	typ := uint32(msgUnmappedGPA)
	v.p.mu.Lock()
	if v.p.findRegion(m.Addr) != nil {
		typ = msgGPAIntercept
	}
	v.p.mu.Unlock()
	access := byte(0)
	if m.Write {
		access = 1
	}
	insn := v.messageBytes(&s, pre.RIP)
	gva, length, gvaOK := v.accessGVA(&pre, &s, m.Addr)
	v.header(msg, typ, 80, &pre, &s, access, length, ev)
	p := msg[msgPayload:]
	binary.LittleEndian.PutUint32(p[mmCacheType:], 6) // write-back cache type
	p[mmInsnCount] = byte(len(insn))
	if gvaOK {
		// gva_valid and gva_gpa_valid: the processor reports the linear
		// address of the access, and that it translates to the GPA.
		p[mmAccessInfo] = 1 | 2
		binary.LittleEndian.PutUint64(p[mmGVA:], gva)
	}
	binary.LittleEndian.PutUint64(p[mmGPA:], m.Addr)
	copy(p[mmInsnBytes:mmInsnBytes+16], insn)
	v.fillPage(&pre, &s)
	return nil
}

// accessGVA finds the linear address of the memory access an intercepted
// instruction made at gpa: it decodes the instruction at r.RIP (the state
// before it), computes the linear address of each memory operand (the
// ModRM or moffs operand, and for string instructions DS:rSI and ES:rDI)
// and keeps the one that translates to gpa. It also returns the
// instruction's length. ok is false when none does (an access that
// straddles a page, a stack access), as the hypervisor then has no GVA to
// report either.
func (v *vp) accessGVA(r *accel.Regs, s *accel.Sregs, gpa uint64) (gva uint64, length int, ok bool) {
	mode := 16
	switch {
	case s.EFER&(1<<10) != 0 && s.CS.L:
		mode = 64
	case s.CR0&1 != 0 && s.CS.DB:
		mode = 32
	}
	var in decode.Inst
	if decode.Decode(v.fetch(s, r.RIP), mode, &in) != nil {
		return 0, 0, false
	}
	amask := uint64(1)<<(8*in.AddrSize) - 1
	if in.AddrSize == 8 {
		amask = ^uint64(0)
	}
	segs := []accel.Segment{s.ES, s.CS, s.SS, s.DS, s.FS, s.GS}
	// base is a segment's base as addressing uses it: in 64-bit mode only
	// FS and GS have one.
	base := func(i int) uint64 {
		if mode == 64 && i != 4 && i != 5 {
			return 0
		}
		return segs[i].Base
	}
	seg := func(def int) int {
		if in.Seg >= 0 && int(in.Seg) < len(segs) {
			return int(in.Seg)
		}
		return def
	}
	reg := func(i int8) uint64 {
		if i < 0 || i > 15 {
			return 0
		}
		return *gprPtr(r, uint32(i))
	}
	var las []uint64
	if in.Mem || in.Moffs {
		ea := uint64(in.Disp)
		switch {
		case in.RIPRel:
			ea += r.RIP + uint64(in.Len)
		case !in.Moffs:
			ea += reg(in.Base) + reg(in.Index)*uint64(in.Scale)
		}
		def := 3 // DS
		if in.SSBased {
			def = 2 // SS
		}
		las = append(las, base(seg(def))+ea&amask)
	}
	if in.Enc == decode.Legacy && in.Map == decode.MapOne && (in.Opcode >= 0xa4 && in.Opcode <= 0xaf || in.Opcode >= 0x6c && in.Opcode <= 0x6f) {
		las = append(las, base(seg(3))+r.RSI&amask, base(0)+r.RDI&amask)
	}
	for _, la := range las {
		if mode != 64 {
			la &= 0xffffffff
		}
		if g, ok := v.walk(s, la); ok && g == gpa {
			return la, in.Len, true
		}
	}
	return 0, in.Len, false
}

// --- instruction bytes and page walk ---------------------------------------

// walk translates a linear address with the guest's paging mode. ok is
// false when a paging structure entry is not present or not RAM.
func (v *vp) walk(s *accel.Sregs, la uint64) (uint64, bool) {
	if s.CR0&(1<<31) == 0 {
		return la & 0xffffffff, true
	}
	rd := func(gpa uint64, n int) (uint64, bool) {
		b := v.p.ram(gpa, n)
		if b == nil {
			return 0, false
		}
		if n == 4 {
			return uint64(binary.LittleEndian.Uint32(b)), true
		}
		return binary.LittleEndian.Uint64(b), true
	}
	const addrMask = 0x000f_ffff_ffff_f000
	if s.EFER&(1<<10) != 0 || s.CR4&(1<<5) != 0 {
		levels := 3
		if s.EFER&(1<<10) != 0 {
			levels = 4
			if s.CR4&(1<<12) != 0 {
				levels = 5
			}
		}
		table := s.CR3 & addrMask
		if levels == 3 {
			table = s.CR3 & 0xffffffe0
			e, ok := rd(table+8*(la>>30&3), 8)
			if !ok || e&1 == 0 {
				return 0, false
			}
			table = e & addrMask
			levels = 2
		}
		for l := levels; l >= 1; l-- {
			shift := 12 + 9*uint(l-1)
			e, ok := rd(table+8*(la>>shift&0x1ff), 8)
			if !ok || e&1 == 0 {
				return 0, false
			}
			if l == 1 || (l <= 3 && e&(1<<7) != 0) {
				mask := uint64(1)<<shift - 1
				return e&addrMask&^mask | la&mask, true
			}
			table = e & addrMask
		}
		return 0, false
	}
	pde, ok := rd(s.CR3&0xfffff000+4*(la>>22&0x3ff), 4)
	if !ok || pde&1 == 0 {
		return 0, false
	}
	if pde&(1<<7) != 0 && s.CR4&(1<<4) != 0 {
		return pde&0xffc00000 | (pde>>13&0xff)<<32 | la&0x3fffff, true
	}
	pte, ok := rd(pde&0xfffff000+4*(la>>12&0x3ff), 4)
	if !ok || pte&1 == 0 {
		return 0, false
	}
	return pte&0xfffff000 | la&0xfff, true
}

func (p *partition) ram(gpa uint64, n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.findRegion(gpa)
	if r == nil || gpa+uint64(n) > r.gpa+r.size {
		return nil
	}
	o := gpa - r.gpa
	return r.host[o : o+uint64(n)]
}

// messageBytes is what an intercept message carries as instruction_bytes:
// the bytes at CS:rip up to the end of the page, as the hypervisor may
// stop there. The VMM fetches the rest itself.
func (v *vp) messageBytes(s *accel.Sregs, rip uint64) []byte {
	b := v.fetch(s, rip)
	la := s.CS.Base + rip
	return b[:min(len(b), int(4096-la&0xfff))]
}

// fetch reads up to 16 instruction bytes at CS:rip, across a page
// boundary when the next page is mapped: what the simulator decodes to
// find the instruction KVM stopped on.
func (v *vp) fetch(s *accel.Sregs, rip uint64) []byte { return v.fetchN(s, rip, 16) }

// fetchN reads up to size bytes of code at CS:rip, stopping where guest
// memory does not map them.
func (v *vp) fetchN(s *accel.Sregs, rip uint64, size int) []byte {
	la := s.CS.Base + rip
	if s.EFER&(1<<10) == 0 || !s.CS.L {
		la &= 0xffffffff
	}
	var insn []byte
	for len(insn) < size {
		gpa, ok := v.walk(s, la)
		if !ok {
			break
		}
		n := min(size-len(insn), int(4096-gpa&0xfff))
		b := v.p.ram(gpa, n)
		insn = append(insn, b...)
		if len(b) < n {
			break
		}
		la += uint64(n)
		if s.EFER&(1<<10) == 0 || !s.CS.L {
			la &= 0xffffffff
		}
	}
	return insn
}

// translate serves TRANSLATE_VIRTUAL_ADDRESS (no permission checks beyond
// presence and writability of the target).
func (v *vp) translate(gva, flags uint64) (uint32, uint64) {
	s, err := v.k.Sregs()
	if err != nil {
		return 1, 0
	}
	gpa, ok := v.walk(&s, gva)
	if !ok {
		return 1, 0 // PAGE_NOT_PRESENT
	}
	v.p.mu.Lock()
	r := v.p.findRegion(gpa)
	v.p.mu.Unlock()
	switch {
	case r == nil:
		return 4, gpa // GPA_UNMAPPED (MMIO) with a valid GPA
	case flags&2 != 0 && !r.writable:
		return 6, gpa // GPA_NO_WRITE_ACCESS
	}
	return 0, gpa
}

// --- finding the instruction behind a write KVM already retired -------------

type pioInsn struct {
	length   int
	size     int
	out, str bool
	rep      bool
	port     int  // -1: DX
	seg      byte // segment override prefix, 0 for none (DS)
	addr32   bool // 0x67 in 64-bit code
}

// decodePIO decodes an IN/OUT/INS/OUTS at b (16/32/64-bit code).
func decodePIO(b []byte, s *accel.Sregs) (pioInsn, bool) {
	d := pioInsn{port: -1}
	long := s.EFER&(1<<10) != 0 && s.CS.L
	op16 := !long && !s.CS.DB
	i := 0
	for ; i < len(b) && i < 15; i++ {
		c := b[i]
		switch c {
		case 0x66:
			op16 = !op16
			if long {
				op16 = true
			}
			continue
		case 0xF3, 0xF2:
			d.rep = true
			continue
		case 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65:
			d.seg = c
			continue
		case 0x67:
			d.addr32 = true
			continue
		case 0xF0:
			continue
		}
		if long && c&0xF0 == 0x40 {
			continue
		}
		break
	}
	if i >= len(b) {
		return d, false
	}
	wide := 4
	if op16 {
		wide = 2
	}
	op := b[i]
	d.length = i + 1
	switch op {
	case 0xE4, 0xE5, 0xE6, 0xE7:
		if i+1 >= len(b) {
			return d, false
		}
		d.port = int(b[i+1])
		d.length++
	case 0xEC, 0xED, 0xEE, 0xEF:
	case 0x6C, 0x6D, 0x6E, 0x6F:
		d.str = true
	default:
		return d, false
	}
	d.out = op == 0xE6 || op == 0xE7 || op == 0xEE || op == 0xEF || op == 0x6E || op == 0x6F
	d.size = 1
	if op&1 != 0 {
		d.size = wide
	}
	if !d.str {
		d.rep = false
	}
	return d, true
}

// findPIOStart recovers the register state before the intercepted port
// instruction. KVM leaves RIP at an IN and has retired an OUT (or one OUTS
// iteration).
func (v *vp) findPIOStart(r *accel.Regs, s *accel.Sregs, io kvm.RawIO) (accel.Regs, pioInsn, bool) {
	match := func(d pioInsn, pre *accel.Regs) bool {
		port := d.port
		if port < 0 {
			port = int(pre.RDX & 0xffff)
		}
		return d.out == io.Out && d.size == int(io.Size) && port == int(io.Port)
	}
	if !io.Out {
		d, ok := decodePIO(v.fetch(s, r.RIP), s)
		return *r, d, ok && match(d, r)
	}
	step := uint64(io.Size) * uint64(io.Count)
	// KVM leaves RIP at a REP OUTS it has not finished (even when RCX just
	// reached 0: it re-executes it as a no-op) and has advanced past a
	// plain OUT: try RIP itself first for string forms, then earlier
	// starts.
	for _, k := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0} {
		rip := r.RIP - uint64(k)
		d, ok := decodePIO(v.fetch(s, rip), s)
		if !ok || (k > 0 && d.length != k) {
			continue
		}
		pre := *r
		pre.RIP = rip
		if d.str {
			if r.RFLAGS&(1<<10) != 0 {
				pre.RSI += step
			} else {
				pre.RSI -= step
			}
			if d.rep {
				pre.RCX += uint64(io.Count)
			}
			if !v.elementMatches(s, &d, pre.RSI, io.Data[:io.Size]) {
				continue
			}
		}
		if match(d, &pre) {
			return pre, d, true
		}
	}
	return *r, pioInsn{}, false
}

// elementMatches checks that the OUTS element at seg:rsi is what KVM sent
// (a candidate that reads other bytes is not the instruction).
func (v *vp) elementMatches(s *accel.Sregs, d *pioInsn, rsi uint64, want []byte) bool {
	seg := s.DS
	switch d.seg {
	case 0x26:
		seg = s.ES
	case 0x2E:
		seg = s.CS
	case 0x36:
		seg = s.SS
	case 0x64:
		seg = s.FS
	case 0x65:
		seg = s.GS
	}
	la := seg.Base + rsi
	if s.EFER&(1<<10) == 0 || !s.CS.L {
		la &= 0xffffffff
		if addr16 := !s.CS.DB != d.addr32; addr16 {
			la = (seg.Base + rsi&0xffff) & 0xffffffff
		}
	} else if d.addr32 {
		la = seg.Base + rsi&0xffffffff
	}
	gpa, ok := v.walk(s, la)
	if !ok {
		return true // cannot check: do not reject
	}
	got := v.p.ram(gpa, len(want))
	return got == nil || bytes.Equal(got, want)
}

// findWriteStart recovers the state before an MMIO write KVM already
// retired: each candidate start (RIP-k, with string registers rewound by
// one element when that is what the instruction did) is executed with the
// x86 emulator against a sandbox; the one that makes the same write and
// ends in the same registers is the instruction.
//
// A guest's MMIO writes come from a few instructions, run again and again,
// so the candidate that was the instruction last time at the same RIP is
// tried first (writeHints), checked exactly as in the search. The bytes
// around RIP are read from guest memory once, and the FPU state (for a
// vector store's data) only when a candidate reads a vector register.
func (v *vp) findWriteStart(r *accel.Regs, s *accel.Sregs, m kvm.RawMMIO) (accel.Regs, bool) {
	el := uint64(len(m.Data))
	dir := func(x uint64) uint64 {
		if r.RFLAGS&(1<<10) != 0 {
			return x + el
		}
		return x - el
	}
	fpu := &lazyFPU{v: v}
	const back = 15 // an instruction is at most 15 bytes long
	window := v.fetchN(s, r.RIP-back, 2*back)
	code := func(k int) []byte {
		if len(window) == 2*back {
			return window[back-k:]
		}
		return v.fetch(s, r.RIP-uint64(k)) // a page near RIP is not RAM
	}
	try := func(k, variant int) (accel.Regs, bool) {
		rw := writeVariants[variant]
		pre := *r
		pre.RIP = r.RIP - uint64(k)
		if rw[0] {
			pre.RDI = dir(pre.RDI)
		}
		if rw[1] {
			pre.RSI = dir(pre.RSI)
		}
		if rw[2] {
			pre.RCX++
		}
		if rw[3] {
			pre.RSP -= el
		}
		sb := &sandbox{v: v, regs: pre, s: s, fpu: fpu}
		e := emu.New(sb)
		e.MaxRepeat = 1
		if err := e.Step(code(k)); err != nil || sb.bad {
			return pre, false
		}
		if sb.regs != *r || len(sb.writes) != 1 {
			return pre, false
		}
		w := sb.writes[0]
		// KVM reports at most 8 bytes per exit: a longer store (SSE)
		// shows up as its first 8 bytes; otherwise the size must match.
		sameSize := len(w.data) == len(m.Data) || (len(m.Data) == 8 && len(w.data) > 8)
		return pre, w.gpa == m.Addr && sameSize && bytes.HasPrefix(w.data, m.Data)
	}
	hint := &v.writeHints[r.RIP%uint64(len(v.writeHints))]
	if hint.valid && hint.rip == r.RIP {
		if pre, ok := try(int(hint.k), int(hint.variant)); ok {
			return pre, true
		}
	}
	for k := 0; k <= back; k++ {
		for variant := range writeVariants {
			if variant == 0 && k == 0 {
				continue // RIP at the instruction means an unfinished REP
			}
			if pre, ok := try(k, variant); ok {
				*hint = writeHint{valid: true, rip: r.RIP, k: uint8(k), variant: uint8(variant)}
				return pre, true
			}
		}
	}
	return *r, false
}

// writeVariants are the registers a retired store may have moved, in the
// order tried: RDI, RSI, RCX (string instructions, one element) and RSP
// (POP to memory).
var writeVariants = [...][4]bool{{}, {true}, {false, true}, {true, true}, {true, false, true},
	{false, true, true}, {true, true, true}, {false, false, false, true}}

// writeHint is the candidate findWriteStart found for a RIP. The table is
// fixed in size (indexed by RIP), so a guest cannot grow it.
type writeHint struct {
	valid      bool
	rip        uint64
	k, variant uint8
}

// lazyFPU reads the vCPU's FPU state the first time a candidate needs it.
type lazyFPU struct {
	v      *vp
	tried  bool
	f      accel.FPU
	loaded bool
}

func (l *lazyFPU) get() *accel.FPU {
	if !l.tried {
		l.tried = true
		var err error
		l.f, err = l.v.k.FPU()
		l.loaded = err == nil
	}
	if !l.loaded {
		return nil
	}
	return &l.f
}

type access struct {
	gpa  uint64
	data []byte
}

// sandbox is an emu.CPU over a copy of the registers: RAM reads are real,
// writes and device accesses are only recorded.
type sandbox struct {
	v      *vp
	regs   accel.Regs
	s      *accel.Sregs
	fpu    *lazyFPU
	writes []access
	bad    bool
}

func (b *sandbox) Reg(i int) uint64       { return *gprPtr(&b.regs, uint32(i)) }
func (b *sandbox) SetReg(i int, x uint64) { *gprPtr(&b.regs, uint32(i)) = x }
func (b *sandbox) RIP() uint64            { return b.regs.RIP }
func (b *sandbox) SetRIP(x uint64)        { b.regs.RIP = x }
func (b *sandbox) RFLAGS() uint64         { return b.regs.RFLAGS }
func (b *sandbox) SetRFLAGS(x uint64)     { b.regs.RFLAGS = x }
func (b *sandbox) Segment(sr emu.SegReg) emu.Segment {
	segs := []accel.Segment{b.s.ES, b.s.CS, b.s.SS, b.s.DS, b.s.FS, b.s.GS, b.s.TR}
	if sr < 0 || int(sr) >= len(segs) {
		return emu.Segment{Unusable: true}
	}
	a := segs[sr]
	return emu.Segment{Base: a.Base, Limit: a.Limit, Selector: a.Selector, Type: a.Type, S: a.S, DPL: a.DPL,
		Present: a.Present, DB: a.DB, L: a.L, G: a.G, Unusable: a.Unusable}
}
func (b *sandbox) Control(c emu.ControlReg) uint64 {
	switch c {
	case emu.CR0:
		return b.s.CR0
	case emu.CR3:
		return b.s.CR3
	case emu.CR4:
		return b.s.CR4
	case emu.EFER:
		return b.s.EFER
	}
	return 0
}
func (b *sandbox) ReadVector(i int, x *[32]byte) {
	*x = [32]byte{}
	if f := b.fpu.get(); f != nil && i < 16 {
		copy(x[:16], f.XMM[i][:])
	}
}
func (b *sandbox) WriteVector(i int, x *[32]byte, vex bool) {}
func (b *sandbox) ReadPhys(gpa uint64, d []byte) bool {
	r := b.v.p.ram(gpa, len(d))
	if r == nil {
		return false
	}
	copy(d, r)
	return true
}
func (b *sandbox) WritePhys(gpa uint64, d []byte) bool {
	b.v.p.mu.Lock()
	r := b.v.p.findRegion(gpa)
	ok := r != nil && r.writable && gpa+uint64(len(d)) <= r.gpa+r.size
	b.v.p.mu.Unlock()
	return ok
}
func (b *sandbox) MMIORead(gpa uint64, d []byte) { b.bad = true }
func (b *sandbox) MMIOWrite(gpa uint64, d []byte) {
	b.writes = append(b.writes, access{gpa, append([]byte(nil), d...)})
}
func (b *sandbox) PIORead(port uint16, d []byte)  { b.bad = true }
func (b *sandbox) PIOWrite(port uint16, d []byte) { b.bad = true }

// putSeg writes an hv_x64_segment_register.
func putSeg(b []byte, s accel.Segment) {
	lo, hi := segToHV(s)
	binary.LittleEndian.PutUint64(b[segBase:], lo)
	binary.LittleEndian.PutUint32(b[segLimit:], uint32(hi))
	binary.LittleEndian.PutUint16(b[segSelector:], uint16(hi>>32))
	binary.LittleEndian.PutUint16(b[segAttr:], uint16(hi>>48))
}
