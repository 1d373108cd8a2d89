package kvm

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// TestCreateVMUnderSignals creates VMs on a thread that a second goroutine
// keeps signalling (SIGURG, which the Go runtime itself sends to preempt):
// KVM_CREATE_VM gives up with EINTR when a signal is pending, and every
// creation must still succeed (CI once saw "KVM_CREATE_VM: interrupted
// system call").
//
// The signals come in bursts (one every 20 us for 2 ms) with quiet gaps
// between them. A gap doubles, up to half a second, after each burst in
// which no VM was created: in a slow L1 (TCG on a loaded host) creating a
// VM can take longer than any fixed gap, and a storm that never pauses
// then interrupts every attempt for ever, where the Go runtime's own
// preemption signals (at most one per 10 ms of running) never would.
func TestCreateVMUnderSignals(t *testing.T) {
	a := openKVM(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	var stop atomic.Bool
	var created atomic.Int64
	done := make(chan int)
	go func() {
		n := 0
		quiet, seen := 2*time.Millisecond, int64(-1)
		for !stop.Load() {
			for end := time.Now().Add(2 * time.Millisecond); time.Now().Before(end) && !stop.Load(); {
				if unix.Tgkill(pid, tid, unix.SIGURG) == nil {
					n++
				}
				time.Sleep(20 * time.Microsecond)
			}
			if c := created.Load(); c == seen {
				quiet = min(2*quiet, 500*time.Millisecond)
			} else {
				quiet, seen = 2*time.Millisecond, c
			}
			time.Sleep(quiet)
		}
		done <- n
	}()
	for i := range 100 {
		vm, err := a.NewVM(accel.VMConfig{NumVCPUs: 1})
		if err != nil {
			stop.Store(true)
			<-done
			t.Fatalf("VM %d: %v", i, err)
		}
		vm.Close()
		created.Add(1)
	}
	stop.Store(true)
	t.Logf("100 VMs created while %d signals were sent to the creating thread", <-done)
}
