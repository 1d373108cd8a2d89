// Package host holds what the benchmark programs share about the machine
// they run on: finding (or installing) QEMU, naming the CPU and the
// substrate, so that every report says where its numbers came from, and
// moving a benchmark into a nested-KVM VM where there is no /dev/kvm.
package host

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"govmm/internal/nested"
)

// EnsureQEMU returns qemu-system-x86_64, installing Debian's package when it is
// missing.
func EnsureQEMU() (string, error) {
	if p, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		return p, nil
	}
	fmt.Fprintln(os.Stderr, "bench: installing qemu-system-x86 with apt-get")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "qemu-system-x86"}} {
		c := exec.Command("apt-get", args...)
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := c.CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get %s: %v\n%s (or run with -no-qemu)", strings.Join(args, " "), err, out)
		}
	}
	return exec.LookPath("qemu-system-x86_64")
}

// CPUName is the model name /proc/cpuinfo gives.
func CPUName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.IndexByte(l, ':'); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return "unknown CPU"
}

// Nested reports whether a benchmark should run inside a nested-KVM VM:
// when forced, or when this machine has no /dev/kvm at all. (A software
// kvm_pvm /dev/kvm is usable: the README's tables say which substrate each
// came from.)
func Nested(force bool) bool {
	if os.Getenv(nested.InL1Env) == "1" {
		return false
	}
	if force {
		return true
	}
	_, err := os.Stat("/dev/kvm")
	return err != nil
}

// Substrate names where the numbers come from.
func Substrate() string {
	if os.Getenv(nested.InL1Env) == "1" {
		return "nested KVM in an L1 VM on QEMU's TCG (" + CPUName() + "); absolute times are TCG times, compare the ratios"
	}
	return "this machine's KVM (" + CPUName() + ")"
}

// RunInL1 runs this program again inside a nested-KVM VM with args, the
// given files copied in, and QEMU with its firmware where withQEMU (for
// side by side runs on the same nested KVM); its output is streamed here.
// A run in L1 that exits non-zero is an error.
func RunInL1(args, files []string, withQEMU bool, memoryMB int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var programs []string
	if withQEMU {
		if _, err := EnsureQEMU(); err != nil {
			return err
		}
		programs = []string{"qemu-system-x86_64"}
	}
	wd, _ := os.Getwd()
	fmt.Fprintln(os.Stderr, "no /dev/kvm here (or -nested): running in a nested-KVM VM")
	res, err := nested.Run(context.Background(), nested.Config{
		Command:  append([]string{self}, args...),
		Dir:      wd,
		Files:    append([]string{self, wd}, files...),
		Programs: programs,
		MemoryMB: memoryMB,
		Timeout:  3 * time.Hour,
		Output:   os.Stdout,
	})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("the run in the nested VM exited with status %d", res.ExitCode)
	}
	return nil
}

// LineWriter hands what is written to it to Line a whole line at a time
// (with its newline): how a benchmark reads the result lines its run in
// L1 prints among its progress.
type LineWriter struct {
	Line    func(line string)
	partial []byte
}

func (w *LineWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.partial[:i+1])
		w.partial = w.partial[i+1:]
		w.Line(line)
	}
}

// ResumeInL1 runs a benchmark in nested-KVM VMs under the machine-wide
// L1 lock, held throughout so that a fresh L1 after one that died comes
// before anyone else's. Each L1 runs cfg with the command args() gives at
// that moment (a benchmark resumes from the repetition that was running),
// and when an L1 dies, name's progress line says why, with the end of
// L1's kernel log, and a fresh one goes on, at most maxDeaths times. It
// returns how many L1s died.
func ResumeInL1(name string, maxDeaths int, args func() []string, cfg nested.Config) (int, error) {
	fmt.Fprintf(os.Stderr, "%s: no hardware-semantics /dev/kvm here (or -nested): running in a nested-KVM VM; waiting for its lock\n", name)
	release, err := nested.Lock()
	if err != nil {
		return 0, err
	}
	defer release()
	for deaths := 0; ; deaths++ {
		cfg.Command = args()
		res, err := nested.Run(context.Background(), cfg)
		if err == nil {
			if res.ExitCode != 0 {
				return deaths, fmt.Errorf("the run in L1 exited with status %d", res.ExitCode)
			}
			return deaths, nil
		}
		msg := err.Error()
		if e, ok := err.(*nested.Error); ok {
			msg = e.Reason + "\n--- L1 kernel log (end):\n" + LastLines(e.ConsoleLog, 15)
		}
		fmt.Fprintf(os.Stderr, "%s: L1 died: %s\n", name, msg)
		if deaths == maxDeaths {
			return deaths + 1, fmt.Errorf("L1 died %d times; the report has what was measured", deaths+1)
		}
	}
}

// LastLines is the last n lines of s.
func LastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
