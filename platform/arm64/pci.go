package arm64

// pci.go puts the virtio-pci devices on the arm64 machine's PCI bus: the
// same transport, devices and routing table as on x86 (packages virtio,
// pci, irq/routes), with one arm64 difference: an MSI reaches the guest
// through the GICv3 ITS, which translates it by the device ID of the
// function that sent it, so every GSI a function allocates is tagged with
// the function's PCI requester ID. It is plain Go, tested on any host;
// machine_arm64.go wires it to KVM.

import (
	"fmt"
	"log/slog"

	"govmm/accel/kvmarm"
	"govmm/irq/routes"
	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
	"govmm/virtio/rng"
	"govmm/virtio/vsock"
)

// InputError is a Config the guest cannot be built from (a bad kernel,
// too little memory, a disk image that does not open): a usage error, not
// a host failure.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// VirtioConfig is the machine's virtio devices, in the order and at the
// PCI slots the x86 machine gives them: the disks (vda, vdb, ... from
// slot 1), the entropy device, the vsock device, the network devices.
type VirtioConfig struct {
	Disks []blk.Config
	RNG   bool
	Vsock *vsock.Config
	Nets  []virtionet.Config
}

// Empty reports whether no virtio device is asked for.
func (c VirtioConfig) Empty() bool {
	return len(c.Disks) == 0 && !c.RNG && c.Vsock == nil && len(c.Nets) == 0
}

// PCIWindows are the host bridge's windows as package pci places BARs in
// them (no I/O window: arm64 has no port I/O, and the virtio functions
// have no I/O BAR).
func PCIWindows() pci.Windows {
	return pci.Windows{
		Mem32Base: PCIMMIO32Base, Mem32End: PCIMMIO32End,
		Mem64Base: PCIMMIO64Base, Mem64End: PCIMMIO64Base + PCIMMIO64Size,
	}
}

// guestRAM is the machine's RAM as the virtio queues address it.
type guestRAM struct {
	base uint64
	b    []byte
}

// Slice returns n bytes of RAM at gpa, or an error naming the range when
// any of it lies outside RAM.
func (g guestRAM) Slice(gpa, n uint64) ([]byte, error) {
	size := uint64(len(g.b))
	if gpa < g.base || gpa-g.base > size || n > size-(gpa-g.base) {
		return nil, fmt.Errorf("guest memory [%#x, %#x) is not RAM (RAM is [%#x, %#x))", gpa, gpa+n, g.base, g.base+size)
	}
	off := gpa - g.base
	return g.b[off : off+n : off+n], nil
}

// MarkDirty is for live migration's dirty log, which the arm64 machine
// does not have (migration is refused on arm64): nothing to record.
func (g guestRAM) MarkDirty(gpa, n uint64) {}

// DevIDs records which ITS device ID a GSI's MSI route carries
// (kvmarm.VM).
type DevIDs interface {
	SetMSIDevID(gsi, devID uint32)
}

// functionRouter is the routing table as one PCI function sees it: each
// GSI it allocates for an MSI-X vector is tagged with the function's
// requester ID, which the ITS takes as the device ID.
type functionRouter struct {
	*routes.Table
	ids   DevIDs
	devID uint32
}

func (r functionRouter) Allocate() (uint32, error) {
	gsi, err := r.Table.Allocate()
	if err != nil {
		return 0, err
	}
	r.ids.SetMSIDevID(gsi, r.devID)
	return gsi, nil
}

// virtioDevice is one virtio-pci function and what backs it.
type virtioDevice struct {
	tr    *virtio.PCI
	close func() error // the backend (an image file, a socket), or nil
}

// addVirtio builds the devices of c and adds them to root from slot 1
// up. On error the devices built so far are returned too, to be closed.
func addVirtio(c VirtioConfig, root *pci.Root, table *routes.Table, ids DevIDs, mem virtio.Memory, log *slog.Logger) ([]*virtioDevice, error) {
	var devs []*virtioDevice
	slot := 1
	add := func(dev virtio.Device, class virtio.PCIClass, closer func() error) error {
		router := functionRouter{Table: table, ids: ids, devID: kvmarm.RequesterID(0, slot, 0)}
		tr, err := virtio.NewPCI(dev, virtio.PCIConfig{Class: class, Mem: mem, Router: router, Log: log})
		if err != nil {
			if closer != nil {
				closer()
			}
			return err
		}
		devs = append(devs, &virtioDevice{tr: tr, close: closer})
		if err := root.Add(slot, tr.Function()); err != nil {
			return fmt.Errorf("%s: %w", dev.Name(), err)
		}
		slot++
		return nil
	}
	if len(c.Disks) > 26 {
		return devs, &InputError{fmt.Errorf("%d disks: govmm names at most 26 (vda-vdz)", len(c.Disks))}
	}
	for i, dc := range c.Disks {
		d, err := blk.Open(dc, "vd"+string(rune('a'+i)))
		if err != nil {
			return devs, &InputError{err}
		}
		if err := add(d, virtio.PCIClass{Class: 0x01, Subclass: 0x80}, d.Close); err != nil {
			return devs, err
		}
	}
	if c.RNG {
		if err := add(rng.New(), virtio.PCIClass{Class: 0xff}, nil); err != nil {
			return devs, err
		}
	}
	if c.Vsock != nil {
		d, err := vsock.New(*c.Vsock, log)
		if err != nil {
			return devs, &InputError{err}
		}
		if err := add(d, virtio.PCIClass{Class: 0xff}, d.Close); err != nil {
			return devs, err
		}
	}
	for _, nc := range c.Nets {
		d, err := virtionet.Open(nc, log)
		if err != nil {
			return devs, &InputError{err}
		}
		if err := add(d, virtio.PCIClass{Class: 0x02}, d.Close); err != nil {
			return devs, err
		}
	}
	return devs, nil
}

// closeVirtio stops the transports and closes their backends.
func closeVirtio(devs []*virtioDevice) error {
	var first error
	for _, d := range devs {
		if err := d.tr.Close(); err != nil && first == nil {
			first = fmt.Errorf("%s: %w", d.tr.Device().Name(), err)
		}
		if d.close != nil {
			if err := d.close(); err != nil && first == nil {
				first = fmt.Errorf("%s: %w", d.tr.Device().Name(), err)
			}
		}
	}
	return first
}
