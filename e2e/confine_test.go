package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/internal/kvmtest"
)

// The confinement tests need govmm to do, once confined, what the
// confinement must stop: a binary built with -tags govmm_testhooks honours
// GOVMM_TEST_CONFINE_HOOK (confine/hook_on.go); the binary every other test
// runs has no such hook. It is built next to that binary, on the host, and
// reaches the nested-KVM VM through this variable (kvmtest copies the file
// a GOVMM_ variable names).
const (
	hooksBinaryEnv = "GOVMM_E2E_CONFINE_BINARY"
	hookEnv        = "GOVMM_TEST_CONFINE_HOOK"
)

var (
	hooksOnce sync.Once
	hooksErr  string
)

// hooksBinary returns the test-hook build of govmm, building it on the
// host the first time. Call it before kvmtest.Need (accels), so that the
// host run builds it for the nested run.
func hooksBinary(t *testing.T) string {
	t.Helper()
	if kvmtest.InL1() {
		b := os.Getenv(hooksBinaryEnv)
		if b == "" {
			t.Fatalf("%s is not set in the nested VM", hooksBinaryEnv)
		}
		return b
	}
	hooksOnce.Do(func() {
		out := filepath.Join(filepath.Dir(binary), "govmm-testhooks")
		_, file, _, _ := runtime.Caller(0)
		build := exec.Command("go", "build", "-tags", "govmm_testhooks", "-o", out, "./cmd/govmm")
		build.Dir = filepath.Dir(filepath.Dir(file))
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			hooksErr = err.Error() + "\n" + string(b)
			return
		}
		os.Setenv(hooksBinaryEnv, out)
	})
	if hooksErr != "" {
		t.Fatalf("build govmm with test hooks: %s", hooksErr)
	}
	return os.Getenv(hooksBinaryEnv)
}

// startHooked is start with the test-hook binary and a hook.
func startHooked(t *testing.T, bin, hook string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), hookEnv+"="+hook)
	return startCmd(t, cmd)
}

// TestConfineSeccomp has a confined govmm call a system call its filter
// lacks (personality(2), from a thread other than the one that installed
// the filter) on each accelerator: the process ends with status 159 and a
// line naming the call. With --seccomp=log the call goes through and the
// guest runs to its end; with --seccomp=off as well.
func TestConfineSeccomp(t *testing.T) {
	bin := hooksBinary(t)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			args := append(append([]string{"run"}, acc...), "--serial=none")
			p := startHooked(t, bin, "forbidden-syscall", args...)
			code := p.exit(runTimeout)
			if code != 159 || !strings.Contains(p.output(), "govmm: seccomp: forbidden system call personality (135)") {
				t.Fatalf("forbidden system call: want exit 159 and the call named, got exit %d:\n%s", code, p.output())
			}
			for _, mode := range []string{"log", "off"} {
				p := startHooked(t, bin, "forbidden-syscall", append(args, "--seccomp="+mode)...)
				code := p.exit(runTimeout)
				if code != 0 || !strings.Contains(p.output(), "the filter let it through") {
					t.Fatalf("--seccomp=%s: want the call through and exit 0, got exit %d:\n%s", mode, code, p.output())
				}
			}
			// vCPU 0's thread, under its own filter, opens "/": refused,
			// while another thread of the process opens it (Landlock
			// off, which would refuse it to every thread).
			p = startHooked(t, bin, "vcpu-open", append(args, "--landlock=off")...)
			code = p.exit(runTimeout)
			if code != 159 || !strings.Contains(p.output(), "govmm: test hook: another thread opened /") ||
				!strings.Contains(p.output(), "govmm: seccomp: forbidden system call openat (257) on vCPU 0's thread") {
				t.Fatalf("openat on vCPU 0's thread: want another thread's open to work, then exit 159 naming openat and vCPU 0, got exit %d:\n%s", code, p.output())
			}
		})
	}
}

// TestConfineLandlock shows, on each accelerator, that a confined govmm
// cannot open a file outside what it was granted, while snapshots into
// the granted directory work: the control socket's directory by default,
// --snapshot-dir when given (here on a restored VM, which is then
// snapshotted again and restored to check every page). A snapshot asked
// for elsewhere is refused with the way out named, and the VM runs on.
// With --landlock=off the same file opens.
func TestConfineLandlock(t *testing.T) {
	bin := hooksBinary(t)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			dir, outside := t.TempDir(), t.TempDir()
			secret := filepath.Join(outside, "secret")
			if err := os.WriteFile(secret, []byte("not for the VMM"), 0o600); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(dir, "vm.sock")
			args := append(append([]string{"run"}, acc...), "--kernel", guestPath(t, "testguest"), "--memory", "128M",
				"--cmdline", "test=memwrite mb=32", "--api-socket", sock)
			p := startHooked(t, bin, "open:"+secret, args...)
			p.waitFor("memwrite: running", time.Minute)
			waitPath(t, sock)
			if out := p.output(); !strings.Contains(out, "open "+secret+": refused") || !strings.Contains(out, "permission denied") {
				t.Fatalf("a file outside the granted paths: want it refused, got:\n%s", out)
			}

			// Snapshot into the socket's directory: granted.
			snap := filepath.Join(dir, "snap")
			if r := govmm(t, "snapshot", "--api-socket", sock, "--dir", snap); r.Code != 0 {
				t.Fatalf("snapshot into the control socket's directory: %s", r)
			}
			// Elsewhere: refused, the VM runs on.
			r := govmm(t, "snapshot", "--api-socket", sock, "--dir", filepath.Join(outside, "snap"))
			if r.Code != 70 || !strings.Contains(r.Stderr, "may write only under "+dir) || !strings.Contains(r.Stderr, "--snapshot-dir") {
				t.Fatalf("snapshot outside the granted directory: want 70 naming --snapshot-dir, got %s", r)
			}
			if _, err := os.Stat(filepath.Join(outside, "snap")); err == nil {
				t.Fatalf("the refused snapshot created %s", filepath.Join(outside, "snap"))
			}
			verify(t, p)

			// A restored VM with --snapshot-dir elsewhere than its socket.
			rdir, sdir := t.TempDir(), t.TempDir()
			rsock := filepath.Join(rdir, "r.sock")
			q := startHooked(t, bin, "open:"+secret, append(append([]string{"restore"}, acc...),
				"--snapshot", snap, "--api-socket", rsock, "--snapshot-dir", sdir)...)
			waitPath(t, rsock)
			snap2 := filepath.Join(sdir, "again")
			if r := govmm(t, "snapshot", "--api-socket", rsock, "--dir", snap2, "--stop"); r.Code != 0 {
				t.Fatalf("snapshot of the restored VM into --snapshot-dir: %s", r)
			}
			if code := q.exit(time.Minute); code != 0 || !strings.Contains(q.output(), "refused") {
				t.Fatalf("restored VM: exit %d, want 0 with the file refused:\n%s", code, q.output())
			}
			if _, err := os.Stat(rsock); err == nil {
				t.Errorf("the control socket %s outlived the VM", rsock)
			}
			s := startHooked(t, bin, "", append(append([]string{"restore"}, acc...), "--snapshot", snap2)...)
			verify(t, s)

			// --landlock=off: the same file opens.
			off := startHooked(t, bin, "open:"+secret, append(append([]string{"run"}, acc...), "--serial=none", "--landlock=off")...)
			if code := off.exit(runTimeout); code != 0 || !strings.Contains(off.output(), "open "+secret+": opened") {
				t.Fatalf("--landlock=off: want the file opened and exit 0, got exit %d:\n%s", code, off.output())
			}
		})
	}
}

// TestConfineFlags: the confinement flags are checked with the others,
// before anything is opened (status 64 on any host).
func TestConfineFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--seccomp=maybe"}, "--seccomp \"maybe\": want on, off, log or process"},
		{[]string{"run", "--landlock=yes"}, "--landlock \"yes\": want on or off"},
		{[]string{"run", "--snapshot-dir=/nonexistent/dir"}, "--snapshot-dir /nonexistent/dir"},
		{[]string{"restore", "--snapshot=/nonexistent", "--seccomp=maybe"}, "--seccomp \"maybe\""},
		{[]string{"migrate", "receive", "--listen=unix:/tmp/x.sock", "--landlock=maybe"}, "--landlock \"maybe\""},
	} {
		r := govmm(t, c.args...)
		if r.Code != 64 || !strings.Contains(r.Stderr, c.want) {
			t.Errorf("govmm %s: want 64 and %q, got %s", strings.Join(c.args, " "), c.want, r)
		}
	}
}

// TestConfineVCPUThreads boots Linux on 2 vCPUs on each accelerator and,
// while its init ticks, reads every thread's /proc status: the threads
// named vcpu0 and vcpu1 carry one seccomp filter more than all the others
// (their own on top of the process filter), and no other thread has it.
// Every thread but vcpu0 and vcpu1 has the SCHED_BATCH policy, and they
// the normal one (package schedpolicy). The guest then ticks to its end
// and powers off. With --seccomp=process (a bare-metal guest suffices) no
// thread has a filter of its own.
func TestConfineVCPUThreads(t *testing.T) {
	g := newTickingLinux(t, 4)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "vm.sock")
			p := g.start(t, acc, "host", sock, 1)
			counts, base := threadFilters(t, p.cmd.Process.Pid)
			if base < 1 {
				t.Fatalf("the main thread has %d seccomp filters, want the process filter: %v", base, counts)
			}
			for name, n := range counts {
				want := base
				if strings.HasPrefix(name, "vcpu") {
					want = base + 1
				}
				if n != want {
					t.Errorf("thread %q: %d seccomp filters, want %d", name, n, want)
				}
			}
			if counts["vcpu0"] != base+1 || counts["vcpu1"] != base+1 {
				t.Errorf("want threads vcpu0 and vcpu1 with %d filters each, got %v", base+1, counts)
			}
			t.Logf("seccomp filters per thread: %v", counts)
			checkThreadPolicies(t, p.cmd.Process.Pid)
			g.finish(t, p, 1, "")

			q := start(t, append(append([]string{"run"}, acc...), "--kernel", guestPath(t, "testguest"), "--memory", "128M",
				"--cmdline", "test=memwrite mb=32", "--seccomp=process")...)
			q.waitFor("memwrite: running", time.Minute)
			counts, base = threadFilters(t, q.cmd.Process.Pid)
			for name, n := range counts {
				if n != base || strings.HasPrefix(name, "vcpu") {
					t.Errorf("--seccomp=process: thread %q has %d filters, the main thread %d", name, n, base)
				}
			}
			verify(t, q)
		})
	}
}

// taskFile is one thread of a process, with its name and one of its
// /proc files (the thread's directory names it).
type taskFile struct {
	tid, name, dir string
	data           []byte
}

// taskFiles reads file (status, stat...) and comm of each thread of
// process pid, leaving out threads that ended while it read.
func taskFiles(t *testing.T, pid int, file string) []taskFile {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []taskFile
	for _, task := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s", pid, task.Name())
		data, err1 := os.ReadFile(dir + "/" + file)
		comm, err2 := os.ReadFile(dir + "/comm")
		if err1 != nil || err2 != nil {
			continue // the thread ended
		}
		out = append(out, taskFile{task.Name(), strings.TrimSpace(string(comm)), dir, data})
	}
	return out
}

// checkThreadPolicies checks the scheduling policy of each thread of
// process pid: the normal one (0) on the vCPU threads, SCHED_BATCH (3)
// on every other (schedpolicy: govmm's helper threads do not preempt its
// vCPUs).
func checkThreadPolicies(t *testing.T, pid int) {
	t.Helper()
	policies := map[string][]int{}
	for _, task := range taskFiles(t, pid, "stat") {
		policy, err := statPolicy(string(task.data))
		if err != nil {
			t.Fatalf("%s/stat: %v", task.dir, err)
		}
		policies[task.name] = append(policies[task.name], policy)
		want := 3
		if strings.HasPrefix(task.name, "vcpu") {
			want = 0
		}
		if policy != want {
			t.Errorf("thread %s (%q): scheduling policy %d, want %d", task.tid, task.name, policy, want)
		}
	}
	if len(policies["vcpu0"]) == 0 {
		t.Errorf("no thread named vcpu0: %v", policies)
	}
	t.Logf("scheduling policies per thread name: %v", policies)
}

// statPolicy is the policy field (the 41st) of a /proc/PID/task/TID/stat
// line; the fields count from after the name's closing parenthesis, the
// third field.
func statPolicy(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no ')' in %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 39 {
		return 0, fmt.Errorf("%d fields after the name, want at least 39", len(f))
	}
	return strconv.Atoi(f[38])
}

// threadFilters reads Seccomp_filters of each thread of process pid, by
// thread name (threads of one name must agree: the runtime's threads all
// have the program's), and the main thread's.
func threadFilters(t *testing.T, pid int) (byName map[string]int, main int) {
	t.Helper()
	out := map[string]int{}
	for _, task := range taskFiles(t, pid, "status") {
		name, dir := task.name, task.dir
		n := -1
		for _, line := range strings.Split(string(task.data), "\n") {
			if v, ok := strings.CutPrefix(line, "Seccomp_filters:"); ok {
				n, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if n < 0 {
			t.Skipf("%s/status has no Seccomp_filters line (Linux before 5.9)", dir)
		}
		if prev, ok := out[name]; ok && prev != n {
			t.Errorf("threads named %q: %d and %d seccomp filters", name, prev, n)
		}
		out[name] = n
		if task.tid == strconv.Itoa(pid) {
			main = n
		}
	}
	return out, main
}
