//go:build !arm64

package main

import (
	"strings"
	"testing"

	"govmm/accel"
	"govmm/cpu"
)

// TestCPUGuestInfo: the words govmm gives its own guests name the model
// and list what it hides against the accelerator's CPUID, and nothing
// added.
func TestCPUGuestInfo(t *testing.T) {
	supported := []accel.CPUIDEntry{
		{Function: 0, EAX: 0xd, EBX: 0x68747541, ECX: 0x444d4163, EDX: 0x69746e65},
		// SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, XSAVE, AVX.
		{Function: 1, ECX: 1<<0 | 1<<9 | 1<<19 | 1<<20 | 1<<23 | 1<<26 | 1<<28, EDX: 1<<25 | 1<<26},
		{Function: 0xd, Index: 0, Flags: accel.CPUIDFlagSignificantIndex, EAX: 7},
		{Function: 0x80000000, EAX: 0x80000001},
	}
	for _, tc := range []struct{ spec, want string }{
		{"host", "govmm.cpu=host govmm.cpu.hidden= govmm.cpu.added="},
		{"host,-avx", "govmm.cpu=host,-avx govmm.cpu.hidden=avx,XSAVE_components_0x4 govmm.cpu.added="},
	} {
		m, err := cpu.Parse(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		guest, err := m.Apply(supported)
		if err != nil {
			t.Fatal(err)
		}
		if got := cpuGuestInfo(m, supported, guest); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.spec, got, tc.want)
		}
		if strings.Count(cpuGuestInfo(m, supported, guest), " ") != 2 {
			t.Errorf("%s: the words must not contain spaces", tc.spec)
		}
	}
}
