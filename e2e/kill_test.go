package e2e

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKilledDuringSnapshot kills the VMM with SIGKILL while it writes a
// snapshot's memory file (the long part: the state file and the renames
// take microseconds, too short to aim a kill at from outside), into an
// empty directory and over a previous snapshot. The directory must then
// hold either a complete snapshot (the previous one, which restores and
// whose guest verifies every page) or nothing a restore accepts (refused
// with exit 64 and a reason): never a half-written snapshot that is half
// accepted.
func TestKilledDuringSnapshot(t *testing.T) {
	acc := accels(t)[0]
	for _, c := range []struct {
		name     string
		previous bool   // the directory already holds a complete snapshot
		killAt   string // kill once this file exists in the directory
	}{
		{"memory-first", false, ".memory.tmp"},
		{"memory-replacing", true, ".memory.tmp"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			sock, snap := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "snap")
			s := memwriter(t, acc, sock)
			if c.previous {
				if r := govmm(t, "snapshot", "--api-socket", sock, "--dir", snap); r.Code != 0 {
					t.Fatalf("first snapshot: %s", r)
				}
			}
			// The snapshot client gets an error when its VMM dies; what
			// counts is what is left in the directory. The memory file
			// holds the pages the guest has written so far (zero pages
			// are holes): a guest that had written few of them yet (a
			// busy machine) left a write too short to see, so a
			// snapshot that completes unseen is taken again after the
			// guest has written longer.
			var done chan Result
			for try, wait := 0, 250*time.Millisecond; ; try, wait = try+1, wait*2 {
				d := make(chan Result, 1)
				go func() { d <- govmmAsync("snapshot", "--api-socket", sock, "--dir", snap) }()
				done = d
				if waitFile(filepath.Join(snap, c.killAt), 30*time.Second, done) {
					break
				}
				select {
				case r := <-done:
					if r.Code != 0 || try == 5 {
						t.Fatalf("the snapshot ended before %s appeared (try %d): %s", c.killAt, try+1, r)
					}
					t.Logf("the snapshot completed before %s was seen: taking it again in %v", c.killAt, wait)
				default:
					t.Fatalf("%s did not appear in 30 s", c.killAt)
				}
				if !c.previous {
					os.RemoveAll(snap) // the directory must hold nothing a restore accepts
				}
				time.Sleep(wait)
			}
			s.cmd.Process.Kill()
			<-s.done
			r := <-done
			t.Logf("killed the VMM once %s existed; the snapshot client said: exit %d %s", c.killAt, r.Code, strings.TrimSpace(r.Stderr))

			// What is left either restores (the previous snapshot, whose
			// guest then checks every page) or is refused with status 64
			// and a reason.
			p := start(t, append(append([]string{"restore"}, acc...), "--snapshot", snap)...)
			select {
			case <-p.done:
				code := p.exit(time.Second)
				if code != 64 || !strings.Contains(p.output(), "snapshot") {
					t.Fatalf("restore after the kill: exit %d, want 64 with a reason or a running guest:\n%s", code, p.output())
				}
				if c.previous {
					// The memory file was still being written: nothing
					// had touched the previous snapshot yet.
					t.Fatalf("the previous snapshot did not survive a kill while the new memory file was written:\n%s", p.output())
				}
				t.Logf("refused: %s", strings.TrimSpace(p.output()))
			case <-time.After(2 * time.Second):
				if !c.previous {
					t.Fatalf("an interrupted first snapshot restored:\n%s", p.output())
				}
				verify(t, p)
				t.Log("the previous snapshot restored and its guest verified every page")
			}
		})
	}
}

// waitFile polls for path until it exists (true), d passes or done has a
// value (false; done's value is put back).
func waitFile(path string, d time.Duration, done chan Result) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := os.Stat(path); err == nil {
			return true
		}
		select {
		case r := <-done:
			done <- r
			return false
		default:
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false
}

// TestKilledDuringMigration kills the source VMM with SIGKILL while a live
// migration copies memory: the destination must end with an error saying
// it started nothing, and never run the half-received guest. The kill is
// aimed by a delay after the send starts: one that lands before the
// source's hello leaves a destination that, rightly, keeps listening for a
// real source (it is tried later next time), one that lands after the
// migration finished is tried sooner.
func TestKilledDuringMigration(t *testing.T) {
	acc := accels(t)[0]
	delay := 150 * time.Millisecond
	for try := 0; try < 8; try++ {
		dir := t.TempDir()
		sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
		s := memwriter(t, acc, sock)
		d := start(t, append(append([]string{"migrate", "receive"}, acc...), "--listen", "unix:"+mig)...)
		waitPath(t, mig)
		done := make(chan Result, 1)
		go func() { done <- govmmAsync("migrate", "send", "--api-socket", sock, "--to", "unix:"+mig) }()
		time.Sleep(delay)
		select {
		case r := <-done:
			t.Logf("migration finished within %v (%s): trying a shorter delay", delay, strings.TrimSpace(r.Stdout))
			delay /= 3
			continue
		default:
		}
		s.cmd.Process.Kill()
		<-s.done
		<-done
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			// Still listening: the source died before its hello left,
			// either before it connected at all (nothing to log) or after
			// (the destination refused the silent peer and logged it).
			t.Logf("source killed %v in, before its hello; the destination keeps listening (%s): trying a longer delay", delay, cmp.Or(lastLine(d.output()), "no peer connected"))
			delay *= 2
			continue
		}
		code := d.exit(time.Minute)
		out := d.output()
		if code == 0 || !strings.Contains(out, "nothing was started") || strings.Contains(out, "memwrite: running") {
			t.Fatalf("destination after its source was killed %v into the migration: exit %d, want an error saying nothing was started:\n%s", delay, code, out)
		}
		t.Logf("source killed %v into the migration; destination: exit %d, %s", delay, code, lastLine(out))
		return
	}
	t.Fatal("no kill landed between the source's hello and the end of the migration: the test did not test anything")
}

// govmmAsync runs govmm with args off the test's goroutine (it cannot
// fail the test) and returns what it printed; Code is -1 when it could not
// run or did not end within runTimeout.
func govmmAsync(args ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.Code = ee.ExitCode()
	case err != nil:
		r.Code, r.Stderr = -1, r.Stderr+err.Error()
	}
	return r
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
