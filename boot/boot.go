// Package boot turns a kernel file into guest memory contents and an
// initial vCPU state. It exists so that the VM layer can start any of the
// image formats govmm accepts (ELF64, Multiboot v1, the Linux bzImage boot
// protocol, PVH and raw flat binaries) without knowing any of them: Load
// looks at the file, writes the image and every boot structure the format
// promises (page tables, GDT, zero page, Multiboot information,
// hvm_start_info, command line, initrd) at the addresses fixed by package
// platform (or, for a Multiboot image loaded over some of them below
// 1 MiB, in free RAM around the image), and returns the registers the boot
// vCPU must start with.
//
// Kernel files are user input: every parser is bounds checked and fuzzed,
// and any malformed or unloadable image is rejected with an error that
// names what is wrong and where (segment, offset, guest address).
package boot

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"govmm/accel"
	"govmm/memory"
	"govmm/platform"
)

// Options are the inputs besides the image itself.
type Options struct {
	// Cmdline is the kernel command line, copied to platform.CmdlineAddr
	// (or, for a Multiboot image that covers that address, to free RAM
	// next to the image). A Multiboot kernel receives KernelName, a
	// space, then Cmdline, as GRUB and QEMU's -kernel pass it; every
	// other format receives Cmdline alone.
	Cmdline string
	// KernelName is the kernel image's name, the first word of a
	// Multiboot command line: the path as the user gave it (QEMU passes
	// the -kernel file name as given). Empty means DefaultKernelName.
	KernelName string
	// Initrd is the initial ramdisk (Linux) or Multiboot module 0, if any.
	Initrd []byte
	// RawAddr is the load and entry address for raw flat binaries; 0
	// means 0x7c00.
	RawAddr uint64
	// RSDP is the guest physical address of the ACPI RSDP, or 0. It is
	// passed to Linux (zero page, protocol 2.14+) and PVH kernels.
	RSDP uint64
	// GuestInfo is what govmm tells its own guests about the machine
	// ("govmm.cpu=x86-64-v2 ..."): appended to the command line of ELF64
	// and Multiboot kernels, the formats of the project's guests, and
	// never given to Linux, PVH or raw images. govmm run sets it only for
	// its built-in probe: other kernels get the command line as given.
	GuestInfo string
}

// withGuestInfo is the command line of a govmm guest: the user's, then
// the VMM's words.
func (o Options) withGuestInfo() string {
	if o.GuestInfo == "" {
		return o.Cmdline
	}
	if o.Cmdline == "" {
		return o.GuestInfo
	}
	return o.Cmdline + " " + o.GuestInfo
}

// Entry is the initial state of the boot vCPU.
type Entry struct {
	// Format is what Detect found: "elf64", "multiboot", "bzimage",
	// "pvh" or "raw".
	Format string
	Regs   accel.Regs
	// Sregs is complete: every segment, GDT/IDT, CR0/CR3/CR4/EFER and the
	// APIC base (xAPIC enabled at platform.LAPICBase, BSP bit set).
	Sregs accel.Sregs
}

// Image formats, as returned by Detect and stored in Entry.Format.
const (
	FormatELF64     = "elf64"
	FormatMultiboot = "multiboot"
	FormatBzImage   = "bzimage"
	FormatPVH       = "pvh"
	FormatRaw       = "raw"
)

// ErrEmpty is returned for an empty kernel file.
var ErrEmpty = errors.New("kernel image is empty")

// Detect names the format of image by looking at its contents:
//   - bzImage: "HdrS" at offset 0x202;
//   - ELF64 with a PVH note (Xen, type 18): "pvh"; other ELF64: "elf64";
//   - ELF32 with a Multiboot v1 header in its first 8 KiB: "multiboot";
//     ELF32 with a PVH note: "pvh";
//   - any other file with a Multiboot v1 header whose flag bit 16 (address
//     fields, the "a.out kludge") is set: "multiboot";
//   - anything else: "raw".
//
// Files that start like an ELF file but are not a valid one, and Multiboot
// headers that cannot be loaded, are errors rather than raw binaries.
func Detect(image []byte) (string, error) {
	if len(image) == 0 {
		return "", ErrEmpty
	}
	if isBzImage(image) {
		return FormatBzImage, nil
	}
	if bytes.HasPrefix(image, []byte(elfMagic)) {
		f, err := parseELF(image)
		if err != nil {
			return "", err
		}
		_, hasPVH, err := f.pvhEntry(image)
		if err != nil {
			return "", err
		}
		if f.class == 64 {
			if hasPVH {
				return FormatPVH, nil
			}
			return FormatELF64, nil
		}
		h, err := findMultiboot(image)
		if err != nil {
			return "", err
		}
		if h != nil {
			return FormatMultiboot, nil
		}
		if hasPVH {
			return FormatPVH, nil
		}
		return "", errors.New("ELF32 image has neither a Multiboot v1 header in its first 8 KiB nor a PVH (Xen PHYS32_ENTRY) note; 32-bit ELF is only loadable as Multiboot or PVH")
	}
	if looksLikeELF(image) {
		return "", fmt.Errorf("bad ELF magic % x (want 7f 45 4c 46)", image[:min(4, len(image))])
	}
	h, err := findMultiboot(image)
	if err != nil {
		return "", err
	}
	if h != nil {
		if h.flags&mbFlagAddr == 0 {
			return "", fmt.Errorf("Multiboot header at offset %#x in a non-ELF file lacks the address fields (flag bit 16 clear), so the file cannot be placed in memory", h.off)
		}
		return FormatMultiboot, nil
	}
	return FormatRaw, nil
}

// Load detects the format of image, writes it and its boot structures into
// mem and returns the boot vCPU's initial state. Every error is about the
// image or the options (the file is malformed, does not fit, or asks for
// something govmm does not provide); nothing is left half-described: on
// error the caller must discard the memory contents.
func Load(mem *memory.Memory, image []byte, opts Options) (*Entry, error) {
	if mem == nil {
		return nil, errors.New("boot: no guest memory")
	}
	format, err := Detect(image)
	if err != nil {
		return nil, err
	}
	var e *Entry
	switch format {
	case FormatBzImage:
		e, err = loadBzImage(mem, image, opts)
	case FormatELF64:
		e, err = loadELF64(mem, image, opts)
	case FormatMultiboot:
		e, err = loadMultiboot(mem, image, opts)
	case FormatPVH:
		e, err = loadPVH(mem, image, opts)
	case FormatRaw:
		e, err = loadRaw(mem, image, opts)
	default:
		err = fmt.Errorf("unknown image format %q", format)
	}
	if err != nil {
		return nil, fmt.Errorf("%s image: %w", format, err)
	}
	e.Format = format
	return e, nil
}

// lowTop is the first address after the RAM below the MMIO hole.
func lowTop(mem *memory.Memory) uint64 {
	for _, r := range mem.Regions() {
		if r.GPA == 0 {
			return r.End()
		}
	}
	return 0
}

// writeCmdline copies cmdline, NUL terminated, to platform.CmdlineAddr.
// limit is the longest command line (without the NUL) the kernel accepts.
func writeCmdline(mem *memory.Memory, cmdline string, limit uint64) (uint64, error) {
	if err := checkCmdline(cmdline, limit); err != nil {
		return 0, err
	}
	return platform.CmdlineAddr, writeCmdlineAt(mem, platform.CmdlineAddr, cmdline)
}

// checkCmdline rejects a command line longer than limit (and than
// platform.CmdlineMax-1) bytes or holding a NUL byte.
func checkCmdline(cmdline string, limit uint64) error {
	limit = min(limit, platform.CmdlineMax-1)
	if uint64(len(cmdline)) > limit {
		return fmt.Errorf("command line is %d bytes, the limit is %d", len(cmdline), limit)
	}
	if i := strings.IndexByte(cmdline, 0); i >= 0 {
		return fmt.Errorf("command line contains a NUL byte at offset %d", i)
	}
	return nil
}

// writeCmdlineAt copies cmdline, NUL terminated, to addr.
func writeCmdlineAt(mem *memory.Memory, addr uint64, cmdline string) error {
	buf := make([]byte, len(cmdline)+1)
	copy(buf, cmdline)
	if err := mem.Write(addr, buf); err != nil {
		return fmt.Errorf("write command line at %#x: %w", addr, err)
	}
	return nil
}

// placeHigh returns the highest page-aligned address a with lo <= a and
// a+size <= hi, for an initrd of size bytes.
func placeHigh(size, lo, hi uint64) (uint64, error) {
	lo = alignUp(lo, memory.PageSize)
	if hi < lo || hi-lo < size {
		return 0, fmt.Errorf("initrd of %d bytes does not fit between %#x and %#x", size, lo, hi)
	}
	return (hi - size) &^ (memory.PageSize - 1), nil
}

func alignUp(v, a uint64) uint64 {
	r := (v + a - 1) &^ (a - 1)
	if r < v {
		return ^uint64(0) &^ (a - 1) // saturate rather than wrap
	}
	return r
}
