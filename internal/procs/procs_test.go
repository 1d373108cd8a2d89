package procs

import (
	"runtime"
	"testing"
)

func TestBlockingRaisesAndReleases(t *testing.T) {
	start := runtime.GOMAXPROCS(0)
	r1 := Blocking()
	r2 := Blocking()
	if got := runtime.GOMAXPROCS(0); got != start+2 {
		t.Fatalf("GOMAXPROCS %d with two blocking threads, want %d", got, start+2)
	}
	r1()
	r1() // at most once
	if got := runtime.GOMAXPROCS(0); got != start+1 {
		t.Fatalf("GOMAXPROCS %d after one release (twice), want %d", got, start+1)
	}
	r2()
	if got := runtime.GOMAXPROCS(0); got != start {
		t.Fatalf("GOMAXPROCS %d after both releases, want the %d it started with", got, start)
	}
}
