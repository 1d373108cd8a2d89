package kvmtest

import (
	"strings"
	"testing"
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
	if got, want := exactly("TestBoot/kvm/2cpu"), `^TestBoot$/^kvm$/^2cpu$`; got != want {
		t.Errorf("exactly = %q, want %q", got, want)
	}
	if got, want := exactly("TestX/a.b+c"), `^TestX$/^a\.b\+c$`; got != want {
		t.Errorf("exactly = %q, want %q", got, want)
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
