package nested

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestConsoleWatch drives the watch over a console file that grows, on a
// clock of the test's own.
func TestConsoleWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	w := &consoleWatch{path: path, beat: t0}

	// Booting, no heartbeat yet: alive until heartbeatLimit from the start.
	f.WriteString("[    0.000000] Linux version 6.1\n")
	if why := w.check(at(heartbeatLimit-time.Second), at(heartbeatLimit-time.Second)); why != "" {
		t.Fatalf("before the limit: %q", why)
	}
	// A heartbeat split over two reads still counts, when its line ends.
	f.WriteString(heartbeatMark + " 12.")
	if why := w.check(at(heartbeatLimit-time.Second), at(heartbeatLimit-time.Second)); why != "" {
		t.Fatalf("half a heartbeat: %q", why)
	}
	f.WriteString("5\n")
	if why := w.check(at(heartbeatLimit), at(heartbeatLimit)); why != "" {
		t.Fatalf("right after a heartbeat: %q", why)
	}
	// Kernel lines are no heartbeat: silence from init for the limit is a
	// freeze.
	f.WriteString("[   60.0] SVM: kvm [615]: vcpu0, Unhandled WRMSR(0x1d9)\n")
	if why := w.check(at(2*heartbeatLimit-time.Second), at(2*heartbeatLimit-time.Second)); why != "" {
		t.Fatalf("within the limit of the last heartbeat: %q", why)
	}
	if why := w.check(at(2*heartbeatLimit), at(2*heartbeatLimit)); !strings.Contains(why, "froze") {
		t.Fatalf("no heartbeat for the limit: %q, want a freeze", why)
	}

	// A panic: L1 gets panicGrace to power off, then is killed, heartbeats
	// or not.
	w = &consoleWatch{path: path, beat: t0}
	f.WriteString("[ 1188.706696] Kernel panic - not syncing: corrupted stack end detected inside scheduler\n")
	if why := w.check(at(time.Second), at(time.Second)); why != "" {
		t.Fatalf("at the panic: %q", why)
	}
	f.WriteString(heartbeatMark + " 1190.0\n")
	if why := w.check(at(time.Second+panicGrace), at(time.Second+panicGrace)); !strings.Contains(why, "panicked") {
		t.Fatalf("%v after a panic: %q, want a panic", panicGrace, why)
	}
}

// TestConsoleWatchHung: a hung-task report kills L1 only once the command
// has also been silent for hungIdle; silence alone, with heartbeats, is
// IdleTimeout's to judge.
func TestConsoleWatchHung(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	w := &consoleWatch{path: path, beat: t0}
	beat := func(d time.Duration) {
		t.Helper()
		appendFile(t, path, fmt.Sprintf("%s %d\n", heartbeatMark, d/time.Second))
	}
	beat(0)
	if why := w.check(at(time.Minute), t0.Add(-time.Hour)); why != "" {
		t.Fatalf("a silent command, heartbeats, no report: %q", why)
	}
	const report = "[  847.159200] INFO: task khugepaged:36 blocked for more than 120 seconds."
	appendFile(t, path, report+"\n")
	beat(time.Minute)
	if why := w.check(at(time.Minute), at(time.Minute-hungIdle+time.Second)); why != "" {
		t.Fatalf("a report, the command silent for less than %v: %q", hungIdle, why)
	}
	why := w.check(at(time.Minute), at(time.Minute-hungIdle))
	if !strings.Contains(why, "hung task") || !strings.Contains(why, "khugepaged:36") {
		t.Fatalf("a report and a command silent for %v: %q, want a hung task named", hungIdle, why)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// TestHeartbeatScript runs the heartbeat loop under busybox, as L1's init
// does, with a console and an output device that are files: an output
// silent for longer than the first stall dump gets one dump, with its
// header and its end, and no second one while the silence stays under the
// next.
func TestHeartbeatScript(t *testing.T) {
	s := heartbeatScript("/dev/ttyS1")
	if !strings.Contains(s, heartbeatMark) || !strings.Contains(s, "done) &\n") || !strings.Contains(s, ">/dev/console") {
		t.Fatalf("heartbeat script %q", s)
	}
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Fatalf("busybox (L1's shell) is missing: %s", howToGet)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	for _, a := range []string{"sh", "cat", "cut", "date", "grep", "sed", "sleep", "stat", "tr"} {
		if err := os.Symlink(bb, filepath.Join(bin, a)); err != nil {
			t.Fatal(err)
		}
	}
	// A process named govmm, whose thread the dump must list.
	sleeper := filepath.Join(dir, "govmm")
	if b, err := os.ReadFile("/bin/sleep"); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(sleeper, b, 0o755); err != nil {
		t.Fatal(err)
	}
	vmm := exec.Command(sleeper, "60")
	if err := vmm.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { vmm.Process.Kill(); vmm.Wait() }()
	console, out := filepath.Join(dir, "console"), filepath.Join(dir, "ttyS1")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	silent := time.Duration(stallDumps[0]+20) * time.Second
	if err := os.Chtimes(out, time.Now().Add(-silent), time.Now().Add(-silent)); err != nil {
		t.Fatal(err)
	}
	// '>>': the console is a file here, which '>' would truncate.
	script := strings.ReplaceAll(heartbeatScript(out), ">/dev/console", ">>"+console) + "wait\n"
	cmd := exec.Command(filepath.Join(bin, "sh"), "-c", script)
	cmd.Env = []string{"PATH=" + bin}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	var got string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(console)
		if got = string(b); strings.Contains(got, stallMark+": end") {
			break
		}
	}
	if !strings.Contains(got, heartbeatMark+" ") || !strings.Contains(got, stallMark+": the command printed nothing for") || !strings.Contains(got, stallMark+": end") {
		t.Fatalf("console after %v of silence:\n%s", silent, got)
	}
	thread := fmt.Sprintf("%s %d/%d govmm S (sleeping) wchan=", stallMark, vmm.Process.Pid, vmm.Process.Pid)
	if !strings.Contains(got, thread) {
		t.Fatalf("the dump does not list the govmm process's thread (%q):\n%s", thread, got)
	}
	if strings.Count(got, stallMark+": end") != 1 || strings.Contains(got, "not found") {
		t.Fatalf("want one dump and no missing command:\n%s", got)
	}
	t.Logf("console:\n%s", got)
}
