package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"govmm/internal/hangreport"
)

// The stats mode (-stats) answers why one boot is slower than another of
// the same VMM: when the guest's marker line arrives, the run reads what
// the VMM process and the machine it runs on (L1) spent since exec, and
// prints it as one line per boot (statPrefix) that the report sets beside
// the boot's time. What it reads:
//
//   - each of the VMM's threads: CPU time and time spent runnable but
//     waiting for a CPU (/proc/PID/task/TID/schedstat), migrations between
//     CPUs and involuntary switches (.../sched), split into vCPU threads
//     (govmm's vcpuN, QEMU's "CPU N/KVM") and the rest (the Go runtime,
//     device threads, QEMU's main loop);
//   - the process's page faults (/proc/PID/stat);
//   - KVM's counters for the VM the process made (debugfs
//     /sys/kernel/debug/kvm/PID-FD/: exits by kind, page faults, the
//     pages KVM mapped 4 KiB and 2 MiB);
//   - the machine's CPU time (/proc/stat) and what else used it (every
//     task's CPU time, /proc/PID/stat, the three largest named), and its
//     memory management events (/proc/vmstat: huge page faults and
//     fallbacks, compaction);
//   - for govmm, the Go runtime's collections before the marker
//     (GODEBUG=gctrace=1 lines on its stderr).
//
// Outside L1 the benchmark adds what the rest of the host used of its
// CPUs over the boot (host_other_ms, the processes outside its own tree)
// and what L1's QEMU used (host_l1_*): L1 runs on TCG, so a host core
// taken by something else slows L1 and every boot in it.

// statPrefix starts every stats line the run inside L1 prints.
const statPrefix = "@@linuxstat "

// bootStat is what -stats read for one boot: numeric values by name, and
// a few words (the machine's busiest other tasks).
type bootStat struct {
	VMM  string
	CPUs int
	Rep  int
	Num  map[string]float64
	Text map[string]string
}

func (s bootStat) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%svmm=%s cpus=%d rep=%d", statPrefix, s.VMM, s.CPUs, s.Rep)
	for _, k := range sortedKeys(s.Num) {
		fmt.Fprintf(&b, " %s=%s", k, strconv.FormatFloat(s.Num[k], 'f', -1, 64))
	}
	for _, k := range sortedKeys(s.Text) {
		fmt.Fprintf(&b, " %s=%q", k, s.Text[k])
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// parseStat reads a line String wrote; other lines give ok == false.
func parseStat(line string) (s bootStat, ok bool) {
	i := strings.Index(line, statPrefix)
	if i < 0 {
		return s, false
	}
	line = strings.TrimRight(line[i+len(statPrefix):], "\r\n")
	s.Num, s.Text = map[string]float64{}, map[string]string{}
	seen := 0
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		k, rest, found := strings.Cut(line, "=")
		if !found || k == "" || strings.ContainsAny(k, " \"") {
			return bootStat{}, false
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return bootStat{}, false
			}
			v, _ = strconv.Unquote(q)
			line = rest[len(q):]
			if line != "" && line[0] != ' ' {
				return bootStat{}, false
			}
			s.Text[k] = v
			continue
		}
		v, line, _ = strings.Cut(rest, " ")
		var err error
		switch k {
		case "vmm":
			s.VMM, seen = v, seen+1
		case "cpus":
			s.CPUs, err = strconv.Atoi(v)
			seen++
		case "rep":
			s.Rep, err = strconv.Atoi(v)
			seen++
		default:
			var f float64
			f, err = strconv.ParseFloat(v, 64)
			s.Num[k] = f
		}
		if err != nil {
			return bootStat{}, false
		}
	}
	return s, seen == 3 && s.VMM != ""
}

// threadStat is one thread's share, from /proc/PID/task/TID.
type threadStat struct {
	name              string
	runNS, waitNS     int64 // schedstat: on a CPU, and runnable waiting for one
	migrations, invol int64 // sched: se.nr_migrations, nr_involuntary_switches
	vol               int64 // sched: nr_voluntary_switches
	// stat, in USER_HZ ticks: user time (which holds the time in a KVM
	// guest), system time (the kernel: KVM's exits and page faults
	// among it), and the part of user time spent in the guest.
	user, sys, guest int64
}

// vcpuThread tells a vCPU's thread by its name: govmm names them vcpuN,
// QEMU "CPU N/KVM".
var vcpuThread = regexp.MustCompile(`^(vcpu\d+|CPU \d+/KVM)$`)

// parseSchedstat reads /proc/PID/task/TID/schedstat: "run_ns wait_ns slices".
func parseSchedstat(s string) (run, wait int64, ok bool) {
	f := strings.Fields(s)
	if len(f) < 2 {
		return 0, 0, false
	}
	run, err1 := strconv.ParseInt(f[0], 10, 64)
	wait, err2 := strconv.ParseInt(f[1], 10, 64)
	return run, wait, err1 == nil && err2 == nil
}

// parseSched reads the counters of /proc/PID/task/TID/sched ("name : value"
// lines after a header) that are integers.
func parseSched(s string) map[string]int64 {
	out := map[string]int64{}
	for _, l := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		out[strings.TrimSpace(k)] = n
	}
	return out
}

// parseProcStat reads /proc/PID/stat: the name (in parentheses, which may
// hold spaces and parentheses) and the fields after it, numbered as in
// proc(5) (field 3, the state, is rest[0]).
func parseProcStat(s string) (name string, rest []string, ok bool) {
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 0 || j < i {
		return "", nil, false
	}
	rest = strings.Fields(s[j+1:])
	return s[i+1 : j], rest, len(rest) >= 13
}

// procField is field n (numbered as in proc(5), n >= 3) of a parsed stat.
func procField(rest []string, n int) int64 {
	if n-3 >= len(rest) {
		return 0
	}
	v, _ := strconv.ParseInt(rest[n-3], 10, 64)
	return v
}

// Fields of /proc/PID/stat (proc(5)).
const (
	statMinflt = 10
	statMajflt = 12
	statUtime  = 14
	statStime  = 15
	statGuest  = 43 // guest_time
)

// clockTick is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTick = 100

func readThreads(pid int) []threadStat {
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	var out []threadStat
	for _, d := range dirs {
		var t threadStat
		b, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil {
			continue
		}
		t.name = strings.TrimSpace(string(b))
		if b, err := os.ReadFile(filepath.Join(d, "schedstat")); err == nil {
			t.runNS, t.waitNS, _ = parseSchedstat(string(b))
		}
		if b, err := os.ReadFile(filepath.Join(d, "stat")); err == nil {
			if _, rest, ok := parseProcStat(string(b)); ok {
				t.user, t.sys, t.guest = procField(rest, statUtime), procField(rest, statStime), procField(rest, statGuest)
			}
		}
		if b, err := os.ReadFile(filepath.Join(d, "sched")); err == nil {
			m := parseSched(string(b))
			t.migrations, t.invol, t.vol = m["se.nr_migrations"], m["nr_involuntary_switches"], m["nr_voluntary_switches"]
		}
		out = append(out, t)
	}
	return out
}

// machineStat is what the machine as a whole had spent at one moment.
type machineStat struct {
	busy, idle []int64           // per CPU, in USER_HZ ticks, from /proc/stat
	tasks      map[int]taskTicks // every process's CPU time
	vm         map[string]int64  // /proc/vmstat
	irqs       map[string]int64  // /proc/interrupts: the IPI and timer rows, per CPU ("TLB1")
}

// irqRows are the rows of /proc/interrupts -stats reports per CPU: the
// local timer, rescheduling and function-call IPIs, and TLB shootdowns
// (each one that reaches the CPU running a vCPU is an exit from the guest).
var irqRows = []string{"LOC", "RES", "CAL", "TLB"}

// parseInterrupts reads the rows of /proc/interrupts named in rows into
// counts keyed row and CPU ("TLB0").
func parseInterrupts(s string, rows []string) map[string]int64 {
	out := map[string]int64{}
	lines := strings.Split(s, "\n")
	if len(lines) == 0 {
		return out
	}
	ncpu := len(strings.Fields(lines[0]))
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 1+ncpu || !slices.Contains(rows, strings.TrimSuffix(f[0], ":")) {
			continue
		}
		for i := range ncpu {
			if n, err := strconv.ParseInt(f[1+i], 10, 64); err == nil {
				out[fmt.Sprintf("%s%d", strings.TrimSuffix(f[0], ":"), i)] = n
			}
		}
	}
	return out
}

type taskTicks struct {
	name  string
	ticks int64
}

// parseCPUStat reads the per-CPU lines of /proc/stat ("cpuN user nice
// system idle iowait irq softirq steal ...") into busy and idle ticks
// (idle counts iowait).
func parseCPUStat(s string) (busy, idle []int64) {
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) < 8 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var b, i int64
		for k, v := range f[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case 3, 4: // idle, iowait
				i += n
			case 8, 9: // guest, guest_nice: already in user
			default:
				b += n
			}
		}
		busy, idle = append(busy, b), append(idle, i)
	}
	return busy, idle
}

// parseKV reads "name value" lines (/proc/vmstat).
func parseKV(s string) map[string]int64 {
	out := map[string]int64{}
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			out[f[0]] = n
		}
	}
	return out
}

func readMachine() machineStat {
	var m machineStat
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		m.busy, m.idle = parseCPUStat(string(b))
	}
	if b, err := os.ReadFile("/proc/vmstat"); err == nil {
		m.vm = parseKV(string(b))
	}
	if b, err := os.ReadFile("/proc/interrupts"); err == nil {
		m.irqs = parseInterrupts(string(b), irqRows)
	}
	m.tasks = map[int]taskTicks{}
	eachProc(func(pid int, name string, rest []string) {
		m.tasks[pid] = taskTicks{name, procField(rest, statUtime) + procField(rest, statStime)}
	})
	return m
}

// vmstatKeys are the memory management events -stats reports.
var vmstatKeys = []string{
	"pgfault", "pgmajfault", "thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc",
	"thp_split_pmd", "compact_stall", "compact_fail", "compact_success", "pgscan_direct", "pgscan_kswapd",
}

// kvmKeys are KVM's counters -stats reports (where the kernel has them).
var kvmKeys = []string{
	"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits", "request_irq_exits",
	"signal_exits", "insn_emulation", "pf_taken", "pf_fixed", "pf_emulate", "pf_spurious", "pf_fast",
	"pages_4k", "pages_2m", "tlb_flush", "remote_tlb_flush", "host_state_reload", "halt_wakeup",
	"halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns", "nx_lpage_splits", "mmu_shadow_zapped",
}

// probeBoot reads, at the marker, what the VMM process pid and the
// machine spent since before exec (before: the machine then) and the
// VMM's stderr before the marker (for the collections).
func probeBoot(pid int, before machineStat, seen []string) bootStat {
	s := bootStat{Num: map[string]float64{}, Text: map[string]string{}}
	threads := readThreads(pid)
	var vmmNS int64
	var top threadStat
	for _, t := range threads {
		vmmNS += t.runNS
		kind := "other"
		if vcpuThread.MatchString(t.name) {
			kind = "vcpu"
		} else if t.runNS > top.runNS {
			top = t
		}
		s.Num[kind+"_run_ms"] += float64(t.runNS) / 1e6
		s.Num[kind+"_wait_ms"] += float64(t.waitNS) / 1e6
		s.Num[kind+"_migrations"] += float64(t.migrations)
		s.Num[kind+"_invol"] += float64(t.invol)
		s.Num[kind+"_vol"] += float64(t.vol)
		s.Num[kind+"_threads"]++
		s.Num[kind+"_user_ms"] += float64(t.user) * 1000 / clockTick
		s.Num[kind+"_sys_ms"] += float64(t.sys) * 1000 / clockTick
		s.Num[kind+"_guest_ms"] += float64(t.guest) * 1000 / clockTick
	}
	if top.name != "" {
		s.Text["top_other_thread"] = fmt.Sprintf("%s %.0fms", top.name, float64(top.runNS)/1e6)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if _, rest, ok := parseProcStat(string(b)); ok {
			s.Num["minflt"] = float64(procField(rest, statMinflt))
			s.Num["majflt"] = float64(procField(rest, statMajflt))
		}
	}
	kvm := hangreport.KVMStats(pid)
	for _, k := range kvmKeys {
		if v, ok := kvm[k]; ok {
			s.Num["kvm_"+k] = float64(v)
		}
	}
	after := readMachine()
	machineDelta(s, before, after, pid, vmmNS)
	gcs, gcMS := goCollections(seen)
	s.Num["go_gcs"], s.Num["go_gc_wall_ms"] = float64(gcs), gcMS
	return s
}

// machineDelta adds to s what the machine spent from a to b: busy time
// per CPU, what other tasks than the VMM (pid, vmmNS of CPU) and this
// benchmark used, and the memory management events.
func machineDelta(s bootStat, a, b machineStat, pid int, vmmNS int64) {
	var busy int64
	for i := range min(len(a.busy), len(b.busy)) {
		d := b.busy[i] - a.busy[i]
		busy += d
		s.Num[fmt.Sprintf("l1_cpu%d_busy_ms", i)] = float64(d) * 1000 / clockTick
	}
	s.Num["l1_busy_ms"] = float64(busy) * 1000 / clockTick
	s.Num["l1_other_ms"] = s.Num["l1_busy_ms"] - float64(vmmNS)/1e6
	s.Text["l1_top_others"] = topTasks(a.tasks, b.tasks, pid)
	for k, v := range b.irqs {
		s.Num["l1_irq_"+k] = float64(v - a.irqs[k])
		s.Num["l1_irq_"+strings.TrimRight(k, "0123456789")] += float64(v - a.irqs[k]) // all CPUs
	}
	for _, k := range vmstatKeys {
		if v, ok := b.vm[k]; ok {
			s.Num["vm_"+k] = float64(v - a.vm[k])
		}
	}
}

// topTasks names the three processes (other than skip and this one)
// that used the most CPU from a to b: "name Nms, ...".
func topTasks(a, b map[int]taskTicks, skip int) string {
	type use struct {
		name  string
		ticks int64
	}
	var others []use
	for p, t := range b {
		if p == skip || p == os.Getpid() {
			continue
		}
		if d := t.ticks - a[p].ticks; d > 0 {
			others = append(others, use{t.name, d})
		}
	}
	slices.SortFunc(others, func(x, y use) int { return cmp.Compare(y.ticks, x.ticks) })
	var names []string
	for _, o := range others[:min(3, len(others))] {
		names = append(names, fmt.Sprintf("%s %dms", o.name, o.ticks*1000/clockTick))
	}
	return strings.Join(names, ", ")
}

// goCollections counts the Go runtime's collections in gctrace lines
// ("gc 3 @0.512s 1%: 0.011+1.2+0.003 ms clock, ...") and sums their
// wall-clock phases.
func goCollections(lines []string) (n int, wallMS float64) {
	for _, l := range lines {
		i := strings.Index(l, "gc ")
		if i < 0 || !strings.Contains(l, " ms clock") {
			continue
		}
		f := strings.Fields(l[i:])
		if len(f) < 5 || !strings.HasPrefix(f[2], "@") {
			continue
		}
		n++
		for _, p := range strings.Split(f[4], "+") {
			if v, err := strconv.ParseFloat(p, 64); err == nil {
				wallMS += v
			}
		}
	}
	return n, wallMS
}

// hostLoad is what the host's processes had used of its CPUs at one
// moment: each thread of L1's QEMU (its TCG vCPU threads are the
// busiest), and every process outside this benchmark's process tree.
type hostLoad struct {
	at        time.Time
	l1Threads map[int]int64     // ticks per thread of L1's QEMU (children of this process named qemu-system-*)
	others    map[int]taskTicks // every process outside this process tree
}

func readHostLoad() hostLoad {
	h := hostLoad{at: time.Now(), l1Threads: map[int]int64{}, others: map[int]taskTicks{}}
	self := os.Getpid()
	type proc struct {
		ppid  int
		name  string
		ticks int64
	}
	procs := map[int]proc{}
	eachProc(func(pid int, name string, rest []string) {
		procs[pid] = proc{int(procField(rest, 4)), name, procField(rest, statUtime) + procField(rest, statStime)}
	})
	for pid, p := range procs {
		inTree := false
		for q, n := pid, 0; q > 1 && n < 64; q, n = procs[q].ppid, n+1 {
			if q == self {
				inTree = true
				break
			}
		}
		if !inTree {
			h.others[pid] = taskTicks{p.name, p.ticks}
		}
		if p.ppid == self && strings.HasPrefix(p.name, "qemu-system") {
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
			for _, t := range tasks {
				if b, err := os.ReadFile(t); err == nil {
					if _, rest, ok := parseProcStat(string(b)); ok {
						tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(t)))
						h.l1Threads[tid] = procField(rest, statUtime) + procField(rest, statStime)
					}
				}
			}
		}
	}
	return h
}

// hostDelta adds to s what the host did from a to b: the interval, the
// CPU time the rest of the host used, and L1's QEMU's CPU time, all of it
// and its two busiest threads' (L1's vCPUs: L1 has two).
func hostDelta(s bootStat, a, b hostLoad) {
	s.Num["host_ms"] = float64(b.at.Sub(a.at).Milliseconds())
	// The rest of the host, from the same per-task accounting as the
	// tree's (the per-CPU counts of /proc/stat differ from it by up to a
	// second in a boot of a few seconds, so their difference is no measure).
	var other int64
	for pid, t := range b.others {
		if d := t.ticks - a.others[pid].ticks; d > 0 {
			other += d
		}
	}
	s.Num["host_other_ms"] = float64(other) * 1000 / clockTick
	var l1 int64
	var per []int64
	for tid, v := range b.l1Threads {
		d := v - a.l1Threads[tid]
		l1 += d
		per = append(per, d)
	}
	slices.SortFunc(per, func(x, y int64) int { return cmp.Compare(y, x) })
	s.Num["host_l1_ms"] = float64(l1) * 1000 / clockTick
	s.Text["host_top_others"] = topTasks(a.others, b.others, -1)
	for i := range min(2, len(per)) {
		s.Num[fmt.Sprintf("host_l1_cpu%d_ms", i)] = float64(per[i]) * 1000 / clockTick
	}
}

// statColumns are the per-boot table's columns: a heading and the value's
// name (the ms and counts as read).
var statColumns = []struct{ head, key string }{
	{"init s", ""},
	{"vcpu run", "vcpu_run_ms"}, {"vcpu guest", "vcpu_guest_ms"}, {"vcpu sys", "vcpu_sys_ms"}, {"vcpu wait", "vcpu_wait_ms"}, {"vcpu migr", "vcpu_migrations"}, {"vcpu invol", "vcpu_invol"},
	{"other run", "other_run_ms"}, {"other wait", "other_wait_ms"}, {"thr", "other_threads"},
	{"minflt", "minflt"}, {"exits", "kvm_exits"}, {"io", "kvm_io_exits"}, {"irq", "kvm_irq_exits"}, {"mmio", "kvm_mmio_exits"},
	{"halt", "kvm_halt_exits"}, {"pf", "kvm_pf_taken"}, {"4k", "kvm_pages_4k"}, {"2m", "kvm_pages_2m"},
	{"L1 other", "l1_other_ms"}, {"TLB IPIs", "l1_irq_TLB"}, {"CAL IPIs", "l1_irq_CAL"}, {"RES", "l1_irq_RES"}, {"LOC", "l1_irq_LOC"}, {"thp", "vm_thp_fault_alloc"}, {"compact", "vm_compact_stall"},
	{"gc", "go_gcs"}, {"host ms", "host_ms"}, {"host other", "host_other_ms"}, {"host L1 busiest", "host_l1_cpu0_ms"}, {"host L1 next", "host_l1_cpu1_ms"},
}

// statTable prints -stats' readings, one row per boot that reached init
// (by VMM, vCPUs and time to init), times in ms and counts as read, then
// for each VMM and vCPU count the readings that move most with the time
// to init.
func (c *collector) statTable(w io.Writer) {
	initMS := map[string]float64{}
	for _, r := range c.results {
		if r.Kind == "boot" && !r.failed() {
			initMS[r.key()] = r.InitMS
		}
	}
	type row struct {
		s    bootStat
		init float64
	}
	var rows []row
	for _, s := range c.bootStats {
		k := result{Kind: "boot", VMM: s.VMM, CPUs: s.CPUs, Rep: s.Rep}.key()
		if t, ok := initMS[k]; ok {
			rows = append(rows, row{s, t})
		}
	}
	if len(rows) == 0 {
		return
	}
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(cmp.Compare(a.s.VMM, b.s.VMM), cmp.Compare(a.s.CPUs, b.s.CPUs), cmp.Compare(a.init, b.init))
	})
	fmt.Fprintf(w, "\nper boot, at init (-stats; ms, counts):\n\n| VMM | vCPUs | run |")
	for _, col := range statColumns {
		fmt.Fprintf(w, " %s |", col.head)
	}
	fmt.Fprintf(w, " L1's busiest others | the VMM's busiest other thread | the host's busiest others |\n|---|---|---|")
	fmt.Fprint(w, strings.Repeat("---|", len(statColumns)+3), "\n")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %d | %d |", r.s.VMM, r.s.CPUs, r.s.Rep+1)
		for _, col := range statColumns {
			if col.key == "" {
				fmt.Fprintf(w, " %.2f |", r.init/1000)
			} else if v, ok := r.s.Num[col.key]; ok {
				fmt.Fprintf(w, " %.0f |", v)
			} else {
				fmt.Fprint(w, " - |")
			}
		}
		fmt.Fprintf(w, " %s | %s | %s |\n", r.s.Text["l1_top_others"], r.s.Text["top_other_thread"], r.s.Text["host_top_others"])
	}
	fmt.Fprintf(w, "\ntimelines (every %v from exec: ms of CPU of the VMM's vCPU threads/its other threads/each of L1's CPUs busy):\n", timelineStep)
	for _, r := range rows {
		fmt.Fprintf(w, "  %s %d vCPU run %d (%.2f s): %s\n", r.s.VMM, r.s.CPUs, r.s.Rep+1, r.init/1000, r.s.Text["timeline"])
	}
	c.quietTable(w, rows2quiet(rows, func(r row) (bootStat, float64) { return r.s, r.init }))
	// What moves with the time to init, per VMM and vCPU count.
	for i := 0; i < len(rows); {
		j := i
		for j < len(rows) && rows[j].s.VMM == rows[i].s.VMM && rows[j].s.CPUs == rows[i].s.CPUs {
			j++
		}
		group := rows[i:j]
		i = j
		if len(group) < 3 {
			continue
		}
		init := make([]float64, len(group))
		for k, r := range group {
			init[k] = r.init
		}
		type corr struct {
			key string
			r   float64
		}
		var cs []corr
		for _, key := range sortedKeys(group[0].s.Num) {
			v := make([]float64, len(group))
			for k, r := range group {
				v[k] = r.s.Num[key]
			}
			if r, ok := pearson(init, v); ok {
				cs = append(cs, corr{key, r})
			}
		}
		slices.SortStableFunc(cs, func(a, b corr) int { return cmp.Compare(math.Abs(b.r), math.Abs(a.r)) })
		fmt.Fprintf(w, "\n%s, %d vCPU, %d boots: readings that move most with the time to init (correlation):", group[0].s.VMM, group[0].s.CPUs, len(group))
		for _, c := range cs[:min(8, len(cs))] {
			fmt.Fprintf(w, " %s %+.2f;", c.key, c.r)
		}
		fmt.Fprintln(w)
	}
}

// quietShare is the most CPU time the rest of the host may use during a
// boot, as a share of the boot's wall time on one CPU, for the boot to
// count as undisturbed.
const quietShare = 0.1

// quietBoot is a boot's time to init and whether the host was quiet then.
type quietBoot struct {
	vmm   string
	cpus  int
	init  float64
	quiet bool
	known bool // the host was read at the boot's start and init
}

func rows2quiet[R any](rows []R, f func(R) (bootStat, float64)) []quietBoot {
	var out []quietBoot
	for _, r := range rows {
		s, init := f(r)
		other, ok1 := s.Num["host_other_ms"]
		wall, ok2 := s.Num["host_ms"]
		out = append(out, quietBoot{vmm: s.VMM, cpus: s.CPUs, init: init, known: ok1 && ok2 && wall > 0, quiet: other <= quietShare*wall})
	}
	return out
}

// quietTable sets each VMM's median time to init over all its boots
// beside the median over the boots during which the rest of the host
// used less than quietShare of a CPU: L1 runs on TCG, whose vCPU threads
// compete with the host's other work for its CPUs, so a boot under host
// load measures the load.
func (c *collector) quietTable(w io.Writer, boots []quietBoot) {
	type key struct {
		vmm  string
		cpus int
	}
	all, quiet := map[key][]float64{}, map[key][]float64{}
	var keys []key
	for _, b := range boots {
		if !b.known {
			continue
		}
		k := key{b.vmm, b.cpus}
		if _, ok := all[k]; !ok {
			keys = append(keys, k)
		}
		all[k] = append(all[k], b.init)
		if b.quiet {
			quiet[k] = append(quiet[k], b.init)
		}
	}
	if len(keys) == 0 {
		return
	}
	fmt.Fprintf(w, "\ntime to init, all boots against those while the rest of the host used under %.0f%% of a CPU (host_other_ms):\n\n", quietShare*100)
	fmt.Fprintf(w, "| VMM | vCPUs | median, all | boots | median, host quiet | boots | min, all | max, all |\n|---|---|---|---|---|---|---|---|\n")
	for _, k := range keys {
		fmt.Fprintf(w, "| %s | %d | %s | %d | %s | %d | %s | %s |\n", k.vmm, k.cpus, msec(median(all[k])), len(all[k]),
			msec(median(quiet[k])), len(quiet[k]), msec(minimum(all[k])), msec(slices.Max(all[k])))
	}
	for _, k := range keys {
		q := key{"qemu-pc", k.cpus}
		if !isGovmm(k.vmm) || len(all[q]) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s/qemu-pc, %d vCPU: %s of medians over all boots, %s over quiet boots\n", k.vmm, k.cpus,
			times(ratio(all[k], all[q])), times(ratio(quiet[k], quiet[q])))
	}
}

// pearson is the correlation of x and y; ok is false where either does
// not vary.
func pearson(x, y []float64) (float64, bool) {
	n := float64(len(x))
	if len(x) != len(y) || n < 2 {
		return 0, false
	}
	var mx, my float64
	for i := range x {
		mx += x[i] / n
		my += y[i] / n
	}
	var sxy, sxx, syy float64
	for i := range x {
		sxy += (x[i] - mx) * (y[i] - my)
		sxx += (x[i] - mx) * (x[i] - mx)
		syy += (y[i] - my) * (y[i] - my)
	}
	if sxx == 0 || syy == 0 {
		return 0, false
	}
	return sxy / math.Sqrt(sxx*syy), true
}

// timelineStep is how often -stats samples a boot on its way to init.
const timelineStep = 500 * time.Millisecond

// timeline samples, every step until stopped, the CPU time the VMM's
// vCPU threads and its other threads used and each of the machine's CPUs
// was busy, so that a slow boot shows when it lost its time and whether
// anything else ran then.
type timeline struct {
	done  chan struct{}
	out   chan string
	steps []string
}

func startTimeline(pid int, step time.Duration) *timeline {
	t := &timeline{done: make(chan struct{}), out: make(chan string, 1)}
	go func() {
		var last tlSample
		tick := time.NewTicker(step)
		defer tick.Stop()
		for {
			select {
			case <-t.done:
				t.out <- strings.Join(t.steps, " ")
				return
			case <-tick.C:
				s := sampleTimeline(pid)
				if last.busy != nil {
					t.steps = append(t.steps, s.delta(last))
				}
				last = s
			}
		}
	}()
	return t
}

// stop ends the sampling and returns the steps, each
// "vCPU/other/cpu0/cpu1..." in milliseconds of CPU time in that step.
func (t *timeline) stop() string {
	if t == nil {
		return ""
	}
	close(t.done)
	return <-t.out
}

type tlSample struct {
	vcpuNS, otherNS int64
	busy            []int64
}

func sampleTimeline(pid int) tlSample {
	var s tlSample
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "schedstat"))
		if err != nil {
			continue
		}
		run, _, _ := parseSchedstat(string(b))
		name, _ := os.ReadFile(filepath.Join(d, "comm"))
		if vcpuThread.MatchString(strings.TrimSpace(string(name))) {
			s.vcpuNS += run
		} else {
			s.otherNS += run
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		s.busy, _ = parseCPUStat(string(b))
	}
	return s
}

func (s tlSample) delta(last tlSample) string {
	f := []string{strconv.FormatInt((s.vcpuNS-last.vcpuNS)/1e6, 10), strconv.FormatInt((s.otherNS-last.otherNS)/1e6, 10)}
	for i := range min(len(s.busy), len(last.busy)) {
		f = append(f, strconv.FormatInt((s.busy[i]-last.busy[i])*1000/clockTick, 10))
	}
	return strings.Join(f, "/")
}

// eachProc calls fn with the pid, command name and the fields after it
// (parseProcStat) of every process in /proc that can still be read.
func eachProc(fn func(pid int, name string, rest []string)) {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		name, rest, ok := parseProcStat(string(b))
		if !ok {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		fn(pid, name, rest)
	}
}
