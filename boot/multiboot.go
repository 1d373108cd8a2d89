package boot

import (
	"cmp"
	"encoding/binary"
	"fmt"

	"govmm/memory"
	"govmm/platform"
)

// Multiboot v1 (https://www.gnu.org/software/grub/manual/multiboot/).
const (
	mbHeaderMagic     = 0x1BADB002
	MultibootMagic    = 0x2BADB002 // EAX at entry
	mbSearchLimit     = 8192
	mbFlagPageAlign   = 1 << 0
	mbFlagMemInfo     = 1 << 1
	mbFlagVideo       = 1 << 2
	mbFlagAddr        = 1 << 16
	mbRequiredUnknown = 0xFFF8 // requirement bits (0-15) govmm does not know

	// Multiboot information flags.
	mbiMem    = 1 << 0
	mbiCmd    = 1 << 2
	mbiMods   = 1 << 3
	mbiMmap   = 1 << 6
	mbiLoader = 1 << 9
)

// Layout of the Multiboot information page (at platform.MultibootInfo
// unless the image covers it; see planBoot).
const (
	mbiSize         = 0x80
	mbiModsOff      = 0x80 // one module entry (16 bytes)
	mbiLoaderOff    = 0x90 // "govmm"
	mbiModStringOff = 0xA0 // "initrd"
	mbiMmapOff      = 0x100
	mbiMmapMax      = (memory.PageSize - mbiMmapOff) / 24
)

// BootLoaderName is the boot_loader_name govmm passes to Multiboot guests.
const BootLoaderName = "govmm"

// ModuleString is the string of Multiboot module 0 (the initrd).
const ModuleString = "initrd"

// DefaultKernelName is the first word of a Multiboot command line when
// Options.KernelName is empty.
const DefaultKernelName = "kernel"

// MultibootCmdline is the command line a Multiboot kernel receives: the
// kernel's name, then a space and args when args is not empty. GRUB and
// QEMU's -kernel pass it so, and kernels written for them (kvm-unit-tests,
// for one) read their arguments from the second word on. The name is used
// as given: one with spaces in it makes several words, as with QEMU.
func MultibootCmdline(name, args string) string {
	if name == "" {
		name = DefaultKernelName
	}
	if args == "" {
		return name
	}
	return name + " " + args
}

type mbHeader struct {
	off   uint64
	flags uint32
	// Address fields, valid when flags has bit 16.
	headerAddr, loadAddr, loadEndAddr, bssEndAddr, entryAddr uint32
}

// findMultiboot returns the first valid Multiboot v1 header (magic and
// checksum) in the first 8 KiB of image, or nil.
func findMultiboot(image []byte) (*mbHeader, error) {
	le := binary.LittleEndian
	limit := min(len(image), mbSearchLimit)
	for off := 0; off+12 <= limit; off += 4 {
		if le.Uint32(image[off:]) != mbHeaderMagic {
			continue
		}
		flags := le.Uint32(image[off+4:])
		sum := le.Uint32(image[off+8:])
		if mbHeaderMagic+flags+sum != 0 {
			continue
		}
		h := &mbHeader{off: uint64(off), flags: flags}
		if flags&mbFlagAddr != 0 {
			if off+32 > len(image) {
				return nil, fmt.Errorf("Multiboot header at offset %#x sets flag bit 16 but the file ends before its address fields", off)
			}
			h.headerAddr = le.Uint32(image[off+12:])
			h.loadAddr = le.Uint32(image[off+16:])
			h.loadEndAddr = le.Uint32(image[off+20:])
			h.bssEndAddr = le.Uint32(image[off+24:])
			h.entryAddr = le.Uint32(image[off+28:])
		}
		return h, nil
	}
	return nil, nil
}

// loadMultiboot loads a Multiboot v1 kernel (ELF32 or a.out kludge) and
// enters it in 32-bit protected mode, paging off, with EAX = 0x2BADB002
// and EBX = the Multiboot information (at platform.MultibootInfo unless
// the image covers it). The image may load anywhere in RAM from
// platform.MultibootMin up, below 1 MiB included; the boot structures go
// around it (planBoot). ESP, which the specification leaves undefined,
// is the top of a free boot stack.
func loadMultiboot(mem *memory.Memory, image []byte, opts Options) (*Entry, error) {
	h, err := findMultiboot(image)
	if err != nil {
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("no Multiboot v1 header in the first %d bytes", mbSearchLimit)
	}
	if bad := h.flags & mbRequiredUnknown; bad != 0 {
		return nil, fmt.Errorf("Multiboot header at offset %#x requires features govmm does not provide (flags %#x, unknown requirement bits %#x)", h.off, h.flags, bad)
	}
	// Bit 0 (page-aligned modules) and bit 1 (memory information) are
	// always honoured. Bit 2 asks for video mode information: govmm has no
	// framebuffer, so the guest boots in text mode and the information's
	// video flags (11, 12) stay clear, as the specification allows.
	var segs []segment
	var entry uint64
	if h.flags&mbFlagAddr != 0 {
		seg, err := aoutKludge(h, image)
		if err != nil {
			return nil, err
		}
		segs = []segment{seg}
		entry = uint64(h.entryAddr)
		if entry < seg.gpa || entry >= seg.end() {
			return nil, fmt.Errorf("Multiboot entry_addr %#x is outside the loaded image [%#x, %#x)", entry, seg.gpa, seg.end())
		}
	} else {
		f, err := parseELF(image)
		if err != nil {
			return nil, err
		}
		if f.class != 32 {
			return nil, fmt.Errorf("Multiboot ELF images must be ELF32 (this is ELF%d); set header flag bit 16 to load it through the address fields", f.class)
		}
		segs = f.loadSegments(image)
		if entry, err = f.physEntry(); err != nil {
			return nil, err
		}
	}
	if _, err := placeSegments(mem, segs, multibootFloor); err != nil {
		return nil, err
	}
	name := cmp.Or(opts.KernelName, DefaultKernelName)
	cmdline := MultibootCmdline(name, opts.withGuestInfo())
	if err := checkCmdline(cmdline, platform.CmdlineMax-1); err != nil {
		return nil, fmt.Errorf("%w (a Multiboot kernel receives its name %q, a space, then the command line)", err, name)
	}
	l, err := writeBootInfo(mem, segs, nil, cmdline, opts.Initrd)
	if err != nil {
		return nil, err
	}
	e, err := protected32(mem, entry)
	if err != nil {
		return nil, err
	}
	e.Regs.RAX = MultibootMagic
	e.Regs.RBX = l.info
	e.Regs.RSP = l.stackTop
	return e, nil
}

// multibootFloor is the lowest address of a Multiboot image.
var multibootFloor = loadFloor{platform.MultibootMin, "the lowest address a Multiboot image may load at (below it are the IVT, the BIOS data area and govmm's boot GDT)"}

// aoutKludge computes the image segment from the header's address fields.
func aoutKludge(h *mbHeader, image []byte) (segment, error) {
	if h.loadAddr > h.headerAddr {
		return segment{}, fmt.Errorf("Multiboot load_addr %#x is above header_addr %#x", h.loadAddr, h.headerAddr)
	}
	before := uint64(h.headerAddr - h.loadAddr)
	if before > h.off {
		return segment{}, fmt.Errorf("Multiboot header_addr %#x - load_addr %#x = %#x, but the header is at file offset %#x: the image would start before the file", h.headerAddr, h.loadAddr, before, h.off)
	}
	start := h.off - before
	var n uint64
	if h.loadEndAddr == 0 {
		n = uint64(len(image)) - start
	} else {
		if h.loadEndAddr < h.loadAddr {
			return segment{}, fmt.Errorf("Multiboot load_end_addr %#x is below load_addr %#x", h.loadEndAddr, h.loadAddr)
		}
		n = uint64(h.loadEndAddr - h.loadAddr)
		if n > uint64(len(image))-start {
			return segment{}, fmt.Errorf("file truncated: Multiboot load_end_addr %#x needs file bytes [%#x, %#x), the file has %d bytes", h.loadEndAddr, start, start+n, len(image))
		}
	}
	memsz := n
	if h.bssEndAddr != 0 {
		if uint64(h.bssEndAddr) < uint64(h.loadAddr)+n {
			return segment{}, fmt.Errorf("Multiboot bss_end_addr %#x is below the end of the loaded image %#x", h.bssEndAddr, uint64(h.loadAddr)+n)
		}
		memsz = uint64(h.bssEndAddr - h.loadAddr)
	}
	if memsz == 0 {
		return segment{}, fmt.Errorf("Multiboot address fields describe an empty image")
	}
	return segment{
		name:  "a.out-kludge image",
		gpa:   uint64(h.loadAddr),
		data:  image[start : start+n],
		memsz: memsz,
	}, nil
}

// writeBootInfo places (planBoot) and writes the command line, the initrd
// as module 0 (page aligned, above the image when it fits there) and the
// Multiboot information around the image segments segs and the reserved
// areas. It returns where everything went.
func writeBootInfo(mem *memory.Memory, segs []segment, reserved []span, cmdline string, initrd []byte) (*bootLayout, error) {
	if err := checkCmdline(cmdline, platform.CmdlineMax-1); err != nil {
		return nil, err
	}
	l, err := planBoot(mem, segs, reserved, uint64(len(cmdline))+1, uint64(len(initrd)))
	if err != nil {
		return nil, err
	}
	if err := writeCmdlineAt(mem, l.cmdline, cmdline); err != nil {
		return nil, err
	}
	var mod *module
	if len(initrd) > 0 {
		if err := mem.Write(l.module, initrd); err != nil {
			return nil, fmt.Errorf("copy initrd to %#x: %w", l.module, err)
		}
		mod = &module{addr: l.module, size: uint64(len(initrd))}
	}
	return l, writeMultibootInfo(mem, l.info, l.cmdline, mod)
}

type module struct{ addr, size uint64 }

// writeMultibootInfo writes the Multiboot information structure at base
// (one page) with the memory sizes, command line, modules, memory map and
// boot loader name.
func writeMultibootInfo(mem *memory.Memory, base, cmdline uint64, mod *module) error {
	le := binary.LittleEndian
	page := make([]byte, memory.PageSize)
	e820 := mem.E820()
	if len(e820) > mbiMmapMax {
		return fmt.Errorf("memory map has %d entries, the Multiboot information has room for %d", len(e820), mbiMmapMax)
	}
	top := lowTop(mem)
	memLower := min(top, 0x9FC00) >> 10
	var memUpper uint64
	if top > 0x100000 {
		memUpper = (top - 0x100000) >> 10
	}
	le.PutUint32(page[0:], mbiMem|mbiCmd|mbiMods|mbiMmap|mbiLoader)
	le.PutUint32(page[4:], uint32(memLower))
	le.PutUint32(page[8:], uint32(memUpper))
	le.PutUint32(page[16:], uint32(cmdline))
	if mod != nil {
		le.PutUint32(page[20:], 1)
		le.PutUint32(page[mbiModsOff:], uint32(mod.addr))
		le.PutUint32(page[mbiModsOff+4:], uint32(mod.addr+mod.size))
		le.PutUint32(page[mbiModsOff+8:], uint32(base+mbiModStringOff))
	}
	le.PutUint32(page[24:], uint32(base+mbiModsOff))
	le.PutUint32(page[44:], uint32(24*len(e820)))
	le.PutUint32(page[48:], uint32(base+mbiMmapOff))
	le.PutUint32(page[64:], uint32(base+mbiLoaderOff))
	copy(page[mbiLoaderOff:], BootLoaderName+"\x00")
	copy(page[mbiModStringOff:], ModuleString+"\x00")
	for i, r := range e820 {
		p := page[mbiMmapOff+24*i:]
		le.PutUint32(p, 20)
		le.PutUint64(p[4:], r.Addr)
		le.PutUint64(p[12:], r.Size)
		le.PutUint32(p[20:], r.Type)
	}
	if err := mem.Write(base, page); err != nil {
		return fmt.Errorf("write Multiboot information at %#x: %w", base, err)
	}
	return nil
}
