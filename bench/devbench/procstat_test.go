package main

import (
	"os"
	"testing"
	"time"
)

// TestReadProc reads this process's counters around a stretch of CPU work
// and 2000 reads: the CPU time and the read system calls grow by at least
// that much, none of it is guest time, and procDelta divides by its unit.
func TestReadProc(t *testing.T) {
	f, err := os.Open("/dev/zero")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	a := readProc(os.Getpid())
	if !a.ok {
		t.Fatal("no counters for this process")
	}
	buf := make([]byte, 8)
	for range 2000 {
		if _, err := f.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	x := 0
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		x++
	}
	b := readProc(os.Getpid())
	if b.syscr-a.syscr < 2000 {
		t.Errorf("read system calls grew by %d over 2000 reads", b.syscr-a.syscr)
	}
	if b.cpuTicks-a.cpuTicks < 10 {
		t.Errorf("CPU time grew by %d ticks over 300 ms of work (%d loops)", b.cpuTicks-a.cpuTicks, x)
	}
	if b.guestTicks != a.guestTicks {
		t.Errorf("guest time grew by %d ticks in a process with no guest", b.guestTicks-a.guestTicks)
	}
	for _, r := range procDelta("govmm", "net-h2g", a, b, 2) {
		if r.Key == "proc net-h2g read syscalls" && r.Value != float64(b.syscr-a.syscr)/2 {
			t.Errorf("%s: %g, want %g", r.Key, r.Value, float64(b.syscr-a.syscr)/2)
		}
	}
	var sum int64
	for _, v := range b.vcswBy {
		sum += v
	}
	if sum != b.vcsw || len(b.vcswBy) != 1 || b.vcswBy[runtimeThreads] != b.vcsw {
		t.Errorf("switches by thread name %v: want the process's %d, all under its own name (a test names no thread)", b.vcswBy, b.vcsw)
	}
	if len(b.rt) == 0 {
		t.Error("no runtime thread's counters, in a process of runtime threads alone")
	}
	if got := procDelta("govmm", "idle", procSnap{}, b, 1); got != nil {
		t.Errorf("a delta from a failed read: %v, want none", got)
	}
}
