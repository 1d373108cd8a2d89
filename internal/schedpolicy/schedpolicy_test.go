package schedpolicy

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBatchThenInteractive: BatchProcess reaches every thread, and
// Interactive gives a locked thread the normal policy.
func TestBatchThenInteractive(t *testing.T) {
	if err := BatchProcess(); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		if p, err := policyOf(tid); err == nil && p != policyBatch {
			t.Errorf("thread %d: policy %d after BatchProcess, want SCHED_BATCH (%d)", tid, p, policyBatch)
		}
	}
	done := make(chan struct{})
	var before, during int
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine
		before, _ = policyOf(0)
		if err := Interactive(); err != nil {
			t.Error(err)
			return
		}
		during, _ = policyOf(0)
	}()
	<-done
	if before != policyBatch || during != policyOther {
		t.Errorf("a locked thread's policy: %d before, %d after Interactive; want %d, %d", before, during, policyBatch, policyOther)
	}
}

// TestOthersLeftAlone: a thread's nice value survives BatchProcess and
// Interactive, and a thread of another policy than the normal one (here
// SCHED_IDLE, which needs no privilege) keeps it.
func TestOthersLeftAlone(t *testing.T) {
	type thread struct {
		policy uint32
		nice   int32
	}
	lockedThread := func(set unix.SchedAttr, interactive bool) (before, after thread) {
		ready, batched, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread() // the thread ends with the goroutine
			err := unix.SchedSetAttr(0, &set, 0)
			close(ready)
			if err != nil {
				t.Errorf("sched_setattr %+v: %v", set, err)
				return
			}
			<-batched
			if interactive {
				if err := Interactive(); err != nil {
					t.Error(err)
				}
			}
			a, err := unix.SchedGetAttr(0, 0)
			if err != nil {
				t.Error(err)
				return
			}
			after = thread{a.Policy, a.Nice}
		}()
		<-ready
		if err := BatchProcess(); err != nil {
			t.Fatal(err)
		}
		close(batched)
		<-done
		return thread{set.Policy, set.Nice}, after
	}
	if b, a := lockedThread(unix.SchedAttr{Policy: policyOther, Nice: 5}, false); a != (thread{policyBatch, 5}) {
		t.Errorf("a thread %+v: %+v after BatchProcess, want batch and nice 5", b, a)
	}
	if b, a := lockedThread(unix.SchedAttr{Policy: policyOther, Nice: 5}, true); a != (thread{policyOther, 5}) {
		t.Errorf("a thread %+v: %+v after BatchProcess and Interactive, want normal and nice 5", b, a)
	}
	if b, a := lockedThread(unix.SchedAttr{Policy: unix.SCHED_IDLE}, true); a.policy != unix.SCHED_IDLE {
		t.Errorf("a thread %+v: %+v after BatchProcess and Interactive, want SCHED_IDLE kept", b, a)
	}
}

// policyOf returns thread tid's policy (0 for the calling thread).
func policyOf(tid int) (int, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return 0, fmt.Errorf("sched_getattr %d: %w", tid, err)
	}
	return int(a.Policy), nil
}
