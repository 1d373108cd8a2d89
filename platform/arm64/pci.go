package arm64

// pci.go puts the virtio-pci devices on the arm64 machine's PCI bus: the
// same transport, devices and routing table as on x86 (packages virtio,
// pci, irq/routes), with two arm64 differences. An MSI reaches the guest
// through the GICv3 ITS, which translates it by the device ID of the
// function that sent it, so every GSI a function allocates is tagged with
// the function's PCI requester ID. And INTx (used while MSI-X is off) is
// a GIC SPI rather than an IOAPIC pin: INTA of slot s is SPI
// PCIINTxSPI(s, 0), whose GSI (the same number) has an irqchip route to
// it, so the transport's resample irqfd is KVM's, which lowers the SPI
// and signals the resample eventfd at the guest's EOI. It is plain Go,
// tested on any host; machine_arm64.go wires it to KVM.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"govmm/accel/kvmarm"
	"govmm/irq/routes"
	"govmm/memory"
	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/devices"
)

// InputError is a Config the guest cannot be built from (a bad kernel,
// too little memory, a disk image that does not open): a usage error, not
// a host failure.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// VirtioConfig is the machine's virtio devices, in the order and at the
// PCI slots package virtio/devices gives them on both architectures.
type VirtioConfig = devices.Config

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
	// log is the RAM's memory.Memory, whose dirty log records the
	// devices' writes during a live migration (nil in tests).
	log *memory.Memory
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

// Regions is the RAM as one region, for a kernel vhost backend's memory
// table.
func (g guestRAM) Regions() []memory.Region { return []memory.Region{{GPA: g.base, Host: g.b}} }

// MarkDirty records a device's write into guest RAM in the VMM's dirty
// log (memory.Memory.MarkDirty), which live migration merges with KVM's:
// KVM never sees the VMM's own writes.
func (g guestRAM) MarkDirty(gpa, n uint64) {
	if g.log != nil {
		g.log.MarkDirty(gpa, n)
	}
}

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

// routeINTx routes the GSIs of the INTx SPIs (PCIINTxSPI) to those SPIs
// (vGIC irqchip 0, pin n = INTID 32+n) and commits the table, so that the
// functions' resample irqfds can be assigned on them. Call it once the
// vGIC is initialised: its initialisation installs KVM's default routing
// over whatever was there.
func routeINTx(table *routes.Table) error {
	for i := range PCINumINTxSPIs {
		spi := uint32(PCIINTxSPIBase + i)
		if err := table.SetIrqchip(spi, 0, spi); err != nil {
			return fmt.Errorf("INTx route of SPI %d: %w", spi, err)
		}
	}
	if err := table.Commit(); err != nil {
		return fmt.Errorf("INTx routes: %w", err)
	}
	return nil
}

// addVirtio builds the devices of c and adds them to root from slot 1
// up, each function's MSI routes tagged with its requester ID and its
// INTA on the SPI of its slot (routeINTx must have run); the virtio
// console (if any) writes to out. On error nothing built stays open.
func addVirtio(c VirtioConfig, root *pci.Root, table *routes.Table, ids DevIDs, mem virtio.Memory, log *slog.Logger, out io.Writer) (*devices.Set, error) {
	set, err := devices.Build(c, devices.Host{
		Root: root, Mem: mem, Log: log, ConsoleOut: out,
		Router: func(slot int) virtio.Router {
			return functionRouter{Table: table, ids: ids, devID: kvmarm.RequesterID(0, slot, 0)}
		},
		INTxGSI: func(slot int) uint32 { return PCIINTxSPI(slot, 0) },
	})
	if err != nil {
		var ie *devices.InputError
		if errors.As(err, &ie) {
			return nil, &InputError{err}
		}
		return nil, err
	}
	return set, nil
}
