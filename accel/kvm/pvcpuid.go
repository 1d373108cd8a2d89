package kvm

import (
	"govmm/accel"
	"govmm/cpu"
)

// KVM_FEATURE_* bits of CPUID 0x40000001 EAX that govmm offers: the ones
// the kernel implements by itself once the LAPIC is in the kernel (clocks,
// async page faults, steal time, PV EOI, PV spinlock kicks, PV TLB flush,
// PV IPIs, halt-poll control, PV sched yield). Left out, because they need
// the VMM and govmm does not do their part: MSI_EXT_DEST_ID (govmm's IOAPIC
// and MSI routes carry 8-bit APIC IDs), HC_MAP_GPA_RANGE and
// MIGRATION_CONTROL (hypercalls that exit to userspace, for encrypted
// memory), and the retired MMU_OP.
const pvFeatures = 1<<0 | // CLOCKSOURCE (kvmclock, MSRs 0x11/0x12)
	1<<1 | // NOP_IO_DELAY
	1<<3 | // CLOCKSOURCE2 (kvmclock, MSRs 0x4b564d00/01)
	1<<4 | // ASYNC_PF
	1<<5 | // STEAL_TIME
	1<<6 | // PV_EOI
	1<<7 | // PV_UNHALT
	1<<9 | // PV_TLB_FLUSH
	1<<10 | // ASYNC_PF_VMEXIT
	1<<11 | // PV_SEND_IPI
	1<<12 | // POLL_CONTROL
	1<<13 | // PV_SCHED_YIELD
	1<<14 | // ASYNC_PF_INT
	1<<24 // CLOCKSOURCE_STABLE_BIT

// apicBusKHz is the LAPIC timer's input clock: KVM counts it in 1 ns bus
// cycles (APIC_BUS_CYCLE_NS_DEFAULT), so 1 GHz.
const apicBusKHz = 1_000_000

// paravirtLeaves trims KVM's paravirtual leaves in a KVM_GET_SUPPORTED_CPUID
// table to what govmm offers and adds the timing leaf 0x40000010 (as QEMU
// does), so a guest needs no TSC or LAPIC timer calibration. The timing
// leaf's TSC frequency is left 0: it is the vCPU's, and SetCPUID fills it
// in from KVM_GET_TSC_KHZ (so a restored guest is told the frequency of
// the vCPU it now runs on).
func paravirtLeaves(tab []accel.CPUIDEntry) []accel.CPUIDEntry {
	if !cpu.IsKVM(tab) {
		return tab
	}
	hasTiming := false
	for i := range tab {
		e := &tab[i]
		switch e.Function {
		case cpu.KVMLeafSignature:
			e.EAX = max(e.EAX, cpu.KVMLeafTiming)
		case cpu.KVMLeafFeatures:
			e.EAX &= pvFeatures
			e.EBX, e.ECX, e.EDX = 0, 0, 0 // EDX: KVM_HINTS_REALTIME is the VMM's promise of dedicated CPUs; govmm makes none
		case cpu.KVMLeafTiming:
			hasTiming = true
		}
	}
	if !hasTiming {
		tab = append(tab, accel.CPUIDEntry{Function: cpu.KVMLeafTiming, EBX: apicBusKHz})
	}
	return tab
}
