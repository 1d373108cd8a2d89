package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"govmm/api"
	"govmm/snapshot"
)

// balloonModuleEnv names the kernel's virtio_balloon.ko (Debian's cloud
// kernel builds it as a module); kvmtest copies every GOVMM_* path into
// L1.
const balloonModuleEnv = "GOVMM_E2E_VIRTIO_BALLOON_MOD"

func init() {
	if os.Getenv(balloonModuleEnv) != "" {
		return
	}
	k := guestKernelPath()
	if k == "" {
		return
	}
	p := filepath.Join(moduleTree(k), "drivers", "virtio", "virtio_balloon.ko")
	if _, err := os.Stat(p); err == nil {
		os.Setenv(balloonModuleEnv, p)
	}
}

// balloonInit is the guest's /init: load the virtio drivers and the
// balloon's, touch 320 MiB (random bytes written to a tmpfs file and
// removed: the host backs it, the guest has it free again, and the free
// pages are not zero, so a snapshot must store those the balloon did not
// take), then answer commands
// typed on the console: "mem" prints MemTotal and MemFree (KiB), "off"
// powers off.
const balloonInit = `#!/bin/busybox sh
` + virtioInitHead + `exec </dev/ttyS0 >/dev/ttyS0 2>&1
$B insmod /lib/modules/virtio_balloon.ko || echo "virtio-test: insmod virtio_balloon failed"
$B mkdir -p /tmp
$B mount -t tmpfs -o size=400m tmpfs /tmp
$B dd if=/dev/urandom of=/tmp/fill bs=1M count=320 2>/dev/null || echo "balloon-test: fill failed"
$B rm /tmp/fill
echo "balloon-test: touched"
while read cmd; do
	case "$cmd" in
	mem) echo "balloon-test: mem $($B awk '/^MemTotal:/{t=$2} /^MemFree:/{f=$2} END{print t, f}' /proc/meminfo) end";;
	feat) for d in /sys/bus/virtio/devices/*; do [ "$($B cat $d/device)" = "0x0005" ] && echo "balloon-test: features $($B cat $d/features) end"; done;;
	off) $B poweroff -f;;
	esac
done
`

// TestBalloon boots Linux with 512 MiB and --balloon on each
// accelerator. Once the guest has touched most of its memory (so the
// host backs it), `govmm balloon --size 256M` must make the guest's
// driver inflate to the target (govmm info's actual), the govmm
// process's resident size must drop by most of 256 MiB and the guest's
// MemTotal by 256 MiB. A snapshot of the inflated VM must leave the
// released pages out of its memory file, and the VM restored from it
// must come back inflated; there `--size 0` must bring actual and
// MemTotal back. With free page reporting (on the first accelerator),
// the guest's freed memory must go back to the host on its own.
func TestBalloon(t *testing.T) {
	kernel := linuxKernel(t)
	if os.Getenv(balloonModuleEnv) == "" {
		t.Fatal("virtio_balloon.ko was not found next to the kernel's modules")
	}
	initrd := guestInitrd(t, balloonInit, map[string]string{"/lib/modules/virtio_balloon.ko": os.Getenv(balloonModuleEnv)})
	accs := accels(t)
	for _, acc := range accs {
		t.Run(accelName(acc), func(t *testing.T) { balloonGuest(t, acc, kernel, initrd) })
	}
	t.Run(accelName(accs[0])+"-reporting", func(t *testing.T) { balloonReporting(t, accs[0], kernel, initrd) })
	t.Run(accelName(accs[0])+"-stats", func(t *testing.T) { balloonStats(t, accs[0], kernel, initrd) })
}

// balloonStats boots the guest with --balloon=statistics=on,deflate_on_oom=on:
// the guest's driver must have taken both features (its features bitmap,
// bits 1 and 2), and govmm info's statistics must be the guest's own:
// total_memory equal to its MemTotal, free_memory near its MemFree (both
// move a little between the two reads), and fresh ones on each info.
func balloonStats(t *testing.T, acc []string, kernel, initrd string) {
	sock := filepath.Join(tempSocketDir(t), "api.sock")
	p := bootGuest(t, append(append([]string{"run"}, acc...), "--cpus=2", "--memory=512M", "--balloon=statistics=on,deflate_on_oom=on", "--log-level=info",
		"--kernel", kernel, "--initrd", initrd, "--api-socket", sock, "--cmdline", "console=ttyS0 loglevel=1 panic=-1"),
		"balloon-test: touched", nil)
	ask := func(cmd, pattern string) []string {
		t.Helper()
		re := regexp.MustCompile(pattern)
		n := len(re.FindAllStringSubmatch(p.output(), -1))
		fmt.Fprintln(p.stdin, cmd)
		deadline := time.Now().Add(time.Minute)
		var w quietWatch
		for {
			if all := re.FindAllStringSubmatch(p.output(), -1); len(all) > n {
				return all[len(all)-1]
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest did not answer %s:\n%s", cmd, tail(p.output(), 2000))
			}
			p.stallCheck(&w, 0, 50*time.Millisecond, "answering "+cmd)
			time.Sleep(50 * time.Millisecond)
		}
	}
	feats := ask("feat", `balloon-test: features ([01]+) end`)[1]
	if len(feats) < 6 || feats[1] != '1' || feats[2] != '1' || feats[5] != '0' {
		t.Errorf("the guest's balloon features %s: want statistics (bit 1) and deflate on OOM (bit 2), not page reporting (bit 5)", feats)
	}
	for round := 0; round < 2; round++ {
		m := ask("mem", `balloon-test: mem (\d+) (\d+) end`)
		total, _ := strconv.ParseUint(m[1], 10, 64)
		free, _ := strconv.ParseUint(m[2], 10, 64)
		total, free = total<<10, free<<10
		b := balloonInfo(t, p, sock).Balloon
		if b == nil || !b.Statistics || !b.DeflateOnOOM || len(b.Stats) == 0 {
			t.Fatalf("balloon info %+v: want statistics and deflate on OOM, and figures", b)
		}
		gotFree := b.Stats["free_memory"]
		if b.Stats["total_memory"] != total || gotFree+64<<20 < free || gotFree > free+64<<20 || b.StatsAgeMS > 5000 {
			t.Errorf("round %d: statistics total %d, free %d (%.0f ms old); the guest's MemTotal %d, MemFree %d", round,
				b.Stats["total_memory"], gotFree, b.StatsAgeMS, total, free)
		}
		t.Logf("round %d: statistics %v (%.0f ms old); the guest's MemTotal %d MiB, MemFree %d MiB", round, b.Stats, b.StatsAgeMS, total>>20, free>>20)
	}
	out, err := exec.Command(binary, "info", "--api-socket", sock).Output()
	if err != nil || !strings.Contains(string(out), "statistics (") || !strings.Contains(string(out), "total_memory ") || !strings.Contains(string(out), "deflate on OOM") {
		t.Errorf("govmm info (%v) does not show the statistics and deflate on OOM:\n%s", err, out)
	}
	fmt.Fprintln(p.stdin, "off")
	if code := p.exit(2 * time.Minute); code != 0 {
		t.Fatalf("exit %d:\n%s", code, tail(p.output(), 2000))
	}
}

func balloonGuest(t *testing.T, acc []string, kernel, initrd string) {
	sock := filepath.Join(tempSocketDir(t), "api.sock")
	p := bootGuest(t, append(append([]string{"run"}, acc...), "--cpus=2", "--memory=512M", "--balloon", "--log-level=info",
		"--kernel", kernel, "--initrd", initrd, "--api-socket", sock, "--cmdline", "console=ttyS0 loglevel=1 panic=-1"),
		"balloon-test: touched", nil)
	if strings.Contains(p.output(), "insmod") && strings.Contains(p.output(), "failed") {
		t.Fatalf("a module did not load:\n%s", tail(p.output(), 2000))
	}
	mem := func() (total, free uint64) {
		t.Helper()
		re := regexp.MustCompile(`balloon-test: mem (\d+) (\d+) end`)
		n := len(re.FindAllStringSubmatch(p.output(), -1))
		fmt.Fprintln(p.stdin, "mem")
		deadline := time.Now().Add(time.Minute)
		all := re.FindAllStringSubmatch(p.output(), -1)
		var w quietWatch
		for len(all) == n {
			if time.Now().After(deadline) {
				t.Fatalf("the guest did not answer mem:\n%s", tail(p.output(), 2000))
			}
			p.stallCheck(&w, 0, 50*time.Millisecond, "answering mem")
			time.Sleep(50 * time.Millisecond)
			all = re.FindAllStringSubmatch(p.output(), -1)
		}
		m := all[len(all)-1]
		total, _ = strconv.ParseUint(m[1], 10, 64)
		free, _ = strconv.ParseUint(m[2], 10, 64)
		return total << 10, free << 10
	}
	info := func() api.Info { t.Helper(); return balloonInfo(t, p, sock) }
	waitActual := func(want uint64) time.Duration {
		t.Helper()
		begin := time.Now()
		deadline := begin.Add(3 * time.Minute)
		var w quietWatch
		for {
			i := info()
			if i.Balloon.ActualBytes == want {
				return time.Since(begin)
			}
			p.stallCheck(&w, int(i.Balloon.ActualBytes>>12), 200*time.Millisecond, fmt.Sprintf("the balloon reached %d MiB", want>>20))
			if time.Now().After(deadline) {
				t.Fatalf("the balloon's actual is %d MiB after 3 minutes, want %d MiB: %+v\n%s", i.Balloon.ActualBytes>>20, want>>20, *i.Balloon, tail(p.output(), 2000))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	balloon := func(size string) {
		t.Helper()
		if out, err := exec.Command(binary, "balloon", "--api-socket", sock, "--size", size).CombinedOutput(); err != nil {
			t.Fatalf("govmm balloon --size %s: %v: %s", size, err, out)
		}
	}

	i := info()
	found := false
	for _, d := range i.Devices {
		found = found || d.ID == "1af4:1045" && strings.HasPrefix(d.What, "virtio-balloon")
	}
	if !found {
		t.Errorf("govmm info lists no virtio-balloon (1af4:1045): %+v", i.Devices)
	}
	total0, free0 := mem()
	rss0 := vmRSS(t, p.cmd.Process.Pid)
	t.Logf("before: guest MemTotal %d MiB, MemFree %d MiB; govmm VmRSS %d MiB", total0>>20, free0>>20, rss0>>20)

	const target = 256 << 20
	balloon("256M")
	took := waitActual(target)
	rss1 := vmRSS(t, p.cmd.Process.Pid)
	total1, free1 := mem()
	i = info()
	t.Logf("inflated to %d MiB in %v: guest MemTotal %d MiB, MemFree %d MiB; govmm VmRSS %d MiB (down %d MiB); host released %d MiB",
		i.Balloon.ActualBytes>>20, took.Round(time.Millisecond), total1>>20, free1>>20, rss1>>20, (int64(rss0)-int64(rss1))>>20, i.Balloon.ReleasedBytes>>20)
	if i.Balloon.TargetBytes != target || i.Balloon.ReleasedBytes < target || i.Balloon.Kept != "" {
		t.Errorf("balloon %+v: want target %d and at least that much released", *i.Balloon, target)
	}
	// Most of it: the guest's allocations around the inflation (page
	// tables, the driver's arrays) touch a little new memory.
	if rss0 < rss1 || rss0-rss1 < target*3/4 {
		t.Errorf("govmm's VmRSS went from %d MiB to %d MiB, want it down by at least %d MiB", rss0>>20, rss1>>20, target*3/4>>20)
	}
	if total0-total1 != target {
		t.Errorf("the guest's MemTotal went from %d KiB to %d KiB, want down by %d KiB", total0>>10, total1>>10, target>>10)
	}
	out, err := exec.Command(binary, "info", "--api-socket", sock).Output()
	if err != nil || !strings.Contains(string(out), "balloon: target 256 MiB, actual 256 MiB") {
		t.Errorf("govmm info (%v) does not show the balloon at its target:\n%s", err, out)
	}

	// Snapshot the inflated VM, stop it, and go on in the VM restored
	// from the snapshot: the same socket, the same console helpers.
	snap := filepath.Join(filepath.Dir(sock), "snap") // where Landlock lets the VM write
	if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
		t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, tail(p.output(), 2000))
	}
	if code := p.exit(time.Minute); code != 0 {
		t.Fatalf("source after snapshot --stop: exit %d\n%s", code, tail(p.output(), 2000))
	}
	// The released pages are holes in the memory file: what it holds is
	// at most the guest's RAM less the balloon.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(snap, snapshot.MemoryFile), &st); err != nil {
		t.Fatal(err)
	}
	stored := uint64(st.Blocks) * 512
	t.Logf("snapshot of the inflated VM: %d MiB of guest memory stored", stored>>20)
	if stored > 512<<20-target {
		t.Errorf("the snapshot stores %d MiB of guest memory, more than the %d MiB the balloon leaves the guest", stored>>20, (512<<20-target)>>20)
	}
	os.Remove(sock)
	p = start(t, append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--balloon", "--log-level=info", "--api-socket", sock)...)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restored VM has no control socket after a minute:\n%s", tail(p.output(), 2000))
		}
	}
	if i := info(); i.Balloon.TargetBytes != target || i.Balloon.ActualBytes != target {
		t.Errorf("restored balloon %+v: want target and actual %d MiB", *i.Balloon, target>>20)
	}
	if total, _ := mem(); total != total1 {
		t.Errorf("the restored guest's MemTotal is %d KiB, was %d KiB when inflated", total>>10, total1>>10)
	}

	balloon("0")
	took = waitActual(0)
	total2, free2 := mem()
	t.Logf("deflated in %v: guest MemTotal %d MiB, MemFree %d MiB", took.Round(time.Millisecond), total2>>20, free2>>20)
	if total2 != total0 {
		t.Errorf("the guest's MemTotal is %d KiB after deflating, was %d KiB", total2>>10, total0>>10)
	}
	if i := info(); i.Balloon.DeflatedBytes != target {
		t.Errorf("restored balloon %+v: want %d deflated", *i.Balloon, target)
	}
	fmt.Fprintln(p.stdin, "off")
	if code := p.exit(2 * time.Minute); code != 0 {
		t.Fatalf("exit %d:\n%s", code, tail(p.output(), 2000))
	}
}

// balloonInfo is `govmm info --json` on control socket sock, which must
// show a balloon.
func balloonInfo(t *testing.T, p *proc, sock string) api.Info {
	t.Helper()
	out, err := exec.Command(binary, "info", "--api-socket", sock, "--json").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		// The VM itself may be gone: its output says why (a triple fault
		// comes with L1's trace and diagnosis).
		t.Fatalf("govmm info: %v: %s\nthe VM's output (end):\n%s", err, bytes.TrimSpace(stderr), tail(p.output(), 4000))
	}
	var i api.Info
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatalf("govmm info --json: %v: %s", err, out)
	}
	if i.Balloon == nil {
		t.Fatalf("govmm info shows no balloon: %s", out)
	}
	return i
}

// balloonReporting boots the balloon test's guest with free page
// reporting: once it has touched 320 MiB and freed it, its page
// reporting must hand most of that back without any balloon command,
// bringing govmm's VmRSS down, while the guest's MemTotal stays.
func balloonReporting(t *testing.T, acc []string, kernel, initrd string) {
	sock := filepath.Join(tempSocketDir(t), "api.sock")
	p := bootGuest(t, append(append([]string{"run"}, acc...), "--cpus=2", "--memory=512M", "--balloon=free_page_reporting=on", "--log-level=info",
		"--kernel", kernel, "--initrd", initrd, "--api-socket", sock, "--cmdline", "console=ttyS0 loglevel=1 panic=-1"),
		"balloon-test: touched", nil)
	// The guest reports its never-touched free memory at once (which
	// the host never backed); what counts is the 320 MiB it touched and
	// freed, reported a few seconds later. The reports may come before
	// the console line reaches the test, so the test does not count them
	// from a baseline: it requires govmm's peak resident set (VmHWM) to
	// show the touched memory was backed, its VmRSS to fall from that peak
	// by most of it, and the reports to cover at least as much.
	const want = 192 << 20
	if strings.Contains(p.output(), "balloon-test: fill failed") {
		t.Fatalf("the guest could not fill its memory:\n%s", tail(p.output(), 2000))
	}
	begin := time.Now()
	var i api.Info
	var rss, hwm uint64
	var w quietWatch
	for {
		i, rss, hwm = balloonInfo(t, p, sock), vmRSS(t, p.cmd.Process.Pid), vmHWM(t, p.cmd.Process.Pid)
		if hwm < 320<<20 {
			t.Fatalf("govmm's peak resident set is %d MiB after the guest touched 320 MiB: the touch was not backed", hwm>>20)
		}
		if i.Balloon.ReportReleasedBytes >= want && rss+want <= hwm && rss <= 512<<20-want {
			break
		}
		p.stallCheck(&w, int(i.Balloon.ReportReleasedBytes>>12), 500*time.Millisecond, "the guest reported its free memory")
		if time.Since(begin) > 3*time.Minute {
			t.Fatalf("3 minutes after its fill the guest had reported %d MiB free in all and govmm's VmRSS is %d MiB, its peak %d MiB: want at least %d MiB reported and the resident set %d MiB below its peak and at most %d MiB:\n%s",
				i.Balloon.ReportReleasedBytes>>20, rss>>20, hwm>>20, want>>20, want>>20, (512<<20-want)>>20, tail(p.output(), 2000))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%v after its fill the guest had reported %d MiB free in all; govmm VmRSS %d MiB, its peak %d MiB",
		time.Since(begin).Round(100*time.Millisecond), i.Balloon.ReportReleasedBytes>>20, rss>>20, hwm>>20)
	if !i.Balloon.FreePageReporting || i.Balloon.ActualBytes != 0 || i.Balloon.InflatedBytes != 0 {
		t.Errorf("balloon %+v: want reporting on and nothing inflated", *i.Balloon)
	}
	out, err := exec.Command(binary, "info", "--api-socket", sock).Output()
	if err != nil || !strings.Contains(string(out), "free page reporting: the guest reported") {
		t.Errorf("govmm info (%v) does not show page reporting:\n%s", err, out)
	}
	fmt.Fprintln(p.stdin, "off")
	if code := p.exit(2 * time.Minute); code != 0 {
		t.Fatalf("exit %d:\n%s", code, tail(p.output(), 2000))
	}
}

// vmRSS is the resident set size of process pid, in bytes.
func vmRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	rss, err := procRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return rss
}

// vmHWM is the process's peak resident set (VmHWM), in bytes.
func vmHWM(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := vmHWMLine.FindSubmatch(b)
	if m == nil {
		t.Fatalf("/proc/%d/status: no VmHWM", pid)
	}
	kb, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return kb << 10
}

var vmHWMLine = regexp.MustCompile(`(?m)^VmHWM:\s+(\d+) kB`)

var vmRSSLine = regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`)

// procRSS reads VmRSS from /proc/PID/status, in bytes.
func procRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	m := vmRSSLine.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("/proc/%d/status: no VmRSS (the process has exited?)", pid)
	}
	kb, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return kb << 10, nil
}
