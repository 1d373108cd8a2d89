package schedpolicy

import (
	"os"
	"runtime"
	"strconv"
	"testing"
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
		if p, err := Policy(tid); err == nil && p != policyBatch {
			t.Errorf("thread %d: policy %d after BatchProcess, want SCHED_BATCH (%d)", tid, p, policyBatch)
		}
	}
	done := make(chan struct{})
	var before, during int
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine
		before, _ = Policy(0)
		if err := Interactive(); err != nil {
			t.Error(err)
			return
		}
		during, _ = Policy(0)
	}()
	<-done
	if before != policyBatch || during != policyOther {
		t.Errorf("a locked thread's policy: %d before, %d after Interactive; want %d, %d", before, during, policyBatch, policyOther)
	}
}
