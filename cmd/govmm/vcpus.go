//go:build !arm64

package main

import (
	"govmm/api"
)

// VCPUs serves the control socket's "vcpus" operation (`govmm info
// --vcpus`): vm.InspectVCPUs pauses a running VM for the capture and
// resumes it.
func (t *controlTarget) VCPUs() (api.VCPUsResult, error) {
	res, err := t.vm.InspectVCPUs()
	if err != nil {
		return res, err
	}
	t.log.Info("vCPU state shown", "vcpus", len(res.VCPUs), "pause_ms", res.PauseMS, "was_paused", res.WasPaused)
	return res, nil
}
