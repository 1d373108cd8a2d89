package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLedgerRoundTrip(t *testing.T) {
	l := &ledger{}
	l.add([]row{{Package: "virtio", Target: "FuzzQueue"}, {Package: "pci", Target: "FuzzMSIX"}})
	r := l.find("virtio", "FuzzQueue")
	r.CPU, r.Wall, r.Execs, r.Corpus, r.Crashes, r.Last = 61*time.Second, 75*time.Second, 123456, 17, 1, "2026-12-07"
	r.Status = "failed: input in testdata/fuzz/FuzzQueue/abc"
	text := l.format()
	back, err := parseLedger(strings.NewReader(text), "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if got := back.format(); got != text {
		t.Fatalf("round trip changed the ledger:\n%s\nbecame\n%s", text, got)
	}
	if back.rows[0].Package != "pci" {
		t.Errorf("rows not sorted: first is %s", back.rows[0].key())
	}
	// Adding the same targets again keeps their accounts.
	back.add([]row{{Package: "virtio", Target: "FuzzQueue"}})
	if got := back.find("virtio", "FuzzQueue").Execs; got != 123456 || len(back.rows) != 2 {
		t.Errorf("add lost an account: execs %d, %d rows", got, len(back.rows))
	}
}

func TestLedgerRefusesBadRows(t *testing.T) {
	for _, text := range []string{
		"pci\tFuzzMSIX\t1\t2\t3\t4\t5\t\n",                                     // 8 fields
		"pci\tFuzzMSIX\tx\t2\t3\t4\t5\t\t\n",                                   // not a count
		"pci\tFuzzMSIX\t-1\t2\t3\t4\t5\t\t\n",                                  // negative
		"pci\tFuzzMSIX\t1\t2\t3\t4\t5\t\t\npci\tFuzzMSIX\t1\t2\t3\t4\t5\t\t\n", // twice
	} {
		if _, err := parseLedger(strings.NewReader(text), "ledger"); err == nil {
			t.Errorf("accepted %q", text)
		}
	}
}

func TestNeediest(t *testing.T) {
	l := &ledger{rows: []*row{
		{Package: "a", Target: "FuzzDone", CPU: time.Hour},
		{Package: "a", Target: "FuzzBroken", Status: "failed: x"},
		{Package: "a", Target: "FuzzBusy"},
		{Package: "b", Target: "FuzzSome", CPU: time.Minute},
		{Package: "b", Target: "FuzzMore", CPU: 2 * time.Minute},
	}}
	busy := map[string]bool{"a/FuzzBusy": true}
	if r := l.neediest(time.Hour, busy, nil); r == nil || r.Target != "FuzzSome" {
		t.Fatalf("neediest = %v, want b/FuzzSome", r)
	}
	busy["b/FuzzSome"] = true
	if r := l.neediest(time.Hour, busy, nil); r == nil || r.Target != "FuzzMore" {
		t.Fatalf("neediest = %v, want b/FuzzMore", r)
	}
	busy["b/FuzzMore"] = true
	if r := l.neediest(time.Hour, busy, nil); r != nil {
		t.Fatalf("neediest = %s with everything done, broken or busy", r.key())
	}
}

// TestFuzzSlice runs real fuzzers, one that never fails and one that does,
// in a module of their own, and checks what a slice reports.
func TestFuzzSlice(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and fuzzes a test package")
	}
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module toy\n\ngo 1.26\n")
	write("toy_test.go", `package toy

import "testing"

func FuzzQuiet(f *testing.F) {
	f.Add([]byte("seed"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := 0
		for _, c := range b {
			s += int(c)
		}
		_ = s
	})
}

func FuzzLong(f *testing.F) {
	f.Add([]byte("a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 3 {
			t.Fatalf("%d bytes", len(b))
		}
	})
}
`)
	bin := filepath.Join(dir, "toy.test")
	build := exec.Command("go", "test", "-c", "-fuzz", "^Fuzz", "-o", bin, ".")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cache := t.TempDir()

	res, err := fuzzSlice(context.Background(), bin, dir, cache, "FuzzQuiet", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.failed || res.execs == 0 || res.cpu <= 0 || res.wall < 3*time.Second || res.corpus < 1 {
		t.Fatalf("quiet fuzzer: %+v, want no failure, executions, CPU time, 3 s of wall time and a corpus", res)
	}
	if res.cpu > 3*res.wall {
		t.Errorf("CPU time %s is more than one worker and a coordinator can use in %s", res.cpu, res.wall)
	}

	// A binary built without the fuzzer's instrumentation is refused.
	plain := filepath.Join(dir, "plain.test")
	build = exec.Command("go", "test", "-c", "-o", plain, ".")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	if _, err := fuzzSlice(context.Background(), plain, dir, cache, "FuzzQuiet", time.Second); err == nil {
		t.Error("a slice of an uninstrumented binary was accepted")
	}

	res, err = fuzzSlice(context.Background(), bin, dir, cache, "FuzzLong", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !res.failed || !strings.Contains(res.failure, filepath.Join("testdata", "fuzz", "FuzzLong")) {
		t.Fatalf("failing fuzzer: %+v, want a failure naming its input in testdata/fuzz/FuzzLong", res)
	}
	seeds, _ := os.ReadDir(filepath.Join(dir, "testdata", "fuzz", "FuzzLong"))
	if len(seeds) != 1 {
		t.Errorf("%d failing inputs written, want 1", len(seeds))
	}
}

func TestProgress(t *testing.T) {
	out := []byte(`fuzz: elapsed: 0s, gathering baseline coverage: 0/13 completed
fuzz: elapsed: 0s, gathering baseline coverage: 13/13 completed, now fuzzing with 1 workers
fuzz: elapsed: 3s, execs: 61234 (20409/sec), new interesting: 2 (total: 15)
fuzz: elapsed: 6s, execs: 130001 (22922/sec), new interesting: 4 (total: 17)
PASS
`)
	if execs, corpus := progress(out); execs != 130001 || corpus != 17 {
		t.Errorf("progress = %d execs, corpus %d; want 130001, 17", execs, corpus)
	}
}

// TestStartBackground: the fuzzer runs in a session of its own, whose
// autogroup (where the kernel has them) has nice 19.
func TestStartBackground(t *testing.T) {
	before, _ := os.ReadFile("/proc/self/autogroup")
	cmd := exec.Command("sleep", "5")
	if err := startBackground(cmd); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if sid, _ := unix.Getsid(cmd.Process.Pid); sid != cmd.Process.Pid {
		t.Errorf("session %d, want the fuzzer's own (%d)", sid, cmd.Process.Pid)
	}
	ag, err := os.ReadFile(fmt.Sprintf("/proc/%d/autogroup", cmd.Process.Pid))
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("this kernel has no scheduler autogroups")
	}
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(ag)), "nice 19") {
		t.Errorf("autogroup %q, %v; want nice 19", ag, err)
	}
	if after, _ := os.ReadFile("/proc/self/autogroup"); string(after) != string(before) {
		t.Errorf("the caller's own autogroup went from %q to %q", before, after)
	}
}
