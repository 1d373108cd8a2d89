package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"govmm/memory"
	"govmm/platform"
)

// The PVH boot ABI (Xen's arch/x86 hvm_start_info, version 1), used by
// Linux's vmlinux through its XEN_ELFNOTE_PHYS32_ENTRY note.
const (
	PVHMagic       = 0x336ec578
	pvhVersion     = 1
	pvhModlistOff  = 0x40 // one hvm_modlist_entry (32 bytes)
	pvhMemmapOff   = 0x80 // hvm_memmap_table_entry[] (24 bytes each)
	pvhMemmapMax   = (memory.PageSize - pvhMemmapOff) / 24
	pvhStartInfoSz = 56
)

// loadPVH loads an ELF kernel with a PVH entry note at its physical
// addresses, writes hvm_start_info (command line, initrd as module 0,
// RSDP, memory map) at platform.PVHStartInfo and enters at the PVH entry
// in 32-bit protected mode with paging off and EBX = the start info
// (CR0 = PE|ET: ET is read-only, every writeable bit but PE is clear; CR4
// and EFER are 0; TR is a 32-bit TSS at 0 with limit 0x67).
func loadPVH(mem *memory.Memory, image []byte, opts Options) (*Entry, error) {
	le := binary.LittleEndian
	f, err := parseELF(image)
	if err != nil {
		return nil, err
	}
	entry, ok, err := f.pvhEntry(image)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("no PVH entry note (owner \"Xen\", type 18 XEN_ELFNOTE_PHYS32_ENTRY)")
	}
	segs := f.loadSegments(image)
	end, err := placeSegments(mem, segs, kernelFloor)
	if err != nil {
		return nil, err
	}
	inside := false
	for _, s := range segs {
		if entry >= s.gpa && entry < s.end() {
			inside = true
		}
	}
	if !inside {
		return nil, fmt.Errorf("PVH entry point %#x is not inside any loaded segment", entry)
	}
	cmdline, err := writeCmdline(mem, opts.Cmdline, platform.CmdlineMax-1)
	if err != nil {
		return nil, err
	}
	e820 := mem.E820()
	if len(e820) > pvhMemmapMax {
		return nil, fmt.Errorf("memory map has %d entries, the start info page has room for %d", len(e820), pvhMemmapMax)
	}
	base := uint64(platform.PVHStartInfo)
	page := make([]byte, memory.PageSize)
	le.PutUint32(page[0:], PVHMagic)
	le.PutUint32(page[4:], pvhVersion)
	if n := uint64(len(opts.Initrd)); n > 0 {
		top := lowTop(mem)
		addr, err := placeHigh(n, end, top)
		if err != nil {
			return nil, fmt.Errorf("initrd: %w (above the kernel's end %#x, below the top of low RAM %#x)", err, end, top)
		}
		if err := mem.Write(addr, opts.Initrd); err != nil {
			return nil, fmt.Errorf("copy initrd to %#x: %w", addr, err)
		}
		le.PutUint32(page[12:], 1) // nr_modules
		le.PutUint64(page[16:], base+pvhModlistOff)
		m := page[pvhModlistOff:]
		le.PutUint64(m[0:], addr)
		le.PutUint64(m[8:], n)
	}
	le.PutUint64(page[24:], cmdline)
	le.PutUint64(page[32:], opts.RSDP)
	le.PutUint64(page[40:], base+pvhMemmapOff)
	le.PutUint32(page[48:], uint32(len(e820)))
	for i, r := range e820 {
		p := page[pvhMemmapOff+24*i:]
		le.PutUint64(p, r.Addr)
		le.PutUint64(p[8:], r.Size)
		le.PutUint32(p[16:], r.Type)
	}
	if err := mem.Write(base, page); err != nil {
		return nil, fmt.Errorf("write hvm_start_info at %#x: %w", base, err)
	}
	e, err := protected32(mem, entry)
	if err != nil {
		return nil, err
	}
	e.Regs.RBX = base
	return e, nil
}
