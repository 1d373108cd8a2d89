//go:build !arm64

package main

import (
	"fmt"
	"io"
	"os"

	"govmm/cpu"
)

// cmdCaps reports KVM's and MSHV's capabilities and the CPUID each
// supports.
func cmdCaps(args []string, stdout io.Writer) error {
	asJSON, err := parseCapsFlags(args)
	if err != nil {
		return err
	}
	var rep capsReport
	for _, a := range []struct{ name, dev string }{{"kvm", kvmDevice}, {"mshv", mshvDevice}} {
		r := accelReport{Name: a.name, Device: a.dev}
		if _, err := os.Stat(a.dev); err != nil {
			r.Error = fmt.Sprintf("%s not present", a.dev)
			rep.Accelerators = append(rep.Accelerators, r)
			continue
		}
		acc, err := openAccel(a.name, a.dev)
		if err != nil {
			r.Error = err.Error()
			rep.Accelerators = append(rep.Accelerators, r)
			continue
		}
		r.Available = true
		if c, err := acc.Caps(); err == nil {
			r.Caps = &c
		} else {
			r.Error = err.Error()
		}
		if ids, err := acc.SupportedCPUID(); err == nil {
			r.CPUID = ids
			r.Features = cpu.Present(ids)
		}
		acc.Close()
		rep.Accelerators = append(rep.Accelerators, r)
	}
	return emitCaps(stdout, rep, asJSON)
}
