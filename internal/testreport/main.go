// Command testreport turns `go test -json` into the log CI shows: the
// package lines go test prints, the full output of every failed test, every
// skipped test with its reason, and one closing count. A test that skipped
// on the host because it needs KVM and then ran in the nested-KVM VM
// (internal/kvmtest) counts once, by its result in L1, so the closing line
// tells at a glance whether anything went untested. A test whose every
// subtest skipped counts as failed: it reported PASS having tested nothing.
//
//	go test -json ./... | go run ./internal/testreport
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"govmm/internal/kvmtest"
)

type event struct {
	Action     string
	Package    string
	ImportPath string // build events
	Test       string
	Output     string
	Elapsed    float64
}

type result struct {
	action string   // the last of pass, fail, skip
	failed bool     // failed in some run (a rerun in a fresh L1 may pass)
	output []string // every output line of the test, host and L1
}

func main() {
	start := time.Now()
	results := map[string]*result{} // "pkg\x00Test/sub"
	var order []string
	pkgOut := map[string][]string{} // output not tied to a test
	nestedFail := map[string]bool{} // inside a "--- FAIL: nested KVM" message
	var stops []string              // "L1 stopped" lines: L1 died under the tests
	var pkgLines []string
	failedPkgs := map[string]bool{}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Println(sc.Text()) // not JSON: a build error, say
			continue
		}
		switch e.Action {
		case "build-output":
			fmt.Print(e.Output)
			continue
		case "build-fail":
			failedPkgs[e.ImportPath] = true
			continue
		}
		if e.Test == "" {
			switch e.Action {
			case "output":
				pkgOut[e.Package] = append(pkgOut[e.Package], e.Output)
				// The harness's own lines, and after a "--- FAIL: nested
				// KVM" or an "L1 stopped" everything up to the harness's
				// or a test's next line (why L1 died: the last output, L1's
				// kernel log), which no test owns.
				switch {
				case strings.HasPrefix(e.Output, "--- FAIL: nested KVM"):
					nestedFail[e.Package] = true
				case strings.HasPrefix(e.Output, "=== nested KVM: L1 stopped"):
					nestedFail[e.Package] = true
					stops = append(stops, e.Package+": "+e.Output)
				case strings.HasPrefix(e.Output, "=== nested KVM"):
					nestedFail[e.Package] = false
				}
				if strings.HasPrefix(e.Output, "=== nested KVM") || nestedFail[e.Package] {
					fmt.Print(e.Output)
				}
			case "pass", "fail", "skip":
				word := map[string]string{"pass": "ok  ", "fail": "FAIL", "skip": "ok  "}[e.Action]
				line := fmt.Sprintf("%s\t%s\t%.3fs", word, e.Package, e.Elapsed)
				if e.Action == "skip" {
					line += " [no test files]"
				}
				if e.Action == "fail" {
					failedPkgs[e.Package] = true
				}
				pkgLines = append(pkgLines, line)
				if e.Action != "skip" {
					fmt.Println(line)
				}
			}
			continue
		}
		nestedFail[e.Package] = false
		key := e.Package + "\x00" + e.Test
		r := results[key]
		if r == nil {
			r = &result{}
			results[key] = r
			order = append(order, key)
		}
		switch e.Action {
		case "output":
			r.output = append(r.output, e.Output)
		case "pass", "fail", "skip":
			r.action = e.Action
			r.failed = r.failed || e.Action == "fail"
		}
	}
	// A test whose every subtest skipped tested nothing: it must not pass.
	subs := map[string][2]int{} // parent key: subtests, skipped subtests
	for _, key := range order {
		if i := strings.LastIndexByte(key, '/'); i > strings.IndexByte(key, '\x00') {
			c := subs[key[:i]]
			c[0]++
			if results[key].action == "skip" {
				c[1]++
			}
			subs[key[:i]] = c
		}
	}
	var pass, fail, skip int
	var failed, skipped, flaky []string
	for _, key := range order {
		r := results[key]
		pkg, test, _ := strings.Cut(key, "\x00")
		name := pkg + " " + test
		if c := subs[key]; r.action == "pass" && c[0] > 0 && c[0] == c[1] {
			r.action = "fail"
			r.output = append(r.output, fmt.Sprintf("every one of its %d subtests skipped: it tested nothing\n", c[0]))
		}
		switch r.action {
		case "pass":
			pass++
			// A test that starts an L1 of its own (TestVFIO) runs its
			// failed subtests again there and says so in its output.
			if (r.failed || slices.ContainsFunc(r.output, func(l string) bool { return strings.Contains(l, kvmtest.FlakyMark) })) && !strings.Contains(test, "/") {
				flaky = append(flaky, name+"\n"+indent(r.output))
			}
		case "fail":
			fail++
			failed = append(failed, name+"\n"+indent(r.output))
		case "skip":
			skip++
			skipped = append(skipped, name+": "+skipReason(r.output))
		}
	}
	for pkg := range failedPkgs {
		if !anyFailedTest(results, pkg) {
			failed = append(failed, pkg+" (package)\n"+indent(pkgOut[pkg]))
		}
	}
	sort.Strings(skipped)
	if len(failed) > 0 {
		fmt.Println("\n=== failed:")
		for _, f := range failed {
			fmt.Println("--- FAIL: " + f)
		}
	}
	if len(flaky) > 0 {
		fmt.Println("\n=== failed on nested KVM, then passed when run again in a fresh L1 (the substrate fails now and then; see README):")
		for _, f := range flaky {
			fmt.Println("--- FLAKY: " + f)
		}
	}
	if len(skipped) > 0 {
		fmt.Println("\n=== skipped:")
		for _, s := range skipped {
			fmt.Println("    " + s)
		}
	}
	fmt.Printf("\ntests, subtests included (a test that needs KVM counts by its run on KVM), %v:\n", time.Since(start).Round(time.Second))
	if len(stops) > 0 {
		fmt.Printf("L1 stopped under the tests %d time(s); the tests it had not finished ran in a fresh L1 (listed above):\n", len(stops))
		for _, s := range stops {
			fmt.Print("    " + s)
		}
	}
	if len(flaky) > 0 {
		fmt.Printf("%d of the passed tests failed once on nested KVM and passed when run again (listed above)\n", len(flaky))
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", pass, fail, skip)
	if fail > 0 || len(failedPkgs) > 0 {
		os.Exit(1)
	}
}

func anyFailedTest(results map[string]*result, pkg string) bool {
	for key, r := range results {
		if strings.HasPrefix(key, pkg+"\x00") && r.action == "fail" {
			return true
		}
	}
	return false
}

// skipReason is the last line a skipped test logged: t.Skip's message.
func skipReason(out []string) string {
	for i := len(out) - 1; i >= 0; i-- {
		l := strings.TrimSpace(out[i])
		if l == "" || strings.HasPrefix(l, "--- SKIP") || strings.HasPrefix(l, "=== ") {
			continue
		}
		return l
	}
	return "(no reason given)"
}

func indent(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		if strings.HasPrefix(l, "=== RUN") || strings.HasPrefix(l, "=== PAUSE") || strings.HasPrefix(l, "=== CONT") {
			continue
		}
		b.WriteString("    " + strings.TrimRight(l, "\n") + "\n")
	}
	return b.String()
}
