package kvm

import (
	"errors"
	"testing"

	"govmm/accel"
	"govmm/cpu"
)

// TestRegGuestSSP pins the ONE_REG id to the value the kernel's
// Documentation/virt/kvm/api.rst lists for SSP (the installed kvm.h may
// predate it).
func TestRegGuestSSP(t *testing.T) {
	if regGuestSSP != 0x2030000300000000 {
		t.Fatalf("KVM_X86_REG_KVM(KVM_REG_GUEST_SSP) = %#x, want 0x2030000300000000", uint64(regGuestSSP))
	}
}

// TestSSP: a vCPU whose CPUID has no shadow stacks has no SSP to carry
// (ErrNotSupported, never an ioctl); one whose CPUID offers them reads and
// writes it through KVM_REG_GUEST_SSP (only where KVM offers shadow
// stacks: Linux 6.18 with CET hardware).
func TestSSP(t *testing.T) {
	tv := newTestVM(t, 1, 1<<16)
	sup, err := tv.acc.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	v, err := tv.vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	plain := make([]accel.CPUIDEntry, 0, len(sup))
	for _, e := range sup {
		if e.Function == 7 && e.Index == 0 {
			e.ECX &^= 1 << 7
		}
		plain = append(plain, e)
	}
	if err := v.SetCPUID(plain); err != nil {
		t.Fatal(err)
	}
	if _, err := v.SSP(); !errors.Is(err, accel.ErrNotSupported) {
		t.Errorf("SSP without shadow stacks: %v, want ErrNotSupported", err)
	}
	if err := v.SetSSP(0x1000); !errors.Is(err, accel.ErrNotSupported) {
		t.Errorf("SetSSP without shadow stacks: %v, want ErrNotSupported", err)
	}

	if !cpu.OffersShadowStacks(sup) {
		// KVM refuses KVM_REG_GUEST_SSP for a vCPU its CPUID does not
		// give shadow stacks; a KVM that cannot offer them has no such
		// vCPU, and no SSP.
		t.Logf("this KVM offers no shadow stacks (KVM_GET_SUPPORTED_CPUID): no SSP to read")
		return
	}
	w, err := tv.vm.NewVCPU(1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.SetCPUID(sup); err != nil {
		t.Fatal(err)
	}
	if err := w.SetSSP(0x7ff000); err != nil {
		t.Fatalf("SetSSP: %v", err)
	}
	got, err := w.SSP()
	if err != nil || got != 0x7ff000 {
		t.Fatalf("SSP = %#x, %v; want 0x7ff000", got, err)
	}
}
