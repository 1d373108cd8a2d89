// Package mptable writes an Intel MultiProcessor Specification 1.4 table
// for guests that predate ACPI's MADT (or boot with acpi=off): a floating
// pointer and a configuration table listing the processors, the ISA bus,
// the IOAPIC and how the ISA IRQs and the local APIC LINT pins are wired,
// matching the MADT package acpi writes.
//
// Both structures go in the last KiB of base memory (platform.MPTable),
// where guests search for the floating pointer; that bounds the table to
// MaxCPUs processors.
package mptable

import (
	"encoding/binary"
	"fmt"

	"govmm/memory"
	"govmm/platform"
)

// Entry types and constants from the MP specification.
const (
	entryProcessor = 0
	entryBus       = 1
	entryIOAPIC    = 2
	entryIOIntr    = 3
	entryLocalIntr = 4

	intINT    = 0
	intNMI    = 1
	intExtINT = 3

	cpuEnabled = 1
	cpuBSP     = 2

	lapicVersion  = 0x14
	ioapicVersion = 0x20 // irq/ioapic.Version: with an EOI register
	ioapicID      = 0    // as in the MADT and the IOAPIC's ID register at reset

	// Polarity bits 0-1 (1 active high), trigger bits 2-3 (3 level).
	flagsLevelHigh = 1 | 3<<2

	areaSize = 1024 // the last KiB below 640 KiB
	fpSize   = 16
	hdrSize  = 44
)

// MaxCPUs is how many processors fit in the area.
const MaxCPUs = (areaSize - fpSize - hdrSize - 8 - 8 - 15*8 - 2*8) / 20

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// Build returns the floating pointer followed by the configuration table,
// to be placed at base.
func Build(base uint64, ncpu int) ([]byte, error) {
	if ncpu < 1 || ncpu > MaxCPUs {
		return nil, fmt.Errorf("mp table: %d CPUs (the MP table fits 1..%d in its area; use ACPI)", ncpu, MaxCPUs)
	}
	le16 := binary.LittleEndian.AppendUint16
	le32 := binary.LittleEndian.AppendUint32

	t := make([]byte, hdrSize)
	copy(t, "PCMP")
	t[6] = 4 // spec revision 1.4
	copy(t[8:16], "GOVMM   ")
	copy(t[16:28], "GOVMM PC    ")
	binary.LittleEndian.PutUint32(t[36:], platform.LAPICBase)
	count := 0
	for i := 0; i < ncpu; i++ {
		flags := byte(cpuEnabled)
		if i == 0 {
			flags |= cpuBSP
		}
		t = append(t, entryProcessor, byte(i), lapicVersion, flags)
		t = le32(t, 0x600)  // CPU signature: family 6
		t = le32(t, 1|1<<9) // features: FPU, APIC
		t = append(t, make([]byte, 8)...)
		count++
	}
	t = append(t, entryBus, 0)
	t = append(t, "ISA   "...)
	count++
	t = append(t, entryIOAPIC, ioapicID, ioapicVersion, 1)
	t = le32(t, platform.IOAPICBase)
	count++
	for irq := 0; irq < 16; irq++ {
		if irq == 2 {
			continue // the PIC cascade, no ISA device
		}
		pin, flags := irq, uint16(0)
		if irq == platform.IRQPIT {
			pin = platform.GSIPIT
		}
		if irq == platform.IRQSCI {
			flags = flagsLevelHigh
		}
		t = append(t, entryIOIntr, intINT)
		t = le16(t, flags)
		t = append(t, 0, byte(irq), ioapicID, byte(pin))
		count++
	}
	t = append(t, entryLocalIntr, intExtINT, 0, 0, 0, 0, 0xff, 0) // ExtINT -> LINT0 of all
	t = append(t, entryLocalIntr, intNMI, 0, 0, 0, 0, 0xff, 1)    // NMI -> LINT1 of all
	count += 2
	binary.LittleEndian.PutUint16(t[4:], uint16(len(t)))
	binary.LittleEndian.PutUint16(t[34:], uint16(count))
	t[7] = checksum(t)

	fp := make([]byte, fpSize)
	copy(fp, "_MP_")
	binary.LittleEndian.PutUint32(fp[4:], uint32(base+fpSize))
	fp[8] = 1 // length in 16-byte units
	fp[9] = 4 // spec revision 1.4
	// feature bytes 1-5 zero: a configuration table is present, virtual
	// wire mode (no IMCR).
	fp[10] = checksum(fp)
	out := append(fp, t...)
	if len(out) > areaSize {
		return nil, fmt.Errorf("mp table: %d bytes exceed the %d-byte area", len(out), areaSize)
	}
	return out, nil
}

// Write builds the MP table for ncpu processors (APIC IDs 0..ncpu-1, the
// first is the BSP) and writes it at platform.MPTable.
func Write(mem *memory.Memory, ncpu int) error {
	b, err := Build(platform.MPTable, ncpu)
	if err != nil {
		return err
	}
	if err := mem.Write(platform.MPTable, b); err != nil {
		return fmt.Errorf("mp table: write %d bytes at %#x: %w", len(b), platform.MPTable, err)
	}
	return nil
}
