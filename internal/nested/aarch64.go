package nested

// The aarch64 flavour of L1: QEMU's TCG emulating an Armv8 CPU with EL2
// (-M virt,virtualization=on), so Debian's arm64 cloud kernel, which has
// KVM built in, brings up KVM/arm64 in VHE mode and offers /dev/kvm. It is
// how the arm64 build of govmm is tested on an x86-64 machine (see
// shared/reference/nested-kvm.md, "ARM64"). Everything in L1 must be an
// arm64 program: a static busybox from busybox-static:arm64 and Go
// binaries built with GOARCH=arm64 CGO_ENABLED=0.
//
// Config.Arch = "arm64" selects it; the lock, the timeouts and the error
// reports are the x86 flavour's.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

const (
	qemuAArch64Bin = "qemu-system-aarch64"
	// ArchARM64 is Config.Arch for the aarch64 L1.
	ArchARM64 = "arm64"
)

const howToGetARM64 = "run .ci/run once: it installs qemu-system-arm (10.x, from bookworm-backports) and unpacks Debian's arm64 cloud kernel and busybox-static:arm64 into ~/.cache/govmm/arm64"

// ARM64Dir is where .ci/run unpacks the arm64 kernel and busybox.
func ARM64Dir() string { return filepath.Join(CacheDir(), "arm64") }

// ARM64Kernel is the cached Debian arm64 cloud kernel (an arm64 Image,
// possibly gzipped), or "".
func ARM64Kernel() string {
	m, _ := filepath.Glob(filepath.Join(ARM64Dir(), "boot", "vmlinuz-*"))
	if len(m) == 0 {
		return ""
	}
	sort.Strings(m)
	return m[len(m)-1]
}

// ARM64Busybox is the cached static arm64 busybox, or "".
func ARM64Busybox() string {
	p := filepath.Join(ARM64Dir(), "bin", "busybox")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// FindARM64 locates qemu-system-aarch64, the arm64 kernel, the virtio
// modules L1 needs for its output channel, and the arm64 busybox.
func FindARM64() (*Assets, error) {
	arm64Once.Do(func() { arm64Assets, arm64Err = findARM64() })
	return arm64Assets, arm64Err
}

var (
	arm64Once   sync.Once
	arm64Assets *Assets
	arm64Err    error
)

func findARM64() (*Assets, error) {
	a := Assets{Arch: ArchARM64}
	var err error
	if a.QEMU, err = exec.LookPath(qemuAArch64Bin); err != nil {
		return nil, fmt.Errorf("%s not found: %s", qemuAArch64Bin, howToGetARM64)
	}
	if out, err := exec.Command(a.QEMU, "--version").Output(); err == nil {
		a.QEMUVersion = strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "QEMU emulator version ")
	}
	if a.Kernel = ARM64Kernel(); a.Kernel == "" {
		return nil, fmt.Errorf("no arm64 kernel in %s: %s", filepath.Join(ARM64Dir(), "boot"), howToGetARM64)
	}
	ver := strings.TrimPrefix(filepath.Base(a.Kernel), "vmlinuz-")
	mods := filepath.Join(ARM64Dir(), "lib", "modules", ver, "kernel")
	// KVM is built into the arm64 cloud kernel; the command's output
	// channel (a virtio console) is not. In dependency order.
	for _, m := range []string{"drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_mmio.ko", "drivers/char/virtio_console.ko"} {
		p := filepath.Join(mods, m)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("module %s missing: %s", p, howToGetARM64)
		}
		a.OutputModules = append(a.OutputModules, p)
	}
	if a.Busybox = ARM64Busybox(); a.Busybox == "" {
		return nil, fmt.Errorf("no arm64 busybox in %s: %s", filepath.Join(ARM64Dir(), "bin"), howToGetARM64)
	}
	a.OutputDev = "/dev/hvc0"
	return &a, nil
}

// aarch64QEMUArgs is the aarch64 L1's QEMU command line: the kernel log on
// the PL011 (into console), the command's output on a virtio console.
func aarch64QEMUArgs(a *Assets, cfg Config, tcg, initrd, console string) []string {
	return []string{
		"-accel", tcg, "-machine", "virt,virtualization=on,gic-version=3", "-cpu", "max",
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyAMA0 loglevel=4 panic=-1 " + os.Getenv(L1AppendEnv) + " " + cfg.Append),
		"-serial", "file:" + console,
		"-device", "virtio-serial-device",
		"-chardev", "stdio,id=out,signal=off", "-device", "virtconsole,chardev=out",
	}
}
