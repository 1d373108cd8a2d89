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
