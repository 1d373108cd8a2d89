package main

import (
	"strings"
	"testing"

	"govmm/bench/internal/host"
)

func TestResultRoundTrip(t *testing.T) {
	for _, r := range []result{
		{Kind: "boot", VMM: "qemu-microvm", CPUs: 2, Rep: 3, InitMS: 1234.5, ExitMS: 1500.2},
		{Kind: "boot", VMM: "govmm", CPUs: 1, Rep: 0, Note: "no \"linuxboot: init\" within 3m0s; console: a=b | c"},
		{Kind: "substrate", Note: "nested KVM in an L1 VM on QEMU's TCG (AMD EPYC); compare the ratios"},
		{Kind: "done", Rep: 4},
		{Kind: "restore", VMM: "govmm-mshvsim", CPUs: 2, Rep: 1, InitMS: 95.3, EnterMS: 80.1},
	} {
		// L1's output may carry a carriage return and text before the
		// line (a guest's console that did not end its line).
		line := "junk" + r.String() + "\r\n"
		got, ok := parseResult(line)
		if !ok || got != r {
			t.Errorf("parseResult(%q) = %+v, %v; want %+v", line, got, ok, r)
		}
	}
}

func TestParseResultRejects(t *testing.T) {
	for _, line := range []string{
		"linuxboot: init",
		"@@linuxboot kind=boot vmm=govmm cpus=x rep=0 init_ms=1 exit_ms=2 enter_ms=0",
		"@@linuxboot kind=boot vmm=govmm cpus=1 rep=0 init_ms=1 exit_ms=2",
		"@@linuxboot kind=boot vmm=govmm cpus=1 rep=0 init_ms=1 exit_ms enter_ms=0",
	} {
		if r, ok := parseResult(line); ok {
			t.Errorf("parseResult(%q) = %+v, want no result", line, r)
		}
	}
}

func TestNoteStaysOnOneLine(t *testing.T) {
	s := result{Kind: "restore", VMM: "govmm", CPUs: 1, Note: "a\nb"}.String()
	if strings.Contains(s, "\n") {
		t.Errorf("result line %q spans lines", s)
	}
}

func TestCollectorKeepsFirstAndTracksReps(t *testing.T) {
	c := newCollector()
	w := &host.LineWriter{Line: c.line}
	in := result{Kind: "boot", VMM: "govmm", CPUs: 1, Rep: 0, InitMS: 10, ExitMS: 20}.String() + "\n" +
		result{Kind: "done", Rep: 0}.String() + "\n" +
		"some progress\n" +
		result{Kind: "boot", VMM: "govmm", CPUs: 1, Rep: 0, InitMS: 99, ExitMS: 99}.String() + "\n"
	// Written in pieces, as a pipe delivers it.
	for len(in) > 0 {
		n := min(7, len(in))
		w.Write([]byte(in[:n]))
		in = in[n:]
	}
	if len(c.results) != 1 || c.results[0].InitMS != 10 {
		t.Errorf("results %+v, want the first boot only", c.results)
	}
	if c.nextRep() != 1 {
		t.Errorf("nextRep %d, want 1", c.nextRep())
	}
}
