package kvm

import (
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"govmm/accel"
)

// Hyper-V's synthetic interrupt controller (SynIC) and synthetic timers on
// KVM. govmm's own guests on KVM see KVM's paravirtual interface and never
// need them. A guest that comes from MSHV does: a snapshot or a migration
// carries the Hyper-V CPUID leaves it booted with, and when they grant the
// SynIC or the synthetic timers the guest may have both in use. KVM
// emulates them once a vCPU turns them on (KVM_CAP_HYPERV_SYNIC2: the
// message and event-flags pages are then ordinary guest pages that KVM
// writes, where the hypervisor overlays its own; timers post their expiry
// messages there or, in direct mode, raise their vector). mshvsim backs
// its partitions' SynIC the same way.

// Hyper-V CPUID leaves and the privilege bits (leaf 0x40000003 EAX, TLFS
// "Partition Privilege Flags") that grant the SynIC and the timers.
const (
	hvLeafInterface = 0x40000001
	hvLeafFeatures  = 0x40000003
	hvInterfaceHv1  = 0x31237648 // "Hv#1"
	hvPrivSynIC     = 1 << 2     // AccessSynicRegs
	hvPrivSTimers   = 1 << 3     // AccessSyntheticTimerRegs
)

// SynIC and synthetic timer MSRs (TLFS; Linux hyperv-tlfs.h).
const (
	msrSControl     = 0x40000080
	msrSVersion     = 0x40000081
	msrSIEFP        = 0x40000082
	msrSIMP         = 0x40000083
	msrEOM          = 0x40000084
	msrSINT0        = 0x40000090
	msrSINT15       = 0x4000009F
	msrSTimer0      = 0x400000B0 // STIMERn_CONFIG is 0x400000B0+2n, STIMERn_COUNT the next
	msrSTimer3Count = 0x400000B7
	synicPageEnable = 1
)

// OffersSynIC reports whether a CPUID table presents Hyper-V's interface
// with the SynIC or the synthetic timers granted to the guest.
func OffersSynIC(tab []accel.CPUIDEntry) bool {
	var hv1 bool
	var priv uint32
	for _, e := range tab {
		switch e.Function {
		case hvLeafInterface:
			hv1 = e.EAX == hvInterfaceHv1
		case hvLeafFeatures:
			priv = e.EAX
		}
	}
	return hv1 && priv&(hvPrivSynIC|hvPrivSTimers) != 0
}

// SynICSupported reports whether this KVM can emulate Hyper-V's SynIC
// and synthetic timers for a guest (KVM_CAP_HYPERV_SYNIC2).
func (a *Accelerator) SynICSupported() bool { return checkExtension(a.fd, capHyperVSynIC2) > 0 }

// SynICEnabled reports whether KVM's SynIC is on for the vCPU.
func (v *VCPU) SynICEnabled() bool { return v.synic.Load() }

// enableSynIC turns KVM's SynIC on for the vCPU, once.
func (v *VCPU) enableSynIC() error {
	if v.synic.Load() {
		return nil
	}
	if checkExtension(v.vm.fd, capHyperVSynIC2) <= 0 {
		return fmt.Errorf("vCPU %d: the guest's CPUID grants Hyper-V's SynIC or synthetic timers, which this KVM cannot emulate (no KVM_CAP_HYPERV_SYNIC2): %w",
			v.index, accel.ErrNotSupported)
	}
	ec := kvmEnableCap{Cap: capHyperVSynIC2}
	if _, err := ioctlPtr(v.fd, ioctlEnableCap, unsafe.Pointer(&ec)); err != nil {
		return fmt.Errorf("vCPU %d: turn on Hyper-V's SynIC (KVM_ENABLE_CAP KVM_CAP_HYPERV_SYNIC2): %w", v.index, err)
	}
	v.synic.Store(true)
	v.msrMu.Lock()
	v.msrList = nil // the SynIC's MSRs join the list
	v.msrMu.Unlock()
	return nil
}

// synicMSRList adjusts KVM's MSR list for a vCPU whose SynIC is on, to the
// SynIC MSRs MSHV saves too: SCONTROL, SIEFP, SIMP and SINT0-15 join it
// (KVM lists only SCONTROL, as a sign that it has them), and the timers
// leave it, as they travel in the SynIC state (SynIC) on both
// accelerators. SVERSION is read-only and EOM an action; neither is state.
func synicMSRList(list []uint32) []uint32 {
	list = slices.DeleteFunc(list, func(i uint32) bool {
		return i >= msrSTimer0 && i <= msrSTimer3Count || i == msrSVersion || i == msrEOM
	})
	want := []uint32{msrSControl, msrSIEFP, msrSIMP}
	for i := uint32(msrSINT0); i <= msrSINT15; i++ {
		want = append(want, i)
	}
	for _, i := range want {
		if !slices.Contains(list, i) {
			list = append(list, i)
		}
	}
	return list
}

var _ accel.SynICVCPU = (*VCPU)(nil)

// errNoSynIC is SynIC's answer on a vCPU whose SynIC is off: there is no
// SynIC state to save.
var errNoSynIC = fmt.Errorf("the vCPU's CPUID grants no Hyper-V SynIC: %w", accel.ErrNotSupported)

// STimerMSRs lists the synthetic timers' MSRs: STIMER0_CONFIG,
// STIMER0_COUNT, ... STIMER3_COUNT.
func STimerMSRs() []uint32 {
	l := make([]uint32, 0, 8)
	for i := uint32(msrSTimer0); i <= msrSTimer3Count; i++ {
		l = append(l, i)
	}
	return l
}

// SynIC returns the vCPU's SynIC state when its SynIC is on: the message
// and event-flags pages (guest pages under KVM, read where SIMP and SIEFP
// point while enabled) and the four timers' configuration and count. KVM
// keeps no adjustment and does not expose a timer's undelivered expiry
// message, so those read as zero. It fails with accel.ErrNotSupported when
// the SynIC is off.
func (v *VCPU) SynIC() (accel.SynIC, error) {
	var s accel.SynIC
	if !v.synic.Load() {
		return s, errNoSynIC
	}
	m, err := v.MSRs(append([]uint32{msrSIMP, msrSIEFP}, STimerMSRs()...))
	if err != nil {
		return s, fmt.Errorf("read the SynIC: %w", err)
	}
	for i, p := range []*[]byte{&s.MessagePage, &s.EventFlagsPage} {
		if m[i].Value&synicPageEnable == 0 {
			continue
		}
		page := v.vm.guestPage(m[i].Value &^ 0xfff)
		if page == nil {
			return s, fmt.Errorf("vCPU %d: the SynIC's %s page at %#x is not guest RAM", v.index, []string{"message", "event-flags"}[i], m[i].Value&^0xfff)
		}
		*p = append([]byte(nil), page...)
	}
	for t := range s.Timers {
		s.Timers[t].Config = m[2+2*t].Value
		s.Timers[t].Count = m[3+2*t].Value
	}
	return s, nil
}

// SetSynIC restores what SynIC returned, after the SynIC MSRs: the timers,
// and the pages into the guest pages that SIMP and SIEFP now point to
// (restored from MSHV, where they were overlays outside guest RAM). A
// page whose SIMP or SIEFP is disabled has nowhere to go under KVM and is
// dropped: the guest cannot see it until it enables the page again. A
// timer's owed expiry message cannot be handed to KVM either; a periodic
// timer delivers its next one. On a vCPU whose SynIC is off, state the
// guest never touched is accepted and anything else refused.
func (v *VCPU) SetSynIC(s *accel.SynIC) error {
	if !v.synic.Load() {
		if s.InUse() {
			return errors.New("the saved vCPU uses the Hyper-V SynIC (pages or synthetic timers), and its CPUID does not grant it")
		}
		return nil
	}
	m, err := v.MSRs([]uint32{msrSIMP, msrSIEFP})
	if err != nil {
		return fmt.Errorf("read SIMP and SIEFP: %w", err)
	}
	for i, data := range [][]byte{s.MessagePage, s.EventFlagsPage} {
		if len(data) == 0 || m[i].Value&synicPageEnable == 0 {
			continue
		}
		if len(data) > 4096 {
			return fmt.Errorf("vCPU %d: SynIC page of %d bytes", v.index, len(data))
		}
		page := v.vm.guestPage(m[i].Value &^ 0xfff)
		if page == nil {
			return fmt.Errorf("vCPU %d: the SynIC's %s page at %#x is not guest RAM", v.index, []string{"message", "event-flags"}[i], m[i].Value&^0xfff)
		}
		clear(page)
		copy(page, data)
	}
	var tm []accel.MSR
	for t, st := range s.Timers {
		tm = append(tm, accel.MSR{Index: msrSTimer0 + 2*uint32(t), Value: st.Config},
			accel.MSR{Index: msrSTimer0 + 2*uint32(t) + 1, Value: st.Count})
	}
	if err := v.SetMSRs(tm); err != nil {
		return fmt.Errorf("restore the synthetic timers: %w", err)
	}
	return nil
}

// guestPage returns the 4 KiB of writable guest RAM at gpa (page aligned),
// or nil when no RAM region holds it.
func (vm *VM) guestPage(gpa uint64) []byte {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for _, s := range vm.regions {
		r := s.region
		if r.ReadOnly || gpa < r.GPA || gpa+4096 > r.GPA+r.Size() {
			continue
		}
		o := gpa - r.GPA
		return r.Host[o : o+4096 : o+4096]
	}
	return nil
}
