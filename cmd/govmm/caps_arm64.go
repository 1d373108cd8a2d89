package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"govmm/accel/kvmarm"
)

// arm64KVMDevice is the KVM device the arm64 build opens.
const arm64KVMDevice = "/dev/kvm"

// cmdCaps reports KVM/arm64's capabilities in the same report as on x86
// (no CPUID: arm64 has none). KVM is available when it opens and has every
// capability and in-kernel device the machine needs; MSHV is listed as not
// implemented. Like on x86 the status is 0 whatever the host has, 64 for
// bad flags.
func cmdCaps(args []string, stdout io.Writer) error {
	asJSON, err := parseCapsFlags(args)
	if err != nil {
		return err
	}
	var rep capsReport
	rep.Accelerators = append(rep.Accelerators, kvmARM64Report(arm64KVMDevice))
	rep.Accelerators = append(rep.Accelerators, accelReport{
		Name: "mshv", Device: "/dev/mshv", Error: "MSHV is not implemented on arm64",
	})
	return emitCaps(stdout, rep, asJSON)
}

// kvmARM64Report opens dev and asks it for its capabilities.
func kvmARM64Report(dev string) accelReport {
	r := accelReport{Name: "kvm", Device: dev}
	if _, err := os.Stat(dev); err != nil {
		r.Error = fmt.Sprintf("%s not present", dev)
		return r
	}
	k, err := kvmarm.Open(dev)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer k.Close()
	c, err := k.Caps()
	c.Device = dev
	r.Caps = &c
	if err != nil {
		r.Error = err.Error()
		return r
	}
	if missing := kvmarm.MissingRequired(c); len(missing) > 0 {
		r.Error = fmt.Sprintf("%s lacks what govmm's arm64 machine needs: %s", dev, strings.Join(missing, ", "))
		return r
	}
	r.Available = true
	return r
}
