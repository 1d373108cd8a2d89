package vm

import (
	"encoding/binary"
	"fmt"

	"govmm/pci"
	"govmm/virtio/balloon"
	virtionet "govmm/virtio/net"
)

// PCIDevice is one device on the VM's PCI bus (bus 0, function 0 of its
// slot), as the control socket's info lists it.
type PCIDevice struct {
	Slot   int
	Vendor uint16
	Device uint16
	// What says what the function is and what backs it: the virtio
	// device's description (its image, TAP or CID: what a migration
	// destination must have too), the host device a VFIO function
	// passes through, or the host bridge and test devices by name.
	What string
	// Queues describes a virtio device's status and live queues, a line
	// each (virtio.PCI.QueueStates): what tells a stalled queue's lost
	// interrupt from a driver that posted nothing.
	Queues []string
}

// PCIDevices lists the devices on the VM's PCI bus in slot order.
func (v *VM) PCIDevices() []PCIDevice {
	p := v.plat
	if p == nil || p.pci == nil {
		return nil
	}
	what := map[*pci.Function]string{}
	queues := map[*pci.Function][]string{}
	for _, d := range p.virtioSet.List() {
		queues[d.Transport.Function()] = d.Transport.QueueStates()
		what[d.Transport.Function()] = d.Transport.Describe()
		what[d.Transport.Function()] += virtionet.DeviceNote(d.Transport.Device())
		if d.HotAdded {
			what[d.Transport.Function()] += " (hot-added)"
		}
		if b, ok := d.Transport.Device().(*balloon.Device); ok {
			i := b.Info()
			what[d.Transport.Function()] = d.Transport.Describe() + fmt.Sprintf(" (target %d MiB, actual %d MiB)", uint64(i.TargetPages)*balloon.PageSize>>20, uint64(i.ActualPages)*balloon.PageSize>>20)
		}
	}
	if p.vfio != nil {
		for _, d := range p.vfio.devs {
			what[d.Function()] = "vfio " + d.Name()
		}
	}
	if p.pcitest != nil {
		what[p.pcitest.Function()] = "pci-testdev (--test-devices)"
	}
	var out []PCIDevice
	for slot := range pci.NumSlots {
		f := p.pci.Function(slot, 0)
		if f == nil {
			continue
		}
		var id [4]byte
		f.ReadConfig(pci.RegVendorID, id[:])
		d := PCIDevice{Slot: slot, Vendor: binary.LittleEndian.Uint16(id[:]), Device: binary.LittleEndian.Uint16(id[2:])}
		d.Queues = queues[f]
		switch w, ok := what[f]; {
		case ok:
			d.What = w
		case slot == 0:
			d.What = "host bridge"
		default:
			d.What = fmt.Sprintf("PCI function %04x:%04x", d.Vendor, d.Device)
		}
		out = append(out, d)
	}
	return out
}
