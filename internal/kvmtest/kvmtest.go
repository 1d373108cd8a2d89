// Package kvmtest decides where a test that needs KVM runs, so that every
// KVM test runs on every machine and none skips for want of /dev/kvm.
//
// A package whose tests need KVM calls Main from its TestMain, and each
// such test calls Need first. Then, under plain `go test`:
//
//   - With a local /dev/kvm, the tests run on it, and then once more inside
//     a nested-KVM VM (internal/nested): the local KVM may be the software
//     kvm_pvm backend, which hides what hardware virtualization shows, and
//     nested KVM is hardware semantics on QEMU's TCG.
//   - Without /dev/kvm, the host run skips them ("runs on nested KVM") and
//     Main runs exactly those tests again inside L1.
//
// GOVMM_NESTED=0 keeps the tests on the local KVM only; GOVMM_NESTED=1
// runs them in L1 only. Inside L1 (GOVMM_IN_L1=1) Need requires /dev/kvm.
// With GOVMM_REQUIRE_KVM=1 (CI), a test that can reach neither a local nor
// a nested KVM fails instead of skipping.
package kvmtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/internal/nested"
)

// Env names.
const (
	NestedEnv  = "GOVMM_NESTED"      // "0": local KVM only; "1": nested only; unset: both where possible
	RequireEnv = "GOVMM_REQUIRE_KVM" // "1": a test that cannot reach KVM fails
	devKVM     = "/dev/kvm"
)

// where a KVM test runs in this process.
type where int

const (
	nowhere   where = iota // skip (or fail under GOVMM_REQUIRE_KVM=1)
	here                   // on this machine's /dev/kvm (inside L1, or local only)
	hereAndL1              // locally, then again in L1
	l1Only                 // skipped here, run in L1 afterwards
)

type plan struct {
	where  where
	reason string // why nowhere, or why not in L1 too
}

var (
	mainCalled bool
	planOnce   sync.Once
	thePlan    plan

	mu       sync.Mutex
	deferred = map[string]bool{} // top-level tests, benchmarks and fuzz targets to run in L1
	order    []string
)

// Required reports whether a test must fail, rather than skip, when a
// resource it needs is missing (GOVMM_REQUIRE_KVM=1, set by .ci/run).
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// OnTCG reports whether this machine's CPU is QEMU's TCG, as it is inside
// L1: tests that compare with "the CPU" compare with TCG there, and name
// each way TCG is known to differ from silicon.
func OnTCG() bool {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Contains(string(b), "QEMU TCG CPU")
}

// InL1 reports whether this process runs inside the nested-KVM VM.
func InL1() bool { return os.Getenv(nested.InL1Env) == "1" }

func decide() plan {
	_, err := os.Stat(devKVM)
	local := err == nil
	if InL1() {
		if !local {
			return plan{where: nowhere, reason: "inside L1 but " + devKVM + " is missing (kvm_amd did not load)"}
		}
		return plan{where: here}
	}
	mode := os.Getenv(NestedEnv)
	if mode == "0" {
		if local {
			return plan{where: here}
		}
		return plan{where: nowhere, reason: "no " + devKVM + " and " + NestedEnv + "=0"}
	}
	var nestedErr error
	if !mainCalled {
		nestedErr = fmt.Errorf("the package's TestMain does not call kvmtest.Main")
	} else if _, err := nested.Find(); err != nil {
		nestedErr = err
	}
	switch {
	case nestedErr == nil && local && mode != "1":
		return plan{where: hereAndL1}
	case nestedErr == nil:
		return plan{where: l1Only}
	case local && mode != "1":
		return plan{where: here, reason: "nested KVM unavailable: " + nestedErr.Error()}
	default:
		why := "no " + devKVM
		if local {
			why = NestedEnv + "=1"
		}
		return plan{where: nowhere, reason: why + " and nested KVM unavailable: " + nestedErr.Error()}
	}
}

func getPlan() plan {
	planOnce.Do(func() { thePlan = decide() })
	return thePlan
}

// Need is called first by every test that needs KVM. It returns when the
// test should go on here; otherwise it skips the test here (it runs in L1
// afterwards) or, with no KVM anywhere, skips it, or fails it under
// GOVMM_REQUIRE_KVM=1.
func Need(t testing.TB) {
	t.Helper()
	if !Here(t) {
		if getPlan().where == l1Only {
			t.Skip("needs KVM: runs on nested KVM (L1) after this package's other tests")
		}
		p := getPlan()
		if Required() {
			t.Fatalf("needs KVM, and %s=1: %s", RequireEnv, p.reason)
		}
		t.Skipf("needs KVM: %s", p.reason)
	}
}

// Here is Need for a test that has work to do without KVM too (on a real
// /dev/mshv, say): it reports whether KVM can be used in this process, and
// arranges for the test to run in L1 as well where the plan says so,
// without skipping it here.
func Here(t testing.TB) bool {
	t.Helper()
	p := getPlan()
	switch p.where {
	case here:
		if p.reason != "" && Required() {
			t.Fatalf("%s=1: %s", RequireEnv, p.reason)
		}
		return true
	case hereAndL1:
		record(t)
		return true
	case l1Only:
		record(t)
	}
	return false
}

// NeedHardware is Need for a test that needs hardware virtualization
// semantics, such as a Linux guest reaching its init: on the software
// kvm_pvm backend, which emulates guest CPL0 code at about a million
// instructions a second, the test runs in L1 only.
func NeedHardware(t testing.TB) {
	t.Helper()
	p := getPlan()
	if p.where == here || p.where == hereAndL1 {
		if !nested.HardwareKVM() {
			const why = "this machine's /dev/kvm is the software kvm_pvm backend, which emulates guest CPL0 code"
			if p.where == hereAndL1 {
				record(t)
				t.Skip("needs hardware KVM semantics (" + why + "): runs on nested KVM (L1)")
			}
			if Required() {
				t.Fatalf("needs hardware KVM semantics and %s=1: %s", RequireEnv, why)
			}
			t.Skip("needs hardware KVM semantics: " + why)
		}
	}
	Need(t)
}

func record(t testing.TB) {
	name, _, _ := strings.Cut(t.Name(), "/")
	if _, ok := t.(*testing.B); ok {
		name = "bench:" + name
	}
	mu.Lock()
	defer mu.Unlock()
	if !deferred[name] {
		deferred[name] = true
		order = append(order, name)
	}
}

// Option adds to what L1 gets for a package's tests.
type Option func(*options)

type options struct {
	files, programs, env []string
}

// Files copies host files or directories into L1 at the same paths.
func Files(paths ...string) Option {
	return func(o *options) { o.files = append(o.files, paths...) }
}

// Programs copies programs from PATH into L1, with their libraries and data.
func Programs(names ...string) Option {
	return func(o *options) { o.programs = append(o.programs, names...) }
}

// Env sets variables in L1 (GOVMM_* variables of the host pass anyway).
func Env(kv ...string) Option {
	return func(o *options) { o.env = append(o.env, kv...) }
}

// Main runs the package's tests (call it from TestMain as
// os.Exit(kvmtest.Main(m))), then the ones that need KVM again in L1
// where the plan says so. It returns the exit status.
func Main(m *testing.M, opts ...Option) int {
	mainCalled = true
	start := time.Now()
	code := m.Run()
	mu.Lock()
	names := append([]string(nil), order...)
	mu.Unlock()
	p := getPlan()
	if len(names) == 0 || (p.where != hereAndL1 && p.where != l1Only) {
		return code
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	ncode := runInL1(names, o, start)
	if code != 0 {
		return code
	}
	return ncode
}

func runInL1(names []string, o options, start time.Time) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvmtest:", err)
		return 1
	}
	wd, _ := os.Getwd()
	root := moduleRoot(wd)
	var tests, benches []string
	for _, n := range names {
		if b, ok := strings.CutPrefix(n, "bench:"); ok {
			benches = append(benches, b)
		} else {
			tests = append(tests, n)
		}
	}
	args := []string{exe}
	for _, a := range os.Args[1:] {
		switch flagName(a) {
		case "test.run", "test.bench", "test.skip", "test.coverprofile", "test.cpuprofile",
			"test.memprofile", "test.blockprofile", "test.mutexprofile", "test.trace",
			"test.outputdir", "test.gocoverdir", "test.timeout", "test.v", "test.fuzzcachedir":
			continue
		}
		args = append(args, a)
	}
	run := "^$"
	if len(tests) > 0 {
		run = selecting(tests, "test.run")
	}
	// Verbose in L1, so that a hang shows which test was running; framed
	// for test2json when go test -json runs this binary.
	verbose := "true"
	if f := flag.Lookup("test.v"); f != nil && f.Value.String() == "test2json" {
		verbose = "test2json"
	}
	args = append(args, "-test.run="+run, "-test.v="+verbose)
	// say prints the harness's own lines. Under test2json it first ends the
	// test the L1 output last named ("=== NAME" with no name), so that
	// test2json files them under the package, where the CI report shows
	// them, and not under whichever test was running when L1 stopped.
	say := func(format string, a ...any) {
		if verbose == "test2json" {
			fmt.Print("\x16=== NAME  \n")
		}
		fmt.Printf(format, a...)
	}
	if len(benches) > 0 {
		args = append(args, "-test.bench="+selecting(benches, "test.bench"))
	}
	release, err := nested.Lock()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvmtest:", err)
		return 1
	}
	defer release()
	// Budget: what is left of the package's -timeout (the wait for the
	// lock counts too), less a margin for L1 to boot and for go test's own
	// kill. The test binary in L1 gets the inner timeout, so that Go itself
	// names a test that hangs there.
	budget := 60 * time.Minute
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			budget = d - time.Since(start)
		}
	}
	inner := budget - 90*time.Second
	if inner < time.Minute {
		fmt.Fprintf(os.Stderr, "kvmtest: only %v of the test timeout left for nested KVM\n", budget.Round(time.Second))
		return 1
	}
	args = append(args, "-test.timeout="+inner.String())

	env := []string{RequireEnv + "=1"}
	files := []string{exe, root}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "GOVMM_") || k == NestedEnv || k == RequireEnv || k == nested.InL1Env {
			continue
		}
		env = append(env, kv)
		if filepath.IsAbs(v) {
			if _, err := os.Stat(v); err == nil {
				files = append(files, v)
			}
		}
	}
	env = append(env, o.env...)
	files = append(files, o.files...)

	say("=== nested KVM: running %d of this package's tests again in L1: %s\n", len(names), strings.Join(names, " "))
	a, _ := nested.Find()
	deadline := time.Now().Add(budget - 30*time.Second)
	runL1 := func(args []string) (*resultCounter, nested.Result, error) {
		counter := &resultCounter{}
		// L1's raw output is kept in a file: the log shows it through
		// go test's framing, which a crash in L1 can garble.
		var raw io.Writer = io.Discard
		if f, err := os.CreateTemp("", "govmm-l1-*.log"); err == nil {
			defer f.Close()
			raw = bestEffort{f}
			say("=== nested KVM: L1's raw output goes to %s\n", f.Name())
		}
		res, err := nested.Run(context.Background(), nested.Config{
			Command:  args,
			Dir:      wd,
			Env:      env,
			Files:    files,
			Programs: o.programs,
			Timeout:  time.Until(deadline),
			// Every test's own bound is shorter (the longest, a Linux boot,
			// 5 minutes): silence this long means L1 itself froze.
			IdleTimeout: 10 * time.Minute,
			Output:      io.MultiWriter(os.Stdout, counter, raw),
		})
		if err == nil {
			say("=== nested KVM (L1 on QEMU %s, booted in %v, %v in all): %d passed, %d failed, %d skipped\n",
				a.QEMUVersion, res.Boot.Round(100*time.Millisecond), res.Wall.Round(100*time.Millisecond),
				counter.pass, counter.fail, counter.skip)
			if res.ExitCode != 0 && len(counter.failedLeaves()) == 0 {
				// No test failed, yet the binary did not exit 0: it was
				// killed (L1's OOM killer) or a test called os.Exit.
				while := ""
				if t := counter.running(); t != "" {
					while = ", while " + t + " ran"
				}
				say("--- FAIL: nested KVM: the test binary exited %d in L1 with no test failed%s\n--- L1 kernel log (end):\n%s\n", res.ExitCode, while, res.ConsoleLog)
			}
		} else {
			// Not yet a failure: the caller decides, after running the
			// tests L1 left unfinished in a fresh one.
			running := ""
			if t := counter.running(); t != "" {
				running = "\nnested KVM: the test running when L1 stopped: " + t
			}
			say("=== nested KVM: L1 stopped (QEMU %s): %s%s\n", a.QEMUVersion, unframed(err.Error()), running)
		}
		return counter, res, err
	}
	return settle(args, tests, deadline, runL1, say)
}

// l1Runner runs the test binary in a fresh L1 with args; sayFunc prints
// the harness's own lines.
type (
	l1Runner func(args []string) (*resultCounter, nested.Result, error)
	sayFunc  func(format string, a ...any)
)

// settle runs tests in L1 and decides the package's exit status: it
// carries the tests on past L1 deaths and runs the few failed ones again
// (see the comments inside). runL1 is one L1 run; the tests use a fake.
func settle(args, tests []string, deadline time.Time, runL1 l1Runner, say sayFunc) int {
	counter, res, err := runL1(args)
	failed := counter.failedLeaves()
	explained := map[string]bool{} // failed tests whose output named the substrate
	note := func(c *resultCounter) {
		for _, name := range c.failedLeaves() {
			if c.explained(name) {
				explained[name] = true
			}
		}
	}
	note(counter)
	// L1 itself died or froze, or the test binary ended early there (it
	// did not exit 0 and either no test failed, or tests it was given have
	// no result: killed by L1's OOM killer, or a panic such as a goroutine
	// reporting into a finished test, which loses every test after it):
	// the tests it had not finished have no result yet, of their own or of
	// the code. They run in a fresh L1, up to maxL1Deaths times and only
	// with time left; those that had finished keep their result, and the
	// log keeps every run. A test that was running at maxDeathsPerTest
	// deaths is taken to cause them, and fails; the package's other
	// unfinished tests still run, without it.
	deaths := map[string]int{} // the test running at a death: how many
	n := 0                     // deaths in all
	var culprits []string      // tests taken to cause deaths
	for {
		unfinished := slices.ContainsFunc(tests, func(name string) bool { return !counter.finished(name) })
		killed := err == nil && res.ExitCode != 0 && (len(counter.failedLeaves()) == 0 || unfinished)
		if err == nil && !killed {
			break
		}
		var died *nested.Error
		if err != nil && !errors.As(err, &died) {
			say("--- FAIL: nested KVM: %v\n", err)
			return 1
		}
		what := map[bool]string{true: "the test binary ended early", false: "L1 died"}[killed]
		running := counter.running()
		deaths[running]++
		n++
		switch {
		case n > maxL1Deaths:
			say("--- FAIL: nested KVM: %s; that is %d times under one package's tests, more than the substrate explains\n", what, n)
			return 1
		case time.Until(deadline) < 5*time.Minute:
			say("--- FAIL: nested KVM: %s, and no time is left to run the unfinished tests again\n", what)
			return 1
		case running != "" && deaths[running] >= maxDeathsPerTest:
			top, _, _ := strings.Cut(running, "/")
			say("--- FAIL: nested KVM: %s while %s ran, the %s time: it is taken to cause it; the package's other unfinished tests go on without %s\n",
				what, running, ordinal(deaths[running]), top)
			culprits = append(culprits, top)
		}
		rest := slices.DeleteFunc(slices.Clone(tests), func(name string) bool {
			return counter.finished(name) || slices.Contains(culprits, name)
		})
		say("=== nested KVM: %s under the tests (death %d of at most %d the package may see); running the %d that had not finished in a fresh L1: %s\n",
			what, n, maxL1Deaths, len(rest), strings.Join(rest, " "))
		if len(rest) == 0 {
			res.ExitCode = 0
			if len(failed) > 0 {
				res.ExitCode = 1
			}
			break
		}
		args = withRun(args, selecting(rest, "test.run"))
		tests = rest
		counter, res, err = runL1(args)
		failed = append(failed, counter.failedLeaves()...)
		note(counter)
		// res.ExitCode stays this run's own: the check for a killed
		// binary above reads it. (Setting it here for a failure of an
		// earlier L1 made a clean run after a death pass for a killed
		// binary: a phantom death, one of maxL1Deaths, in a CI run of
		// 2026-12-05.)
	}
	if (len(failed) > 0 || len(culprits) > 0) && res.ExitCode == 0 {
		res.ExitCode = 1 // a test failed in an earlier L1, or killed L1s
	}
	// The substrate (QEMU's TCG emulating SVM under L1's KVM) is known to
	// hang or corrupt an L2 guest now and then (README). The tests that
	// failed run once more, each alone in a fresh L1 and down to the
	// subtest that failed, if no more than maxRerun of them failed for a
	// reason no diagnosis names: a failure that repeats fails the package,
	// and one that does not is reported in the log as flaky on nested KVM.
	var unexplained []string
	for _, name := range failed {
		if !explained[name] {
			unexplained = append(unexplained, name)
		}
	}
	if res.ExitCode == 0 || len(failed) == 0 || len(culprits) > 0 {
		return res.ExitCode
	}
	if len(unexplained) > maxRerun {
		say("=== nested KVM: %d tests failed with no diagnosis that names the substrate, more than the %d the substrate explains: none runs again\n",
			len(unexplained), maxRerun)
		return res.ExitCode
	}
	why := "the substrate fails now and then"
	if n := len(failed) - len(unexplained); n > 0 {
		why = fmt.Sprintf("%d of them with a diagnosis that names the substrate", n)
	}
	say("=== nested KVM: %s failed; running %s once more in a fresh L1 (%s)\n",
		strings.Join(failed, " "), map[bool]string{true: "it", false: "each"}[len(failed) == 1], why)
	// Every one runs again, even after one failed again, so that the log
	// shows which failures repeat. An L1 that dies under a rerun gives no
	// answer, of the test or of the code: the rerun is made again in a
	// fresh L1, and the death counts against the package's maxL1Deaths
	// (a CI run of 2026-12-06 failed on a diagnosed triple fault whose
	// rerun L1's kernel killed: "corrupted stack end detected inside
	// scheduler").
	code := 0
	for _, name := range failed {
		undiagnosed := 0 // failures of name that no diagnosis explains
		if !explained[name] {
			undiagnosed++
		}
		for runs := 1; ; {
			if time.Until(deadline) < 5*time.Minute {
				say("=== nested KVM: no time left to run %s again\n", name)
				return 1
			}
			c, again, err := runL1(withRun(args, Exactly(name)))
			var died *nested.Error
			if err != nil && !errors.As(err, &died) {
				say("--- FAIL: nested KVM: %v\n", err)
				return 1
			}
			killed := err == nil && again.ExitCode != 0 && len(c.failedLeaves()) == 0
			if err == nil && !killed {
				if again.ExitCode == 0 {
					break
				}
				if slices.ContainsFunc(c.failedLeaves(), func(l string) bool { return !c.explained(l) }) {
					undiagnosed++
				}
				if undiagnosed < 2 && (runs < maxReruns || undiagnosed == 0 && runs < maxDiagnosedReruns) {
					runs++
					limit := maxReruns
					if undiagnosed == 0 {
						limit = maxDiagnosedReruns
					}
					say("=== nested KVM: %s failed again, with %d failure(s) no diagnosis explains; running it once more in a fresh L1 (rerun %d of at most %d)\n",
						name, undiagnosed, runs, limit)
					continue
				}
				code = 1
				break
			}
			if n++; n > maxL1Deaths {
				say("--- FAIL: nested KVM: L1 died under the rerun of %s; that is %d times under one package's tests, more than the substrate explains\n", name, n)
				return 1
			}
			say("=== nested KVM: L1 died under the rerun of %s (death %d of at most %d the package may see); running it again in a fresh L1\n",
				name, n, maxL1Deaths)
		}
	}
	return code
}

// bestEffort writes to w and never fails: a full disk must not cut the
// stream the tests' results come from.
type bestEffort struct{ w io.Writer }

func (b bestEffort) Write(p []byte) (int, error) {
	b.w.Write(p)
	return len(p), nil
}

// maxRerun bounds the failed tests with no diagnosis that run again: more
// failures than a flaky substrate explains mean the code is broken.
// Failures whose output names the substrate as the cause (a triple fault
// or a hang that L1's KVM traced to it, internal/nested) do not count:
// a CI run on 2026-12-06 had seven tests fail in one L1, two of them so
// diagnosed, and ran none of them again. The e2e package now
// boots Linux about sixty times and bare-metal guests some hundreds; the
// last full CI runs saw 3 to 5 failures the substrate explains (a triple
// fault at the reset vector, a stall), each passing alone in a fresh L1,
// besides those a bug explained (README). Six leaves room for a bad run
// without letting a broken package through: a failure that repeats alone
// fails it, and the reruns stop when the package's -timeout comes near.
const maxRerun = 6

// maxReruns is how many times a failed test may run again. It runs
// again until it passes, fails twice for reasons no diagnosis names, or
// has run again maxReruns times: a failure the substrate's diagnosis
// explains says nothing about the code, so it does not count as one of
// the two. A CI run of 2026-12-06 failed on TestNetMultiqueue/mshvsim,
// which the substrate stalled (vCPU 0 looping in L1's kvm_amd) and then,
// in its rerun, triple-faulted (the IDT unmapped on delivery); one of
// 2026-12-07 on TestProbeQEMU, stalled by the substrate and then
// triple-faulted where no trace was read. A test that fails the same
// way on every run still fails: its second undiagnosed failure ends it.
const maxReruns = 2

// maxDiagnosedReruns is how many times a test may run again while every
// one of its failures carried the substrate's diagnosis. Such failures
// come in runs: a fresh-clone run of 2026-12-07 saw
// TestVirtioLiveMigration/mshvsim-to-kvm stalled by the substrate (vCPU 1
// looping in L1's kvm_amd) in three L1s in a row, and stop 29's CI the
// kvm-to-mshvsim one in two; the signature (an L2 vCPU at a RIP inside
// L1's kvm_amd) is one no VMM bug can produce.
const maxDiagnosedReruns = 4

// unframed drops test2json's framing byte (^V) from text quoted from
// L1's output: the test binary there frames its lines too, and quoted
// frames would make the host's test2json file the rest of the message
// under a test.
func unframed(text string) string { return strings.ReplaceAll(text, "\x16", "") }

// maxL1Deaths bounds the L1 deaths one package's tests may see and still
// pass: L1's kernel dies under KVM_RUN now and then (the substrate's
// "stack guard page" crash, README), and the e2e package saw 1, 2, 2 and
// 4 deaths in the full CI runs of 2026-12-05, each under another test.
const maxL1Deaths = 5

// maxDeathsPerTest is how many L1 deaths one test may be running at before
// it is taken to cause them. Two was too few: the substrate's deaths
// follow the exit rate, and the heaviest test, TestKilledDuringDiskIO on
// mshvsim (a 2-vCPU guest writing and flushing on two writers, killed
// mid-write), was running at three of the five deaths in the CI runs of
// 2026-12-06, twice in a row in one of them (an L1 that froze, then one
// whose kernel died in an interrupt: "stack guard page"), while it passes
// in most L1s; its second death then failed the package and left 35
// tests unrun.
const maxDeathsPerTest = 3

// ordinal spells 1, 2, 3 as first, second, third.
func ordinal(n int) string {
	if n >= 1 && n <= 3 {
		return [...]string{"first", "second", "third"}[n-1]
	}
	return strconv.Itoa(n) + "th"
}

// withRun returns args with its -test.run replaced by pattern.
func withRun(args []string, pattern string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		if flagName(a) != "test.run" {
			out = append(out, a)
		}
	}
	return append(out, "-test.run="+pattern)
}

// Exactly returns a -test.run pattern that selects the one test or
// subtest name ("TestX/kvm/2cpu") and nothing else, level by level.
func Exactly(name string) string {
	levels := strings.Split(name, "/")
	for i, l := range levels {
		levels[i] = "^" + regexp.QuoteMeta(l) + "$"
	}
	return strings.Join(levels, "/")
}

// selecting returns a -test.run (or -test.bench, as flag says) pattern
// that selects exactly the named top-level tests, followed by the levels
// below the first of the user's own pattern, so that `-run TestX/kvm`
// still selects only those subtests.
func selecting(names []string, flag string) string {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return "^(" + strings.Join(quoted, "|") + ")$" + subPattern(flag)
}

// subPattern returns the part of the user's -test.run (or -test.bench)
// after its first level.
func subPattern(name string) string {
	f := flag.Lookup(name)
	if f == nil {
		return ""
	}
	if _, rest, ok := strings.Cut(f.Value.String(), "/"); ok {
		return "/" + rest
	}
	return ""
}

func flagName(arg string) string {
	a := strings.TrimLeft(arg, "-")
	if a == arg {
		return ""
	}
	name, _, _ := strings.Cut(a, "=")
	return name
}

func moduleRoot(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// FlakyMark ends the line a test that starts an L1 of its own logs when a
// subtest failed there and passed when run again in a fresh one; the CI
// report lists such a test as flaky (internal/testreport).
const FlakyMark = "(flaky on nested KVM)"

// FailedLeaves reads the -v output of a test binary and returns the
// tests that failed with no failed subtest (the smallest set to run
// again), and whether each printed a diagnosis that names the nested
// substrate as the cause. For tests that start an L1 of their own.
func FailedLeaves(out string) (failed []string, explained map[string]bool) {
	c := &resultCounter{}
	c.Write([]byte(out + "\n"))
	explained = map[string]bool{}
	for _, name := range c.failedLeaves() {
		failed = append(failed, name)
		explained[name] = c.explained(name)
	}
	return failed, explained
}

// resultCounter counts the -v result lines of the run in L1 and remembers
// which test started last.
type resultCounter struct {
	mu               sync.Mutex
	pass, fail, skip int
	last             string
	failed           []string        // tests and subtests that failed, in order
	done             map[string]bool // top-level tests that passed, failed or skipped
	partial          []byte
	// owner is the test whose output the lines are: the last one named
	// by "=== RUN", "=== NAME" or "=== CONT" (go test -v heads each
	// switch of the output from one test to another with one of them).
	owner string
	// diagnosed holds the tests whose output named the substrate as a
	// failure's cause (nested.Diagnosed).
	diagnosed map[string]bool
}

// explained reports whether the failed test name, or a test it runs
// under, printed a diagnosis that names the substrate as the cause.
func (c *resultCounter) explained(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n := name; ; {
		if c.diagnosed[n] {
			return true
		}
		i := strings.LastIndexByte(n, '/')
		if i < 0 {
			return false
		}
		n = n[:i]
	}
}

// failedLeaves returns the failed tests that have no failed subtest: the
// smallest set of tests to run again. A parent that failed in its own
// body (its subtests passed) is a leaf too.
func (c *resultCounter) failedLeaves() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.failed {
		parent := slices.ContainsFunc(c.failed, func(m string) bool { return strings.HasPrefix(m, n+"/") })
		if !parent && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func (c *resultCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := strings.IndexByte(string(c.partial), '\n')
		if i < 0 {
			break
		}
		raw := strings.ReplaceAll(string(c.partial[:i]), "\x16", "") // test2json framing
		line := strings.TrimSpace(raw)
		c.partial = c.partial[i+1:]
		if strings.HasPrefix(raw, "--- ") { // not indented: a top-level result
			if _, rest, ok := strings.Cut(raw, ": "); ok {
				name, _, _ := strings.Cut(rest, " ")
				if c.done == nil {
					c.done = map[string]bool{}
				}
				c.done[name] = true
			}
		}
		switch {
		case strings.HasPrefix(line, "=== RUN "):
			c.last = strings.TrimSpace(strings.TrimPrefix(line, "=== RUN "))
			c.owner = c.last
		case strings.HasPrefix(line, "=== NAME "), strings.HasPrefix(line, "=== CONT "):
			c.owner = strings.TrimSpace(line[len("=== NAME "):])
		case nested.Diagnosed(line) && c.owner != "":
			if c.diagnosed == nil {
				c.diagnosed = map[string]bool{}
			}
			c.diagnosed[c.owner] = true

		case strings.HasPrefix(line, "--- PASS: "):
			c.pass++
		case strings.HasPrefix(line, "--- FAIL: "):
			c.fail++
			name, _, _ := strings.Cut(strings.TrimPrefix(line, "--- FAIL: "), " ")
			c.failed = append(c.failed, name)
		case strings.HasPrefix(line, "--- SKIP: "):
			c.skip++
		}
	}
	return len(p), nil
}

// finished reports whether the top-level test name has a result.
func (c *resultCounter) finished(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done[name]
}

func (c *resultCounter) running() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
