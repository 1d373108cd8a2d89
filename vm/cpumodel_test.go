package vm

import (
	"errors"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/cpu"
)

// CheckCPU refuses a saved CPUID the destination cannot present, naming
// the missing features, and tells a host-model VM it is tied to a host
// of the same kind.
func TestCheckCPU(t *testing.T) {
	const sig = accel.CPUIDFlagSignificantIndex
	host := []accel.CPUIDEntry{
		{Function: 0, EAX: 0xd, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69},
		{Function: 1, ECX: 1<<0 | 1<<9 | 1<<19 | 1<<20 | 1<<23 | 1<<26 | 1<<28, EDX: 0x178bfbff},
		{Function: 7, Index: 0, Flags: sig, EBX: 1<<3 | 1<<5 | 1<<8},
		{Function: 0xd, Index: 0, Flags: sig, EAX: 7, ECX: 0x340},
		{Function: 0xd, Index: 2, Flags: sig, EAX: 0x100, EBX: 0x240},
		{Function: 0x80000001, ECX: 1, EDX: 1<<11 | 1<<20 | 1<<29},
	}
	m := MachineState{CPUID: host}
	if err := m.CheckCPU(host, "kvm"); err != nil {
		t.Fatalf("same host: %v", err)
	}
	dest, err := cpu.Hide(host, []string{"avx2"})
	if err != nil {
		t.Fatal(err)
	}
	err = m.CheckCPU(dest, "kvm")
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "kvm on this host does not offer: avx2") ||
		!strings.Contains(err.Error(), "tied to a host of the same kind") {
		t.Errorf("host model, destination without avx2: %v", err)
	}
	m.CPUModel = "x86-64-v3,-bmi2"
	if err := m.CheckCPU(dest, "kvm"); err == nil || strings.Contains(err.Error(), "tied to") ||
		!strings.Contains(err.Error(), "cannot run the x86-64-v3 model") {
		t.Errorf("named model: %v", err)
	}
}

// fakeMSRAccel presents the feature MSR bits in sup.
type fakeMSRAccel struct {
	fakeAccel
	sup uint64
}

func (f fakeMSRAccel) SupportedFeatureMSR(index uint32) (uint64, error) {
	if index != accel.MSRArchCapabilities {
		return 0, accel.ErrNotSupported
	}
	return f.sup, nil
}

// TestCheckFeatureMSRs: a model's IA32_ARCH_CAPABILITIES is refused where
// the accelerator cannot present every bit (the missing ones named), or
// cannot set feature MSRs at all; accepted where it can.
func TestCheckFeatureMSRs(t *testing.T) {
	msrs := []accel.MSR{{Index: accel.MSRArchCapabilities, Value: 0x16b}}
	if err := CheckFeatureMSRs(fakeMSRAccel{sup: 0x1ff}, msrs, "Icelake-Server"); err != nil {
		t.Errorf("a superset: %v", err)
	}
	err := CheckFeatureMSRs(fakeMSRAccel{sup: 0x3}, msrs, "Icelake-Server")
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "bits 0x168 missing") || !strings.Contains(err.Error(), "Icelake-Server") {
		t.Errorf("a host lacking bits: %v, want an input error naming bits 0x168 and the model", err)
	}
	if err := CheckFeatureMSRs(fakeAccel{}, msrs, "Icelake-Server"); !errors.As(err, &ie) || !strings.Contains(err.Error(), "cannot present") {
		t.Errorf("an accelerator without feature MSRs: %v", err)
	}
	if err := CheckFeatureMSRs(fakeAccel{}, nil, "x86-64-v2"); err != nil {
		t.Errorf("no feature MSRs: %v", err)
	}
}
