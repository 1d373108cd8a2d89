package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stateTick is one "st: tick" line of TestARM64State's guest.
type stateTick struct {
	n      int
	uptime float64
	cpus   string
	cpu1   string
	disk   string
}

var stateTickLine = regexp.MustCompile(`(?m)^(run\d|all)\| st: tick (\d+) up ([0-9.]+) cpus (\S+) c1 (\S+) disk (\S*)\s*$`)

// stateTicks returns the complete tick lines of each run, in order.
func stateTicks(o string) map[string][]stateTick {
	out := map[string][]stateTick{}
	for _, m := range stateTickLine.FindAllStringSubmatch(o, -1) {
		n, _ := strconv.Atoi(m[2])
		up, _ := strconv.ParseFloat(m[3], 64)
		out[m[1]] = append(out[m[1]], stateTick{n: n, uptime: up, cpus: m[4], cpu1: m[5], disk: m[6]})
	}
	return out
}

// TestARM64State boots Linux on KVM/arm64 in the aarch64 L1 with 2 vCPUs,
// a disk and a control socket. The guest ticks: every tick writes its
// number to the disk (fsync), drops the page cache and reads it back, runs
// a program on CPU 1, and prints the number, its uptime, the CPUs online
// and what it read. Through the socket L1 reads govmm info, pauses the VM
// (no tick while paused) and resumes it, snapshots it while it ticks, lets
// it tick on, and kills the VMM (SIGKILL). govmm restore then starts the
// snapshot with the same disk: the restored guest must go on from the
// tick it was at (not restart), with an uptime no lower than the last
// tick's before the snapshot (the virtual counter did not go back), both
// CPUs online and working, and the disk reading back what it writes; its
// control socket answers info, pause and resume too, and a second
// snapshot with --stop ends it with status 0.
func TestARM64State(t *testing.T) {
	a := arm64L1(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "govmm-arm64")
	buildARM64(t, bin, "build", "./cmd/govmm")

	ar := arm64VirtioArchive(t, a)
	ar.Bytes("/init", 0o755, arm64TickInit("", ""))
	initrd := writeInitrd(t, dir, ar)
	disk := zeroDisk(t, dir, 1<<20)

	g := bin
	script := arm64TickShell + g + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --disk path=` + disk + ` --cmdline 'console=ttyAMA0 panic=-1 quiet' --serial file:/tmp/run1.log --api-socket /tmp/api1.sock 2>/tmp/run1.err &
P1=$!
waitfor /tmp/run1.log 'st: tick 3 ' 400
` + g + ` info --api-socket /tmp/api1.sock | sed 's/^/l1-info1: /'
` + g + ` pause --api-socket /tmp/api1.sock; echo "l1: pause exit=$?"
` + g + ` info --api-socket /tmp/api1.sock | grep '^state' | sed 's/^/l1-paused: /'
a=$(lasttick /tmp/run1.log); sleep 6; b=$(lasttick /tmp/run1.log)
echo "l1: ticks-while-paused $a $b"
` + g + ` resume --api-socket /tmp/api1.sock; echo "l1: resume exit=$?"
waitfor /tmp/run1.log "st: tick $((b+2)) " 120
m=$(lasttick /tmp/run1.log)
` + g + ` snapshot --api-socket /tmp/api1.sock --dir /tmp/snap; echo "l1: snapshot exit=$?"
n=$(lasttick /tmp/run1.log)
echo "l1: ticks-at-snapshot $m $n"
waitfor /tmp/run1.log "st: tick $((n+2)) " 120
kill -9 $P1; wait $P1; echo "l1: run1 exit=$?"
ls -ls /tmp/snap | sed 's/^/l1-snap: /'
` + g + ` restore --snapshot /tmp/snap --disk path=` + disk + ` --serial file:/tmp/run2.log --api-socket /tmp/api2.sock 2>/tmp/run2.err &
P2=$!
waitfor /tmp/run2.log 'st: tick' 120
k=$(lasttick /tmp/run2.log)
waitfor /tmp/run2.log "st: tick $((k+4)) " 120
` + g + ` info --api-socket /tmp/api2.sock | sed 's/^/l1-info2: /'
` + g + ` pause --api-socket /tmp/api2.sock; echo "l1: pause2 exit=$?"
` + g + ` info --api-socket /tmp/api2.sock | grep '^state' | sed 's/^/l1-paused2: /'
` + g + ` resume --api-socket /tmp/api2.sock; echo "l1: resume2 exit=$?"
k=$(lasttick /tmp/run2.log)
waitfor /tmp/run2.log "st: tick $((k+2)) " 120
` + g + ` snapshot --api-socket /tmp/api2.sock --dir /tmp/snap2 --stop; echo "l1: snapshot2 exit=$?"
wait $P2; echo "l1: run2 exit=$?"
echo "l1: snap2-state $([ -s /tmp/snap2/state ] && echo yes || echo no)"
echo "l1: image $(dd if=` + disk + ` bs=512 skip=8 count=1 2>/dev/null | head -c 11)"
` + dumpRunLogs(2)
	start := time.Now()
	o := runARM64L1(t, script, 35*time.Minute, bin, initrd, disk, a.Kernel)
	t.Logf("L1 run took %v", time.Since(start).Round(time.Second))
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: pause exit=0", "l1: resume exit=0", "l1: snapshot exit=0",
		"l1-paused: state:   paused", "l1-info1: state:   running", "l1-info1: cpus:    2", "l1-info2: cpus:    2",
		"l1: pause2 exit=0", "l1: resume2 exit=0", "l1-paused2: state:   paused", "l1: run1 exit=137",
		"l1: snapshot2 exit=0", "l1: run2 exit=0\n", "l1: snap2-state yes"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "l1: timeout waiting") || strings.Contains(o, "st: insmod") {
		t.Errorf("L1 or the guest reported a failure")
	}
	if !regexp.MustCompile(`l1-info1: +0000:00:01\.0 1af4:1042`).MatchString(o) {
		t.Errorf("govmm info does not list the disk at 00:01.0")
	}
	if f := strings.Fields(guestValue(o, "l1", "ticks-while-paused")); len(f) != 2 || f[0] != f[1] {
		t.Errorf("the guest ticked while paused: %v", f)
	}
	snapAt := strings.Fields(guestValue(o, "l1", "ticks-at-snapshot"))
	if len(snapAt) != 2 {
		t.Fatalf("no tick count around the snapshot")
	}
	before, _ := strconv.Atoi(snapAt[0])
	after, _ := strconv.Atoi(snapAt[1])
	ticks := stateTicks(o)
	r1, r2 := ticks["run1"], ticks["run2"]
	if len(r1) == 0 || len(r2) < 5 {
		t.Fatalf("%d ticks before the snapshot's restore, %d after (want 5 or more)", len(r1), len(r2))
	}
	first := r2[0]
	if first.n < before || first.n > after+1 {
		t.Errorf("the restored guest's first tick is %d; the snapshot was taken between ticks %d and %d", first.n, before, after)
	}
	var prev *stateTick
	for i := range r1 {
		if r1[i].n == first.n-1 {
			prev = &r1[i]
		}
	}
	if prev == nil {
		t.Errorf("run 1 has no tick %d before the restored guest's first", first.n-1)
	} else if first.uptime < prev.uptime {
		t.Errorf("time went backwards across the restore: tick %d at uptime %.2f, restored tick %d at %.2f", prev.n, prev.uptime, first.n, first.uptime)
	}
	checkTicks(t, "restored", r2)
	last := r2[len(r2)-1].n
	img := guestValue(o, "l1", "image")
	if n, err := strconv.Atoi(strings.TrimPrefix(img, "tick-")); err != nil || n < last {
		t.Errorf("the image holds %q after the restored guest's tick %d", img, last)
	}
	t.Logf("snapshot between ticks %d and %d; restored guest ticked %d to %d; uptime %.2f -> %.2f across the restore",
		before, after, first.n, last, func() float64 {
			if prev != nil {
				return prev.uptime
			}
			return 0
		}(), first.uptime)
}

// arm64TickInit is the /init of the ticking guests of TestARM64State and
// TestARM64Migration: it loads the virtio modules, waits for vda, and
// then ticks every half second: it writes tick-N to vda (fsync), drops
// the page cache and reads it back, runs a program on CPU 1, and prints N,
// its uptime, the CPUs online and what it read. setup runs once before
// the first tick, each in every tick after its line.
func arm64TickInit(setup, each string) []byte {
	return []byte(`#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
exec >/dev/console 2>&1
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
	$B insmod /lib/modules/$m.ko || echo "st: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
echo "st: ready cpus $($B cat /sys/devices/system/cpu/online)"
` + setup + `
i=0
while true; do
	i=$((i+1))
	$B printf 'tick-%06d\n' $i | $B dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null
	echo 3 >/proc/sys/vm/drop_caches
	d=$($B dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | $B head -c 11)
	c1=$($B taskset 2 $B echo ok 2>&1)
	echo "st: tick $i up $($B cut -d' ' -f1 /proc/uptime) cpus $($B cat /sys/devices/system/cpu/online) c1 ${c1:-none} disk $d"
` + each + `
	$B sleep 0.5
done
`)
}

// arm64TickShell starts the L1 scripts of the ticking guests' tests:
// waitfor FILE TEXT SECONDS, and lasttick FILE (the last tick number
// the guest printed there).
const arm64TickShell = `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
waitfor() { i=0; while [ $i -lt $3 ] && ! grep -q "$2" $1 2>/dev/null; do sleep 1; i=$((i+1)); done; grep -q "$2" $1 && echo "l1: saw [$2] after ${i}s" || echo "l1: timeout waiting for [$2] in $1"; }
lasttick() { sed -n 's/.*st: tick \([0-9]*\) .*/\1/p' $1 | tail -1; }
`

// checkTicks checks a run of ticks: consecutive numbers, uptime never
// lower than the tick before, CPUs 0-1 online and CPU 1 working, and the
// disk reading back what the tick wrote.
func checkTicks(t *testing.T, what string, ticks []stateTick) {
	t.Helper()
	for i, tk := range ticks {
		if i > 0 && (tk.n != ticks[i-1].n+1 || tk.uptime < ticks[i-1].uptime) {
			t.Errorf("%s ticks out of order: %+v after %+v", what, tk, ticks[i-1])
		}
		if tk.cpus != "0-1" || tk.cpu1 != "ok" {
			t.Errorf("%s tick %d: CPUs online %q, CPU 1 ran %q (want 0-1, ok)", what, tk.n, tk.cpus, tk.cpu1)
		}
		if want := fmt.Sprintf("tick-%06d", tk.n); tk.disk != want {
			t.Errorf("%s tick %d read %q back from the disk, want %q", what, tk.n, tk.disk, want)
		}
	}
}
