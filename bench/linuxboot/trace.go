package main

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The trace mode (-trace FILE) answers where a boot's time goes rather
// than how long it takes. Each VMM boots the same guest with the same
// quiet console, so the boot costs what it costs in the benchmark, but
// the kernel also keeps every initcall's duration (initcall_debug) in a
// log buffer large enough for all of them; the guest's init prints that
// log (dmesg, with the kernel's own timestamps), its interrupt counts and
// its clock source after the marker line, and govmm logs its exit counts
// at the end (--log-level debug). Every console line is recorded with the
// time it reached the host since exec, so that the time before the
// guest's clock starts (VMM start, firmware, the kernel's decompression)
// shows as the marker's arrival less the guest's timestamp of starting
// init. analyzeTrace compares the VMMs phase by phase.

// traceCmdline is added to the benchmark's command line in trace mode.
const traceCmdline = "linuxboot=trace initcall_debug log_buf_len=1M"

// tracePrefix starts every trace line the run inside L1 prints.
const tracePrefix = "@@trace "

// traceLine is one console or log line of a traced boot.
type traceLine struct {
	VMM  string
	CPUs int
	Rep  int
	MS   float64 // arrival since exec
	Text string
}

func (t traceLine) String() string {
	return fmt.Sprintf("%svmm=%s cpus=%d rep=%d ms=%.1f|%s", tracePrefix, t.VMM, t.CPUs, t.Rep, t.MS, t.Text)
}

// parseTraceLine reads a line String wrote; other lines give ok == false.
func parseTraceLine(s string) (t traceLine, ok bool) {
	i := strings.Index(s, tracePrefix)
	if i < 0 {
		return t, false
	}
	head, text, found := strings.Cut(s[i+len(tracePrefix):], "|")
	if !found {
		return t, false
	}
	t.Text = strings.TrimRight(text, "\r\n")
	if n, err := fmt.Sscanf(head, "vmm=%s cpus=%d rep=%d ms=%g", &t.VMM, &t.CPUs, &t.Rep, &t.MS); err != nil || n != 4 {
		return traceLine{}, false
	}
	return t, true
}

// traceVMMs are what the trace mode boots: columns, each optionally with
// extra arguments (see parseTraceVMMs).
func (cfg *config) traceVMMs() []string {
	if len(cfg.traceCols) > 0 {
		return cfg.traceCols
	}
	return []string{"govmm", "qemu-pc"}
}

// parseTraceVMMs reads -trace-vmms: entries "COLUMN" or "COLUMN:ARGS",
// separated by ";" if the list has one (ARGS may hold commas, as in
// "qemu-pc:-cpu host,-tsc-deadline"), else by ",".
func parseTraceVMMs(list string) ([]string, error) {
	sep := ","
	if strings.Contains(list, ";") {
		sep = ";"
	}
	var out []string
	for _, e := range strings.Split(list, sep) {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		col, _ := splitVariant(e)
		if !slices.Contains(append(slices.Clip(vmms), "govmm-thp"), col) {
			return nil, fmt.Errorf("%q: no column %q", e, col)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%q names nothing to boot", list)
	}
	return out, nil
}

// splitVariant splits a -trace-vmms entry into its column and extra
// arguments.
func splitVariant(e string) (col string, args []string) {
	col, rest, _ := strings.Cut(e, ":")
	return col, strings.Fields(rest)
}

// variantLabel names an entry in trace lines and the analysis: no spaces
// (a trace line's fields are space-separated) and no "/" (the boot's key
// joins label, vCPUs and repetition with it).
func variantLabel(e string) string {
	return strings.NewReplacer(" ", "_", "/", "|").Replace(e)
}

// traceBoots boots every traced VMM runs times and prints every line.
func (cfg *config) traceBoots(out io.Writer) {
	// Whether the host backs anonymous memory with huge pages unasked
	// decides what --hugepages changes.
	for _, f := range []string{"enabled", "defrag"} {
		b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/" + f)
		text := strings.TrimSpace(string(b))
		if err != nil {
			text = err.Error()
		}
		fmt.Fprintln(out, traceLine{VMM: "host", Text: "transparent_hugepage/" + f + ": " + text})
	}
	for rep := cfg.from; rep < cfg.runs; rep++ {
		for i, cpus := range cfg.cpus {
			for _, vmm := range alternate(cfg.traceVMMs(), rep+i) {
				cfg.traceBoot(out, vmm, cpus, rep)
			}
		}
	}
}

func (cfg *config) traceBoot(out io.Writer, entry string, cpus, rep int) {
	label := variantLabel(entry)
	emit := func(ms float64, text string) {
		fmt.Fprintln(out, traceLine{VMM: label, CPUs: cpus, Rep: rep, MS: ms, Text: text})
	}
	vmm, extra := splitVariant(entry)
	argv := cfg.argv(vmm, cpus, traceCmdline)
	if isGovmm(vmm) {
		argv = append(argv, "--log-level", "debug")
	}
	argv = append(argv, extra...)
	p, err := start(argv, launch{})
	if err != nil {
		emit(0, "trace: "+err.Error())
		return
	}
	defer p.kill()
	timer := time.NewTimer(cfg.timeout)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.exited
				emit(ms(p.end.Sub(p.start)), "trace: exit")
				if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
					// Peak resident memory, guest RAM the host backed included.
					emit(ms(p.end.Sub(p.start)), fmt.Sprintf("trace: maxrss %d KiB", ru.Maxrss))
				}
				return
			}
			emit(ms(l.t), l.s)
			if strings.Contains(l.s, "linuxboot: init") {
				// How much of guest RAM the host backs, and how much of
				// it with huge pages, when the guest reaches init.
				emit(ms(l.t), "trace: memory "+memoryAtInit(p.cmd.Process.Pid))
			}
		case <-timer.C:
			emit(ms(cfg.timeout), "trace: no exit within "+cfg.timeout.String())
			return
		}
	}
}

// memoryAtInit reads the resident and huge-page-backed anonymous memory
// of process pid (kB, from /proc/PID/smaps_rollup) as "Rss: N AnonHugePages: M".
func memoryAtInit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "Rss:" || f[0] == "AnonHugePages:") {
			out = append(out, f[0]+" "+f[1])
		}
	}
	return strings.Join(out, " ")
}

// bootTrace is what one traced boot showed.
type bootTrace struct {
	key      string  // vmm/cpus/rep
	markerMS float64 // the marker's arrival since exec
	exitMS   float64
	maxRSS   float64 // MiB, the VMM process's peak resident memory
	// rssInit and hugeInit are its resident memory and the part of it
	// in transparent huge pages when the guest reached init (MiB).
	rssInit, hugeInit float64
	log               []logLine // the guest's dmesg
	other             []string  // console lines that are not the log (interrupts, clock source, govmm's log)
}

// logLine is a line of the guest's kernel log.
type logLine struct {
	ts   float64 // the kernel's timestamp, seconds
	text string
}

// parseLogLine reads a line of `dmesg -r`: "<6>[    1.234567] text".
func parseLogLine(s string) (logLine, bool) {
	i := strings.Index(s, "]")
	j := strings.Index(s, "[")
	if j < 0 || i < j || !strings.HasPrefix(s, "<") {
		return logLine{}, false
	}
	var ts float64
	if _, err := fmt.Sscanf(strings.TrimSpace(s[j+1:i]), "%g", &ts); err != nil {
		return logLine{}, false
	}
	return logLine{ts: ts, text: strings.TrimSpace(s[i+1:])}, true
}

// groupTrace sorts trace lines into boots, in the order they came.
func groupTrace(lines []traceLine) []*bootTrace {
	var boots []*bootTrace
	byKey := map[string]*bootTrace{}
	for _, l := range lines {
		k := fmt.Sprintf("%s/%d/%d", l.VMM, l.CPUs, l.Rep)
		b := byKey[k]
		if b == nil {
			b = &bootTrace{key: k}
			byKey[k] = b
			boots = append(boots, b)
		}
		switch {
		case strings.Contains(l.Text, "linuxboot: init") && b.markerMS == 0:
			b.markerMS = l.MS
		case l.Text == "trace: exit":
			b.exitMS = l.MS
			continue
		case strings.HasPrefix(l.Text, "trace: memory "):
			var rss, huge float64
			if _, err := fmt.Sscanf(l.Text, "trace: memory Rss: %g AnonHugePages: %g", &rss, &huge); err == nil {
				b.rssInit, b.hugeInit = rss/1024, huge/1024
				continue
			}
		case strings.HasPrefix(l.Text, "trace: maxrss "):
			var kib float64
			if _, err := fmt.Sscanf(l.Text, "trace: maxrss %g KiB", &kib); err == nil {
				b.maxRSS = kib / 1024
				continue
			}
		}
		if ll, ok := parseLogLine(l.Text); ok {
			b.log = append(b.log, ll)
		} else {
			b.other = append(b.other, l.Text)
		}
	}
	return boots
}

// phases are the boot's parts, in milliseconds: before the guest's clock
// (exec to the kernel's timestamp 0, found as the marker's arrival less
// the kernel's time at starting init), the kernel's early set-up (to the
// first initcall), the initcalls, from the last initcall to init, and the
// kernel's time to init as a whole.
func (b *bootTrace) phases() (pre, early, initcalls, late, kernel float64, ok bool) {
	var first, last, run float64 = -1, -1, -1
	for _, l := range b.log {
		switch {
		case strings.HasPrefix(l.text, "calling ") && first < 0:
			first = l.ts
		case strings.HasPrefix(l.text, "initcall "):
			last = l.ts
			if first < 0 {
				// The start lines were left out: the first
				// initcall started its duration earlier.
				first = l.ts - initcallMS(l.text)/1000
			}
		case strings.HasPrefix(l.text, "Run /init as init process"):
			run = l.ts
		}
	}
	if first < 0 || last < 0 || run < 0 || b.markerMS == 0 {
		return 0, 0, 0, 0, 0, false
	}
	return b.markerMS - run*1000, first * 1000, (last - first) * 1000, (run - last) * 1000, run * 1000, true
}

// initcalls returns each initcall's duration in milliseconds by function.
func (b *bootTrace) initcalls() map[string]float64 {
	d := map[string]float64{}
	for _, l := range b.log {
		// "initcall fn+0x0/0x20 returned 0 after 123 usecs"
		if !strings.HasPrefix(l.text, "initcall ") {
			continue
		}
		f := strings.Fields(l.text)
		if len(f) < 7 || f[len(f)-1] != "usecs" {
			continue
		}
		name, _, _ := strings.Cut(f[1], "+")
		d[name] += initcallMS(l.text)
	}
	return d
}

// spread is the difference between the largest and the smallest of d
// (0 when empty).
func spread(d []float64) float64 {
	if len(d) == 0 {
		return 0
	}
	return slices.Max(d) - slices.Min(d)
}

// initcallMS reads the duration of an "initcall ... returned 0 after N
// usecs" line; 0 for any other line.
func initcallMS(text string) float64 {
	f := strings.Fields(text)
	if len(f) < 7 || f[0] != "initcall" || f[len(f)-1] != "usecs" {
		return 0
	}
	var us float64
	if _, err := fmt.Sscanf(f[len(f)-2], "%g", &us); err != nil {
		return 0
	}
	return us / 1000
}

// gaps returns the n longest silences in the guest's log, with the lines
// on either side.
func (b *bootTrace) gaps(n int) []string {
	type gap struct {
		ms           float64
		before, next logLine
	}
	var g []gap
	for i := 1; i < len(b.log); i++ {
		g = append(g, gap{(b.log[i].ts - b.log[i-1].ts) * 1000, b.log[i-1], b.log[i]})
	}
	slices.SortFunc(g, func(a, b gap) int { return cmp.Compare(b.ms, a.ms) })
	var out []string
	for _, x := range g[:min(n, len(g))] {
		out = append(out, fmt.Sprintf("%8.1f ms at %.3f s: %q -> %q", x.ms, x.before.ts, clip(x.before.text), clip(x.next.text)))
	}
	return out
}

func clip(s string) string {
	if len(s) > 90 {
		return s[:90] + "..."
	}
	return s
}

// analyzeTrace prints the comparison of the traced boots.
func analyzeTrace(w io.Writer, lines []traceLine) {
	boots := groupTrace(lines)
	vmmOf := func(b *bootTrace) string { v, _, _ := strings.Cut(b.key, "/"); return v }
	var vmmList []string
	for _, b := range boots {
		// Boots without a guest log (the host's settings) have no column.
		if len(b.log) > 0 && !slices.Contains(vmmList, vmmOf(b)) {
			vmmList = append(vmmList, vmmOf(b))
		}
	}
	fmt.Fprintf(w, "\nPhases (ms; pre = exec to the guest's clock: VMM, firmware, decompression):\n")
	fmt.Fprintf(w, "%-22s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "boot", "pre", "early", "initcalls", "late", "kernel", "to init", "to exit", "RSS MiB", "at init", "of it THP")
	phase := map[string][5][]float64{}
	for _, b := range boots {
		pre, early, ic, late, kernel, ok := b.phases()
		if !ok {
			fmt.Fprintf(w, "%-22s incomplete (marker %.1f ms, %d log lines)\n", b.key, b.markerMS, len(b.log))
			continue
		}
		fmt.Fprintf(w, "%-22s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", b.key, pre, early, ic, late, kernel, b.markerMS, b.exitMS, b.maxRSS, b.rssInit, b.hugeInit)
		p := phase[vmmOf(b)]
		for i, v := range []float64{pre, early, ic, late, kernel} {
			p[i] = append(p[i], v)
		}
		phase[vmmOf(b)] = p
	}
	fmt.Fprintf(w, "\nMedians:\n")
	for _, v := range vmmList {
		p := phase[v]
		fmt.Fprintf(w, "%-22s %9.1f %9.1f %9.1f %9.1f %9.1f\n", v, median(p[0]), median(p[1]), median(p[2]), median(p[3]), median(p[4]))
	}

	// Initcalls: the median duration per VMM, the largest differences.
	calls := map[string]map[string][]float64{} // vmm -> fn -> durations
	for _, b := range boots {
		if calls[vmmOf(b)] == nil {
			calls[vmmOf(b)] = map[string][]float64{}
		}
		for fn, d := range b.initcalls() {
			calls[vmmOf(b)][fn] = append(calls[vmmOf(b)][fn], d)
		}
	}
	type row struct {
		fn     string
		d      []float64
		spread float64
	}
	var rows []row
	fns := map[string]bool{}
	for _, m := range calls {
		for fn := range m {
			fns[fn] = true
		}
	}
	for fn := range fns {
		r := row{fn: fn}
		for _, v := range vmmList {
			r.d = append(r.d, median(calls[v][fn]))
		}
		r.spread = spread(r.d)
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(b.spread, a.spread) })
	fmt.Fprintf(w, "\nInitcalls with the largest differences (median ms):\n%-40s", "initcall")
	for _, v := range vmmList {
		fmt.Fprintf(w, " %14s", v)
	}
	fmt.Fprintln(w)
	for _, r := range rows[:min(30, len(rows))] {
		fmt.Fprintf(w, "%-40s", r.fn)
		for _, d := range r.d {
			fmt.Fprintf(w, " %14.1f", d)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\nInitcalls longer than 20 ms in any VMM:\n")
	for _, r := range rows {
		if slices.Max(r.d) > 20 {
			fmt.Fprintf(w, "%-40s %v\n", r.fn, r.d)
		}
	}

	var guests []*bootTrace
	for _, b := range boots {
		if len(b.log) > 0 {
			guests = append(guests, b)
		}
	}
	fmt.Fprintf(w, "\nIntervals between messages every boot printed, largest differences (median ms by VMM: %s):\n", strings.Join(vmmList, ", "))
	for _, s := range intervals(guests, vmmOf, vmmList, 30) {
		fmt.Fprintln(w, s)
	}

	for _, b := range boots {
		fmt.Fprintf(w, "\n%s: the longest silences in the guest's log:\n", b.key)
		for _, g := range b.gaps(12) {
			fmt.Fprintln(w, "  "+g)
		}
		fmt.Fprintf(w, "%s: other console lines:\n", b.key)
		for _, s := range b.other {
			fmt.Fprintln(w, "  "+s)
		}
	}
}

// writeTrace writes the trace lines to file, one a line as String writes
// them, for a later look.
func writeTrace(file string, lines []traceLine) error {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.String() + "\n")
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write the trace: %w", err)
	}
	return nil
}

// readTrace reads a file writeTrace wrote.
func readTrace(file string) ([]traceLine, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read the trace: %w", err)
	}
	var lines []traceLine
	for _, s := range strings.Split(string(b), "\n") {
		if t, ok := parseTraceLine(s); ok {
			lines = append(lines, t)
		}
	}
	return lines, nil
}

// normalizeMessage makes a log message comparable between boots: digits
// become '#', and an initcall line keeps only its function.
func normalizeMessage(s string) string {
	if f := strings.Fields(s); len(f) > 1 && f[0] == "initcall" {
		name, _, _ := strings.Cut(f[1], "+")
		return "initcall " + name
	}
	var b strings.Builder
	for _, r := range s {
		if r >= '0' && r <= '9' {
			r = '#'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// stamps returns the kernel's time of each message the boot printed once.
func (b *bootTrace) stamps() map[string]float64 {
	m, n := map[string]float64{}, map[string]int{}
	for _, l := range b.log {
		k := normalizeMessage(l.text)
		m[k] = l.ts
		n[k]++
	}
	for k := range m {
		if n[k] > 1 {
			delete(m, k)
		}
	}
	return m
}

// intervals compares the time between consecutive messages every boot
// printed (once), by VMM (medians), and returns the n intervals whose
// durations differ most between the VMMs, in milliseconds.
func intervals(boots []*bootTrace, vmmOf func(*bootTrace) string, vmmList []string, n int) []string {
	if len(boots) == 0 {
		return nil
	}
	st := make([]map[string]float64, len(boots))
	for i, b := range boots {
		st[i] = b.stamps()
	}
	// The messages every boot printed once, in the first boot's order.
	var common []string
	for _, l := range boots[0].log {
		k := normalizeMessage(l.text)
		all := true
		for _, m := range st {
			if _, ok := m[k]; !ok {
				all = false
				break
			}
		}
		if all && !slices.Contains(common, k) {
			common = append(common, k)
		}
	}
	type row struct {
		from, to string
		d        []float64
		spread   float64
	}
	var rows []row
	for i := 1; i < len(common); i++ {
		r := row{from: common[i-1], to: common[i]}
		for _, v := range vmmList {
			var ds []float64
			for j, b := range boots {
				if vmmOf(b) == v {
					ds = append(ds, (st[j][common[i]]-st[j][common[i-1]])*1000)
				}
			}
			r.d = append(r.d, median(ds))
		}
		r.spread = spread(r.d)
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(b.spread, a.spread) })
	var out []string
	for _, r := range rows[:min(n, len(rows))] {
		s := ""
		for _, d := range r.d {
			s += fmt.Sprintf(" %9.1f", d)
		}
		out = append(out, fmt.Sprintf("%s  %q -> %q", s, clip(r.from), clip(r.to)))
	}
	return out
}
