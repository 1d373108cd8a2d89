package mshvsim

import (
	"encoding/binary"
	"runtime"

	"govmm/accel"
)

// The Microsoft Hypervisor presents its own CPUID leaves at 0x40000000 to
// a guest partition: the vendor "Microsoft Hv", the interface "Hv#1", and
// the privileges the VMM granted through SYNTHETIC_PROC_FEATURES (an early
// partition property). A Linux guest reads them to find its paravirtual
// clock (the reference TSC page), the TSC and APIC frequencies, and
// whether it may run its LAPIC in x2APIC mode without interrupt remapping.
//
// The simulator builds those leaves from the partition's synthetic
// features and backs them with KVM's Hyper-V emulation, which KVM turns on
// for a vCPU whose CPUID carries the "Hv#1" interface: KVM then serves the
// guest OS ID, hypercall page, VP index, reference counter, reference TSC
// page, VP assist page and frequency MSRs. Where the KVM underneath has
// KVM_CAP_HYPERV_SYNIC2 it also serves the SynIC (SCONTROL, SIMP, SIEFP,
// SINTn, EOM: messages and event flags) and the four synthetic timers, in
// message and in direct mode; a guest CPUID that grants them turns KVM's
// SynIC on for the VP (accel/kvm synic.go). Enlightenments that change
// guest behaviour through recommendations (APIC access MSRs, remote TLB
// flush, cluster IPIs) are not recommended, and the guest idle register
// (which KVM lacks) is not granted, even when the VMM asked for it: the
// guest sees fewer enlightenments than on the real hypervisor, never ones
// the simulator cannot back. The APIC access MSRs are granted (KVM serves
// them) but not recommended, so a Linux guest keeps using its x2APIC.

// Hyper-V CPUID leaves (TLFS "Hypervisor CPUID Leaves").
const (
	hvLeafVendor    = 0x40000000
	hvLeafInterface = 0x40000001
	hvLeafVersion   = 0x40000002
	hvLeafFeatures  = 0x40000003
	hvLeafHints     = 0x40000004
	hvLeafLimits    = 0x40000005
	hvLeafHardware  = 0x40000006

	hvInterfaceHv1 = 0x31237648 // "Hv#1"
)

// Synthetic processor feature bits (mshv-abi.md §2.6) the simulator can
// present, with the partition privilege bit (CPUID 0x40000003 EAX) each
// one grants and the feature bit (EDX) it also sets, or -1.
// synic marks the features only a KVM with its SynIC can back.
var hvPresentable = []struct {
	synth, priv, edx int
	synic            bool
}{
	{3, 1, -1, false},  // access_partition_reference_counter: HV_MSR_TIME_REF_COUNT_AVAILABLE
	{4, 2, -1, true},   // access_synic_regs: HV_MSR_SYNIC_AVAILABLE
	{5, 3, -1, true},   // access_synthetic_timer_regs: HV_MSR_SYNTIMER_AVAILABLE
	{6, 4, -1, false},  // access_intr_ctrl_regs: HV_MSR_APIC_ACCESS_AVAILABLE (EOI, ICR, TPR MSRs; KVM's kvm_hv_vapic_msr_write)
	{7, 5, -1, false},  // access_hypercall_regs: HV_MSR_HYPERCALL_AVAILABLE
	{8, 6, -1, false},  // access_vp_index: HV_MSR_VP_INDEX_AVAILABLE
	{9, 9, -1, false},  // access_partition_reference_tsc: HV_MSR_REFERENCE_TSC_AVAILABLE
	{12, 11, 8, false}, // access_frequency_regs: HV_ACCESS_FREQUENCY_MSRS, HV_FEATURE_FREQUENCY_MSRS_AVAILABLE
	{24, -1, 19, true}, // direct_synthetic_timers: HV_STIMER_DIRECT_MODE_AVAILABLE
}

const (
	synthHypervisorPresent = 0
	synthHv1               = 1
)

// hypervLeaves returns the leaves a guest of a partition with synthetic
// features synth sees at 0x40000000, or none when the VMM did not ask for
// hypervisor_present and hv1. synic says whether the KVM underneath can
// back the SynIC and the synthetic timers.
func hypervLeaves(synth uint64, synic bool) []accel.CPUIDEntry {
	if synth&(1<<synthHypervisorPresent) == 0 || synth&(1<<synthHv1) == 0 {
		return nil
	}
	var priv, edx uint32
	for _, f := range hvPresentable {
		if f.synic && !synic {
			continue
		}
		if synth&(1<<f.synth) != 0 {
			if f.priv >= 0 {
				priv |= 1 << f.priv
			}
			if f.edx >= 0 {
				edx |= 1 << f.edx
			}
		}
	}
	vendor := []byte("Microsoft Hv")
	le := binary.LittleEndian.Uint32
	return []accel.CPUIDEntry{
		{Function: hvLeafVendor, EAX: hvLeafHardware, EBX: le(vendor[0:]), ECX: le(vendor[4:]), EDX: le(vendor[8:])},
		{Function: hvLeafInterface, EAX: hvInterfaceHv1},
		// Version: build 26100 of Hyper-V 10.0, the hypervisor of current
		// Azure hosts.
		{Function: hvLeafVersion, EAX: 26100, EBX: 10 << 16},
		{Function: hvLeafFeatures, EAX: priv, EDX: edx},
		// No recommendations; EBX all ones: never notify on long spin waits.
		{Function: hvLeafHints, EBX: 0xffffffff},
		{Function: hvLeafLimits, EAX: maxVPs, EBX: uint32(runtime.NumCPU())},
		{Function: hvLeafHardware},
	}
}
