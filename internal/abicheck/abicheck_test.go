package abicheck

import (
	"strings"
	"testing"
)

// fakeT records failures instead of failing the real test.
type fakeT struct {
	testing.TB
	errs []string
}

func (f *fakeT) Helper()                           {}
func (f *fakeT) Errorf(format string, args ...any) { f.errs = append(f.errs, format) }

func TestRecorded(t *testing.T) {
	f := &fakeT{TB: t}
	Recorded(f, []Value{V("sizeof(int)", 4, 4), V("sizeof(long)", 4, 8)})
	if len(f.errs) != 1 {
		t.Fatalf("one wrong value: %d failures", len(f.errs))
	}
}

// TestHeaders checks expressions of the C library's own headers, and that
// a Go value or a recorded figure that disagrees with gcc fails.
func TestHeaders(t *testing.T) {
	good := []Value{V("sizeof(int)", 4, 4), V("offsetof(struct timespec, tv_nsec)", 8, 8), V("EINVAL", 22, 22)}
	Headers(t, "gcc", []string{"time.h", "errno.h"}, good)
	f := &fakeT{TB: t}
	Headers(f, "gcc", []string{"time.h", "errno.h"}, []Value{V("sizeof(int)", 8, 4), V("EINVAL", 22, 23)})
	if len(f.errs) != 2 || !strings.Contains(f.errs[0], "Go has") || !strings.Contains(f.errs[1], "recorded") {
		t.Fatalf("a wrong Go value and a wrong record: %q", f.errs)
	}
}
