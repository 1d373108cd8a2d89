package mshv

import (
	"fmt"

	"govmm/accel"
)

// SupportedFeatureMSR: MSHV offers no way to set a feature MSR per VP. The
// hypervisor derives IA32_ARCH_CAPABILITIES from the partition's
// processor-feature banks (rdcl_no, ibrs_all, skip_l1df, ssb_no, mbs_no,
// taa_no, ...), fixed at creation, and govmm does not map a model's value
// onto those banks yet.
func (a *Accelerator) SupportedFeatureMSR(index uint32) (uint64, error) {
	return 0, fmt.Errorf("feature MSR %#x: MSHV derives it from the partition's processor-feature banks, and govmm cannot set it there yet: %w", index, accel.ErrNotSupported)
}

// checkFeatureMSRs refuses a VM that asks for feature MSRs (see
// SupportedFeatureMSR).
func checkFeatureMSRs(msrs []accel.MSR) error {
	for _, m := range msrs {
		if _, err := (*Accelerator)(nil).SupportedFeatureMSR(m.Index); err != nil {
			return fmt.Errorf("mshv: %w", err)
		}
	}
	return nil
}
