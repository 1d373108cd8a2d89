package e2e

import (
	"bytes"
	"context"
	bin "encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
	"govmm/internal/linuxguest"
	"govmm/internal/nested"
)

// vfioL1Env marks the L1 that TestVFIOEdu starts for itself: QEMU's edu
// device behind an emulated Intel IOMMU, with the VFIO modules loaded.
const vfioL1Env = "GOVMM_E2E_VFIO_L1"

// eduL1 is the nested VM a VFIO test needs (see
// shared/reference/nested-kvm.md): the IOMMU puts edu alone in a group.
// nvmeImage is the nvme device's backing file and nvmeROM its expansion
// ROM (on the host, L0's).
func eduL1(cmd []string, env []string, files []string, out io.Writer, timeout time.Duration, nvmeImage, nvmeROM string) nested.Config {
	return nested.Config{
		Command: cmd, Env: env, Files: files, Output: out, Timeout: timeout, IdleTimeout: 5 * time.Minute,
		Machine: "q35,kernel-irqchip=split",
		QEMUArgs: []string{"-device", "intel-iommu,intremap=on", "-device", "edu",
			"-drive", "file=" + nvmeImage + ",if=none,id=nv,format=raw", "-device", "nvme,drive=nv,serial=govmm-nvme,romfile=" + nvmeROM,
			// A virtio 1.x entropy device for its MSI-X vectors (vfioMSIX):
			// one message per request, DMA through the IOMMU, and no
			// quota timer (period, ms) to answer a request twice.
			"-device", "virtio-rng-pci,disable-legacy=on,iommu_platform=on,vectors=2,period=3600000",
			// QEMU's 82576, for its MSI with per-vector masking (vfioIGB);
			// no network behind it.
			"-device", "igb"},
		Append: "intel_iommu=on",
		Modules: []string{"drivers/vfio/vfio.ko", "drivers/vfio/vfio_iommu_type1.ko", "drivers/vfio/vfio_virqfd.ko",
			"drivers/vfio/pci/vfio-pci-core.ko", "drivers/vfio/pci/vfio-pci.ko"},
	}
}

// inVFIOL1 runs the calling test (by name) in an L1 with the edu device
// when this is not that L1, and reports whether the caller should go on
// (it is in that L1).
func inVFIOL1(t *testing.T) bool { return inVFIOL1On(t, "", nil) }

// inVFIOL1On is inVFIOL1 with L1 booted from another kernel (kernelDir,
// nested.Config.Linux) and its VFIO modules (modules), when
// kernelDir is set.
func inVFIOL1On(t *testing.T, kernelDir string, modules []string) bool {
	if kvmtest.InL1() && os.Getenv(vfioL1Env) == "1" {
		return true
	}
	if kvmtest.InL1() {
		t.Skip("runs in an L1 of its own, with an emulated IOMMU and QEMU's edu device, started from the host")
	}
	if _, err := nested.Find(); err != nil {
		if kvmtest.Required() {
			t.Fatalf("nested KVM for VFIO: %v", err)
		}
		t.Skipf("nested KVM for VFIO: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	timeout := 25 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - time.Minute
	}
	env := []string{vfioL1Env + "=1", binaryEnv + "=" + binary, kvmtest.RequireEnv + "=1"}
	files := []string{exe, binary}
	if k := os.Getenv(linuxKernelEnv); k != "" {
		files = append(files, k)
		env = append(env, linuxKernelEnv+"="+k)
	}
	// attempt runs the test binary in a fresh L1 with the devices.
	attempt := func(run string, timeout time.Duration) (string, nested.Result, error) {
		cmd := []string{exe, "-test.run=" + run, "-test.v=true", "-test.timeout=" + (timeout - 2*time.Minute).String()}
		var out bytes.Buffer
		w := io.MultiWriter(&out, prefixWriter{os.Stdout})
		// The nvme device's disk, new for each L1: a pattern in its first
		// MiBs (the guest reads it raw, then restores it after its file
		// system test, which a failure can cut short).
		dir := t.TempDir()
		img := filepath.Join(dir, "nvme.img")
		if err := os.WriteFile(img, pattern("nvme", nvmeRaw), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, nvmeSize); err != nil {
			t.Fatal(err)
		}
		rom := filepath.Join(dir, "nvme.rom")
		if err := os.WriteFile(rom, nvmeROMImage(), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := eduL1(cmd, env, files, w, timeout, img, rom)
		cfg.Dir = "/"
		if kernelDir != "" {
			cfg.Linux, cfg.Modules = kernelDir, modules
		}
		if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
			cfg.Programs = []string{"qemu-system-x86_64"} // the baseline: QEMU's own vfio-pci
		}
		res, err := nested.Run(context.Background(), cfg)
		return out.String(), res, err
	}
	ownL1(t, "L1 with edu", timeout, attempt)
	return false
}

// vfioGuest runs a bare-metal guest on accelerator acc with the device at
// addr passed through, its MSIs wired in order, and requires exit status
// 33 (the guest's OK) and govmm's log naming the order. opts are more
// options of the --device value (e.g. "iommu=iommufd").
func vfioGuest(t *testing.T, acc []string, guest, cmdline, addr, order string, opts ...string) Result {
	t.Helper()
	args := append([]string{"run"}, acc...)
	dev := "vfio=/sys/bus/pci/devices/" + addr + ",order=" + order
	for _, o := range opts {
		dev += "," + o
	}
	args = append(args, "--kernel", guest, "--cmdline", cmdline, "--serial", "stdio", "--cpus", "1",
		"--device", dev, "--log-level", "info")
	r := govmm(t, args...)
	t.Logf("guest:\n%s", r.Stdout)
	if r.Code != 0x10<<1|1 {
		t.Fatalf("%s guest: want exit 33 (its OK)\n%s", filepath.Base(guest), r)
	}
	if !strings.Contains(r.Stderr, "order="+order) {
		t.Errorf("govmm did not log order %s:\n%s", order, r.Stderr)
	}
	return r
}

// qemuRun is what a guest printed under QEMU and how QEMU exited: code is
// its exit status (the guest's debug-exit status), -1 when it did not
// exit by itself.
type qemuRun struct {
	stdout string
	code   int
	err    error
}

// qemuVFIOGuest runs a bare-metal guest under L1's QEMU 10 on KVM with
// the device at addr passed through by QEMU's own vfio-pci: the baseline
// the VFIO benchmarks compare govmm with. It skips the test when L1 has
// no QEMU.
func qemuVFIOGuest(t *testing.T, guest, cmdline, addr string) qemuRun {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no qemu-system-x86_64 in L1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "kvm", "-cpu", "host", "-M", "q35", "-m", "256M", "-nodefaults",
		"-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", guest, "-append", cmdline,
		"-device", "vfio-pci,host="+addr, "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	t.Logf("QEMU guest %s (%v):\n%s\n%s", filepath.Base(guest), err, out.String(), errb.String())
	r := qemuRun{stdout: out.String(), code: -1, err: err}
	if ee, ok := err.(*exec.ExitError); ok && ee.Exited() {
		r.code = ee.ExitCode()
	} else if err == nil {
		r.code = 0
	}
	return r
}

type prefixWriter struct{ w io.Writer }

func (p prefixWriter) Write(b []byte) (int, error) {
	p.w.Write(b)
	return len(b), nil
}

// pciDevice finds a PCI device by vendor and device ID in L1's sysfs and
// returns its address.
func pciDevice(t *testing.T, vendor, device string) string {
	t.Helper()
	ents, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range ents {
		v, _ := os.ReadFile(filepath.Join(d, "vendor"))
		id, _ := os.ReadFile(filepath.Join(d, "device"))
		if strings.TrimSpace(string(v)) == vendor && strings.TrimSpace(string(id)) == device {
			return filepath.Base(d)
		}
	}
	t.Fatalf("no PCI device %s:%s in L1", vendor, device)
	return ""
}

func writeSysfs(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v), 0o200); err != nil {
		t.Fatalf("echo %s > %s: %v", v, path, err)
	}
}

// bindVFIO binds the device to vfio-pci (driver_override, then a probe).
func bindVFIO(t *testing.T, addr string) {
	t.Helper()
	dev := "/sys/bus/pci/devices/" + addr
	if l, err := os.Readlink(dev + "/driver"); err == nil {
		if filepath.Base(l) == "vfio-pci" {
			return
		}
		writeSysfs(t, dev+"/driver/unbind", addr)
	}
	writeSysfs(t, dev+"/driver_override", "vfio-pci")
	writeSysfs(t, "/sys/bus/pci/drivers_probe", addr)
	if l, err := os.Readlink(dev + "/driver"); err != nil || filepath.Base(l) != "vfio-pci" {
		t.Fatalf("%s did not bind to vfio-pci (driver link %q, %v)", addr, l, err)
	}
}

func unbind(t *testing.T, addr string) {
	t.Helper()
	dev := "/sys/bus/pci/devices/" + addr
	if _, err := os.Readlink(dev + "/driver"); err == nil {
		writeSysfs(t, dev+"/driver/unbind", addr)
	}
}

// TestVFIO runs, in an L1 of its own with an emulated IOMMU, QEMU's edu,
// nvme, virtio-rng and igb devices passed through: see vfioEdu, vfioNVMe,
// vfioMSIX and vfioIGB, and the MSI rate benchmark vfioRate.
func TestVFIO(t *testing.T) {
	if !inVFIOL1(t) {
		return
	}
	if _, err := os.Stat("/dev/vfio/vfio"); err != nil {
		t.Fatalf("/dev/vfio/vfio: %v", err)
	}
	t.Run("edu", vfioEdu)
	t.Run("nvme", vfioNVMe)
	t.Run("msix", vfioMSIX)
	t.Run("igb", vfioIGB)
	t.Run("rate", vfioRate)
}

// msiCapability returns the control register of the MSI capability in the
// configuration space of the device at addr as L1's kernel sees it
// (sysfs), and whether it has one.
func msiCapability(t *testing.T, addr string) (uint16, bool) {
	t.Helper()
	cfg, err := os.ReadFile("/sys/bus/pci/devices/" + addr + "/config")
	if err != nil || len(cfg) < 256 {
		t.Fatalf("configuration space of %s: %d bytes, %v", addr, len(cfg), err)
	}
	seen := map[int]bool{}
	for p := int(cfg[0x34]) &^ 3; p >= 0x40 && p < 0xff && !seen[p]; p = int(cfg[p+1]) &^ 3 {
		seen[p] = true
		if cfg[p] == 0x05 {
			return bin.LittleEndian.Uint16(cfg[p+2:]), true
		}
	}
	return 0, false
}

// vfioIGB passes QEMU's igb (82576) through to the igb guest on every
// accelerator, in both MSI set-up orders. Its MSI capability has one
// vector and per-vector masking, which govmm shows the guest. The guest
// raises 2000 interrupts one at a time as fast as they arrive, masking
// the vector through govmm's mask bit for one in 8 (pending bit polled
// to 1 under the mask, one interrupt at the unmask, every third window
// two messages that must arrive as one) and racing a mask and unmask
// against another one in 8. Every interrupt must arrive exactly once:
// received equals sent, every masked window's pending bit read 1 and
// cleared at the unmask, nothing came under the mask, and every
// interrupt found its cause in the device.
func vfioIGB(t *testing.T) {
	addr := pciDevice(t, "0x8086", "0x10c9")
	ctl, ok := msiCapability(t, addr)
	if !ok || ctl&0x100 == 0 {
		t.Fatalf("igb at %s: MSI control %#x (capability found %v), want per-vector masking (bit 8, lspci's Maskable+)", addr, ctl, ok)
	}
	t.Logf("igb at %s in L1: MSI control %#x: Maskable+, 64bit%s", addr, ctl, map[bool]string{true: "+", false: "-"}[ctl&0x80 != 0])
	bindVFIO(t, addr)
	guest := guestPath(t, "igb")
	const n = 2000
	for _, acc := range accels(t) {
		for _, order := range []string{"route-first", "irqs-first"} {
			t.Run(accelName(acc)+"/"+order, func(t *testing.T) {
				start := time.Now()
				r := vfioGuest(t, acc, guest, fmt.Sprintf("n=%d k=8", n), addr, order)
				if f := fields(t, r.Stdout, "igb", "found"); f["maskable"] != "1" {
					t.Errorf("the guest's MSI capability does not show per-vector masking: %v", f)
				}
				m := fields(t, r.Stdout, "igb", " sent=")
				want := strconv.Itoa(n)
				if m["sent"] != want || m["recv"] != want {
					t.Errorf("MSI: sent %s, received %s; want %d each", m["sent"], m["recv"], n)
				}
				if m["masked"] == "" || m["masked"] == "0" || m["pending"] != m["masked"] || m["coalesced"] == "0" || m["races"] == "0" {
					t.Errorf("MSI masking: %s masked windows, %s with the pending bit set, %s coalesced, %s races: want every window's bit set and some of each",
						m["masked"], m["pending"], m["coalesced"], m["races"])
				}
				for _, k := range []string{"leaks", "stuck", "lost", "nocause"} {
					if m[k] != "0" {
						t.Errorf("MSI: %s=%s, want 0", k, m[k])
					}
				}
				t.Logf("MSI under per-vector masking on %s, order %s: raise to interrupt %s us unmasked, %s us per raise over the loop (%s masked windows, %s coalesced, %s races); guest run %v",
					accelName(acc), order, m["us_per_plain"], m["us_per_irq"], m["masked"], m["coalesced"], m["races"], time.Since(start).Round(10*time.Millisecond))
			})
		}
	}
}

// vfioMSIX passes QEMU's virtio-rng-pci through to the msix guest on
// every accelerator, in both MSI set-up orders. The guest makes 1000
// requests, each answered with one used buffer and one message on MSI-X
// vector 0 or 1, one at a time as fast as they arrive, while it masks
// vectors (by their mask bit and by the function mask), reads the PBA
// under the mask, lets two messages into one mask window, and masks and
// unmasks a vector with a message in flight. Every interrupt must arrive
// exactly once: received equals sent, the PBA bit of every masked window
// read 1 and cleared at the unmask, nothing came under a mask.
func vfioMSIX(t *testing.T) {
	addr := pciDevice(t, "0x1af4", "0x1044")
	bindVFIO(t, addr)
	guest := guestPath(t, "msix")
	const n = 1000
	for _, acc := range accels(t) {
		for _, order := range []string{"route-first", "irqs-first"} {
			t.Run(accelName(acc)+"/"+order, func(t *testing.T) {
				r := vfioGuest(t, acc, guest, fmt.Sprintf("n=%d k=8", n), addr, order)
				m := fields(t, r.Stdout, "msix", " sent=")
				want := strconv.Itoa(n)
				if m["sent"] != want || m["recv"] != want {
					t.Errorf("MSI-X: sent %s, received %s; want %d each", m["sent"], m["recv"], n)
				}
				if m["masked"] == "" || m["masked"] == "0" || m["pba"] != m["masked"] || m["coalesced"] == "0" || m["races"] == "0" {
					t.Errorf("MSI-X masking: %s masked windows, %s with the PBA bit set, %s coalesced, %s races: want every window's bit set and some of each",
						m["masked"], m["pba"], m["coalesced"], m["races"])
				}
				// early: an interrupt before the first request (a message
				// an earlier guest left in the device); extra: one beyond
				// a vector's requests, which the guest prints with the
				// kind of window that came before it.
				for _, k := range []string{"leaks", "stuck", "lost", "early", "extra"} {
					if m[k] != "0" {
						t.Errorf("MSI-X: %s=%s, want 0", k, m[k])
					}
				}
				t.Logf("MSI-X under masking: %s us per interrupt on %s, order %s (%s masked windows, %s coalesced, %s races)",
					m["us_per_irq"], accelName(acc), order, m["masked"], m["coalesced"], m["races"])
			})
		}
	}
}

// vfioEdu passes QEMU's edu device through to the edu guest on every
// accelerator, in both MSI set-up orders, and checks what the guest saw:
// the identification register, liveness (~X), the factorial, 20 INTx
// interrupts through the IOAPIC and VFIO's unmask eventfd, 200 MSIs
// each received and acknowledged exactly once, a factorial ending in an
// MSI, and DMA both ways through the IOMMU with the contents compared.
// Then the refusals: a device bound to no driver, a missing device, a
// snapshot of a VM with the device.
func vfioEdu(t *testing.T) {
	addr := pciDevice(t, "0x1234", "0x11e8")
	bindVFIO(t, addr)
	guest := guestPath(t, "edu")
	const n = 200
	perMSI := map[string]string{}
	for _, acc := range accels(t) {
		for _, order := range []string{"route-first", "irqs-first"} {
			t.Run(accelName(acc)+"/"+order, func(t *testing.T) {
				r := vfioGuest(t, acc, guest, fmt.Sprintf("n=%d", n), addr, order)
				us := checkEdu(t, r, n)
				t.Logf("MSI round trip (raise, interrupt, ack) %s us on %s, order %s", us, accelName(acc), order)
				perMSI[accelName(acc)+"/"+order] = us
			})
		}
	}

	// The same guest and device under QEMU's vfio-pci on the same nested
	// KVM: the baseline for the MSI round trip. INTx is skipped (the
	// guest computes its GSI by govmm's _PRT rule, not q35's).
	t.Run("qemu-baseline", func(t *testing.T) {
		out := qemuVFIOGuest(t, guest, fmt.Sprintf("n=%d intx=0", n), addr)
		if out.code != 0x10<<1|1 {
			t.Fatalf("edu guest under QEMU: want exit 33 (EDU_OK), got %d (%v)", out.code, out.err)
		}
		m := fields(t, out.stdout, "edu", "msi n=")
		if m["irqs"] != strconv.Itoa(n) {
			t.Errorf("QEMU: %v", m)
		}
		perMSI["qemu"] = m["us_per_msi"]
		t.Logf("MSI round trip, us (same L1, side by side): %v", perMSI)
	})

	t.Run("snapshot-refused", func(t *testing.T) {
		dir := t.TempDir() // the socket's directory: Landlock lets snapshots go below it
		sock := filepath.Join(dir, "api.sock")
		p := start(t, "run", "--accel=kvm", "--kernel", guest, "--cmdline", "n=5 hold=1", "--serial", "stdio",
			"--device", "vfio="+addr, "--api-socket", sock)
		p.waitFor("edu: holding", 2*time.Minute)
		r := govmm(t, "snapshot", "--api-socket", sock, "--dir", filepath.Join(dir, "snap"))
		if r.Code == 0 || !strings.Contains(r.Stderr+r.Stdout, "VFIO") || !strings.Contains(r.Stderr+r.Stdout, addr) {
			t.Fatalf("snapshot of a VM with a VFIO device: want a refusal naming %s\n%s", addr, r)
		}
		t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
		r = govmm(t, "info", "--api-socket", sock)
		if r.Code != 0 {
			t.Fatalf("the VM did not survive the refused snapshot:\n%s", r)
		}
		// info lists the passed-through device with its host address.
		if !regexp.MustCompile(`(?m)^  0000:00:0[1-9a-f]\.0 1234:11e8 vfio ` + regexp.QuoteMeta(addr) + `$`).MatchString(r.Stdout) {
			t.Errorf("govmm info does not list the VFIO device %s (edu, 1234:11e8):\n%s", addr, r.Stdout)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, c := range []struct {
			name, dev, want string
			setup           func()
		}{
			{"missing", "vfio=/sys/bus/pci/devices/0000:00:1e.7", "no such PCI device", nil},
			{"bad-path", "vfio=/tmp/x", "give /sys/bus/pci/devices/DDDD:BB:DD.F", nil},
			// This L1's kernel (Debian's 6.1) has no iommufd.
			{"no-iommufd", "vfio=" + addr + ",iommu=iommufd", "/dev/iommu is missing", nil},
			{"no-driver", "vfio=" + addr, "bound to no driver", func() { unbind(t, addr) }},
		} {
			if c.setup != nil {
				c.setup()
			}
			r := govmm(t, "run", "--accel=kvm", "--kernel", guest, "--device", c.dev)
			if r.Code != 64 || !strings.Contains(r.Stderr, c.want) {
				t.Errorf("%s: want exit 64 and %q\n%s", c.name, c.want, r)
			}
			t.Logf("%s: %s", c.name, strings.TrimSpace(r.Stderr))
		}
		bindVFIO(t, addr)
	})
}

// The nvme disk: 64 MiB, of which the first 4 MiB hold a pattern.
const (
	nvmeSize = 64 << 20
	nvmeRaw  = 4 << 20
)

// nvmeInit is the Linux guest's /init for vfioNVMe: read the disk's
// pattern raw and keep it, make an ext2 file system, write a file, read
// it back after a remount with the page cache dropped, then put the
// pattern back (so that the next boot finds the disk as the host wrote
// it) and read it once more.
const nvmeInit = `#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /mnt /tmp
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
$B mount -t tmpfs tmpfs /tmp
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 300 ]; do $B sleep 0.1; i=$((i+1)); done
tok=$($B sed -n 's/.*govmm\.token=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "nvme-test: size $($B blockdev --getsize64 /dev/nvme0n1)"
$B dd if=/dev/nvme0n1 of=/tmp/raw bs=1M count=4 2>/dev/null
echo "nvme-test: raw-sum $($B sha256sum < /tmp/raw)"
$B mke2fs -q /dev/nvme0n1 || echo "nvme-test: mke2fs failed"
$B mount -t ext2 /dev/nvme0n1 /mnt || echo "nvme-test: mount failed"
$B dd if=/dev/urandom of=/tmp/f bs=64k count=48 2>/dev/null
echo "nvme-test: write-sum $($B sha256sum < /tmp/f)"
$B cp /tmp/f /mnt/f
$B mkdir -p /mnt/d && echo hello > /mnt/d/hello
$B sync
$B umount /mnt
echo 3 > /proc/sys/vm/drop_caches
$B mount -t ext2 /dev/nvme0n1 /mnt || echo "nvme-test: remount failed"
echo "nvme-test: read-sum $($B sha256sum < /mnt/f)"
echo "nvme-test: hello $($B cat /mnt/d/hello)"
$B umount /mnt
for d in /sys/bus/pci/devices/*; do
  [ "$($B cat $d/vendor)$($B cat $d/device)" = 0x1b360x0010 ] || continue
  echo 1 > $d/rom && echo "nvme-test: rom-sum $($B sha256sum < $d/rom)" && echo 0 > $d/rom || echo "nvme-test: rom failed"
done
echo "nvme-test: irq $($B grep -m1 nvme /proc/interrupts | $B tr -s ' ')"
echo "nvme-test: irq-mode $($B cat /sys/bus/pci/devices/*/msi_irqs/* 2>/dev/null | $B sort -u | $B tr '\n' ' ')"
$B dd if=/tmp/raw of=/dev/nvme0n1 bs=1M conv=fsync 2>/dev/null || echo "nvme-test: restore failed"
echo 3 > /proc/sys/vm/drop_caches
echo "nvme-test: restore-sum $($B dd if=/dev/nvme0n1 bs=1M count=4 2>/dev/null | $B sha256sum)"
cpus=$($B grep -c ^processor /proc/cpuinfo)
online=$($B cat /sys/devices/system/cpu/online)
cs=$($B cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
echo "govmm-userspace: token=$tok cpus=$cpus online=$online clocksource=$cs"
$B poweroff -f
`

// nvmeROMImage is the expansion ROM L1's nvme device gets (QEMU's
// romfile=), 8 KiB: a PCI ROM image header (55 AA, the PCI data structure
// at 0x1c naming 1b36:0010, one image of 16 512-byte blocks, the last),
// as Linux's pci_get_rom_size checks it before the guest's sysfs rom file
// shows any byte, then a pattern.
func nvmeROMImage() []byte {
	rom := pattern("nvme-rom", 8<<10)
	le := bin.LittleEndian
	rom[0], rom[1], rom[2] = 0x55, 0xaa, 16
	le.PutUint16(rom[0x18:], 0x1c)
	pcir := rom[0x1c:]
	copy(pcir, "PCIR")
	le.PutUint16(pcir[4:], 0x1b36)
	le.PutUint16(pcir[6:], 0x0010)
	le.PutUint16(pcir[8:], 0)                       // no vital product data
	le.PutUint16(pcir[10:], 0x18)                   // this structure's length
	pcir[12] = 0                                    // its revision
	pcir[13], pcir[14], pcir[15] = 0x02, 0x08, 0x01 // class: NVM Express
	le.PutUint16(pcir[16:], 16)                     // image length, 512-byte blocks
	le.PutUint16(pcir[18:], 1)                      // code revision
	pcir[20] = 3                                    // code type: EFI
	pcir[21] = 0x80                                 // the last image
	return rom
}

// nvmeLine returns the value after "nvme-test: key ".
func nvmeLine(console, key string) string { return guestValue(console, "nvme-test", key) }

// vfioNVMe passes QEMU's nvme device through to a Linux guest on every
// accelerator. Linux's own nvme driver reads the pattern the host wrote
// (device DMA into guest RAM), makes a file system, writes a file and
// reads it back after a remount with its cache dropped, and restores the
// pattern. QEMU's nvme has MSI-X and no MSI, so the driver runs on the
// MSI-X vectors govmm emulates.
func vfioNVMe(t *testing.T) {
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	addr := pciDevice(t, "0x1b36", "0x0010")
	bindVFIO(t, addr)
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := linuxguest.WriteInitramfsWith(initrd, nvmeInit); err != nil {
		t.Fatal(err)
	}
	want := sum(pattern("nvme", nvmeRaw))
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			args := append(append([]string(nil), acc...), "--device", "vfio="+addr)
			res := bootRetryingSubstrate(t, linuxguest.Boot{Govmm: binary, Accel: args, Kernel: kernel, Initrd: initrd, CPUs: 1,
				Token: "nvme-" + accelName(acc), Timeout: 4 * time.Minute, LogLevel: "info"})
			c := res.Console
			var lines []string
			for _, l := range strings.Split(c, "\n") {
				if strings.Contains(l, "nvme-test:") {
					lines = append(lines, strings.TrimSpace(l))
				}
			}
			t.Logf("guest:\n%s", strings.Join(lines, "\n"))
			if m := regexp.MustCompile(`nvme-test: [a-z0-9]+ failed`).FindString(c); m != "" {
				t.Errorf("a step failed in the guest: %s", m)
			}
			for key, w := range map[string]string{
				"size": strconv.Itoa(nvmeSize), "raw-sum": want, "restore-sum": want, "hello": "hello",
				// The ROM read through the guest's expansion ROM BAR.
				"rom-sum": sum(nvmeROMImage()),
			} {
				if got := nvmeLine(c, key); got != w {
					t.Errorf("%s: %q, want %q", key, got, w)
				}
			}
			if ws, rs := nvmeLine(c, "write-sum"), nvmeLine(c, "read-sum"); ws == "" || ws != rs {
				t.Errorf("file written with sum %q, read back with %q", ws, rs)
			}
			// QEMU's nvme has MSI-X and no MSI: Linux must be on MSI-X.
			if mode := nvmeLine(c, "irq-mode"); mode != "msix" {
				t.Errorf("the nvme driver's interrupt mode is %q, want msix", mode)
			}
			t.Logf("nvme interrupt: %s", nvmeLine(c, "irq"))
		})
	}
}

// checkEdu checks what the edu guest (run with n MSIs) saw, and returns
// its MSI round trip in microseconds.
func checkEdu(t *testing.T, r Result, n int) string {
	t.Helper()
	f := fields(t, r.Stdout, "edu", "found")
	if id, _ := strconv.ParseUint(strings.TrimPrefix(f["id"], "0x"), 16, 32); id&0xff != 0xed {
		t.Errorf("identification register %s, want 0x..ed", f["id"])
	}
	if f := fields(t, r.Stdout, "edu", "liveness"); f["ok"] != "5" {
		t.Errorf("liveness: %v", f)
	}
	if f := fields(t, r.Stdout, "edu", "factorial"); f["ok"] != "5" {
		t.Errorf("factorial: %v", f)
	}
	if f := fields(t, r.Stdout, "edu", "intx"); f["irqs"] != "20" || f["acks"] != "20" {
		t.Errorf("INTx: %v, want 20 interrupts each acknowledged", f)
	}
	m := fields(t, r.Stdout, "edu", "msi n=")
	want := strconv.Itoa(n)
	if m["sent"] != want || m["irqs"] != want || m["acks"] != want {
		t.Errorf("MSIs: sent %s, received %s, acknowledged %s; want %d each", m["sent"], m["irqs"], m["acks"], n)
	}
	if f := fields(t, r.Stdout, "edu", "factirq"); f["irqs"] != "1" || f["fact"] != "5040" {
		t.Errorf("factorial interrupt: %v", f)
	}
	if f := fields(t, r.Stdout, "edu", "dma"); f["to"] != "1" || f["from"] != "1" || f["same"] != "1" {
		t.Errorf("DMA: %v", f)
	}
	if !strings.Contains(r.Stderr, "BAR mapped into the guest") {
		t.Errorf("edu's BAR 0 was not mapped into the guest (trapped instead):\n%s", r.Stderr)
	}
	return m["us_per_msi"]
}
