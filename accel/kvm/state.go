package kvm

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"govmm/accel"
	"govmm/cpu"
)

// vCPU state: KVM structs converted to and from the neutral accel types.

func (v *VCPU) get(req uintptr, name string, p unsafe.Pointer) error {
	if v.fd < 0 {
		return fmt.Errorf("vCPU %d: %s: %w", v.index, name, errClosed)
	}
	if _, err := ioctlPtr(v.fd, req, p); err != nil {
		return fmt.Errorf("vCPU %d: %s: %w", v.index, name, err)
	}
	return nil
}

// SetCPUID sets the vCPU's CPUID table (KVM_SET_CPUID2). KVM refuses a
// different table once the vCPU has run. A timing leaf (0x40000010) with
// no TSC frequency gets the vCPU's. A table that offers Hyper-V's SynIC or
// synthetic timers (a guest from MSHV) turns KVM's SynIC on (synic.go).
func (v *VCPU) SetCPUID(entries []accel.CPUIDEntry) error {
	if len(entries) == 0 {
		return fmt.Errorf("vCPU %d: KVM_SET_CPUID2: empty CPUID table", v.index)
	}
	buf := newCPUID2(len(entries))
	ents := cpuid2Slice(buf)
	for i, e := range entries {
		if e.Function == cpu.KVMLeafTiming && e.EAX == 0 && cpu.IsKVM(entries) {
			khz, err := v.TSCKHz()
			if err != nil {
				return fmt.Errorf("fill CPUID leaf %#x with the TSC frequency: %w", e.Function, err)
			}
			e.EAX = khz
		}
		ents[i] = kvmCPUIDEntry2{Function: e.Function, Index: e.Index, Flags: e.Flags & cpuidFlagSignificantIndex,
			EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
	}
	err := v.get(ioctlSetCPUID2, "KVM_SET_CPUID2", unsafe.Pointer(&buf[0]))
	runtime.KeepAlive(buf)
	if err == nil && OffersSynIC(entries) {
		err = v.enableSynIC()
	}
	if err == nil {
		v.shstk.Store(cpu.OffersShadowStacks(entries))
	}
	return err
}

// Regs returns the general registers.
func (v *VCPU) Regs() (accel.Regs, error) {
	var k kvmRegs
	if err := v.get(ioctlGetRegs, "KVM_GET_REGS", unsafe.Pointer(&k)); err != nil {
		return accel.Regs{}, err
	}
	return accel.Regs(k), nil
}

// SetRegs sets the general registers.
func (v *VCPU) SetRegs(r *accel.Regs) error {
	k := kvmRegs(*r)
	return v.get(ioctlSetRegs, "KVM_SET_REGS", unsafe.Pointer(&k))
}

func segFromKVM(s kvmSegment) accel.Segment {
	return accel.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present != 0, DPL: s.DPL, DB: s.DB != 0, S: s.S != 0, L: s.L != 0,
		G: s.G != 0, AVL: s.AVL != 0, Unusable: s.Unusable != 0}
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func segToKVM(s accel.Segment) kvmSegment {
	return kvmSegment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: b2u(s.Present), DPL: s.DPL, DB: b2u(s.DB), S: b2u(s.S), L: b2u(s.L),
		G: b2u(s.G), AVL: b2u(s.AVL), Unusable: b2u(s.Unusable)}
}

// Sregs returns segment, descriptor-table and control registers.
func (v *VCPU) Sregs() (accel.Sregs, error) {
	var k kvmSregs
	if err := v.get(ioctlGetSregs, "KVM_GET_SREGS", unsafe.Pointer(&k)); err != nil {
		return accel.Sregs{}, err
	}
	return accel.Sregs{
		CS: segFromKVM(k.CS), DS: segFromKVM(k.DS), ES: segFromKVM(k.ES), FS: segFromKVM(k.FS),
		GS: segFromKVM(k.GS), SS: segFromKVM(k.SS), TR: segFromKVM(k.TR), LDT: segFromKVM(k.LDT),
		GDT: accel.DTable{Base: k.GDT.Base, Limit: k.GDT.Limit},
		IDT: accel.DTable{Base: k.IDT.Base, Limit: k.IDT.Limit},
		CR0: k.CR0, CR2: k.CR2, CR3: k.CR3, CR4: k.CR4, CR8: k.CR8, EFER: k.EFER, APICBase: k.APICBase,
	}, nil
}

// SetSregs sets segment, descriptor-table and control registers. The
// interrupt bitmap is left empty (the LAPIC is in the kernel).
func (v *VCPU) SetSregs(s *accel.Sregs) error {
	k := kvmSregs{
		CS: segToKVM(s.CS), DS: segToKVM(s.DS), ES: segToKVM(s.ES), FS: segToKVM(s.FS),
		GS: segToKVM(s.GS), SS: segToKVM(s.SS), TR: segToKVM(s.TR), LDT: segToKVM(s.LDT),
		GDT: kvmDTable{Base: s.GDT.Base, Limit: s.GDT.Limit},
		IDT: kvmDTable{Base: s.IDT.Base, Limit: s.IDT.Limit},
		CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8, EFER: s.EFER, APICBase: s.APICBase,
	}
	return v.get(ioctlSetSregs, "KVM_SET_SREGS", unsafe.Pointer(&k))
}

// FPU returns the legacy x87/SSE state, read from the XSAVE legacy area
// (KVM_GET_FPU misreports MXCSR on this project's kernels and has no
// MXCSR_MASK; the XSAVE uABI shows architectural init values for
// components in their init state).
func (v *VCPU) FPU() (accel.FPU, error) {
	x, err := v.XSave()
	if err != nil {
		return accel.FPU{}, err
	}
	d := x.Data
	f := accel.FPU{
		FCW: le.Uint16(d[0:]), FSW: le.Uint16(d[2:]), FTW: d[4], FOP: le.Uint16(d[6:]),
		FIP: le.Uint64(d[8:]), FDP: le.Uint64(d[16:]), MXCSR: le.Uint32(d[24:]), MXCSRMask: le.Uint32(d[28:]),
	}
	for i := range f.ST {
		copy(f.ST[i][:], d[32+16*i:])
	}
	for i := range f.XMM {
		copy(f.XMM[i][:], d[160+16*i:])
	}
	return f, nil
}

// SetFPU sets the legacy x87/SSE state through the XSAVE legacy area,
// marking the x87 and SSE components as in use. MXCSRMask is read-only
// and ignored.
func (v *VCPU) SetFPU(f *accel.FPU) error {
	x, err := v.XSave()
	if err != nil {
		return err
	}
	d := x.Data
	le.PutUint16(d[0:], f.FCW)
	le.PutUint16(d[2:], f.FSW)
	d[4] = f.FTW
	le.PutUint16(d[6:], f.FOP)
	le.PutUint64(d[8:], f.FIP)
	le.PutUint64(d[16:], f.FDP)
	le.PutUint32(d[24:], f.MXCSR)
	for i := range f.ST {
		copy(d[32+16*i:32+16*i+16], f.ST[i][:])
	}
	for i := range f.XMM {
		copy(d[160+16*i:160+16*i+16], f.XMM[i][:])
	}
	le.PutUint64(d[512:], le.Uint64(d[512:])|3) // XSTATE_BV: x87, SSE
	return v.SetXSave(&x)
}

var le = binary.LittleEndian

// XSaveSize is the size in bytes of this VM's XSAVE area (4096, or what
// KVM_CAP_XSAVE2 reports when larger).
func (vm *VM) XSaveSize() int { return vm.xsaveSize }

// XSave returns the XSAVE area in the standard format (KVM's uABI
// format, KVM_GET_XSAVE2 when offered), XSaveSize bytes long.
func (v *VCPU) XSave() (accel.XSave, error) {
	buf := make([]uint64, v.vm.xsaveSize/8)
	req, name := uintptr(ioctlGetXSave), "KVM_GET_XSAVE"
	if v.vm.xsave2 {
		req, name = ioctlGetXSave2, "KVM_GET_XSAVE2"
	}
	if err := v.get(req, name, unsafe.Pointer(&buf[0])); err != nil {
		return accel.XSave{}, err
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), len(buf)*8)
	return accel.XSave{Data: append([]byte(nil), b...)}, nil
}

// SetXSave sets the XSAVE area (standard format, at most XSaveSize bytes;
// a shorter area is zero-extended).
func (v *VCPU) SetXSave(x *accel.XSave) error {
	if len(x.Data) > v.vm.xsaveSize {
		return fmt.Errorf("vCPU %d: KVM_SET_XSAVE: area of %d bytes, KVM takes at most %d", v.index, len(x.Data), v.vm.xsaveSize)
	}
	if len(x.Data) < 576 {
		return fmt.Errorf("vCPU %d: KVM_SET_XSAVE: area of %d bytes is shorter than the legacy area and header (576)", v.index, len(x.Data))
	}
	buf := make([]uint64, v.vm.xsaveSize/8)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), len(buf)*8), x.Data)
	return v.get(ioctlSetXSave, "KVM_SET_XSAVE", unsafe.Pointer(&buf[0]))
}

// XCRs returns the extended control registers.
func (v *VCPU) XCRs() ([]accel.XCR, error) {
	var k kvmXCRs
	if err := v.get(ioctlGetXCRs, "KVM_GET_XCRS", unsafe.Pointer(&k)); err != nil {
		return nil, err
	}
	n := int(k.NrXCRs)
	if n > len(k.XCRs) {
		n = len(k.XCRs)
	}
	out := make([]accel.XCR, n)
	for i := range out {
		out[i] = accel.XCR{Index: k.XCRs[i].XCR, Value: k.XCRs[i].Value}
	}
	return out, nil
}

// SetXCRs sets extended control registers.
func (v *VCPU) SetXCRs(x []accel.XCR) error {
	var k kvmXCRs
	if len(x) > len(k.XCRs) {
		return fmt.Errorf("vCPU %d: KVM_SET_XCRS: %d XCRs, at most %d", v.index, len(x), len(k.XCRs))
	}
	k.NrXCRs = uint32(len(x))
	for i, e := range x {
		k.XCRs[i] = kvmXCR{XCR: e.Index, Value: e.Value}
	}
	return v.get(ioctlSetXCRs, "KVM_SET_XCRS", unsafe.Pointer(&k))
}

func newMSRs(n int) ([]uint64, []kvmMSREntry) {
	buf := make([]uint64, 1+2*n)
	(*kvmMSRsHeader)(unsafe.Pointer(&buf[0])).NMSRs = uint32(n)
	ents := unsafe.Slice((*kvmMSREntry)(unsafe.Pointer(&buf[1])), n)
	return buf, ents
}

// MSRs reads the given MSRs; an MSR KVM cannot read is an error naming it.
func (v *VCPU) MSRs(indices []uint32) ([]accel.MSR, error) {
	if len(indices) == 0 {
		return nil, nil
	}
	buf, ents := newMSRs(len(indices))
	for i, idx := range indices {
		ents[i].Index = idx
	}
	if v.fd < 0 {
		return nil, fmt.Errorf("vCPU %d: KVM_GET_MSRS: %w", v.index, errClosed)
	}
	n, err := ioctlPtr(v.fd, ioctlGetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return nil, fmt.Errorf("vCPU %d: KVM_GET_MSRS: %w", v.index, err)
	}
	if int(n) < len(indices) {
		return nil, fmt.Errorf("vCPU %d: KVM_GET_MSRS: cannot read MSR %#x", v.index, indices[n])
	}
	out := make([]accel.MSR, len(indices))
	for i, e := range ents {
		out[i] = accel.MSR{Index: e.Index, Value: e.Data}
	}
	return out, nil
}

// SetMSRs writes MSRs; an MSR KVM refuses is an error naming it.
func (v *VCPU) SetMSRs(m []accel.MSR) error {
	if len(m) == 0 {
		return nil
	}
	buf, ents := newMSRs(len(m))
	for i, e := range m {
		ents[i] = kvmMSREntry{Index: e.Index, Data: e.Value}
	}
	if v.fd < 0 {
		return fmt.Errorf("vCPU %d: KVM_SET_MSRS: %w", v.index, errClosed)
	}
	n, err := ioctlPtr(v.fd, ioctlSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("vCPU %d: KVM_SET_MSRS: %w", v.index, err)
	}
	if int(n) < len(m) {
		return fmt.Errorf("vCPU %d: KVM_SET_MSRS: KVM refused MSR %#x = %#x", v.index, m[n].Index, m[n].Value)
	}
	return nil
}

// unlistedMSRs are architectural MSRs KVM saves and restores through
// KVM_GET/SET_MSRS but leaves out of KVM_GET_MSR_INDEX_LIST (QEMU adds them
// by hand too): the MTRRs and TSC_AUX.
var unlistedMSRs = func() []uint32 {
	l := []uint32{0x2ff, 0x250, 0x258, 0x259, 0xc0000103}
	for i := uint32(0x200); i < 0x210; i++ { // variable-range MTRR base/mask pairs
		l = append(l, i)
	}
	for i := uint32(0x268); i < 0x270; i++ { // 4 KiB fixed-range MTRRs
		l = append(l, i)
	}
	return l
}()

// MSRIndexList is the MSRs this vCPU saves and restores:
// KVM_GET_MSR_INDEX_LIST plus the unlisted architectural MSRs this vCPU
// can actually read (each is tried once).
func (v *VCPU) MSRIndexList() ([]uint32, error) {
	v.msrMu.Lock()
	defer v.msrMu.Unlock()
	if v.msrList == nil {
		l, err := v.probeMSRIndexList()
		if err != nil {
			return nil, err
		}
		v.msrList = l
	}
	return append([]uint32(nil), v.msrList...), nil
}

// probeMSRIndexList builds MSRIndexList's answer (once per vCPU: the
// probing of unlisted MSRs costs an ioctl each, on the snapshot and
// migration pause path).
func (v *VCPU) probeMSRIndexList() ([]uint32, error) {
	list, err := msrList(v.vm.acc.fd, ioctlGetMSRIndexList, "KVM_GET_MSR_INDEX_LIST")
	if err != nil {
		return nil, err
	}
	have := make(map[uint32]bool, len(list))
	for _, i := range list {
		have[i] = true
	}
	for _, i := range unlistedMSRs {
		if have[i] {
			continue
		}
		if _, err := v.MSRs([]uint32{i}); err == nil {
			list = append(list, i)
		}
	}
	if v.synic.Load() {
		list = synicMSRList(list)
	}
	return list, nil
}

// LAPIC returns the in-kernel LAPIC's register page.
func (v *VCPU) LAPIC() (accel.LAPIC, error) {
	var k kvmLAPICState
	if err := v.get(ioctlGetLAPIC, "KVM_GET_LAPIC", unsafe.Pointer(&k)); err != nil {
		return accel.LAPIC{}, err
	}
	return accel.LAPIC{Regs: k.Regs}, nil
}

// SetLAPIC sets the in-kernel LAPIC's register page.
func (v *VCPU) SetLAPIC(l *accel.LAPIC) error {
	k := kvmLAPICState{Regs: l.Regs}
	return v.get(ioctlSetLAPIC, "KVM_SET_LAPIC", unsafe.Pointer(&k))
}

// Events returns pending/injected exceptions, interrupts and NMIs. Without
// KVM_CAP_EXCEPTION_PAYLOAD (govmm does not enable it) KVM reports a
// pending exception as injected. KVM never reports the SIPI vector (it is
// always 0 here; SetEvents does set it).
func (v *VCPU) Events() (accel.Events, error) {
	var k kvmVCPUEvents
	if err := v.get(ioctlGetVCPUEvents, "KVM_GET_VCPU_EVENTS", unsafe.Pointer(&k)); err != nil {
		return accel.Events{}, err
	}
	var e accel.Events
	e.Exception.Injected = k.Exception.Injected != 0
	e.Exception.Pending = k.Exception.Pending != 0
	e.Exception.Nr = k.Exception.Nr
	e.Exception.HasErrorCode = k.Exception.HasErrorCode != 0
	e.Exception.ErrorCode = k.Exception.ErrorCode
	e.Exception.HasPayload = k.ExceptionHasPayload != 0
	e.Exception.Payload = k.ExceptionPayload
	e.Interrupt.Injected = k.Interrupt.Injected != 0
	e.Interrupt.Nr = k.Interrupt.Nr
	e.Interrupt.Soft = k.Interrupt.Soft != 0
	e.Interrupt.Shadow = k.Interrupt.Shadow
	e.NMI.Injected = k.NMI.Injected != 0
	e.NMI.Pending = k.NMI.Pending != 0
	e.NMI.Masked = k.NMI.Masked != 0
	e.SIPIVector = k.SIPIVector
	return e, nil
}

// SetEvents sets pending/injected events. A pending exception is set as
// injected (KVM's form without KVM_CAP_EXCEPTION_PAYLOAD); exception
// payloads (#PF CR2, #DB DR6) are not passed to KVM: restore CR2/DR6
// through Sregs/DebugRegs.
func (v *VCPU) SetEvents(e *accel.Events) error {
	var k kvmVCPUEvents
	k.Exception.Injected = b2u(e.Exception.Injected || e.Exception.Pending)
	k.Exception.Nr = e.Exception.Nr
	k.Exception.HasErrorCode = b2u(e.Exception.HasErrorCode)
	k.Exception.ErrorCode = e.Exception.ErrorCode
	k.Interrupt.Injected = b2u(e.Interrupt.Injected)
	k.Interrupt.Nr = e.Interrupt.Nr
	k.Interrupt.Soft = b2u(e.Interrupt.Soft)
	k.Interrupt.Shadow = e.Interrupt.Shadow
	k.NMI.Injected = b2u(e.NMI.Injected)
	k.NMI.Pending = b2u(e.NMI.Pending)
	k.NMI.Masked = b2u(e.NMI.Masked)
	k.SIPIVector = e.SIPIVector
	k.Flags = vcpuEventValidNMIPending | vcpuEventValidSIPIVector | vcpuEventValidShadow
	return v.get(ioctlSetVCPUEvents, "KVM_SET_VCPU_EVENTS", unsafe.Pointer(&k))
}

// MPState returns the multiprocessing state (the KVM values are the
// accel.MPState values).
func (v *VCPU) MPState() (accel.MPState, error) {
	var k kvmMPState
	if err := v.get(ioctlGetMPState, "KVM_GET_MP_STATE", unsafe.Pointer(&k)); err != nil {
		return 0, err
	}
	if k.MPState > uint32(accel.MPSIPIReceived) {
		return 0, fmt.Errorf("vCPU %d: KVM_GET_MP_STATE: state %d has no neutral form", v.index, k.MPState)
	}
	return accel.MPState(k.MPState), nil
}

// SetMPState sets the multiprocessing state.
func (v *VCPU) SetMPState(s accel.MPState) error {
	if s < accel.MPRunnable || s > accel.MPSIPIReceived {
		return fmt.Errorf("vCPU %d: KVM_SET_MP_STATE: invalid state %d", v.index, int(s))
	}
	k := kvmMPState{MPState: uint32(s)}
	return v.get(ioctlSetMPState, "KVM_SET_MP_STATE", unsafe.Pointer(&k))
}

// DebugRegs returns DR0-3, DR6 and DR7.
func (v *VCPU) DebugRegs() (accel.DebugRegs, error) {
	var k kvmDebugRegs
	if err := v.get(ioctlGetDebugRegs, "KVM_GET_DEBUGREGS", unsafe.Pointer(&k)); err != nil {
		return accel.DebugRegs{}, err
	}
	return accel.DebugRegs{DR: k.DB, DR6: k.DR6, DR7: k.DR7}, nil
}

// SetDebugRegs sets DR0-3, DR6 and DR7.
func (v *VCPU) SetDebugRegs(d *accel.DebugRegs) error {
	k := kvmDebugRegs{DB: d.DR, DR6: d.DR6, DR7: d.DR7}
	return v.get(ioctlSetDebugRegs, "KVM_SET_DEBUGREGS", unsafe.Pointer(&k))
}

// TSCKHz is the vCPU's TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (v *VCPU) TSCKHz() (uint32, error) {
	if v.fd < 0 {
		return 0, fmt.Errorf("vCPU %d: KVM_GET_TSC_KHZ: %w", v.index, errClosed)
	}
	r, err := ioctl(v.fd, ioctlGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("vCPU %d: KVM_GET_TSC_KHZ: %w", v.index, err)
	}
	return uint32(r), nil
}
