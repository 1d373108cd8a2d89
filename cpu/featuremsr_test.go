package cpu

import (
	"slices"
	"testing"

	"govmm/accel"
)

// TestFeatureMSRs: Icelake-Server presents its IA32_ARCH_CAPABILITIES (and
// the CPUID bit that enumerates the MSR); without that bit, or on a model
// with no value, no feature MSR is set and the accelerator's stands.
func TestFeatureMSRs(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want uint64 // 0: none
	}{
		{"Icelake-Server", ArchCapRDCLNo | ArchCapIBRSAll | ArchCapSkipL1DFLVMEntry | ArchCapMDSNo | ArchCapPSChangeMCNo | ArchCapTAANo},
		{"Icelake-Server,-arch_capabilities", 0},
		{"Skylake-Server", 0},
		{"x86-64-v2", 0},
		{"host", 0},
	} {
		m, err := Parse(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		got := m.FeatureMSRs()
		switch {
		case tc.want == 0 && len(got) != 0:
			t.Errorf("%s: feature MSRs %v, want none", tc.spec, got)
		case tc.want != 0 && (len(got) != 1 || got[0] != accel.MSR{Index: accel.MSRArchCapabilities, Value: tc.want}):
			t.Errorf("%s: feature MSRs %v, want IA32_ARCH_CAPABILITIES = %#x", tc.spec, got, tc.want)
		}
	}
	for _, d := range Definitions() {
		if d.ArchCapabilities != 0 && !slices.Contains(d.Features, "arch_capabilities") {
			t.Errorf("%s: IA32_ARCH_CAPABILITIES %#x without the arch_capabilities feature", d.Name, d.ArchCapabilities)
		}
	}
}
