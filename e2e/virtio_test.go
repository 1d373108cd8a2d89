package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/internal/linuxguest"
)

// virtioModules are the kernel modules the guest loads, in dependency
// order, relative to the kernel's modules/VER/kernel directory. Debian's
// cloud kernel builds virtio, virtio-pci, virtio-blk and virtio-rng as
// modules.
var virtioModules = []string{
	"drivers/virtio/virtio_ring.ko",
	"drivers/virtio/virtio.ko",
	"drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko",
	"drivers/virtio/virtio_pci.ko",
	"drivers/block/virtio_blk.ko",
	"drivers/char/hw_random/virtio-rng.ko",
}

// virtioModulesEnv names the kernel's module directory; kvmtest copies
// every GOVMM_* path into L1, so the modules travel with the kernel.
const virtioModulesEnv = "GOVMM_E2E_VIRTIO_MODULES"

func init() {
	if os.Getenv(virtioModulesEnv) != "" {
		return
	}
	k := guestKernelPath()
	if k == "" {
		return
	}
	dir := filepath.Join(moduleTree(k), "drivers", "virtio")
	if _, err := os.Stat(dir); err == nil {
		// The directory of the virtio core; virtio_blk and virtio-rng
		// are two more files, set below so they are copied too.
		os.Setenv(virtioModulesEnv, dir)
		os.Setenv(virtioModulesEnv+"_BLK", filepath.Join(dir, "..", "block", "virtio_blk.ko"))
		os.Setenv(virtioModulesEnv+"_RNG", filepath.Join(dir, "..", "char", "hw_random", "virtio-rng.ko"))
	}
}

// The guest's disks: vda (writable, 16 MiB) and vdb (read-only, 1 MiB).
const (
	vdaSize  = 16 << 20
	vdbSize  = 1 << 20
	mib      = 1 << 20
	rngBytes = 64 << 10
)

// virtioInitHead mounts what the guest's scripts need and loads the
// virtio drivers, in dependency order.
const virtioInitHead = `B=/bin/busybox
$B mkdir -p /proc /sys /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio-rng; do
	$B insmod /lib/modules/$m.ko || echo "virtio-test: insmod $m failed"
done
`

// virtioInit is the guest's /init: load the drivers, read and check the
// disks, copy, write entropy, discard, and print what it saw.
const virtioInit = `#!/bin/busybox sh
` + virtioInitHead + `$B mkdir -p /tmp
i=0
while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
tok=$($B sed -n 's/.*govmm\.token=\([^ ]*\).*/\1/p' /proc/cmdline)
cpus=$($B grep -c ^processor /proc/cpuinfo)
echo "virtio-test: vda-size $($B blockdev --getsize64 /dev/vda) ro=$($B blockdev --getro /dev/vda) serial=$($B cat /sys/block/vda/serial)"
echo "virtio-test: vdb-size $($B blockdev --getsize64 /dev/vdb) ro=$($B blockdev --getro /dev/vdb) serial=$($B cat /sys/block/vdb/serial)"
echo "virtio-test: read-sum $($B dd if=/dev/vda bs=1M count=8 2>/dev/null | $B sha256sum)"
echo "virtio-test: ro-sum $($B dd if=/dev/vdb bs=64k 2>/dev/null | $B sha256sum)"
$B dd if=/dev/vda of=/dev/vda bs=1M count=4 seek=8 conv=fsync 2>/dev/null || echo "virtio-test: copy failed"
echo "virtio-test: rng-current $($B cat /sys/class/misc/hw_random/rng_current)"
$B head -c 65536 /dev/hwrng > /tmp/rng
echo "virtio-test: rng-sum $($B sha256sum < /tmp/rng)"
$B dd if=/tmp/rng of=/dev/vda bs=64k seek=192 conv=fsync 2>/dev/null || echo "virtio-test: rng write failed"
$B blkdiscard -o 14680064 -l 1048576 /dev/vda || echo "virtio-test: discard failed"
if $B dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then echo "virtio-test: ro-write succeeded"; else echo "virtio-test: ro-write refused"; fi
$B sync
echo 3 > /proc/sys/vm/drop_caches
echo "virtio-test: copy-sum $($B dd if=/dev/vda bs=1M skip=8 count=4 2>/dev/null | $B sha256sum)"
online=$($B cat /sys/devices/system/cpu/online)
cs=$($B cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
echo "govmm-userspace: token=$tok cpus=$cpus online=$online clocksource=$cs"
$B poweroff -f
`

// pattern is n deterministic bytes that differ per seed and per block.
func pattern(seed string, n int) []byte {
	out := make([]byte, 0, n)
	for i := 0; len(out) < n; i++ {
		h := sha256.Sum256(fmt.Appendf(nil, "%s-%d", seed, i))
		out = append(out, h[:]...)
	}
	return out[:n]
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// virtioLine returns the value after "virtio-test: key ".
func virtioLine(console, key string) string { return guestValue(console, "virtio-test", key) }

// guestValue returns the value a guest script printed as "tag: key value"
// (a trailing "-" from an empty field dropped), or "".
func guestValue(console, tag, key string) string {
	m := regexp.MustCompile(regexp.QuoteMeta(tag) + `: ` + regexp.QuoteMeta(key) + ` ([^\r\n]*)`).FindStringSubmatch(console)
	if m == nil {
		return ""
	}
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(m[1]), "-"))
}

// TestVirtioLinux boots Linux with two virtio-blk disks and virtio-rng,
// on each accelerator, and has Linux's own drivers read, copy, write
// entropy to and discard on the writable disk and try to write the
// read-only one. The host then checks both images byte for byte: a lost
// or corrupted write, a read of wrong data or a write to the read-only
// disk fails the test.
func TestVirtioLinux(t *testing.T) {
	needLinux(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	initrd := virtioInitrd(t, virtioInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { virtioLinux(t, acc, kernel, initrd, t.TempDir(), "") })
	}
}

// virtioInitrd writes an initramfs with busybox, the virtio modules and
// init as /init.
func virtioInitrd(t *testing.T, init string) string {
	t.Helper()
	return guestInitrd(t, init, nil)
}

// virtioLinux runs the guest with its images in dir and opts added to
// both --disk flags (",direct=on" for TestVirtioLinuxDirect).
func virtioLinux(t *testing.T, acc []string, kernel, initrd, dir, opts string) {
	vda, vdb := filepath.Join(dir, "vda.img"), filepath.Join(dir, "vdb.img")
	pa, pb := pattern("vda", vdaSize), pattern("vdb", vdbSize)
	boot := func() (linuxguest.Result, error) {
		// Fresh images for every boot (a retried boot may have
		// written to them).
		if err := os.WriteFile(vda, pa, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vdb, pb, 0o644); err != nil {
			t.Fatal(err)
		}
		args := append(append([]string(nil), acc...), "--disk", "path="+vda+",serial=govmm-vda"+opts,
			"--disk", "path="+vdb+",readonly=on,serial=govmm-ro"+opts, "--rng")
		b := linuxguest.Boot{Govmm: binary, Accel: args, Kernel: kernel, Initrd: initrd, CPUs: 2,
			Token: "virtio-" + accelName(acc), Timeout: 4 * time.Minute, Cmdline: "quiet"}
		return b.Run(context.Background())
	}
	res, err := boot()
	if errors.Is(err, linuxguest.ErrStalled) || errors.Is(err, linuxguest.ErrTripleFault) {
		t.Logf("RETRY after a failed boot (the substrate; see bootRetryingSubstrate): %v", err)
		res, err = boot()
	}
	if err != nil {
		t.Fatal(err)
	}
	c := res.Console
	report := func(format string, a ...any) {
		t.Helper()
		t.Errorf("%s\n--- guest lines:\n%s\n--- VMM log (end):\n%s", fmt.Sprintf(format, a...), guestLines(c), lastLines(res.Stderr, 20))
	}
	if strings.Contains(c, "insmod") && strings.Contains(c, "failed") {
		report("a module did not load")
	}
	if got, want := virtioLine(c, "vda-size"), fmt.Sprintf("%d ro=0 serial=govmm-vda", vdaSize); got != want {
		report("vda: %q, want %q", got, want)
	}
	if got, want := virtioLine(c, "vdb-size"), fmt.Sprintf("%d ro=1 serial=govmm-ro", vdbSize); got != want {
		report("vdb: %q, want %q", got, want)
	}
	if got, want := virtioLine(c, "read-sum"), sum(pa[:8*mib]); got != want {
		report("the guest read vda's first 8 MiB with SHA-256 %q, the image has %s", got, want)
	}
	if got, want := virtioLine(c, "ro-sum"), sum(pb); got != want {
		report("the guest read vdb with SHA-256 %q, the image has %s", got, want)
	}
	if got := virtioLine(c, "ro-write"); got != "refused" {
		report("a write to the read-only disk: %q, want refused", got)
	}
	if got, want := virtioLine(c, "copy-sum"), sum(pa[:4*mib]); got != want {
		report("the guest read back its copy (after dropping its caches) with SHA-256 %q, want %s", got, want)
	}
	if got := virtioLine(c, "rng-current"); !strings.HasPrefix(got, "virtio_rng") {
		report("hw_random uses %q, want virtio_rng", got)
	}
	// The images after power-off.
	img, err := os.ReadFile(vda)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), pa...)
	copy(want[8*mib:], pa[:4*mib])
	rng := img[12*mib : 12*mib+rngBytes]
	copy(want[12*mib:], rng)
	clear(want[14*mib : 15*mib])
	if bytes.Equal(rng, make([]byte, rngBytes)) || bytes.Equal(rng, pa[12*mib:12*mib+rngBytes]) {
		report("the entropy the guest wrote at 12 MiB is zeros or the old data")
	}
	if got := virtioLine(c, "rng-sum"); got != sum(rng) {
		report("the guest's entropy has SHA-256 %q, the image at 12 MiB %s", got, sum(rng))
	}
	if len(img) != vdaSize {
		report("vda is %d bytes after the run, want %d", len(img), vdaSize)
	} else if !bytes.Equal(img, want) {
		for i := 0; i < vdaSize; i += 4096 {
			if !bytes.Equal(img[i:i+4096], want[i:i+4096]) {
				report("vda differs from what the guest wrote first at byte %#x (4 KiB block %d)", i, i/4096)
				break
			}
		}
	}
	if b, err := os.ReadFile(vdb); err != nil || !bytes.Equal(b, pb) {
		report("the read-only image changed (%v)", err)
	}
}

func guestLines(console string) string {
	var out []string
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "virtio") || strings.Contains(l, "vda") || strings.Contains(l, "vdb") {
			out = append(out, strings.TrimRight(l, "\r"))
		}
	}
	return strings.Join(out, "\n")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// virtioTickInit copies a 64 KiB block of vda each second (block i to
// block 100+i, i = 1..8), reads the copy back past its page cache and
// prints its SHA-256, then powers off.
const virtioTickInit = `#!/bin/busybox sh
` + virtioInitHead + `i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
i=1
while [ $i -le 8 ]; do
	$B dd if=/dev/vda of=/dev/vda bs=64k count=1 skip=$i seek=$((100+i)) conv=fsync 2>/dev/null
	echo 3 > /proc/sys/vm/drop_caches
	echo "virtio-tick $i $($B dd if=/dev/vda bs=64k count=1 skip=$((100+i)) 2>/dev/null | $B sha256sum)"
	i=$((i+1))
	$B sleep 1
done
echo "virtio-ticks-done"
$B poweroff -f
`

// TestVirtioSnapshot snapshots a Linux guest that copies blocks on its
// virtio-blk disk every second, and restores it on the same accelerator:
// the restored guest must read back every later copy correctly, and the
// image after power-off must hold all eight. Restores whose devices
// differ from the snapshot's (no disk, a read-only disk, another image,
// and for the run whose disk is direct=on, the disk without it) are
// refused with an error that names the difference.
func TestVirtioSnapshot(t *testing.T) {
	needLinux(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	initrd := virtioInitrd(t, virtioTickInit)
	const blk64 = 64 << 10
	pa := pattern("vda", vdaSize)
	tick := func(i int) string { return fmt.Sprintf("virtio-tick %d %s", i, sum(pa[i*blk64:(i+1)*blk64])) }
	// Each accelerator, and the first once more with the disk opened
	// direct=on (O_DIRECT), which a restore must give again.
	type config struct {
		acc    []string
		direct bool
	}
	var configs []config
	for i, acc := range accels(t) {
		configs = append(configs, config{acc: acc})
		if i == 0 {
			configs = append(configs, config{acc: acc, direct: true})
		}
	}
	for _, cfg := range configs {
		acc, name := cfg.acc, accelName(cfg.acc)
		if cfg.direct {
			name += "-direct"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			vda, other := filepath.Join(dir, "vda.img"), filepath.Join(dir, "other.img")
			sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			if err := os.WriteFile(other, pa[:vdaSize/2], 0o644); err != nil {
				t.Fatal(err)
			}
			disk, direct, infoDirect := "path="+vda+",serial=snap", "", ""
			if cfg.direct {
				vda = filepath.Join(directDir(t), "vda.img")
				plain := "path=" + vda + ",serial=snap"
				disk, direct, infoDirect = plain+",direct=on", plain, " direct=true"
			}
			fresh := func() {
				if err := os.WriteFile(vda, pa, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			p := bootGuestFresh(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", sock, "--disk", disk, "--rng", "--cmdline", "console=ttyS0 quiet panic=-1"),
				tick(3), fresh, nil)
			// The disk's workers that served the guest's I/O run under
			// a filter of their own, on top of the process filter.
			counts, base := threadFilters(t, p.cmd.Process.Pid)
			workers := 0
			for name, n := range counts {
				if strings.HasPrefix(name, "vda-io") {
					workers++
					if n != base+1 {
						t.Errorf("disk worker thread %s has %d seccomp filters, the main thread %d: want one more", name, n, base)
					}
				}
			}
			if workers == 0 {
				t.Errorf("no disk worker thread (vda-io*) among %v", counts)
			} else {
				t.Logf("seccomp filters per thread: %v (main thread %d)", counts, base)
			}
			// The control socket lists the PCI devices and what backs them.
			info := govmm(t, "info", "--api-socket", sock)
			for _, want := range []string{
				"pci:     3 devices",
				"  0000:00:00.0 1b36:0008 host bridge",
				"  0000:00:01.0 1af4:1042 virtio-blk path=" + vda + " bytes=" + strconv.Itoa(vdaSize) + ` readonly=false serial="snap"` + infoDirect,
				"  0000:00:02.0 1af4:1044 virtio-rng",
			} {
				if !strings.Contains(info.Stdout, want+"\n") {
					t.Errorf("govmm info lacks %q:\n%s", want, info)
				}
			}
			if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restoreArgs := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			for _, c := range []struct {
				name string
				args []string
				want string
			}{
				{"no devices", nil, "virtio devices"},
				{"no rng", []string{"--disk", disk}, "virtio devices"},
				{"read-only", []string{"--disk", disk + ",readonly=on", "--rng"}, "readonly=true"},
				{"other image", []string{"--disk", "path=" + other + ",serial=snap", "--rng"}, other},
			} {
				r := govmm(t, append(append([]string(nil), restoreArgs...), c.args...)...)
				if r.Code != 64 || !strings.Contains(r.Stderr, c.want) {
					t.Fatalf("restore with %s: want exit 64 naming %q, got\n%s", c.name, c.want, r)
				}
				t.Logf("refused (%s): %s", c.name, strings.TrimSpace(r.Stderr))
			}
			if direct != "" {
				r := govmm(t, append(append([]string(nil), restoreArgs...), "--disk", direct, "--rng")...)
				if r.Code != 64 || !strings.Contains(r.Stderr, "direct") {
					t.Fatalf("restore without direct=on: want exit 64 naming direct, got\n%s", r)
				}
				t.Logf("refused (without direct=on): %s", strings.TrimSpace(r.Stderr))
			}
			source := p.output()
			p = start(t, append(restoreArgs, "--disk", disk, "--rng")...)
			finishTickingCopies(t, p, source, vda, pa)
		})
	}
}

// finishTickingCopies waits for the restored guest of the virtio snapshot
// tests (migDiskInit's sibling: it copies 64 KiB block i to block 100+i
// and prints "virtio-tick i SUM" each second, eight times) to finish and
// power off, then checks the ticks after the source's last (source is its output) came after the restore and that the
// image holds the eight copies and nothing else changed.
func finishTickingCopies(t *testing.T, p *proc, source, vda string, pa []byte) {
	t.Helper()
	const blk64 = 64 << 10
	tick := func(i int) string { return fmt.Sprintf("virtio-tick %d %s", i, sum(pa[i*blk64:(i+1)*blk64])) }
	// The source may print a tick between the test's wait and the
	// snapshot: the restored guest goes on after the source's last.
	last := 0
	for _, m := range regexp.MustCompile(`virtio-tick (\d+) `).FindAllStringSubmatch(source, -1) {
		n, _ := strconv.Atoi(m[1])
		last = max(last, n)
	}
	if last >= 8 {
		t.Fatalf("the source printed all its ticks before the snapshot:\n%s", source)
	}
	p.waitFor("virtio-ticks-done", 4*time.Minute)
	if code := p.exit(time.Minute); code != 0 {
		t.Fatalf("restored guest: exit %d\n%s", code, p.output())
	}
	out := p.output()
	for i := last + 1; i <= 8; i++ {
		if !strings.Contains(out, tick(i)) {
			t.Errorf("restored guest: no %q:\n%s", tick(i), out)
		}
	}
	img, err := os.ReadFile(vda)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), pa...)
	for i := 1; i <= 8; i++ {
		copy(want[(100+i)*blk64:], pa[i*blk64:(i+1)*blk64])
	}
	if !bytes.Equal(img, want) {
		for i := 0; i < len(want); i += blk64 {
			if i+blk64 > len(img) || !bytes.Equal(img[i:i+blk64], want[i:i+blk64]) {
				t.Fatalf("vda differs from what the guest wrote in 64 KiB block %d", i/blk64)
			}
		}
	}
}
