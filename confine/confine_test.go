package confine

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests confine a child process (this test binary run again), never
// the test process itself: confinement cannot be undone.
const childEnv = "GOVMM_CONFINE_TEST_CHILD"

func init() {
	if os.Getenv(childEnv) != "" {
		// The child's main goroutine keeps the main thread, which the
		// runtime never ends (it parks it when a goroutine exits
		// locked to it): a vCPU scenario's thread must be another.
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		os.Exit(child(name))
	}
	os.Exit(m.Run())
}

// runChild runs child scenario name and returns its output and status.
func runChild(t *testing.T, name string, env ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+name), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if code < 0 {
			t.Logf("child %s: %v", name, ee.ProcessState)
		}
	} else if err != nil {
		t.Fatalf("run child %s: %v", name, err)
	}
	return string(out), code
}

func child(name string) int {
	if code, ok := vcpuScenario(name); ok {
		return code
	}
	if code, ok := diskWorkerScenario(name); ok {
		return code
	}
	if code, ok := deviceThreadScenario(name); ok {
		return code
	}
	dir := os.Getenv("CHILD_DIR")
	switch name {
	case "workload":
		return workload(dir)
	case "forbidden":
		if _, err := Apply(Options{Seccomp: SeccompOn}); err != nil {
			fmt.Println("apply:", err)
			return 1
		}
		go func() {
			runtime.LockOSThread()
			unix.Syscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
			fmt.Println("personality returned")
			os.Exit(0)
		}()
		time.Sleep(10 * time.Second)
		fmt.Println("no SIGSYS")
		return 0
	case "log":
		if _, err := Apply(Options{Seccomp: SeccompLog}); err != nil {
			fmt.Println("apply:", err)
			return 1
		}
		unix.Syscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
		fmt.Println("personality returned")
		return 0
	case "fork":
		if _, err := Apply(Options{Seccomp: SeccompOn}); err != nil {
			fmt.Println("apply:", err)
			return 1
		}
		unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0)
		fmt.Println("fork returned")
		return 0
	case "exec-mmap":
		if _, err := Apply(Options{Seccomp: SeccompOn}); err != nil {
			fmt.Println("apply:", err)
			return 1
		}
		unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		fmt.Println("mmap returned")
		return 0
	}
	fmt.Println("unknown child", name)
	return 1
}

// workload confines itself as govmm does and then does what govmm does
// at run time: many goroutines and threads, garbage collection, timers,
// a Unix socket served and dialled, eventfds, a snapshot written into the
// allowed directory. Then it shows what is refused.
func workload(dir string) int {
	fail := func(format string, args ...any) int {
		fmt.Printf("FAIL: "+format+"\n", args...)
		return 1
	}
	snapDir := filepath.Join(dir, "snapshots")
	if err := os.Mkdir(snapDir, 0o755); err != nil {
		return fail("%v", err)
	}
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fail("%v", err)
	}
	outside := filepath.Join(dir, "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		return fail("%v", err)
	}
	begin := time.Now()
	rep, err := Apply(Options{Seccomp: SeccompOn, Landlock: true, WriteDir: snapDir, RemoveDirs: []string{dir}})
	if err != nil {
		return fail("apply: %v", err)
	}
	fmt.Printf("confined in %v: seccomp %s; landlock %s\n", time.Since(begin), rep.Seccomp, rep.Landlock)

	// Threads, GC, timers.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			b := make([][]byte, 0)
			for j := 0; j < 200; j++ {
				b = append(b, make([]byte, 64<<10))
			}
			time.Sleep(time.Millisecond)
			_ = b
		}()
	}
	wg.Wait()
	runtime.GC()
	<-time.After(5 * time.Millisecond)

	// The control socket: a connection accepted and answered.
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		return fail("dial: %v", err)
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		return fail("echo: %q %v", buf, err)
	}
	c.Close()

	// Eventfds, as irqfds added at run time.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fail("eventfd: %v", err)
	}
	unix.Close(efd)

	// A snapshot: directory, temporary files, sparse write, sync, rename.
	snap := filepath.Join(snapDir, "snap")
	if err := os.MkdirAll(snap, 0o755); err != nil {
		return fail("mkdir: %v", err)
	}
	tmp := filepath.Join(snap, ".memory.tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fail("create: %v", err)
	}
	if _, err := f.WriteAt([]byte("data"), 1<<20); err != nil {
		return fail("write: %v", err)
	}
	if err := f.Truncate(4 << 20); err != nil {
		return fail("truncate: %v", err)
	}
	if err := f.Sync(); err != nil {
		return fail("sync: %v", err)
	}
	f.Close()
	if err := os.Rename(tmp, filepath.Join(snap, "memory")); err != nil {
		return fail("rename: %v", err)
	}
	if err := os.Remove(filepath.Join(snap, "memory")); err != nil {
		return fail("remove: %v", err)
	}
	// The time zone loads (the first log line's timestamp).
	if _, err := os.Stat("/etc/localtime"); err == nil {
		if f, err := os.Open("/etc/localtime"); err != nil {
			return fail("/etc/localtime: %v", err)
		} else {
			f.Close()
		}
	}
	// /proc/self/pagemap stays readable.
	if pm, err := os.Open("/proc/self/pagemap"); err != nil {
		return fail("pagemap: %v", err)
	} else {
		pm.Close()
	}
	// The socket is removed at exit.
	ln.Close()
	if _, err := os.Stat(sock); err == nil {
		return fail("the listener's close left %s", sock)
	}

	// Refused: files outside, creating next to the snapshot directory.
	landlocked := strings.Contains(rep.Landlock, "ABI")
	if _, err := os.Open(outside); landlocked && !errors.Is(err, os.ErrPermission) {
		return fail("open %s outside the allowed paths: %v, want permission denied", outside, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); landlocked && !errors.Is(err, os.ErrPermission) {
		return fail("create outside the snapshot directory: %v, want permission denied", err)
	}
	fmt.Println("workload done")
	return 0
}

func TestWorkloadConfined(t *testing.T) {
	dir := t.TempDir()
	out, code := runChild(t, "workload", "CHILD_DIR="+dir)
	t.Logf("child:\n%s", out)
	if code != 0 || !strings.Contains(out, "workload done") {
		t.Fatalf("confined workload: exit %d", code)
	}
}

func TestForbiddenSyscallNamed(t *testing.T) {
	out, code := runChild(t, "forbidden")
	if code != ExitSIGSYS || !strings.Contains(out, "forbidden system call personality (135)") {
		t.Fatalf("want exit %d and the call named, got exit %d:\n%s", ExitSIGSYS, code, out)
	}
}

func TestLogModeLetsThrough(t *testing.T) {
	out, code := runChild(t, "log")
	if code != 0 || !strings.Contains(out, "personality returned") {
		t.Fatalf("--seccomp=log: exit %d:\n%s", code, out)
	}
}

func TestForkRefused(t *testing.T) {
	out, code := runChild(t, "fork")
	if code != ExitSIGSYS || !strings.Contains(out, "forbidden system call clone (56)") {
		t.Fatalf("fork: want exit %d naming clone, got %d:\n%s", ExitSIGSYS, code, out)
	}
}

func TestExecutableMmapRefused(t *testing.T) {
	out, code := runChild(t, "exec-mmap")
	if code != ExitSIGSYS || !strings.Contains(out, "forbidden system call mmap (9)") {
		t.Fatalf("PROT_EXEC mmap: want exit %d naming mmap, got %d:\n%s", ExitSIGSYS, code, out)
	}
}

func TestParse(t *testing.T) {
	for s, want := range map[string]SeccompMode{"on": SeccompOn, "off": SeccompOff, "log": SeccompLog} {
		if m, err := ParseSeccomp(s); err != nil || m != want || m.String() != s {
			t.Errorf("ParseSeccomp(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseSeccomp("yes"); err == nil {
		t.Error("ParseSeccomp(yes) accepted")
	}
	if _, err := ParseLandlock("maybe"); err == nil {
		t.Error("ParseLandlock(maybe) accepted")
	}
}

func TestWithin(t *testing.T) {
	for _, c := range []struct {
		path, dir string
		want      bool
	}{
		{"/a/b/c", "/a/b", true},
		{"/a/b", "/a/b", true},
		{"/a/bc", "/a/b", false},
		{"/a/b/../c", "/a/b", false},
		{"/a", "/a/b", false},
		{"/a/b/..x", "/a/b", true},
	} {
		if got := Within(c.path, c.dir); got != c.want {
			t.Errorf("Within(%q, %q) = %v", c.path, c.dir, got)
		}
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
