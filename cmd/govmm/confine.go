//go:build !arm64

package main

import (
	"log/slog"

	"govmm/virtio/devices"
)

// The x86 build's confinement: confineFlags (confineflags.go) with what
// only x86 has, VFIO devices that vCPU threads reach by pread and pwrite.

// landlockWriteDir is the directory Landlock leaves writable: where
// snapshots may go.
func (f *runFlags) landlockWriteDir() string { return f.writeDir(f.apiSocket) }

// confine applies the confinement the flags ask for.
func (f *runFlags) confine(log *slog.Logger) error {
	return f.apply(log, f.apiSocket, f.vcpuDeviceIO())
}

// vcpuDeviceIO says whether vCPU threads reach a device through pread
// and pwrite: a passed-through VFIO device's configuration space and
// unmapped BAR regions.
func (f *runFlags) vcpuDeviceIO() bool { return len(f.devices.vfio) > 0 }

// vcpuThreadHook is what each vCPU thread runs before it first enters the
// guest (vm.SetVCPUThread): its own, narrower filter; nil with
// --seccomp=off or process.
func (f *runFlags) vcpuThreadHook() func(index int) error { return f.vcpuHook(f.vcpuDeviceIO()) }

// virtioConfig is the VM's virtio devices as the flags ask, with the
// balloon's limits for accelName and the disk workers' confinement.
func (f *runFlags) virtioConfig(accelName string, log *slog.Logger) devices.Config {
	c := balloonConfig(f.virtio.config(), accelName, f.mshvDev)
	f.setDeviceHooks(&c, log)
	return c
}
