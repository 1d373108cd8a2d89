package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
)

// hotAddImageEnv names the ext4 image TestHotAddLinux hot-adds, built on
// the host (mke2fs -d, which L1's busybox lacks) and copied into L1 with
// the other GOVMM_* paths.
const hotAddImageEnv = "GOVMM_E2E_HOTADD_IMG"

// The files of the hot-added ext4 image.
var hotAddFiles = map[string][]byte{
	"a.bin": pattern("hotadd-a", 1<<20),
	"b.bin": pattern("hotadd-b", 100<<10),
}

func init() {
	if kvmtest.InL1() || os.Getenv(hotAddImageEnv) != "" {
		return
	}
	mkfs, err := exec.LookPath("mke2fs")
	if err != nil {
		return // the test says so
	}
	src, err := os.MkdirTemp("", "govmm-e2e-hotadd-")
	if err != nil {
		return
	}
	defer os.RemoveAll(src)
	for name, b := range hotAddFiles {
		if os.WriteFile(filepath.Join(src, name), b, 0o644) != nil {
			return
		}
	}
	img := filepath.Join(os.TempDir(), "govmm-e2e-hotadd-ext4.img")
	os.Remove(img)
	if out, err := exec.Command(mkfs, "-q", "-F", "-t", "ext4", "-d", src, img, "16M").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: mke2fs for the hot-add image: %v\n%s", err, out)
		return
	}
	os.Setenv(hotAddImageEnv, img)
}

// hotAddInit waits for a disk to appear, mounts it, checks its files,
// writes one, syncs and reads it back from the device, ejects the disk
// through its ACPI slot, then waits for a network device and pings L1.
var hotAddInit = `#!/bin/busybox sh
` + virtioInitHead + `for m in failover net_failover virtio_net; do
	$B insmod /lib/modules/$m.ko || echo "hotadd-test: insmod $m failed"
done
echo "hotadd-test: boot-vda $([ -b /dev/vda ] && echo yes || echo no)"
echo "hotadd-test: ready"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 3000 ]; do $B sleep 0.1; i=$((i+1)); done
` + vdaOpens + `$B mkdir -p /mnt
$B mount -t ext4 /dev/vda /mnt || echo "hotadd-test: mount failed"
echo "hotadd-test: a-sum $($B sha256sum < /mnt/a.bin)"
echo "hotadd-test: b-sum $($B sha256sum < /mnt/b.bin)"
$B head -c 65536 /mnt/a.bin > /mnt/new.bin
$B sync
$B umount /mnt
echo 3 > /proc/sys/vm/drop_caches
$B mount -t ext4 -o ro /dev/vda /mnt || echo "hotadd-test: remount failed"
echo "hotadd-test: new-sum $($B sha256sum < /mnt/new.bin)"
$B umount /mnt
addr=$($B basename $($B dirname $($B readlink -f /sys/block/vda/device)))
slot=none
for s in /sys/bus/pci/slots/*; do [ "$($B cat $s/address).0" = "$addr" ] && slot=$s; done
echo "hotadd-test: disk-slot $addr $($B basename $slot)"
echo "hotadd-test: disk done"
if echo 0 > $slot/power; then echo "hotadd-test: eject ok"; else echo "hotadd-test: eject failed"; fi
$B sleep 1
echo "hotadd-test: after-eject $([ -b /dev/vda ] && echo vda || echo gone) $([ -e /sys/bus/pci/devices/$addr ] && echo present || echo removed)"
echo "hotadd-test: waiting for the network device"
` + ethUp(3000) + `$B sleep 1
echo "hotadd-test: mac $($B cat /sys/class/net/eth0/address)"
if $B ping -c 3 -W 10 ` + netHostIP + ` >/dev/null; then echo "hotadd-test: ping ok"; else echo "hotadd-test: ping failed"; fi
echo "hotadd-test: net done"
$B sleep 5
echo "hotadd-test: done"
$B poweroff -f
`

// hotAddImage returns a function that writes a fresh copy of the ext4
// image the hot-add tests use (hotAddImageEnv) to dst, for each boot.
func hotAddImage(t *testing.T, dst string) func() {
	t.Helper()
	src := os.Getenv(hotAddImageEnv)
	if src == "" {
		t.Fatalf("%s is not set: the host needs mke2fs (e2fsprogs) to build the ext4 image", hotAddImageEnv)
	}
	return func() {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHotAddLinux boots Linux with no disk and no network device, on each
// accelerator, and hot-adds them through the control socket (govmm
// add-disk, add-net: the client opens the image and the TAP and passes
// the descriptors). Linux's acpiphp finds each through the DSDT's slot and
// GPE: the guest mounts the ext4 image, checks its files' checksums,
// writes one, syncs and reads it back from the device, then ejects the
// disk through /sys/bus/pci/slots (the VMM removes it and its worker
// threads end); the network device comes to the slot the disk left, and
// the guest pings L1 through the TAP. A hot-add while paused is refused;
// a snapshot with the disk hot-added is taken and the VM runs on.
func TestHotAddLinux(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, hotAddInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			needTun(t)
			dir := tempSocketDir(t)
			sock, img := filepath.Join(dir, "api.sock"), filepath.Join(t.TempDir(), "hot.img")
			fresh := hotAddImage(t, img)
			p := bootGuestFresh(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", sock, "--cmdline", "console=ttyS0 quiet panic=-1"),
				"hotadd-test: ready", fresh, nil)
			if !strings.Contains(p.output(), "hotadd-test: boot-vda no") {
				t.Fatalf("the guest has a disk before the hot-add:\n%s", p.output())
			}
			api := "--api-socket=" + sock
			if r := govmm(t, "pause", api); r.Code != 0 {
				t.Fatal(r)
			}
			if r := govmm(t, "add-disk", api, "path="+img); r.Code == 0 || !strings.Contains(r.Stderr, "paused") {
				t.Errorf("add-disk while paused: want a refusal that says so, got %v", r)
			}
			if r := govmm(t, "resume", api); r.Code != 0 {
				t.Fatal(r)
			}
			if r := govmm(t, "add-disk", api, "path="+dir+"/missing.img"); r.Code == 0 || !strings.Contains(r.Stderr, "missing.img") {
				t.Errorf("add-disk of a missing image: %v", r)
			}
			begin := time.Now()
			r := govmm(t, "add-disk", api, "path="+img+",serial=hot0")
			if r.Code != 0 {
				t.Fatalf("add-disk: %v\n%s", r, p.output())
			}
			t.Logf("add-disk returned after %v (the guest's driver bound): %s", time.Since(begin).Round(time.Millisecond), strings.TrimSpace(r.Stdout))
			if !regexp.MustCompile(`^0000:00:01\.0 1af4:1042 virtio-blk .*hot\.img.*\(hot-added\)`).MatchString(r.Stdout) {
				t.Errorf("add-disk printed %q, want slot 1's virtio-blk device", r.Stdout)
			}
			p.waitFor("hotadd-test: disk done", 5*time.Minute)
			out := p.output()
			for name, b := range hotAddFiles {
				if got := guestValue(out, "hotadd-test", strings.TrimSuffix(name, ".bin")+"-sum"); got != sum(b) {
					t.Errorf("the guest read %s with SHA-256 %q, the image has %s", name, got, sum(b))
				}
			}
			if got, want := guestValue(out, "hotadd-test", "new-sum"), sum(hotAddFiles["a.bin"][:65536]); got != want {
				t.Errorf("the file the guest wrote read back from the device with SHA-256 %q, want %s", got, want)
			}
			if strings.Contains(out, "mount failed") {
				t.Errorf("the guest could not mount the hot-added image:\n%s", out)
			}
			if got := guestValue(out, "hotadd-test", "disk-slot"); got != "0000:00:01.0 1" {
				t.Errorf("the disk's PCI address and ACPI slot: %q, want 0000:00:01.0 in slot 1", got)
			}
			// A snapshot of the VM with its hot-added disk is taken and
			// the VM runs on (TestHotAddSnapshot restores one).
			if r := govmm(t, "snapshot", api, "--dir="+filepath.Join(dir, "snap")); r.Code != 0 {
				t.Errorf("snapshot of a VM with a hot-added disk: %v", r)
			}
			p.waitFor("hotadd-test: after-eject", 3*time.Minute)
			// The whole line: the guest may be printing it still.
			p.waitFor("hotadd-test: waiting for the network device", time.Minute)
			out = p.output()
			if got := guestValue(out, "hotadd-test", "after-eject"); !strings.Contains(out, "hotadd-test: eject ok") || got != "gone removed" {
				t.Errorf("the guest's eject: %q\n%s", got, out)
			}
			// The VMM removes the device and its workers end.
			gone := false
			for i := 0; i < 100 && !gone; i++ {
				info := govmm(t, "info", api)
				gone = info.Code == 0 && !strings.Contains(info.Stdout, "virtio-blk")
				if !gone {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if !gone {
				t.Errorf("the ejected disk is still on the VMM's bus:\n%s", govmm(t, "info", api).Stdout)
			}
			for i := 0; i < 50; i++ {
				counts, _ := threadFilters(t, p.cmd.Process.Pid)
				left := 0
				for name := range counts {
					if strings.HasPrefix(name, "vda-io") {
						left++
					}
				}
				if left == 0 {
					break
				}
				if i == 49 {
					t.Errorf("the ejected disk's worker threads are still there: %v", counts)
				}
				time.Sleep(100 * time.Millisecond)
			}
			begin = time.Now()
			r = govmm(t, "add-net", api, "tap="+netTap+",mac="+netMAC)
			if r.Code != 0 {
				t.Fatalf("add-net: %v\n%s", r, p.output())
			}
			t.Logf("add-net returned after %v: %s", time.Since(begin).Round(time.Millisecond), strings.TrimSpace(r.Stdout))
			if !strings.HasPrefix(r.Stdout, "0000:00:01.0 1af4:1041 virtio-net") {
				t.Errorf("add-net printed %q, want a virtio-net device in slot 1, which the disk left", r.Stdout)
			}
			hostTap(t)
			p.waitFor("hotadd-test: net done", 5*time.Minute)
			// The new device's data path threads have their own
			// seccomp filters, as at boot (#16).
			checkDeviceThreads(t, p.cmd.Process.Pid, "net0-rx0", "net0-rxq0", "net0-tx0")
			info := govmm(t, "info", api)
			if !strings.Contains(info.Stdout, "0000:00:01.0 1af4:1041") || !strings.Contains(info.Stdout, "(hot-added)") {
				t.Errorf("govmm info does not list the hot-added network device:\n%s", info.Stdout)
			}
			p.waitFor("hotadd-test: done", 5*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("govmm exit %d\n%s", code, p.output())
			}
			out = p.output()
			if !strings.Contains(out, "hotadd-test: mac "+netMAC) || !strings.Contains(out, "hotadd-test: ping ok") {
				t.Errorf("the hot-added network device: want MAC %s and a ping to L1:\n%s", netMAC, out)
			}
		})
	}
}

// TestHotAddUnseen hot-adds a disk to a Linux guest whose ACPI PCI
// hotplug driver is off (acpiphp.disable=1), on each accelerator: the
// guest never enumerates the device, and add-disk says so after its
// --wait, naming the slot; the device stays there and the VM runs on.
// It is also what TestHotAddLinux would meet without the machine's hotplug
// (the guest would never see the disk).
func TestHotAddUnseen(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := virtioInitrd(t, `#!/bin/busybox sh
`+virtioInitHead+`echo "hotadd-test: ready"
$B sleep 600
`)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			dir := tempSocketDir(t)
			sock, img := filepath.Join(dir, "api.sock"), filepath.Join(t.TempDir(), "unseen.img")
			if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=1",
				"--memory=256M", "--api-socket", sock, "--cmdline", "console=ttyS0 quiet panic=-1 acpiphp.disable=1"),
				"hotadd-test: ready", nil)
			api := "--api-socket=" + sock
			r := govmm(t, "add-disk", api, "--wait=15s", "path="+img)
			if r.Code == 0 || !strings.Contains(r.Stderr, "has not bound a driver to it within 15s") || !strings.Contains(r.Stderr, "0000:00:01.0") {
				t.Fatalf("add-disk to a guest without ACPI PCI hotplug: want an error after 15s naming slot 1, got %v\n%s", r, p.output())
			}
			info := govmm(t, "info", api)
			if info.Code != 0 || !strings.Contains(info.Stdout, "state:   running") || !strings.Contains(info.Stdout, "0000:00:01.0 1af4:1042") {
				t.Errorf("after the unseen hot-add: %v", info)
			}
		})
	}
}
