package e2e

import (
	"flag"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
	"govmm/internal/nested"
)

// A test that needs an L1 of its own (other devices, another kernel)
// starts it from the host and runs itself there; ownL1 is what those
// tests share: which of their subtests to run, and what to do when the L1
// or a subtest fails.

// l1Attempt runs the test binary, selecting run (a -test.run pattern),
// in a fresh L1 of the test's own for at most timeout, and returns its
// output; err is L1's own failure (it died or froze).
type l1Attempt func(run string, timeout time.Duration) (out string, res nested.Result, err error)

// ownL1Pattern is the -test.run pattern for t in its own L1: t, or the
// subtests this run's -run selects (-run TestX/sub, or ^TestX$/sub, runs
// only those there).
func ownL1Pattern(t *testing.T) string {
	run := "^" + t.Name() + "$"
	if f := flag.Lookup("test.run"); f != nil {
		pat := f.Value.String()
		for _, head := range []string{t.Name() + "/", "^" + t.Name() + "/", t.Name() + "$/", "^" + t.Name() + "$/"} {
			if strings.HasPrefix(pat, head) {
				return run + "/" + strings.TrimPrefix(pat, head)
			}
		}
	}
	return run
}

// ownL1 runs t in its own L1 (label names it in messages) through
// attempt, within timeout, and settles the outcome as kvmtest does for
// the tests that share an L1. An L1 that dies or freezes under the test
// runs it again in a fresh one, once. The substrate fails a guest now and
// then, so when one to three subtests fail, each runs once more alone in
// a fresh L1; a failure that repeats fails t, as do more failures.
func ownL1(t *testing.T, label string, timeout time.Duration, attempt l1Attempt) {
	t.Helper()
	start := time.Now()
	out, res, err := attempt(ownL1Pattern(t), timeout)
	if err != nil {
		left := timeout - time.Since(start)
		if left < 5*time.Minute {
			t.Fatalf("%s: %v (no time left to run %s again)", label, err, t.Name())
		}
		t.Logf("%s stopped: %v\nrunning %s once more in a fresh L1", label, err, t.Name())
		if out, res, err = attempt(ownL1Pattern(t), left); err != nil {
			t.Fatalf("%s stopped twice: %v", label, err)
		}
	}
	if res.ExitCode == 0 && strings.Contains(out, "--- PASS: "+t.Name()) {
		t.Logf("the %s booted in %v and ran %s in %v", label, res.Boot.Round(100*time.Millisecond), t.Name(), res.Wall.Round(100*time.Millisecond))
		return
	}
	failed, explained := kvmtest.FailedLeaves(out)
	if len(failed) == 0 || len(failed) > 3 {
		t.Fatalf("%s in the %s (booted in %v): exit %d, %d subtests failed\n%s", t.Name(), label, res.Boot.Round(100*time.Millisecond), res.ExitCode, len(failed), res.ConsoleLog)
	}
	for _, name := range failed {
		left := timeout - time.Since(start)
		if left < 5*time.Minute {
			t.Fatalf("%s failed in the %s, and no time is left to run it again", name, label)
		}
		why := "the substrate fails now and then"
		if explained[name] {
			why = "its output names the substrate as the cause"
		}
		t.Logf("%s failed in the %s; running it once more in a fresh L1 (%s)", name, label, why)
		again, res, err := attempt(kvmtest.Exactly(name), left)
		if err != nil {
			t.Fatalf("%s failed in the %s, and the fresh L1 to run it again stopped: %v", name, label, err)
		}
		if res.ExitCode != 0 || !strings.Contains(again, "--- PASS: "+name) {
			t.Fatalf("%s failed again in a fresh %s (booted in %v): exit %d\n%s", name, label, res.Boot.Round(100*time.Millisecond), res.ExitCode, res.ConsoleLog)
		}
		t.Logf("%s failed in the %s, then passed when run again in a fresh L1 %s", name, label, kvmtest.FlakyMark)
	}
}
