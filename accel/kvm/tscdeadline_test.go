package kvm

import (
	"testing"

	"govmm/accel"
	"govmm/cpu"
)

// TestSupportedTSCDeadline: a KVM_GET_SUPPORTED_CPUID table as Linux 6.1
// returns it (leaf 1 without the TSC-deadline bit) comes out of
// supportedFrom with the bit when KVM has KVM_CAP_TSC_DEADLINE_TIMER, as
// QEMU offers it, and without it when KVM lacks the capability; nothing
// else changes. The host model then keeps the bit, and so does an Intel
// model, which names it.
func TestSupportedTSCDeadline(t *testing.T) {
	f, ok := cpu.Lookup("tsc_deadline_timer")
	if !ok || f.Leaf != leafFeatures || f.Reg != cpu.ECX || 1<<f.Bit != ecxTSCDeadlineTimer {
		t.Fatalf("tsc_deadline_timer is %+v, not leaf %d ECX %#x", f, leafFeatures, ecxTSCDeadlineTimer)
	}
	kvm61 := func() []accel.CPUIDEntry {
		return []accel.CPUIDEntry{
			{Function: 0, EAX: 0xd, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69}, // GenuineIntel
			{Function: 1, ECX: 1<<21 | 1<<20, EDX: 1<<9 | 1<<0},                        // x2apic, sse4_2; apic, fpu
			{Function: 7, EBX: 1},
		}
	}
	leaf1 := func(tab []accel.CPUIDEntry) accel.CPUIDEntry {
		t.Helper()
		for _, e := range tab {
			if e.Function == 1 {
				return e
			}
		}
		t.Fatalf("no leaf 1 in %+v", tab)
		return accel.CPUIDEntry{}
	}

	out := supportedFrom(kvm61(), true)
	if got, want := leaf1(out), (accel.CPUIDEntry{Function: 1, ECX: 1<<21 | 1<<20 | ecxTSCDeadlineTimer, EDX: 1<<9 | 1<<0}); got != want {
		t.Errorf("with KVM_CAP_TSC_DEADLINE_TIMER: leaf 1 = %+v, want %+v", got, want)
	}
	for _, e := range out {
		if e.Function != 1 && e.ECX&ecxTSCDeadlineTimer != 0 {
			t.Errorf("leaf %#x gained bit 24: %+v", e.Function, e)
		}
	}
	if e := leaf1(supportedFrom(kvm61(), false)); e.ECX&ecxTSCDeadlineTimer != 0 {
		t.Errorf("without KVM_CAP_TSC_DEADLINE_TIMER: leaf 1 = %+v offers the mode", e)
	}

	for _, spec := range []string{"host", "host,-kvm"} {
		m, err := cpu.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		ents, err := m.Apply(out)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if leaf1(ents).ECX&ecxTSCDeadlineTimer == 0 {
			t.Errorf("--cpu %s drops tsc_deadline_timer: leaf 1 %+v", spec, leaf1(ents))
		}
	}
}
