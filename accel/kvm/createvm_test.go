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
func TestCreateVMUnderSignals(t *testing.T) {
	a := openKVM(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	var stop atomic.Bool
	done := make(chan int)
	go func() {
		n := 0
		for !stop.Load() {
			if unix.Tgkill(pid, tid, unix.SIGURG) == nil {
				n++
			}
			time.Sleep(20 * time.Microsecond)
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
	}
	stop.Store(true)
	t.Logf("100 VMs created while %d signals were sent to the creating thread", <-done)
}
