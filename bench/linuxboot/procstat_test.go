package main

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestStatRoundTrip(t *testing.T) {
	s := bootStat{VMM: "govmm", CPUs: 2, Rep: 1,
		Num:  map[string]float64{"vcpu_run_ms": 1234.5, "kvm_exits": 98765, "l1_other_ms": -10},
		Text: map[string]string{"l1_top_others": `kworker/0:1 "x" 30ms, qemu=1 20ms`, "top_other_thread": "govmm 12ms"}}
	line := "junk" + s.String() + "\r\n"
	got, ok := parseStat(line)
	if !ok || got.VMM != s.VMM || got.CPUs != s.CPUs || got.Rep != s.Rep || len(got.Num) != 3 || len(got.Text) != 2 {
		t.Fatalf("parseStat(%q) = %+v, %v", line, got, ok)
	}
	for k, v := range s.Num {
		if got.Num[k] != v {
			t.Errorf("%s = %v, want %v", k, got.Num[k], v)
		}
	}
	for k, v := range s.Text {
		if got.Text[k] != v {
			t.Errorf("%s = %q, want %q", k, got.Text[k], v)
		}
	}
	for _, bad := range []string{
		"@@linuxstat vmm=govmm cpus=1",                 // no rep
		"@@linuxstat vmm=govmm cpus=1 rep=0 x=abc",     // not a number
		`@@linuxstat vmm=govmm cpus=1 rep=0 t="open`,   // unterminated
		`@@linuxstat vmm=govmm cpus=1 rep=0 t="a"b=1`,  // no space after a quoted value
		"@@linuxstat vmm=govmm cpus=1 rep=0 novalue",   // no "="
		"@@linuxboot kind=boot vmm=govmm cpus=1 rep=0", // another line
	} {
		if s, ok := parseStat(bad); ok {
			t.Errorf("parseStat(%q) = %+v, want no stats", bad, s)
		}
	}
}

func TestParseProcFiles(t *testing.T) {
	// A name with spaces and parentheses, as QEMU's "CPU 0/KVM" threads
	// and a process named "a) b" have.
	name, rest, ok := parseProcStat("1234 (a) b) S 1 1234 1234 0 -1 4194560 777 0 3 0 150 25 0 0 20 0 1 0 100 0\n")
	if !ok || name != "a) b" || procField(rest, statMinflt) != 777 || procField(rest, statMajflt) != 3 ||
		procField(rest, statUtime) != 150 || procField(rest, statStime) != 25 || procField(rest, 4) != 1 {
		t.Errorf("parseProcStat: %q %v %v", name, rest, ok)
	}
	// A vCPU thread's line, to guest_time (field 43).
	_, rest, ok = parseProcStat("77 (vcpu0) R 1 1 1 0 -1 0 5 0 0 0 900 40 0 0 20 0 9 0 10 100 20 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 850 0")
	if !ok || procField(rest, statUtime) != 900 || procField(rest, statStime) != 40 || procField(rest, statGuest) != 850 {
		t.Errorf("parseProcStat of a vCPU thread: %v %v", rest, ok)
	}
	if procField(rest, 60) != 0 {
		t.Error("procField past the end is not 0")
	}
	if _, _, ok := parseProcStat("1234 (short) S 1"); ok {
		t.Error("parseProcStat took a short line")
	}
	run, wait, ok := parseSchedstat("5000000 250000 17\n")
	if !ok || run != 5000000 || wait != 250000 {
		t.Errorf("parseSchedstat = %d %d %v", run, wait, ok)
	}
	m := parseSched("vcpu0 (1234, #threads: 9)\n---------\nse.exec_start   :   123.456\nse.nr_migrations   :   42\nnr_switches  :  100\nnr_voluntary_switches : 60\nnr_involuntary_switches :  40\n")
	if m["se.nr_migrations"] != 42 || m["nr_involuntary_switches"] != 40 || m["nr_voluntary_switches"] != 60 {
		t.Errorf("parseSched = %v", m)
	}
	if _, ok := m["se.exec_start"]; ok {
		t.Error("parseSched kept a fraction")
	}
	busy, idle := parseCPUStat("cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 1 2 3 40 5 6 7 8 9 10\ncpu1 10 0 0 60 0 0 0 0 0 0\nintr 5\n")
	if len(busy) != 2 || busy[0] != 1+2+3+6+7+8 || idle[0] != 45 || busy[1] != 10 || idle[1] != 60 {
		t.Errorf("parseCPUStat = %v %v", busy, idle)
	}
	irq := parseInterrupts("           CPU0       CPU1       \n  0:         40          0   IO-APIC   2-edge      timer\nLOC:      12345        678   Local timer interrupts\nTLB:          7          9   TLB shootdowns\nERR:          0\n", irqRows)
	if len(irq) != 4 || irq["LOC0"] != 12345 || irq["LOC1"] != 678 || irq["TLB0"] != 7 || irq["TLB1"] != 9 {
		t.Errorf("parseInterrupts = %v", irq)
	}
	if v := parseKV("thp_fault_alloc 12\ncompact_stall 3\nbad line here\n"); v["thp_fault_alloc"] != 12 || v["compact_stall"] != 3 || len(v) != 2 {
		t.Errorf("parseKV = %v", v)
	}
}

func TestGoCollections(t *testing.T) {
	n, ms := goCollections([]string{
		"gc 1 @0.012s 2%: 0.010+1.5+0.020 ms clock, 0.020+0.1/0.5/0+0.040 ms cpu, 3->3->1 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P",
		"linuxboot: something else",
		"[    1.0] gc 2 @1.200s 1%: 0.5+2+0.5 ms clock, 1+0/0/0+1 ms cpu, 4->4->2 MB, 5 MB goal, 2 P",
		"gc stands for nothing here",
	})
	if n != 2 || math.Abs(ms-(1.53+3)) > 1e-9 {
		t.Errorf("goCollections = %d, %v", n, ms)
	}
}

func TestPearson(t *testing.T) {
	if r, ok := pearson([]float64{1, 2, 3}, []float64{2, 4, 6}); !ok || math.Abs(r-1) > 1e-12 {
		t.Errorf("pearson = %v %v, want 1", r, ok)
	}
	if r, ok := pearson([]float64{1, 2, 3}, []float64{6, 4, 2}); !ok || math.Abs(r+1) > 1e-12 {
		t.Errorf("pearson = %v %v, want -1", r, ok)
	}
	if _, ok := pearson([]float64{1, 2, 3}, []float64{5, 5, 5}); ok {
		t.Error("pearson of a constant")
	}
}

// TestProbeSelf reads this test process as a VMM: the readings exist and
// add up (the machine was busy at least as long as this process ran).
func TestProbeSelf(t *testing.T) {
	before := readMachine()
	x := 0
	for i := range 50_000_000 {
		x += i
	}
	_ = x
	s := probeBoot(os.Getpid(), before, []string{"gc 1 @0.1s 0%: 1+1+1 ms clock"})
	if s.Num["other_threads"] < 1 || s.Num["other_run_ms"] <= 0 || s.Num["minflt"] <= 0 || s.Num["go_gcs"] != 1 {
		t.Errorf("probeBoot = %v", s.Num)
	}
	if _, ok := s.Num["l1_busy_ms"]; !ok {
		t.Errorf("no machine busy time: %v", s.Num)
	}
	t.Logf("%v", s)
}

// TestStartPinned: a process started with launch.pin runs on CPU 0 only, and
// the benchmark's own thread gets its mask back.
func TestStartPinned(t *testing.T) {
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	p, err := start([]string{"grep", "Cpus_allowed_list", "/proc/self/status"}, launch{pin: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.waitLine("Cpus_allowed_list", time.Now().Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if l := p.seen[len(p.seen)-1]; strings.TrimSpace(strings.TrimPrefix(l, "Cpus_allowed_list:")) != "0" {
		t.Errorf("pinned child: %q, want CPU 0 only", l)
	}
	p.kill()
	var after unix.CPUSet
	if err := unix.SchedGetaffinity(0, &after); err != nil {
		t.Fatal(err)
	}
	if before.Count() != after.Count() {
		t.Errorf("the benchmark's affinity went from %d CPUs to %d", before.Count(), after.Count())
	}
}

// TestQuietTable: boots under host load count in the "all" medians only,
// and the ratios follow.
func TestQuietTable(t *testing.T) {
	st := func(vmm string, other, wall float64) bootStat {
		return bootStat{VMM: vmm, CPUs: 1, Num: map[string]float64{"host_other_ms": other, "host_ms": wall}}
	}
	type row struct {
		s    bootStat
		init float64
	}
	rows := []row{
		{st("govmm", 10, 4000), 4000}, {st("govmm", 50, 4200), 4200}, {st("govmm", 9000, 9000), 9000}, {st("govmm", 8000, 8500), 8500},
		{st("qemu-pc", 0, 6000), 6000}, {st("qemu-pc", 700, 6100), 6100}, {st("qemu-pc", 100, 5800), 5800},
		{bootStat{VMM: "govmm", CPUs: 1, Num: map[string]float64{}}, 1}, // the host not read: left out
	}
	var b strings.Builder
	(&collector{}).quietTable(&b, rows2quiet(rows, func(r row) (bootStat, float64) { return r.s, r.init }))
	out := b.String()
	for _, want := range []string{
		"| govmm | 1 | 8500 ms | 4 | 4200 ms | 2 | 4000 ms | 9000 ms |",
		"| qemu-pc | 1 | 6000 ms | 3 | 6000 ms | 2 | 5800 ms | 6100 ms |",
		"govmm/qemu-pc, 1 vCPU: 1.42x of medians over all boots, 0.70x over quiet boots",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("quietTable lacks %q:\n%s", want, out)
		}
	}
}

// TestEachProc: the walk over /proc finds this test process by its pid
// and command name, with its fields after the name.
func TestEachProc(t *testing.T) {
	self := os.Getpid()
	found := false
	eachProc(func(pid int, name string, rest []string) {
		if pid == self {
			found = true
			if !strings.HasPrefix("linuxboot.test", name) || len(rest) <= statStime {
				t.Errorf("this process: name %q, %d fields", name, len(rest))
			}
		}
	})
	if !found {
		t.Fatalf("pid %d not in the walk over /proc", self)
	}
}
