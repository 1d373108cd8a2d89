//go:build arm64

// Package mshvarm is the place for govmm's MSHV backend on arm64 hosts,
// which does not exist yet. What it has is the error that "--accel mshv"
// should give on arm64: NotImplemented names each piece the backend still
// lacks and why (the README's "MSHV on arm64" has the details and sources).
// The arm64 ABI itself is in package mshvabi (abi_arm64.go).
package mshvarm

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNotImplemented is what NotImplemented wraps.
var ErrNotImplemented = errors.New("MSHV on arm64 is not implemented")

// Missing lists what an arm64 MSHV backend needs that govmm does not have,
// one entry per piece.
var Missing = []string{
	"GIC setup: the partition-property codes of GIC_LPI_INT_ID_BITS, GIC_PPI_OVERFLOW_INTERRUPT_FROM_CNTV and GIC_PPI_PERFORMANCE_MONITORS_INTERRUPT are not confirmed by any readable source",
	"MMIO: the hypervisor leaves decoding to the VMM (data-abort syndrome); govmm has no decoder because KVM decodes for accel/kvmarm",
	"MSIs: the VMMs that run on MSHV configure no LPIs and take MSIs as GIC SPIs (Cloud Hypervisor through a GICv2m frame), while the arm64 board offers only an ITS",
	"power-off and reset: the arm64 reset intercept is not handled",
	"testing: no arm64 MSHV host is available, and mshvsim simulates x86 MSHV only",
}

// NotImplemented returns the error for an attempt to use MSHV on arm64.
func NotImplemented() error {
	return fmt.Errorf("%w (see the README, \"MSHV on arm64\"); missing: %s", ErrNotImplemented, strings.Join(Missing, "; "))
}
