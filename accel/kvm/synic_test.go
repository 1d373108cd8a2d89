package kvm

import (
	"slices"
	"testing"

	"govmm/accel"
)

// TestOffersSynIC: only Hyper-V's interface ("Hv#1") with the SynIC or the
// synthetic timers granted (privilege bits 2 and 3 of leaf 0x40000003)
// turns KVM's SynIC on; KVM's own leaves and a Hyper-V table without those
// grants do not.
func TestOffersSynIC(t *testing.T) {
	hv := func(priv uint32) []accel.CPUIDEntry {
		return []accel.CPUIDEntry{{Function: 1}, {Function: hvLeafInterface, EAX: hvInterfaceHv1}, {Function: hvLeafFeatures, EAX: priv}}
	}
	for _, c := range []struct {
		name string
		tab  []accel.CPUIDEntry
		want bool
	}{
		{"synic", hv(hvPrivSynIC), true},
		{"timers", hv(hvPrivSTimers), true},
		{"reference TSC only", hv(1 << 9), false},
		{"KVM leaves", []accel.CPUIDEntry{{Function: hvLeafInterface, EAX: 0x01007afb}, {Function: hvLeafFeatures, EAX: hvPrivSynIC}}, false},
		{"no hypervisor leaves", []accel.CPUIDEntry{{Function: 1}}, false},
	} {
		if got := OffersSynIC(c.tab); got != c.want {
			t.Errorf("%s: OffersSynIC = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSynICMSRList: with the SynIC on, the saved MSRs are the ones MSHV
// saves too (SCONTROL, SIEFP, SIMP, SINT0-15), the timers leave the list
// (they travel in the SynIC state) and so do SVERSION and EOM.
func TestSynICMSRList(t *testing.T) {
	in := []uint32{0x10, msrSControl, msrSVersion, msrEOM, msrSTimer0, msrSTimer0 + 1, msrSTimer3Count, 0x40000021}
	got := synicMSRList(slices.Clone(in))
	for _, gone := range []uint32{msrSVersion, msrEOM, msrSTimer0, msrSTimer0 + 1, msrSTimer3Count} {
		if slices.Contains(got, gone) {
			t.Errorf("MSR %#x still listed: %#x", gone, got)
		}
	}
	want := []uint32{0x10, msrSControl, msrSIEFP, msrSIMP, 0x40000021}
	for i := uint32(msrSINT0); i <= msrSINT15; i++ {
		want = append(want, i)
	}
	for _, w := range want {
		if n := countOf(got, w); n != 1 {
			t.Errorf("MSR %#x listed %d times, want once: %#x", w, n, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("list %#x, want the %d MSRs %#x", got, len(want), want)
	}
}

func countOf(l []uint32, x uint32) (n int) {
	for _, y := range l {
		if y == x {
			n++
		}
	}
	return n
}
