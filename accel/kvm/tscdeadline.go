package kvm

import "govmm/accel"

// Leaf 1 ECX bit 24: the LAPIC timer's TSC-deadline mode.
const (
	leafFeatures        = 1
	ecxTSCDeadlineTimer = 1 << 24
)

// withTSCDeadline sets the TSC-deadline timer bit (leaf 1 ECX[24]) in a
// KVM_GET_SUPPORTED_CPUID table when KVM has KVM_CAP_TSC_DEADLINE_TIMER,
// as QEMU's kvm_arch_get_supported_cpuid does. KVM has emulated the mode
// in its in-kernel LAPIC since Linux 3.2 and govmm always runs with that
// LAPIC (the split irqchip keeps it in the kernel), but KVM lists the bit
// in the table only from Linux 6.14 on: before, it left it out because
// the mode depends on the in-kernel irqchip, which a VMM may not create,
// and said so through the capability instead. Without the bit a Linux
// guest calibrates its LAPIC timer against the PIT at every boot (about
// 100 ms, and "APIC calibration not consistent with PM-Timer" when an
// exit lands in the window) and then runs the timer in one-shot mode,
// each tick a write of the initial count instead of IA32_TSC_DEADLINE.
//
// The mode's state is IA32_TSC_DEADLINE (KVM lists the MSR in
// KVM_GET_MSR_INDEX_LIST), which vm restores after the LAPIC, because
// KVM_SET_LAPIC cancels an armed deadline.
func withTSCDeadline(tab []accel.CPUIDEntry, capable bool) []accel.CPUIDEntry {
	if !capable {
		return tab
	}
	for i := range tab {
		if tab[i].Function == leafFeatures {
			tab[i].ECX |= ecxTSCDeadlineTimer
		}
	}
	return tab
}
