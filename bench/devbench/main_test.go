package main

import (
	"slices"
	"strings"
	"testing"
)

// TestCommandColumns: each QEMU column differs from qemu in the one
// setting it names.
func TestCommandColumns(t *testing.T) {
	cfg := &config{qemu: "qemu-system-x86_64", govmm: "govmm", kernel: "k", initrd: "i", cpus: 1}
	drive := func(args []string) string {
		return args[slices.Index(args, "-drive")+1]
	}
	netdev := func(args []string) string {
		return args[slices.Index(args, "-netdev")+1]
	}
	q, u, v := command(cfg, "qemu", "d.img", "v.sock", ""), command(cfg, "qemu-uring", "d.img", "v.sock", ""), command(cfg, "qemu-vhost", "d.img", "v.sock", "")
	if strings.Contains(drive(q), "aio=") || !strings.HasSuffix(drive(u), ",aio=io_uring") || drive(v) != drive(q) {
		t.Errorf("drives: qemu %q, qemu-uring %q, qemu-vhost %q", drive(q), drive(u), drive(v))
	}
	if netdev(u) != netdev(q) || !strings.Contains(netdev(q), "vhost=off") || !strings.Contains(netdev(v), "vhost=on") {
		t.Errorf("netdevs: qemu %q, qemu-uring %q, qemu-vhost %q", netdev(q), netdev(u), netdev(v))
	}
}

// TestCommandAltVhost: govmm-vhost-alt is -govmm-alt's binary with
// govmm-vhost's arguments.
func TestCommandAltVhost(t *testing.T) {
	cfg := &config{govmm: "govmm", alt: "govmm-old", kernel: "k", initrd: "i", cpus: 1}
	v, a := command(cfg, "govmm-vhost", "d.img", "v.sock", ""), command(cfg, "govmm-vhost-alt", "d.img", "v.sock", "")
	if v[0] != "govmm" || a[0] != "govmm-old" || !slices.Equal(v[1:], a[1:]) {
		t.Errorf("govmm-vhost %q, govmm-vhost-alt %q", v, a)
	}
	if !strings.Contains(strings.Join(a, " "), "vhost=on") || !slices.Contains(a, "cid=3") {
		t.Errorf("govmm-vhost-alt without vhost: %q", a)
	}
}

// TestRunOrder: over as many repetitions as there are columns, each
// column runs once in each place, and every repetition runs each column
// once.
func TestRunOrder(t *testing.T) {
	cols := []string{"govmm", "govmm-alt", "qemu"}
	seen := map[string]map[int]bool{}
	for rep := 0; rep < 2*len(cols); rep++ {
		order := runOrder(cols, rep)
		sorted := slices.Sorted(slices.Values(order))
		if !slices.Equal(sorted, []string{"govmm", "govmm-alt", "qemu"}) {
			t.Fatalf("repetition %d runs %q", rep, order)
		}
		for place, c := range order {
			if seen[c] == nil {
				seen[c] = map[int]bool{}
			}
			seen[c][place] = true
		}
		if rep == 0 && !slices.Equal(order, cols) {
			t.Errorf("repetition 0 runs %q, want the columns' own order %q", order, cols)
		}
	}
	for _, c := range cols {
		if len(seen[c]) != len(cols) {
			t.Errorf("%s ran in places %v, want every place", c, seen[c])
		}
	}
	if runOrder(nil, 3) != nil {
		t.Error("no columns: want no order")
	}
}
