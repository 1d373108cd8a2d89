package nested

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"plain", "with space", "it's", `a"b\c$d`, "", "-test.run=^(A|B)$"} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != s {
			t.Errorf("quoted %q came back as %q", s, out)
		}
	}
}

func TestLastN(t *testing.T) {
	if got := lastN("a\r\nb\nc\n\n", 2); got != "b\nc" {
		t.Errorf("lastN = %q", got)
	}
	tb := &tailBuffer{max: 8}
	tb.WriteString("0123456789\n")
	tb.WriteString("ab\n")
	if got := tb.lastLines(5); got != "6789\nab" { // the last 8 bytes
		t.Errorf("tail = %q", got)
	}
}

// need skips without the nested VM's parts, or fails on CI.
func need(t *testing.T) {
	if _, err := Find(); err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if os.Getenv(InL1Env) == "1" {
		t.Skip("already inside L1")
	}
}

// TestRun boots L1 and runs a command there: its output, working
// directory, environment and exit status come back, and /dev/kvm exists.
func TestRun(t *testing.T) {
	need(t)
	dir := t.TempDir()
	script := dir + "/probe.sh"
	script2 := "#!/bin/sh\npwd\necho \"arg=$1 env=$GOVMM_X in_l1=$GOVMM_IN_L1\"\n[ -c /dev/kvm ] && echo kvm-ok\nprintf no-newline\nexit 3\n"
	if err := os.WriteFile(script, []byte(script2), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := Run(context.Background(), Config{
		Command: []string{script, "it's here"},
		Dir:     dir,
		Env:     []string{"GOVMM_X=42"},
		Files:   []string{script},
		Timeout: 3 * time.Minute,
		Output:  &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := dir + "\narg=it's here env=42 in_l1=1\nkvm-ok\nno-newline\n"
	if res.ExitCode != 3 || !strings.Contains(out.String(), want) {
		t.Errorf("exit %d, output %q; want exit 3 and %q", res.ExitCode, out.String(), want)
	}
	t.Logf("L1 booted in %v, %v in all", res.Boot, res.Wall)
}

// TestRunTimeout: a command that outlives the timeout is killed, and the
// error says so with the command's last output.
func TestRunTimeout(t *testing.T) {
	need(t)
	_, err := Run(context.Background(), Config{
		Command: []string{"/bin/sh", "-c", "echo started; sleep 600"},
		Timeout: 40 * time.Second,
	})
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(e.Reason, "did not finish within 40s") || !strings.Contains(e.OutputTail, "started") {
		t.Fatalf("got %v, want a timeout error with the output tail", err)
	}
}

func TestConsoleExcerptKeepsFirstOops(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&b, "[%d] boot line\n", i)
		if i == 50 {
			b.WriteString("[50] BUG: stack guard page was hit at 00000000deadbeef\n")
		}
	}
	path := filepath.Join(t.TempDir(), "console")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got := consoleExcerpt(path)
	if !strings.Contains(got, "BUG: stack guard page") || !strings.Contains(got, "[199] boot line") || !strings.Contains(got, "[...]") {
		t.Fatalf("excerpt lost the first oops or the end:\n%s", got)
	}
	if strings.Contains(got, "[10] boot line") {
		t.Fatalf("excerpt kept lines long before the oops:\n%s", got)
	}
	os.WriteFile(path, []byte("a\nb\nc\n"), 0o644)
	if got := consoleExcerpt(path); got != "a\nb\nc" {
		t.Fatalf("short console: %q", got)
	}
}

func TestConsoleExcerptKeepsLastHeartbeat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	text := "boot\n" + heartbeatMark + " 5.01\nmid\n" + heartbeatMark + " 15.02\n" + heartbeatMark + " 25.03\nend\n"
	os.WriteFile(path, []byte(text), 0o644)
	if got, want := consoleExcerpt(path), "boot\nmid\n"+heartbeatMark+" 25.03\nend"; got != want {
		t.Fatalf("excerpt %q, want %q", got, want)
	}
}

// TestConsoleExcerptKeepsStallDump: the last stall dump comes whole (its
// lines only: the kernel's in between are the end's business), however
// long the console went on after it.
func TestConsoleExcerptKeepsStallDump(t *testing.T) {
	var b strings.Builder
	dump := func(n int) {
		fmt.Fprintf(&b, "%s: the command printed nothing for %d s; kernel stacks\n", stallMark, n)
		fmt.Fprintf(&b, "%s 229/231 vcpu1 D (disk sleep) wchan=kvm_vcpu_block\n", stallMark)
		b.WriteString("[ 900.0] SVM: kvm [615]: vcpu0, Unhandled WRMSR(0x1d9)\n")
		fmt.Fprintf(&b, "%s   [<0>] kvm_vcpu_block+0x4c/0x%d\n", stallMark, n)
		fmt.Fprintf(&b, "%s: end\n", stallMark)
	}
	dump(240)
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "[%d] later line\n", i)
	}
	dump(540)
	for i := 100; i < 200; i++ {
		fmt.Fprintf(&b, "[%d] later line\n", i)
	}
	path := filepath.Join(t.TempDir(), "console")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got := consoleExcerpt(path)
	for _, want := range []string{"nothing for 540 s", "229/231 vcpu1 D", "kvm_vcpu_block+0x4c/0x540", stallMark + ": end", "[199] later line"} {
		if !strings.Contains(got, want) {
			t.Fatalf("excerpt lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "nothing for 240 s") || strings.Contains(got, "WRMSR") || strings.Contains(got, "[150] later line") {
		t.Fatalf("excerpt kept more than the last dump and the end:\n%s", got)
	}
}

// TestUseKernel: another kernel directory (Config.Linux) gives L1 that
// kernel and its KVM modules, and one that lacks a module is refused with
// the module named.
func TestUseKernel(t *testing.T) {
	dir := t.TempDir()
	mods := filepath.Join(dir, "lib", "modules", "6.12.118+deb12-cloud-amd64", "kernel")
	files := []string{"boot/vmlinuz-6.12.118+deb12-cloud-amd64"}
	for _, m := range []string{"virt/lib/irqbypass.ko", "arch/x86/kvm/kvm.ko", "arch/x86/kvm/kvm-amd.ko"} {
		files = append(files, filepath.Join("lib/modules/6.12.118+deb12-cloud-amd64/kernel", m))
	}
	for _, f := range files {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := exec.LookPath(qemuBin); err != nil {
		t.Skipf("%s is not installed", qemuBin)
	}
	a, err := findIn(dir, "hint")
	if err != nil {
		t.Fatal(err)
	}
	if a.Kernel != filepath.Join(dir, files[0]) || len(a.Modules) != 3 || a.Modules[2] != filepath.Join(mods, "arch/x86/kvm/kvm-amd.ko") {
		t.Fatalf("kernel %s, modules %v", a.Kernel, a.Modules)
	}
	if err := os.Remove(filepath.Join(mods, "arch/x86/kvm/kvm.ko")); err != nil {
		t.Fatal(err)
	}
	if _, err := findIn(dir, "hint"); err == nil || !strings.Contains(err.Error(), "kvm.ko missing") {
		t.Errorf("without kvm.ko: %v", err)
	}
	if _, err := findIn(t.TempDir(), "hint"); err == nil || !strings.Contains(err.Error(), "no kernel in") {
		t.Errorf("empty directory: %v", err)
	}
}
