package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// row is one fuzz target's account: what the campaign has given it so far.
type row struct {
	Package, Target string
	CPU, Wall       time.Duration
	Execs, Corpus   int64
	Crashes         int
	Last            string // the date of its last slice
	Status          string // empty, or why the campaign no longer runs it
}

func (r *row) key() string { return r.Package + "/" + r.Target }

// ledger is the campaign's account, one row per target, kept as a
// tab-separated file so that a diff shows what a session added.
type ledger struct{ rows []*row }

const ledgerHeader = "# package\ttarget\tcpu_seconds\twall_seconds\texecs\tcorpus\tcrashes\tlast\tstatus"

func readLedger(path string) (*ledger, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &ledger{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the ledger: %w", err)
	}
	defer f.Close()
	return parseLedger(f, path)
}

func parseLedger(f interface{ Read([]byte) (int, error) }, name string) (*ledger, error) {
	l := &ledger{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, "\t")
		if len(fields) != 9 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 9", name, n, len(fields))
		}
		r := &row{Package: fields[0], Target: fields[1], Last: fields[7], Status: fields[8]}
		var nums [5]int64
		for i, s := range fields[2:7] {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("%s:%d: field %d is %q, want a count", name, n, i+3, s)
			}
			nums[i] = v
		}
		r.CPU, r.Wall = time.Duration(nums[0])*time.Second, time.Duration(nums[1])*time.Second
		r.Execs, r.Corpus, r.Crashes = nums[2], nums[3], int(nums[4])
		if l.find(r.Package, r.Target) != nil {
			return nil, fmt.Errorf("%s:%d: %s appears twice", name, n, r.key())
		}
		l.rows = append(l.rows, r)
	}
	return l, sc.Err()
}

// find returns a target's row, nil if it has none.
func (l *ledger) find(pkg, target string) *row {
	for _, r := range l.rows {
		if r.Package == pkg && r.Target == target {
			return r
		}
	}
	return nil
}

// add gives every listed target a row, keeping the rows it has, and sorts
// the ledger by package and target.
func (l *ledger) add(targets []row) {
	for _, t := range targets {
		if l.find(t.Package, t.Target) == nil {
			t := t
			l.rows = append(l.rows, &t)
		}
	}
	sort.Slice(l.rows, func(i, j int) bool { return l.rows[i].key() < l.rows[j].key() })
}

// neediest is the runnable target furthest below the budget, nil if none.
func (l *ledger) neediest(budget time.Duration, busy map[string]bool, filter *regexp.Regexp) *row {
	var best *row
	for _, r := range l.rows {
		if r.Status != "" || r.CPU >= budget || busy[r.key()] || (filter != nil && !filter.MatchString(r.key())) {
			continue
		}
		if best == nil || r.CPU < best.CPU {
			best = r
		}
	}
	return best
}

func (l *ledger) format() string {
	var b strings.Builder
	b.WriteString(ledgerHeader + "\n")
	for _, r := range l.rows {
		fmt.Fprintf(&b, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Package, r.Target,
			int64(r.CPU/time.Second), int64(r.Wall/time.Second), r.Execs, r.Corpus, r.Crashes, r.Last, r.Status)
	}
	return b.String()
}

// write replaces the ledger file atomically, so that a campaign stopped
// mid-write leaves the old account whole.
func (l *ledger) write(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(l.format()), 0o644); err != nil {
		return fmt.Errorf("write the ledger: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write the ledger: %w", err)
	}
	return nil
}

// markdown is the README's table: every target, its CPU time against the
// budget, and totals.
func (l *ledger) markdown(budget time.Duration) string {
	var b strings.Builder
	b.WriteString("| package | target | CPU time | executions | corpus | crashes | last run |\n|---|---|---|---|---|---|---|\n")
	var cpu time.Duration
	met := 0
	for _, r := range l.rows {
		cpu += r.CPU
		mark := ""
		if r.CPU >= budget {
			met++
			mark = " (met)"
		}
		last := r.Last
		if r.Status != "" {
			last += " " + r.Status
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s%s | %s | %d | %d | %s |\n", r.Package, r.Target,
			r.CPU.Round(time.Second), mark, millions(r.Execs), r.Corpus, r.Crashes, strings.TrimSpace(last))
	}
	fmt.Fprintf(&b, "\n%d targets, %s of CPU time in all; %d have the %s budget.\n", len(l.rows), cpu.Round(time.Minute), met, budget)
	return b.String()
}

func millions(n int64) string {
	if n >= 100_000 {
		return fmt.Sprintf("%.2f million", float64(n)/1e6)
	}
	return strconv.FormatInt(n, 10)
}
