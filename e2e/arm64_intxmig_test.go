package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// arm64INTxMigMoves is how many times TestARM64VirtioINTxMigration moves
// its guest, one govmm to the next, in one L1 boot (about 10 s a move on
// the nested substrate: 1.2-5 s of migration, then two ticks). Before
// the fix of issue #17's stall, 1 move in 7 lost the guest; 8 moves catch
// that with a chance of about 70%, and accel/kvmarm's
// TestKickCompletesMMIO catches its cause every time.
// GOVMM_INTXMIG_MOVES sets another number, for a longer loop.
const arm64INTxMigMoves = 8

func intxMigMoves(t *testing.T) int {
	t.Helper()
	v := os.Getenv("GOVMM_INTXMIG_MOVES")
	if v == "" {
		return arm64INTxMigMoves
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 500 {
		t.Fatalf("GOVMM_INTXMIG_MOVES=%q: want a number of moves from 1 to 500", v)
	}
	return n
}

// arm64INTxMigTickBase is where the migrating guest's ticks write their
// blocks (in 64 KiB blocks: 16 of them from 21 MiB, reused in turn).
const arm64INTxMigTickBase = 336

// arm64INTxMigInit is the migrating INTx guest's /init: the virtio modules,
// then ticks without end, each 64 KiB of /dev/hwrng (about a thousand
// virtio-rng requests, each completed by an INTx interrupt) written to
// vda, read back past the page cache and printed with the virtio
// interrupt count, as TestARM64VirtioINTx's ticks are. A monitor prints
// the interrupt count every 3 s, so a stalled guest shows whether
// interrupts still come; the hung-task timeout is 10 s, so a blocked
// reader's stack reaches the console soon.
var arm64INTxMigInit = arm64INTxPrelude + `irqs boot
[ -w /proc/sys/kernel/hung_task_timeout_secs ] && echo 10 > /proc/sys/kernel/hung_task_timeout_secs
echo "intx-test: rng-current $($B cat /sys/class/misc/hw_random/rng_current)"
( while true; do $B sleep 3; echo "intx-mon $($B cut -d' ' -f1 /proc/uptime) irqs=$(total)"; done ) &
i=1
while true; do
	$B head -c 65536 /dev/hwrng > /tmp/t
	b=$((` + strconv.Itoa(arm64INTxMigTickBase) + `+i%16))
	$B dd if=/tmp/t of=/dev/vda bs=64k seek=$b conv=fsync 2>/dev/null
	echo 3 > /proc/sys/vm/drop_caches
	echo "intx-tick $i $($B sha256sum < /tmp/t | $B cut -c1-64) $($B dd if=/dev/vda bs=64k skip=$b count=1 2>/dev/null | $B sha256sum | $B cut -c1-64) irqs=$(total)"
	i=$((i+1))
done
`

// arm64INTxMigShell defines the L1 shell functions of the migrating INTx
// test (g is govmm's path): ticks FILE counts the whole tick lines in a
// console log; waitticks FILE N SECONDS waits until it has N; stuck SOCK
// describes a VM whose guest stopped ticking: govmm info, then a snapshot
// (the VM keeps running) whose state file is printed in base64 and whose
// enabled queues' ring indexes are read from its memory file.
func arm64INTxMigShell(g string) string {
	return `ticks() { grep -c 'intx-tick [0-9]* [0-9a-f]* [0-9a-f]* irqs=' $1 2>/dev/null; }
waitticks() { i=0; while [ $i -lt $3 ] && [ "$(ticks $1)" -lt $2 ]; do sleep 1; i=$((i+1)); done; [ "$(ticks $1)" -ge $2 ]; }
stuck() {
	` + g + ` info --api-socket $1 | sed 's/^/l1-stuck-info: /'
	` + g + ` snapshot --api-socket $1 --dir /tmp/stuck; echo "l1: stuck snapshot exit=$?"
	echo "l1-stuck-state: $(base64 -w0 /tmp/stuck/state)"
	grep -ao '"size":[0-9]*,"ready":true,"desc":[0-9]*,"avail":[0-9]*,"used":[0-9]*' /tmp/stuck/state | tr -c '0-9\n' ' ' | while read s d a u; do
		echo "l1-stuck-ring: size $s avail $(od -An -tu2 -j $((a-0x40000000)) -N4 /tmp/stuck/memory) used_event $(od -An -tu2 -j $((a-0x40000000+4+2*s)) -N2 /tmp/stuck/memory) used $(od -An -tu2 -j $((u-0x40000000)) -N4 /tmp/stuck/memory) avail_event $(od -An -tu2 -j $((u-0x40000000+4+8*s)) -N2 /tmp/stuck/memory)"
	done
}
`
}

// TestARM64VirtioINTxMigration live-migrates the INTx guest of
// TestARM64VirtioINTx (pci=nomsi: virtio_pci takes INTA of the disk and
// virtio-rng, GIC SPIs behind KVM resample irqfds) again and again while
// it reads /dev/hwrng without pause: arm64INTxMigMoves moves, each from
// one govmm to a new govmm migrate receive over a Unix socket (migrate
// send --verify), and after each the guest must go on ticking (two whole
// ticks on the destination, each a thousand virtio-rng requests and their
// interrupts). A guest that stops ticking is described (govmm info, a
// snapshot's state and ring indexes) and the test fails.
func TestARM64VirtioINTxMigration(t *testing.T) {
	testARM64INTxMigration(t, intxMigMoves(t), "")
}

// testARM64INTxMigration is TestARM64VirtioINTxMigration with moves
// moves; L1 runs pre (shell lines, with the extra files in L1) first.
func testARM64INTxMigration(t *testing.T, moves int, pre string, extra ...string) {
	a := arm64L1(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "govmm-arm64")
	buildARM64(t, bin, "build", "./cmd/govmm")
	ar := arm64VirtioArchive(t, a)
	ar.Bytes("/init", 0o755, []byte(arm64INTxMigInit))
	initrd := writeInitrd(t, dir, ar)
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, pattern("arm64-"+t.Name(), arm64INTxDiskSize), 0o644); err != nil {
		t.Fatal(err)
	}

	g := bin
	devs := ` --disk path=` + disk + ` --rng`
	script := arm64TickShell + pre + arm64MigrateShell(g) + arm64INTxMigShell(g) + g + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M` + devs + ` --cmdline 'console=ttyAMA0 panic=-1 pci=nomsi' --serial file:/tmp/run1.log --api-socket /tmp/api1.sock --log-level info 2>/tmp/run1.err &
P=$!
waitfor /tmp/run1.log 'intx-tick 2 ' 300
k=1
while [ $k -le ` + strconv.Itoa(moves) + ` ]; do
	n=$((k+1))
	` + g + ` migrate receive --listen unix:/tmp/mig$n.sock` + devs + ` --serial file:/tmp/run$n.log --api-socket /tmp/api$n.sock --log-level info 2>/tmp/run$n.err &
	Q=$!
	echo "l1: move $k after tick $(ticks /tmp/run$k.log) of run$k"
	send /tmp/api$k.sock unix:/tmp/mig$n.sock $k
	reap $P 120; echo "l1: run$k exit=$?"
	P=$Q
	k=$n
	if waitticks /tmp/run$k.log 2 120; then echo "l1: move $((k-1)) ticking"; else echo "l1: move $((k-1)) stalled"; stuck /tmp/api$k.sock; break; fi
done
echo "l1: last run$k"
` + g + ` snapshot --api-socket /tmp/api$k.sock --dir /tmp/last --stop; echo "l1: last snapshot exit=$?"
reap $P 60; echo "l1: last exit=$?"
i=1; while [ $i -le $k ]; do sed "s/^/run$i| /" /tmp/run$i.log; sed "s/^/err$i| /" /tmp/run$i.err; i=$((i+1)); done
`
	start := time.Now()
	o := runARM64L1(t, script, 40*time.Minute, append([]string{bin, initrd, disk, a.Kernel}, extra...)...)
	t.Logf("L1 run took %v", time.Since(start).Round(time.Second))
	if m := regexp.MustCompile(`l1-stuck-state: (\S+)`).FindStringSubmatch(o); m != nil {
		if b, err := base64.StdEncoding.DecodeString(m[1]); err == nil {
			p := filepath.Join(os.TempDir(), fmt.Sprintf("govmm-intxmig-stuck-%d.state", time.Now().Unix()))
			if os.WriteFile(p, b, 0o644) == nil {
				t.Logf("the stalled VM's state file: %s", p)
			}
		}
	}
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: last snapshot exit=0"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "l1: timeout waiting") || regexp.MustCompile(`intx-test: .*failed`).MatchString(o) {
		t.Errorf("L1 or the guest reported a failure")
	}
	ok := 0
	for i := 1; i <= moves; i++ {
		if !strings.Contains(o, fmt.Sprintf("l1: send%d exit=0", i)) {
			t.Errorf("move %d: migrate send failed", i)
		}
		if strings.Contains(o, fmt.Sprintf("l1: move %d stalled", i)) {
			t.Errorf("move %d: the migrated guest stopped ticking (its description: the l1-stuck lines)", i)
			break
		}
		if !strings.Contains(o, fmt.Sprintf("l1: move %d ticking", i)) {
			t.Errorf("move %d: no report of the guest after it", i)
			break
		}
		ok++
	}
	sends := regexp.MustCompile(`l1-(send\d+): migrated: total ([0-9.]+) ms, downtime ([0-9.]+) ms, (\d+) bytes sent \((\d+) pages, (\d+) rounds, every page verified\)`).FindAllStringSubmatch(o, -1)
	if len(sends) != moves {
		t.Errorf("%d migration reports, want %d", len(sends), moves)
	}
	for _, m := range sends {
		t.Logf("%s: total %s ms, downtime %s ms, %s pages, %s rounds", m[1], m[2], m[3], m[5], m[6])
	}
	ticks := intxTicksOf(t, o)
	t.Logf("%d of %d moves went on ticking; %d ticks", ok, moves, len(ticks))
	if ok != moves {
		t.Errorf("%d of %d moves went on ticking", ok, moves)
	}
}
