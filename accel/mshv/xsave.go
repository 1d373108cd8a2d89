package mshv

import (
	"encoding/binary"
	"fmt"
	"sync"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// MSHV transfers XSAVE state in the compacted format (XCOMP_BV bit 63
// set); the neutral accel.XSave is the standard format. The component
// sizes, standard offsets and 64-byte alignment come from CPUID leaf 0xD
// of the VM's CPU model, or from the hypervisor when the VM has none.
//
// The hypervisor's image holds every component of the partition's
// XSAVE_STATES property, supervisor ones included: the kernel asks for
// exactly those (drivers/hv/mshv_root_main.c, mshv_vp_ioctl_get_set_state,
// MSHV_VP_STATE_XSAVE), and hv_x64_xsave_xfem_register (include/hyperv/
// hvhdk.h) has pasid (10), cet_u (11) and cet_s (12) among its bits. The
// standard format has no place for supervisor state (CPUID 0xD gives them
// no offset), so they travel another way or not at all:
//   - CET_U is IA32_U_CET and IA32_PL3_SSP, CET_S is IA32_PL0-2_SSP: they
//     travel as those MSRs (named registers U_CET, PL0-3_SSP), as KVM and
//     QEMU's MSHV backend carry CET, and MSRs are restored after XSAVE, so
//     the init state the image gets here is overwritten with the values.
//   - PASID (IA32_PASID) has no register on MSHV: an image whose PASID
//     state is in use is refused by name rather than saved without it.
//   - any other supervisor component in use is refused the same way.

// Supervisor XSAVE components the hypervisor may transfer.
const (
	xcompPASID = 10
	xcompCETU  = 11
	xcompCETS  = 12
)

// supervisorCarriedAsMSRs are the supervisor components whose whole state
// is in MSRs the backend saves and restores (see above).
const supervisorCarriedAsMSRs = 1<<xcompCETU | 1<<xcompCETS

// xcompName names an XSAVE component for errors.
func xcompName(i int) string {
	switch i {
	case xcompPASID:
		return "PASID"
	case xcompCETU:
		return "CET_U"
	case xcompCETS:
		return "CET_S"
	}
	return fmt.Sprintf("component %d", i)
}

type xsaveComp struct {
	size, stdOff uint32
	align64      bool
}

type xsaveLayout struct {
	comps   [64]xsaveComp
	stdSize int
	// states is the component mask the partition transfers (XSAVE_STATES
	// property | x87 | SSE), used for XCOMP_BV when setting.
	states  uint64
	maxSize int
}

const xcompBVCompacted = 1 << 63

type layoutCache struct {
	once sync.Once
	l    *xsaveLayout
	err  error
}

func (vm *VM) xsaveLayout(v *VCPU) (*xsaveLayout, error) {
	vm.xsave.once.Do(func() { vm.xsave.l, vm.xsave.err = vm.buildXSaveLayout(v) })
	return vm.xsave.l, vm.xsave.err
}

func (vm *VM) buildXSaveLayout(v *VCPU) (*xsaveLayout, error) {
	l := &xsaveLayout{stdSize: 4096, maxSize: 4096}
	leaf := map[uint32][4]uint32{}
	for _, e := range vm.cfg.CPUID {
		if e.Function == 0xd {
			leaf[e.Index] = [4]uint32{e.EAX, e.EBX, e.ECX, e.EDX}
		}
	}
	if len(leaf) == 0 {
		var err error
		if leaf, err = hypervisorLeafD(v); err != nil {
			return nil, err
		}
	}
	supported := uint64(leaf[0][0]) | uint64(leaf[0][3])<<32 | uint64(leaf[1][2]) | uint64(leaf[1][3])<<32
	l.fill(leaf)
	if st, err := vm.hv.getProperty(mshvabi.PropXSaveStates); err == nil {
		l.states = st | 3
	} else {
		l.states = supported | 3
	}
	// The partition may transfer components the VM's CPU model hides (a
	// kernel without the v2 payload enables what the hypervisor has):
	// their sizes still place every later component of the compacted
	// image, so they come from the hypervisor's own leaf 0xD.
	for i := 2; i < 63; i++ {
		if l.states&(1<<i) != 0 && l.comps[i].size == 0 {
			hv, err := hypervisorLeafD(v)
			if err != nil {
				return nil, err
			}
			l.fill(hv)
			break
		}
	}
	l.stdSize = (l.stdSize + 4095) &^ 4095
	if sz, err := vm.hv.getProperty(mshvabi.PropMaxXSaveDataSize); err == nil && sz > 0 {
		l.maxSize = int(sz)
	}
	return l, nil
}

// fill takes the size, standard offset and alignment of each component
// leaf 0xD describes and l does not know yet.
func (l *xsaveLayout) fill(leaf map[uint32][4]uint32) {
	for i := 2; i < 63; i++ {
		r, ok := leaf[uint32(i)]
		if !ok || r[0] == 0 || l.comps[i].size != 0 {
			continue
		}
		l.comps[i] = xsaveComp{size: r[0], stdOff: r[1], align64: r[2]&2 != 0}
		if r[1] != 0 {
			l.stdSize = max(l.stdSize, int(r[0]+r[1]))
		}
	}
}

// hypervisorLeafD reads CPUID leaf 0xD as the hypervisor computes it for
// v's VP, without the VMM's overrides (GET_VP_CPUID_VALUES).
func hypervisorLeafD(v *VCPU) (map[uint32][4]uint32, error) {
	in := make([]byte, 24+24*64)
	binary.LittleEndian.PutUint32(in[8:], uint32(v.index))
	for i := 0; i < 64; i++ {
		binary.LittleEndian.PutUint32(in[24+24*i:], 0xd)
		binary.LittleEndian.PutUint32(in[24+24*i+4:], uint32(i))
		binary.LittleEndian.PutUint64(in[24+24*i+8:], ^uint64(0)>>1)
	}
	out := make([]byte, 16*64)
	reps, err := v.hv.call(mshvabi.HvcallGetVPCPUIDValues, 64, in, out)
	if err != nil || reps != 64 {
		return nil, fmt.Errorf("read CPUID leaf 0xD for the XSAVE layout: %v (reps %d)", err, reps)
	}
	leaf := map[uint32][4]uint32{}
	for i := 0; i < 64; i++ {
		var r [4]uint32
		for j := range r {
			r[j] = binary.LittleEndian.Uint32(out[16*i+4*j:])
		}
		leaf[uint32(i)] = r
	}
	return leaf, nil
}

// compactedOffsets returns each component's offset in a compacted image
// with component mask xcomp.
func (l *xsaveLayout) compactedOffsets(xcomp uint64) (offs [64]int, end int) {
	off := 576
	for i := 2; i < 63; i++ {
		if xcomp&(1<<i) == 0 || l.comps[i].size == 0 {
			continue
		}
		if l.comps[i].align64 {
			off = (off + 63) &^ 63
		}
		offs[i] = off
		off += int(l.comps[i].size)
	}
	return offs, off
}

// toStandard converts a compacted XSAVE image to the standard format.
func (l *xsaveLayout) toStandard(c []byte) ([]byte, error) {
	if len(c) < 576 {
		return nil, fmt.Errorf("XSAVE image of %d bytes is shorter than the legacy area and header", len(c))
	}
	std := make([]byte, l.stdSize)
	xstate := binary.LittleEndian.Uint64(c[512:])
	xcomp := binary.LittleEndian.Uint64(c[520:])
	if xcomp&xcompBVCompacted == 0 {
		copy(std, c)
		return std, nil
	}
	copy(std[:512], c[:512])
	for i := 2; i < 63; i++ {
		if xcomp&(1<<i) != 0 && l.comps[i].size == 0 {
			// Its size decides where every later component starts.
			return nil, fmt.Errorf("compacted XSAVE image holds %s (XCOMP_BV %#x), whose size CPUID leaf 0xD does not give", xcompName(i), xcomp)
		}
	}
	offs, end := l.compactedOffsets(xcomp)
	if end > len(c) {
		return nil, fmt.Errorf("compacted XSAVE image of %d bytes is shorter than its components (%d bytes, XCOMP_BV %#x)", len(c), end, xcomp)
	}
	var keep uint64 = 3
	for i := 2; i < 63; i++ {
		if xstate&(1<<i) == 0 || xcomp&(1<<i) == 0 {
			continue
		}
		cp := l.comps[i]
		if cp.stdOff == 0 {
			// Supervisor state: no standard-format slot.
			if supervisorCarriedAsMSRs&(1<<i) != 0 {
				continue // saved as MSRs
			}
			return nil, fmt.Errorf("the guest's %s state (XSAVE component %d) is in use, and MSHV offers no register that govmm could save it through: %w", xcompName(i), i, accel.ErrNotSupported)
		}
		if int(cp.stdOff+cp.size) > len(std) {
			continue
		}
		copy(std[cp.stdOff:cp.stdOff+cp.size], c[offs[i]:offs[i]+int(cp.size)])
		keep |= 1 << i
	}
	binary.LittleEndian.PutUint64(std[512:], xstate&keep)
	return std, nil
}

// toCompacted converts a standard XSAVE image to the compacted format with
// the partition's component mask.
func (l *xsaveLayout) toCompacted(std []byte) ([]byte, error) {
	if len(std) < 576 {
		return nil, fmt.Errorf("XSAVE image of %d bytes is shorter than the legacy area and header", len(std))
	}
	xstate := binary.LittleEndian.Uint64(std[512:])
	if binary.LittleEndian.Uint64(std[520:])&xcompBVCompacted != 0 {
		return nil, fmt.Errorf("XSAVE image is already compacted; the neutral form is the standard format")
	}
	if extra := xstate &^ l.states; extra != 0 {
		return nil, fmt.Errorf("XSAVE image holds components %#x this partition does not transfer (%#x): %w", extra, l.states, accel.ErrNotSupported)
	}
	for i := 2; i < 63; i++ {
		if l.states&(1<<i) != 0 && l.comps[i].size == 0 {
			return nil, fmt.Errorf("the partition transfers %s (XSAVE_STATES %#x), whose size neither the CPU model nor the hypervisor gives", xcompName(i), l.states)
		}
	}
	offs, end := l.compactedOffsets(l.states)
	c := make([]byte, max((end+4095)&^4095, l.maxSize))
	copy(c[:512], std[:512])
	binary.LittleEndian.PutUint64(c[512:], xstate)
	binary.LittleEndian.PutUint64(c[520:], l.states|xcompBVCompacted)
	for i := 2; i < 63; i++ {
		if xstate&(1<<i) == 0 {
			continue
		}
		cp := l.comps[i]
		if cp.stdOff == 0 || int(cp.stdOff+cp.size) > len(std) {
			return nil, fmt.Errorf("XSAVE component %d is missing from the %d-byte standard image", i, len(std))
		}
		copy(c[offs[i]:offs[i]+int(cp.size)], std[cp.stdOff:cp.stdOff+cp.size])
	}
	return c, nil
}

// XSave reads the XSAVE state (MSHV_GET_VP_STATE, compacted) and returns
// it in the standard format.
func (v *VCPU) XSave() (accel.XSave, error) {
	l, err := v.vm.xsaveLayout(v)
	if err != nil {
		return accel.XSave{}, fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	buf, err := v.vpState(mshvabi.VPStateXSave, l.maxSize)
	if err != nil {
		return accel.XSave{}, err
	}
	std, err := l.toStandard(buf)
	if err != nil {
		return accel.XSave{}, fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	return accel.XSave{Data: std}, nil
}

// SetXSave converts a standard-format XSAVE image and sets it.
func (v *VCPU) SetXSave(x *accel.XSave) error {
	l, err := v.vm.xsaveLayout(v)
	if err != nil {
		return fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	c, err := l.toCompacted(x.Data)
	if err != nil {
		return fmt.Errorf("vCPU %d: set XSAVE: %w", v.index, err)
	}
	return v.setVPState(mshvabi.VPStateXSave, c)
}
