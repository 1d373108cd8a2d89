package e2e

import (
	"testing"
	"time"

	"govmm/internal/linuxguest"
	"govmm/virtio/virtiotest"
)

// TestQuietWatch: a wait asks about the substrate after each
// StallCheckEvery of quiet (output starts the count again), and at once
// when the guest reports a stuck CPU, once per report.
func TestQuietWatch(t *testing.T) {
	const poll = 50 * time.Millisecond
	every := int(linuxguest.StallCheckEvery / poll)
	var w quietWatch
	out, asked := "boot\n", 0
	for i := 1; i <= 3*every; i++ {
		if i == every/2 {
			out += "more\n" // output half-way to the first check
		}
		if w.due(len(out), out, poll) {
			asked++
			if want := every/2 + every*asked; i != want {
				t.Fatalf("asked at poll %d, want %d", i, want)
			}
		}
	}
	if asked != 2 {
		t.Fatalf("asked %d times in %d polls with output at poll %d, want 2", asked, 3*every, every/2)
	}

	// A soft-lockup report, its line cut between two polls: asked at
	// the poll that completes it, and not again for the same report.
	w = quietWatch{}
	out = "[   64.897349] watchdog: BUG: soft lock"
	if w.due(len(out), out, poll) {
		t.Fatal("asked on half a report")
	}
	out += "up - CPU#1 stuck for 56s! [kworker/1:0:22]\n"
	if !w.due(len(out), out, poll) {
		t.Fatal("not asked on a soft-lockup report")
	}
	for i := 0; i < 3; i++ {
		out += "x"
		if w.due(len(out), out, poll) {
			t.Fatalf("asked again on the same report (poll %d after it)", i+1)
		}
	}
	out += "[  92.380706] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
	if !w.due(len(out), out, poll) {
		t.Fatal("not asked on an RCU stall report")
	}
	// Progress that is not the output (bytes moved): the output is
	// still searched.
	w = quietWatch{}
	if !w.due(1, "watchdog: BUG: soft lockup - CPU#0 stuck for 22s!", poll) {
		t.Fatal("not asked on a report when progress is counted apart")
	}
}

// TestStallWatch: a watched process whose guest reports a stuck CPU is
// asked about at once; a diagnosis stops it and is what end returns; a
// watch that never asked, or whose asks found nothing, returns "".
func TestStallWatch(t *testing.T) {
	var console, logs virtiotest.SyncBuffer
	console.Write([]byte("boot\n"))
	w := newStallWatch()
	asked := make(chan int, 1)
	w.ask = func(pid int) string { asked <- pid; return "diagnosis: the nested substrate's known failure" }
	stopped := make(chan struct{})
	console.Write([]byte("watchdog: BUG: soft lockup - CPU#1 stuck for 56s!\n"))
	w.start(42, &console, &logs, func() { close(stopped) })
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("a stall report did not stop the process within 10 s")
	}
	if pid := <-asked; pid != 42 {
		t.Fatalf("asked about pid %d, want 42", pid)
	}
	if !w.found() {
		t.Fatal("found() is false after a diagnosis")
	}
	if d := w.end(); d != "diagnosis: the nested substrate's known failure" {
		t.Fatalf("end() = %q", d)
	}

	w = newStallWatch()
	w.ask = func(int) string { return "" }
	w.start(42, &console, &logs, func() { t.Error("stopped with no diagnosis") })
	time.Sleep(600 * time.Millisecond)
	if d := w.end(); d != "" || w.found() {
		t.Fatalf("end() = %q with no diagnosis", d)
	}
}
