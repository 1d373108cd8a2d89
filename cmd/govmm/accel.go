//go:build !arm64

package main

import (
	"errors"
	"fmt"
	"os"

	"govmm/accel"
	"govmm/accel/kvm"
	"govmm/accel/mshv"
	"govmm/accel/mshv/mshvsim"
)

const (
	kvmDevice  = "/dev/kvm"
	mshvDevice = "/dev/mshv"
)

// openAccel opens the accelerator --accel names. "auto" prefers MSHV when
// /dev/mshv exists (Linux is then the hypervisor's root partition, and KVM
// is normally absent), else KVM.
func openAccel(name, mshvDev string) (accel.Accelerator, error) {
	switch name {
	case "auto":
		if _, err := os.Stat(mshvDevice); err == nil {
			return openMSHV(mshvDevice)
		}
		if _, err := os.Stat(kvmDevice); err != nil {
			return nil, fail(exitNoAccel, "--accel auto: neither %s nor %s exists on this host (is virtualization enabled and the kvm or mshv_root module loaded?)", kvmDevice, mshvDevice)
		}
		return openKVM()
	case "kvm":
		return openKVM()
	case "mshv":
		return openMSHV(mshvDev)
	default:
		return nil, fail(exitUsage, "--accel %q: want kvm, mshv or auto", name)
	}
}

// checkAccel validates an --accel name without opening anything.
func checkAccel(name string) error {
	switch name {
	case "auto", "kvm", "mshv":
		return nil
	}
	return fail(exitUsage, "--accel %q: want kvm, mshv or auto", name)
}

func openKVM() (accel.Accelerator, error) {
	a, err := kvm.Open()
	if err != nil {
		return nil, fail(exitNoAccel, "--accel kvm: %v", err)
	}
	return a, nil
}

func openMSHV(dev string) (accel.Accelerator, error) {
	if dev == "sim" {
		d, err := mshvsim.New()
		if err != nil {
			return nil, fail(exitNoAccel, "--accel mshv --mshv-device sim: start the MSHV simulator: %v", err)
		}
		a, err := mshv.Open(d)
		if err != nil {
			return nil, fail(exitNoAccel, "--accel mshv on the simulator: %v", err)
		}
		return a, nil
	}
	d, err := mshv.OpenDevice(dev)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fail(exitNoAccel, "--accel mshv: %s does not exist: this host is not a Microsoft Hypervisor root partition (Linux 6.15+ with mshv_root); use --accel kvm, or --mshv-device sim to run the MSHV path on the simulator", dev)
		}
		return nil, fail(exitNoAccel, "--accel mshv: open %s: %v", dev, err)
	}
	a, err := mshv.Open(d)
	if err != nil {
		return nil, fail(exitNoAccel, "--accel mshv: %v", err)
	}
	return a, nil
}

var _ = fmt.Sprint
