package kvm

import "govmm/accel"

// Leaf 1 ECX bit 24: the LAPIC timer's TSC-deadline mode.
const (
	leafFeatures       = 1
	ecxTSCDeadlineTime = 1 << 24
)

// withTSCDeadline sets the TSC-deadline timer bit in a
// KVM_GET_SUPPORTED_CPUID table. KVM has emulated the mode in its
// in-kernel LAPIC since Linux 3.2 (KVM_CAP_TSC_DEADLINE_TIMER), and govmm
// always runs with that LAPIC (the split irqchip), but kernels before 6.14
// leave the bit out of the table because it depends on the irqchip
// (QEMU adds it back for the same reason). Without it a Linux guest
// calibrates its LAPIC timer against the PIT at every boot: about 100 ms
// of waiting, a slow exit in the window warns "APIC calibration not
// consistent with PM-Timer", and the timer then runs in one-shot mode.
func withTSCDeadline(tab []accel.CPUIDEntry) []accel.CPUIDEntry {
	for i := range tab {
		if tab[i].Function == leafFeatures {
			tab[i].ECX |= ecxTSCDeadlineTime
		}
	}
	return tab
}
