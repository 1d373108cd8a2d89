// Package procs keeps the Go runtime's processor count (GOMAXPROCS) in
// step with the VMM's threads that spend their lives blocked in a system
// call: vCPU threads in KVM_RUN, queue servers reading their doorbells.
//
// A goroutine that enters a system call keeps its processor (P) until the
// runtime's monitor hands it on, which the monitor delays for up to 10 ms
// while other processors are idle. With GOMAXPROCS at the CPU count, a
// VMM's blocked threads hold every processor: a goroutine they ready waits
// for the monitor, and a thread that wakes from its call finds no free
// processor and sleeps again until one is handed to it, two context
// switches where none was needed. One processor more per blocking thread
// keeps one free for each, while no more goroutines than before run Go
// code at once for long (each extra processor belongs to a thread that is
// asleep in the kernel).
package procs

import (
	"runtime"
	"sync"
)

var (
	mu      sync.Mutex
	base    int // GOMAXPROCS before the first Blocking: the CPUs the process may use
	blocked int
)

// Blocking notes one more thread that blocks in system calls for its
// life, raising GOMAXPROCS by one, and returns the function that takes it
// back (at most once). Raising it stops the world for an instant, so call
// it when the thread starts, not per call.
func Blocking() (release func()) {
	mu.Lock()
	defer mu.Unlock()
	if blocked == 0 {
		base = runtime.GOMAXPROCS(0)
	}
	blocked++
	runtime.GOMAXPROCS(base + blocked)
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			blocked--
			runtime.GOMAXPROCS(base + blocked)
		})
	}
}
