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
// is listed as flaky, and the closing count says so.
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
		"2 passed, 1 failed, 1 skipped\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
