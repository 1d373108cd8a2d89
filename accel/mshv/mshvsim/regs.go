package mshvsim

import (
	"encoding/binary"

	"govmm/accel"
)

// regCtx loads KVM state classes on demand for one GET/SET_VP_REGISTERS
// call and writes back the classes a SET changed.
type regCtx struct {
	v           *vp
	regs        accel.Regs
	sregs       accel.Sregs
	fpu         accel.FPU
	ev          accel.Events
	dbg         accel.DebugRegs
	xcr0        uint64
	mp          accel.MPState
	have, dirty uint32
	msrs        []accel.MSR
	err         error
	// deny is the status of a register the hypervisor refuses to set
	// here (0: HV_STATUS_INVALID_PARAMETER for an unknown name).
	deny uint16
}

const (
	cRegs = 1 << iota
	cSregs
	cFPU
	cEvents
	cDbg
	cXCR
	cMP
)

func (c *regCtx) load(cl uint32) bool {
	if c.have&cl != 0 {
		return true
	}
	k := c.v.k
	var err error
	switch cl {
	case cRegs:
		c.regs, err = k.Regs()
	case cSregs:
		c.sregs, err = k.Sregs()
	case cFPU:
		c.fpu, err = k.FPU()
	case cEvents:
		c.ev, err = k.Events()
	case cDbg:
		c.dbg, err = k.DebugRegs()
	case cXCR:
		var x []accel.XCR
		x, err = k.XCRs()
		for _, e := range x {
			if e.Index == 0 {
				c.xcr0 = e.Value
			}
		}
	case cMP:
		c.mp, err = k.MPState()
	}
	if err != nil {
		c.err = err
		return false
	}
	c.have |= cl
	return true
}

func (c *regCtx) commit() error {
	k := c.v.k
	var err error
	if c.dirty&cSregs != 0 && err == nil {
		err = k.SetSregs(&c.sregs)
	}
	if c.dirty&cRegs != 0 && err == nil {
		err = k.SetRegs(&c.regs)
	}
	if c.dirty&cFPU != 0 && err == nil {
		err = k.SetFPU(&c.fpu)
	}
	if c.dirty&cXCR != 0 && err == nil {
		err = k.SetXCRs([]accel.XCR{{Index: 0, Value: c.xcr0}})
	}
	if c.dirty&cDbg != 0 && err == nil {
		err = k.SetDebugRegs(&c.dbg)
	}
	if c.dirty&cEvents != 0 && err == nil {
		err = k.SetEvents(&c.ev)
	}
	if c.dirty&cMP != 0 && err == nil {
		err = k.SetMPState(c.mp)
	}
	if len(c.msrs) > 0 && err == nil {
		err = k.SetMSRs(c.msrs)
	}
	return err
}

// hv register names (the sim's own table from mshv-abi.md §4.1).
func gprPtr(r *accel.Regs, i uint32) *uint64 {
	p := []*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15, &r.RIP, &r.RFLAGS}
	return p[i]
}

func segPtr(s *accel.Sregs, i uint32) *accel.Segment {
	return []*accel.Segment{&s.ES, &s.CS, &s.SS, &s.DS, &s.FS, &s.GS, &s.LDT, &s.TR}[i]
}

// hvToMSR maps MSR-like hv registers (0x8xxxx) to MSR indices.
func hvToMSR(n uint32) (uint32, bool) {
	switch {
	case n >= 0x80010 && n <= 0x8001F:
		return 0x200 + 2*(n-0x80010), true
	case n >= 0x80040 && n <= 0x8004F:
		return 0x201 + 2*(n-0x80040), true
	case n >= 0x80073 && n <= 0x8007A:
		return 0x268 + (n - 0x80073), true
	case n >= 0x8008F && n <= 0x80092: // PL0_SSP..PL3_SSP
		return 0x6A4 + (n - 0x8008F), true
	}
	m, ok := map[uint32]uint32{0x80000: 0x10, 0x80002: 0xC0000102, 0x80004: 0x277, 0x80005: 0x174, 0x80006: 0x176,
		0x80007: 0x175, 0x80008: 0xC0000081, 0x80009: 0xC0000082, 0x8000A: 0xC0000083, 0x8000B: 0xC0000084,
		0x8000D: 0xFE, 0x8000E: 0x2FF, 0x80070: 0x250, 0x80071: 0x258, 0x80072: 0x259, 0x8007B: 0xC0000103,
		0x8007C: 0xD90, 0x8007D: 0x1D9, 0x80084: 0x48, 0x8008B: 0xDA0, 0x8008C: 0x6A0, 0x8008D: 0x6A2, 0x80093: 0x6A8, 0x80095: 0x6E0, 0x80096: 0x3B, 0x800A0: 0x1A0,
		// Hyper-V's synthetic registers that KVM's Hyper-V emulation
		// holds (see hyperv.go); the partition-wide ones (guest OS ID,
		// hypercall page, reference TSC page) are per VM in KVM, as in
		// the hypervisor.
		0x90001: 0x40000001, 0x90002: 0x40000000, 0x90013: 0x40000073, 0x90017: 0x40000021}[n]
	return m, ok
}

// synicToMSR maps the SynIC and synthetic timer registers to the MSRs of
// KVM's SynIC, for a VP whose KVM vCPU has it on: SINT0-15 (0xA0000-F),
// SCONTROL, SVERSION, SIEFP and SIMP (0xA0010-3), and STIMER0_CONFIG to
// STIMER3_COUNT (0xB0000-7) (mshv-abi.md §4.1; TLFS).
func synicToMSR(n uint32) (uint32, bool) {
	switch {
	case n >= 0xA0000 && n <= 0xA000F:
		return 0x40000090 + (n - 0xA0000), true
	case n >= 0xA0010 && n <= 0xA0013:
		return 0x40000080 + (n - 0xA0010), true
	case n >= 0xB0000 && n <= 0xB0007:
		return 0x400000B0 + (n - 0xB0000), true
	}
	return 0, false
}

func segToHV(s accel.Segment) (lo, hi uint64) {
	var a uint64
	if !s.Unusable {
		a = uint64(s.Type&0xF) | uint64(s.DPL&3)<<5
		for _, f := range []struct {
			on  bool
			bit uint64
		}{{s.S, 1 << 4}, {s.Present, 1 << 7}, {s.AVL, 1 << 12}, {s.L, 1 << 13}, {s.DB, 1 << 14}, {s.G, 1 << 15}} {
			if f.on {
				a |= f.bit
			}
		}
	}
	return s.Base, uint64(s.Limit) | uint64(s.Selector)<<32 | a<<48
}

func hvToSeg(lo, hi uint64) accel.Segment {
	a := uint16(hi >> 48)
	s := accel.Segment{Base: lo, Limit: uint32(hi), Selector: uint16(hi >> 32)}
	if a == 0 {
		s.Unusable = true
		return s
	}
	s.Type, s.S, s.DPL, s.Present = uint8(a&0xF), a&(1<<4) != 0, uint8(a>>5&3), a&(1<<7) != 0
	s.AVL, s.L, s.DB, s.G = a&(1<<12) != 0, a&(1<<13) != 0, a&(1<<14) != 0, a&(1<<15) != 0
	return s
}

// access reads (set=false) or writes one register. ok is false for a name
// the simulator does not know (HV_STATUS_INVALID_PARAMETER).
func (c *regCtx) access(n uint32, set bool, lo, hi uint64) (rlo, rhi uint64, ok bool) {
	v := c.v
	switch {
	case n >= 0x20000 && n <= 0x20011:
		if !c.load(cRegs) {
			return 0, 0, true
		}
		p := gprPtr(&c.regs, n-0x20000)
		if set {
			*p = lo
			c.dirty |= cRegs
		}
		return *p, 0, true
	case n >= 0x60000 && n <= 0x60007:
		if !c.load(cSregs) {
			return 0, 0, true
		}
		p := segPtr(&c.sregs, n-0x60000)
		if set {
			*p = hvToSeg(lo, hi)
			c.dirty |= cSregs
		}
		l, h := segToHV(*p)
		return l, h, true
	case n == 0x70000 || n == 0x70001:
		if !c.load(cSregs) {
			return 0, 0, true
		}
		t := &c.sregs.IDT
		if n == 0x70001 {
			t = &c.sregs.GDT
		}
		if set {
			*t = accel.DTable{Limit: uint16(lo >> 48), Base: hi}
			c.dirty |= cSregs
		}
		return uint64(t.Limit) << 48, t.Base, true
	case n >= 0x40000 && n <= 0x40004, n >= 0x41000 && n <= 0x41004, n == 0x80001, n == 0x80003:
		if !c.load(cSregs) {
			return 0, 0, true
		}
		var p *uint64
		switch {
		case n == 0x80001:
			p = &c.sregs.EFER
		case n == 0x80003:
			p = &c.sregs.APICBase
		default:
			p = []*uint64{&c.sregs.CR0, &c.sregs.CR2, &c.sregs.CR3, &c.sregs.CR4, &c.sregs.CR8}[n&0xF]
			if n&0x1000 != 0 && n&0xF == 1 {
				p = nil // there is no intermediate CR2
			}
		}
		if p == nil {
			return 0, 0, false
		}
		if set {
			*p = lo
			c.dirty |= cSregs
		}
		return *p, 0, true
	case n == 0x40005: // XFEM
		if !c.load(cXCR) {
			return 0, 0, true
		}
		if set {
			c.xcr0 = lo
			c.dirty |= cXCR
		}
		return c.xcr0, 0, true
	case n >= 0x30000 && n <= 0x30019:
		if !c.load(cFPU) {
			return 0, 0, true
		}
		f := &c.fpu
		var b *[16]byte
		switch {
		case n <= 0x3000F:
			b = &f.XMM[n-0x30000]
		case n <= 0x30017:
			b = &f.ST[n-0x30010]
		case n == 0x30018:
			if set {
				f.FCW, f.FSW, f.FTW, f.FOP, f.FIP = uint16(lo), uint16(lo>>16), uint8(lo>>32), uint16(lo>>48), hi
				c.dirty |= cFPU
			}
			return uint64(f.FCW) | uint64(f.FSW)<<16 | uint64(f.FTW)<<32 | uint64(f.FOP)<<48, f.FIP, true
		default:
			if set {
				f.FDP, f.MXCSR, f.MXCSRMask = lo, uint32(hi), uint32(hi>>32)
				c.dirty |= cFPU
			}
			return f.FDP, uint64(f.MXCSR) | uint64(f.MXCSRMask)<<32, true
		}
		if set {
			binary.LittleEndian.PutUint64(b[0:], lo)
			binary.LittleEndian.PutUint64(b[8:], hi)
			c.dirty |= cFPU
		}
		return binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint64(b[8:]), true
	case n >= 0x50000 && n <= 0x50005:
		if !c.load(cDbg) {
			return 0, 0, true
		}
		p := []*uint64{&c.dbg.DR[0], &c.dbg.DR[1], &c.dbg.DR[2], &c.dbg.DR[3], &c.dbg.DR6, &c.dbg.DR7}[n-0x50000]
		if set {
			*p = lo
			c.dirty |= cDbg
		}
		return *p, 0, true
	case n == 0x10002 || n == 0x10003 || n == 0x10004:
		if !c.load(cEvents) {
			return 0, 0, true
		}
		return c.events(n, set, lo, hi)
	case n == 0x4: // INTERNAL_ACTIVITY_STATE
		if !c.load(cMP) {
			return 0, 0, true
		}
		if set {
			switch {
			case lo&1 != 0:
				c.mp = accel.MPUninitialized
			case lo&2 != 0:
				c.mp = accel.MPHalted
			default:
				c.mp = accel.MPRunnable
			}
			c.dirty |= cMP
		}
		switch c.mp {
		case accel.MPUninitialized, accel.MPInitReceived:
			return 1, 0, true
		case accel.MPHalted:
			return 2, 0, true
		}
		return 0, 0, true
	case n == 0x90001 && set && v.idx != 0:
		// HV_REGISTER_HYPERCALL is the partition's, and the hypervisor
		// lets the VMM set it through one VP only (Cloud Hypervisor's
		// hypervisor/src/mshv/mod.rs set_state: "Microsoft Hypervisor
		// allows setting this register for only one VCPU", so it restores
		// it on VP 0 alone). The status it answers is not published; the
		// simulator refuses with ACCESS_DENIED, which hv_status_infos[]
		// maps to EIO as it does every refusal of a valid request.
		c.deny = stAccessDenied
		return 0, 0, false
	case n == 0xA0014: // EOM
		// Write-only: a write makes the hypervisor rescan its message
		// queues for the freed slot (Linux vmbus_signal_eom); it reads as
		// 0 (TLFS; KVM's synic_get_msr). With KVM's SynIC under the VP
		// the write goes to it and delivers a timer message that waited;
		// without one there is nothing to deliver.
		if set && v.k.SynICEnabled() {
			c.msrs = append(c.msrs, accel.MSR{Index: 0x40000084, Value: lo})
		}
		return 0, 0, true
	case n == 0x8008E: // SSP, CET's current shadow-stack pointer: no MSR
		// holds it; KVM has it as KVM_REG_GUEST_SSP where it offers
		// shadow stacks (a partition without them has no SSP: refused).
		if set {
			return lo, 0, v.k.SetSSP(lo) == nil
		}
		ssp, err := v.k.SSP()
		return ssp, 0, err == nil
	case n == 0x90003: // VP_INDEX
		return uint64(v.idx), 0, !set
	case n == 0x90004: // TIME_REF_COUNT
		ns, _ := v.p.kvm.Clock()
		return ns / 100, 0, !set
	}
	m, ok := hvToMSR(n)
	if !ok && v.k.SynICEnabled() {
		m, ok = synicToMSR(n)
	}
	if ok {
		if set {
			c.msrs = append(c.msrs, accel.MSR{Index: m, Value: lo})
			return lo, 0, true
		}
		r, err := v.k.MSRs([]uint32{m})
		if err != nil || len(r) != 1 {
			return 0, 0, false
		}
		return r[0].Value, 0, true
	}
	// Registers KVM does not have here (suspend registers, Hyper-V
	// synthetic MSRs, SynIC, timers, notifications): kept per VP.
	if n <= 3 || n == 0x10005 || n == 0x10006 || n == 0x10007 || (n >= 0x90000 && n <= 0x9FFFF) ||
		(n >= 0xA0000 && n <= 0xA0015) || (n >= 0xB0000 && n <= 0xB0007) {
		if set {
			v.hvregs[n] = [2]uint64{lo, hi}
		}
		r := v.hvregs[n]
		return r[0], r[1], true
	}
	return 0, 0, false
}

// events converts PENDING_INTERRUPTION (0x10002), INTERRUPT_STATE (0x10003)
// and PENDING_EVENT0 (0x10004) to and from KVM's vcpu events.
func (c *regCtx) events(n uint32, set bool, lo, hi uint64) (uint64, uint64, bool) {
	e := &c.ev
	switch n {
	case 0x10002:
		if set {
			e.Exception.Injected, e.NMI.Injected, e.Interrupt.Injected = false, false, false
			e.Interrupt.Soft = false
			if lo&1 != 0 {
				vec := uint8(lo >> 16)
				switch lo >> 1 & 7 {
				case 0:
					e.Interrupt.Injected, e.Interrupt.Nr = true, vec
				case 4:
					e.Interrupt.Injected, e.Interrupt.Nr, e.Interrupt.Soft = true, vec, true
				case 2:
					e.NMI.Injected = true
				default:
					e.Exception.Injected, e.Exception.Nr = true, vec
					e.Exception.HasErrorCode = lo&(1<<4) != 0
					e.Exception.ErrorCode = uint32(lo >> 32)
				}
			}
			c.dirty |= cEvents
		}
		var r uint64
		switch {
		case e.Exception.Injected:
			r = 1 | 3<<1 | uint64(e.Exception.Nr)<<16
			if e.Exception.HasErrorCode {
				r |= 1<<4 | uint64(e.Exception.ErrorCode)<<32
			}
		case e.NMI.Injected:
			r = 1 | 2<<1 | 2<<16
		case e.Interrupt.Injected:
			t := uint64(0)
			if e.Interrupt.Soft {
				t = 4
			}
			r = 1 | t<<1 | uint64(e.Interrupt.Nr)<<16
		}
		return r, 0, true
	case 0x10003:
		if set {
			e.Interrupt.Shadow = 0
			if lo&1 != 0 {
				e.Interrupt.Shadow = 1
			}
			e.NMI.Masked = lo&2 != 0
			c.dirty |= cEvents
		}
		var r uint64
		if e.Interrupt.Shadow != 0 {
			r |= 1
		}
		if e.NMI.Masked {
			r |= 2
		}
		return r, 0, true
	}
	if set {
		// hv_x64_pending_exception_event: event_type (bits 1-3) 0 is an
		// exception (HV_X64_PENDING_EVENT_EXCEPTION); KVM has nowhere to
		// put the other kinds.
		if lo&1 != 0 && lo>>1&7 != 0 {
			return 0, 0, false
		}
		e.Exception.Pending = lo&1 != 0
		if e.Exception.Pending {
			e.Exception.Nr = uint8(lo >> 16)
			e.Exception.HasErrorCode = lo&(1<<8) != 0
			e.Exception.ErrorCode = uint32(lo >> 32)
			e.Exception.HasPayload, e.Exception.Payload = hi != 0, hi
		}
		c.dirty |= cEvents
	}
	if !e.Exception.Pending {
		return 0, 0, true
	}
	r := 1 | uint64(e.Exception.Nr)<<16 // event_type 0: exception
	if e.Exception.HasErrorCode {
		r |= 1<<8 | uint64(e.Exception.ErrorCode)<<32
	}
	return r, e.Exception.Payload, true
}

// getRegs serves GET_VP_REGISTERS: names are u32s, the output 16 bytes
// each. It stops at the first unknown name (reps completed so far).
func (v *vp) getRegs(names, out []byte) (uint16, uint16) {
	c := &regCtx{v: v}
	n := len(names) / 4
	for i := 0; i < n; i++ {
		lo, hi, ok := c.access(binary.LittleEndian.Uint32(names[4*i:]), false, 0, 0)
		if c.err != nil {
			return stOperationDenied, uint16(i)
		}
		if !ok {
			return stInvalidParameter, uint16(i)
		}
		binary.LittleEndian.PutUint64(out[16*i:], lo)
		binary.LittleEndian.PutUint64(out[16*i+8:], hi)
	}
	return stSuccess, uint16(n)
}

// setRegs serves SET_VP_REGISTERS: hv_register_assoc is name@0 rsvd@4
// rsvd@8 value@16 (32 bytes).
func (v *vp) setRegs(elems []byte) (uint16, uint16) {
	c := &regCtx{v: v}
	n := len(elems) / raSize
	for i := 0; i < n; i++ {
		e := elems[raSize*i:]
		if binary.LittleEndian.Uint32(e[raRsvd1:]) != 0 || binary.LittleEndian.Uint64(e[raRsvd2:]) != 0 {
			return stInvalidParameter, uint16(i)
		}
		_, _, ok := c.access(binary.LittleEndian.Uint32(e[raName:]), true, binary.LittleEndian.Uint64(e[raValue:]), binary.LittleEndian.Uint64(e[raValue+8:]))
		if c.err != nil {
			return stOperationDenied, uint16(i)
		}
		if !ok {
			c.commit()
			if c.deny != 0 {
				return c.deny, uint16(i)
			}
			return stInvalidParameter, uint16(i)
		}
	}
	if err := c.commit(); err != nil {
		return stInvalidParameter, 0
	}
	return stSuccess, uint16(n)
}
