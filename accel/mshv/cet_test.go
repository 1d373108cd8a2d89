package mshv

import (
	"errors"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// TestFakeSSP: a VP whose CPUID offers shadow stacks carries its current
// shadow-stack pointer through the hypervisor's SSP register
// (HV_X64_REGISTER_SSP, 0x8008E in include/hyperv/hvgdk_mini.h); one
// whose CPUID does not has no SSP, and no register is touched.
func TestFakeSSP(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	if _, err := v.SSP(); !errors.Is(err, accel.ErrNotSupported) {
		t.Fatalf("SSP of a VP without shadow stacks: %v, want ErrNotSupported", err)
	}
	if err := v.SetSSP(0x1000); !errors.Is(err, accel.ErrNotSupported) {
		t.Fatalf("SetSSP on a VP without shadow stacks: %v, want ErrNotSupported", err)
	}
	if _, ok := f.regs[mshvabi.RegSSP]; ok {
		t.Fatal("the SSP register was written for a VP without shadow stacks")
	}

	if err := v.SetCPUID([]accel.CPUIDEntry{{Function: 7, Flags: accel.CPUIDFlagSignificantIndex, ECX: 1 << 7}}); err != nil {
		t.Fatal(err)
	}
	f.regs[mshvabi.RegSSP] = mshvabi.RegisterValue{Low: 0xffffc90000a0fff8}
	got, err := v.SSP()
	if err != nil || got != 0xffffc90000a0fff8 {
		t.Fatalf("SSP = %#x, %v; want 0xffffc90000a0fff8", got, err)
	}
	if err := v.SetSSP(0x7ffff000); err != nil {
		t.Fatal(err)
	}
	if r := f.regs[mshvabi.RegSSP]; r.Low != 0x7ffff000 {
		t.Fatalf("SetSSP wrote %#x to the SSP register, want 0x7ffff000", r.Low)
	}
}
