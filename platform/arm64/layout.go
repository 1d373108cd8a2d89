// Package arm64 is govmm's arm64 machine: a "virt"-style board with RAM
// at 1 GiB, an in-kernel GICv3, the architected timer, PSCI firmware
// provided by KVM, a PL011 console and a PCI Express host bridge (ECAM)
// whose functions signal MSIs through the vGIC's ITS, or INTx on four
// GIC SPIs when the guest does not enable MSI-X, described to the guest
// by a flattened device tree. It boots a Linux arm64 Image (or Image.gz) by the
// arm64 boot protocol: the kernel at a 2 MiB aligned address near the
// start of RAM, the device tree's address in x0, the MMU off.
//
// layout.go (the memory map, kernel/initrd/DTB placement and the device
// tree) is plain data and is tested on any host; machine_arm64.go runs the
// machine on KVM/arm64.
package arm64

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"govmm/boot/arm64image"
	"govmm/fdt"
)

// The memory map (the same addresses as QEMU's virt board, so guest
// kernels and tools that assume them find things where they expect).
const (
	GICDistBase   = 0x0800_0000
	GICDistSize   = 0x1_0000
	GICRedistBase = 0x080a_0000
	// GICITSBase is the ITS's 128 KiB (control and translation frames).
	GICITSBase = 0x0808_0000
	GICITSSize = 0x2_0000
	// GICRedistStride is one vCPU's redistributor (RD and SGI frames).
	GICRedistStride = 0x2_0000
	UARTBase        = 0x0900_0000
	UARTSize        = 0x1000
	// UARTSPI is the UART's shared peripheral interrupt (INTID 32+1).
	UARTSPI = 1
	// PCIINTxSPIBase is the first of the PCINumINTxSPIs SPIs the PCI
	// functions' INTA-INTD pins are swizzled over (SPIs 3-6, INTIDs
	// 35-38, as on QEMU's virt board): see PCIINTxSPI.
	PCIINTxSPIBase = 3
	PCINumINTxSPIs = 4
	RAMBase        = 0x4000_0000

	// The PCI host bridge: the 32-bit memory window below the ECAM
	// window, which covers bus 0 only, and the 64-bit window in the
	// upper half of the 40-bit IPA space, above any RAM.
	PCIMMIO32Base = 0x1000_0000
	PCIMMIO32End  = 0x3eff_0000
	PCIECAMBase   = 0x3f00_0000
	PCIECAMSize   = 1 << 20 // one bus: 32 devices x 8 functions x 4 KiB
	PCIMMIO64Base = 0x80_0000_0000
	PCIMMIO64Size = 0x80_0000_0000
	// MaxRAM keeps RAM below 256 GiB, well inside KVM's default 40-bit
	// IPA space.
	MaxRAM = 255 << 30
	// MinRAM is the least memory a Linux guest is given.
	MinRAM = 64 << 20
	// NumIRQs is the number of interrupt IDs the vGIC handles (SGIs,
	// PPIs and 96 SPIs).
	NumIRQs = 128
)

// MaxCPUs is the number of vCPUs whose redistributors fit below the UART.
const MaxCPUs = (UARTBase - GICRedistBase) / GICRedistStride

// Interrupt specifier constants of the GIC binding.
const (
	gicSPI       = 0
	gicPPI       = 1
	irqLevelHigh = 4
)

// phandles.
const (
	phandleGIC = 1
	phandleClk = 2
	phandleITS = 3
)

// Placement is where the boot pieces go in guest physical memory.
type Placement struct {
	Kernel      uint64 // load address (the entry point)
	KernelEnd   uint64 // Kernel + image_size
	Initrd      uint64 // 0 without an initrd
	InitrdEnd   uint64
	DTB         uint64
	DTBMaxBytes uint64
}

const (
	mib         = 1 << 20
	dtbMaxBytes = 2 * mib // the boot protocol's limit
)

// Place lays out a kernel with header h, an initrd of initrdLen bytes and a
// DTB in memSize bytes of RAM: the kernel as low as the protocol allows,
// the DTB in the last 2 MiB aligned 2 MiB block of RAM (a block of its
// own, as the protocol asks), the initrd right below it.
func Place(h arm64image.Header, initrdLen, memSize uint64) (Placement, error) {
	var p Placement
	if memSize < MinRAM || memSize > MaxRAM {
		return p, fmt.Errorf("memory size %d MiB: want %d MiB to %d GiB", memSize/mib, MinRAM/mib, MaxRAM>>30)
	}
	ramEnd := uint64(RAMBase) + memSize
	p.Kernel = h.LoadAddress(RAMBase)
	p.KernelEnd = p.Kernel + h.ImageSize
	p.DTB = (ramEnd - dtbMaxBytes) &^ (2*mib - 1)
	p.DTBMaxBytes = dtbMaxBytes
	if p.KernelEnd > p.DTB {
		return p, fmt.Errorf("the kernel needs %d MiB from %#x; with the device tree that does not fit in %d MiB of RAM", h.ImageSize/mib+1, p.Kernel, memSize/mib)
	}
	if initrdLen > 0 {
		p.Initrd = (p.DTB - initrdLen) &^ 0xfff
		if p.Initrd < p.KernelEnd || p.Initrd > p.DTB {
			return p, fmt.Errorf("the initrd (%d MiB) does not fit between the kernel (ending at %#x) and the device tree (%#x) in %d MiB of RAM",
				initrdLen/mib, p.KernelEnd, p.DTB, memSize/mib)
		}
		p.InitrdEnd = p.Initrd + initrdLen
	}
	return p, nil
}

// TreeConfig is what the device tree describes.
type TreeConfig struct {
	MemSize uint64
	// MPIDRs are the vCPUs' MPIDR_EL1 values (from KVM), vCPU 0 first.
	MPIDRs  []uint64
	Cmdline string
	// Initrd and InitrdEnd bound the initrd in guest memory (0, 0: none).
	Initrd, InitrdEnd uint64
}

// UARTPath is the PL011's node, the console of /chosen/stdout-path.
var UARTPath = fmt.Sprintf("/pl011@%x", UARTBase)

// PCI address-space codes of the first cell of a PCI "ranges" entry
// (the PCI bus binding): 32-bit and 64-bit memory.
const (
	pciSpaceMem32 = 0x0200_0000
	pciSpaceMem64 = 0x0300_0000
)

// PCIINTxSPI is the SPI (INTID 32 + the result) that pin (0 INTA to 3
// INTD) of the function at slot raises: the standard swizzle over
// PCINumINTxSPIs lines, pin p of slot s on line (s + p) mod 4, as the host
// bridge's interrupt-map says and as QEMU's virt board wires it. It is
// also the GSI of the SPI's irqchip route (KVM's default arm64 routing
// numbers GSI n as SPI n), which a function's resample irqfd uses.
func PCIINTxSPI(slot, pin int) uint32 {
	return uint32(PCIINTxSPIBase + (slot+pin)%PCINumINTxSPIs)
}

// PCIPath is the host bridge's node.
var PCIPath = fmt.Sprintf("/pcie@%x", PCIECAMBase)

// pciNode describes the generic ECAM host bridge (Linux's
// pci-host-generic): bus 0 through the ECAM window, the two memory
// windows (no I/O window: no device here has an I/O BAR), and msi-map,
// which hands each function's requester ID to the ITS as its device ID,
// and interrupt-map, which wires each slot's INTA-INTD to the GIC SPIs
// PCIINTxSPI names (level, active high), for a guest without MSIs
// (pci=nomsi, or a driver that does not use MSI-X).
func pciNode(w *fdt.Writer) {
	w.BeginNode(PCIPath[1:])
	w.PropString("compatible", "pci-host-ecam-generic")
	w.PropString("device_type", "pci")
	w.PropU32("#address-cells", 3)
	w.PropU32("#size-cells", 2)
	w.PropU32("linux,pci-domain", 0)
	w.PropU32("bus-range", 0, PCIECAMSize>>20-1)
	// Devices write guest memory through the host's caches.
	w.PropEmpty("dma-coherent")
	w.PropU64("reg", PCIECAMBase, PCIECAMSize)
	hi := func(v uint64) uint32 { return uint32(v >> 32) }
	lo := func(v uint64) uint32 { return uint32(v) }
	const size32 = PCIMMIO32End - PCIMMIO32Base
	// Each entry: PCI address (3 cells), CPU address (2), size (2); the
	// windows are identity-mapped.
	w.PropU32("ranges",
		pciSpaceMem32, 0, PCIMMIO32Base, 0, PCIMMIO32Base, 0, size32,
		pciSpaceMem64, hi(PCIMMIO64Base), lo(PCIMMIO64Base), hi(PCIMMIO64Base), lo(PCIMMIO64Base), hi(PCIMMIO64Size), lo(PCIMMIO64Size))
	// Requester IDs 0-0xffff map to ITS device IDs 0-0xffff.
	w.PropU32("msi-map", 0, phandleITS, 0, 0x1_0000)
	// INTx: a child interrupt specifier is one cell, the pin (1 INTA to
	// 4 INTD). The mask keeps the low two bits of the device number
	// (bits 11-12 of the unit address's first cell) and the pin: the
	// swizzle repeats every four slots, so 4 x 4 entries cover the bus.
	w.PropU32("#interrupt-cells", 1)
	w.PropU32("interrupt-map-mask", pciSlotMask, 0, 0, 7)
	w.PropU32("interrupt-map", interruptMap()...)
	w.EndNode()
}

// pciSlotMask selects, in the first cell of a PCI unit address
// (phys.hi: bus << 16 | device << 11 | function << 8 | register), the
// low two bits of the device number.
const pciSlotMask = (PCINumINTxSPIs - 1) << 11

// interruptMap is the host bridge's interrupt-map: for slots 0-3 and pins
// INTA-INTD, the entry <phys.hi 0 0 pin  GIC  0 0  SPI spi level-high>
// (the GIC's unit address is two cells, its #address-cells).
func interruptMap() []uint32 {
	var m []uint32
	for slot := range PCINumINTxSPIs {
		for pin := range 4 {
			m = append(m, uint32(slot)<<11, 0, 0, uint32(pin+1),
				phandleGIC, 0, 0, gicSPI, PCIINTxSPI(slot, pin), irqLevelHigh)
		}
	}
	return m
}

// DeviceTree builds the machine's DTB.
func DeviceTree(c TreeConfig) ([]byte, error) {
	if len(c.MPIDRs) == 0 || len(c.MPIDRs) > MaxCPUs {
		return nil, fmt.Errorf("device tree: %d vCPUs, want 1 to %d", len(c.MPIDRs), MaxCPUs)
	}
	w := fdt.NewWriter()
	w.BeginNode("")
	w.PropU32("#address-cells", 2)
	w.PropU32("#size-cells", 2)
	w.PropString("compatible", "linux,dummy-virt")
	w.PropString("model", "govmm arm64 virt")
	w.PropU32("interrupt-parent", phandleGIC)

	w.BeginNode("chosen")
	w.PropString("bootargs", c.Cmdline)
	w.PropString("stdout-path", UARTPath)
	if c.InitrdEnd > c.Initrd {
		w.PropU64("linux,initrd-start", c.Initrd)
		w.PropU64("linux,initrd-end", c.InitrdEnd)
	}
	var seed [40]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("device tree: random seed: %w", err)
	}
	w.PropU64("kaslr-seed", binary.LittleEndian.Uint64(seed[:8]))
	w.Prop("rng-seed", seed[8:])
	w.EndNode()

	w.BeginNode(fmt.Sprintf("memory@%x", RAMBase))
	w.PropString("device_type", "memory")
	w.PropU64("reg", RAMBase, c.MemSize)
	w.EndNode()

	w.BeginNode("cpus")
	w.PropU32("#address-cells", 1)
	w.PropU32("#size-cells", 0)
	for _, m := range c.MPIDRs {
		aff := uint32(m & 0xffffff) // Aff2..Aff0; Aff3 is 0 below 2^24 vCPUs
		w.BeginNode(fmt.Sprintf("cpu@%x", aff))
		w.PropString("device_type", "cpu")
		w.PropString("compatible", "arm,arm-v8")
		w.PropU32("reg", aff)
		w.PropString("enable-method", "psci")
		w.EndNode()
	}
	w.EndNode()

	// KVM implements PSCI 1.x (0.2 at least) for vCPUs initialised with
	// KVM_ARM_VCPU_PSCI_0_2; calls are HVCs.
	w.BeginNode("psci")
	w.PropString("compatible", "arm,psci-1.0", "arm,psci-0.2")
	w.PropString("method", "hvc")
	w.EndNode()

	w.BeginNode(fmt.Sprintf("intc@%x", GICDistBase))
	w.PropString("compatible", "arm,gic-v3")
	w.PropU32("#interrupt-cells", 3)
	w.PropU32("#address-cells", 2) // the ITS child is addressed like the root
	w.PropU32("#size-cells", 2)
	w.PropEmpty("ranges")
	w.PropEmpty("interrupt-controller")
	w.PropU32("#redistributor-regions", 1)
	w.PropU64("reg", GICDistBase, GICDistSize, GICRedistBase, uint64(len(c.MPIDRs))*GICRedistStride)
	w.PropU32("interrupts", gicPPI, 9, irqLevelHigh) // maintenance interrupt
	w.PropU32("phandle", phandleGIC)
	// The ITS turns a device's MSI (a write of its event ID to
	// GITS_TRANSLATER) into an LPI; #msi-cells 1 is the device ID.
	w.BeginNode(fmt.Sprintf("its@%x", GICITSBase))
	w.PropString("compatible", "arm,gic-v3-its")
	w.PropEmpty("msi-controller")
	w.PropU32("#msi-cells", 1)
	w.PropU64("reg", GICITSBase, GICITSSize)
	w.PropU32("phandle", phandleITS)
	w.EndNode()
	w.EndNode()

	pciNode(w)

	// The architected timer's PPIs: secure and non-secure physical,
	// virtual, hypervisor (INTIDs 29, 30, 27, 26).
	w.BeginNode("timer")
	w.PropString("compatible", "arm,armv8-timer")
	w.PropU32("interrupts", gicPPI, 13, irqLevelHigh, gicPPI, 14, irqLevelHigh, gicPPI, 11, irqLevelHigh, gicPPI, 10, irqLevelHigh)
	w.PropEmpty("always-on")
	w.EndNode()

	// The PL011's reference and bus clock, which the AMBA bus and the
	// driver look up by name.
	w.BeginNode("apb-pclk")
	w.PropString("compatible", "fixed-clock")
	w.PropU32("#clock-cells", 0)
	w.PropU32("clock-frequency", 24_000_000)
	w.PropString("clock-output-names", "clk24mhz")
	w.PropU32("phandle", phandleClk)
	w.EndNode()

	w.BeginNode(UARTPath[1:])
	w.PropString("compatible", "arm,pl011", "arm,primecell")
	w.PropU64("reg", UARTBase, UARTSize)
	w.PropU32("interrupts", gicSPI, UARTSPI, irqLevelHigh)
	w.PropU32("clocks", phandleClk, phandleClk)
	w.PropString("clock-names", "uartclk", "apb_pclk")
	w.EndNode()

	w.EndNode()
	b, err := w.Finish()
	if err != nil {
		return nil, fmt.Errorf("device tree: %w", err)
	}
	if len(b) > dtbMaxBytes {
		return nil, fmt.Errorf("device tree: %d bytes, more than the boot protocol's 2 MiB", len(b))
	}
	return b, nil
}
