package mshvsim

import (
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

func hvLeaf(tab []accel.CPUIDEntry, fn uint32) (accel.CPUIDEntry, bool) {
	for _, e := range tab {
		if e.Function == fn {
			return e, true
		}
	}
	return accel.CPUIDEntry{}, false
}

// TestHypervLeaves: QEMU's synthetic feature set gives a guest Hyper-V's
// signature, interface and the privileges the simulator can back, and
// nothing it cannot (the guest idle register; the SynIC and synthetic
// timers on a KVM without its SynIC), with no recommendations.
func TestHypervLeaves(t *testing.T) {
	tab := hypervLeaves(mshvabi.DefaultSyntheticProcFeatures, false)
	v, ok := hvLeaf(tab, hvLeafVendor)
	if !ok || v.EAX != hvLeafHardware || string(le32s(v.EBX, v.ECX, v.EDX)) != "Microsoft Hv" {
		t.Fatalf("vendor leaf %+v", v)
	}
	if i, _ := hvLeaf(tab, hvLeafInterface); i.EAX != hvInterfaceHv1 {
		t.Errorf("interface leaf EAX %#x, want Hv#1", i.EAX)
	}
	f, _ := hvLeaf(tab, hvLeafFeatures)
	// TIME_REF_COUNT 1, APIC_ACCESS 4, HYPERCALL 5, VP_INDEX 6,
	// REFERENCE_TSC 9, FREQUENCY_MSRS 11; EDX bit 8: frequency MSRs
	// available.
	if want := uint32(1<<1 | 1<<4 | 1<<5 | 1<<6 | 1<<9 | 1<<11); f.EAX != want || f.EBX != 0 || f.EDX != 1<<8 {
		t.Errorf("features leaf EAX %#x EBX %#x EDX %#x, want EAX %#x EBX 0 EDX 0x100", f.EAX, f.EBX, f.EDX, want)
	}
	if h, _ := hvLeaf(tab, hvLeafHints); h.EAX != 0 {
		t.Errorf("hints EAX %#x: the simulator recommends nothing", h.EAX)
	}
	if l, _ := hvLeaf(tab, hvLeafLimits); l.EAX != maxVPs {
		t.Errorf("limits EAX %d, want %d VPs", l.EAX, maxVPs)
	}

	// Only what the VMM asked for.
	tab = hypervLeaves(1<<mshvabi.SynHypervisorPresent|1<<mshvabi.SynHv1|1<<mshvabi.SynAccessPartitionReferenceTSC, true)
	if f, _ := hvLeaf(tab, hvLeafFeatures); f.EAX != 1<<9 || f.EDX != 0 {
		t.Errorf("reference TSC only: EAX %#x EDX %#x", f.EAX, f.EDX)
	}
	// No hypervisor_present or hv1: no leaves at all.
	for _, synth := range []uint64{0, 1 << mshvabi.SynHv1, 1 << mshvabi.SynHypervisorPresent} {
		if tab := hypervLeaves(synth, true); len(tab) != 0 {
			t.Errorf("synthetic features %#x: %d leaves, want none", synth, len(tab))
		}
	}
}

// TestHypervLeavesSynIC: on a KVM with its SynIC, the same set also grants
// the SynIC (privilege bit 2) and the synthetic timers (bit 3), and
// direct_synthetic_timers turns on direct mode (EDX bit 19), as a real
// partition with those features shows them (TLFS "Partition Privilege
// Flags", "Hypervisor Feature Identification").
func TestHypervLeavesSynIC(t *testing.T) {
	f, _ := hvLeaf(hypervLeaves(mshvabi.DefaultSyntheticProcFeatures, true), hvLeafFeatures)
	if want := uint32(1<<1 | 1<<2 | 1<<3 | 1<<4 | 1<<5 | 1<<6 | 1<<9 | 1<<11); f.EAX != want || f.EDX != 1<<8|1<<19 {
		t.Errorf("features leaf EAX %#x EDX %#x, want EAX %#x EDX %#x", f.EAX, f.EDX, want, 1<<8|1<<19)
	}
	noDirect := mshvabi.DefaultSyntheticProcFeatures &^ (1 << mshvabi.SynDirectSyntheticTimers)
	if f, _ := hvLeaf(hypervLeaves(noDirect, true), hvLeafFeatures); f.EDX&(1<<19) != 0 || f.EAX&(1<<3) == 0 {
		t.Errorf("without direct_synthetic_timers: EAX %#x EDX %#x, want timers without direct mode", f.EAX, f.EDX)
	}
	noSynIC := mshvabi.DefaultSyntheticProcFeatures &^ (1<<mshvabi.SynAccessSynICRegs | 1<<mshvabi.SynAccessSyntheticTimerRegs)
	if f, _ := hvLeaf(hypervLeaves(noSynIC, true), hvLeafFeatures); f.EAX&(1<<2|1<<3) != 0 {
		t.Errorf("without the SynIC features: EAX %#x grants them", f.EAX)
	}
}

func le32s(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = append(b, byte(x), byte(x>>8), byte(x>>16), byte(x>>24))
	}
	return b
}
