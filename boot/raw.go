package boot

import (
	"errors"
	"fmt"

	"govmm/memory"
)

const (
	rawDefaultAddr = 0x7c00
	// rawMinAddr is the end of the real-mode IVT (0-0x3FF) and the BIOS
	// data area (0x400-0x4FF), which a flat binary must not overwrite.
	rawMinAddr = 0x500
	// rawMaxEnd is the end of conventional memory below the EBDA (where
	// govmm puts the MP table) and the VGA/BIOS hole.
	rawMaxEnd = 0x9FC00
	// rawStackTop is the default real-mode stack (SS=0, SP grows down).
	rawStackTop = 0x7000
)

// loadRaw copies a flat binary to opts.RawAddr (default 0x7c00) and enters
// it in real mode. When the image lies below 64 KiB, CS is 0 and IP is the
// load address (CS:IP = 0000:7C00 for the default, as a PC BIOS starts a
// boot sector), so code linked flat at its load address works unchanged;
// higher images get CS = addr>>4 and IP = addr&0xF. DS, ES, FS, GS and SS
// are 0; SP is 0x7000, or just below the image when the image covers
// 0x6000-0x6FFF.
func loadRaw(mem *memory.Memory, image []byte, opts Options) (*Entry, error) {
	if opts.Cmdline != "" {
		return nil, errors.New("raw flat binaries have no way to receive a command line; drop --cmdline or use an ELF/Multiboot image")
	}
	if len(opts.Initrd) > 0 {
		return nil, errors.New("raw flat binaries have no way to receive an initrd; drop --initrd or use an ELF/Multiboot image")
	}
	addr := opts.RawAddr
	if addr == 0 {
		addr = rawDefaultAddr
	}
	size := uint64(len(image))
	if addr < rawMinAddr {
		return nil, fmt.Errorf("load address %#x would overwrite the interrupt vector table and BIOS data area below %#x", addr, rawMinAddr)
	}
	if addr >= rawMaxEnd || size > rawMaxEnd-addr {
		return nil, fmt.Errorf("flat binary of %d bytes at %#x does not fit below %#x (conventional memory ends there; real mode cannot reach beyond 1 MiB)", size, addr, rawMaxEnd)
	}
	if !mem.IsRAM(addr, size) {
		return nil, fmt.Errorf("flat binary [%#x, %#x) is outside guest RAM (%d KiB)", addr, addr+size, mem.Size()>>10)
	}
	if err := mem.Write(addr, image); err != nil {
		return nil, fmt.Errorf("copy flat binary to %#x: %w", addr, err)
	}
	end := addr + size
	var cs, ip uint16
	if end <= 0x10000 {
		cs, ip = 0, uint16(addr)
	} else {
		cs, ip = uint16(addr>>4), uint16(addr&0xF)
	}
	sp := uint64(rawStackTop)
	if addr < rawStackTop && end > rawStackTop-0x1000 {
		// The image covers the default stack: put the stack below it,
		// or, when there is no room there, above it (inside SS's 64 KiB).
		switch {
		case addr&^0xF >= rawMinAddr+0x400:
			sp = addr &^ 0xF
		case alignUp(end, 16)+0x400 <= 0xFFF0:
			sp = 0xFFF0
		default:
			return nil, fmt.Errorf("flat binary [%#x, %#x) leaves no room for a real-mode stack below 64 KiB", addr, end)
		}
	}
	return realMode(cs, ip, uint16(sp)), nil
}
