package boot

import "govmm/memory"

// loadELF64 loads the PT_LOAD segments of an x86-64 ELF file at their
// physical addresses and enters it in 64-bit long mode at the entry point
// (translated to its physical address through the segment holding it; the
// boot page tables identity map the first 4 GiB).
//
// ELF64 guests get the same boot information as Multiboot guests: RAX (and
// RDI) = 0x2BADB002, RBX (and RSI) = the Multiboot information at
// platform.MultibootInfo with memory sizes, command line (the command line
// alone: only Multiboot kernels get their name as its first word), the
// initrd as module 0 and the memory map. The RDI/RSI copies let a C entry
// point declared as f(uint32_t magic, struct multiboot_info *mbi) take
// them as its arguments.
func loadELF64(mem *memory.Memory, image []byte, opts Options) (*Entry, error) {
	f, err := parseELF(image)
	if err != nil {
		return nil, err
	}
	entry, err := f.physEntry()
	if err != nil {
		return nil, err
	}
	segs := f.loadSegments(image)
	if _, err := placeSegments(mem, segs, kernelFloor); err != nil {
		return nil, err
	}
	l, err := writeBootInfo(mem, segs, []span{pageTables}, opts.withGuestInfo(), opts.Initrd)
	if err != nil {
		return nil, err
	}
	e, err := longMode(mem, entry)
	if err != nil {
		return nil, err
	}
	e.Regs.RAX = MultibootMagic
	e.Regs.RDI = MultibootMagic
	e.Regs.RBX = l.info
	e.Regs.RSI = l.info
	e.Regs.RSP = l.stackTop
	return e, nil
}
