package cpu

import (
	"testing"

	"govmm/accel"
)

func TestOffersShadowStacks(t *testing.T) {
	if OffersShadowStacks([]accel.CPUIDEntry{{Function: 7, ECX: 1 << 6}}) {
		t.Error("leaf 7 without bit 7 offers shadow stacks")
	}
	if !OffersShadowStacks([]accel.CPUIDEntry{{Function: 7, ECX: 1 << 7}}) {
		t.Error("leaf 7 with CET_SS does not offer shadow stacks")
	}
}
