package vm

import (
	"errors"
	"fmt"
	"log/slog"

	"govmm/pci"
	"govmm/platform"
	"govmm/vfio"
)

// VFIOConfig is the host PCI devices passed through with VFIO (--device
// vfio=...).
type VFIOConfig struct {
	// Devices are PCI addresses (DDDD:BB:DD.F) of devices bound to
	// vfio-pci.
	Devices []string
	// Order wires MSI vectors in this order (0: vfio.DefaultOrder for the
	// accelerator).
	Order vfio.Order
	// IOMMU is the IOMMU API: iommufd and the devices' VFIO cdevs, or
	// the legacy container (vfio.IOMMUAuto: iommufd where the kernel
	// offers it).
	IOMMU vfio.IOMMUMode
}

// vfioDevices are the VM's passed-through devices and their IOMMU (a
// container or an iommufd).
type vfioDevices struct {
	iommu vfio.IOMMU
	devs  []*vfio.PCI
	log   *slog.Logger
}

// addVFIO opens the devices, maps all guest RAM for their DMA and puts
// them on the bus in the first free slots.
//
// A VM built for saved state (mode buildIncoming) does not start them:
// their interrupts are wired once the interrupt controllers' state is in
// place (vfioDevices.load), which an irqfd assigned before would refuse.
func (v *VM) addVFIO(p *platformDevices, mode buildMode) error {
	if len(v.cfg.VFIO.Devices) == 0 {
		return nil
	}
	c, err := vfio.OpenIOMMU(v.cfg.VFIO.IOMMU, v.cfg.VFIO.Devices)
	if err != nil {
		return &InputError{Err: err}
	}
	x := &vfioDevices{iommu: c, log: v.log}
	p.vfio = x
	order := v.cfg.VFIO.Order
	if order == 0 {
		order = vfio.DefaultOrder(v.cfg.Accel.Name())
	}
	for _, addr := range v.cfg.VFIO.Devices {
		d, err := c.OpenDevice(addr)
		if err != nil {
			return &InputError{Err: err}
		}
		slot := 1
		for slot < pci.NumSlots && p.pci.Function(slot, 0) != nil {
			slot++
		}
		dev, err := vfio.NewPCI(d, vfio.PCIConfig{Router: p.chips.Routes(), Mapper: v.avm, Order: order, Log: v.log,
			INTxGSI: func(pin int) uint32 { return uint32(platform.PCIGSI(slot, pin-1)) }})
		if err != nil {
			d.Close()
			return err
		}
		x.devs = append(x.devs, dev)
		if err := p.pci.Add(slot, dev.Function()); err != nil {
			return fmt.Errorf("vfio device %s: %w", addr, err)
		}
		if mode != buildIncoming {
			if err := dev.Start(); err != nil {
				return err
			}
		}
		v.log.Info("vfio device passed through", "device", addr, "slot", slot, "order", order.String(), "iommu", c.Kind())
	}
	for _, r := range v.mem.Regions() {
		if err := c.MapDMA(r.GPA, r.Host); err != nil {
			return err
		}
	}
	return nil
}

// names lists the devices, for refusals.
func (x *vfioDevices) names() []string {
	if x == nil {
		return nil
	}
	var s []string
	for _, d := range x.devs {
		s = append(s, d.Name())
	}
	return s
}

// close resets and closes the devices and unmaps guest RAM from their
// IOMMU; failures are logged (the VM is going away).
func (x *vfioDevices) close() {
	if x == nil {
		return
	}
	var errs []error
	for _, d := range x.devs {
		errs = append(errs, d.Close())
	}
	errs = append(errs, x.iommu.Close())
	if err := errors.Join(errs...); err != nil {
		x.log.Warn("closing VFIO devices", "err", err)
	}
}
