package kvm

import (
	"testing"

	"govmm/accel"
	"govmm/cpu"
)

// The bit withTSCDeadline sets is the one the CPU models call
// tsc_deadline_timer, on leaf 1 only, and a table as KVM 6.1 returns it
// (leaf 1 without the bit) comes out of paravirtLeaves with it, so the
// host model offers it.
func TestWithTSCDeadline(t *testing.T) {
	f, ok := cpu.Lookup("tsc_deadline_timer")
	if !ok || f.Leaf != leafFeatures || f.Reg != cpu.ECX || 1<<f.Bit != ecxTSCDeadlineTime {
		t.Fatalf("tsc_deadline_timer is %+v, not leaf %d ECX %#x", f, leafFeatures, ecxTSCDeadlineTime)
	}
	tab := []accel.CPUIDEntry{
		{Function: 0, EAX: 0xd},
		{Function: 1, ECX: 1 << 21, EDX: 1 << 9}, // x2apic, apic
		{Function: 7, EBX: 1},
	}
	out := paravirtLeaves(tab)
	if out[1].ECX != 1<<21|ecxTSCDeadlineTime || out[1].EDX != 1<<9 {
		t.Errorf("leaf 1 = %+v, want x2apic and tsc_deadline_timer in ECX, apic in EDX", out[1])
	}
	if out[0].ECX != 0 || out[2].ECX != 0 {
		t.Errorf("other leaves changed: %+v", out)
	}
	m, err := cpu.Parse("host")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := m.Apply(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Function == 1 && e.ECX&ecxTSCDeadlineTime == 0 {
			t.Errorf("the host model drops tsc_deadline_timer: leaf 1 %+v", e)
		}
	}
}
