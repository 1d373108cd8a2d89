package mshvsim

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// Hypercall codes the simulator knows (mshv-abi.md §2.1).
const (
	hcGetProp       = 0x0044
	hcSetProp       = 0x0045
	hcInstallInt    = 0x004d
	hcGetRegs       = 0x0050
	hcSetRegs       = 0x0051
	hcTranslate     = 0x0052
	hcClearVirtInt  = 0x0056
	hcScrub         = 0x008d
	hcRegIntResult  = 0x0091
	hcAssertVirtInt = 0x0094
	hcSignalEvent   = 0x00c0
	hcPostMessage   = 0x00c1
	hcGPAPages      = 0x00c9
	hcGetCPUID      = 0x00f4
	hcGetPropEx     = 0x0101
)

// mainlineAllowList is mshv_passthru_hvcalls in mainline
// drivers/hv/mshv_root_main.c.
var mainlineAllowList = map[uint16]bool{hcGetProp: true, hcSetProp: true, hcInstallInt: true, hcGetRegs: true, hcSetRegs: true,
	hcTranslate: true, hcClearVirtInt: true, hcRegIntResult: true, hcAssertVirtInt: true,
	hcSignalEvent: true, hcPostMessage: true, hcGPAPages: true, hcGetCPUID: true}

// repCodes are the rep hypercalls among them; the others take no rep
// count.
var repCodes = map[uint16]bool{hcGetRegs: true, hcSetRegs: true, hcGPAPages: true, hcGetCPUID: true}

// allowed reports whether the pass-through list of the simulated kernel
// has code.
func (s *Sim) allowed(code uint16) bool {
	switch code {
	case hcGetPropEx:
		return s.opts.PropertyEx
	case hcScrub:
		return s.opts.Scrub
	}
	return mainlineAllowList[code]
}

// HV_STATUS values.
const (
	stSuccess            = 0
	stInvalidCode        = 2
	stInvalidInput       = 3
	stInvalidAlignment   = 4
	stInvalidParameter   = 5
	stAccessDenied       = 6
	stInvalidPartState   = 7
	stOperationDenied    = 8
	stUnknownProperty    = 9
	stOutOfRange         = 0xA
	stInsufficientMem    = 0xB
	stInvalidPartitionID = 0xD
	stInvalidVPIndex     = 0xE
	stNotFound           = 0x10
	stInvalidPortID      = 0x11
	stInvalidConnID      = 0x12
	stInvalidLPIndex     = 0x41
	stInvalidRegValue    = 0x50
)

// statusErrno is the errno MSHV_ROOT_HVCALL returns for a hypervisor
// status, as upstream hv_result_to_errno (drivers/hv/hv_common.c) maps it
// through hv_status_infos[]: the invalid-code/input/parameter/ID statuses
// are EINVAL, every other failure (access or operation denied, invalid
// partition state, unknown property, value out of range, ...) is EIO. For
// INSUFFICIENT_MEMORY the pass-through deposits a page and returns EAGAIN
// (mshv_ioctl_passthru_hvcall).
func statusErrno(st uint16) error {
	switch st {
	case stSuccess:
		return nil
	case stInsufficientMem:
		return unix.EAGAIN
	case stInvalidCode, stInvalidInput, stInvalidParameter, stInvalidPartitionID, stInvalidVPIndex,
		stInvalidPortID, stInvalidConnID, stInvalidLPIndex, stInvalidRegValue:
		return unix.EINVAL
	}
	return unix.EIO
}

// Partition property codes.
const (
	propSynthFeatures   = 0x00010001
	propTimeFreeze      = 0x00030003
	propReferenceTime   = 0x00030005
	propProcsPerSocket  = 0x00050003
	propGPATracking     = 0x00050005
	propUnimplMSRAction = 0x00050017
	propXSaveFeatures   = 0x00060002
	propPhysAddrWidth   = 0x00060006
	propXSaveStates     = 0x00060007
	propMaxXSaveSize    = 0x00060008
	propProcFeatures0   = 0x0006000a
	propProcFeatures1   = 0x0006000b
	propVMMCaps         = 0x00090007
	propAssignableSynth = 0x00090009
)

// hvcall serves MSHV_ROOT_HVCALL on a partition fd (v == nil) or a VP fd:
// mshv_root_hvcall is code@0 reps@2 in_sz@4 out_sz@6 status@8 rsvd[6]@10
// in_ptr@16 out_ptr@24.
func (s *Sim) hvcall(p *partition, v *vp, a []byte) error {
	code := binary.LittleEndian.Uint16(a[hcCode:])
	reps := binary.LittleEndian.Uint16(a[hcReps:])
	inSz := int(binary.LittleEndian.Uint16(a[hcInSz:]))
	outSz := int(binary.LittleEndian.Uint16(a[hcOutSz:]))
	inPtr := binary.LittleEndian.Uint64(a[hcInPtr:])
	outPtr := binary.LittleEndian.Uint64(a[hcOutPtr:])
	if binary.LittleEndian.Uint16(a[hcStatus:]) != 0 {
		return unix.EINVAL
	}
	for _, b := range a[hcRsvd:hcInPtr] {
		if b != 0 {
			return unix.EINVAL
		}
	}
	if !s.allowed(code) || inSz < 8 || inSz > 4096 || outSz > 4096 || inPtr == 0 || (outPtr != 0 && outSz == 0) || (outPtr == 0 && outSz != 0) {
		return unix.EINVAL
	}
	if code == hcSetProp && v != nil {
		return unix.EINVAL // asynchronous calls only on the partition fd
	}
	if n := s.opts.EAGAINEvery; n > 0 && s.hvcalls.Add(1)%uint64(n) == 0 {
		// As if the hypervisor said INSUFFICIENT_MEMORY and the kernel
		// deposited a page: nothing happened, retry.
		binary.LittleEndian.PutUint16(a[hcStatus:], stInsufficientMem)
		binary.LittleEndian.PutUint16(a[hcReps:], 0)
		return unix.EAGAIN
	}
	in := append([]byte(nil), user(inPtr, inSz)...)
	binary.LittleEndian.PutUint64(in[0:], p.id)
	out := make([]byte, outSz)
	st, done := p.dispatch(v, code, reps, in, out)
	if reps != 0 {
		binary.LittleEndian.PutUint16(a[hcReps:], done)
	}
	binary.LittleEndian.PutUint16(a[hcStatus:], st)
	copy(user(outPtr, outSz), out)
	return statusErrno(st)
}

// selfHvcall serves MSHV_ROOT_HVCALL on /dev/mshv: property reads of the
// root partition only (Options.SelfHvcall, a later kernel addition;
// GET_PARTITION_PROPERTY_EX only with Options.PropertyEx).
func (s *Sim) selfHvcall(a []byte) error {
	code := binary.LittleEndian.Uint16(a[0:])
	inSz := int(binary.LittleEndian.Uint16(a[4:]))
	outSz := int(binary.LittleEndian.Uint16(a[6:]))
	inPtr, outPtr := binary.LittleEndian.Uint64(a[16:]), binary.LittleEndian.Uint64(a[24:])
	if (code != hcGetProp && (code != hcGetPropEx || !s.opts.PropertyEx)) || inSz < 16 || inSz > 4096 || outSz > 4096 || inPtr == 0 {
		return unix.EINVAL
	}
	in := user(inPtr, inSz)
	out := make([]byte, outSz)
	prop := binary.LittleEndian.Uint32(in[8:])
	st := uint16(stSuccess)
	put := func(off int, v uint64) {
		if off+8 <= len(out) {
			binary.LittleEndian.PutUint64(out[off:], v)
		} else {
			st = stInvalidParameter
		}
	}
	switch {
	case code == hcGetProp && prop == propProcFeatures0:
		put(0, s.hostOffered()[0])
	case code == hcGetProp && prop == propProcFeatures1:
		put(0, s.hostOffered()[1])
	case code == hcGetProp && prop == propXSaveFeatures:
		put(0, s.hostOffered()[2])
	case code == hcGetPropEx && prop == propAssignableSynth:
		if len(out) >= 2 {
			binary.LittleEndian.PutUint16(out, 1)
		}
		put(8, ^uint64(0))
	case code == hcGetPropEx && prop == propVMMCaps:
		if len(out) >= 2 {
			binary.LittleEndian.PutUint16(out, 1)
		}
		put(8, 0)
	default:
		st = stUnknownProperty
	}
	binary.LittleEndian.PutUint16(a[8:], st)
	copy(user(outPtr, outSz), out)
	return statusErrno(st)
}

func (p *partition) vpByIndex(i uint32) *vp {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vps[i]
}

// target finds the VP a hypercall names and locks it unless the call came
// through that VP's own fd (whose ioctl already holds the lock, as the
// kernel's per-VP mutex does). unlock is never nil.
func (p *partition) target(caller *vp, idx uint32) (v *vp, unlock func()) {
	v = p.vpByIndex(idx)
	if v == nil || v == caller {
		return v, func() {}
	}
	v.mu.Lock()
	return v, v.mu.Unlock
}

// dispatch executes one allowed hypercall. It returns the HV status and
// the reps completed.
func (p *partition) dispatch(caller *vp, code, reps uint16, in, out []byte) (uint16, uint16) {
	need := func(n int) bool { return len(in) >= n }
	if reps != 0 && !repCodes[code] {
		// A rep count on a simple hypercall: the hypervisor refuses the
		// input (the kernel passes reps through, mshv_ioctl_passthru_hvcall).
		return stInvalidInput, 0
	}
	switch code {
	case hcGetProp:
		if !need(16) || len(out) < 8 {
			return stInvalidInput, 0
		}
		v, st := p.getProp(binary.LittleEndian.Uint32(in[ppCode:]))
		binary.LittleEndian.PutUint64(out, v)
		return st, 0
	case hcSetProp:
		if !need(24) {
			return stInvalidInput, 0
		}
		return p.setProp(binary.LittleEndian.Uint32(in[ppCode:]), binary.LittleEndian.Uint64(in[ppValue:])), 0
	case hcGetPropEx:
		return stUnknownProperty, 0
	case hcGetRegs, hcSetRegs:
		if !need(vrList) || in[vrVTL] != 0 || reps == 0 {
			return stInvalidInput, 0
		}
		v, unlock := p.target(caller, binary.LittleEndian.Uint32(in[vrVPIndex:]))
		defer unlock()
		if v == nil {
			return stInvalidVPIndex, 0
		}
		if code == hcGetRegs {
			if len(in) < vrList+4*int(reps) || len(out) < 16*int(reps) {
				return stInvalidInput, 0
			}
			return v.getRegs(in[vrList:vrList+4*int(reps)], out)
		}
		if len(in) < vrList+raSize*int(reps) {
			return stInvalidInput, 0
		}
		return v.setRegs(in[vrList : vrList+raSize*int(reps)])
	case hcTranslate:
		if !need(32) || len(out) < 16 {
			return stInvalidInput, 0
		}
		v, unlock := p.target(caller, binary.LittleEndian.Uint32(in[tvVPIndex:]))
		defer unlock()
		if v == nil {
			return stInvalidVPIndex, 0
		}
		res, gpa := v.translate(binary.LittleEndian.Uint64(in[tvGVAPage:])<<12, binary.LittleEndian.Uint64(in[tvFlags:]))
		binary.LittleEndian.PutUint32(out[tvOutResult:], res)
		binary.LittleEndian.PutUint64(out[tvOutGPAPage:], gpa>>12)
		return stSuccess, 0
	case hcAssertVirtInt:
		if !need(32) {
			return stInvalidInput, 0
		}
		return p.assertInterrupt(binary.LittleEndian.Uint64(in[aiControl:]), binary.LittleEndian.Uint64(in[aiDest:]), binary.LittleEndian.Uint32(in[aiVector:]), in[aiVTL]), 0
	case hcClearVirtInt:
		// hv_input_clear_virtual_interrupt: the partition ID only. It
		// lowers the ExtINT line ASSERT_VIRTUAL_INTERRUPT raised.
		if !need(8) {
			return stInvalidInput, 0
		}
		p.clearExtINT()
		return stSuccess, 0
	case hcRegIntResult:
		if !need(riSize) {
			return stInvalidInput, 0
		}
		v, unlock := p.target(caller, binary.LittleEndian.Uint32(in[riVPIndex:]))
		defer unlock()
		if v == nil {
			return stInvalidVPIndex, 0
		}
		return v.registerInterceptResult(binary.LittleEndian.Uint32(in[riType:]), in[riParams:riSize]), 0
	case hcGetCPUID:
		if !need(gcLeaves) || reps == 0 || len(in) < gcLeaves+gcLeafSize*int(reps) || len(out) < 16*int(reps) {
			return stInvalidInput, 0
		}
		v, unlock := p.target(caller, binary.LittleEndian.Uint32(in[gcVPIndex:]))
		defer unlock()
		if v == nil {
			return stInvalidVPIndex, 0
		}
		apply := binary.LittleEndian.Uint32(in[gcFlags:])&2 != 0
		tab := v.effectiveCPUID(apply)
		for i := 0; i < int(reps); i++ {
			q := in[gcLeaves+gcLeafSize*i:]
			r := lookupCPUID(tab, binary.LittleEndian.Uint32(q[gcLeafEAX:]), binary.LittleEndian.Uint32(q[gcLeafECX:]))
			for j, x := range r {
				binary.LittleEndian.PutUint32(out[16*i+4*j:], x)
			}
		}
		return stSuccess, reps
	case hcGPAPages:
		if !need(24) || reps == 0 || len(out) < int(reps) {
			return stInvalidInput, 0
		}
		flags := binary.LittleEndian.Uint64(in[8:])
		p.mu.Lock()
		st, err := p.pageStates(binary.LittleEndian.Uint64(in[16:]), uint64(reps), uint8(flags>>1&1), 0)
		p.mu.Unlock()
		if err != nil {
			return stInvalidParameter, 0
		}
		copy(out, st)
		return stSuccess, reps
	case hcInstallInt:
		// Port I/O and unmapped/protected GPA intercepts are delivered by
		// default; the simulator delivers nothing else.
		if !need(24) {
			return stInvalidInput, 0
		}
		if t := binary.LittleEndian.Uint32(in[12:]); t == 0 || t == 5 {
			return stSuccess, 0
		}
		return stOperationDenied, 0
	case hcSignalEvent, hcPostMessage, hcScrub:
		// No SynIC and no partition scrubbing in the simulator.
		return stOperationDenied, 0
	}
	return stInvalidInput, 0
}

func (p *partition) getProp(code uint32) (uint64, uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch code {
	case propReferenceTime:
		ns, err := p.kvm.Clock()
		if err != nil {
			return 0, stOperationDenied
		}
		return ns / 100, stSuccess
	case propGPATracking:
		if p.tracking {
			return 1, stSuccess
		}
		return 0, stSuccess
	case propXSaveStates:
		return (p.layout().user | p.layout().super) &^ 3, stSuccess
	case propMaxXSaveSize:
		return uint64(p.layout().compactSize), stSuccess
	case propXSaveFeatures, propProcFeatures0, propProcFeatures1:
		return 0, stSuccess
	case propPhysAddrWidth:
		return uint64(lookupCPUID(p.sim.baseCPUID(), 0x80000008, 0)[0] & 0xff), stSuccess
	}
	if v, ok := p.props[code]; ok {
		return v, stSuccess
	}
	return 0, stUnknownProperty
}

func (p *partition) setProp(code uint32, v uint64) uint16 {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch code {
	case propSynthFeatures:
		if p.initialized {
			return stInvalidPartState // an early property
		}
	case propTimeFreeze:
		var err error
		switch v {
		case 0:
			err = p.kvm.Resume()
		case 1:
			err = p.kvm.Pause()
		default:
			return stOutOfRange
		}
		if err != nil {
			return stOperationDenied
		}
	case propReferenceTime:
		if err := p.kvm.SetClock(v * 100); err != nil {
			return stOperationDenied
		}
		return stSuccess
	case propUnimplMSRAction:
		if v > 1 {
			return stOutOfRange
		}
	case propGPATracking:
		switch v {
		case 1:
			if !p.tracking {
				if err := p.kvm.EnableDirtyLog(); err != nil {
					return stOperationDenied
				}
				p.tracking = true
			}
		case 0:
			if p.tracking {
				if err := p.pullDirty(); err != nil {
					return stOperationDenied
				}
				// The hypervisor requires every dirty bit set first.
				for _, st := range p.dirty {
					for _, b := range st {
						if b&2 == 0 {
							return stInvalidPartState
						}
					}
				}
				if err := p.kvm.DisableDirtyLog(); err != nil {
					return stOperationDenied
				}
				p.tracking = false
			}
		default:
			return stOutOfRange
		}
	case propProcsPerSocket:
	default:
		return stUnknownProperty
	}
	p.props[code] = v
	return stSuccess
}

// assertInterrupt serves ASSERT_VIRTUAL_INTERRUPT through KVM's LAPIC.
func (p *partition) assertInterrupt(control, dest uint64, vector uint32, vtl uint8) uint16 {
	if vtl != 0 || control>>34 != 0 {
		return stInvalidParameter
	}
	typ := uint32(control)
	level, logical := control>>32&1 != 0, control>>33&1 != 0
	switch typ {
	case 0, 1, 4, 5, 6: // fixed, lowest priority, NMI, INIT, SIPI
		if dest > 0xff {
			return stInvalidParameter
		}
		if err := p.kvm.SignalMSI(canonicalMSI(vector&0xff, uint32(dest), typ, level, logical)); err != nil {
			return stInvalidParameter
		}
		return stSuccess
	case 7: // ExtINT: delivered through LINT0 of the target
		// An ExtINT is a line, not a message: it stays asserted, and the
		// target takes its vector at every entry where it can, until
		// CLEAR_VIRTUAL_INTERRUPT lowers it. That is why upstream's
		// resampler clears it on acknowledge (drivers/hv/mshv_eventfd.c,
		// mshv_irqfd_resampler_ack: hv_should_clear_interrupt is true
		// for HV_X64_INTERRUPT_TYPE_EXTINT only), and never an
		// edge-triggered fixed interrupt.
		if logical {
			return stInvalidParameter
		}
		v := p.vpByIndex(uint32(dest))
		if v == nil {
			return stInvalidVPIndex
		}
		v.pendingExt.Store(int32(vector & 0xff))
		v.k.Wake()
		return stSuccess
	}
	return stInvalidParameter
}

// clearExtINT serves CLEAR_VIRTUAL_INTERRUPT: the partition's ExtINT line
// goes down on every VP.
func (p *partition) clearExtINT() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range p.vps {
		if v != nil {
			v.pendingExt.Store(-1)
		}
	}
}

// registerInterceptResult stores a CPUID override (X64_CPUID = 2); MSR
// results (1) are accepted and have no effect (no MSR intercepts).
func (v *vp) registerInterceptResult(typ uint32, par []byte) uint16 {
	switch typ {
	case 1:
		return stSuccess
	case 2:
	default:
		return stInvalidParameter
	}
	o := cpuidOverride{fn: binary.LittleEndian.Uint32(par[crEAX:]), idx: binary.LittleEndian.Uint32(par[crECX:]),
		subleaf: par[crSubleaf] != 0, always: par[crAlways] != 0}
	for i := 0; i < 4; i++ {
		o.val[i] = binary.LittleEndian.Uint32(par[crResult+8*i:])
		o.mask[i] = binary.LittleEndian.Uint32(par[crResult+4+8*i:])
	}
	key := [2]uint32{o.fn, o.idx}
	if !o.subleaf {
		key[1] = ^uint32(0)
	}
	v.cpuid[key] = o
	v.cpuidDirty = true
	return stSuccess
}

type cpuidOverride struct {
	fn, idx         uint32
	subleaf, always bool
	val, mask       [4]uint32 // eax ebx ecx edx
}

func lookupCPUID(tab []accel.CPUIDEntry, fn, idx uint32) [4]uint32 {
	for _, e := range tab {
		if e.Function == fn && (e.Flags&accel.CPUIDFlagSignificantIndex == 0 || e.Index == idx) {
			return [4]uint32{e.EAX, e.EBX, e.ECX, e.EDX}
		}
	}
	return [4]uint32{}
}
