// Package memsize parses the memory sizes govmm's command line takes
// (256M, 2G, 512MiB, a plain byte count), for the CLI and for the test
// harness that reads them back from a command line.
package memsize

import (
	"fmt"
	"strconv"
	"strings"
)

// Parse parses a memory size such as 256M, 2G, 512MiB or a plain byte
// count, and insists on whole pages.
func Parse(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("memory size %q: want a positive number with an optional K, M, G or T suffix (e.g. 256M, 2G)", s)
	}
	if v > (1<<46)/mult {
		return 0, fmt.Errorf("memory size %q is too large", s)
	}
	v *= mult
	if v%4096 != 0 {
		return 0, fmt.Errorf("memory size %q is not a multiple of 4 KiB", s)
	}
	return v, nil
}
