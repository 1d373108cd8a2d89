package boot

import (
	"encoding/binary"
	"fmt"

	"govmm/accel"
	"govmm/memory"
	"govmm/platform"
)

// Control register and EFER bits the entry states use.
const (
	cr0PE = 1 << 0
	cr0ET = 1 << 4
	cr0NE = 1 << 5
	cr0PG = 1 << 31

	cr4PAE = 1 << 5

	eferLME = 1 << 8
	eferLMA = 1 << 10

	rflagsReserved = 1 << 1 // bit 1 always reads as 1

	// apicBaseDefault is IA32_APIC_BASE of the boot CPU: xAPIC enabled
	// (bit 11) at platform.LAPICBase, BSP (bit 8).
	apicBaseDefault = platform.LAPICBase | 1<<11 | 1<<8
)

// Segment selectors of the boot GDTs.
const (
	// 64-bit entry (ELF64, bzImage): Linux's __BOOT_CS and __BOOT_DS.
	sel64Code32 = 0x08
	sel64Code   = 0x10
	sel64Data   = 0x18
	// 32-bit entry (Multiboot, PVH).
	sel32Code = 0x08
	sel32Data = 0x10
)

// GDT descriptors (4 GiB flat, granularity 4 KiB, accessed bit set so the
// cached attributes match the table).
const (
	descCode32 = 0x00cf9b000000ffff // base 0, limit 4G, 32-bit, execute/read
	descCode64 = 0x00af9b000000ffff // base 0, long mode code, execute/read
	descData   = 0x00cf93000000ffff // base 0, limit 4G, 32-bit, read/write
)

// Page-table entry bits.
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePS      = 1 << 7
)

func flatCode(sel uint16, long bool) accel.Segment {
	return accel.Segment{
		Base: 0, Limit: 0xFFFFFFFF, Selector: sel, Type: 0xB,
		Present: true, S: true, G: true, L: long, DB: !long,
	}
}

func flatData(sel uint16) accel.Segment {
	return accel.Segment{
		Base: 0, Limit: 0xFFFFFFFF, Selector: sel, Type: 0x3,
		Present: true, S: true, G: true, DB: true,
	}
}

// systemSegments are TR and LDTR as the vCPU would have them after reset:
// a busy 32-bit TSS at 0 (PVH asks for limit 0x67) and an empty LDT.
func systemSegments(s *accel.Sregs) {
	s.TR = accel.Segment{Limit: 0x67, Type: 0xB, Present: true}
	s.LDT = accel.Segment{Limit: 0xFFFF, Type: 0x2, Present: true}
}

func writeGDT(mem *memory.Memory, descs ...uint64) error {
	buf := make([]byte, 8*len(descs))
	for i, d := range descs {
		binary.LittleEndian.PutUint64(buf[8*i:], d)
	}
	if err := mem.Write(platform.BootGDT, buf); err != nil {
		return fmt.Errorf("write boot GDT at %#x: %w", platform.BootGDT, err)
	}
	// The IDT register points at an empty table; clear its first entry.
	if err := mem.Write(platform.BootIDT, make([]byte, 16)); err != nil {
		return fmt.Errorf("write boot IDT at %#x: %w", platform.BootIDT, err)
	}
	return nil
}

// writePageTables identity maps the first 4 GiB with 2 MiB pages: one PML4
// entry, four PDPT entries, four page directories.
func writePageTables(mem *memory.Memory) error {
	le := binary.LittleEndian
	pml4, err := mem.Slice(platform.PML4Addr, memory.PageSize)
	if err != nil {
		return fmt.Errorf("boot page tables (PML4 at %#x): %w", platform.PML4Addr, err)
	}
	pdpt, err := mem.Slice(platform.PDPTAddr, memory.PageSize)
	if err != nil {
		return fmt.Errorf("boot page tables (PDPT at %#x): %w", platform.PDPTAddr, err)
	}
	pds, err := mem.Slice(platform.PDAddr, 4*memory.PageSize)
	if err != nil {
		return fmt.Errorf("boot page tables (PDs at %#x): %w", platform.PDAddr, err)
	}
	clear(pml4)
	clear(pdpt)
	le.PutUint64(pml4, platform.PDPTAddr|ptePresent|pteWrite)
	for i := uint64(0); i < 4; i++ {
		le.PutUint64(pdpt[8*i:], (platform.PDAddr+i*memory.PageSize)|ptePresent|pteWrite)
	}
	for i := uint64(0); i < 4*512; i++ {
		le.PutUint64(pds[8*i:], i<<21|ptePresent|pteWrite|ptePS)
	}
	return nil
}

// longMode writes the page tables and the 64-bit GDT and returns the
// 64-bit entry state at rip with interrupts off.
func longMode(mem *memory.Memory, rip uint64) (*Entry, error) {
	if rip >= 1<<32 {
		return nil, fmt.Errorf("entry point %#x is above 4 GiB, beyond the identity-mapped boot page tables", rip)
	}
	if err := writePageTables(mem); err != nil {
		return nil, err
	}
	if err := writeGDT(mem, 0, descCode32, descCode64, descData); err != nil {
		return nil, err
	}
	e := flatEntry(rip, flatCode(sel64Code, true), flatData(sel64Data), 4)
	s := &e.Sregs
	s.CR0 = cr0PE | cr0ET | cr0NE | cr0PG
	s.CR3 = platform.PML4Addr
	s.CR4 = cr4PAE
	s.EFER = eferLME | eferLMA
	return e, nil
}

// flatEntry is the entry state both protected-mode entries share: flat
// code and data segments, the boot GDT (with gdtEntries descriptors) and an
// empty IDT, the boot stack, interrupts off, the BSP's LAPIC enabled.
func flatEntry(ip uint64, code, data accel.Segment, gdtEntries int) *Entry {
	e := &Entry{}
	e.Regs.RIP = ip
	e.Regs.RSP = platform.BootStackTop
	e.Regs.RFLAGS = rflagsReserved
	s := &e.Sregs
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	systemSegments(s)
	s.GDT = accel.DTable{Base: platform.BootGDT, Limit: uint16(gdtEntries*8 - 1)}
	s.IDT = accel.DTable{Base: platform.BootIDT, Limit: 0}
	s.APICBase = apicBaseDefault
	return e
}

// protected32 writes the 32-bit GDT and returns a flat 32-bit protected
// mode entry state at eip, paging off, interrupts off.
func protected32(mem *memory.Memory, eip uint64) (*Entry, error) {
	if eip >= 1<<32 {
		return nil, fmt.Errorf("entry point %#x is above 4 GiB, unreachable in 32-bit mode", eip)
	}
	if err := writeGDT(mem, 0, descCode32, descData); err != nil {
		return nil, err
	}
	e := flatEntry(eip, flatCode(sel32Code, false), flatData(sel32Data), 3)
	e.Sregs.CR0 = cr0PE | cr0ET
	return e, nil
}

// realMode returns a real-mode entry state with CS:IP = cs:ip and the data
// and stack segments at 0.
func realMode(cs, ip, sp uint16) *Entry {
	e := &Entry{}
	e.Regs.RIP = uint64(ip)
	e.Regs.RSP = uint64(sp)
	e.Regs.RFLAGS = rflagsReserved
	s := &e.Sregs
	s.CS = accel.Segment{Base: uint64(cs) << 4, Limit: 0xFFFF, Selector: cs, Type: 0xB, Present: true, S: true}
	d := accel.Segment{Limit: 0xFFFF, Type: 0x3, Present: true, S: true}
	s.DS, s.ES, s.FS, s.GS, s.SS = d, d, d, d, d
	systemSegments(s)
	s.TR.Limit = 0xFFFF
	s.GDT = accel.DTable{Limit: 0xFFFF}
	s.IDT = accel.DTable{Limit: 0x3FF} // the real-mode IVT at 0
	s.CR0 = cr0ET
	s.APICBase = apicBaseDefault
	return e
}
