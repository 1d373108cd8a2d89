package vm

import (
	"testing"

	"govmm/accel"
)

// TestSplitLateMSRs: IA32_TSC_DEADLINE is kept for after the LAPIC (which
// cancels an armed deadline), every other MSR is set first, in order.
func TestSplitLateMSRs(t *testing.T) {
	in := []accel.MSR{{Index: 0x10, Value: 1}, {Index: msrTSCDeadline, Value: 2}, {Index: 0x277, Value: 3}}
	early, late := splitLateMSRs(in)
	if len(early) != 2 || early[0].Index != 0x10 || early[1].Index != 0x277 {
		t.Errorf("early %+v, want TSC then PAT", early)
	}
	if len(late) != 1 || late[0] != (accel.MSR{Index: msrTSCDeadline, Value: 2}) {
		t.Errorf("late %+v, want the TSC deadline alone", late)
	}
	if in[1].Index != msrTSCDeadline {
		t.Errorf("the input was changed: %+v", in)
	}
}
