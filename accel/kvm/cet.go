package kvm

import (
	"fmt"
	"runtime"
	"unsafe"

	"govmm/accel"
)

// CET shadow stacks: the current shadow-stack pointer (SSP) is the one
// register of CET that no MSR holds, so KVM gives it a ONE_REG id of its
// own (KVM_REG_GUEST_SSP, Linux 6.18). KVM refuses the id for a vCPU whose
// CPUID has no shadow stacks, and a KVM without CET virtualization never
// offers them, so a vCPU without the CPUID bit has no SSP to carry.

// SSP returns the guest's current shadow-stack pointer (KVM_GET_ONE_REG).
func (v *VCPU) SSP() (uint64, error) {
	if !v.shstk.Load() {
		return 0, fmt.Errorf("vCPU %d: shadow-stack pointer: the vCPU's CPUID offers no shadow stacks: %w", v.index, accel.ErrNotSupported)
	}
	var ssp uint64
	r := kvmOneReg{ID: regGuestSSP, Addr: uint64(uintptr(unsafe.Pointer(&ssp)))}
	err := v.get(ioctlGetOneReg, "KVM_GET_ONE_REG(KVM_REG_GUEST_SSP)", unsafe.Pointer(&r))
	runtime.KeepAlive(&ssp)
	return ssp, err
}

// SetSSP sets the guest's current shadow-stack pointer (KVM_SET_ONE_REG).
func (v *VCPU) SetSSP(ssp uint64) error {
	if !v.shstk.Load() {
		return fmt.Errorf("vCPU %d: shadow-stack pointer %#x: the vCPU's CPUID offers no shadow stacks: %w", v.index, ssp, accel.ErrNotSupported)
	}
	r := kvmOneReg{ID: regGuestSSP, Addr: uint64(uintptr(unsafe.Pointer(&ssp)))}
	err := v.get(ioctlSetOneReg, "KVM_SET_ONE_REG(KVM_REG_GUEST_SSP)", unsafe.Pointer(&r))
	runtime.KeepAlive(&ssp)
	return err
}
