// Command fuzzcampaign runs the project's fuzz targets toward a CPU-time
// budget each, across as many sessions as it takes, and keeps the account in
// a ledger committed with the code.
//
// Issue 16 asks for at least one CPU-hour per fuzz target. A development
// machine has two cores that the nested test substrate keeps busy, so the
// campaign runs in slices at nice 19 beside other work: each slice fuzzes
// the target with the least CPU time so far, measures the CPU time of the
// fuzzer and its workers (the rusage of the test binary, which includes the
// workers it waited for), and adds it to the ledger before the next slice
// starts. Stopping it loses at most the slice in progress.
//
//	go run ./internal/fuzzcampaign [-budget 1h] [-slice 10m] [-workers 1] [-for 2h]
//	go run ./internal/fuzzcampaign -table   # the README's table, from the ledger
//
// A target whose fuzzer fails is marked in the ledger and not run again
// until its row is edited: the failing input is in the package's
// testdata/fuzz, where it becomes a regression seed once the bug is fixed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ledgerPath := flag.String("ledger", "internal/fuzzcampaign/ledger.tsv", "the ledger, relative to the module root")
	budget := flag.Duration("budget", time.Hour, "CPU time each target should reach")
	slice := flag.Duration("slice", 10*time.Minute, "wall time of one fuzzing slice")
	workers := flag.Int("workers", 1, "targets fuzzed at the same time (each with one fuzz worker)")
	total := flag.Duration("for", 0, "stop starting slices after this long (0: until every target has its budget)")
	only := flag.String("run", "", "regexp: fuzz only targets whose package/target matches")
	table := flag.Bool("table", false, "print the ledger as the README's markdown table and exit")
	flag.Parse()

	root, err := moduleRoot()
	if err != nil {
		fatal(err)
	}
	path := filepath.Join(root, *ledgerPath)
	if *table {
		l, err := readLedger(path)
		if err != nil {
			fatal(err)
		}
		fmt.Print(l.markdown(*budget))
		return
	}
	var filter *regexp.Regexp
	if *only != "" {
		if filter, err = regexp.Compile(*only); err != nil {
			fatal(fmt.Errorf("-run: %w", err))
		}
	}

	targets, err := listTargets(root)
	if err != nil {
		fatal(err)
	}
	l, err := readLedger(path)
	if err != nil {
		fatal(err)
	}
	l.add(targets)
	if err := l.write(path); err != nil {
		fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var deadline time.Time
	if *total > 0 {
		deadline = time.Now().Add(*total)
	}
	bins, err := os.MkdirTemp("", "fuzzcampaign-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(bins)

	gocache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		fatal(fmt.Errorf("find the go cache: %w", err))
	}
	c := &campaign{root: root, cache: filepath.Join(strings.TrimSpace(string(gocache)), "fuzz"), path: path, ledger: l, bins: bins, budget: *budget, slice: *slice, filter: filter, busy: map[string]bool{}}
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && (deadline.IsZero() || time.Now().Before(deadline)) {
				if !c.runOne(ctx) {
					return
				}
			}
		}()
	}
	wg.Wait()
	fmt.Print(l.markdown(*budget))
}

// campaign hands slices to workers and records them.
type campaign struct {
	root, path, bins string
	cache            string // the go command's fuzz cache, where corpora persist between runs
	budget, slice    time.Duration
	filter           *regexp.Regexp

	mu     sync.Mutex
	ledger *ledger
	busy   map[string]bool // targets a worker is fuzzing now
	built  sync.Map        // package -> *buildOnce
}

type buildOnce struct {
	once sync.Once
	bin  string
	err  error
}

// runOne fuzzes the neediest target for one slice and records it. It
// reports false when no target needs more time.
func (c *campaign) runOne(ctx context.Context) bool {
	c.mu.Lock()
	r := c.ledger.neediest(c.budget, c.busy, c.filter)
	if r == nil {
		c.mu.Unlock()
		return false
	}
	c.busy[r.key()] = true
	pkg, target := r.Package, r.Target
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.busy, pkg+"/"+target)
		c.mu.Unlock()
	}()

	bin, err := c.build(pkg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fuzzcampaign: %v\n", err)
		c.record(pkg, target, func(r *row) { r.Status = "build failed" })
		return true
	}
	res, err := fuzzSlice(ctx, bin, filepath.Join(c.root, pkg), filepath.Join(c.cache, "govmm", pkg), target, c.slice)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fuzzcampaign: %s %s: %v\n", pkg, target, err)
		return ctx.Err() == nil
	}
	c.record(pkg, target, func(r *row) {
		r.CPU += res.cpu
		r.Wall += res.wall
		r.Execs += res.execs
		if res.corpus > r.Corpus {
			r.Corpus = res.corpus
		}
		r.Last = time.Now().UTC().Format("2006-01-02")
		if res.failed {
			r.Crashes++
			r.Status = "failed: " + res.failure
		}
	})
	fmt.Printf("fuzzcampaign: %s %s: %s CPU in %s wall, %d execs, corpus %d%s\n",
		pkg, target, res.cpu.Round(time.Second), res.wall.Round(time.Second), res.execs, res.corpus,
		map[bool]string{true: ", FAILED: " + res.failure}[res.failed])
	return true
}

func (c *campaign) record(pkg, target string, f func(*row)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.ledger.find(pkg, target))
	if err := c.ledger.write(c.path); err != nil {
		fmt.Fprintf(os.Stderr, "fuzzcampaign: %v\n", err)
	}
}

// build compiles a package's test binary once per campaign, with the
// coverage instrumentation that `go test -fuzz` adds (without it the fuzzer
// mutates blindly).
func (c *campaign) build(pkg string) (string, error) {
	v, _ := c.built.LoadOrStore(pkg, &buildOnce{})
	b := v.(*buildOnce)
	b.once.Do(func() {
		b.bin = filepath.Join(c.bins, strings.ReplaceAll(pkg, "/", "_")+".test")
		cmd := exec.Command("go", "test", "-c", "-fuzz", "^Fuzz", "-o", b.bin, "./"+pkg)
		cmd.Dir = c.root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build the tests of %s: %w\n%s", pkg, err, out)
		}
	})
	return b.bin, b.err
}

// sliceResult is what one fuzzing slice did.
type sliceResult struct {
	cpu, wall     time.Duration
	execs, corpus int64
	failed        bool
	failure       string
}

// fuzzSlice runs one target for d at nice 19, with one fuzz worker, in the
// package's directory (so a failing input lands in its testdata/fuzz), with
// the corpus cache `go test -fuzz` would use for the package.
func fuzzSlice(ctx context.Context, bin, dir, cache, target string, d time.Duration) (sliceResult, error) {
	var res sliceResult
	cmd := exec.CommandContext(ctx, "nice", "-n", "19", bin,
		"-test.run", "^$", "-test.fuzz", "^"+target+"$", "-test.fuzztime", d.String(),
		"-test.fuzzcachedir", cache,
		"-test.parallel", "1", "-test.fuzzminimizetime", "10s")
	cmd.Dir = dir
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	if err := startBackground(cmd); err != nil {
		return res, fmt.Errorf("start %s: %w", bin, err)
	}
	err := cmd.Wait()
	res.wall = time.Since(start)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if bytes.Contains(out.Bytes(), []byte("not built with coverage instrumentation")) {
		return res, fmt.Errorf("%s was built without the fuzzer's coverage instrumentation", bin)
	}
	res.execs, res.corpus = progress(out.Bytes())
	if err != nil && ctx.Err() == nil {
		res.failed = true
		res.failure = failure(out.Bytes())
	}
	return res, nil
}

// startBackground starts cmd in a session of its own whose scheduler
// autogroup has nice 19. Where the kernel groups tasks by session
// (CONFIG_SCHED_AUTOGROUP, on in Debian's kernels), a task's own nice
// value weighs it only against its session's other tasks: a nice-19
// fuzzer in the shell's session took as much CPU as the nested VM in
// another session. Its own session's autogroup, made nice, yields to the
// rest of the machine.
func startBackground(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return err
	}
	// Best effort: a kernel without autogroups has no such file, and the
	// process's own nice value is then what counts.
	os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", cmd.Process.Pid), []byte("19"), 0)
	return nil
}

var progressLine = regexp.MustCompile(`fuzz: elapsed: \S+, execs: (\d+) .*?(?:new interesting: \d+ \(total: (\d+)\))?$`)

// progress returns the executions and corpus size from the fuzzer's last
// progress line.
func progress(out []byte) (execs, corpus int64) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := progressLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fmt.Sscan(m[1], &execs)
		if m[2] != "" {
			fmt.Sscan(m[2], &corpus)
		}
	}
	return execs, corpus
}

var failingInput = regexp.MustCompile(`Failing input written to (\S+)`)

// failure names what a failed fuzzer left: its failing input's file, or the
// last line it printed.
func failure(out []byte) string {
	if m := failingInput.FindSubmatch(out); m != nil {
		return "input in " + string(m[1])
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// listTargets finds every fuzz target the host's build of the tests has:
// `go test -list` in each package whose test files declare one.
func listTargets(root string) ([]row, error) {
	cmd := exec.Command("grep", "-rl", "--include=*_test.go", "^func Fuzz", ".")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("find fuzz targets: %w", err)
	}
	pkgs := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		pkgs[filepath.ToSlash(filepath.Dir(strings.TrimPrefix(f, "./")))] = true
	}
	var names []string
	for p := range pkgs {
		names = append(names, p)
	}
	sort.Strings(names)
	var rows []row
	for _, p := range names {
		cmd := exec.Command("go", "test", "-list", "^Fuzz", "./"+p)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("list the fuzz targets of %s: %w", p, err)
		}
		for _, name := range strings.Fields(string(out)) {
			if strings.HasPrefix(name, "Fuzz") {
				rows = append(rows, row{Package: p, Target: name})
			}
		}
	}
	return rows, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run fuzzcampaign inside the govmm module")
	}
	return filepath.Dir(mod), nil
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "fuzzcampaign: %v\n", err)
	os.Exit(1)
}
