// Package pcihp is the PCI hotplug controller that ACPI PCI hotplug
// (Linux's acpiphp) talks to through the DSDT, in the shape of QEMU's
// PIIX4 acpi-pci-hotplug registers: it exists so that a device added to
// bus 0 while the guest runs is announced the way the guest's firmware
// tables say, rather than by a native PCIe hotplug port govmm does not
// have.
//
// The registers (12 bytes of port I/O at platform.PortPCIHotplug, 32-bit
// access):
//
//	+0 PCIU  slots inserted since the guest last read it (read clears)
//	+4 PCID  slots the VMM asks the guest to eject (always 0 today:
//	         govmm only adds devices; the guest ejects on its own)
//	+8 B0EJ  write a slot bitmap: the guest ejects those slots
//
// Plug sets a slot's PCIU bit and raises the hotplug GPE; the DSDT's
// \_GPE._E01 reads PCIU and notifies each slot device (Notify 1, bus
// check), and acpiphp scans the slot. A slot device's _EJ0 writes its bit
// to B0EJ once the guest has stopped using the device, and the eject
// callback removes it.
package pcihp

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// Register offsets and the block's size.
const (
	OffUp    = 0
	OffDown  = 4
	OffEject = 8
	Size     = 12
)

// GPE is the general-purpose event the controller raises (its DSDT
// method is \_GPE._E01, as on QEMU's PC).
const GPE = 1

// Controller is the hotplug controller's registers; it implements
// bus.Device.
type Controller struct {
	raise func()
	eject func(slot int)

	mu sync.Mutex
	up uint32
}

// New returns the controller. raise sets the hotplug GPE's status (the
// ACPI PM block's RaiseGPE(GPE)); eject is called for each slot the guest
// ejects, on the vCPU thread that wrote B0EJ, outside the controller's
// lock: it must not block on the vCPUs.
func New(raise func(), eject func(slot int)) *Controller {
	return &Controller{raise: raise, eject: eject}
}

// Plug announces a device now present in slot (1..31) to the guest.
func (c *Controller) Plug(slot int) error {
	if slot <= 0 || slot >= 32 {
		return fmt.Errorf("pcihp: slot %d out of range 1..31", slot)
	}
	c.mu.Lock()
	c.up |= 1 << slot
	c.mu.Unlock()
	c.raise()
	return nil
}

// Pending reports the slots plugged that the guest has not read yet.
func (c *Controller) Pending() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

// State is the controller's saved state: the slots plugged that the
// guest has not read from PCIU yet (a snapshot taken between a hot-add
// and the guest's GPE handler). Which slots hold a device is the PCI
// bus's and the VM's record of its hot-added devices, not the
// controller's: it keeps no more than the guest can read.
type State struct {
	Up uint32 `json:"pciu,omitempty"`
}

// Save returns the controller's state.
func (c *Controller) Save() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return State{Up: c.up}
}

// Restore loads a saved state into a controller the guest has not run
// against yet. It raises nothing: the GPE's status is the PM block's
// state, restored with it. Slot 0 (the host bridge) is never plugged.
func (c *Controller) Restore(s State) error {
	if s.Up&1 != 0 {
		return fmt.Errorf("pcihp: saved PCIU %#x has slot 0 (the host bridge) plugged", s.Up)
	}
	c.mu.Lock()
	c.up = s.Up
	c.mu.Unlock()
	return nil
}

func (c *Controller) reg(off uint64) uint32 {
	switch off {
	case OffUp:
		v := c.up
		c.up = 0
		return v
	}
	return 0
}

// Read implements bus.Device: PCIU (cleared by a read of its first byte),
// PCID (zero) and B0EJ (reads as zero).
func (c *Controller) Read(offset uint64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var regs [Size]byte
	if offset == OffUp {
		binary.LittleEndian.PutUint32(regs[OffUp:], c.reg(OffUp))
	}
	for i := range data {
		off := offset + uint64(i)
		if off < Size {
			data[i] = regs[off]
		} else {
			data[i] = 0
		}
	}
}

// Write implements bus.Device: a write to B0EJ ejects the slots whose
// bits are set (slot 0, the host bridge, never).
func (c *Controller) Write(offset uint64, data []byte) {
	if offset < OffEject || offset >= Size {
		return
	}
	var b [4]byte
	copy(b[offset-OffEject:], data)
	v := binary.LittleEndian.Uint32(b[:]) &^ 1
	for slot := 1; slot < 32; slot++ {
		if v&(1<<slot) != 0 && c.eject != nil {
			c.eject(slot)
		}
	}
}
