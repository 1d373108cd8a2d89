package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestARM64Confine shows govmm's confinement in force on arm64, in the
// aarch64 L1 on KVM/arm64, as TestConfineSeccomp, TestConfineLandlock and
// TestConfineVCPUThreads do on x86-64:
//   - a binary built with -tags govmm_testhooks makes a system call the
//     process filter lacks (personality, arm64's 92) once it is
//     confined: govmm ends with status 159 and the SIGSYS handler's line
//     names the call and the thread's role; with --seccomp=log the call
//     goes through and the built-in probe guest runs to its power-off;
//   - vCPU 0's thread, under its own filter, opens "/" (Landlock off):
//     another thread's open works, vCPU 0's ends govmm with 159 naming
//     openat (56) and vCPU 0;
//   - with Landlock on, opening /etc/passwd after set-up is refused;
//   - Linux boots with the default confinement, 2 vCPUs, a disk and an
//     RNG; while it runs, /proc/PID/task/*/status shows the process
//     filter on every thread (Seccomp: 2) and one filter more on vcpu0,
//     vcpu1 and the virtio-blk worker that served the guest's read, and
//     the normal scheduling policy on the vCPU threads, SCHED_BATCH on
//     every other; the guest reads its disk and powers off, and govmm
//     exits 0.
func TestARM64Confine(t *testing.T) {
	a := arm64L1(t)
	dir, bin, _ := buildARM64Govmm(t)
	hooks := filepath.Join(dir, "govmm-arm64-testhooks")
	buildARM64(t, hooks, "build", "-tags", "govmm_testhooks", "./cmd/govmm")

	ar := arm64VirtioArchive(t, a)
	ar.Bytes("/init", 0o755, []byte(arm64VirtioInit("arm64-confine")+`i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
echo "arm64-confine: known-sum $($B dd if=/dev/vda bs=65536 skip=`+strconv.Itoa(arm64KnownOff/arm64Block)+` count=1 2>/dev/null | $B sha256sum)"
echo "arm64-confine: read-done"
$B sleep 8
$B poweroff -f
`))
	initrd := writeInitrd(t, dir, ar)
	disk := filepath.Join(dir, "disk.img")
	img := pattern("arm64-"+t.Name(), arm64DiskSize)
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}

	hook := func(tag, env, flags string) string {
		return `GOVMM_TEST_CONFINE_HOOK=` + env + ` timeout 300 ` + hooks + ` run --serial=none --log-level info ` + flags + ` >/tmp/` + tag + `.out 2>&1
echo "l1: ` + tag + ` exit=$?"
sed 's/^/` + tag + `: /' /tmp/` + tag + `.out
`
	}
	script := `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
` + hook("forbidden", "forbidden-syscall", "") +
		hook("logmode", "forbidden-syscall", "--seccomp=log") +
		hook("vcpuopen", "vcpu-open", "--landlock=off") +
		hook("landlock", "open:/etc/passwd", "") + `
timeout 480 ` + bin + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --disk path=` + disk + ` --rng --log-level info --cmdline 'console=ttyAMA0 panic=-1' >/tmp/linux.out 2>&1 &
pid=$!
i=0
while [ $i -lt 900 ] && ! grep -q 'arm64-confine: read-done' /tmp/linux.out; do sleep 0.5; i=$((i+1)); done
for task in /proc/$pid/task/*; do echo "l1: thread $(cat $task/comm) $(grep Seccomp_filters: $task/status | tr -d ' \t')"; done
for task in /proc/$pid/task/*; do echo "l1: policy $(cat $task/comm) $(sed 's/^.*) //' $task/stat | cut -d' ' -f39)"; done
grep -E '^Seccomp' /proc/$pid/status | tr -d ' \t' | sed 's/^/l1: main /'
wait $pid
echo "l1: linux exit=$?"
sed 's/^/linux: /' /tmp/linux.out
`
	o := runARM64L1(t, script, 30*time.Minute, bin, hooks, initrd, disk, a.Kernel)
	for _, want := range []string{
		"l1: aarch64, /dev/kvm: yes",
		"l1: forbidden exit=159\n",
		"forbidden: govmm: seccomp: forbidden system call personality (92) on a thread under the process filter alone",
		"l1: logmode exit=0\n",
		"logmode: govmm: test hook: personality(2) returned: the filter let it through",
		"l1: vcpuopen exit=159\n",
		"vcpuopen: govmm: test hook: another thread opened /",
		"vcpuopen: govmm: seccomp: forbidden system call openat (56) on vCPU 0's thread",
		"l1: landlock exit=0\n",
		"l1: linux exit=0\n",
		"l1: main Seccomp:2",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "forbidden: govmm: test hook: personality(2) returned") {
		t.Errorf("the process filter let personality(2) through")
	}
	// The confined line of the Linux run: the process filter and the
	// vCPU threads' counts.
	if !regexp.MustCompile(`linux: .*msg=confined seccomp="on, \d+ system calls allowed, \d+ on vCPU threads"`).MatchString(o) {
		t.Errorf("the Linux run logged no \"confined\" line with the seccomp filters")
	}
	// Landlock: refused where the L1 kernel has it.
	if regexp.MustCompile(`landlock: .*msg=confined .*landlock="ABI \d+`).MatchString(o) {
		if !strings.Contains(o, "landlock: govmm: test hook: open /etc/passwd: refused") {
			t.Errorf("Landlock is enforced, yet /etc/passwd opened after set-up")
		}
	} else {
		t.Logf("the aarch64 L1's kernel has no Landlock: not enforced")
	}
	if got, want := guestValue(o, "arm64-confine", "known-sum"), sum(img[arm64KnownOff:arm64KnownOff+arm64Block]); got != want {
		t.Errorf("the confined VM's guest read the known block as %q, want %s", got, want)
	}
	// Scheduling policies: the normal one (0) on the vCPU threads,
	// SCHED_BATCH (3) on every other (package schedpolicy).
	policies := regexp.MustCompile(`l1: policy (\S+) (\d+)`).FindAllStringSubmatch(o, -1)
	vcpu0 := false
	for _, m := range policies {
		want := "3"
		if strings.HasPrefix(m[1], "vcpu") {
			want = "0"
			vcpu0 = vcpu0 || m[1] == "vcpu0"
		}
		if m[2] != want {
			t.Errorf("thread %q: scheduling policy %s, want %s", m[1], m[2], want)
		}
	}
	if !vcpu0 {
		t.Errorf("no scheduling policy read for a thread named vcpu0: %q", policies)
	}
	// Filters per thread: the main thread's (the process filter) on
	// every thread, one more on the vCPU threads and the disk worker.
	threads := map[string]int{}
	for _, m := range regexp.MustCompile(`l1: thread (\S+) Seccomp_filters:(\d+)`).FindAllStringSubmatch(o, -1) {
		n, _ := strconv.Atoi(m[2])
		if prev, ok := threads[m[1]]; ok && prev != n {
			t.Errorf("threads named %q: %d and %d seccomp filters", m[1], prev, n)
		}
		threads[m[1]] = n
	}
	base := -1
	if m := regexp.MustCompile(`l1: main Seccomp_filters:(\d+)`).FindStringSubmatch(o); m != nil {
		base, _ = strconv.Atoi(m[1])
	}
	if base < 1 {
		t.Fatalf("the main thread has %d seccomp filters, want the process filter; threads: %v", base, threads)
	}
	worker := false
	for name, n := range threads {
		want := base
		if strings.HasPrefix(name, "vcpu") || strings.Contains(name, "-io") {
			want = base + 1
		}
		if strings.Contains(name, "-io") {
			worker = true
		}
		if n != want {
			t.Errorf("thread %q: %d seccomp filters, want %d", name, n, want)
		}
	}
	if threads["vcpu0"] != base+1 || threads["vcpu1"] != base+1 {
		t.Errorf("want threads vcpu0 and vcpu1 with %d filters each, got %v", base+1, threads)
	}
	if !worker {
		t.Errorf("no virtio-blk worker thread (NAME-ioN) with its own filter: %v", threads)
	}
	t.Logf("seccomp filters per thread on arm64: %v", threads)
}
