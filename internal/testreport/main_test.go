package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestReport feeds a go test -json stream through the command: a test that
// skipped on the host and passed in L1 counts once as passed, a test whose
// every subtest skipped fails, one that failed and then passed on a rerun
// is listed as flaky, the closing count says so, and the harness's lines
// (why L1 died, with its kernel log) are shown.
func TestReport(t *testing.T) {
	if os.Getenv("TESTREPORT_MAIN") == "1" {
		main()
		return
	}
	in := strings.Join([]string{
		`{"Action":"run","Package":"p","Test":"TestA"}`,
		`{"Action":"output","Package":"p","Test":"TestA","Output":"    needs KVM: runs on nested KVM\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestA"}`,
		`{"Action":"run","Package":"p","Test":"TestB"}`,
		`{"Action":"run","Package":"p","Test":"TestB/kvm"}`,
		`{"Action":"output","Package":"p","Test":"TestB/kvm","Output":"    tool missing\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestB/kvm"}`,
		`{"Action":"pass","Package":"p","Test":"TestB"}`,
		`{"Action":"run","Package":"p","Test":"TestA"}`,
		`{"Action":"pass","Package":"p","Test":"TestA"}`,
		`{"Action":"run","Package":"p","Test":"TestC"}`,
		`{"Action":"fail","Package":"p","Test":"TestC"}`,
		`{"Action":"run","Package":"p","Test":"TestC"}`,
		`{"Action":"pass","Package":"p","Test":"TestC"}`,
		`{"Action":"run","Package":"p","Test":"TestF"}`,
		`{"Action":"output","Package":"p","Test":"TestF","Output":"    TestF/x failed in L1, then passed when run again in a fresh L1 (flaky on nested KVM)\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestF"}`,
		`{"Action":"output","Package":"p","Output":"--- FAIL: nested KVM (L1, QEMU 10): nested KVM: L1 powered off\n"}`,
		`{"Action":"output","Package":"p","Output":"[   12.7] BUG: TASK stack guard page was hit\n"}`,
		`{"Action":"output","Package":"p","Output":"=== nested KVM: L1 died under the tests; running the 1 that had not finished in a fresh L1: TestD\n"}`,
		`{"Action":"output","Package":"p","Output":"package chatter\n"}`,
		`{"Action":"output","Package":"p","Output":"=== nested KVM: L1 stopped (QEMU 10): nested KVM: L1 powered off\n"}`,
		`{"Action":"output","Package":"p","Output":"=== RUN   TestE\n"}`,
		`{"Action":"output","Package":"p","Output":"--- QEMU's log of L1's CPUs (end):\n"}`,
		`{"Action":"output","Package":"p","Output":"Triple fault\n"}`,
		`{"Action":"run","Package":"p","Test":"TestE"}`,
		`{"Action":"pass","Package":"p","Test":"TestE"}`,
		`{"Action":"output","Package":"p","Output":"more package chatter\n"}`,
		`{"Action":"pass","Package":"p","Elapsed":1.5}`,
	}, "\n")
	cmd := exec.Command(os.Args[0], "-test.run=^TestReport$")
	cmd.Env = append(os.Environ(), "TESTREPORT_MAIN=1")
	cmd.Stdin = strings.NewReader(in)
	out, err := cmd.Output()
	if err == nil {
		t.Errorf("exit 0, want 1 (TestB tested nothing)\n%s", out)
	}
	for _, want := range []string{
		"--- FAIL: p TestB\n",
		"every one of its 1 subtests skipped",
		"    p TestB/kvm: tool missing\n",
		"--- FLAKY: p TestC\n",
		// A test with an L1 of its own that reran a subtest there.
		"--- FLAKY: p TestF\n",
		"4 passed, 1 failed, 1 skipped\n",
		// Why L1 died is shown, with the line after it, whatever the tests did.
		"--- FAIL: nested KVM (L1, QEMU 10)",
		"BUG: TASK stack guard page was hit\n",
		"running the 1 that had not finished",
		// So is an L1 that stopped, up to the next test's line, and the
		// closing count names it.
		"=== RUN   TestE\n--- QEMU's log of L1's CPUs (end):\nTriple fault\n",
		"L1 stopped under the tests 1 time(s)",
		"    p: === nested KVM: L1 stopped (QEMU 10)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "package chatter") { // both chatters
		t.Errorf("package output after the harness's message shown:\n%s", out)
	}
}
