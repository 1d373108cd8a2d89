package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// hotSnapInit is the guest of TestHotAddSnapshot. Before the snapshot it
// waits for the hot-added disk (vda) and network device (eth0), checks a
// file of the ext4 image, writes another, and pings L1 over the TAP; then
// it waits for a second disk (vdb), which the test hot-adds only after
// the restore. With vdb there, it reads vdb whole, checks the files of
// vda again from the device (its cache dropped), the one it wrote before
// the snapshot among them, writes and reads back another, pings L1
// again, and ejects vda through its ACPI slot.
var hotSnapInit = `#!/bin/busybox sh
` + virtioInitHead + `for m in failover net_failover virtio_net; do
	$B insmod /lib/modules/$m.ko || echo "hs-test: insmod $m failed"
done
echo 1 > /proc/sys/kernel/printk
waitfor() { i=0; while [ ! -e $1 ] && [ $i -lt $2 ]; do $B sleep 0.1; i=$((i+1)); done; }
sha() { $B sha256sum < $1 | $B cut -d' ' -f1; }
# A hot-added disk's node appears (device_add) before the disk can be
# opened (bdev_add, later in the kernel's device_add_disk; an open in
# between is ENXIO): wait for the node, then for a sector read.
waitblk() { waitfor $1 $2; i=0; until $B dd if=$1 of=/dev/null bs=512 count=1 2>/dev/null || [ $i -ge 100 ]; do $B sleep 0.1; i=$((i+1)); done; }
echo "hs-test: ready"
waitblk /dev/vda 3000
echo "hs-test: serial $($B cat /sys/block/vda/serial)"
$B mkdir -p /mnt
$B mount -t ext4 /dev/vda /mnt || echo "hs-test: mount failed"
echo "hs-test: a-sum $(sha /mnt/a.bin)"
$B head -c 65536 /mnt/a.bin > /mnt/new.bin
$B sync
$B umount /mnt
waitfor /sys/class/net/eth0 3000
$B ip link set lo up
$B ip addr add ` + netGuestIP + `/24 dev eth0
$B ip link set eth0 up
$B sleep 1
if $B ping -c 3 -W 10 ` + netHostIP + ` >/dev/null; then echo "hs-test: ping1 ok"; else echo "hs-test: ping1 failed"; fi
echo "hs-test: before done"
waitblk /dev/vdb 6000
echo "hs-test: vdb-size $($B cat /sys/block/vdb/size)"
echo "hs-test: vdb-sum $($B dd if=/dev/vdb bs=64k 2>/dd.err | $B sha256sum | $B cut -d' ' -f1)"
echo "hs-test: vdb-dd $($B tail -n 1 /dd.err)"
echo "hs-test: serial2 $($B cat /sys/block/vda/serial)"
echo 3 > /proc/sys/vm/drop_caches
$B mount -t ext4 /dev/vda /mnt || echo "hs-test: mount2 failed"
echo "hs-test: a-sum2 $(sha /mnt/a.bin)"
echo "hs-test: b-sum2 $(sha /mnt/b.bin)"
echo "hs-test: new-sum2 $(sha /mnt/new.bin)"
$B head -c 32768 /mnt/b.bin > /mnt/new2.bin
$B sync
$B umount /mnt
echo 3 > /proc/sys/vm/drop_caches
$B mount -t ext4 -o ro /dev/vda /mnt || echo "hs-test: remount failed"
echo "hs-test: new2-sum $(sha /mnt/new2.bin)"
$B umount /mnt
echo "hs-test: carrier $($B cat /sys/class/net/eth0/carrier)"
# The restoring govmm created the TAP again, with the host-side MAC the
# one before had (derived from the guest's): the guest's neighbour entry
# for L1, made before the snapshot, still names it. No flush: L1 sends
# nothing first, so a stale entry would lose this ping.
if $B ping -c 3 -W 10 ` + netHostIP + ` >/dev/null; then echo "hs-test: ping2 ok"; else echo "hs-test: ping2 failed"; fi
echo "hs-test: eth0 rx $($B cat /sys/class/net/eth0/statistics/rx_packets) tx $($B cat /sys/class/net/eth0/statistics/tx_packets) neigh $($B ip neigh show dev eth0)"
addr=$($B basename $($B dirname $($B readlink -f /sys/block/vda/device)))
slot=none
for s in /sys/bus/pci/slots/*; do [ "$($B cat $s/address).0" = "$addr" ] && slot=$s; done
echo "hs-test: vda-slot $addr $($B basename $slot)"
if echo 0 > $slot/power; then echo "hs-test: eject ok"; else echo "hs-test: eject failed"; fi
$B sleep 1
echo "hs-test: after-eject $([ -b /dev/vda ] && echo vda || echo gone) $([ -e /sys/bus/pci/devices/$addr ] && echo present || echo removed)"
echo "hs-test: done"
$B sleep 2
$B poweroff -f
`

// TestHotAddSnapshot hot-adds an ext4 disk and a network device to a
// Linux guest booted with neither, on each accelerator; the guest uses
// both (a file's checksum, a file written, a ping over the TAP). The
// disk's image path and serial hold commas (written ",," in add-disk's
// list, and so in the snapshot's record); the guest reads the serial
// before the snapshot and again, from the restored device, after. The VM
// is snapshotted and stopped, and a new govmm restores it from the
// snapshot alone (no --disk, no --net): it opens the recorded image and
// TAP itself and puts both devices back at their slots. A restore whose
// hot-added image is missing is refused first, naming the device, its
// slot and the path. In the restored VM a third device is hot-added
// (slot 3), the guest reads it, reads the disk again from the device
// (the file written before the snapshot among them), writes another,
// pings L1 again with the neighbour entry it made before the snapshot
// (the re-created TAP has the host-side MAC the first had), and ejects
// the first disk: govmm removes it.
func TestHotAddSnapshot(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, hotSnapInit)
	vdb := pattern("hs-vdb", vdbSize)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			needTun(t)
			dir := tempSocketDir(t)
			sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			img, img2 := filepath.Join(t.TempDir(), "hot,1.img"), filepath.Join(t.TempDir(), "vdb.img")
			fresh := hotAddImage(t, img)
			if err := os.WriteFile(img2, vdb, 0o644); err != nil {
				t.Fatal(err)
			}
			p := bootGuestFresh(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", sock, "--cmdline", "console=ttyS0 quiet panic=-1"),
				"hs-test: ready", fresh, nil)
			api := "--api-socket=" + sock
			r := govmm(t, "add-disk", api, "path="+strings.ReplaceAll(img, ",", ",,")+",serial=hs,,0")
			if r.Code != 0 || !strings.HasPrefix(r.Stdout, "0000:00:01.0 1af4:1042 virtio-blk") {
				t.Fatalf("add-disk: want the disk at slot 1, got %v\n%s", r, p.output())
			}
			r = govmm(t, "add-net", api, "tap="+netTap+",mac="+netMAC)
			if r.Code != 0 || !strings.HasPrefix(r.Stdout, "0000:00:02.0 1af4:1041 virtio-net") {
				t.Fatalf("add-net: want the network device at slot 2, got %v\n%s", r, p.output())
			}
			if !strings.Contains(r.Stdout, "(TAP created by govmm, host side "+netHostMAC+")") {
				t.Errorf("add-net created the TAP and does not say its host-side MAC %s: %q", netHostMAC, r.Stdout)
			}
			hostTap(t)
			macBefore := tapMAC(t)
			p.waitFor("hs-test: before done", 5*time.Minute)
			out := p.output()
			if got := guestValue(out, "hs-test", "serial"); got != "hs,0" {
				t.Errorf("before the snapshot the guest read the disk's serial %q, want hs,0", got)
			}
			if got, want := guestValue(out, "hs-test", "a-sum"), sum(hotAddFiles["a.bin"]); got != want {
				t.Errorf("before the snapshot the guest read a.bin with SHA-256 %q, want %s", got, want)
			}
			if !strings.Contains(out, "hs-test: ping1 ok") || strings.Contains(out, "mount failed") {
				t.Fatalf("before the snapshot: the guest's mount or ping failed:\n%s", out)
			}
			if r := govmm(t, "snapshot", api, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("snapshot of a VM with a hot-added disk and network device:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restore := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			// The recorded image missing: refused, naming the device,
			// its slot and the path.
			if err := os.Rename(img, img+".away"); err != nil {
				t.Fatal(err)
			}
			r = govmm(t, restore...)
			if r.Code != 64 || !strings.Contains(r.Stderr, "slot 1") || !strings.Contains(r.Stderr, img) || !strings.Contains(r.Stderr, "disk") {
				t.Errorf("restore without the hot-added image: want exit 64 naming the disk, slot 1 and %s, got\n%s", img, r)
			} else {
				t.Logf("refused (image missing): %s", strings.TrimSpace(r.Stderr))
			}
			if err := os.Rename(img+".away", img); err != nil {
				t.Fatal(err)
			}
			sock2 := filepath.Join(dir, "api2.sock")
			p = start(t, append(restore, "--api-socket", sock2)...)
			for i := 0; i < 1200; i++ { // the restore builds the VM, then serves the socket
				if _, err := os.Stat(sock2); err == nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			hostTap(t)
			if after := tapMAC(t); after != macBefore || after != netHostMAC {
				t.Errorf("the TAP the restore created has host-side MAC %s, the one before the snapshot %s, want both %s", after, macBefore, netHostMAC)
			}
			api2 := "--api-socket=" + sock2
			info := govmm(t, "info", api2)
			for _, want := range []string{"0000:00:01.0 1af4:1042 virtio-blk path=" + img, "0000:00:02.0 1af4:1041 virtio-net"} {
				if !regexp.MustCompile(regexp.QuoteMeta(want) + `.*\(hot-added\)`).MatchString(info.Stdout) {
					t.Errorf("the restored VM's info lacks %q (hot-added):\n%s", want, info)
				}
			}
			r = govmm(t, "add-disk", api2, "path="+img2+",readonly=on")
			if r.Code != 0 || !strings.HasPrefix(r.Stdout, "0000:00:03.0 1af4:1042 virtio-blk") {
				t.Fatalf("add-disk after the restore: want the disk at slot 3, got %v\n%s", r, p.output())
			}
			p.waitFor("hs-test: done", 5*time.Minute)
			out = p.output()
			for _, c := range []struct{ key, want string }{
				{"vdb-sum", sum(vdb)},
				{"serial2", "hs,0"},
				{"a-sum2", sum(hotAddFiles["a.bin"])},
				{"b-sum2", sum(hotAddFiles["b.bin"])},
				{"new-sum2", sum(hotAddFiles["a.bin"][:65536])},
				{"new2-sum", sum(hotAddFiles["b.bin"][:32768])},
				{"carrier", "1"},
				{"vda-slot", "0000:00:01.0 1"},
				{"after-eject", "gone removed"},
			} {
				if got := guestValue(out, "hs-test", c.key); got != c.want {
					t.Errorf("the restored guest's %s: %q, want %q", c.key, got, c.want)
				}
			}
			if t.Failed() {
				t.Logf("the restored guest's output:\n%s", out)
			}
			if !strings.Contains(out, "lladdr "+netHostMAC) {
				t.Errorf("the restored guest's neighbour entry for L1 does not name %s:\n%s", netHostMAC, out)
			}
			if !strings.Contains(out, "hs-test: ping2 ok") || !strings.Contains(out, "hs-test: eject ok") || regexp.MustCompile(`hs-test: .*failed`).MatchString(out) {
				t.Errorf("the restored guest's ping or eject failed:\n%s", out)
			}
			// govmm took the ejected disk off its bus; the other two stay.
			gone := false
			for i := 0; i < 100 && !gone; i++ {
				info = govmm(t, "info", api2)
				gone = info.Code == 0 && !strings.Contains(info.Stdout, "0000:00:01.0") && strings.Contains(info.Stdout, "0000:00:03.0")
				if !gone {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if !gone {
				t.Errorf("after the eject in the restored VM: want slot 1 empty and slot 3 taken:\n%s", info)
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("restored guest: exit %d\n%s", code, p.output())
			}
		})
	}
}

// hotMigInit is migDiskInit waiting up to five minutes for its disk,
// which TestHotAddMigration hot-adds once the guest runs.
var hotMigInit = strings.Replace(migDiskInit, "while [ ! -b /dev/vda ] && [ $i -lt 100 ]", "while [ ! -b /dev/vda ] && [ $i -lt 3000 ]", 1)

// TestHotAddMigration moves a Linux guest whose disk was hot-added live
// from KVM to mshvsim (--cpu x86-64-v2,-kvm,+tsc_deadline_timer, as
// TestVirtioLiveMigration does) while it writes to the disk and reads it
// back (migDiskInit). The destination is started with the boot-time
// devices alone (--rng): it opens the hot-added image (shared storage)
// from what the source's hello records and puts the disk at the same
// slot. After the move the guest finds every block it wrote and read as
// it was, and the image holds exactly the blocks the guest printed.
func TestHotAddMigration(t *testing.T) {
	kernel := linuxKernel(t)
	if hotMigInit == migDiskInit {
		t.Fatal("hotMigInit did not change migDiskInit's wait for its disk")
	}
	initrd := guestInitrd(t, hotMigInit, nil)
	pair := needAccels(t, "kvm", "mshvsim") // the move is from one to the other
	src, dst := pair[0], pair[1]
	const cpu = "x86-64-v2,-kvm,+tsc_deadline_timer"
	pa := pattern("vda", vdaSize)
	dir := tempSocketDir(t)
	img := filepath.Join(dir, "hot.img")
	sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
	args := append(append([]string{"run"}, src...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
		"--memory=512M", "--cpu", cpu, "--api-socket", sock, "--rng",
		"--cmdline", "console=ttyS0 quiet panic=-1 govmm.migsecs=40"+tscArgs(t, src, cpu))
	fresh := func() {
		if err := os.WriteFile(img, pa, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := bootGuestFresh(t, args, "mig-test: clock", fresh, nil)
	r := govmm(t, "add-disk", "--api-socket="+sock, "path="+img+",serial=hotmig")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "0000:00:02.0 1af4:1042 virtio-blk") {
		t.Fatalf("add-disk: want the disk at slot 2 (the entropy device has 1), got %v\n%s", r, s.output())
	}
	s.waitFor("mig-blk 3 ", 5*time.Minute)
	dsock := filepath.Join(dir, "dst.sock")
	d := start(t, append(append([]string{"migrate", "receive"}, dst...), "--listen", "unix:"+mig, "--rng", "--api-socket", dsock)...)
	waitPath(t, mig)
	migrateLive(t, sock, mig, s, d)
	info := govmm(t, "info", "--api-socket="+dsock)
	if want := "0000:00:02.0 1af4:1042 virtio-blk path=" + img; !regexp.MustCompile(regexp.QuoteMeta(want) + `.*\(hot-added\)`).MatchString(info.Stdout) {
		t.Errorf("the destination's info lacks %q (hot-added):\n%s", want, info)
	}
	written, after := checkDiskMigration(t, s, d, img, pa)
	t.Logf("the guest wrote %d blocks on the hot-added disk (%d after the move) and verified them", written, after)
}
