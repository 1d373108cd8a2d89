//go:build linux && arm64

package kvmarm

import (
	"errors"
	"fmt"
	"unsafe"
)

// GetRegBytes reads register id whatever its size (KVM_GET_ONE_REG).
func (v *VCPU) GetRegBytes(id uint64) ([]byte, error) {
	n, err := RegBytes(id)
	if err != nil {
		return nil, fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	buf := make([]byte, n)
	r := oneReg{ID: id, Addr: uint64(uintptr(unsafe.Pointer(&buf[0])))}
	if _, err := ioctlPtr(v.fd, ioctlGetOneReg, unsafe.Pointer(&r)); err != nil {
		return nil, fmt.Errorf("vCPU %d: KVM_GET_ONE_REG %#x: %w", v.index, id, err)
	}
	return buf, nil
}

// SetRegBytes writes register id from val, which must have its size.
func (v *VCPU) SetRegBytes(id uint64, val []byte) error {
	n, err := RegBytes(id)
	if err != nil {
		return fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	if len(val) != n {
		return fmt.Errorf("vCPU %d: register %#x: %d bytes given, it has %d", v.index, id, len(val), n)
	}
	r := oneReg{ID: id, Addr: uint64(uintptr(unsafe.Pointer(&val[0])))}
	if _, err := ioctlPtr(v.fd, ioctlSetOneReg, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("vCPU %d: KVM_SET_ONE_REG %#x: %w", v.index, id, err)
	}
	return nil
}

// MPState is the vCPU's MP state (KVM_GET_MP_STATE).
func (v *VCPU) MPState() (uint32, error) {
	var s uint32
	if _, err := ioctlPtr(v.fd, ioctlGetMPState, unsafe.Pointer(&s)); err != nil {
		return 0, fmt.Errorf("vCPU %d: KVM_GET_MP_STATE: %w", v.index, err)
	}
	return s, nil
}

// SetMPState sets the vCPU's MP state (KVM_SET_MP_STATE).
func (v *VCPU) SetMPState(s uint32) error {
	if _, err := ioctlPtr(v.fd, ioctlSetMPState, unsafe.Pointer(&s)); err != nil {
		return fmt.Errorf("vCPU %d: KVM_SET_MP_STATE %d: %w", v.index, s, err)
	}
	return nil
}

// SaveState captures the vCPU: every register of KVM_GET_REG_LIST and
// the MP state. The vCPU must not be in KVM_RUN.
func (v *VCPU) SaveState() (VCPUState, error) {
	var s VCPUState
	ids, err := v.RegList()
	if err != nil {
		return s, err
	}
	for _, id := range ids {
		b, err := v.GetRegBytes(id)
		if err != nil {
			return s, err
		}
		s.Regs = append(s.Regs, RegValue{ID: id, Value: b})
	}
	s.MPState, err = v.MPState()
	return s, err
}

// RestoreState writes a saved vCPU state into a vCPU that has not run.
// The virtual counter (KVM_REG_ARM_TIMER_CNT) is written last, with cnt
// rather than the vCPU's own saved value: KVM keeps one counter offset
// for the whole VM, set by the latest write, so the caller passes the
// same value for every vCPU (the largest saved one, so that the guest's
// clock never reads less than it did before the snapshot). A register KVM
// refuses to write is accepted when it already holds the saved value (a
// read-only id register, say).
func (v *VCPU) RestoreState(s *VCPUState, cnt uint64) error {
	if err := s.Check(); err != nil {
		return fmt.Errorf("vCPU %d: %w", v.index, err)
	}
	for _, r := range s.Regs {
		if r.ID == RegTimerCnt {
			continue
		}
		if err := v.SetRegBytes(r.ID, r.Value); err != nil {
			cur, gerr := v.GetRegBytes(r.ID)
			if gerr != nil || string(cur) != string(r.Value) {
				return err
			}
		}
	}
	if err := v.SetReg(RegTimerCnt, cnt); err != nil {
		return err
	}
	return v.SetMPState(s.MPState)
}

// getAttr is KVM_GET_DEVICE_ATTR on a device fd.
func getAttr(fd int, group uint32, attr uint64, val unsafe.Pointer) error {
	a := deviceAttr{Group: group, Attr: attr, Addr: uint64(uintptr(val))}
	_, err := ioctlPtr(fd, ioctlGetDeviceAttr, unsafe.Pointer(&a))
	return err
}

// ctrl sets a KVM_DEV_ARM_VGIC_GRP_CTRL attribute (no value).
func ctrl(fd int, attr uint64, what string) error {
	if err := setAttr(fd, vgicGroupCtrl, attr, nil); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// SaveGIC captures the vGICv3 and the ITS of a VM whose vCPUs are all out
// of KVM_RUN. mpidrs are the vCPUs' MPIDR_EL1 values, in vCPU order. It
// first has KVM write the LPI pending bits and the ITS tables to guest
// RAM, so guest memory must be saved after it.
func (vm *VM) SaveGIC(mpidrs []uint64, nrIRQs uint32) (GICState, error) {
	s := GICState{NumIRQs: nrIRQs}
	if vm.gicFD < 0 || vm.itsFD < 0 {
		return s, errors.New("save vGIC: the VM has no vGICv3 with an ITS")
	}
	if err := ctrl(vm.gicFD, vgicSavePending, "save vGIC: KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES"); err != nil {
		return s, err
	}
	if err := ctrl(vm.itsFD, itsSaveTables, "save ITS: KVM_DEV_ARM_ITS_SAVE_TABLES"); err != nil {
		return s, err
	}
	for _, off := range distRestoreOrder(nrIRQs) {
		var val uint32
		if err := getAttr(vm.gicFD, vgicGroupDistRegs, uint64(off), unsafe.Pointer(&val)); err != nil {
			return s, fmt.Errorf("save vGIC: distributor register %#x: %w", off, err)
		}
		s.Dist = append(s.Dist, Reg32{off, val})
	}
	first, apr, last := cpuRestoreOrder()
	for i, mpidr := range mpidrs {
		aff := AffinityAttr(mpidr)
		var rd []Reg32
		for _, off := range redistRestoreOrder() {
			var val uint32
			if err := getAttr(vm.gicFD, vgicGroupRedistRegs, aff|uint64(off), unsafe.Pointer(&val)); err != nil {
				return s, fmt.Errorf("save vGIC: vCPU %d redistributor register %#x: %w", i, off, err)
			}
			rd = append(rd, Reg32{off, val})
		}
		s.Redist = append(s.Redist, rd)
		var cpu []Reg64
		for _, enc := range append(append(append([]uint64(nil), first...), apr...), last...) {
			var val uint64
			if err := getAttr(vm.gicFD, vgicGroupCPUSysregs, aff|enc, unsafe.Pointer(&val)); err != nil {
				if isAPR(enc, apr) {
					continue // this CPU interface has fewer priority bits
				}
				return s, fmt.Errorf("save vGIC: vCPU %d CPU interface register %#x: %w", i, enc, err)
			}
			cpu = append(cpu, Reg64{enc, val})
		}
		s.CPU = append(s.CPU, cpu)
	}
	for intid := uint32(32); intid < nrIRQs; intid += 32 {
		var val uint32
		attr := AffinityAttr(mpidrs[0]) | levelInfoLineLevel<<levelInfoShift | uint64(intid)
		if err := getAttr(vm.gicFD, vgicGroupLevelInfo, attr, unsafe.Pointer(&val)); err != nil {
			return s, fmt.Errorf("save vGIC: line levels of INTIDs %d-%d: %w", intid, intid+31, err)
		}
		s.SPILevels = append(s.SPILevels, val)
	}
	for _, off := range append(itsRestoreOrder(), gitsCTLR) {
		var val uint64
		if err := getAttr(vm.itsFD, vgicGroupITSRegs, off, unsafe.Pointer(&val)); err != nil {
			return s, fmt.Errorf("save ITS: register %#x: %w", off, err)
		}
		s.ITS = append(s.ITS, Reg64{off, val})
	}
	return s, nil
}

func isAPR(enc uint64, apr []uint64) bool {
	for _, a := range apr {
		if a == enc {
			return true
		}
	}
	return false
}

// RestoreGIC writes a saved vGIC and ITS into a VM built as the saved one
// was (CreateGICv3, the vCPUs, CreateITS, InitGIC), with guest RAM and
// the vCPUs restored, before any vCPU runs. The order is the kernel's
// (Documentation/virt/kvm/devices/arm-vgic-its.rst, "ITS Restore
// Sequence"): the redistributors, the distributor and the CPU interfaces,
// the SPI line levels; then GITS_CBASER, the other ITS registers but
// GITS_CTLR, KVM_DEV_ARM_ITS_RESTORE_TABLES (which reads the tables from
// guest RAM), and GITS_CTLR last.
func (vm *VM) RestoreGIC(s *GICState, mpidrs []uint64) error {
	if vm.gicFD < 0 || vm.itsFD < 0 {
		return errors.New("restore vGIC: the VM has no vGICv3 with an ITS")
	}
	if err := s.Check(len(mpidrs), s.NumIRQs); err != nil {
		return err
	}
	set32 := func(group uint32, attr uint64, val uint32, what string) error {
		if err := setAttr(vm.gicFD, group, attr, unsafe.Pointer(&val)); err != nil {
			return fmt.Errorf("restore vGIC: %s: %w", what, err)
		}
		return nil
	}
	// GICD_IIDR before anything else, as the kernel asks.
	for _, r := range s.Dist {
		if r.Off == gicdIIDR {
			if err := set32(vgicGroupDistRegs, uint64(r.Off), r.Val, "GICD_IIDR"); err != nil {
				return err
			}
		}
	}
	for i, mpidr := range mpidrs {
		aff := AffinityAttr(mpidr)
		vals := map[uint32]uint32{}
		for _, r := range s.Redist[i] {
			vals[r.Off] = r.Val
		}
		for _, off := range redistRestoreOrder() {
			if err := set32(vgicGroupRedistRegs, aff|uint64(off), vals[off], fmt.Sprintf("vCPU %d redistributor register %#x", i, off)); err != nil {
				return err
			}
		}
	}
	dist := map[uint32]uint32{}
	for _, r := range s.Dist {
		dist[r.Off] = r.Val
	}
	for _, off := range distRestoreOrder(s.NumIRQs) {
		if off == gicdIIDR {
			continue
		}
		if err := set32(vgicGroupDistRegs, uint64(off), dist[off], fmt.Sprintf("distributor register %#x", off)); err != nil {
			return err
		}
	}
	first, apr, last := cpuRestoreOrder()
	for i, mpidr := range mpidrs {
		aff := AffinityAttr(mpidr)
		vals := map[uint64]uint64{}
		for _, r := range s.CPU[i] {
			vals[r.Off] = r.Val
		}
		for _, enc := range append(append(append([]uint64(nil), first...), apr...), last...) {
			val, ok := vals[enc]
			if !ok {
				continue // an active priority register this interface lacks
			}
			if err := setAttr(vm.gicFD, vgicGroupCPUSysregs, aff|enc, unsafe.Pointer(&val)); err != nil {
				return fmt.Errorf("restore vGIC: vCPU %d CPU interface register %#x: %w", i, enc, err)
			}
		}
	}
	for k, lv := range s.SPILevels {
		intid := uint64(32 * (k + 1))
		attr := AffinityAttr(mpidrs[0]) | levelInfoLineLevel<<levelInfoShift | intid
		if err := set32(vgicGroupLevelInfo, attr, lv, fmt.Sprintf("line levels of INTIDs %d-%d", intid, intid+31)); err != nil {
			return err
		}
	}
	its := map[uint64]uint64{}
	for _, r := range s.ITS {
		its[r.Off] = r.Val
	}
	for _, off := range itsRestoreOrder() {
		val := its[off]
		if err := setAttr(vm.itsFD, vgicGroupITSRegs, off, unsafe.Pointer(&val)); err != nil {
			return fmt.Errorf("restore ITS: register %#x: %w", off, err)
		}
	}
	if err := ctrl(vm.itsFD, itsRestoreTables, "restore ITS: KVM_DEV_ARM_ITS_RESTORE_TABLES"); err != nil {
		return err
	}
	ctlr := its[gitsCTLR]
	if err := setAttr(vm.itsFD, vgicGroupITSRegs, gitsCTLR, unsafe.Pointer(&ctlr)); err != nil {
		return fmt.Errorf("restore ITS: GITS_CTLR: %w", err)
	}
	return nil
}
