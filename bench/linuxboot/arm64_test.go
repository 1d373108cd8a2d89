package main

import (
	"slices"
	"strings"
	"testing"
)

// TestARM64Argv: every column boots the same kernel, initrd, command line,
// memory and vCPUs; QEMU runs through its own loader and libraries, on
// KVM with the host's CPU and a GICv3, and only the UEFI column has
// firmware.
func TestARM64Argv(t *testing.T) {
	cfg := &arm64Config{govmm: "/b/govmm", kernel: "/k/vmlinuz", initrd: "/b/initrd.cpio", qemuDir: "/q"}
	if got := cfg.columns(); !slices.Equal(got, []string{"govmm", "qemu-virt", "qemu-virt-uefi"}) {
		t.Fatalf("columns = %v", got)
	}
	if !strings.Contains(arm64Cmdline, "console=ttyAMA0") || strings.Contains(arm64Cmdline, "ttyS0") {
		t.Errorf("arm64 command line %q: want the PL011 console", arm64Cmdline)
	}
	after := func(argv []string, flag string) string {
		i := slices.Index(argv, flag)
		if i < 0 || i+1 >= len(argv) {
			return ""
		}
		return argv[i+1]
	}
	for _, vmm := range cfg.columns() {
		argv := cfg.argv(vmm, 3)
		kernel, initrd, cl, cpus, mem := "--kernel", "--initrd", "--cmdline", "--cpus", "--memory"
		if vmm != "govmm" {
			kernel, initrd, cl, cpus, mem = "-kernel", "-initrd", "-append", "-smp", "-m"
			if argv[0] != "/q/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1" || argv[3] != "/q/usr/bin/qemu-system-aarch64" {
				t.Errorf("%s: not QEMU through its loader: %v", vmm, argv[:4])
			}
			for _, w := range [][2]string{{"-accel", "kvm"}, {"-cpu", "host"}, {"-M", "virt,gic-version=3"}, {"-serial", "stdio"}} {
				if after(argv, w[0]) != w[1] {
					t.Errorf("%s: %s %q, want %q", vmm, w[0], after(argv, w[0]), w[1])
				}
			}
			if bios := after(argv, "-bios"); (vmm == "qemu-virt-uefi") != (bios == "/q/usr/share/qemu-efi-aarch64/QEMU_EFI.fd") {
				t.Errorf("%s: -bios %q", vmm, bios)
			}
		}
		if after(argv, kernel) != "/k/vmlinuz" || after(argv, initrd) != "/b/initrd.cpio" || after(argv, cl) != arm64Cmdline ||
			after(argv, cpus) != "3" || strings.TrimSuffix(after(argv, mem), "M") != memory {
			t.Errorf("%s: not the shared guest: %v", vmm, argv)
		}
	}
	cfg.qemuDir = ""
	if got := cfg.columns(); !slices.Equal(got, []string{"govmm"}) {
		t.Errorf("without QEMU: columns = %v", got)
	}
}

func TestCheckARM64QEMU(t *testing.T) {
	if err := checkARM64QEMU(t.TempDir()); err == nil || !strings.Contains(err.Error(), ".ci/run") {
		t.Errorf("empty tree: %v", err)
	}
}
