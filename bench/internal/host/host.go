// Package host holds what the benchmark programs share about the machine
// they run on: finding (or installing) QEMU, and naming the CPU, so that
// every report says where its numbers came from.
package host

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
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
