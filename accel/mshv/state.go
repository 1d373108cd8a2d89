package mshv

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
	"govmm/cpu"
)

// This file converts between MSHV's named registers and VP state blobs and
// the accelerator-neutral state of package accel.

// toSegment converts an hv segment register. Attributes 0 means unusable.
func toSegment(r mshvabi.SegmentRegister) accel.Segment {
	a := r.Attributes
	s := accel.Segment{Base: r.Base, Limit: r.Limit, Selector: r.Selector}
	if a == 0 {
		s.Unusable = true
		return s
	}
	s.Type = uint8(a & mshvabi.SegAttrTypeMask)
	s.S = a&mshvabi.SegAttrS != 0
	s.DPL = uint8(a>>mshvabi.SegAttrDPLShift) & 3
	s.Present = a&mshvabi.SegAttrP != 0
	s.AVL = a&mshvabi.SegAttrAVL != 0
	s.L = a&mshvabi.SegAttrL != 0
	s.DB = a&mshvabi.SegAttrDB != 0
	s.G = a&mshvabi.SegAttrG != 0
	return s
}

// fromSegment converts a neutral segment; an unusable one gets attributes 0.
func fromSegment(s accel.Segment) mshvabi.SegmentRegister {
	r := mshvabi.SegmentRegister{Base: s.Base, Limit: s.Limit, Selector: s.Selector}
	if s.Unusable {
		return r
	}
	a := uint16(s.Type&0xF) | uint16(s.DPL&3)<<mshvabi.SegAttrDPLShift
	for _, f := range []struct {
		on  bool
		bit uint16
	}{{s.S, mshvabi.SegAttrS}, {s.Present, mshvabi.SegAttrP}, {s.AVL, mshvabi.SegAttrAVL},
		{s.L, mshvabi.SegAttrL}, {s.DB, mshvabi.SegAttrDB}, {s.G, mshvabi.SegAttrG}} {
		if f.on {
			a |= f.bit
		}
	}
	r.Attributes = a
	return r
}

func segFromValue(v mshvabi.RegisterValue) mshvabi.SegmentRegister {
	return mshvabi.SegmentRegister{Base: v.Low, Limit: uint32(v.High), Selector: uint16(v.High >> 32), Attributes: uint16(v.High >> 48)}
}

func segValue(r mshvabi.SegmentRegister) mshvabi.RegisterValue {
	return mshvabi.RegisterValue{Low: r.Base, High: uint64(r.Limit) | uint64(r.Selector)<<32 | uint64(r.Attributes)<<48}
}

func tableFromValue(v mshvabi.RegisterValue) accel.DTable {
	return accel.DTable{Limit: uint16(v.Low >> 48), Base: v.High}
}

func tableValue(t accel.DTable) mshvabi.RegisterValue {
	return mshvabi.RegisterValue{Low: uint64(t.Limit) << 48, High: t.Base}
}

func (v *VCPU) get(names []uint32) ([]mshvabi.RegisterValue, error) {
	vals := make([]mshvabi.RegisterValue, len(names))
	if err := v.hv.getRegs(v.bufs, uint32(v.index), names, vals); err != nil {
		return nil, fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	return vals, nil
}

func (v *VCPU) set(regs []mshvabi.RegisterAssoc) error {
	if err := v.hv.setRegs(v.bufs, uint32(v.index), regs); err != nil {
		return fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	return nil
}

// gprNames are in hv (x86 encoding) order, then RIP and RFLAGS.
var gprNames = func() []uint32 {
	n := make([]uint32, 18)
	for i := range 16 {
		n[i] = mshvabi.RegRAX + uint32(i)
	}
	n[16], n[17] = mshvabi.RegRIP, mshvabi.RegRFLAGS
	return n
}()

func regsPtrs(r *accel.Regs) []*uint64 {
	return []*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15, &r.RIP, &r.RFLAGS}
}

// Regs reads the general registers, RIP and RFLAGS.
func (v *VCPU) Regs() (accel.Regs, error) {
	var r accel.Regs
	vals, err := v.get(gprNames)
	if err != nil {
		return r, err
	}
	for i, p := range regsPtrs(&r) {
		*p = vals[i].Low
	}
	return r, nil
}

// SetRegs writes the general registers, RIP and RFLAGS.
func (v *VCPU) SetRegs(r *accel.Regs) error {
	regs := make([]mshvabi.RegisterAssoc, 0, 18)
	for i, p := range regsPtrs(r) {
		regs = append(regs, reg(gprNames[i], *p))
	}
	return v.set(regs)
}

var sregNames = []uint32{mshvabi.RegCS, mshvabi.RegDS, mshvabi.RegES, mshvabi.RegFS, mshvabi.RegGS, mshvabi.RegSS,
	mshvabi.RegTR, mshvabi.RegLDTR, mshvabi.RegGDTR, mshvabi.RegIDTR,
	mshvabi.RegCR0, mshvabi.RegCR2, mshvabi.RegCR3, mshvabi.RegCR4, mshvabi.RegCR8, mshvabi.RegEFER, mshvabi.RegAPICBase}

// Sregs reads segments, descriptor tables, control registers, EFER and
// the APIC base.
func (v *VCPU) Sregs() (accel.Sregs, error) {
	var s accel.Sregs
	vals, err := v.get(sregNames)
	if err != nil {
		return s, err
	}
	segs := []*accel.Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS, &s.TR, &s.LDT}
	for i, p := range segs {
		*p = toSegment(segFromValue(vals[i]))
	}
	s.GDT, s.IDT = tableFromValue(vals[8]), tableFromValue(vals[9])
	s.CR0, s.CR2, s.CR3, s.CR4, s.CR8 = vals[10].Low, vals[11].Low, vals[12].Low, vals[13].Low, vals[14].Low
	s.EFER, s.APICBase = vals[15].Low, vals[16].Low
	return s, nil
}

// SetSregs writes segments, descriptor tables, control registers, EFER and
// the APIC base.
func (v *VCPU) SetSregs(s *accel.Sregs) error {
	segs := []accel.Segment{s.CS, s.DS, s.ES, s.FS, s.GS, s.SS, s.TR, s.LDT}
	regs := make([]mshvabi.RegisterAssoc, 0, len(sregNames))
	for i, sg := range segs {
		regs = append(regs, mshvabi.RegisterAssoc{Name: sregNames[i], Value: segValue(fromSegment(sg))})
	}
	regs = append(regs, mshvabi.RegisterAssoc{Name: mshvabi.RegGDTR, Value: tableValue(s.GDT)},
		mshvabi.RegisterAssoc{Name: mshvabi.RegIDTR, Value: tableValue(s.IDT)})
	// EFER before CR0 so that enabling paging in long mode is consistent.
	regs = append(regs, reg(mshvabi.RegEFER, s.EFER), reg(mshvabi.RegCR4, s.CR4), reg(mshvabi.RegCR3, s.CR3),
		reg(mshvabi.RegCR0, s.CR0), reg(mshvabi.RegCR2, s.CR2), reg(mshvabi.RegCR8, s.CR8), reg(mshvabi.RegAPICBase, s.APICBase))
	return v.set(regs)
}

var fpuNames = func() []uint32 {
	var n []uint32
	for i := range 16 {
		n = append(n, mshvabi.RegXMM0+uint32(i))
	}
	for i := range 8 {
		n = append(n, mshvabi.RegFPMMX0+uint32(i))
	}
	return append(n, mshvabi.RegFPControlStatus, mshvabi.RegXMMControlStatus)
}()

// FPU reads the x87/SSE state (XMM0-15, FP_MMX0-7 and the two control and
// status registers).
func (v *VCPU) FPU() (accel.FPU, error) {
	var f accel.FPU
	vals, err := v.get(fpuNames)
	if err != nil {
		return f, err
	}
	for i := range 16 {
		put64(f.XMM[i][0:], vals[i].Low)
		put64(f.XMM[i][8:], vals[i].High)
	}
	for i := range 8 {
		put64(f.ST[i][0:], vals[16+i].Low)
		put64(f.ST[i][8:], vals[16+i].High)
	}
	fcs, xcs := vals[24], vals[25]
	f.FCW, f.FSW, f.FTW, f.FOP = uint16(fcs.Low), uint16(fcs.Low>>16), uint8(fcs.Low>>32), uint16(fcs.Low>>48)
	f.FIP = fcs.High
	f.FDP = xcs.Low
	f.MXCSR, f.MXCSRMask = uint32(xcs.High), uint32(xcs.High>>32)
	return f, nil
}

// SetFPU writes the x87/SSE state.
func (v *VCPU) SetFPU(f *accel.FPU) error {
	regs := make([]mshvabi.RegisterAssoc, 0, len(fpuNames))
	for i := range 16 {
		regs = append(regs, reg128(fpuNames[i], get64(f.XMM[i][0:]), get64(f.XMM[i][8:])))
	}
	for i := range 8 {
		regs = append(regs, reg128(fpuNames[16+i], get64(f.ST[i][0:]), get64(f.ST[i][8:])))
	}
	regs = append(regs,
		reg128(mshvabi.RegFPControlStatus, uint64(f.FCW)|uint64(f.FSW)<<16|uint64(f.FTW)<<32|uint64(f.FOP)<<48, f.FIP),
		reg128(mshvabi.RegXMMControlStatus, f.FDP, uint64(f.MXCSR)|uint64(f.MXCSRMask)<<32))
	return v.set(regs)
}

// XCRs reads XCR0 (the XFEM register).
func (v *VCPU) XCRs() ([]accel.XCR, error) {
	vals, err := v.get([]uint32{mshvabi.RegXFEM})
	if err != nil {
		return nil, err
	}
	return []accel.XCR{{Index: 0, Value: vals[0].Low}}, nil
}

// SetXCRs writes XCR0; MSHV exposes no other XCR.
func (v *VCPU) SetXCRs(x []accel.XCR) error {
	var regs []mshvabi.RegisterAssoc
	for _, c := range x {
		if c.Index != 0 {
			return fmt.Errorf("vCPU %d: XCR%d: %w (MSHV exposes XCR0 only)", v.index, c.Index, accel.ErrNotSupported)
		}
		regs = append(regs, reg(mshvabi.RegXFEM, c.Value))
	}
	if len(regs) == 0 {
		return nil
	}
	return v.set(regs)
}

// MSRs reads MSRs through their named registers.
func (v *VCPU) MSRs(indices []uint32) ([]accel.MSR, error) {
	names := make([]uint32, len(indices))
	for i, m := range indices {
		n, ok := mshvabi.MSRRegisterName(m)
		if !ok {
			return nil, fmt.Errorf("vCPU %d: MSR %#x: %w (MSHV reaches MSRs only through named registers)", v.index, m, accel.ErrNotSupported)
		}
		names[i] = n
	}
	vals, err := v.get(names)
	if err != nil {
		return nil, fmt.Errorf("read %d MSRs: %w", len(indices), err)
	}
	out := make([]accel.MSR, len(indices))
	for i, m := range indices {
		out[i] = accel.MSR{Index: m, Value: vals[i].Low}
	}
	return out, nil
}

// Hyper-V synthetic MSRs that are not per-VP state.
const (
	// msrHypercall (HV_X64_MSR_HYPERCALL) is partition-wide, and the
	// hypervisor lets the VMM set it through one VP only: Cloud
	// Hypervisor's hypervisor/src/mshv/mod.rs set_state writes it (its
	// "misc" registers) on VP 0 alone, "as Microsoft Hypervisor allows
	// setting this register for only one VCPU", and OpenVMM's virt_mshv
	// (x86_64/vm_state.rs) reaches it through the BSP's VP.
	msrHypercall = 0x40000001
	// msrEOM (HV_X64_MSR_EOM) is an action, not state: a write tells the
	// hypervisor the guest freed a SynIC message slot and makes it rescan
	// its message queues to deliver the next message (Linux
	// drivers/hv/hyperv_vmbus.h vmbus_signal_eom: "This will cause message
	// queue rescan to possibly deliver another msg from the hypervisor");
	// it reads as 0. Writing it back on a restore would deliver a queued
	// message into a message page that the restore then overwrites, so it
	// is never saved and never written.
	msrEOM = 0x40000084
)

// SetMSRs writes MSRs through their named registers. HV_X64_MSR_HYPERCALL
// is taken on VP 0 only and HV_X64_MSR_EOM not at all (see msrHypercall,
// msrEOM).
func (v *VCPU) SetMSRs(ms []accel.MSR) error {
	regs := make([]mshvabi.RegisterAssoc, 0, len(ms))
	for _, m := range ms {
		n, ok := mshvabi.MSRRegisterName(m.Index)
		if !ok {
			return fmt.Errorf("vCPU %d: MSR %#x: %w (MSHV reaches MSRs only through named registers)", v.index, m.Index, accel.ErrNotSupported)
		}
		switch {
		case m.Index == msrEOM:
			return fmt.Errorf("vCPU %d: MSR %#x (HV_X64_MSR_EOM) is not state: writing it makes the hypervisor deliver the next queued SynIC message", v.index, m.Index)
		case m.Index == msrHypercall && v.index != 0:
			return fmt.Errorf("vCPU %d: MSR %#x (HV_X64_MSR_HYPERCALL) is the partition's, and the hypervisor takes it through VP 0 only: %w", v.index, m.Index, accel.ErrNotSupported)
		}
		regs = append(regs, reg(n, m.Value))
	}
	if err := v.set(regs); err != nil {
		return fmt.Errorf("write %d MSRs: %w", len(ms), err)
	}
	return nil
}

// MSRIndexList is every MSR with a register name that this VP can save
// and restore: it reads each one and writes the value back (except the
// TSC, which a write would perturb), so read-only or absent ones are left
// out, and so are HV_X64_MSR_EOM (an action, never state) and, except on
// VP 0, the partition's HV_X64_MSR_HYPERCALL.
func (v *VCPU) MSRIndexList() ([]uint32, error) {
	var out []uint32
	for _, m := range mshvabi.MSRIndexList() {
		if m == msrEOM || (m == msrHypercall && v.index != 0) {
			continue
		}
		val, err := v.MSRs([]uint32{m})
		if err != nil {
			continue
		}
		if m != 0x10 && v.SetMSRs(val) != nil {
			continue
		}
		out = append(out, m)
	}
	return out, nil
}

// vpState reads VP state blob typ, growing the buffer when the kernel
// reports a larger size.
func (v *VCPU) vpState(typ uint8, size int) ([]byte, error) {
	for try := 0; try < 3; try++ {
		buf := mshvabi.AlignedBuffer((size + 4095) &^ 4095)
		n, err := mshvabi.GetVPState(v.vm.dev, v.fd, typ, buf)
		if err == nil {
			if int(n) < len(buf) {
				buf = buf[:n]
			}
			return buf, nil
		}
		if errors.Is(err, unix.EINVAL) && int(n) > len(buf) {
			size = int(n)
			continue
		}
		return nil, fmt.Errorf("vCPU %d: MSHV_GET_VP_STATE type %d: %w", v.index, typ, err)
	}
	return nil, fmt.Errorf("vCPU %d: MSHV_GET_VP_STATE type %d: size keeps growing", v.index, typ)
}

func (v *VCPU) setVPState(typ uint8, data []byte) error {
	buf := mshvabi.AlignedBuffer((len(data) + 4095) &^ 4095)
	copy(buf, data)
	if _, err := mshvabi.SetVPState(v.vm.dev, v.fd, typ, buf); err != nil {
		return fmt.Errorf("vCPU %d: MSHV_SET_VP_STATE type %d: %w", v.index, typ, err)
	}
	return nil
}

// xAPIC register page offsets.
const (
	apicID      = 0x20
	apicVersion = 0x30
	apicTPR     = 0x80
	apicRRD     = 0xC0
	apicLDR     = 0xD0
	apicDFR     = 0xE0
	apicSVR     = 0xF0
	apicISR     = 0x100
	apicTMR     = 0x180
	apicIRR     = 0x200
	apicESR     = 0x280
	apicCMCI    = 0x2F0
	apicICRLow  = 0x300
	apicICRHigh = 0x310
	apicTimer   = 0x320
	apicThermal = 0x330
	apicPerfmon = 0x340
	apicLINT0   = 0x350
	apicLINT1   = 0x360
	apicError   = 0x370
	apicInitCnt = 0x380
	apicCurCnt  = 0x390
	apicDivide  = 0x3E0
)

// lapicFields pairs each hv_local_interrupt_controller_state field with its
// xAPIC page offset. apic_id holds the APIC ID register as the page does
// (ID<<24 in xAPIC mode, the whole ID in x2APIC mode): rust-vmm's
// mshv-bindings (x86_64/regs.rs, LapicState <-> hv_local_interrupt_controller_state)
// copies the register to and from apic_id unchanged, and OpenVMM's
// virt::x86::vp (ApicRegisters <-> HvX64InterruptControllerState, with its
// reset state of apic_id<<24 in xAPIC mode) does the same.
func lapicFields(s *mshvabi.LocalInterruptControllerState) []struct {
	p   *uint32
	off int
} {
	f := []struct {
		p   *uint32
		off int
	}{
		{&s.APICID, apicID}, {&s.APICVersion, apicVersion}, {&s.APICLDR, apicLDR}, {&s.APICDFR, apicDFR}, {&s.APICSpurious, apicSVR},
		{&s.APICESR, apicESR}, {&s.APICICRHigh, apicICRHigh}, {&s.APICICRLow, apicICRLow},
		{&s.APICLVTTimer, apicTimer}, {&s.APICLVTThermal, apicThermal}, {&s.APICLVTPerfmon, apicPerfmon},
		{&s.APICLVTLINT0, apicLINT0}, {&s.APICLVTLINT1, apicLINT1}, {&s.APICLVTError, apicError},
		{&s.APICLVTCMCI, apicCMCI}, {&s.APICInitialCount, apicInitCnt}, {&s.APICCounterValue, apicCurCnt},
		{&s.APICDivideConfig, apicDivide}, {&s.APICRemoteRead, apicRRD},
	}
	for i := range 8 {
		f = append(f, struct {
			p   *uint32
			off int
		}{&s.APICISR[i], apicISR + 0x10*i}, struct {
			p   *uint32
			off int
		}{&s.APICTMR[i], apicTMR + 0x10*i}, struct {
			p   *uint32
			off int
		}{&s.APICIRR[i], apicIRR + 0x10*i})
	}
	return f
}

// LAPIC reads the hypervisor's LAPIC state and converts it to the 1 KiB
// xAPIC register page. TPR comes from CR8 (TPR[7:4]); PPR and APR are
// derived by the APIC and not saved.
func (v *VCPU) LAPIC() (accel.LAPIC, error) {
	var l accel.LAPIC
	s, err := v.lapicState()
	if err != nil {
		return l, err
	}
	vals, err := v.get([]uint32{mshvabi.RegCR8})
	if err != nil {
		return l, err
	}
	s.APICIRR[0] &^= 1 << hvNMIPendingBit // a pending NMI, not an interrupt (Events reports it)
	for _, f := range lapicFields(&s) {
		binary.LittleEndian.PutUint32(l.Regs[f.off:], *f.p)
	}
	binary.LittleEndian.PutUint32(l.Regs[apicTPR:], uint32(vals[0].Low&0xF)<<4)
	return l, nil
}

// hvNMIPendingBit is the bit of apic_irr[0] (vector 2, which no fixed
// interrupt may use) where the hypervisor keeps a pending NMI, outside the
// architecture: OpenVMM's virt::x86::vp reads and sets it there
// (hv_apic_nmi_pending), and its virt_mshv keeps it across a LAPIC restore.
const hvNMIPendingBit = 2

// lapicState reads the hypervisor's LAPIC state.
func (v *VCPU) lapicState() (mshvabi.LocalInterruptControllerState, error) {
	buf, err := v.vpState(mshvabi.VPStateLAPIC, 4096)
	if err != nil {
		return mshvabi.LocalInterruptControllerState{}, err
	}
	s, ok := mshvabi.Load[mshvabi.LocalInterruptControllerState](buf)
	if !ok {
		return s, fmt.Errorf("vCPU %d: LAPIC state of %d bytes is too short", v.index, len(buf))
	}
	return s, nil
}

// SetLAPIC converts an xAPIC register page to the hypervisor's LAPIC state
// and sets it (and CR8 from the TPR). The page's vector 2 is not an
// interrupt; the VP's pending NMI, kept in that bit, stays as it was
// (SetEvents sets it).
func (v *VCPU) SetLAPIC(l *accel.LAPIC) error {
	cur, err := v.lapicState()
	if err != nil {
		return err
	}
	var s mshvabi.LocalInterruptControllerState
	for _, f := range lapicFields(&s) {
		*f.p = binary.LittleEndian.Uint32(l.Regs[f.off:])
	}
	s.APICIRR[0] = s.APICIRR[0]&^(1<<hvNMIPendingBit) | cur.APICIRR[0]&(1<<hvNMIPendingBit)
	buf := make([]byte, 4096)
	mshvabi.Store(buf, &s)
	if err := v.setVPState(mshvabi.VPStateLAPIC, buf); err != nil {
		return err
	}
	tpr := binary.LittleEndian.Uint32(l.Regs[apicTPR:])
	return v.set([]mshvabi.RegisterAssoc{reg(mshvabi.RegCR8, uint64(tpr>>4)&0xF)})
}

var eventNames = []uint32{mshvabi.RegPendingInterruption, mshvabi.RegInterruptState, mshvabi.RegPendingEvent0}

// Events reads the pending interruption, the interrupt shadow / NMI mask,
// the pending exception event and a pending NMI (hvNMIPendingBit).
func (v *VCPU) Events() (accel.Events, error) {
	var e accel.Events
	vals, err := v.get(eventNames)
	if err != nil {
		return e, err
	}
	pi, is, ev := vals[0].Low, vals[1].Low, vals[2]
	if pi&mshvabi.PendingIntrPending != 0 {
		vec := uint8(pi >> mshvabi.PendingIntrVectorShift)
		switch (pi >> mshvabi.PendingIntrTypeShift) & mshvabi.PendingIntrTypeMask {
		case mshvabi.PendingTypeExtInt:
			e.Interrupt.Injected, e.Interrupt.Nr = true, vec
		case mshvabi.PendingTypeSoftInt:
			e.Interrupt.Injected, e.Interrupt.Nr, e.Interrupt.Soft = true, vec, true
		case mshvabi.PendingTypeNMI:
			e.NMI.Injected = true
		default:
			e.Exception.Injected, e.Exception.Nr = true, vec
			if pi&mshvabi.PendingIntrDeliverErr != 0 {
				e.Exception.HasErrorCode, e.Exception.ErrorCode = true, uint32(pi>>mshvabi.PendingIntrErrorShift)
			}
		}
	}
	if v.extLine && !e.Interrupt.Injected && !e.Exception.Injected && !e.NMI.Injected {
		// The ExtINT line is up and no dispatch has returned since (a
		// pause ended it with EINTR): the PIC has the vector in service
		// and the guest has not taken it. It is saved as the interrupt
		// being injected, which a restore delivers once.
		e.Interrupt.Injected, e.Interrupt.Nr = true, v.extVec
	}
	if is&mshvabi.InterruptStateShadow != 0 {
		e.Interrupt.Shadow = 1
	}
	e.NMI.Masked = is&mshvabi.InterruptStateNMIMasked != 0
	ls, err := v.lapicState()
	if err != nil {
		return e, err
	}
	e.NMI.Pending = ls.APICIRR[0]&(1<<hvNMIPendingBit) != 0
	if ev.Low&mshvabi.PendingEventPending != 0 {
		if typ := ev.Low >> mshvabi.PendingEventTypeShift & 7; typ != mshvabi.PendingEventException {
			return e, fmt.Errorf("vCPU %d: PENDING_EVENT0 holds a pending event of type %d (%s), not an exception (type 0); govmm cannot save it",
				v.index, typ, pendingEventName(typ))
		}
		e.Exception.Pending = true
		e.Exception.Nr = uint8(ev.Low >> 16)
		if ev.Low&mshvabi.PendingEventDeliverErr != 0 {
			e.Exception.HasErrorCode, e.Exception.ErrorCode = true, uint32(ev.Low>>32)
		}
		if ev.High != 0 {
			e.Exception.HasPayload, e.Exception.Payload = true, ev.High
		}
	}
	return e, nil
}

// pendingEventName names an hv_x64_pending_event_type.
func pendingEventName(t uint64) string {
	switch t {
	case mshvabi.PendingEventMemoryIntercept:
		return "memory intercept"
	case mshvabi.PendingEventNestedMemory:
		return "nested memory intercept"
	case mshvabi.PendingEventVirtualization:
		return "virtualization fault"
	case mshvabi.PendingEventHypercallOutput:
		return "hypercall output"
	case mshvabi.PendingEventExtInt:
		return "external interrupt"
	case mshvabi.PendingEventShadowIPT:
		return "shadow IPT"
	}
	return "unknown"
}

// SetEvents writes the pending events. A pending (not yet injected) NMI is
// the hypervisor's bit in the LAPIC state (hvNMIPendingBit).
func (v *VCPU) SetEvents(e *accel.Events) error {
	var pi, is uint64
	switch {
	case e.Exception.Injected:
		pi = mshvabi.PendingIntrPending | mshvabi.PendingTypeException<<mshvabi.PendingIntrTypeShift | uint64(e.Exception.Nr)<<mshvabi.PendingIntrVectorShift
		if e.Exception.HasErrorCode {
			pi |= mshvabi.PendingIntrDeliverErr | uint64(e.Exception.ErrorCode)<<mshvabi.PendingIntrErrorShift
		}
	case e.NMI.Injected:
		pi = mshvabi.PendingIntrPending | mshvabi.PendingTypeNMI<<mshvabi.PendingIntrTypeShift | 2<<mshvabi.PendingIntrVectorShift
	case e.Interrupt.Injected:
		t := uint64(mshvabi.PendingTypeExtInt)
		if e.Interrupt.Soft {
			t = mshvabi.PendingTypeSoftInt
		}
		pi = mshvabi.PendingIntrPending | t<<mshvabi.PendingIntrTypeShift | uint64(e.Interrupt.Nr)<<mshvabi.PendingIntrVectorShift
	}
	if e.Interrupt.Shadow != 0 {
		is |= mshvabi.InterruptStateShadow
	}
	if e.NMI.Masked {
		is |= mshvabi.InterruptStateNMIMasked
	}
	var ev mshvabi.RegisterValue
	if e.Exception.Pending {
		ev.Low = mshvabi.PendingEventPending | mshvabi.PendingEventException<<mshvabi.PendingEventTypeShift | uint64(e.Exception.Nr)<<16
		if e.Exception.HasErrorCode {
			ev.Low |= mshvabi.PendingEventDeliverErr | uint64(e.Exception.ErrorCode)<<32
		}
		if e.Exception.HasPayload {
			ev.High = e.Exception.Payload
		}
	}
	if err := v.set([]mshvabi.RegisterAssoc{reg(mshvabi.RegPendingInterruption, pi), reg(mshvabi.RegInterruptState, is),
		{Name: mshvabi.RegPendingEvent0, Value: ev}}); err != nil {
		return err
	}
	// A pending (not yet injected) NMI is the hypervisor's bit in the
	// LAPIC state (hvNMIPendingBit), set or cleared as OpenVMM's virt_mshv
	// sets its activity state.
	ls, err := v.lapicState()
	if err != nil {
		return err
	}
	if has := ls.APICIRR[0]&(1<<hvNMIPendingBit) != 0; has != e.NMI.Pending {
		ls.APICIRR[0] ^= 1 << hvNMIPendingBit
		buf := make([]byte, 4096)
		mshvabi.Store(buf, &ls)
		if err := v.setVPState(mshvabi.VPStateLAPIC, buf); err != nil {
			return fmt.Errorf("vCPU %d: pending NMI %v: %w", v.index, e.NMI.Pending, err)
		}
	}
	return nil
}

// MPState maps INTERNAL_ACTIVITY_STATE: startup-suspend (waiting for
// SIPI) is MPUninitialized, halt-suspend MPHalted, otherwise runnable.
func (v *VCPU) MPState() (accel.MPState, error) {
	vals, err := v.get([]uint32{mshvabi.RegInternalActivityState})
	if err != nil {
		return 0, err
	}
	a := vals[0].Low
	switch {
	case a&mshvabi.InternalActivityStartupSuspend != 0:
		return accel.MPUninitialized, nil
	case a&mshvabi.InternalActivityHaltSuspend != 0:
		return accel.MPHalted, nil
	}
	return accel.MPRunnable, nil
}

// SetMPState sets INTERNAL_ACTIVITY_STATE (MPInitReceived is stored as
// startup-suspend, like MPUninitialized).
func (v *VCPU) SetMPState(s accel.MPState) error {
	var a uint64
	switch s {
	case accel.MPRunnable:
	case accel.MPUninitialized, accel.MPInitReceived:
		a = mshvabi.InternalActivityStartupSuspend
	case accel.MPHalted:
		a = mshvabi.InternalActivityHaltSuspend
	default:
		return fmt.Errorf("vCPU %d: MP state %v: %w", v.index, s, accel.ErrNotSupported)
	}
	return v.set([]mshvabi.RegisterAssoc{reg(mshvabi.RegInternalActivityState, a)})
}

var dbgNames = []uint32{mshvabi.RegDR0, mshvabi.RegDR1, mshvabi.RegDR2, mshvabi.RegDR3, mshvabi.RegDR6, mshvabi.RegDR7}

// DebugRegs reads DR0-3, DR6 and DR7.
func (v *VCPU) DebugRegs() (accel.DebugRegs, error) {
	var d accel.DebugRegs
	vals, err := v.get(dbgNames)
	if err != nil {
		return d, err
	}
	for i := range 4 {
		d.DR[i] = vals[i].Low
	}
	d.DR6, d.DR7 = vals[4].Low, vals[5].Low
	return d, nil
}

// SetDebugRegs writes DR0-3, DR6 and DR7.
func (v *VCPU) SetDebugRegs(d *accel.DebugRegs) error {
	return v.set([]mshvabi.RegisterAssoc{reg(dbgNames[0], d.DR[0]), reg(dbgNames[1], d.DR[1]), reg(dbgNames[2], d.DR[2]),
		reg(dbgNames[3], d.DR[3]), reg(dbgNames[4], d.DR6), reg(dbgNames[5], d.DR7)})
}

// SetCPUID registers the entries as CPUID results of this VP
// (REGISTER_INTERCEPT_RESULT with full masks, so the CPU model both sets
// and clears bits of what the hypervisor computes). Leaves 0x40000000 and up
// are skipped: they are the hypervisor's.
func (v *VCPU) SetCPUID(entries []accel.CPUIDEntry) error {
	in := make([]byte, mshvabi.SizeofInputRegisterInterceptResult)
	for _, e := range entries {
		if cpu.HypervisorLeaf(e.Function) {
			// The hypervisor's own leaves follow the partition's
			// synthetic features; they are not the VMM's to override.
			continue
		}
		a := mshvabi.InputRegisterInterceptResult{VPIndex: uint32(v.index), InterceptType: mshvabi.InterceptTypeX64CPUID}
		p := &a.Parameters
		p.EAX, p.ECX = e.Function, e.Index
		if e.Flags&accel.CPUIDFlagSignificantIndex != 0 {
			p.SubleafSpecific = 1
		}
		p.AlwaysOverride = 1
		p.Result.EAX, p.Result.EBX, p.Result.ECX, p.Result.EDX = e.EAX, e.EBX, e.ECX, e.EDX
		p.Result.EAXMask, p.Result.EBXMask, p.Result.ECXMask, p.Result.EDXMask = ^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0)
		full := mshvabi.Bytes(&a)
		copy(in, full[:len(in)])
		if _, err := v.vm.hv.call(mshvabi.HvcallRegisterInterceptResult, 0, in, nil); err != nil {
			return fmt.Errorf("vCPU %d: CPUID override for leaf %#x.%d: %w", v.index, e.Function, e.Index, err)
		}
	}
	v.shstk.Store(cpu.OffersShadowStacks(entries))
	return nil
}
