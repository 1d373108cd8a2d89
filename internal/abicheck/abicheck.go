// Package abicheck pins the Go mirrors of Linux's uapi structs, ioctl
// request numbers and constants (in govmm's ABI packages: KVM, VFIO,
// vhost) to their C headers. Each value is checked twice: against the
// figure gcc gave when the mirror was written, recorded beside it, so the
// check means something on a machine without a compiler; and, where gcc
// and the headers are installed, against the headers themselves, so a
// recorded figure that was wrong cannot hide a wrong mirror.
package abicheck

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Value is one fact of an ABI.
type Value struct {
	C    string // a C expression over the headers: sizeof(struct x), offsetof(struct x, f), a macro
	Go   uint64 // what the Go mirror has
	Want uint64 // what gcc computed from the headers on x86-64, recorded
}

// integer is what a Go mirror's value may be: a size or offset
// (uintptr), a request number, a constant.
type integer interface {
	~int | ~int32 | ~int64 | ~uint | ~uint16 | ~uint32 | ~uint64 | ~uintptr
}

// V is the Value of C expression c, with Go's value got and the recorded
// figure want.
func V[T integer](c string, got T, want uint64) Value {
	return Value{C: c, Go: uint64(got), Want: want}
}

// Recorded fails t for each value whose Go side differs from its recorded
// figure.
func Recorded(t testing.TB, vals []Value) {
	t.Helper()
	for _, v := range vals {
		if v.Go != v.Want {
			t.Errorf("%s: Go has %#x (%d), the header %#x (%d)", v.C, v.Go, v.Go, v.Want, v.Want)
		}
	}
}

// Headers compiles every value's expression against headers (such as
// "linux/vfio.h") with the C compiler cc ("gcc", or a cross compiler such
// as "aarch64-linux-gnu-gcc" for another architecture's headers) and fails
// t for each value Go disagrees with, and each recorded figure the header
// disagrees with. The checks are static assertions, so nothing built for
// another architecture has to run. It skips when cc or a header is
// missing: Recorded still holds there.
func Headers(t testing.TB, cc string, headers []string, vals []Value) {
	t.Helper()
	path, err := exec.LookPath(cc)
	if err != nil {
		t.Skipf("%s not installed (the recorded figures are still checked)", cc)
	}
	var b strings.Builder
	b.WriteString("#include <stddef.h>\n")
	for _, h := range headers {
		fmt.Fprintf(&b, "#include <%s>\n", h)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "abi.c")
	if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(path, "-fsyntax-only", src).CombinedOutput(); err != nil {
		t.Skipf("%s cannot include %s (apt-get install linux-libc-dev, or the cross one): %s", cc, strings.Join(headers, ", "), firstLine(out))
	}
	// One assertion for Go's value and one for the recorded figure, each
	// named by its kind and its value's index.
	for i, v := range vals {
		fmt.Fprintf(&b, "_Static_assert((unsigned long long)(%s) == %#xULL, \"go %d\");\n", v.C, v.Go, i)
		fmt.Fprintf(&b, "_Static_assert((unsigned long long)(%s) == %#xULL, \"want %d\");\n", v.C, v.Want, i)
	}
	if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "-fsyntax-only", "-fmax-errors=0", src).CombinedOutput()
	if err == nil {
		return
	}
	failed := 0
	for _, m := range assertion.FindAllStringSubmatch(string(out), -1) {
		i, _ := strconv.Atoi(m[2])
		if i >= len(vals) {
			continue
		}
		failed++
		if v := vals[i]; m[1] == "go" {
			t.Errorf("%s: Go has %#x (%d), %s on the installed header disagrees", v.C, v.Go, v.Go, cc)
		} else {
			t.Errorf("%s: recorded as %#x (%d), %s on the installed header disagrees", v.C, v.Want, v.Want, cc)
		}
	}
	if failed == 0 {
		t.Fatalf("%s on the checks: %v\n%s", cc, err, out)
	}
}

var assertion = regexp.MustCompile(`static assertion failed: "(go|want) (\d+)"`)

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}
