package mshv

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// TestFakeHypercallMSROnVP0 and TestFakeEOMNeverWritten check the two
// Hyper-V MSRs that are not per-VP state.
//
// HV_X64_MSR_HYPERCALL: Cloud Hypervisor (hypervisor/src/mshv/mod.rs,
// set_state) writes it on VP 0 only, "as Microsoft Hypervisor allows
// setting this register for only one VCPU"; OpenVMM's virt_mshv
// (x86_64/vm_state.rs) reaches it through the BSP. The backend lists it on
// VP 0 only and refuses it by name on another VP, so a restore never asks
// the hypervisor to take it there.
func TestFakeHypercallMSROnVP0(t *testing.T) {
	f := newFake()
	_, vs := f.machineN(t, 2)
	v0, v1 := vs[0], vs[1]
	l0, err := v0.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	l1, err := v1.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(l0, msrHypercall) {
		t.Errorf("VP 0 does not list HV_X64_MSR_HYPERCALL: %#x", l0)
	}
	if slices.Contains(l1, msrHypercall) {
		t.Errorf("VP 1 lists HV_X64_MSR_HYPERCALL, which the hypervisor takes through VP 0 only")
	}
	if n := f.written[[2]uint32{mshvabi.RegHypercall, 1}]; n != 0 {
		t.Errorf("VP 1's HYPERCALL register was written %d times while listing MSRs", n)
	}
	err = v1.SetMSRs([]accel.MSR{{Index: msrHypercall, Value: 0x1001}})
	if err == nil || !strings.Contains(err.Error(), "HV_X64_MSR_HYPERCALL") || !errors.Is(err, accel.ErrNotSupported) {
		t.Errorf("HYPERCALL on VP 1: err %v", err)
	}
	if n := f.written[[2]uint32{mshvabi.RegHypercall, 1}]; n != 0 {
		t.Errorf("VP 1's HYPERCALL register was written")
	}
	if err := v0.SetMSRs([]accel.MSR{{Index: msrHypercall, Value: 0x1001}}); err != nil {
		t.Fatal(err)
	}
	if got := f.regs[mshvabi.RegHypercall].Low; got != 0x1001 {
		t.Errorf("HYPERCALL through VP 0 = %#x, want 0x1001", got)
	}
}

// TestFakeEOMNeverWritten: HV_X64_MSR_EOM is an action, not state (a write
// makes the hypervisor rescan its SynIC message queues and deliver the
// next message: Linux drivers/hv/hyperv_vmbus.h vmbus_signal_eom, "This
// will cause message queue rescan to possibly deliver another msg from the
// hypervisor"). The backend neither lists it (so a snapshot never carries
// it), nor writes it while probing the list, nor takes it in SetMSRs.
func TestFakeEOMNeverWritten(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	l, err := v.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(l, msrEOM) {
		t.Errorf("HV_X64_MSR_EOM is listed as state")
	}
	if !slices.Contains(l, 0x40000083) {
		t.Errorf("SIMP (0x40000083) is missing from %#x", l)
	}
	ms, err := v.MSRs(l)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetMSRs(ms); err != nil {
		t.Fatal(err)
	}
	if n := f.written[[2]uint32{mshvabi.RegEOM, 0}]; n != 0 {
		t.Errorf("EOM written %d times by listing, saving and restoring the MSRs", n)
	}
	if err := v.SetMSRs([]accel.MSR{{Index: msrEOM}}); err == nil || !strings.Contains(err.Error(), "HV_X64_MSR_EOM") {
		t.Errorf("SetMSRs(EOM): err %v", err)
	}
	if n := f.written[[2]uint32{mshvabi.RegEOM, 0}]; n != 0 {
		t.Errorf("SetMSRs wrote EOM")
	}
}
