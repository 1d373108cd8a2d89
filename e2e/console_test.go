package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/internal/initramfs"
)

// consoleModuleEnv names the kernel's virtio_console.ko (Debian's cloud
// kernel builds it as a module); kvmtest copies every GOVMM_* path into
// L1.
const consoleModuleEnv = "GOVMM_E2E_VIRTIO_CONSOLE_MOD"

func init() {
	if os.Getenv(consoleModuleEnv) != "" {
		return
	}
	k := guestKernelPath()
	if k == "" {
		return
	}
	p := filepath.Join(moduleTree(k), "drivers", "char", "virtio_console.ko")
	if _, err := os.Stat(p); err == nil {
		os.Setenv(consoleModuleEnv, p)
	}
}

// The payload the guest writes to hvc0 between two markers: hex digits
// only, so the tty's output processing (ONLCR) leaves it as it is and
// the host compares it byte for byte.
const (
	payloadBegin = "<<hvc-begin>>"
	payloadEnd   = "<<hvc-end>>"
	payloadBytes = 256 << 10 // of hex digits
)

// consoleInit is the guest's /init for the console test. The kernel has
// console=hvc0 and no hvc0 until virtio_console loads, so init starts
// without stdio; it loads the drivers, makes hvc0 its stdio, writes the
// payload, reads a line typed on the host, ticks every half second (the
// test snapshots and restores it meanwhile), and then runs a shell on
// hvc0 that the host types commands into. With govmm.bench=H,T on the
// command line it first times writes of H KiB to hvc0 and T KiB to
// ttyS0, three times each.
const consoleInit = `#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /tmp
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console; do
	$B insmod /lib/modules/$m.ko || fail="$fail $m"
done
i=0
while [ ! -c /dev/hvc0 ] && [ $i -lt 200 ]; do $B sleep 0.1; i=$((i+1)); done
if [ ! -c /dev/hvc0 ]; then
	# Nothing to talk through: the UART tells why.
	echo "console-test: no hvc0 (insmod failed:$fail)" >/dev/ttyS0
	$B poweroff -f
fi
exec </dev/hvc0 >/dev/hvc0 2>&1
[ -n "$fail" ] && echo "console-test: insmod failed:$fail"
echo "console-test: ready"
echo "` + payloadBegin + `$($B cat /payload)` + payloadEnd + `"
# Kernel warnings from here on go to hvc0 too: they name a stall or a
# panic that would otherwise end the guest silently.
echo 4 >/proc/sys/kernel/printk
bench=$($B sed -n 's/.*govmm\.bench=\([0-9,]*\).*/\1/p' /proc/cmdline)
if [ -n "$bench" ]; then
	hvc=${bench%,*}; tty=${bench#*,}
	$B head -c $((hvc*1024)) /payload >/tmp/bench-hvc0
	$B head -c $((tty*1024)) /payload >/tmp/bench-ttyS0
	cs() { $B awk '{print int($1*100)}' /proc/uptime; }
	for dev in hvc0 ttyS0 hvc0 ttyS0 hvc0 ttyS0; do
		echo "console-bench-start $dev"
		t0=$(cs)
		$B dd if=/tmp/bench-$dev of=/dev/$dev bs=4096 2>/dev/null
		t1=$(cs)
		$B sleep 1 # the UART's output leaves govmm asynchronously
		echo
		echo "console-bench $dev $($B stat -c %s /tmp/bench-$dev) bytes $((t1-t0)) cs"
	done
fi
read -r line
echo "console-test: got [$line]"
i=1
while [ $i -le 10 ]; do
	echo "console-tick $i"
	i=$((i+1))
	$B sleep 0.5
done
echo "console-test: shell"
exec $B sh
`

// consoleInitrd is the virtio initramfs with virtio_console and the
// payload.
func consoleInitrd(t *testing.T, init string, payload []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	return guestInitrd(t, init, map[string]string{
		"/lib/modules/virtio_console.ko": os.Getenv(consoleModuleEnv),
		"/payload":                       p,
	})
}

// hexPayload is n hex digits of fresh randomness.
func hexPayload(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return []byte(hex.EncodeToString(b))
}

// TestVirtioConsole boots Linux with --console virtio and console=hvc0
// on each accelerator. The guest's init writes 256 KiB of hex to hvc0,
// which must arrive on govmm's stdout byte for byte; it reads a line the
// test types on govmm's stdin and echoes it back; it ticks while the
// test snapshots it and restores the snapshot (the restored guest goes
// on ticking on the same console); and it runs a shell on hvc0 that
// evaluates what the test types into the restored govmm's stdin and
// powers off. A restore without --console virtio is refused. On KVM the
// guest also times writes to hvc0 (256 KiB) and to ttyS0 (16 KiB), three
// times each, and the test logs the medians.
func TestVirtioConsole(t *testing.T) {
	kernel := linuxKernel(t)
	if os.Getenv(consoleModuleEnv) == "" {
		t.Fatal("virtio_console.ko was not found next to the kernel's modules")
	}
	payload := hexPayload(t, payloadBytes)
	initrd := consoleInitrd(t, consoleInit, payload)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { virtioConsole(t, acc, kernel, initrd, payload) })
	}
}

func virtioConsole(t *testing.T, acc []string, kernel, initrd string, payload []byte) {
	dir := t.TempDir()
	sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
	cmdline := "console=hvc0 loglevel=1 panic=-1"
	bench := accelName(acc) == "kvm"
	if bench {
		// The UART costs an exit per byte, which on nested KVM is
		// slow enough that L1's watchdog notices: it gets less.
		cmdline += " govmm.bench=256,16"
	}
	common := []string{"--cpus=2", "--memory=512M", "--console=virtio", "--log-level=error"}
	var p *proc
	for attempt := 1; ; attempt++ {
		p = start(t, append(append(append([]string{"run"}, acc...), common...),
			"--kernel", kernel, "--initrd", initrd, "--api-socket", sock, "--cmdline", cmdline)...)
		err := p.waitProgress(payloadEnd, 5*time.Minute, 90*time.Second)
		if err == nil {
			break
		}
		if attempt > 1 || strings.Contains(p.output(), "console-test: ready") {
			t.Fatalf("%v\n%s", err, tail(p.output(), 4000))
		}
		t.Logf("RETRY after a failed boot (the substrate; see bootRetryingSubstrate): %v", err)
		p.cmd.Process.Kill()
		<-p.done
		os.Remove(sock)
	}
	out := p.output()
	if strings.Contains(out, "insmod failed") {
		t.Errorf("a module did not load:\n%s", tail(out, 2000))
	}
	m := regexp.MustCompile(regexp.QuoteMeta(payloadBegin) + `(.*?)` + regexp.QuoteMeta(payloadEnd)).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no payload between the markers:\n%s", tail(out, 2000))
	}
	if got := m[1]; got != string(payload) {
		i := 0
		for i < len(got) && i < len(payload) && got[i] == payload[i] {
			i++
		}
		t.Fatalf("hvc0 carried %d bytes (SHA-256 %s), the guest wrote %d (SHA-256 %s); they differ from byte %d",
			len(got), sum([]byte(got)), len(payload), sum(payload), i)
	}
	t.Logf("hvc0 carried the %d-byte payload intact (SHA-256 %s)", len(payload), sum(payload))

	if bench {
		deadline := time.Now().Add(8 * time.Minute)
		lastLog := time.Now()
		var w quietWatch
		for strings.Count(p.output(), "console-bench ") < 6 {
			p.stallCheck(&w, 0, 200*time.Millisecond, "its benchmark's timings")
			select {
			case <-p.done:
				out := p.output()
				t.Fatalf("govmm ended during the benchmark (%v) after %d bytes of output, %d timings; the guest's last words:\n%s",
					p.err, len(out), strings.Count(out, "console-bench "), tail(regexp.MustCompile(`[0-9a-f]{64,}`).ReplaceAllString(out, "<hex>"), 3000))
			case <-time.After(200 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("the benchmark did not finish:\n%s", tail(regexp.MustCompile(`[0-9a-f]{64,}`).ReplaceAllString(p.output(), "<hex>"), 3000))
			}
			if time.Since(lastLog) > time.Minute {
				// Something on L1's output, whose silence kills L1.
				t.Logf("benchmark: %d of 6 timings so far", strings.Count(p.output(), "console-bench "))
				lastLog = time.Now()
			}
		}
		logBench(t, p.output())
	}

	token := fmt.Sprintf("typed-%d", time.Now().UnixNano())
	if _, err := fmt.Fprintln(p.stdin, token); err != nil {
		t.Fatal(err)
	}
	p.waitFor("console-test: got ["+token+"]", 2*time.Minute)
	p.waitFor("console-tick 3\r\n", 2*time.Minute)
	if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
		t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, tail(p.output(), 2000))
	}
	if code := p.exit(time.Minute); code != 0 {
		t.Fatalf("source after snapshot --stop: exit %d\n%s", code, tail(p.output(), 2000))
	}
	last := 0
	for _, n := range ticks(p.output()) {
		last = max(last, n)
	}

	restore := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M", "--log-level=error")
	if r := govmm(t, restore...); r.Code != 64 || !strings.Contains(r.Stderr, "virtio-console") {
		t.Fatalf("restore without --console virtio: want exit 64 naming virtio-console, got\n%s", r)
	} else {
		t.Logf("refused without --console virtio: %s", strings.TrimSpace(r.Stderr))
	}
	q := start(t, append(restore, "--console=virtio")...)
	q.waitFor("console-test: shell", 3*time.Minute)
	// The shell reads hvc0: what it prints is what it evaluated, not
	// the tty's echo of the line.
	if _, err := fmt.Fprintln(q.stdin, "echo shell-says-$((6*7))"); err != nil {
		t.Fatal(err)
	}
	q.waitFor("shell-says-42", 2*time.Minute)
	if _, err := fmt.Fprintln(q.stdin, "/bin/busybox poweroff -f"); err != nil {
		t.Fatal(err)
	}
	if code := q.exit(2 * time.Minute); code != 0 {
		t.Fatalf("restored guest: exit %d\n%s", code, tail(q.output(), 2000))
	}
	got := map[int]bool{}
	for _, n := range ticks(q.output()) {
		got[n] = true
	}
	for i := last + 1; i <= 10; i++ {
		if !got[i] {
			t.Errorf("the restored guest did not print tick %d on hvc0 (the source's last was %d):\n%s", i, last, tail(q.output(), 2000))
		}
	}
	t.Logf("the source ticked to %d, the restored guest from %d to 10 and ran the shell", last, last+1)
}

// ticks are the numbers of the ticks in out.
func ticks(out string) []int {
	var ns []int
	for _, m := range regexp.MustCompile(`console-tick (\d+)\r?\n`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		ns = append(ns, n)
	}
	return ns
}

// logBench logs the median time of the guest's writes to hvc0 and ttyS0.
func logBench(t *testing.T, out string) {
	t.Helper()
	times, size := map[string][]int{}, map[string]int{}
	for _, m := range regexp.MustCompile(`console-bench (\w+) (\d+) bytes (-?\d+) cs`).FindAllStringSubmatch(out, -1) {
		cs, _ := strconv.Atoi(m[3])
		size[m[1]], _ = strconv.Atoi(m[2])
		times[m[1]] = append(times[m[1]], cs)
	}
	for _, dev := range []string{"hvc0", "ttyS0"} {
		ts := times[dev]
		if len(ts) != 3 {
			t.Errorf("%d timings for %s, want 3", len(ts), dev)
			continue
		}
		sort.Ints(ts)
		med := ts[1]
		rate := "too fast to time"
		if med > 0 {
			rate = fmt.Sprintf("%.1f KiB/s", float64(size[dev])/1024/(float64(med)/100))
		}
		t.Logf("BENCH console %s: %d bytes in %d0 ms (median of %v, centiseconds), %s", dev, size[dev], med, ts, rate)
	}
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// TestARM64Console boots Debian's arm64 cloud kernel with govmm's arm64
// build, --console virtio and console=hvc0 in the aarch64 L1: the
// guest's init writes a hex payload to hvc0, which L1 checksums in
// govmm's stdout, and echoes back a line that L1 types into govmm's
// stdin once the guest says it is ready.
func TestARM64Console(t *testing.T) {
	a := arm64L1(t)
	dir, bin, _ := buildARM64Govmm(t)
	mods := moduleTree(a.Kernel)
	ar := initramfs.New()
	for _, d := range []string{"/bin", "/proc", "/sys", "/dev", "/tmp", "/lib", "/lib/modules"} {
		ar.Dir(d)
	}
	if err := ar.File("/bin/busybox", a.Busybox); err != nil {
		t.Fatal(err)
	}
	for _, m := range append(append([]string(nil), virtioModules...), "drivers/char/virtio_console.ko") {
		if err := ar.File("/lib/modules/"+filepath.Base(m), filepath.Join(mods, m)); err != nil {
			t.Fatalf("arm64 module: %v (%s)", err, howToGetARM64Virtio)
		}
	}
	payload := hexPayload(t, 64<<10)
	ar.Bytes("/payload", 0o644, payload)
	ar.Bytes("/init", 0o755, []byte(`#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console; do
	$B insmod /lib/modules/$m.ko || echo "arm64-console: insmod $m failed" >/dev/ttyAMA0
done
i=0
while [ ! -c /dev/hvc0 ] && [ $i -lt 200 ]; do $B sleep 0.1; i=$((i+1)); done
exec </dev/hvc0 >/dev/hvc0 2>&1
echo "arm64-console: ready"
echo "`+payloadBegin+`$($B cat /payload)`+payloadEnd+`"
read -r line
echo "arm64-console: got [$line]"
$B poweroff -f
`))
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := ar.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprintf("arm64-typed-%d", time.Now().UnixNano())
	// The line is typed once the guest says it is ready (hvc0 open):
	// input that reaches the driver before anything opened the tty
	// may wait in the guest for more input. govmm's timeout is well
	// under the harness's 8 minutes of silence, so a hang reports.
	script := `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
mkfifo /tmp/in
( i=0; while [ $i -lt 240 ] && ! grep -q 'arm64-console: ready' /tmp/console.out 2>/dev/null; do sleep 1; i=$((i+1)); done; echo ` + token + ` ) >/tmp/in &
timeout 300 ` + bin + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --console virtio --log-level error --cmdline 'console=hvc0 loglevel=1 panic=-1' </tmp/in >/tmp/console.out
echo "l1: govmm exit=$?"
echo "l1: ready-lines=$(grep -c 'arm64-console: ready' /tmp/console.out)"
sed 's/` + payloadBegin + `[0-9a-f]*` + payloadEnd + `/<payload>/' /tmp/console.out | tail -c 3000
echo "l1: payload-sum $(sed -n 's/.*` + payloadBegin + `\([0-9a-f]*\)` + payloadEnd + `.*/\1/p' /tmp/console.out | tr -d '\r\n' | sha256sum)"
`
	o := runARM64L1(t, script, 20*time.Minute, bin, initrd, a.Kernel)
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: govmm exit=0\n", "l1: ready-lines=1\n", "arm64-console: got [" + token + "]"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "insmod") {
		t.Errorf("a module did not load")
	}
	if got, want := guestValue(o, "l1", "payload-sum"), sum(payload); got != want {
		t.Errorf("L1 found a payload with SHA-256 %q in govmm's stdout, the guest wrote %s", got, want)
	}
}
