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
