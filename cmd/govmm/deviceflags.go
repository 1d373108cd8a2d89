//go:build !arm64

package main

import (
	"flag"
	"fmt"
	"strings"

	"govmm/internal/optlist"
	"govmm/vfio"
	"govmm/vm"
)

// deviceFlags is the repeatable --device flag of run (and of restore and
// migrate receive, for a saved VM's devices): host devices passed
// through, vfio=/sys/bus/pci/devices/DDDD:BB:DD.F or a mediated device,
// vfio=/sys/bus/mdev/devices/UUID.
type deviceFlags struct {
	vfio  []string
	order vfio.Order
}

func (d *deviceFlags) String() string { return strings.Join(d.vfio, " ") }

// Set parses vfio=PATH[,order=route-first|irqs-first] (",," in a value is
// a literal comma, as in --disk: optlist). The order is the VM's (all
// devices share one), so differing orders are refused.
func (d *deviceFlags) Set(v string) error {
	parts := optlist.Split(v)
	kind, path, ok := strings.Cut(parts[0], "=")
	if !ok || kind != "vfio" {
		return fmt.Errorf("--device %q: want vfio=/sys/bus/pci/devices/DDDD:BB:DD.F or vfio=/sys/bus/mdev/devices/UUID[,order=route-first|irqs-first]", v)
	}
	addr, err := vfio.ParseAddress(path)
	if err != nil {
		return err
	}
	for _, a := range d.vfio {
		if a == addr {
			return fmt.Errorf("--device vfio=%s given twice", addr)
		}
	}
	for _, opt := range parts[1:] {
		k, val, _ := strings.Cut(opt, "=")
		switch k {
		case "order":
			o, err := vfio.ParseOrder(val)
			if err != nil {
				return err
			}
			if d.order != 0 && d.order != o {
				return fmt.Errorf("--device %q: another --device asked for order %v; the VM has one order", v, d.order)
			}
			d.order = o
		default:
			return fmt.Errorf("--device %q: unknown option %q (want order=route-first|irqs-first)", v, k)
		}
	}
	d.vfio = append(d.vfio, addr)
	return nil
}

func (d *deviceFlags) register(fs *flag.FlagSet) {
	fs.Var(d, "device", "pass a host PCI device or a mediated device through with VFIO: vfio=/sys/bus/pci/devices/DDDD:BB:DD.F or vfio=/sys/bus/mdev/devices/UUID, with [,order=route-first|irqs-first] (repeatable; a PCI device must be bound to vfio-pci)")
}

func (d *deviceFlags) config() vm.VFIOConfig {
	return vm.VFIOConfig{Devices: d.vfio, Order: d.order}
}
