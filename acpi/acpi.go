// Package acpi writes the ACPI tables govmm's PC presents into guest
// memory, so guests discover the machine (CPUs, IOAPIC, interrupt
// overrides, PM timer, reset and power-off) without probing.
//
// The tables are: RSDP (revision 2, in the BIOS area so the standard scan
// finds it), XSDT and RSDT, FADT (revision 6, not hardware-reduced: PM1a
// blocks and PM timer at platform.PortACPIPM, SCI on IRQ9, reset register
// 0xCF9), FACS, MADT (one local APIC per vCPU, x2APIC entries for IDs above
// 254, the IOAPIC, the IRQ0->GSI2 and SCI overrides, LINT1 NMI), MCFG (the
// PCI ECAM window) and a DSDT with the \_S5 package acpipm understands and
// the PCI host bridge \_SB.PCI0 (windows, _PRT) with the motherboard
// resource device that reserves the ECAM window, and the ACPI PCI hotplug
// slots and their GPE method when the machine has free slots (the FADT's
// GPE0 block is acpipm's). The DSDT's AML comes from
// the small encoder in aml.go. Every table is checked by `iasl -d` in the
// tests.
package acpi

import (
	"encoding/binary"
	"fmt"

	"govmm/devices/acpipm"
	"govmm/devices/pcihp"
	"govmm/memory"
	"govmm/platform"
)

// Config describes the machine the tables announce.
type Config struct {
	// NumCPUs is the number of vCPUs; vCPU i has APIC ID i.
	NumCPUs int
	// PCI describes the PCI host bridge (nil: the machine has no PCI,
	// and there is no MCFG and no \_SB.PCI0).
	PCI *PCIHost
}

// PCIHost is what the MCFG table and the DSDT's \_SB.PCI0 say about the
// PCI host bridge. End addresses are exclusive.
type PCIHost struct {
	// ECAMBase is the ECAM window for buses 0..BusEnd (1 MiB per bus).
	ECAMBase uint64
	BusEnd   uint8
	// The memory windows the bridge forwards to bus 0 (the I/O windows
	// are all ports but 0xCF8-0xCFF, which the bridge consumes).
	Mem32Base, Mem32End uint64
	Mem64Base, Mem64End uint64
	// GSI returns the IOAPIC input of interrupt pin (0 = INTA) of slot;
	// the _PRT lists it for every slot, level-triggered and active-low.
	GSI func(slot, pin int) int
	// Hotplug are the slots a device may be hot-added to (the free
	// ones): each gets a slot device \_SB.PCI0.Sxx with _ADR, _SUN and
	// _EJ0, and \_GPE._E01 notifies them from the hotplug controller's
	// registers at platform.PortPCIHotplug (package pcihp).
	Hotplug []int
}

// Identification written into every table header.
const (
	OEMID      = "GOVMM "
	OEMTableID = "GOVMMPC "
	CreatorID  = "GOVM"
	OEMRev     = 1
	CreatorRev = 1
)

// MaxCPUs bounds the MADT (x2APIC IDs fit in 32 bits, but the tables must
// fit in the BIOS area).
const MaxCPUs = 4096

// Layout of the tables in the ACPI area (offsets from platform.ACPIBase).
const (
	offRSDP = 0x000
	offFACS = 0x040 // 64-byte aligned
	offDSDT = 0x080
)

// header builds a 36-byte system description table header; the length and
// checksum are filled in by finish.
func header(sig string, rev byte) []byte {
	h := make([]byte, 36)
	copy(h[0:4], sig)
	h[8] = rev
	copy(h[10:16], OEMID)
	copy(h[16:24], OEMTableID)
	binary.LittleEndian.PutUint32(h[24:], OEMRev)
	copy(h[28:32], CreatorID)
	binary.LittleEndian.PutUint32(h[32:], CreatorRev)
	return h
}

// checksum returns the byte that makes b sum to zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// finish sets a table's length and checksum.
func finish(t []byte) []byte {
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[9] = 0
	t[9] = checksum(t)
	return t
}

func le16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }
func le32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func le64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

// Generic address structure address space IDs.
const (
	gasSystemIO = 1
)

// gas appends a Generic Address Structure.
func gas(b []byte, space, bitWidth, bitOffset, accessSize byte, addr uint64) []byte {
	b = append(b, space, bitWidth, bitOffset, accessSize)
	return le64(b, addr)
}

// dsdt is the DSDT: Name (\_S5, Package () { SLP_TYP, SLP_TYP, 0, 0 })
// for acpipm, and the PCI host bridge when there is one.
func dsdt(cfg Config) []byte {
	t := header("DSDT", 2)
	slp := uint64(acpipm.SlpTypS5)
	t = append(t, amlName("_S5", amlPackage(amlInt(slp), amlInt(slp), amlInt(0), amlInt(0)))...)
	if cfg.PCI != nil {
		t = append(t, pciAML(cfg.PCI)...)
		t = append(t, hotplugGPE(cfg.PCI.Hotplug)...)
	}
	return finish(t)
}

// PCI interrupt pins per slot.
const pciPins = 4

// pciAML is \_SB.PCI0, the PCI Express host bridge (PNP0A08, compatible
// with the conventional PNP0A03): its bus range, the I/O and memory
// windows it forwards, the ports it consumes (0xCF8-0xCFF) and the INTx
// routing of every slot to IOAPIC GSIs; and \_SB.MRES, a PNP0C02
// motherboard resource device that reserves the ECAM window, which is how
// Linux decides the MCFG's window is safe to use.
func pciAML(p *PCIHost) []byte {
	crs := amlResourceTemplate(
		rdWordBusNumber(0, uint16(p.BusEnd)),
		rdIO(platform.PortPCIConfig, platform.PortPCIConfig, 1, 8),
		rdWordIO(0x0000, platform.PortPCIConfig-1),
		rdWordIO(platform.PortPCIConfig+8, 0xFFFF),
		rdDWordMemory(uint32(p.Mem32Base), uint32(p.Mem32End-1), false),
		rdQWordMemory(p.Mem64Base, p.Mem64End-1, true),
	)
	var prt [][]byte
	for slot := 0; slot < 32; slot++ {
		for pin := 0; pin < pciPins; pin++ {
			// Address (slot, any function), pin, source (none: a
			// GSI, level-triggered, active-low), GSI.
			prt = append(prt, amlPackage(amlInt(uint64(slot)<<16|0xFFFF), amlInt(uint64(pin)), amlInt(0), amlInt(uint64(p.GSI(slot, pin)))))
		}
	}
	ecamSize := (uint64(p.BusEnd) + 1) << 20
	return amlScope("\\_SB",
		amlDevice("PCI0",
			amlName("_HID", amlEISAID("PNP0A08")),
			amlName("_CID", amlEISAID("PNP0A03")),
			amlName("_SEG", amlInt(0)),
			amlName("_BBN", amlInt(0)),
			amlName("_UID", amlInt(0)),
			amlName("_CRS", crs),
			amlName("_PRT", amlPackage(prt...)),
			hotplugSlots(p.Hotplug),
		),
		amlDevice("MRES",
			amlName("_HID", amlEISAID("PNP0C02")),
			amlName("_UID", amlInt(1)),
			amlName("_CRS", amlResourceTemplate(rdMemory32Fixed(uint32(p.ECAMBase), uint32(ecamSize)))),
		),
	)
}

// slotName is the slot device of PCI slot s: S01..S1F.
func slotName(s int) string { return fmt.Sprintf("S%02X", s) }

// hotplugSlots are the PCI hotplug objects of \_SB.PCI0 (nothing without
// hotplug slots): the controller's registers as fields PCIU, PCID and
// B0EJ, and one slot device per slot whose _EJ0 writes the slot's bit to
// B0EJ. Linux's acpiphp finds the slots by their _ADR and exposes them
// as /sys/bus/pci/slots/<_SUN> because they have _EJ0.
func hotplugSlots(slots []int) []byte {
	if len(slots) == 0 {
		return nil
	}
	b := amlOpRegion("PCST", amlSystemIO, platform.PortPCIHotplug, pcihp.Size)
	b = append(b, amlField("PCST", amlFieldDWordAcc|amlFieldWriteAsZeros,
		amlFieldUnit{"PCIU", 32}, amlFieldUnit{"PCID", 32}, amlFieldUnit{"B0EJ", 32})...)
	for _, s := range slots {
		b = append(b, amlDevice(slotName(s),
			amlName("_ADR", amlInt(uint64(s)<<16)),
			amlName("_SUN", amlInt(uint64(s))),
			amlMethod("_EJ0", 1, amlStore(amlInt(1<<s), amlPath("B0EJ"))),
		)...)
	}
	return b
}

// hotplugGPE is \_GPE._E01, the hotplug controller's event (pcihp.GPE):
// it reads the slots plugged since it last looked (PCIU, which the read
// clears) and sends each a bus check (Notify 1), upon which acpiphp scans
// the slot and assigns the new function's BARs from the bridge's windows.
func hotplugGPE(slots []int) []byte {
	if len(slots) == 0 {
		return nil
	}
	body := [][]byte{amlStore(amlPath("\\_SB.PCI0.PCIU"), amlLocal(0))}
	for _, s := range slots {
		body = append(body, amlIf(amlAnd(amlLocal(0), amlInt(1<<s)), amlNotify("\\_SB.PCI0."+slotName(s), 1)))
	}
	return amlScope("\\_GPE", amlMethod(fmt.Sprintf("_E%02X", pcihp.GPE), 0, body...))
}

// mcfg is the PCI Express memory-mapped configuration table: one ECAM
// window, segment 0, buses 0..BusEnd.
func mcfg(p *PCIHost) []byte {
	t := header("MCFG", 1)
	t = le64(t, 0) // reserved
	t = le64(t, p.ECAMBase)
	t = le16(t, 0) // PCI segment group
	t = append(t, 0, p.BusEnd)
	t = le32(t, 0) // reserved
	return finish(t)
}

func facs() []byte {
	t := make([]byte, 64)
	copy(t, "FACS")
	binary.LittleEndian.PutUint32(t[4:], 64)
	t[32] = 2 // version
	return t
}

// FADT flags.
const (
	fadtWBINVD      = 1 << 0
	fadtProcC1      = 1 << 2
	fadtSlpButton   = 1 << 5 // no fixed-feature sleep button
	fadtResetRegSup = 1 << 10
	fadtHWReduced   = 1 << 20
	bootLegacyDevs  = 1 << 0
	boot8042        = 1 << 1
)

// fadt builds the FADT. Its IAPC_BOOT_ARCH does not announce an 8042:
// govmm's i8042 is only the reset line and a controller with nothing
// behind it, and a Linux told an 8042 is there (with no PNP0303 device to
// describe it) probes its ports directly, about 20,000 status reads, each
// an exit, while its AUX loopback and interface tests time out: seconds of
// boot on nested KVM. Told there is none, Linux says "PNP: No PS/2
// controller found" and goes on. Command 0xFE to port 0x64 still resets
// the machine.
func fadt(facsAddr, dsdtAddr uint64) []byte {
	pm := uint32(platform.PortACPIPM)
	t := header("FACP", 6)
	t = le32(t, uint32(facsAddr))                                           // 36 FIRMWARE_CTRL
	t = le32(t, uint32(dsdtAddr))                                           // 40 DSDT
	t = append(t, 0, 0)                                                     // 44 reserved, 45 preferred PM profile (unspecified)
	t = le16(t, platform.IRQSCI)                                            // 46 SCI_INT
	t = le32(t, 0)                                                          // 48 SMI_CMD: none, always in ACPI mode
	t = append(t, 0, 0, 0, 0)                                               // 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
	t = le32(t, pm+acpipm.OffPM1Sts)                                        // 56 PM1a_EVT_BLK
	t = le32(t, 0)                                                          // 60 PM1b_EVT_BLK
	t = le32(t, pm+acpipm.OffPM1Cnt)                                        // 64 PM1a_CNT_BLK
	t = le32(t, 0)                                                          // 68 PM1b_CNT_BLK
	t = le32(t, 0)                                                          // 72 PM2_CNT_BLK
	t = le32(t, pm+acpipm.OffPMTmr)                                         // 76 PM_TMR_BLK
	t = le32(t, platform.PortGPE0)                                          // 80 GPE0_BLK
	t = le32(t, 0)                                                          // 84 GPE1_BLK
	t = append(t, 4, 2, 0, 4, acpipm.GPE0BlockLen, 0, 0, 0)                 // 88 PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0/1 len, GPE1_BASE, CST_CNT
	t = le16(t, 101)                                                        // 96 P_LVL2_LAT: C2 not supported
	t = le16(t, 1001)                                                       // 98 P_LVL3_LAT: C3 not supported
	t = le16(t, 0)                                                          // 100 FLUSH_SIZE
	t = le16(t, 0)                                                          // 102 FLUSH_STRIDE
	t = append(t, 0, 0, 0, 0, 0)                                            // 104 DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, CENTURY
	t = le16(t, bootLegacyDevs)                                             // 109 IAPC_BOOT_ARCH: no 8042 (see fadt)
	t = append(t, 0)                                                        // 111 reserved
	t = le32(t, fadtWBINVD|fadtProcC1|fadtSlpButton|fadtResetRegSup)        // 112 Flags
	t = gas(t, gasSystemIO, 8, 0, 1, platform.PortACPIReset)                // 116 RESET_REG
	t = append(t, acpipm.ResetValue)                                        // 128 RESET_VALUE
	t = le16(t, 0)                                                          // 129 ARM_BOOT_ARCH
	t = append(t, 0)                                                        // 131 FADT minor version
	t = le64(t, facsAddr)                                                   // 132 X_FIRMWARE_CTRL
	t = le64(t, dsdtAddr)                                                   // 140 X_DSDT
	t = gas(t, gasSystemIO, 32, 0, 2, uint64(pm+acpipm.OffPM1Sts))          // 148 X_PM1a_EVT_BLK
	t = gas(t, 0, 0, 0, 0, 0)                                               // 160 X_PM1b_EVT_BLK
	t = gas(t, gasSystemIO, 16, 0, 2, uint64(pm+acpipm.OffPM1Cnt))          // 172 X_PM1a_CNT_BLK
	t = gas(t, 0, 0, 0, 0, 0)                                               // 184 X_PM1b_CNT_BLK
	t = gas(t, 0, 0, 0, 0, 0)                                               // 196 X_PM2_CNT_BLK
	t = gas(t, gasSystemIO, 32, 0, 3, uint64(pm+acpipm.OffPMTmr))           // 208 X_PM_TMR_BLK
	t = gas(t, gasSystemIO, 8*acpipm.GPE0BlockLen, 0, 1, platform.PortGPE0) // 220 X_GPE0_BLK
	t = gas(t, 0, 0, 0, 0, 0)                                               // 232 X_GPE1_BLK
	t = gas(t, 0, 0, 0, 0, 0)                                               // 244 SLEEP_CONTROL_REG
	t = gas(t, 0, 0, 0, 0, 0)                                               // 256 SLEEP_STATUS_REG
	t = le64(t, 0)                                                          // 268 hypervisor vendor identity
	return finish(t)
}

// MADT entry types.
const (
	madtLAPIC      = 0
	madtIOAPIC     = 1
	madtOverride   = 2
	madtLAPICNMI   = 4
	madtX2APIC     = 9
	madtX2APICNMI  = 10
	madtPCATCompat = 1
	// MPS INTI flags: polarity bits 0-1 (1 active high, 3 active low),
	// trigger bits 2-3 (1 edge, 3 level).
	intiActiveHigh = 1
	intiLevel      = 3 << 2
	intiEdge       = 1 << 2
)

func madt(ncpu int) []byte {
	t := header("APIC", 3)
	t = le32(t, platform.LAPICBase)
	t = le32(t, madtPCATCompat)
	for i := 0; i < ncpu; i++ {
		if i < 255 {
			t = append(t, madtLAPIC, 8, byte(i), byte(i))
			t = le32(t, 1) // enabled
		} else {
			t = append(t, madtX2APIC, 16, 0, 0)
			t = le32(t, uint32(i)) // x2APIC ID
			t = le32(t, 1)         // enabled
			t = le32(t, uint32(i)) // ACPI processor UID
		}
	}
	t = append(t, madtIOAPIC, 12, 0, 0)
	t = le32(t, platform.IOAPICBase)
	t = le32(t, 0) // GSI base
	t = append(t, madtOverride, 10, 0, platform.IRQPIT)
	t = le32(t, platform.GSIPIT)
	t = le16(t, 0) // conforms to the bus (ISA: edge, active high)
	t = append(t, madtOverride, 10, 0, platform.IRQSCI)
	t = le32(t, platform.IRQSCI)
	t = le16(t, intiActiveHigh|intiLevel)
	t = append(t, madtLAPICNMI, 6, 0xff) // all processors
	t = le16(t, intiActiveHigh|intiEdge)
	t = append(t, 1) // LINT1
	if ncpu > 255 {
		t = append(t, madtX2APICNMI, 12)
		t = le16(t, intiActiveHigh|intiEdge)
		t = le32(t, 0xffffffff) // all processors
		t = append(t, 1, 0, 0, 0)
	}
	return finish(t)
}

func xsdt(entries []uint64) []byte {
	t := header("XSDT", 1)
	for _, e := range entries {
		t = le64(t, e)
	}
	return finish(t)
}

func rsdt(entries []uint64) []byte {
	t := header("RSDT", 1)
	for _, e := range entries {
		t = le32(t, uint32(e))
	}
	return finish(t)
}

func rsdp(rsdtAddr, xsdtAddr uint64) []byte {
	t := make([]byte, 36)
	copy(t, "RSD PTR ")
	copy(t[9:15], OEMID)
	t[15] = 2
	binary.LittleEndian.PutUint32(t[16:], uint32(rsdtAddr))
	binary.LittleEndian.PutUint32(t[20:], 36)
	binary.LittleEndian.PutUint64(t[24:], xsdtAddr)
	t[8] = checksum(t[:20])
	t[32] = checksum(t)
	return t
}

func align(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }

// Build writes the tables into mem's ACPI area and returns the RSDP's
// guest physical address (for boot protocols that pass it, e.g. the PVH
// start info or the Linux zero page).
func Build(mem *memory.Memory, cfg Config) (rsdpAddr uint64, err error) {
	if cfg.NumCPUs < 1 || cfg.NumCPUs > MaxCPUs {
		return 0, fmt.Errorf("acpi tables: %d CPUs (must be 1..%d)", cfg.NumCPUs, MaxCPUs)
	}
	if p := cfg.PCI; p != nil {
		if p.ECAMBase%(1<<20) != 0 || p.ECAMBase+(uint64(p.BusEnd)+1)<<20 > 1<<32 ||
			p.Mem32Base >= p.Mem32End || p.Mem32End > 1<<32 || p.Mem64Base >= p.Mem64End || p.GSI == nil {
			return 0, fmt.Errorf("acpi tables: bad PCI host description %+v", *p)
		}
	}
	base := uint64(platform.ACPIBase)
	if !mem.IsRAM(base, platform.ACPIEnd-base) {
		return 0, fmt.Errorf("acpi tables: the ACPI area %#x-%#x is not guest RAM", base, platform.ACPIEnd)
	}
	var blob []byte
	put := func(at uint64, t []byte) uint64 {
		need := int(at - base + uint64(len(t)))
		if len(blob) < need {
			blob = append(blob, make([]byte, need-len(blob))...)
		}
		copy(blob[at-base:], t)
		return at
	}
	facsAddr := put(base+offFACS, facs())
	dsdtAddr := put(base+offDSDT, dsdt(cfg))
	next := func() uint64 { return align(base+uint64(len(blob)), 16) }
	fadtAddr := put(next(), fadt(facsAddr, dsdtAddr))
	madtAddr := put(next(), madt(cfg.NumCPUs))
	entries := []uint64{fadtAddr, madtAddr}
	if cfg.PCI != nil {
		entries = append(entries, put(next(), mcfg(cfg.PCI)))
	}
	xsdtAddr := put(next(), xsdt(entries))
	rsdtAddr := put(next(), rsdt(entries))
	rsdpAddr = put(base+offRSDP, rsdp(rsdtAddr, xsdtAddr))
	if base+uint64(len(blob)) > platform.ACPIEnd {
		return 0, fmt.Errorf("acpi tables: %d bytes do not fit in the ACPI area (%d bytes)", len(blob), platform.ACPIEnd-base)
	}
	if err := mem.Write(base, blob); err != nil {
		return 0, fmt.Errorf("acpi tables: write %d bytes at %#x: %w", len(blob), base, err)
	}
	return rsdpAddr, nil
}
