//go:build !arm64

package main

import "govmm/vm"

func (f *virtioFlags) config() vm.VirtioConfig {
	return vm.VirtioConfig{Disks: f.disks, RNG: f.rng, Vsock: f.vsock.c, Nets: f.nets, Console: f.console.virtio, Balloon: f.balloon.on, BalloonOptions: f.balloon.opts}
}
