// Package hangreport says where a govmm process that a test gave up on is
// stuck, from outside it: a Go goroutine dump shows a vCPU "in KVM_RUN",
// which does not tell a guest spinning without exits from a guest halted
// with no interrupt coming from a host kernel that never re-enters it.
// The kernel knows: each thread's state, wait channel and kernel stack,
// its CPU time, KVM's per-VM counters in debugfs, and KVM's trace events.
// Report gathers them for one second, kicks each vCPU thread once with
// SIGURG (KVM_RUN then returns EINTR and govmm re-enters, as it does for
// the Go runtime's own preemption signal, so the trace shows the guest's
// RIP even when the guest makes no exits of its own),
// and returns a text a failing test can print. It needs root for the
// stacks and the trace (tests inside L1 have it); without, it reports
// what it can read.
package hangreport

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Where the kernel publishes what Report reads.
var (
	procDir    = "/proc"
	tracingDir = "/sys/kernel/tracing"
	kvmDebugfs = "/sys/kernel/debug/kvm"
)

// Window is how long Report watches before and after its kick.
const (
	watchBefore = time.Second
	watchAfter  = 300 * time.Millisecond
)

// vcpuThread names the threads Report kicks and traces: govmm names its
// vCPU threads vcpu0, vcpu1, ...
var vcpuThread = regexp.MustCompile(`^vcpu\d+$`)

// thread is one task of the process as /proc shows it.
type thread struct {
	tid   int
	comm  string
	state string // R, S, D, ... from stat
	wchan string
	stack string // kernel stack; empty without root
	ticks int64  // utime+stime in clock ticks
}

// kick is the signal Report sends each vCPU thread: the one the Go runtime
// preempts threads with, which every accelerator backend already takes as
// "re-enter" (a backend's own kick comes with a flag this one lacks).
const kick = syscall.SIGURG

// Report watches process pid for about 1.3 s and describes where its
// threads are.
func Report(pid int) string {
	var b strings.Builder
	before, err := threads(pid)
	if err != nil {
		return fmt.Sprintf("hang report for pid %d: %v\n", pid, err)
	}
	var vcpus []int
	for _, t := range before {
		if vcpuThread.MatchString(t.comm) {
			vcpus = append(vcpus, t.tid)
		}
	}
	stats0 := KVMStats(pid)
	tr, trErr := startTrace(pid, vcpus)
	start := time.Now()
	time.Sleep(watchBefore)
	mid, _ := threads(pid)
	elapsed := time.Since(start)
	for _, tid := range vcpus {
		syscall.Tgkill(pid, tid, kick) // ESRCH: the thread is gone, nothing to see
	}
	time.Sleep(watchAfter)
	stats1 := KVMStats(pid)
	fmt.Fprintf(&b, "hang report for pid %d (%d threads, vCPU threads %v), watched %v", pid, len(before), vcpus, elapsed.Round(time.Millisecond))
	if len(vcpus) > 0 {
		fmt.Fprintf(&b, ", then each vCPU thread kicked with signal %d", int(kick))
	}
	b.WriteString(":\n")
	writeThreads(&b, before, mid, elapsed)
	writeStats(&b, stats0, stats1)
	if trErr != nil {
		fmt.Fprintf(&b, "kvm trace: %v\n", trErr)
	} else {
		text, err := tr.stop()
		if err != nil {
			fmt.Fprintf(&b, "kvm trace: %v\n", err)
		} else {
			b.WriteString(summarizeTrace(text))
			b.WriteString(entries(text, hostCode()))
		}
	}
	return b.String()
}

// threads reads every task of pid.
func threads(pid int) ([]thread, error) {
	dir := filepath.Join(procDir, strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	var out []thread
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		t := thread{tid: tid}
		td := filepath.Join(dir, e.Name())
		stat, err := os.ReadFile(filepath.Join(td, "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		t.comm, t.state, t.ticks = parseStat(string(stat))
		if w, err := os.ReadFile(filepath.Join(td, "wchan")); err == nil {
			t.wchan = string(w)
		}
		if s, err := os.ReadFile(filepath.Join(td, "stack")); err == nil {
			t.stack = string(s)
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b thread) int { return cmp.Compare(a.tid, b.tid) })
	return out, nil
}

// parseStat takes comm, state and utime+stime from a /proc/PID/stat line.
// comm is in parentheses and may hold spaces and parentheses itself, so
// the fields after it are counted from the last ')'.
func parseStat(s string) (comm, state string, ticks int64) {
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return "", "", 0
	}
	comm = s[open+1 : close]
	f := strings.Fields(s[close+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) > 0 {
		state = f[0]
	}
	if len(f) > 12 {
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks = u + st
	}
	return comm, state, ticks
}

// clockTick is USER_HZ, the unit of utime and stime (100 on every Linux
// architecture govmm runs on).
const clockTick = 10 * time.Millisecond

func writeThreads(b *strings.Builder, before, after []thread, elapsed time.Duration) {
	later := map[int]thread{}
	for _, t := range after {
		later[t.tid] = t
	}
	for _, t := range before {
		cpu := "exited"
		if a, ok := later[t.tid]; ok {
			busy := time.Duration(a.ticks-t.ticks) * clockTick
			cpu = fmt.Sprintf("cpu %v of %v", busy, elapsed.Round(time.Millisecond))
			t = a
		}
		fmt.Fprintf(b, "  thread %d %s: state %s, wchan %s, %s\n", t.tid, t.comm, t.state, cmp.Or(t.wchan, "-"), cpu)
		if vcpuThread.MatchString(t.comm) || t.state == "D" {
			for _, l := range strings.Split(strings.TrimSpace(t.stack), "\n") {
				if l != "" {
					fmt.Fprintf(b, "      %s\n", l)
				}
			}
		}
	}
}

// KVMStats reads KVM's integer counters for the VMs process pid holds
// (/sys/kernel/debug/kvm/PID-FD/), summed over them; empty where debugfs
// is not mounted. The boot benchmark reads them too.
func KVMStats(pid int) map[string]int64 {
	dirs, _ := filepath.Glob(filepath.Join(kvmDebugfs, strconv.Itoa(pid)+"-*"))
	out := map[string]int64{}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			raw, err := os.ReadFile(filepath.Join(d, e.Name()))
			if err != nil {
				continue
			}
			if v, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64); err == nil {
				out[e.Name()] += v
			}
		}
	}
	return out
}

// writeStats prints the counters that moved while Report watched.
func writeStats(b *strings.Builder, a, z map[string]int64) {
	if len(z) == 0 {
		b.WriteString("kvm counters: none readable (no debugfs, or no VM)\n")
		return
	}
	var moved []string
	for _, k := range slices.Sorted(maps.Keys(z)) {
		if d := z[k] - a[k]; d != 0 {
			moved = append(moved, fmt.Sprintf("%s +%d", k, d))
		}
	}
	if len(moved) == 0 {
		b.WriteString("kvm counters: none moved\n")
		return
	}
	fmt.Fprintf(b, "kvm counters that moved: %s\n", strings.Join(moved, ", "))
}

// trace is a tracefs instance of Report's own, so the harness's global
// trace (triple faults) is left alone.
type trace struct{ dir string }

func startTrace(pid int, tids []int) (*trace, error) {
	if len(tids) == 0 {
		return nil, fmt.Errorf("no vCPU threads to trace")
	}
	if _, err := os.Stat(filepath.Join(tracingDir, "instances")); err != nil {
		return nil, fmt.Errorf("no tracefs: %w", err)
	}
	dir := filepath.Join(tracingDir, "instances", fmt.Sprintf("govmm-hang-%d", pid))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create trace instance: %w", err)
	}
	t := &trace{dir: dir}
	var ids []string
	for _, tid := range tids {
		ids = append(ids, strconv.Itoa(tid))
	}
	for _, w := range []struct{ file, val string }{
		{"set_event_pid", strings.Join(ids, " ")},
		{"events/kvm/enable", "1"},
		{"tracing_on", "1"},
	} {
		if err := os.WriteFile(filepath.Join(dir, w.file), []byte(w.val), 0); err != nil {
			t.remove()
			return nil, fmt.Errorf("trace instance %s: %w", w.file, err)
		}
	}
	return t, nil
}

func (t *trace) stop() (string, error) {
	defer t.remove()
	os.WriteFile(filepath.Join(t.dir, "tracing_on"), []byte("0"), 0)
	b, err := os.ReadFile(filepath.Join(t.dir, "trace"))
	if err != nil {
		return "", fmt.Errorf("read trace: %w", err)
	}
	return string(b), nil
}

func (t *trace) remove() {
	os.WriteFile(filepath.Join(t.dir, "events/kvm/enable"), []byte("0"), 0)
	os.Remove(t.dir) // rmdir of an instance frees its buffers
}

// traceEvent matches one event line of a trace: "TASK-TID [CPU] FLAGS
// TIMESTAMP: EVENT: DETAIL".
var traceEvent = regexp.MustCompile(`^\s*(\S+)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+): (.*)$`)

// exitReason picks the reason out of a kvm_exit line ("reason npf rip
// 0x...", or VMX's "reason EPT_VIOLATION rip ...").
var exitReason = regexp.MustCompile(`reason (\S+)`)

// traceHead and traceTail are how many event lines the summary keeps
// from each end of the trace.
const traceHead, traceTail = 15, 25

// summarizeTrace counts the trace's events (kvm_exit by reason) and keeps
// its first and last lines: a stuck guest shows as no events at all, as
// the same exit over and over, or as a halt with no injection after it.
func summarizeTrace(text string) string {
	var events []string
	count := map[string]int{}
	for _, l := range strings.Split(text, "\n") {
		m := traceEvent.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		events = append(events, strings.TrimSpace(l))
		key := m[4]
		if key == "kvm_exit" {
			if r := exitReason.FindStringSubmatch(m[5]); r != nil {
				key += " " + r[1]
			}
		}
		count[key]++
	}
	var b strings.Builder
	if len(events) == 0 {
		b.WriteString("kvm trace of the vCPU threads: no events (not one entry or exit, the kick included)\n")
		return b.String()
	}
	keys := slices.Collect(maps.Keys(count))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(count[b], count[a]), cmp.Compare(a, b)) })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, count[k]))
	}
	fmt.Fprintf(&b, "kvm trace of the vCPU threads: %d events: %s\n", len(events), strings.Join(parts, ", "))
	if len(events) <= traceHead+traceTail {
		for _, l := range events {
			fmt.Fprintf(&b, "  %s\n", l)
		}
		return b.String()
	}
	for _, l := range events[:traceHead] {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "  ... %d events ...\n", len(events)-traceHead-traceTail)
	for _, l := range events[len(events)-traceTail:] {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	return b.String()
}

// kvmEntry matches a kvm_entry event's detail: x86's "vcpu 0, rip
// 0x100190", or arm64's "PC: 0x0000000040000004", which names no vCPU.
var kvmEntry = regexp.MustCompile(`^(?:vcpu (\d+), rip|PC:) (0x[0-9a-f]+)`)

// codeRange is a stretch of this kernel's own code: its text or a module.
type codeRange struct {
	name       string
	start, end uint64
}

// hostCode reads where this kernel's code lies: its text (/proc/kallsyms'
// _stext to _etext) and each module (/proc/modules). Both show addresses
// to root only; otherwise it returns what it could read.
func hostCode() []codeRange {
	var out []codeRange
	if b, err := os.ReadFile(filepath.Join(procDir, "modules")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			// NAME SIZE REFS DEPS STATE ADDR [TAINT]
			f := strings.Fields(l)
			if len(f) < 6 {
				continue
			}
			size, err1 := strconv.ParseUint(f[1], 10, 64)
			addr, err2 := strconv.ParseUint(strings.TrimPrefix(f[5], "0x"), 16, 64)
			if err1 == nil && err2 == nil && addr != 0 {
				out = append(out, codeRange{"module " + f[0], addr, addr + size})
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(procDir, "kallsyms")); err == nil {
		var text codeRange
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 3 || (f[2] != "_stext" && f[2] != "_etext") {
				continue
			}
			a, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				continue
			}
			if f[2] == "_stext" {
				text.start = a
			} else {
				text.end = a
			}
		}
		if text.start != 0 && text.end > text.start {
			text.name = "text"
			out = append(out, text)
		}
	}
	return out
}

// entries says, per vCPU, how often the trace saw KVM enter the guest and
// at which RIPs (PCs on arm64), and names a RIP that lies in this kernel's own code. A
// guest entered over and over at one RIP inside the host's KVM module
// runs with the host's registers: on the nested substrate that is QEMU
// resuming L2 with L1's state (nested.SubstrateFailure).
func entries(text string, host []codeRange) string {
	type seen struct {
		n    int
		rips []uint64 // distinct, in order, at most maxRIPs
		more bool
	}
	const maxRIPs = 8
	per := map[string]*seen{}
	var order []string
	for _, l := range strings.Split(text, "\n") {
		m := traceEvent.FindStringSubmatch(l)
		if m == nil || m[4] != "kvm_entry" {
			continue
		}
		e := kvmEntry.FindStringSubmatch(m[5])
		if e == nil {
			continue
		}
		rip, err := strconv.ParseUint(strings.TrimPrefix(e[2], "0x"), 16, 64)
		if err != nil {
			continue
		}
		key := fmt.Sprintf("vCPU %s (thread %s)", e[1], m[2])
		if e[1] == "" {
			key = fmt.Sprintf("vCPU thread %s (%s)", m[2], m[1])
		}
		s := per[key]
		if s == nil {
			s = &seen{}
			per[key] = s
			order = append(order, key)
		}
		s.n++
		if !slices.Contains(s.rips, rip) {
			if len(s.rips) < maxRIPs {
				s.rips = append(s.rips, rip)
			} else {
				s.more = true
			}
		}
	}
	var b strings.Builder
	for _, key := range order {
		s := per[key]
		var rips []string
		for _, r := range s.rips {
			rips = append(rips, fmt.Sprintf("%#x", r))
		}
		if s.more {
			rips = append(rips, "...")
		}
		if len(s.rips) == 1 {
			fmt.Fprintf(&b, "%s: %d guest entries, all at RIP %s", key, s.n, rips[0])
		} else {
			fmt.Fprintf(&b, "%s: %d guest entries, at RIPs %s", key, s.n, strings.Join(rips, " "))
		}
		for _, r := range s.rips {
			for _, c := range host {
				if r >= c.start && r < c.end {
					fmt.Fprintf(&b, "; RIP %#x lies inside this kernel's %s (+%#x)", r, c.name, r-c.start)
				}
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
