package vm

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"govmm/api"
	"govmm/devices/acpipm"
	"govmm/devices/pcihp"
	"govmm/platform"
	"govmm/virtio"
	"govmm/virtio/blk"
	"govmm/virtio/devices"
	virtionet "govmm/virtio/net"
)

// Hot-add: a virtio-blk or virtio-net device put on a free slot of bus 0
// while the guest runs, announced through ACPI PCI hotplug (package
// pcihp, the DSDT's slot devices and \_GPE._E01). The backing file or TAP
// comes as a descriptor the control socket's client opened: once
// confined, the VMM opens no path.

// HotAddWait is how long a hot-add waits by default for the guest to
// bind a driver to the new function (DRIVER_OK).
const HotAddWait = api.DefaultHotAddWait

// hotplugSetup registers the GPE0 block and the hotplug controller and
// returns the slots a device may be hot-added to: those free once the
// boot-time devices are on the bus.
func (v *VM) hotplugSetup(p *platformDevices) error {
	if err := v.pio.Register(platform.PortGPE0, acpipm.GPE0BlockLen, "acpi-gpe0", p.pm.GPEBlock()); err != nil {
		return err
	}
	p.hotplug = pcihp.New(func() { p.pm.RaiseGPE(pcihp.GPE) }, func(slot int) {
		// On the vCPU thread that ran the guest's _EJ0: the device's
		// threads are stopped elsewhere.
		go v.eject(slot)
	})
	if err := v.pio.Register(platform.PortPCIHotplug, pcihp.Size, "pci-hotplug", p.hotplug); err != nil {
		return err
	}
	for slot := 1; slot < 32; slot++ {
		if p.pci.Function(slot, 0) == nil {
			p.hotSlots = append(p.hotSlots, slot)
		}
	}
	return nil
}

// HotAddDisk hot-adds a virtio-blk disk on fd, an image file the caller
// opened (c.Path only names it). It returns once the guest's driver
// bound to it, or with an error after wait (0: HotAddWait), the device
// staying in its slot; the VM owns fd from the call on.
func (v *VM) HotAddDisk(c blk.Config, fd int, wait time.Duration) (PCIDevice, error) {
	return v.hotAdd(fd, wait, hotRecord(HotAddedDisk, c.Spec), func(set *devices.Set, slot int, h devices.Host) (*devices.Device, error) {
		return set.HotAddDisk(v.cfg.Virtio, c, fd, slot, h)
	})
}

// HotAddNet hot-adds a virtio-net device on fd, a TAP queue the caller
// opened (virtionet.OpenTapFile). It waits as HotAddDisk does; the VM
// owns fd from the call on.
func (v *VM) HotAddNet(c virtionet.Config, fd int, wait time.Duration) (PCIDevice, error) {
	return v.hotAdd(fd, wait, hotRecord(HotAddedNet, c.Spec), func(set *devices.Set, slot int, h devices.Host) (*devices.Device, error) {
		return set.HotAddNet(v.cfg.Virtio, c, fd, slot, h)
	})
}

// errNoHotplug is a hot-add on a machine without the hotplug controller.
var errNoHotplug = errors.New("hot-add: this machine has no PCI hotplug controller")

func (v *VM) hotAdd(fd int, wait time.Duration, rec hotDevice, build func(*devices.Set, int, devices.Host) (*devices.Device, error)) (PCIDevice, error) {
	fail := func(err error) (PCIDevice, error) {
		unix.Close(fd)
		return PCIDevice{}, err
	}
	p := v.plat
	if p == nil || p.hotplug == nil {
		return fail(errNoHotplug)
	}
	select {
	case <-v.running:
	default:
		return fail(errors.New("hot-add: the VM is not running yet"))
	}
	select {
	case <-v.stopped:
		return fail(errors.New("hot-add: the VM has stopped"))
	default:
	}
	if v.Paused() {
		return fail(&InputError{Err: errors.New("hot-add: the VM is paused; resume it first (the guest must see the device arrive)")})
	}
	v.hotMu.Lock()
	if v.migrating {
		v.hotMu.Unlock()
		return fail(&InputError{Err: errors.New("hot-add: a live migration of this VM is under way (the destination was built with the devices it had when the migration began); hot-add once it is done, on the destination, or after it failed")})
	}
	slot := -1
	for _, s := range p.hotSlots {
		if p.pci.Function(s, 0) == nil {
			slot = s
			break
		}
	}
	if slot < 0 {
		v.hotMu.Unlock()
		return fail(&InputError{Err: fmt.Errorf("hot-add: no free PCI slot (the guest's DSDT has hotplug slots %v, all taken)", p.hotSlots)})
	}
	if p.virtioSet == nil {
		p.virtioSet = &devices.Set{}
	}
	d, err := build(p.virtioSet, slot, v.hotHost(p))
	if err != nil {
		v.hotMu.Unlock()
		var ie *devices.InputError
		if errors.As(err, &ie) {
			return PCIDevice{}, &InputError{Err: fmt.Errorf("hot-add: %w", err)}
		}
		return PCIDevice{}, fmt.Errorf("hot-add: %w", err)
	}
	p.virtio = p.virtioSet.List()
	rec.rec.Slot = slot
	if p.hotDevs == nil {
		p.hotDevs = map[int]hotDevice{}
	}
	p.hotDevs[slot] = rec
	v.hotMu.Unlock()
	if rec.uncarried != nil {
		v.log.Warn("hot-add: the device cannot be recorded in a snapshot or a migration, which will be refused while it is there", "slot", slot, "err", rec.uncarried)
	}
	v.log.Info("hot-add: device on the bus, guest notified", "slot", slot, "device", d.Transport.Describe())
	if err := p.hotplug.Plug(slot); err != nil {
		return PCIDevice{}, err
	}
	out := PCIDevice{Slot: slot, What: d.Transport.Describe()}
	if wait <= 0 {
		wait = HotAddWait
	}
	deadline := time.Now().Add(wait)
	for !d.Transport.DriverOK() {
		if time.Now().After(deadline) {
			return out, fmt.Errorf("hot-add: %s is at PCI slot %d (0000:00:%02x.0), but the guest has not bound a driver to it within %v (does its kernel have ACPI PCI hotplug, CONFIG_HOTPLUG_PCI_ACPI, and the driver?); the device stays in the slot", d.Transport.Describe(), slot, slot, wait)
		}
		select {
		case <-v.stopped:
			return out, errors.New("hot-add: the VM stopped before the guest bound a driver")
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, x := range v.PCIDevices() {
		if x.Slot == slot {
			out = x
		}
	}
	return out, nil
}

// eject removes the device the guest ejected from slot (its _EJ0): the
// function leaves the bus, the transport stops (its queue threads end)
// and the backend is closed.
func (v *VM) eject(slot int) {
	p := v.plat
	v.hotMu.Lock()
	defer v.hotMu.Unlock()
	d, err := p.virtioSet.Remove(p.pci, slot)
	if d == nil {
		v.log.Warn("pci hotplug: the guest ejected an empty slot", "slot", slot)
		return
	}
	p.virtio = p.virtioSet.List()
	delete(p.hotDevs, slot)
	if err != nil {
		v.log.Warn("pci hotplug: ejected device did not close cleanly", "slot", slot, "err", err)
	}
	v.log.Info("pci hotplug: the guest ejected a device; removed", "slot", slot, "device", d.Transport.Describe())
}

// hotHost is what a hot-added device is wired to: bus 0, guest memory,
// the MSI routes and INTA's GSI by the _PRT's rule.
func (v *VM) hotHost(p *platformDevices) devices.Host {
	router := p.chips.Routes()
	return devices.Host{
		Root: p.pci, Mem: v.mem, Log: v.log,
		Router:  func(int) virtio.Router { return router },
		INTxGSI: func(slot int) uint32 { return uint32(platform.PCIGSI(slot, 0)) },
	}
}
