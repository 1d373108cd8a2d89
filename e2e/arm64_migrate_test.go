package e2e

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// arm64MigLine is the source's report of a live migration (govmm
// migrate send).
var arm64MigLine = regexp.MustCompile(`l1-(send\d): migrated: total ([0-9.]+) ms, downtime ([0-9.]+) ms, (\d+) bytes sent \((\d+) pages, (\d+) rounds, every page verified\)`)

// arm64MemLine is TestARM64Migration's guest's memory check of a tick.
var arm64MemLine = regexp.MustCompile(`(?m)^all\| st: mem (\d+) keep (\S+) prev (\S+)\s*$`)

// TestARM64Migration live-migrates an arm64 Linux guest twice inside the
// aarch64 L1: the ticking guest of TestARM64State (2 vCPUs, a disk, a
// tick every half second that writes, syncs and reads back the disk and
// runs on CPU 1), which also keeps a 4 MiB file of random bytes in RAM,
// writes 1 MiB of random bytes to a new file every tick and checks the
// file of two ticks before against its MD5, while a background loop
// rewrites 2 MiB of random bytes without pause. govmm migrate send moves
// it from the first govmm to a govmm migrate receive over a Unix socket,
// and from there to a third over TCP. Each source must exit with status
// 0 once its destination confirmed; the ticks of the three, joined, must
// be 1, 2, 3, ... with no gap or restart and an uptime that never goes
// back; every tick's disk read and memory checks must be right (the
// files written on a source read back right on its destination), and
// the third VM ends with snapshot --stop, status 0.
func TestARM64Migration(t *testing.T) {
	a := arm64L1(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "govmm-arm64")
	buildARM64(t, bin, "build", "./cmd/govmm")

	ar := arm64VirtioArchive(t, a)
	ar.Bytes("/init", 0o755, arm64TickInit(`$B dd if=/dev/urandom of=/keep bs=64k count=64 2>/dev/null
K=$($B md5sum /keep | $B cut -d' ' -f1)
echo "st: keep $K"
$B nice -n 19 $B sh -c 'while true; do /bin/busybox dd if=/dev/urandom of=/churn bs=64k count=32 2>/dev/null; done' &
`, `	$B dd if=/dev/urandom of=/t$i bs=64k count=16 2>/dev/null
	$B md5sum /t$i >/t$i.sum
	p=$((i-2))
	if [ -f /t$p ]; then r=$($B md5sum -c /t$p.sum >/dev/null 2>&1 && echo ok || echo bad); $B rm -f /t$p /t$p.sum; else r=none; fi
	k=$([ "$($B md5sum /keep | $B cut -d' ' -f1)" = "$K" ] && echo ok || echo bad)
	echo "st: mem $i keep $k prev $r"`))
	initrd := writeInitrd(t, dir, ar)
	disk := zeroDisk(t, dir, 1<<20)

	g := bin
	script := arm64TickShell + arm64MigrateShell(g) + g + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --disk path=` + disk + ` --cmdline 'console=ttyAMA0 panic=-1 quiet' --serial file:/tmp/run1.log --api-socket /tmp/api1.sock 2>/tmp/run1.err &
P1=$!
waitfor /tmp/run1.log 'st: mem 3 ' 400
` + g + ` migrate receive --listen unix:/tmp/mig1.sock --disk path=` + disk + ` --serial file:/tmp/run2.log --api-socket /tmp/api2.sock --log-level info 2>/tmp/run2.err &
P2=$!
echo "l1: tick-before-send1 $(lasttick /tmp/run1.log)"
send /tmp/api1.sock unix:/tmp/mig1.sock 1
reap $P1 120; echo "l1: run1 exit=$?"
waitfor /tmp/run2.log 'st: tick' 120
k=$(lasttick /tmp/run2.log)
waitfor /tmp/run2.log "st: mem $((k+3)) " 120
` + g + ` info --api-socket /tmp/api2.sock | sed 's/^/l1-info2: /'
` + g + ` migrate receive --listen tcp:127.0.0.1:7717 --cpus 2 --memory 512M --disk path=` + disk + ` --serial file:/tmp/run3.log --api-socket /tmp/api3.sock --log-level info 2>/tmp/run3.err &
P3=$!
echo "l1: tick-before-send2 $(lasttick /tmp/run2.log)"
send /tmp/api2.sock tcp:127.0.0.1:7717 2
reap $P2 120; echo "l1: run2 exit=$?"
waitfor /tmp/run3.log 'st: tick' 120
k=$(lasttick /tmp/run3.log)
waitfor /tmp/run3.log "st: mem $((k+3)) " 120
` + g + ` snapshot --api-socket /tmp/api3.sock --dir /tmp/snap3 --stop; echo "l1: snapshot3 exit=$?"
reap $P3 120; echo "l1: run3 exit=$?"
echo "l1: image $(dd if=` + disk + ` bs=512 skip=8 count=1 2>/dev/null | head -c 11)"
cat /tmp/run1.log /tmp/run2.log /tmp/run3.log | sed 's/^/all| /'
` + dumpRunLogs(3)
	start := time.Now()
	o := runARM64L1(t, script, 35*time.Minute, bin, initrd, disk, a.Kernel)
	t.Logf("L1 run took %v", time.Since(start).Round(time.Second))
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: send1 exit=0", "l1: run1 exit=0\n", "l1-info2: state:   running",
		"l1-info2: cpus:    2", "l1: send2 exit=0", "l1: run2 exit=0\n", "l1: snapshot3 exit=0", "l1: run3 exit=0\n"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "l1: timeout waiting") || strings.Contains(o, "st: insmod") {
		t.Errorf("L1 or the guest reported a failure")
	}
	if !regexp.MustCompile(`l1-info2: +0000:00:01\.0 1af4:1042`).MatchString(o) {
		t.Errorf("govmm info of the migrated VM does not list the disk at 00:01.0")
	}
	sends := arm64MigLine.FindAllStringSubmatch(o, -1)
	if len(sends) != 2 {
		t.Errorf("%d migration reports, want 2", len(sends))
	}
	for _, m := range sends {
		pages, _ := strconv.Atoi(m[5])
		rounds, _ := strconv.Atoi(m[6])
		if pages == 0 || rounds < 1 {
			t.Errorf("%s: %d pages in %d rounds", m[1], pages, rounds)
		}
		t.Logf("%s: total %s ms, downtime %s ms, %s bytes, %s pages, %s rounds", m[1], m[2], m[3], m[4], m[5], m[6])
	}

	ticks := stateTicks(o)
	all, r1, r2, r3 := ticks["all"], ticks["run1"], ticks["run2"], ticks["run3"]
	if len(r1) < 3 || len(r2) < 4 || len(r3) < 4 {
		t.Fatalf("ticks: %d on the first govmm, %d on the second, %d on the third (want 3, 4, 4 or more)", len(r1), len(r2), len(r3))
	}
	if all[0].n != 1 {
		t.Errorf("the guest's first tick is %d", all[0].n)
	}
	// The three consoles joined are one guest's: a line the source
	// began and the destination finished is whole there.
	checkTicks(t, "migrated guest's", all)
	if r2[0].n <= r1[len(r1)-1].n || r3[0].n <= r2[len(r2)-1].n {
		t.Errorf("a destination restarted the ticks: the first govmm ended at %d, the second ran %d-%d, the third from %d",
			r1[len(r1)-1].n, r2[0].n, r2[len(r2)-1].n, r3[0].n)
	}
	mems := arm64MemLine.FindAllStringSubmatch(o, -1)
	var checked []int
	for _, m := range mems {
		n, _ := strconv.Atoi(m[1])
		if m[2] != "ok" || (m[3] != "ok" && !(m[3] == "none" && n <= 2)) {
			t.Errorf("guest memory check of tick %d: keep %s, the file of tick %d %s", n, m[2], n-2, m[3])
		}
		checked = append(checked, n)
	}
	// The checks right after each move read files written on the source.
	for _, first := range []int{r2[0].n, r3[0].n} {
		found := false
		for _, n := range checked {
			if n == first || n == first+1 {
				found = true
			}
		}
		if !found {
			t.Errorf("no memory check at tick %d or %d, just after a move", first, first+1)
		}
	}
	last := r3[len(r3)-1].n
	img := guestValue(o, "l1", "image")
	if n, err := strconv.Atoi(strings.TrimPrefix(img, "tick-")); err != nil || n < last {
		t.Errorf("the image holds %q after the guest's tick %d", img, last)
	}
	t.Logf("ticks: first govmm 1-%d, second %d-%d, third %d-%d; uptime %.2f s at the last; %d memory checks",
		r1[len(r1)-1].n, r2[0].n, r2[len(r2)-1].n, r3[0].n, last, r3[len(r3)-1].uptime, len(mems))
}

// arm64MigrateShell defines two L1 shell functions for the arm64 tests
// that move a guest between govmm processes (g is govmm's path). send
// FROM TO N: migrate the VM at socket FROM to TO with --verify, retrying
// while the destination is not listening yet (the VM keeps running on
// the source meanwhile), and print "l1: sendN exit=..." and the report.
// reap PID SECONDS: wait for a govmm to end, killing it after that long
// (a receiver whose source never came, a source that did not stop), and
// return its status.
func arm64MigrateShell(g string) string {
	return `reap() { i=0; while [ $i -lt $2 ] && [ -e /proc/$1 ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status 2>/dev/null; do sleep 1; i=$((i+1)); done; kill -9 $1 2>/dev/null; wait $1; }
send() {
	j=0
	while [ $j -lt 30 ]; do
		` + g + ` migrate send --api-socket $1 --to $2 --verify >/tmp/send$3.out 2>&1; rc=$?
		if [ $rc = 0 ] || ! grep -q 'not started' /tmp/send$3.out; then break; fi
		sleep 0.5; j=$((j+1))
	done
	echo "l1: send$3 exit=$rc tries=$j"
	tr '\r' '\n' </tmp/send$3.out | sed "s/^/l1-send$3: /"
}
`
}
