package main

import (
	"strings"
	"testing"
)

func TestTraceLineRoundTrip(t *testing.T) {
	for _, l := range []traceLine{
		{VMM: "govmm", CPUs: 1, Rep: 0, MS: 1234.5, Text: "<6>[    1.234567] Run /init as init process"},
		{VMM: "qemu-pc", CPUs: 2, Rep: 3, MS: 0, Text: "a | b|c"},
		{VMM: "govmm-thp", CPUs: 1, Rep: 1, MS: 7.5, Text: ""},
	} {
		got, ok := parseTraceLine("junk" + l.String() + "\r\n")
		if !ok || got != l {
			t.Errorf("parseTraceLine(%q) = %+v, %v; want %+v", l.String(), got, ok, l)
		}
	}
	for _, s := range []string{"linuxboot: init", "@@trace vmm=govmm cpus=x rep=0 ms=1|t", "@@trace vmm=govmm cpus=1 rep=0 ms=1 no bar"} {
		if _, ok := parseTraceLine(s); ok {
			t.Errorf("parseTraceLine(%q) accepted", s)
		}
	}
}

// A boot whose kernel started init at 2.5 s of its own clock and whose
// marker reached the host at 4000 ms spent 1500 ms before the kernel's
// clock started.
func TestTracePhases(t *testing.T) {
	var lines []traceLine
	add := func(ms float64, text string) {
		lines = append(lines, traceLine{VMM: "govmm", CPUs: 1, Rep: 0, MS: ms, Text: text})
	}
	add(4000, "linuxboot: init")
	add(4000, "trace: memory Rss: 102400 AnonHugePages: 81920")
	add(4001, "linuxboot: clocksource kvm-clock")
	for _, s := range []string{
		"<5>[    0.000000] Linux version 6.1.0",
		"<7>[    0.500000] calling  a_init+0x0/0x20 @ 1",
		"<7>[    0.600000] initcall a_init+0x0/0x20 returned 0 after 100000 usecs",
		"<7>[    0.600100] calling  b_init+0x0/0x20 @ 1",
		"<7>[    1.900000] initcall b_init+0x0/0x20 returned 0 after 1299900 usecs",
		"<7>[    1.950000] calling  a_init+0x0/0x20 @ 1",
		"<7>[    2.000000] initcall a_init+0x0/0x20 returned 0 after 50000 usecs",
		"<6>[    2.500000] Run /init as init process",
	} {
		add(4100, s)
	}
	add(5000, "trace: exit")
	add(5000, "trace: maxrss 65536 KiB")
	boots := groupTrace(lines)
	if len(boots) != 1 {
		t.Fatalf("%d boots, want 1", len(boots))
	}
	b := boots[0]
	pre, early, ic, late, kernel, ok := b.phases()
	if !ok {
		t.Fatal("phases: not ok")
	}
	near := func(a, b float64) bool { return a-b < 0.01 && b-a < 0.01 }
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"pre", pre, 1500}, {"early", early, 500}, {"initcalls", ic, 1500}, {"late", late, 500}, {"kernel", kernel, 2500}, {"exit", b.exitMS, 5000}, {"maxrss", b.maxRSS, 64}, {"rss at init", b.rssInit, 100}, {"THP at init", b.hugeInit, 80}} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %v ms, want %v", c.name, c.got, c.want)
		}
	}
	calls := b.initcalls()
	if !near(calls["a_init"], 150) || !near(calls["b_init"], 1299.9) || len(calls) != 2 {
		t.Errorf("initcalls = %v", calls)
	}
	g := b.gaps(1)
	if len(g) != 1 || !strings.Contains(g[0], "1299.9 ms") && !strings.Contains(g[0], "1299.9") {
		t.Errorf("gaps = %q, want the 1299.9 ms silence of b_init", g)
	}
	if len(b.other) != 2 {
		t.Errorf("other lines = %q, want the marker and the clock source", b.other)
	}
	var out strings.Builder
	analyzeTrace(&out, lines)
	if !strings.Contains(out.String(), "b_init") {
		t.Errorf("analysis leaves out b_init:\n%s", out.String())
	}
}

func TestParseTraceVMMs(t *testing.T) {
	got, err := parseTraceVMMs("govmm;qemu-pc:-cpu host,-tsc-deadline")
	if err != nil || len(got) != 2 || got[1] != "qemu-pc:-cpu host,-tsc-deadline" {
		t.Fatalf("parseTraceVMMs = %q, %v", got, err)
	}
	col, args := splitVariant(got[1])
	if col != "qemu-pc" || len(args) != 2 || args[0] != "-cpu" || args[1] != "host,-tsc-deadline" {
		t.Errorf("splitVariant(%q) = %q, %q", got[1], col, args)
	}
	if l := variantLabel(got[1]); strings.ContainsAny(l, " /") {
		t.Errorf("variantLabel(%q) = %q: has a space or a slash", got[1], l)
	}
	if got, err := parseTraceVMMs("govmm,govmm-thp"); err != nil || len(got) != 2 {
		t.Errorf("parseTraceVMMs(comma list) = %q, %v", got, err)
	}
	for _, bad := range []string{"", "govmm,qemu", "firecracker:--x"} {
		if got, err := parseTraceVMMs(bad); err == nil {
			t.Errorf("parseTraceVMMs(%q) = %q, want an error", bad, got)
		}
	}
}

// With the initcalls' start lines filtered out (as the guest's init
// does), the initcalls begin where the first kept one started.
func TestTracePhasesWithoutStartLines(t *testing.T) {
	var lines []traceLine
	for _, s := range []string{
		"linuxboot: init",
		"<7>[    0.600000] initcall a_init+0x0/0x20 returned 0 after 100000 usecs",
		"<7>[    1.900000] initcall b_init+0x0/0x20 returned 0 after 1299900 usecs",
		"<6>[    2.500000] Run /init as init process",
	} {
		lines = append(lines, traceLine{VMM: "qemu-pc", CPUs: 1, MS: 3000, Text: s})
	}
	_, early, ic, _, _, ok := groupTrace(lines)[0].phases()
	if !ok || early < 499.99 || early > 500.01 || ic < 1399.99 || ic > 1400.01 {
		t.Errorf("early %v ms, initcalls %v ms, ok %v; want 500, 1400, true", early, ic, ok)
	}
}
