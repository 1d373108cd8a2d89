//go:build !arm64

package main

import (
	"strings"
	"testing"

	"govmm/devices/bus"
	"govmm/vm"
)

// TestExitCounts: devices with exits, most first, as govmm info prints
// them; devices with none are left out.
func TestExitCounts(t *testing.T) {
	e := vm.Exits{
		PIO:  []bus.Count{{Device: "pic", Base: 0x20, Writes: 3}, {Device: "uart0", Base: 0x3f8, Reads: 10, Writes: 90}, {Device: "rtc", Base: 0x70}},
		MMIO: []bus.Count{{Device: "ioapic", Base: 0xfec00000, Reads: 4, Writes: 8}},
		EOIs: 7,
	}
	got, eois := exitCounts(e)
	if eois != 7 || len(got) != 3 || got[0].Device != "uart0" || got[1].Device != "ioapic" || got[1].Bus != "mmio" || got[2].Device != "pic" {
		t.Fatalf("exitCounts = %+v, %d", got, eois)
	}
	var b strings.Builder
	printExits(&b, got, eois)
	out := b.String()
	for _, want := range []string{"exits:   115 device accesses, 7 IOAPIC EOIs", "  pio  uart0            0x3f8              10 reads         90 writes"} {
		if !strings.Contains(out, want) {
			t.Errorf("govmm info's exits lack %q:\n%s", want, out)
		}
	}
}
