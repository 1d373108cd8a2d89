package mshvsim

import (
	"slices"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// The partition's disabled processor and XSAVE features, as the
// hypervisor enforces them. The simulator takes the bank layout and each
// bit's CPUID counterpart from mshvabi.BankFeatures (ABI data checked
// against the upstream header there), the one table it shares with the
// backend.

// defaultDisabled is what MSHV_CREATE_PARTITION disables when the caller
// passes no v2 payload: mainline passes zeroed creation properties (the
// hypervisor enables all it supports); a kernel with the v2 payload starts
// from everything disabled and re-enables its whitelist.
func (s *Sim) defaultDisabled() [3]uint64 {
	if s.opts.V2 {
		return mshvabi.V1DefaultDisabled()
	}
	return [3]uint64{}
}

// hostOffered are the simulated host's processor banks 0 and 1 and XSAVE
// bank (bit set = offered), as the root partition's
// PROCESSOR_FEATURES0/1 and PROCESSOR_XSAVE_FEATURES report them: a
// feature with a CPUID counterpart is offered when KVM's supported CPUID
// has it; one without is offered (the simulator has no way to tell);
// reserved bits are not.
func (s *Sim) hostOffered() (banks [3]uint64) {
	has := func(leaf, sub uint32) ([4]uint32, bool) {
		for _, e := range s.base {
			if e.Function == leaf && (e.Index == sub || e.Flags&accel.CPUIDFlagSignificantIndex == 0 && sub == 0) {
				return [4]uint32{e.EAX, e.EBX, e.ECX, e.EDX}, true
			}
		}
		return [4]uint32{}, false
	}
	for _, bf := range mshvabi.BankFeatures {
		if bf.NoCPUID || bf.CPUID.Has(has) {
			banks[bf.Bank] |= 1 << bf.Bit
		}
	}
	return banks
}

// enforceBanks clears from a CPUID table every feature the partition's
// banks disable, and the XCR0 components of disabled XSAVE features
// (leaf 0xD.0 and their own 0xD subleaves), so that what the VP reports
// and what KVM lets the guest enable (XCR0, CR4.FSGSBASE/SMEP/LA57/...,
// which KVM derives from the vCPU's CPUID) both follow the banks.
func enforceBanks(tab []accel.CPUIDEntry, disabled [3]uint64) []accel.CPUIDEntry {
	if disabled == ([3]uint64{}) {
		return tab
	}
	tab = slices.Clone(tab)
	entry := func(leaf, sub uint32) *accel.CPUIDEntry {
		for i := range tab {
			e := &tab[i]
			if e.Function == leaf && (e.Index == sub || e.Flags&accel.CPUIDFlagSignificantIndex == 0 && sub == 0) {
				return e
			}
		}
		return nil
	}
	var xcr0 uint64
	for _, bf := range mshvabi.BankFeatures {
		if disabled[bf.Bank]>>bf.Bit&1 == 0 {
			continue
		}
		if bf.Bank == mshvabi.BankXSave {
			xcr0 |= mshvabi.XSaveComponents[bf.Name]
		}
		if bf.NoCPUID {
			continue
		}
		if e := entry(bf.CPUID.Leaf, bf.CPUID.Subleaf); e != nil {
			*[]*uint32{&e.EAX, &e.EBX, &e.ECX, &e.EDX}[bf.CPUID.Reg] &^= 1 << bf.CPUID.Bit
		}
	}
	if xcr0 != 0 {
		if e := entry(0xd, 0); e != nil {
			e.EAX &^= uint32(xcr0)
			e.EDX &^= uint32(xcr0 >> 32)
		}
		tab = slices.DeleteFunc(tab, func(e accel.CPUIDEntry) bool {
			return e.Function == 0xd && e.Index >= 2 && e.Index < 64 && xcr0>>e.Index&1 != 0
		})
	}
	return tab
}
