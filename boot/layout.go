package boot

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"govmm/memory"
	"govmm/platform"
)

// The boot structures an ELF64 or Multiboot guest finds next to its image
// (the Multiboot information page, the boot stack, the command line and
// module 0) have usual homes fixed by package platform. A Multiboot image
// may be loaded below 1 MiB, over some of them (QEMU and GRUB accept
// segments from platform.MultibootMin up): then each displaced structure
// moves to the lowest free place in guest RAM, so that nothing govmm
// writes overlaps the image (bss included) or another structure. Images
// at 1 MiB and above get exactly the usual layout.

// span is a half-open range [start, end) of guest physical addresses,
// named for error messages.
type span struct {
	name       string
	start, end uint64
}

func (s span) String() string { return fmt.Sprintf("%s [%#x, %#x)", s.name, s.start, s.end) }

func (s span) overlaps(start, end uint64) bool { return start < s.end && s.start < end }

// Areas the planner never hands out.
var (
	// firstPage holds the real-mode IVT, the BIOS data area and the boot
	// GDT and IDT (platform.BootGDT, platform.BootIDT).
	firstPage = span{"IVT, BIOS data area and boot GDT", 0, memory.PageSize}
	// pageTables are the long-mode boot page tables (ELF64 entry only).
	pageTables = span{"boot page tables", platform.PML4Addr, platform.PDAddr + 4*memory.PageSize}
)

// Names of the placed structures, as they appear in spans and errors.
const (
	spanInfo    = "Multiboot information"
	spanStack   = "boot stack"
	spanCmdline = "command line"
	spanModule  = "initrd (module 0)"
)

// bootLayout is where planBoot put the boot structures.
type bootLayout struct {
	info     uint64 // Multiboot information page (memory.PageSize bytes)
	stackTop uint64 // initial ESP/RSP; platform.BootStackSize bytes below it are free
	cmdline  uint64
	module   uint64 // the initrd, when there is one
	// spans lists every range that is in use: the first page, the
	// reserved areas, the image's segments and the structures placed.
	spans []span
}

// placer hands out free, aligned ranges of guest RAM below 4 GiB (the
// Multiboot information holds 32-bit addresses).
type placer struct {
	ram  []span // E820 RAM, clipped to 4 GiB
	used []span
}

func newPlacer(mem *memory.Memory, used []span) *placer {
	p := &placer{used: used}
	for _, r := range mem.E820() {
		if r.Type != memory.E820RAM {
			continue
		}
		if end := min(r.Addr+r.Size, 1<<32); r.Addr < end {
			p.ram = append(p.ram, span{"RAM", r.Addr, end})
		}
	}
	return p
}

// free reports whether [start, start+size) lies in one RAM range and
// overlaps nothing in use.
func (p *placer) free(start, size uint64) bool {
	end := start + size
	if end < start {
		return false
	}
	if !slices.ContainsFunc(p.ram, func(r span) bool { return start >= r.start && end <= r.end }) {
		return false
	}
	return !slices.ContainsFunc(p.used, func(u span) bool { return u.overlaps(start, end) })
}

// lowest returns the lowest align-aligned address at or above from where
// size bytes are free. The lowest such address is either from itself or
// the first aligned address after the end of a used range or at the start
// of a RAM range, so only those are tried.
func (p *placer) lowest(size, align, from uint64) (uint64, bool) {
	cands := []uint64{alignUp(from, align)}
	for _, u := range p.used {
		cands = append(cands, alignUp(max(u.end, from), align))
	}
	for _, r := range p.ram {
		cands = append(cands, alignUp(max(r.start, from), align))
	}
	slices.Sort(cands)
	for _, c := range cands {
		if p.free(c, size) {
			return c, true
		}
	}
	return 0, false
}

// take marks [addr, addr+size) as used by name.
func (p *placer) take(name string, addr, size uint64) uint64 {
	p.used = append(p.used, span{name, addr, addr + size})
	return addr
}

// place puts size bytes at want when they are free there, else at the
// lowest free align-aligned address.
func (p *placer) place(name string, size, align, want uint64) (uint64, error) {
	if p.free(want, size) {
		return p.take(name, want, size), nil
	}
	if a, ok := p.lowest(size, align, 0); ok {
		return p.take(name, a, size), nil
	}
	return 0, p.noRoom(name, size)
}

// placeFrom puts size bytes at the lowest free align-aligned address at
// or above from, else at the lowest free one anywhere.
func (p *placer) placeFrom(name string, size, align, from uint64) (uint64, error) {
	if a, ok := p.lowest(size, align, from); ok {
		return p.take(name, a, size), nil
	}
	if a, ok := p.lowest(size, align, 0); ok {
		return p.take(name, a, size), nil
	}
	return 0, p.noRoom(name, size)
}

func (p *placer) noRoom(name string, size uint64) error {
	var ram, used []string
	for _, r := range p.ram {
		ram = append(ram, fmt.Sprintf("[%#x, %#x)", r.start, r.end))
	}
	sorted := slices.Clone(p.used)
	slices.SortFunc(sorted, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	for _, u := range sorted {
		used = append(used, u.String())
	}
	return fmt.Errorf("%s of %d bytes does not fit in free guest RAM below 4 GiB: RAM is %s; in use: %s",
		name, size, strings.Join(ram, ", "), strings.Join(used, ", "))
}

// planBoot places the Multiboot information page, the boot stack, the
// command line (cmdlineSize bytes with its NUL) and, when initrdSize > 0,
// the initrd around the image segments segs and the reserved areas. The
// first three go to their platform addresses when those are free, else to
// the lowest free place; the initrd goes to the lowest free page at or
// above the image's end, else to the lowest free page anywhere.
func planBoot(mem *memory.Memory, segs []segment, reserved []span, cmdlineSize, initrdSize uint64) (*bootLayout, error) {
	used := append([]span{firstPage}, reserved...)
	var imageEnd uint64
	for _, s := range segs {
		used = append(used, span{s.name, s.gpa, s.end()})
		imageEnd = max(imageEnd, s.end())
	}
	p := newPlacer(mem, used)
	l := &bootLayout{}
	var err error
	if l.info, err = p.place(spanInfo, memory.PageSize, memory.PageSize, platform.MultibootInfo); err != nil {
		return nil, err
	}
	stack, err := p.place(spanStack, platform.BootStackSize, memory.PageSize, platform.BootStackTop-platform.BootStackSize)
	if err != nil {
		return nil, err
	}
	l.stackTop = stack + platform.BootStackSize
	if l.cmdline, err = p.place(spanCmdline, cmdlineSize, 16, platform.CmdlineAddr); err != nil {
		return nil, err
	}
	if initrdSize > 0 {
		if l.module, err = p.placeFrom(spanModule, initrdSize, memory.PageSize, imageEnd); err != nil {
			return nil, err
		}
	}
	l.spans = p.used
	return l, nil
}
