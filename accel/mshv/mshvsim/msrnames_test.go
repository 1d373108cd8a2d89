package mshvsim

import (
	"testing"

	"govmm/accel/mshv/mshvabi"
)

// TestMSRRegistersAgree: every MSR the backend reaches through an x64
// MSR register (0x8xxxx) or a partition-wide synthetic one (0x9xxxx), the
// simulator serves as the same MSR of KVM's vCPU, so what the backend
// saves on mshvsim is the MSR the restore on KVM sets. IA32_TSC_DEADLINE
// (0x6E0, HV_X64_REGISTER_TSC_DEADLINE 0x80095) among them: a guest in
// TSC-deadline mode moves with its deadline armed.
func TestMSRRegistersAgree(t *testing.T) {
	sawDeadline := false
	for _, m := range mshvabi.MSRIndexList() {
		n, ok := mshvabi.MSRRegisterName(m)
		if !ok {
			t.Fatalf("MSR %#x listed without a register name", m)
		}
		switch {
		case n>>16 != 0x8 && n>>16 != 0x9:
			continue // SynIC registers: synicToMSR, for a VP with KVM's SynIC
		case n == mshvabi.RegEFER || n == mshvabi.RegAPICBase:
			continue // served with the control registers (KVM's sregs)
		}
		got, ok := hvToMSR(n)
		if !ok || got != m {
			t.Errorf("register %#x (MSR %#x): the simulator serves MSR %#x, %v", n, m, got, ok)
		}
		sawDeadline = sawDeadline || m == 0x6E0
	}
	if !sawDeadline {
		t.Errorf("IA32_TSC_DEADLINE (0x6E0) is not among the backend's MSRs")
	}
}
