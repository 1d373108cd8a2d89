package vm

import (
	"strings"
	"testing"

	"govmm/accel"
)

// msrListVCPU is a destination vCPU that lists the given MSRs; nothing
// else of accel.VCPU is called by portableMSRs.
type msrListVCPU struct {
	accel.VCPU
	list []uint32
}

func (v msrListVCPU) MSRIndexList() ([]uint32, error) { return v.list, nil }

// TestPartitionMSRLeftToVCPU0: a KVM snapshot of a Hyper-V guest has
// HV_X64_MSR_HYPERCALL on every vCPU (KVM keeps one value per VM and lists
// it on each), while MSHV takes it through VP 0 only (Cloud Hypervisor's
// hypervisor/src/mshv/mod.rs restores it on VP 0 alone), so the MSHV
// backend lists it on VP 0 only. vCPU 1's copy must not make the restore
// fail when vCPU 0 carries the same value; a different value, or a
// destination whose vCPU 0 lacks it, still fails by name.
func TestPartitionMSRLeftToVCPU0(t *testing.T) {
	const hypercall = 0x40000001
	saved := []accel.MSR{{Index: 0x277, Value: 0x0007040600070406}, {Index: hypercall, Value: 0x1001}}
	vp0 := msrListVCPU{list: []uint32{0x277, hypercall}}
	vp1 := msrListVCPU{list: []uint32{0x277}}

	got, err := portableMSRs(vp0, saved, nil)
	if err != nil || len(got) != 2 {
		t.Fatalf("vCPU 0: %v, %v (want both MSRs)", got, err)
	}
	got, err = portableMSRs(vp1, saved, saved)
	if err != nil || len(got) != 1 || got[0].Index != 0x277 {
		t.Fatalf("vCPU 1 with vCPU 0 holding the same HYPERCALL: %v, %v (want PAT only)", got, err)
	}
	other := []accel.MSR{{Index: hypercall, Value: 0x2001}}
	if _, err := portableMSRs(vp1, saved, other); err == nil || !strings.Contains(err.Error(), "HV_X64_MSR_HYPERCALL") {
		t.Errorf("vCPU 1's HYPERCALL differs from vCPU 0's: err %v", err)
	}
	if _, err := portableMSRs(vp1, saved, nil); err == nil || !strings.Contains(err.Error(), "0x40000001") {
		t.Errorf("vCPU 0 of a destination without HYPERCALL: err %v", err)
	}
	// Never used (0), it needs no vCPU 0 to carry it.
	unused := []accel.MSR{{Index: hypercall}}
	if got, err := portableMSRs(vp1, unused, nil); err != nil || len(got) != 0 {
		t.Errorf("an unused HYPERCALL on a destination without it: %v, %v", got, err)
	}
	if got, err := portableMSRs(vp1, unused, []accel.MSR{{Index: 0x277}}); err != nil || len(got) != 0 {
		t.Errorf("vCPU 1's unused HYPERCALL, vCPU 0 without it: %v, %v", got, err)
	}
}

// TestTSCDeadlineRefusedByName: an armed IA32_TSC_DEADLINE on a
// destination that cannot hold it (a Microsoft Hypervisor without
// HV_X64_REGISTER_TSC_DEADLINE) is refused naming the MSR and the
// timer's mode; a disarmed one (0, the guest's timer in another mode)
// restores, and a destination that lists it takes it.
func TestTSCDeadlineRefusedByName(t *testing.T) {
	armed := []accel.MSR{{Index: 0x277, Value: 0x0007040600070406}, {Index: msrTSCDeadline, Value: 0x1234567890}}
	without := msrListVCPU{list: []uint32{0x277}}
	_, err := portableMSRs(without, armed, nil)
	if err == nil || !strings.Contains(err.Error(), "IA32_TSC_DEADLINE") || !strings.Contains(err.Error(), "-tsc_deadline_timer") {
		t.Errorf("armed deadline on a destination without it: err %v, want a refusal naming IA32_TSC_DEADLINE", err)
	}
	if got, err := portableMSRs(without, []accel.MSR{{Index: msrTSCDeadline}}, nil); err != nil || len(got) != 0 {
		t.Errorf("disarmed deadline: %v, %v; want nothing to set and no error", got, err)
	}
	with := msrListVCPU{list: []uint32{0x277, msrTSCDeadline}}
	got, err := portableMSRs(with, armed, nil)
	if err != nil || len(got) != 2 {
		t.Fatalf("destination with the deadline: %v, %v", got, err)
	}
	early, late := splitLateMSRs(got)
	if len(early) != 1 || early[0].Index != 0x277 || len(late) != 1 || late[0] != armed[1] {
		t.Errorf("splitLateMSRs: early %v, late %v; want the deadline alone after the LAPIC", early, late)
	}
}
