package boot

import (
	"encoding/binary"
	"fmt"
	"sort"

	"govmm/memory"
	"govmm/platform"
)

// A minimal ELF reader: headers, program headers and notes, all bounds
// checked against the file. debug/elf is not used because the loaders need
// only this much and want errors that say what a kernel author can fix.

const (
	elfMagic = "\x7fELF"

	ptLoad = 1
	ptNote = 4

	emI386  = 3
	emX8664 = 62

	etExec = 2
	etDyn  = 3

	xenNotePhys32Entry = 18
)

type elfFile struct {
	class int // 32 or 64
	entry uint64
	progs []elfProg
}

type elfProg struct {
	idx                              int
	typ                              uint32
	off, vaddr, paddr, filesz, memsz uint64
	align                            uint64
}

// looksLikeELF reports a file that was probably meant to be ELF but whose
// magic is damaged, so that it is not mistaken for a raw binary.
func looksLikeELF(b []byte) bool {
	if len(b) < 4 {
		return false
	}
	return string(b[1:4]) == "ELF" || string(b[0:3]) == "\x7fEL"
}

func parseELF(b []byte) (*elfFile, error) {
	le := binary.LittleEndian
	if len(b) < 16 || string(b[:4]) != elfMagic {
		return nil, fmt.Errorf("ELF file truncated: %d bytes, the identification alone needs 16", len(b))
	}
	f := &elfFile{}
	switch b[4] {
	case 1:
		f.class = 32
	case 2:
		f.class = 64
	default:
		return nil, fmt.Errorf("bad ELF class %d (want 1 for ELF32 or 2 for ELF64)", b[4])
	}
	if b[5] != 1 {
		return nil, fmt.Errorf("ELF data encoding %d is not little-endian (1)", b[5])
	}
	if b[6] != 1 {
		return nil, fmt.Errorf("bad ELF identification version %d (want 1)", b[6])
	}
	hdrSize, phentWant := 52, 32
	if f.class == 64 {
		hdrSize, phentWant = 64, 56
	}
	if len(b) < hdrSize {
		return nil, fmt.Errorf("ELF%d file truncated: %d bytes, the file header needs %d", f.class, len(b), hdrSize)
	}
	typ := le.Uint16(b[16:])
	machine := le.Uint16(b[18:])
	if typ != etExec && typ != etDyn {
		return nil, fmt.Errorf("ELF type %d is not an executable (ET_EXEC 2 or ET_DYN 3)", typ)
	}
	var phoff uint64
	var phentsize, phnum int
	if f.class == 64 {
		if machine != emX8664 {
			return nil, fmt.Errorf("ELF64 machine %d is not x86-64 (%d)", machine, emX8664)
		}
		f.entry = le.Uint64(b[24:])
		phoff = le.Uint64(b[32:])
		phentsize = int(le.Uint16(b[54:]))
		phnum = int(le.Uint16(b[56:]))
	} else {
		if machine != emI386 {
			return nil, fmt.Errorf("ELF32 machine %d is not i386 (%d)", machine, emI386)
		}
		f.entry = uint64(le.Uint32(b[24:]))
		phoff = uint64(le.Uint32(b[28:]))
		phentsize = int(le.Uint16(b[42:]))
		phnum = int(le.Uint16(b[44:]))
	}
	if phnum == 0 {
		return nil, fmt.Errorf("ELF%d file has no program headers", f.class)
	}
	if phnum == 0xFFFF {
		return nil, fmt.Errorf("ELF%d file uses extended program header numbering (e_phnum 0xffff), not supported", f.class)
	}
	if phentsize != phentWant {
		return nil, fmt.Errorf("ELF%d program header size %d, want %d", f.class, phentsize, phentWant)
	}
	tableLen := uint64(phnum) * uint64(phentsize)
	if phoff > uint64(len(b)) || tableLen > uint64(len(b))-phoff {
		return nil, fmt.Errorf("ELF%d file truncated: %d program headers at offset %#x need %d bytes, the file has %d", f.class, phnum, phoff, phoff+tableLen, len(b))
	}
	for i := 0; i < phnum; i++ {
		p := b[phoff+uint64(i*phentsize):]
		var ph elfProg
		ph.idx = i
		ph.typ = le.Uint32(p)
		if f.class == 64 {
			ph.off = le.Uint64(p[8:])
			ph.vaddr = le.Uint64(p[16:])
			ph.paddr = le.Uint64(p[24:])
			ph.filesz = le.Uint64(p[32:])
			ph.memsz = le.Uint64(p[40:])
			ph.align = le.Uint64(p[48:])
		} else {
			ph.off = uint64(le.Uint32(p[4:]))
			ph.vaddr = uint64(le.Uint32(p[8:]))
			ph.paddr = uint64(le.Uint32(p[12:]))
			ph.filesz = uint64(le.Uint32(p[16:]))
			ph.memsz = uint64(le.Uint32(p[20:]))
			ph.align = uint64(le.Uint32(p[28:]))
		}
		if ph.typ == ptLoad || ph.typ == ptNote {
			if ph.off > uint64(len(b)) || ph.filesz > uint64(len(b))-ph.off {
				return nil, fmt.Errorf("ELF%d file truncated: segment %d needs file bytes [%#x, %#x), the file has %d bytes", f.class, i, ph.off, ph.off+ph.filesz, len(b))
			}
		}
		if ph.typ == ptLoad && ph.filesz > ph.memsz {
			return nil, fmt.Errorf("ELF%d segment %d: file size %#x exceeds memory size %#x", f.class, i, ph.filesz, ph.memsz)
		}
		f.progs = append(f.progs, ph)
	}
	return f, nil
}

// pvhEntry looks for the Xen PHYS32_ENTRY note in the PT_NOTE segments.
func (f *elfFile) pvhEntry(b []byte) (uint64, bool, error) {
	le := binary.LittleEndian
	for _, ph := range f.progs {
		if ph.typ != ptNote {
			continue
		}
		align := uint64(4)
		if ph.align == 8 {
			align = 8
		}
		notes := b[ph.off : ph.off+ph.filesz]
		for len(notes) > 0 {
			if len(notes) < 12 {
				return 0, false, fmt.Errorf("ELF note segment %d: truncated note header (%d bytes left)", ph.idx, len(notes))
			}
			namesz := uint64(le.Uint32(notes))
			descsz := uint64(le.Uint32(notes[4:]))
			typ := le.Uint32(notes[8:])
			nameEnd := 12 + alignUp(namesz, align)
			if alignUp(namesz, align) < namesz || nameEnd > uint64(len(notes)) {
				return 0, false, fmt.Errorf("ELF note segment %d: note name of %d bytes runs past the segment", ph.idx, namesz)
			}
			descEnd := nameEnd + alignUp(descsz, align)
			if alignUp(descsz, align) < descsz || descEnd < nameEnd || descEnd > uint64(len(notes)) {
				// The last note's descriptor may lack its padding.
				if descsz <= uint64(len(notes))-nameEnd {
					descEnd = uint64(len(notes))
				} else {
					return 0, false, fmt.Errorf("ELF note segment %d: note descriptor of %d bytes runs past the segment", ph.idx, descsz)
				}
			}
			name := notes[12 : 12+namesz]
			desc := notes[nameEnd : nameEnd+descsz]
			if typ == xenNotePhys32Entry && string(name) == "Xen\x00" {
				var entry uint64
				switch descsz {
				case 4:
					entry = uint64(le.Uint32(desc))
				case 8:
					entry = le.Uint64(desc)
				default:
					return 0, false, fmt.Errorf("PVH entry note has a %d-byte descriptor (want 4 or 8)", descsz)
				}
				if entry >= 1<<32 {
					return 0, false, fmt.Errorf("PVH entry point %#x is above 4 GiB (the PVH entry runs with paging off)", entry)
				}
				return entry, true, nil
			}
			notes = notes[descEnd:]
		}
	}
	return 0, false, nil
}

// segment is a piece of an image to place in guest memory: data followed
// by zeros up to memsz.
type segment struct {
	name  string
	gpa   uint64
	data  []byte
	memsz uint64
}

func (s segment) end() uint64 { return s.gpa + s.memsz }

// loadSegments returns the PT_LOAD segments placed at their physical
// addresses.
func (f *elfFile) loadSegments(b []byte) []segment {
	var segs []segment
	for _, ph := range f.progs {
		if ph.typ != ptLoad || ph.memsz == 0 {
			continue
		}
		segs = append(segs, segment{
			name:  fmt.Sprintf("segment %d", ph.idx),
			gpa:   ph.paddr,
			data:  b[ph.off : ph.off+ph.filesz],
			memsz: ph.memsz,
		})
	}
	return segs
}

// physEntry translates the entry point (a virtual address) to the
// physical address it is loaded at, through the PT_LOAD segment holding it.
func (f *elfFile) physEntry() (uint64, error) {
	for _, ph := range f.progs {
		if ph.typ != ptLoad || ph.memsz == 0 {
			continue
		}
		if f.entry >= ph.vaddr && f.entry-ph.vaddr < ph.memsz {
			return ph.paddr + (f.entry - ph.vaddr), nil
		}
	}
	return 0, fmt.Errorf("entry point %#x is not inside any PT_LOAD segment", f.entry)
}

// loadFloor is the lowest address a loader accepts segments at, and why.
type loadFloor struct {
	addr uint64
	why  string
}

// kernelFloor is the floor of the ELF64 and PVH loaders.
var kernelFloor = loadFloor{platform.KernelMin, "where govmm keeps the boot structures (GDT, page tables, boot info, stack, command line) and the BIOS area"}

// placeSegments checks that segs fit in guest RAM at or above floor,
// outside the firmware area (platform.MPTable to 1 MiB, reserved in the
// memory map) and without overlapping each other, then writes them and
// zeroes their bss. It returns the end of the highest segment.
func placeSegments(mem *memory.Memory, segs []segment, floor loadFloor) (uint64, error) {
	if len(segs) == 0 {
		return 0, fmt.Errorf("no loadable segments")
	}
	var total uint64
	for _, s := range segs {
		if s.gpa+s.memsz < s.gpa {
			return 0, fmt.Errorf("%s at %#x: memory size %#x wraps around the address space", s.name, s.gpa, s.memsz)
		}
		if s.gpa < floor.addr {
			return 0, fmt.Errorf("%s [%#x, %#x) lies below %#x, %s", s.name, s.gpa, s.end(), floor.addr, floor.why)
		}
		total += s.memsz
		if s.memsz > mem.Size() || total > mem.Size() {
			return 0, fmt.Errorf("image too big for memory: %s [%#x, %#x) brings the image to %d KiB, the guest has %d KiB of RAM", s.name, s.gpa, s.end(), total>>10, mem.Size()>>10)
		}
		if !mem.IsRAM(s.gpa, s.memsz) {
			return 0, fmt.Errorf("%s [%#x, %#x) is outside guest RAM (low RAM ends at %#x, guest has %d MiB)", s.name, s.gpa, s.end(), lowTop(mem), mem.Size()>>20)
		}
		if s.gpa < platform.ACPIEnd && s.end() > platform.MPTable {
			return 0, fmt.Errorf("%s [%#x, %#x) overlaps [%#x, %#x), the EBDA (MP table), VGA memory and BIOS area (ACPI tables), which the memory map reserves; an image below 1 MiB must end by %#x", s.name, s.gpa, s.end(), platform.MPTable, platform.ACPIEnd, platform.MPTable)
		}
	}
	sorted := append([]segment(nil), segs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].gpa < sorted[j].gpa })
	for i := 1; i < len(sorted); i++ {
		a, b := sorted[i-1], sorted[i]
		if b.gpa < a.end() {
			return 0, fmt.Errorf("%s [%#x, %#x) overlaps %s [%#x, %#x)", a.name, a.gpa, a.end(), b.name, b.gpa, b.end())
		}
	}
	var end uint64
	for _, s := range segs {
		dst, err := mem.Slice(s.gpa, s.memsz)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", s.name, err)
		}
		n := copy(dst, s.data)
		clear(dst[n:])
		end = max(end, s.end())
	}
	return end, nil
}
