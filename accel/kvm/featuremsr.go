package kvm

import (
	"fmt"
	"slices"
	"unsafe"

	"govmm/accel"
)

// SupportedFeatureMSR reads a feature MSR's supported value from /dev/kvm
// (KVM_GET_MSRS on the system fd, for an MSR KVM_GET_MSR_FEATURE_INDEX_LIST
// names): the bits KVM lets a guest see, such as IA32_ARCH_CAPABILITIES'
// "not affected" bits. KVM computes it from the host (and emulates the MSR
// where the CPU lacks it, as AMD's do).
func (a *Accelerator) SupportedFeatureMSR(index uint32) (uint64, error) {
	list, err := a.MSRFeatureIndexList()
	if err != nil {
		return 0, err
	}
	if !slices.Contains(list, index) {
		return 0, fmt.Errorf("feature MSR %#x: KVM does not list it in KVM_GET_MSR_FEATURE_INDEX_LIST: %w", index, accel.ErrNotSupported)
	}
	buf, ents := newMSRs(1)
	ents[0].Index = index
	n, err := ioctlPtr(a.fd, ioctlGetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return 0, fmt.Errorf("feature MSR %#x: KVM_GET_MSRS on /dev/kvm: %w", index, err)
	}
	if n != 1 {
		return 0, fmt.Errorf("feature MSR %#x: KVM_GET_MSRS on /dev/kvm read nothing: %w", index, accel.ErrNotSupported)
	}
	return ents[0].Data, nil
}

// setFeatureMSRs gives a new vCPU the VM's feature MSRs, each checked
// against what KVM supports (older kernels take any host-initiated value,
// which would let a guest see bits the host cannot honour).
func (v *VCPU) setFeatureMSRs(msrs []accel.MSR) error {
	for _, m := range msrs {
		sup, err := v.vm.acc.SupportedFeatureMSR(m.Index)
		if err != nil {
			return err
		}
		if extra := m.Value &^ sup; extra != 0 {
			return fmt.Errorf("feature MSR %#x = %#x: KVM supports only %#x (bits %#x missing): %w", m.Index, m.Value, sup, extra, accel.ErrNotSupported)
		}
	}
	return v.SetMSRs(msrs)
}
