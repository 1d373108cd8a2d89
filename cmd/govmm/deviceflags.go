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
	iommu vfio.IOMMUMode
	// iommuSet: some --device gave iommu= (the VM has one IOMMU API).
	iommuSet bool
}

func (d *deviceFlags) String() string { return strings.Join(d.vfio, " ") }

// Set parses vfio=PATH[,order=route-first|irqs-first][,iommu=auto|iommufd|legacy]
// (",," in a value is a literal comma, as in --disk: optlist). The order
// and the IOMMU API are the VM's (all devices share them), so differing
// ones are refused.
func (d *deviceFlags) Set(v string) error {
	parts := optlist.Split(v)
	kind, path, ok := strings.Cut(parts[0], "=")
	if !ok || kind != "vfio" {
		return fmt.Errorf("--device %q: want vfio=/sys/bus/pci/devices/DDDD:BB:DD.F or vfio=/sys/bus/mdev/devices/UUID[,order=route-first|irqs-first][,iommu=auto|iommufd|legacy]", v)
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
		case "iommu":
			m, err := vfio.ParseIOMMUMode(val)
			if err != nil {
				return err
			}
			if d.iommuSet && d.iommu != m {
				return fmt.Errorf("--device %q: another --device asked for iommu=%v; the VM has one IOMMU API", v, d.iommu)
			}
			d.iommu, d.iommuSet = m, true
		default:
			return fmt.Errorf("--device %q: unknown option %q (want order=route-first|irqs-first or iommu=auto|iommufd|legacy)", v, k)
		}
	}
	d.vfio = append(d.vfio, addr)
	return nil
}

func (d *deviceFlags) register(fs *flag.FlagSet) {
	fs.Var(d, "device", "pass a host PCI device or a mediated device through with VFIO: vfio=/sys/bus/pci/devices/DDDD:BB:DD.F or vfio=/sys/bus/mdev/devices/UUID, with [,order=route-first|irqs-first][,iommu=auto|iommufd|legacy] (repeatable; a PCI device must be bound to vfio-pci; iommu=auto uses iommufd where the kernel offers it)")
}

func (d *deviceFlags) config() vm.VFIOConfig {
	return vm.VFIOConfig{Devices: d.vfio, Order: d.order, IOMMU: d.iommu}
}
