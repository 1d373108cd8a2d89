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
