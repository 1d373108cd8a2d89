package kvmtest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"govmm/internal/nested"
)

func TestFlagName(t *testing.T) {
	for arg, want := range map[string]string{
		"-test.run=^X$": "test.run", "--test.v": "test.v", "-test.timeout": "test.timeout", "plain": "",
	} {
		if got := flagName(arg); got != want {
			t.Errorf("flagName(%q) = %q, want %q", arg, got, want)
		}
	}
}

// TestResultCounter: the counts and the last test started come from the
// -v lines of the run in L1, framed for test2json or not, whatever the
// writes' boundaries.
func TestResultCounter(t *testing.T) {
	c := &resultCounter{}
	in := "=== RUN   TestA\n--- PASS: TestA (0.1s)\n\x16=== RUN   TestB\n    \x16--- SKIP: TestB/x (0s)\n--- FAIL: TestB (1s)\n=== RUN   TestC\npartial"
	for len(in) > 0 {
		n := min(len(in), 7)
		c.Write([]byte(in[:n]))
		in = in[n:]
	}
	if c.pass != 1 || c.fail != 1 || c.skip != 1 || c.running() != "TestC" {
		t.Errorf("pass %d fail %d skip %d running %q; want 1 1 1 TestC", c.pass, c.fail, c.skip, c.running())
	}
	if f := c.failedLeaves(); len(f) != 1 || f[0] != "TestB" {
		t.Errorf("failed tests %q, want [TestB]", f)
	}
}

// TestFailedLeaves: a rerun selects the subtests that failed, and a
// parent only when it failed in its own body.
func TestFailedLeaves(t *testing.T) {
	c := &resultCounter{}
	c.Write([]byte("    --- FAIL: TestBoot/kvm/2cpu (1s)\n    --- FAIL: TestBoot/kvm (1s)\n" +
		"    --- PASS: TestBoot/mshvsim (1s)\n--- FAIL: TestBoot (2s)\n--- FAIL: TestPlain (1s)\n" +
		"\x16    --- FAIL: TestMig/a-to-b (1s)\n\x16--- FAIL: TestMig (1s)\n"))
	got := strings.Join(c.failedLeaves(), " ")
	if want := "TestBoot/kvm/2cpu TestPlain TestMig/a-to-b"; got != want {
		t.Errorf("failedLeaves = %q, want %q", got, want)
	}
}

// TestFinished: the top-level tests with a result are the ones a fresh L1
// after a dead one does not run again; the one that was running is not
// among them.
func TestFinished(t *testing.T) {
	c := &resultCounter{}
	c.Write([]byte("=== RUN   TestA\n--- PASS: TestA (1s)\n=== RUN   TestB\n    --- FAIL: TestB/x (1s)\n" +
		"\x16--- FAIL: TestB (1s)\n=== RUN   TestC\n--- SKIP: TestC (0s)\n=== RUN   TestD\n    --- PASS: TestD/y (1s)\n"))
	for name, want := range map[string]bool{"TestA": true, "TestB": true, "TestC": true, "TestD": false, "TestD/y": false} {
		if got := c.finished(name); got != want {
			t.Errorf("finished(%s) = %v, want %v", name, got, want)
		}
	}
}

func TestExactly(t *testing.T) {
	if got, want := Exactly("TestBoot/kvm/2cpu"), `^TestBoot$/^kvm$/^2cpu$`; got != want {
		t.Errorf("Exactly = %q, want %q", got, want)
	}
	if got, want := Exactly("TestX/a.b+c"), `^TestX$/^a\.b\+c$`; got != want {
		t.Errorf("Exactly = %q, want %q", got, want)
	}
}

func TestWithRun(t *testing.T) {
	got := withRun([]string{"bin", "-test.run=^(A|B)$", "-test.v=true"}, "^(B)$")
	if want := []string{"bin", "-test.v=true", "-test.run=^(B)$"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("withRun = %q, want %q", got, want)
	}
}

func TestSelecting(t *testing.T) {
	if got, want := selecting([]string{"TestA", "Fuzz.B"}, "test.run"), `^(TestA|Fuzz\.B)$`; got != want {
		t.Errorf("selecting = %q, want %q", got, want)
	}
}

// TestUnframed: a quoted L1 frame loses its ^V and nothing else.
func TestUnframed(t *testing.T) {
	in := "--- last output from L1:\n\x16=== RUN   TestX\n    x_test.go:1: hi\n\x16--- PASS: TestX (0.00s)\n"
	want := "--- last output from L1:\n=== RUN   TestX\n    x_test.go:1: hi\n--- PASS: TestX (0.00s)\n"
	if got := unframed(in); got != want {
		t.Errorf("unframed:\n%q\nwant\n%q", got, want)
	}
}

// fakeL1 plays scripted L1 runs for settle: each is the -v output the
// test binary printed, its exit status, and whether L1 died under it.
type fakeL1 struct {
	runs []fakeRun
	args [][]string // the -test.run of each run, as settle asked
}

type fakeRun struct {
	out  string
	code int
	died bool
}

func (f *fakeL1) run(args []string) (*resultCounter, nested.Result, error) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.run="); ok {
			f.args = append(f.args, []string{v})
		}
	}
	if len(f.runs) == 0 {
		panic("settle asked for more L1 runs than scripted")
	}
	r := f.runs[0]
	f.runs = f.runs[1:]
	c := &resultCounter{}
	c.Write([]byte(r.out))
	if r.died {
		return c, nested.Result{}, &nested.Error{Reason: "L1 powered off"}
	}
	return c, nested.Result{ExitCode: r.code}, nil
}

// TestSettle: how L1 deaths, failures and reruns decide a package's exit
// status, and how many deaths it counts.
func TestSettle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		runs   []fakeRun
		code   int
		deaths int      // "death N of" lines said
		tests  []string // default TestA, TestB
	}{
		{"clean", []fakeRun{{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n"}}, 0, 0, nil},
		// A failure, then L1 dies; the unfinished test passes in a fresh
		// L1; the failed one passes alone: one death, flaky, exit 0. The
		// old bookkeeping took the clean second run for a killed binary
		// (its exit status overwritten by the first run's failure).
		{"failure then death", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n", died: true},
			{out: "=== RUN   TestB\n--- PASS: TestB (1s)\n"},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 1, nil},
		// The same, but the failure repeats alone: exit 1.
		{"failure repeats", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n", died: true},
			{out: "=== RUN   TestB\n--- PASS: TestB (1s)\n"},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 1, nil},
		// A binary that exits non-zero with no test failed was killed:
		// the unfinished test runs again.
		{"killed", []fakeRun{
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n=== RUN   TestB\n", code: 2},
			{out: "=== RUN   TestB\n--- PASS: TestB (1s)\n"},
		}, 0, 1, nil},
		// A binary that panics after a failure (a goroutine reporting
		// into a finished test) leaves tests without a result: they run
		// again in a fresh L1; the failed one runs alone and fails again.
		{"panic after a failure", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\npanic: Fail in goroutine after TestA has completed\n", code: 2},
			{out: "=== RUN   TestB\n--- PASS: TestB (1s)\n"},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 1, nil},
		// A failed run that finished every test is not a death.
		{"failure, all finished", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 0, nil},
		// The same test running at two deaths runs a third time.
		{"same test twice", []fakeRun{
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n=== RUN   TestB\n", died: true},
			{out: "=== RUN   TestB\n", died: true},
			{out: "=== RUN   TestB\n--- PASS: TestB (1s)\n"},
		}, 0, 2, nil},
		// At three it is taken to cause them, and fails; the tests after
		// it still run, without it.
		{"same test three times", []fakeRun{
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n=== RUN   TestB\n=== RUN   TestB/sub\n", died: true},
			{out: "=== RUN   TestB\n=== RUN   TestB/sub\n", died: true},
			{out: "=== RUN   TestB\n=== RUN   TestB/sub\n", died: true},
			{out: "=== RUN   TestC\n--- PASS: TestC (1s)\n"},
		}, 1, 3, []string{"TestA", "TestB", "TestC"}},
		// More failures than maxRerun, but those beyond it carry the
		// substrate's diagnosis: every one runs again.
		{"diagnosed failures", append([]fakeRun{{out: manyFailures(maxRerun+2, 2), code: 1}},
			passes(maxRerun+2)...), 0, 0, numbered(maxRerun + 2)},
		// L1 dies under a failed test's rerun: the rerun is made again.
		{"death under a rerun", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n", died: true},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 1, nil},
		// ... and a rerun that then fails still fails the package.
		{"death under a rerun, then failure", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n", code: 2},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 1, nil},
		// A diagnosed failure that fails again with a diagnosis runs a
		// third time, and passes.
		{"diagnosed twice", []fakeRun{
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 0, nil},
		// While every failure is diagnosed it runs up to
		// maxDiagnosedReruns times again: after three it passes ...
		{"diagnosed three times", []fakeRun{
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 0, nil},
		// ... and a fifth diagnosed failure ends it.
		{"diagnosed five times", []fakeRun{
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 0, nil},
		// One undiagnosed failure among them brings back maxReruns: a
		// diagnosed failure, then an undiagnosed one, then a diagnosed
		// one end it.
		{"diagnosed, not, diagnosed", []fakeRun{
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 0, nil},
		// A diagnosed failure does not count against the test: a
		// rerun's first failure with no diagnosis runs it a third time.
		{"diagnosed, then not", []fakeRun{
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 0, nil},
		{"undiagnosed, then diagnosed", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- PASS: TestA (1s)\n"},
		}, 0, 0, nil},
		// Two failures no diagnosis explains end it, in whichever runs.
		{"diagnosed, then not twice", []fakeRun{
			{out: "=== RUN   TestA\n" + substrateLine + "--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 0, nil},
		{"undiagnosed twice", []fakeRun{
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n=== RUN   TestB\n--- PASS: TestB (1s)\n", code: 1},
			{out: "=== RUN   TestA\n--- FAIL: TestA (1s)\n", code: 1},
		}, 1, 0, nil},
		// One undiagnosed failure too many: none runs again.
		{"too many failures", []fakeRun{{out: manyFailures(maxRerun+2, 1), code: 1}}, 1, 0, numbered(maxRerun + 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeL1{runs: tc.runs}
			var log strings.Builder
			say := func(format string, a ...any) { fmt.Fprintf(&log, format, a...) }
			tests := tc.tests
			if tests == nil {
				tests = []string{"TestA", "TestB"}
			}
			code := settle([]string{"/x.test", "-test.run=^(" + strings.Join(tests, "|") + ")$"}, tests,
				time.Now().Add(time.Hour), f.run, say)
			if code != tc.code {
				t.Errorf("exit %d, want %d\n%s", code, tc.code, log.String())
			}
			if n := strings.Count(log.String(), "(death "); n != tc.deaths {
				t.Errorf("%d deaths counted, want %d\n%s", n, tc.deaths, log.String())
			}
			if len(f.runs) != 0 {
				t.Errorf("%d scripted runs left unused\n%s", len(f.runs), log.String())
			}
		})
	}
}

// numbered names n tests Test0, Test1, ...
func numbered(n int) []string {
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("Test%d", i))
	}
	return names
}

// manyFailures is the -v output of n failed tests, the first diagnosed of
// them with the substrate's diagnosis in their output (the way
// internal/nested words it), streamed under "=== NAME" as go test -v does
// when a test logs after another one ran.
func manyFailures(n, diagnosed int) string {
	var b strings.Builder
	for i, name := range numbered(n) {
		fmt.Fprintf(&b, "=== RUN   %s\n=== RUN   %s/kvm\n", name, name)
		if i < diagnosed {
			fmt.Fprintf(&b, "=== NAME  %s/kvm\n    x_test.go:1: triple fault\n        --- diagnosis of the triple fault: the nested substrate's second known failure\n", name)
		}
		fmt.Fprintf(&b, "    --- FAIL: %s/kvm (1s)\n--- FAIL: %s (1s)\n", name, name)
	}
	return b.String()
}

// passes is n runs, each of one test passing alone.
func passes(n int) []fakeRun {
	var runs []fakeRun
	for _, name := range numbered(n) {
		runs = append(runs, fakeRun{out: "=== RUN   " + name + "/kvm\n--- PASS: " + name + " (1s)\n"})
	}
	return runs
}

// TestExplained: a diagnosis in a subtest's output, or in its parent's,
// explains the subtest's failure; "not the substrate's" does not.
func TestExplained(t *testing.T) {
	c := &resultCounter{}
	c.Write([]byte("=== RUN   TestA\n=== RUN   TestA/kvm\n    diagnosis: not the substrate's known failure\n    --- FAIL: TestA/kvm (1s)\n" +
		"=== RUN   TestB\n    b: the nested substrate's known failure, not the VMM's\n=== RUN   TestB/x\n    --- FAIL: TestB/x (1s)\n" +
		"\x16=== RUN   TestC\n=== RUN   TestC/y\n=== RUN   TestC/z\n\x16=== NAME  TestC/y\n    the nested substrate's known failure\n"))
	for name, want := range map[string]bool{"TestA/kvm": false, "TestB/x": true, "TestC/y": true, "TestC/z": false} {
		if got := c.explained(name); got != want {
			t.Errorf("explained(%s) = %v, want %v", name, got, want)
		}
	}
}

// substrateLine is a test's output line with the substrate's diagnosis.
const substrateLine = "    x_test.go:1: triple fault\n        --- diagnosis of the triple fault: the nested substrate's second known failure\n"
