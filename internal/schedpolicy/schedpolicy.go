// Package schedpolicy keeps govmm's helper threads from preempting its
// vCPU threads.
//
// A woken Linux thread of the normal policy may preempt the thread running
// on its CPU. govmm's device and Go runtime threads wake many times per
// transfer, and measured in L1 (README, "Every govmm thread SCHED_BATCH")
// each wake-up that lands on a vCPU's CPU puts the vCPU off it: a VM exit
// and entry more, and the guest stalls while the helper runs. A
// SCHED_BATCH thread's wake-up does not preempt: it runs on an idle CPU,
// or when the running thread yields or its slice ends. The policy needs
// no privilege. The vCPU threads keep the normal policy, so that a
// guest's interrupt still wakes its vCPU at once on a busy host.
package schedpolicy

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Policies (sched(7)).
const (
	policyOther = unix.SCHED_NORMAL
	policyBatch = unix.SCHED_BATCH
)

// change gives thread tid (0 for the calling thread) policy to if its
// policy is from, keeping its nice value and flags: a user's `nice` or
// real-time policy for govmm is theirs, and an unprivileged process may
// not lower its nice value again.
func change(tid int, from, to uint32) error {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil || a.Policy != from {
		return err
	}
	a.Policy = to
	return unix.SchedSetAttr(tid, a, 0)
}

// BatchProcess gives every thread of the process that has the normal
// policy SCHED_BATCH; threads created later inherit it from their
// creators. A thread that ends while it runs is skipped.
func BatchProcess() error {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("list the process's threads: %w", err)
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := change(tid, policyOther, policyBatch); err != nil && err != unix.ESRCH {
			return fmt.Errorf("set SCHED_BATCH on thread %d: %w", tid, err)
		}
	}
	return nil
}

// Interactive gives the calling thread, which must be locked to its
// goroutine (runtime.LockOSThread), the normal policy back if it has
// SCHED_BATCH. It is called before any seccomp filter, which does not
// allow sched_setattr; the policy is not taken back, since a vCPU thread
// ends with its VM (or, not confined, goes back to the runtime's pool
// with the normal policy, as it had before BatchProcess).
func Interactive() error {
	if err := change(0, policyBatch, policyOther); err != nil {
		return fmt.Errorf("set SCHED_OTHER on a vCPU thread: %w", err)
	}
	return nil
}
