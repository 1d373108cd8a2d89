package kvm

import (
	"errors"
	"strings"
	"testing"

	"govmm/accel"
)

// TestFeatureMSRs: a VM's feature MSRs reach every vCPU (IA32_ARCH_CAPABILITIES
// reads back as set, here a value narrower than KVM's), and a value with a
// bit KVM does not support is refused at vCPU creation, naming the bits.
func TestFeatureMSRs(t *testing.T) {
	a := openKVM(t)
	sup, err := a.SupportedFeatureMSR(accel.MSRArchCapabilities)
	if err != nil {
		t.Fatalf("IA32_ARCH_CAPABILITIES (KVM emulates it on every x86 host): %v", err)
	}
	if sup == 0 {
		t.Fatal("KVM supports no IA32_ARCH_CAPABILITIES bit: nothing to narrow")
	}
	want := sup & -sup // its lowest bit alone
	vm, err := a.NewVM(accel.VMConfig{NumVCPUs: 2, FeatureMSRs: []accel.MSR{{Index: accel.MSRArchCapabilities, Value: want}}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for i := range 2 {
		v, err := vm.NewVCPU(i)
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.MSRs([]uint32{accel.MSRArchCapabilities})
		v.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Value != want {
			t.Errorf("vCPU %d: IA32_ARCH_CAPABILITIES %#x, want %#x (KVM supports %#x)", i, got[0].Value, want, sup)
		}
	}

	unsupported := ^sup & -^sup // the lowest bit KVM lacks
	bad, err := a.NewVM(accel.VMConfig{NumVCPUs: 1, FeatureMSRs: []accel.MSR{{Index: accel.MSRArchCapabilities, Value: sup | unsupported}}})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	_, err = bad.NewVCPU(0)
	if !errors.Is(err, accel.ErrNotSupported) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("vCPU with IA32_ARCH_CAPABILITIES bit %#x KVM lacks: %v, want a refusal naming the missing bits", unsupported, err)
	}

	if _, err := a.SupportedFeatureMSR(0x10); !errors.Is(err, accel.ErrNotSupported) {
		t.Errorf("TSC (not a feature MSR) as a feature MSR: %v, want ErrNotSupported", err)
	}
}
