package mshvsim

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/kvm"
	"govmm/cpu"
)

type vp struct {
	p   *partition
	idx uint32
	fd  int
	k   *kvm.VCPU

	mu         sync.Mutex
	regPage    [4096]byte
	msgPage    [4096]byte
	cpuid      map[[2]uint32]cpuidOverride
	cpuidDirty bool
	ran        bool
	hvregs     map[uint32][2]uint64
	blobs      map[uint32][]byte // SIMP, SIEFP, synthetic timers (opaque)
	pendingExt atomic.Int32
	closed     bool
	writeHints [64]writeHint // findWriteStart's, used by the vp's run loop alone
}

func (v *vp) close() {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return
	}
	v.closed = true
	v.mu.Unlock()
	v.k.Close()
	v.p.vpClosed(v.idx)
}

func (v *vp) ioctl(req uint32, a []byte) (int, error) {
	switch req {
	case reqRunVP:
		return 0, v.run(a)
	case reqGetVPState, reqSetVPState:
		return 0, v.vpState(req == reqGetVPState, a)
	case reqRootHvcall:
		v.mu.Lock()
		defer v.mu.Unlock()
		return 0, v.p.sim.hvcall(v.p, v, a)
	}
	return -1, unix.ENOTTY
}

// --- CPUID -----------------------------------------------------------------

// baseCPUID is the CPUID the "hypervisor" offers: KVM's supported CPUID,
// read when the simulator starts.
func (s *Sim) baseCPUID() []accel.CPUIDEntry { return s.base }

// cpuid is what the hypervisor presents to this partition's guests before
// any override: the base CPUID less the features the partition's banks
// disable, and Hyper-V's leaves for its synthetic processor features.
func (p *partition) cpuid() []accel.CPUIDEntry {
	p.mu.Lock()
	synth := p.props[propSynthFeatures]
	p.mu.Unlock()
	return p.cpuidFor(synth)
}

func (p *partition) cpuidFor(synth uint64) []accel.CPUIDEntry {
	return enforceBanks(append(slices.Clip(p.sim.baseCPUID()), hypervLeaves(synth, p.sim.synic)...), p.disabled)
}

// effectiveCPUIDLocked is the CPUID of a new VP (no overrides yet), for a
// caller that holds p.mu.
func (v *vp) effectiveCPUIDLocked() []accel.CPUIDEntry {
	return cpu.ForVCPU(v.p.cpuidFor(v.p.props[propSynthFeatures]), int(v.idx), 1)
}

// effectiveCPUID is what the VP's guest sees: the hypervisor's values
// (for this VP's APIC ID) with the registered overrides applied when apply
// is set. An override cannot give back a feature the partition's banks
// disable: the hypervisor refuses it whatever CPUID says, so the VP does
// not report it either, and KVM (which gets this table) refuses it too.
func (v *vp) effectiveCPUID(apply bool) []accel.CPUIDEntry {
	tab := cpu.ForVCPU(v.p.cpuid(), int(v.idx), 1)
	if !apply {
		return tab
	}
	out := make([]accel.CPUIDEntry, 0, len(tab)+len(v.cpuid))
	used := map[[2]uint32]bool{}
	mix := func(e *accel.CPUIDEntry, o cpuidOverride) {
		r := []*uint32{&e.EAX, &e.EBX, &e.ECX, &e.EDX}
		for i, p := range r {
			*p = *p&^o.mask[i] | o.val[i]&o.mask[i]
		}
	}
	for _, e := range tab {
		if o, ok := v.cpuid[[2]uint32{e.Function, e.Index}]; ok && o.subleaf {
			mix(&e, o)
			used[[2]uint32{e.Function, e.Index}] = true
		} else if o, ok := v.cpuid[[2]uint32{e.Function, ^uint32(0)}]; ok {
			mix(&e, o)
			used[[2]uint32{e.Function, ^uint32(0)}] = true
		}
		out = append(out, e)
	}
	for k, o := range v.cpuid {
		if used[k] {
			continue
		}
		e := accel.CPUIDEntry{Function: o.fn, Index: o.idx}
		if o.subleaf {
			e.Flags = accel.CPUIDFlagSignificantIndex
		}
		mix(&e, o)
		out = append(out, e)
	}
	return enforceBanks(out, v.p.disabled)
}

// --- XSAVE layout (from KVM's CPUID leaf 0xD) --------------------------------

type xlayout struct {
	user uint64 // user components KVM transfers (x87, SSE, ...)
	// super are the supervisor components the partition transfers: CET_U
	// and CET_S where the host offers them (CPUID 0xD.1 ECX, IA32_XSS).
	// The hypervisor's image holds every component of the partition's
	// XSAVE_STATES, supervisor ones included (the kernel asks for exactly
	// those: drivers/hv/mshv_root_main.c mshv_vp_ioctl_get_set_state;
	// hv_x64_xsave_xfem_register in include/hyperv/hvhdk.h has pasid,
	// cet_u and cet_s). KVM's XSAVE has no supervisor state, so the
	// simulator fills them from KVM's CET MSRs (cetState). PASID, which no
	// KVM register holds, is never transferred.
	super       uint64
	size, off   [64]uint32
	align       [64]bool
	compactSize int
}

// Supervisor XSAVE components the simulator can back.
const (
	xcompCETU = 11 // IA32_U_CET @0, IA32_PL3_SSP @8
	xcompCETS = 12 // IA32_PL0_SSP @0, IA32_PL1_SSP @8, IA32_PL2_SSP @16

	superBacked = 1<<xcompCETU | 1<<xcompCETS
)

// cetState holds the CET MSRs behind CET_U and CET_S, in cetMSRs order.
type cetState [5]uint64

// cetMSRs are IA32_U_CET, IA32_PL3_SSP (CET_U) and IA32_PL0-2_SSP (CET_S).
var cetMSRs = [5]uint32{0x6A0, 0x6A7, 0x6A4, 0x6A5, 0x6A6}

// cetWords are the cetState entries of a component, in the component's
// layout (Intel SDM vol. 1, 13.5.6 and 13.5.7).
func cetWords(comp int) []int {
	if comp == xcompCETU {
		return []int{0, 1}
	}
	return []int{2, 3, 4}
}

// cet reads the CET MSRs of the supervisor components in super from the
// KVM vCPU. KVM refuses them for a vCPU whose CPUID lacks shadow stacks
// (or IBT, for U_CET), where the hypervisor's partition still transfers
// the components in their init state: such an MSR reads as 0.
func (v *vp) cet(super uint64) cetState {
	var cet cetState
	for _, comp := range []int{xcompCETU, xcompCETS} {
		if super&(1<<comp) == 0 {
			continue
		}
		for _, w := range cetWords(comp) {
			if r, err := v.k.MSRs([]uint32{cetMSRs[w]}); err == nil && len(r) == 1 {
				cet[w] = r[0].Value
			}
		}
	}
	return cet
}

// setCET writes the CET MSRs of the supervisor components in super. An
// MSR KVM refuses for this vCPU (see cet) may only be set to 0.
func (v *vp) setCET(super uint64, cet cetState) error {
	for _, comp := range []int{xcompCETU, xcompCETS} {
		if super&(1<<comp) == 0 {
			continue
		}
		for _, w := range cetWords(comp) {
			err := v.k.SetMSRs([]accel.MSR{{Index: cetMSRs[w], Value: cet[w]}})
			if err != nil && cet[w] != 0 {
				return fmt.Errorf("XSAVE component %d: MSR %#x = %#x: %w", comp, cetMSRs[w], cet[w], err)
			}
		}
	}
	return nil
}

// layout is the partition's XSAVE layout: the host's less the components
// of the XSAVE features its banks disable (an AVX-less partition neither
// reports nor transfers the AVX component).
func (p *partition) layout() *xlayout { return &p.xl }

// newLayout derives the XSAVE layout from CPUID leaf 0xD.
func newLayout(tab []accel.CPUIDEntry) xlayout {
	var l xlayout
	d0 := lookupCPUID(tab, 0xd, 0)
	l.user = (uint64(d0[0]) | uint64(d0[3])<<32) | 3
	// Supervisor components need XSAVES (0xD.1 EAX bit 3, the XSAVE
	// bank's xsave_supervisor) and, for CET's, shadow stacks or IBT (leaf
	// 7 ECX bit 7, EDX bit 20: cet_ss, cet_ibt in bank 1): a partition
	// whose banks disable them has none.
	d1, d7 := lookupCPUID(tab, 0xd, 1), lookupCPUID(tab, 7, 0)
	if d1[0]&(1<<3) != 0 && (d7[2]&(1<<7) != 0 || d7[3]&(1<<20) != 0) {
		l.super = (uint64(d1[2]) | uint64(d1[3])<<32) & superBacked
	}
	end := 576
	for i := 2; i < 63; i++ {
		if (l.user|l.super)&(1<<i) == 0 {
			continue
		}
		r := lookupCPUID(tab, 0xd, uint32(i))
		l.size[i], l.off[i], l.align[i] = r[0], r[1], r[2]&2 != 0
		if l.super&(1<<i) != 0 && int(l.size[i]) < 8*len(cetWords(i)) {
			l.super &^= 1 << i // a size that cannot hold the MSRs: not backed
			continue
		}
		if l.align[i] {
			end = (end + 63) &^ 63
		}
		end += int(r[0])
	}
	l.compactSize = (end + 4095) &^ 4095
	return l
}

// compact converts KVM's standard XSAVE image and the VP's CET MSRs to the
// compacted form MSHV transfers (XCOMP_BV = components | bit 63). A
// supervisor component is in its init state (XSTATE_BV bit clear) when
// all its MSRs are zero.
func (l *xlayout) compact(std []byte, cet cetState) []byte {
	c := make([]byte, l.compactSize)
	copy(c[:512], std[:512])
	xs := binary.LittleEndian.Uint64(std[512:]) & l.user
	binary.LittleEndian.PutUint64(c[520:], l.user|l.super|1<<63)
	off := 576
	for i := 2; i < 63; i++ {
		if (l.user|l.super)&(1<<i) == 0 {
			continue
		}
		if l.align[i] {
			off = (off + 63) &^ 63
		}
		if l.super&(1<<i) != 0 {
			for j, w := range cetWords(i) {
				binary.LittleEndian.PutUint64(c[off+8*j:], cet[w])
				if cet[w] != 0 {
					xs |= 1 << i
				}
			}
		} else if xs&(1<<i) != 0 && int(l.off[i]+l.size[i]) <= len(std) {
			copy(c[off:off+int(l.size[i])], std[l.off[i]:l.off[i]+l.size[i]])
		}
		off += int(l.size[i])
	}
	binary.LittleEndian.PutUint64(c[512:], xs)
	return c
}

// standard converts a compacted image back for KVM_SET_XSAVE, and returns
// the CET MSRs its supervisor components hold (zero where a component is
// in its init state).
func (l *xlayout) standard(c []byte, n int) ([]byte, cetState, bool) {
	var cet cetState
	std := make([]byte, n)
	xs := binary.LittleEndian.Uint64(c[512:])
	xc := binary.LittleEndian.Uint64(c[520:])
	if xc&(1<<63) == 0 {
		copy(std, c)
		return std, cet, true
	}
	copy(std[:512], c[:512])
	binary.LittleEndian.PutUint64(std[512:], xs&l.user)
	off := 576
	for i := 2; i < 63; i++ {
		if xc&(1<<i) == 0 {
			continue
		}
		if (l.user|l.super)&(1<<i) == 0 {
			return nil, cet, false
		}
		if l.align[i] {
			off = (off + 63) &^ 63
		}
		if off+int(l.size[i]) > len(c) {
			return nil, cet, false
		}
		if l.super&(1<<i) != 0 {
			if xs&(1<<i) != 0 {
				for j, w := range cetWords(i) {
					cet[w] = binary.LittleEndian.Uint64(c[off+8*j:])
				}
			}
		} else if xs&(1<<i) != 0 && int(l.off[i]+l.size[i]) <= n {
			copy(std[l.off[i]:l.off[i]+l.size[i]], c[off:off+int(l.size[i])])
		}
		off += int(l.size[i])
	}
	return std, cet, true
}

// --- VP state blobs ----------------------------------------------------------

// lapicMap pairs hv_local_interrupt_controller_state offsets with xAPIC
// page offsets (the sim's own reading of §5): version@4 ldr@8 dfr@12
// spurious@16 isr[8]@20 tmr[8]@52 irr[8]@84 esr@116 icr_high@120
// icr_low@124 lvt_timer@128 thermal@132 perfmon@136 lint0@140 lint1@144
// error@148 cmci@152 error_status@156 initial_count@160 counter_value@164
// divide_config@168 remote_read@172, and apic_id@0, which holds the APIC ID
// register as the xAPIC page does (ID<<24 in xAPIC mode, the whole ID in
// x2APIC mode): the hypervisor's state is the register file, as rust-vmm's
// mshv-bindings (LapicState conversion) and OpenVMM's virt::x86::vp
// (ApicRegisters <-> HvX64InterruptControllerState) both read it.
// lsIRR0 is apic_irr[0]'s offset, and nmiVector the bit of it the
// hypervisor sets for a pending NMI.
const (
	lsIRR0    = 84
	nmiVector = 2
)

var lapicMap = func() [][2]int {
	m := [][2]int{{lsAPICID, 0x20}, {4, 0x30}, {8, 0xD0}, {12, 0xE0}, {16, 0xF0}, {116, 0x280}, {120, 0x310}, {124, 0x300},
		{128, 0x320}, {132, 0x330}, {136, 0x340}, {140, 0x350}, {144, 0x360}, {148, 0x370}, {152, 0x2F0},
		{160, 0x380}, {164, 0x390}, {168, 0x3E0}, {172, 0xC0}}
	for i := 0; i < 8; i++ {
		m = append(m, [2]int{20 + 4*i, 0x100 + 0x10*i}, [2]int{52 + 4*i, 0x180 + 0x10*i}, [2]int{84 + 4*i, 0x200 + 0x10*i})
	}
	return m
}()

// vpState serves MSHV_GET/SET_VP_STATE: mshv_get_set_vp_state is type@0
// rsvd[3]@1 buf_sz@4 buf_ptr@8.
func (v *vp) vpState(get bool, a []byte) error {
	typ := a[vsType]
	if a[vsRsvd] != 0 || a[vsRsvd+1] != 0 || a[vsRsvd+2] != 0 {
		return unix.EINVAL
	}
	sz := binary.LittleEndian.Uint32(a[vsBufSz:])
	ptr := binary.LittleEndian.Uint64(a[vsBufPtr:])
	if sz == 0 || sz%4096 != 0 || ptr%4096 != 0 || ptr == 0 {
		return unix.EINVAL
	}
	var need uint32
	switch typ {
	case 0, 2, 3:
		need = 4096
	case 1:
		need = uint32(v.p.layout().compactSize)
	case 4:
		need = 200
	default:
		return unix.EINVAL
	}
	binary.LittleEndian.PutUint32(a[vsBufSz:], need)
	if need > sz {
		return unix.EINVAL
	}
	buf := user(ptr, int(sz))
	v.mu.Lock()
	defer v.mu.Unlock()
	switch typ {
	case 0:
		if get {
			l, err := v.k.LAPIC()
			if err != nil {
				return unix.EIO
			}
			clear(buf)
			for _, m := range lapicMap {
				copy(buf[m[0]:m[0]+4], l.Regs[m[1]:m[1]+4])
			}
			// The hypervisor keeps a pending NMI as bit 2 (vector 2) of
			// apic_irr[0], outside the architecture (OpenVMM's
			// virt::x86::vp, hv_apic_nmi_pending).
			ev, err := v.k.Events()
			if err != nil {
				return unix.EIO
			}
			if ev.NMI.Pending {
				buf[lsIRR0] |= 1 << nmiVector
			}
			return nil
		}
		l, err := v.k.LAPIC()
		if err != nil {
			return unix.EIO
		}
		for _, m := range lapicMap {
			copy(l.Regs[m[1]:m[1]+4], buf[m[0]:m[0]+4])
		}
		nmi := l.Regs[0x200]&(1<<nmiVector) != 0
		l.Regs[0x200] &^= 1 << nmiVector
		if err := v.k.SetLAPIC(&l); err != nil {
			return unix.EINVAL
		}
		ev, err := v.k.Events()
		if err != nil {
			return unix.EIO
		}
		if ev.NMI.Pending != nmi {
			ev.NMI.Pending = nmi
			if err := v.k.SetEvents(&ev); err != nil {
				return unix.EINVAL
			}
		}
		return nil
	case 1:
		x, err := v.k.XSave()
		if err != nil {
			return unix.EIO
		}
		l := v.p.layout()
		if get {
			clear(buf)
			copy(buf, l.compact(x.Data, v.cet(l.super)))
			return nil
		}
		std, cet, ok := l.standard(buf, len(x.Data))
		if !ok {
			return unix.EINVAL
		}
		if err := v.k.SetXSave(&accel.XSave{Data: std}); err != nil {
			return unix.EINVAL
		}
		if err := v.setCET(l.super, cet); err != nil {
			return unix.EINVAL
		}
		return nil
	}
	if v.k.SynICEnabled() {
		return v.synicState(typ, get, buf[:need])
	}
	// SIMP, SIEFP, synthetic timers of a VP without KVM's SynIC under it:
	// kept as opaque bytes.
	key := uint32(0xF0000 + uint32(typ))
	if get {
		clear(buf)
		if b, ok := v.blobs[key]; ok {
			copy(buf, b)
		}
		return nil
	}
	if v.blobs == nil {
		v.blobs = map[uint32][]byte{}
	}
	v.blobs[key] = append([]byte(nil), buf[:need]...)
	return nil
}

// SynIC state under KVM's SynIC (vpState types 2-4). The hypervisor
// overlays the message and event-flags pages on the guest page SIMP or
// SIEFP names; KVM writes its messages into that guest page itself. So
// while a page is enabled its state is the guest page, read and written
// in place; while it is disabled the hypervisor's overlay is hidden from
// the guest, and the simulator keeps what the VMM set aside for it.
//
// The timers' configuration and count are KVM's STIMERn MSRs. KVM keeps
// no adjustment and no owed expiry message: those two fields are kept
// aside so that they read back as set, but an owed message is not
// delivered (the hypervisor would deliver it; a periodic timer's next
// expiry is, under KVM).
const (
	stimerSize           = 40 // hv_stimer_state: flags, rsvd, config, count, adjustment, undelivered_exp_time
	stimerConfig         = 8
	stimerCount          = 16
	stimerAdjustment     = 24
	stimerFlagMsgPending = 1
)

func (v *vp) synicState(typ uint8, get bool, buf []byte) error {
	le := binary.LittleEndian
	if v.blobs == nil {
		v.blobs = map[uint32][]byte{}
	}
	key := uint32(0xF0000 + uint32(typ))
	if typ == 2 || typ == 3 {
		msr := uint32(0x40000083) // SIMP
		if typ == 3 {
			msr = 0x40000082 // SIEFP
		}
		r, err := v.k.MSRs([]uint32{msr})
		if err != nil {
			return unix.EIO
		}
		var page []byte
		if r[0].Value&1 != 0 {
			if page = v.p.ram(r[0].Value&^0xfff, 4096); page == nil {
				return unix.EINVAL // the hypervisor needs guest RAM under an overlay
			}
		}
		switch {
		case get && page != nil:
			copy(buf, page)
		case get:
			clear(buf)
			copy(buf, v.blobs[key])
		case page != nil:
			copy(page, buf)
		default:
			v.blobs[key] = append([]byte(nil), buf...)
		}
		return nil
	}
	// Synthetic timers.
	idx := kvm.STimerMSRs()
	aside := v.blobs[key]
	if len(aside) < len(buf) {
		aside = make([]byte, len(buf))
	}
	if get {
		r, err := v.k.MSRs(idx)
		if err != nil {
			return unix.EIO
		}
		clear(buf)
		for t := 0; t < 4; t++ {
			o := t * stimerSize
			le.PutUint32(buf[o:], le.Uint32(aside[o:])&stimerFlagMsgPending)
			le.PutUint64(buf[o+stimerConfig:], r[2*t].Value)
			le.PutUint64(buf[o+stimerCount:], r[2*t+1].Value)
			copy(buf[o+stimerAdjustment:o+stimerSize], aside[o+stimerAdjustment:o+stimerSize])
		}
		return nil
	}
	m := make([]accel.MSR, 0, 8)
	for t := 0; t < 4; t++ {
		o := t * stimerSize
		m = append(m, accel.MSR{Index: idx[2*t], Value: le.Uint64(buf[o+stimerConfig:])},
			accel.MSR{Index: idx[2*t+1], Value: le.Uint64(buf[o+stimerCount:])})
	}
	if err := v.k.SetMSRs(m); err != nil {
		return unix.EINVAL
	}
	v.blobs[key] = append([]byte(nil), buf...)
	return nil
}
