package vm

import (
	"strings"
	"testing"

	"govmm/accel"
)

// stateVCPU is a vCPU whose state methods succeed with zero values and
// record what was set; SSP support is the caller's choice (sspVCPU).
type stateVCPU struct {
	accel.VCPU
	steps []string
}

func (v *stateVCPU) Regs() (accel.Regs, error)          { return accel.Regs{}, nil }
func (v *stateVCPU) SetRegs(*accel.Regs) error          { v.steps = append(v.steps, "regs"); return nil }
func (v *stateVCPU) Sregs() (accel.Sregs, error)        { return accel.Sregs{}, nil }
func (v *stateVCPU) SetSregs(*accel.Sregs) error        { v.steps = append(v.steps, "sregs"); return nil }
func (v *stateVCPU) FPU() (accel.FPU, error)            { return accel.FPU{}, nil }
func (v *stateVCPU) SetFPU(*accel.FPU) error            { return nil }
func (v *stateVCPU) XSave() (accel.XSave, error)        { return accel.XSave{}, accel.ErrNotSupported }
func (v *stateVCPU) XCRs() ([]accel.XCR, error)         { return nil, accel.ErrNotSupported }
func (v *stateVCPU) MSRIndexList() ([]uint32, error)    { return nil, nil }
func (v *stateVCPU) MSRs([]uint32) ([]accel.MSR, error) { return nil, nil }
func (v *stateVCPU) SetMSRs([]accel.MSR) error          { v.steps = append(v.steps, "msrs"); return nil }
func (v *stateVCPU) LAPIC() (accel.LAPIC, error)        { return accel.LAPIC{}, nil }
func (v *stateVCPU) SetLAPIC(*accel.LAPIC) error        { return nil }
func (v *stateVCPU) Events() (accel.Events, error)      { return accel.Events{}, nil }
func (v *stateVCPU) SetEvents(*accel.Events) error      { v.steps = append(v.steps, "events"); return nil }
func (v *stateVCPU) MPState() (accel.MPState, error)    { return accel.MPRunnable, nil }
func (v *stateVCPU) SetMPState(accel.MPState) error     { return nil }
func (v *stateVCPU) DebugRegs() (accel.DebugRegs, error) {
	return accel.DebugRegs{}, nil
}
func (v *stateVCPU) SetDebugRegs(*accel.DebugRegs) error { return nil }

// sspVCPU has shadow stacks (shstk) or not, as its CPUID would say.
type sspVCPU struct {
	*stateVCPU
	shstk bool
	ssp   uint64
}

func (v *sspVCPU) SSP() (uint64, error) {
	if !v.shstk {
		return 0, accel.ErrNotSupported
	}
	return v.ssp, nil
}

func (v *sspVCPU) SetSSP(ssp uint64) error {
	if !v.shstk {
		return accel.ErrNotSupported
	}
	v.steps = append(v.steps, "ssp")
	v.ssp = ssp
	return nil
}

// TestShadowStackPointerCarried: CET's current shadow-stack pointer, which
// no MSR holds, is saved from a vCPU with shadow stacks and restored after
// the MSRs (S_CET and U_CET first); a vCPU without shadow stacks saves
// none, and a destination that cannot hold a pointer in use refuses by
// name instead of restoring a guest whose next return would fault.
func TestShadowStackPointerCarried(t *testing.T) {
	src := &sspVCPU{stateVCPU: &stateVCPU{}, shstk: true, ssp: 0xffffc90000a0fff8}
	var s VCPUState
	if err := captureVCPU(src, &s); err != nil {
		t.Fatal(err)
	}
	if s.SSP == nil || *s.SSP != 0xffffc90000a0fff8 {
		t.Fatalf("saved SSP %v, want 0xffffc90000a0fff8", s.SSP)
	}
	dst := &sspVCPU{stateVCPU: &stateVCPU{}, shstk: true}
	if err := restoreVCPU(dst, &s, nil); err != nil {
		t.Fatal(err)
	}
	if dst.ssp != 0xffffc90000a0fff8 {
		t.Fatalf("restored SSP %#x", dst.ssp)
	}
	if got := strings.Join(dst.steps, ","); !strings.Contains(got, "msrs,ssp") {
		t.Errorf("restore order %s: SSP must follow the MSRs", got)
	}

	var none VCPUState
	if err := captureVCPU(&sspVCPU{stateVCPU: &stateVCPU{}}, &none); err != nil || none.SSP != nil {
		t.Fatalf("a vCPU without shadow stacks saved SSP %v, %v", none.SSP, err)
	}

	err := restoreVCPU(&stateVCPU{}, &s, nil)
	if err == nil || !strings.Contains(err.Error(), "shadow-stack pointer 0xffffc90000a0fff8") {
		t.Errorf("restore onto an accelerator without SSP: %v, want a refusal naming the pointer", err)
	}
	err = restoreVCPU(&sspVCPU{stateVCPU: &stateVCPU{}}, &s, nil)
	if err == nil || !strings.Contains(err.Error(), "shadow-stack pointer") {
		t.Errorf("restore onto a vCPU without shadow stacks: %v, want a refusal", err)
	}
	zero := uint64(0)
	if err := restoreVCPU(&stateVCPU{}, &VCPUState{SSP: &zero}, nil); err != nil {
		t.Errorf("an SSP of 0 (no shadow stack in use) onto an accelerator without SSP: %v", err)
	}
}
