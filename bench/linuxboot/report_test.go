package main

import (
	"strings"
	"testing"
)

// TestFloor checks the guest's own time (init less entry) and the floor's
// verdict on both sides of the target.
func TestFloor(t *testing.T) {
	cfg := &config{cpus: []int{1}, vmlinux: "vmlinux"}
	for _, c := range []struct {
		enter, init, qemu float64
		want              string
	}{
		{400, 2400, 3500, "2000 ms / 3500 ms = 0.57x: above the 0.5x target"},
		{400, 1800, 3500, "1400 ms / 3500 ms = 0.40x: below the 0.5x target"},
	} {
		col := newCollector()
		for rep := range 3 {
			col.add(result{Kind: "boot", VMM: "govmm-vmlinux", CPUs: 1, Rep: rep, InitMS: c.init + float64(rep), EnterMS: c.enter + float64(rep)})
			col.add(result{Kind: "boot", VMM: "qemu-pc", CPUs: 1, Rep: rep, InitMS: c.qemu})
		}
		// A failed boot and QEMU's boots (no entry line) have no guest time.
		col.add(result{Kind: "boot", VMM: "govmm-vmlinux", CPUs: 1, Rep: 3, EnterMS: 1, Note: "no init"})
		if s := col.stats("boot", "govmm-vmlinux", 1); len(s.guest) != 3 || s.failed != 1 {
			t.Errorf("govmm-vmlinux stats %+v", s)
		}
		if s := col.stats("boot", "qemu-pc", 1); len(s.guest) != 0 {
			t.Errorf("qemu-pc has guest times %v", s.guest)
		}
		var out strings.Builder
		col.floor(&out, cfg)
		if !strings.Contains(out.String(), c.want) {
			t.Errorf("floor:\n%s\nwant %q", out.String(), c.want)
		}
	}
	var out strings.Builder
	newCollector().floor(&out, &config{cpus: []int{1}})
	if out.Len() != 0 {
		t.Errorf("floor without the govmm-vmlinux column: %q", out.String())
	}
}
