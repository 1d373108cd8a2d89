package mshv

import (
	"fmt"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// CET shadow stacks: the current shadow-stack pointer has no MSR; the
// hypervisor holds it as the VP register SSP (hvgdk_mini.h,
// HV_X64_REGISTER_SSP), next to U_CET, S_CET and PL0-3_SSP, which travel
// as MSRs (xsave.go).

// SSP returns the VP's current shadow-stack pointer.
func (v *VCPU) SSP() (uint64, error) {
	if !v.shstk.Load() {
		return 0, fmt.Errorf("vCPU %d: shadow-stack pointer: the VP's CPUID offers no shadow stacks: %w", v.index, accel.ErrNotSupported)
	}
	vals, err := v.get([]uint32{mshvabi.RegSSP})
	if err != nil {
		return 0, fmt.Errorf("shadow-stack pointer (register SSP): %w", err)
	}
	return vals[0].Low, nil
}

// SetSSP sets the VP's current shadow-stack pointer.
func (v *VCPU) SetSSP(ssp uint64) error {
	if !v.shstk.Load() {
		return fmt.Errorf("vCPU %d: shadow-stack pointer %#x: the VP's CPUID offers no shadow stacks: %w", v.index, ssp, accel.ErrNotSupported)
	}
	if err := v.set([]mshvabi.RegisterAssoc{reg(mshvabi.RegSSP, ssp)}); err != nil {
		return fmt.Errorf("shadow-stack pointer %#x (register SSP): %w", ssp, err)
	}
	return nil
}
