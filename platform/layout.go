// Package platform fixes the guest physical address map and port map of the
// PC govmm presents, so that loaders, firmware tables and devices agree on
// where everything lives without importing each other.
package platform

// Low-memory layout (all below 1 MiB except where noted).
const (
	// BootGDT holds the GDT the loaders install for 32- and 64-bit entry.
	BootGDT = 0x0500
	// BootIDT is an empty IDT (limit 0) for entry states that need one.
	BootIDT = 0x0520
	// PVHStartInfo is where the hvm_start_info (and its memmap) go.
	PVHStartInfo = 0x6000
	// ZeroPage is the Linux boot_params page.
	ZeroPage = 0x7000
	// MultibootInfo is where the Multiboot information structure goes
	// (when the image leaves it free; see MultibootMin).
	MultibootInfo = 0x8000
	// PageTables: PML4 at PML4Addr, one PDPT, and four 2 MiB-page PDs
	// that identity map the first 4 GiB (for 64-bit entry).
	PML4Addr = 0x9000
	PDPTAddr = 0xA000
	PDAddr   = 0xB000 // 4 pages: 0xB000-0xEFFF
	// BootStackTop is the initial stack for ELF64/Multiboot entries
	// (grows down from here; the loaders keep BootStackSize bytes below it
	// free).
	BootStackTop  = 0x1F000
	BootStackSize = 0x4000
	// CmdlineAddr is where the kernel command line is copied (max CmdlineMax bytes).
	CmdlineAddr = 0x20000
	CmdlineMax  = 0x10000
	// MultibootMin is the lowest address a Multiboot image may be loaded
	// at, as with QEMU and GRUB (below it: the IVT, the BIOS data area and
	// the boot GDT). A Multiboot image may cover MultibootInfo,
	// BootStackTop and CmdlineAddr: the loader then puts those structures
	// in free RAM around the image.
	MultibootMin = 0x8000
	// MPTable is the Intel MP floating pointer and table, in the last KiB
	// of base memory (the EBDA area).
	MPTable = 0x9FC00
	// ACPIBase..ACPIEnd is the BIOS read-only area where the RSDP and the
	// ACPI tables are written (the RSDP is found by scanning 0xE0000-0xFFFFF).
	ACPIBase = 0xE0000
	ACPIEnd  = 0x100000
	// KernelMin is the lowest address a kernel image may be loaded at
	// (except real-mode flat binaries and Multiboot images).
	KernelMin = 0x100000
)

// MMIO addresses in the hole below 4 GiB.
const (
	IOAPICBase = 0xFEC00000
	IOAPICSize = 0x1000
	LAPICBase  = 0xFEE00000
	// TestDeviceBase is an MMIO scratch device used by the test guests to
	// exercise instruction emulation (see devices/testdev).
	TestDeviceBase = 0xFEB00000
	TestDeviceSize = 0x1000
	// PCIMMIO32Base..PCIMMIO32End is the host bridge's 32-bit memory
	// window, from the start of the MMIO hole (RAM below 4 GiB ends at
	// 0xC0000000 or lower) up to the ECAM window.
	PCIMMIO32Base = 0xC0000000
	PCIMMIO32End  = 0xE0000000
	// PCIECAMBase is the PCI Express enhanced configuration window
	// (ECAM/MMCONFIG): 1 MiB per bus for buses 0..PCIECAMBusEnd. It sits
	// between the 32-bit window and the fixed devices at 0xFEB00000 and
	// up, and is reserved in the e820 map and by an ACPI PNP0C02 device.
	//
	// The machine has bus 0 only, and the MCFG says so: an x86 Linux
	// takes the MCFG's last bus as the last one to probe for peer host
	// bridges through the configuration ports, 32 slots a bus, so
	// announcing buses 0-255 cost 8160 probes (16320 port exits, about
	// 1.5 s of boot on nested KVM) to find nothing. Bridges that need
	// more buses raise it.
	PCIECAMBase   = 0xE0000000
	PCIECAMBusEnd = 0x00
	PCIECAMSize   = (PCIECAMBusEnd + 1) << 20
	// PCIMMIO64Size is the size of the 64-bit memory window, placed at
	// the first 1 GiB boundary above guest RAM (and above 4 GiB).
	PCIMMIO64Size  = 32 << 30
	PCIMMIO64Align = 1 << 30
)

// Ports.
const (
	PortPIC1       = 0x20
	PortPIT        = 0x40
	PortI8042Data  = 0x60
	PortSpeaker    = 0x61
	PortI8042Cmd   = 0x64
	PortCMOS       = 0x70
	PortPOST       = 0x80
	PortPIC2       = 0xA0
	PortDebugExit  = 0xF4
	PortCOM1       = 0x3F8
	PortELCR       = 0x4D0
	PortPCIConfig  = 0xCF8
	PortACPIPM     = 0x600 // PM1a event (4), PM1a control (2) at +4, PM timer at +8
	PortACPIPMSize = 0x10
	PortACPIReset  = 0xCF9
	// PortGPE0 is the ACPI GPE0 block (status, then enable: 2 bytes
	// each), PortPCIHotplug the PCI hotplug controller (package pcihp).
	PortGPE0       = 0x610
	PortPCIHotplug = 0x620
	// PortPCIIOWindow..PortPCIIOEnd is where the VMM places the I/O BARs
	// of the devices it creates (the guest may move them anywhere in the
	// bridge's I/O windows), as SeaBIOS does.
	PortPCIIOWindow = 0xC000
	PortPCIIOEnd    = 0x10000
)

// PCI interrupts: INTA-INTD of every slot reach the IOAPIC on GSIs
// PCIGSIBase..PCIGSIBase+PCINumGSIs-1, level-triggered and active-low, as
// the DSDT's _PRT says (see PCIGSI).
const (
	PCIGSIBase = 16
	PCINumGSIs = 8
)

// PCIGSI is the GSI of interrupt pin (0 = INTA .. 3 = INTD) of a device in
// slot on bus 0: the slots rotate over the eight PCI GSIs, so that
// neighbouring devices using INTA do not share a line.
func PCIGSI(slot, pin int) int { return PCIGSIBase + (slot+pin)%PCINumGSIs }

// The PCI windows must not overlap each other or the fixed devices: these
// conversions of negative constants would not compile.
const (
	_ = uint64(TestDeviceBase - (PCIECAMBase + PCIECAMSize))
	_ = uint64(PCIECAMBase - PCIMMIO32End)
)

// GSIs of the legacy devices (ISA IRQs; IRQ0 is routed to GSI 2 through an
// interrupt source override, as on every PC).
const (
	IRQPIT    = 0
	GSIPIT    = 2
	IRQCOM1   = 4
	IRQRTC    = 8
	IRQSCI    = 9
	NumIOAPIC = 24
)
