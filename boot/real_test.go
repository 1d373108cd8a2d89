package boot

import (
	"os"
	"testing"

	"govmm/internal/kvmtest"
	"govmm/internal/nested"
	"govmm/internal/vmlinux"
	"govmm/platform"
)

// Real kernels are not in the repo. These tests use Debian's cloud kernel
// that .ci/run caches (its bzImage, and the ELF vmlinux decompressed from
// the bzImage's LZ4 payload, which carries a PVH note), or the files named
// by GOVMM_TEST_BZIMAGE and GOVMM_TEST_VMLINUX. Without any, they skip, or
// fail under GOVMM_REQUIRE_KVM=1 (CI), which always has the cached kernel.

func realImage(t *testing.T, env string) []byte {
	t.Helper()
	if path := os.Getenv(env); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	path := nested.LinuxKernel()
	if path == "" {
		if kvmtest.Required() {
			t.Fatalf("no cached Debian kernel and %s unset (.ci/run downloads the kernel)", env)
		}
		t.Skipf("%s not set and no cached Debian kernel (.ci/run downloads it)", env)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if env == "GOVMM_TEST_VMLINUX" {
		return vmlinuxFromBzImage(t, b)
	}
	return b
}

// vmlinuxFromBzImage decompresses the kernel ELF from a bzImage.
func vmlinuxFromBzImage(t *testing.T, img []byte) []byte {
	t.Helper()
	b, _, err := vmlinux.Extract(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRealBzImage(t *testing.T) {
	img := realImage(t, "GOVMM_TEST_BZIMAGE")
	m := newMem(t, 256<<20)
	e, err := Load(m, img, Options{Cmdline: "console=ttyS0", Initrd: make([]byte, 1<<20), RSDP: 0xE0000})
	if err != nil {
		t.Fatal(err)
	}
	if e.Format != FormatBzImage || e.Regs.RSI != platform.ZeroPage {
		t.Fatalf("format %q RSI %#x", e.Format, e.Regs.RSI)
	}
	zp := readBytes(t, m, platform.ZeroPage, 4096)
	load := uint64(le.Uint32(zp[hdrCode32Start:]))
	if e.Regs.RIP != load+0x200 || load < platform.KernelMin {
		t.Errorf("RIP %#x, load address %#x", e.Regs.RIP, load)
	}
	setup := (uint64(img[hdrSetupSects]) + 1) * 512
	if got := readBytes(t, m, load, 4096); string(got) != string(img[setup:setup+4096]) {
		t.Error("protected-mode kernel not at the load address")
	}
	t.Logf("protocol %#x, loaded at %#x, initrd at %#x", le.Uint16(zp[hdrVersion:]), load, le.Uint32(zp[hdrRamdiskImage:]))
}

func TestRealVmlinuxPVH(t *testing.T) {
	img := realImage(t, "GOVMM_TEST_VMLINUX")
	if f, err := Detect(img); err != nil || f != FormatPVH {
		t.Fatalf("Detect = %q, %v; want pvh", f, err)
	}
	m := newMem(t, 256<<20)
	e, err := Load(m, img, Options{Cmdline: "console=ttyS0", Initrd: make([]byte, 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	if e.Regs.RBX != platform.PVHStartInfo || e.Sregs.CR0&cr0PG != 0 || e.Regs.RIP < platform.KernelMin {
		t.Fatalf("RIP %#x RBX %#x CR0 %#x", e.Regs.RIP, e.Regs.RBX, e.Sregs.CR0)
	}
	t.Logf("PVH entry %#x", e.Regs.RIP)
}
