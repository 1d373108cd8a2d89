package boot

import (
	"encoding/binary"
	"fmt"

	"govmm/memory"
	"govmm/platform"
)

// The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): offsets of
// the setup header fields in the bzImage file, which are also their offsets
// in the zero page (struct boot_params), and of the zero page's own fields.
const (
	hdrSetupSects      = 0x1F1
	hdrSyssize         = 0x1F4
	hdrVidMode         = 0x1FA
	hdrBootFlag        = 0x1FE
	hdrJumpLen         = 0x201 // second byte of the jump: header end - 0x202
	hdrMagic           = 0x202
	hdrVersion         = 0x206
	hdrTypeOfLoader    = 0x210
	hdrLoadFlags       = 0x211
	hdrCode32Start     = 0x214
	hdrRamdiskImage    = 0x218
	hdrRamdiskSize     = 0x21C
	hdrHeapEndPtr      = 0x224
	hdrCmdLinePtr      = 0x228
	hdrInitrdAddrMax   = 0x22C
	hdrKernelAlignment = 0x230
	hdrRelocatable     = 0x234
	hdrXLoadFlags      = 0x236
	hdrCmdlineSize     = 0x238
	hdrHardwareSubarch = 0x23C
	hdrSetupData       = 0x250
	hdrPrefAddress     = 0x258
	hdrInitSize        = 0x260
	hdrMaxEnd          = 0x290 // where boot_params' next field starts

	zpACPIRSDP     = 0x070
	zpE820Entries  = 0x1E8
	zpE820Table    = 0x2D0
	zpE820Max      = 128
	bootFlagMagic  = 0xAA55
	loadedHigh     = 1 << 0
	canUseHeap     = 1 << 7
	xlfKernel64    = 1 << 0
	loaderUnknown  = 0xFF
	heapEndPtr     = 0xE000 - 0x200
	entry64Offset  = 0x200
	bzDefaultLoad  = 0x100000
	protoMin       = 0x0206
	protoXLoad     = 0x020C // xloadflags
	protoPrefAddr  = 0x020A // pref_address, init_size
	protoACPIRSDP  = 0x020E // boot_params.acpi_rsdp_addr
	bzMinSetupSect = 4      // setup_sects 0 means 4
)

func isBzImage(b []byte) bool {
	return len(b) >= hdrMagic+4 && string(b[hdrMagic:hdrMagic+4]) == "HdrS"
}

// loadBzImage loads a bzImage through the 64-bit boot protocol: the
// protected-mode kernel at pref_address (relocatable kernels, when it
// fits) or 1 MiB, the zero page at platform.ZeroPage, the command line at
// platform.CmdlineAddr, the initrd as high as the kernel allows, and the
// 64-bit entry (load address + 0x200) with RSI = zero page.
func loadBzImage(mem *memory.Memory, image []byte, opts Options) (*Entry, error) {
	le := binary.LittleEndian
	if len(image) < hdrBootFlag+2 {
		return nil, fmt.Errorf("file truncated inside the setup header (%d bytes)", len(image))
	}
	if f := le.Uint16(image[hdrBootFlag:]); f != bootFlagMagic {
		return nil, fmt.Errorf("setup header boot_flag at %#x is %#04x, want 0xaa55", hdrBootFlag, f)
	}
	setupSects := uint64(image[hdrSetupSects])
	if setupSects == 0 {
		setupSects = bzMinSetupSect
	}
	pmOff := (setupSects + 1) * 512
	if pmOff >= uint64(len(image)) {
		return nil, fmt.Errorf("file truncated: %d setup sectors put the protected-mode kernel at offset %#x, the file has %d bytes", setupSects, pmOff, len(image))
	}
	version := le.Uint16(image[hdrVersion:])
	if version < protoMin {
		return nil, fmt.Errorf("boot protocol %d.%02d is too old, govmm needs 2.06 or later", version>>8, version&0xFF)
	}
	hdrEnd := min(uint64(hdrMagic)+uint64(image[hdrJumpLen]), hdrMaxEnd)
	if hdrEnd < hdrCmdlineSize+4 {
		return nil, fmt.Errorf("setup header ends at %#x (jump at 0x200), too short for protocol %d.%02d", hdrEnd, version>>8, version&0xFF)
	}
	loadFlags := image[hdrLoadFlags]
	if loadFlags&loadedHigh == 0 {
		return nil, fmt.Errorf("kernel is a zImage (loadflags %#x without LOADED_HIGH): only bzImage is supported", loadFlags)
	}
	if version < protoXLoad || le.Uint16(image[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("kernel has no 64-bit entry point (boot protocol %d.%02d, xloadflags %#x lacks XLF_KERNEL_64); govmm boots bzImages only through the 64-bit entry", version>>8, version&0xFF, le.Uint16(image[hdrXLoadFlags:]))
	}
	pmSize := uint64(len(image)) - pmOff
	if sys := uint64(le.Uint32(image[hdrSyssize:])) * 16; sys > pmSize {
		return nil, fmt.Errorf("file truncated: syssize says the protected-mode kernel is %d bytes, the file holds %d after offset %#x", sys, pmSize, pmOff)
	}
	relocatable := image[hdrRelocatable] != 0
	var pref, initSize uint64 = bzDefaultLoad, 0
	if version >= protoPrefAddr && hdrEnd >= hdrInitSize+4 {
		pref = le.Uint64(image[hdrPrefAddress:])
		initSize = uint64(le.Uint32(image[hdrInitSize:]))
	}
	top := lowTop(mem)
	load := uint64(bzDefaultLoad)
	if relocatable && pref >= platform.KernelMin && pref < top && max(pmSize, initSize) <= top-pref {
		load = pref
	}
	// The kernel decompresses and runs at max(load, pref_address) (a
	// relocatable kernel never runs below LOAD_PHYSICAL_ADDR, which is
	// pref_address) and needs init_size bytes there.
	run := load
	if pref > run && pref < 1<<32 {
		run = pref
	}
	kernelEnd := max(load+pmSize, run+initSize)
	if kernelEnd > top {
		return nil, fmt.Errorf("kernel does not fit in guest RAM: it is loaded at %#x (%d bytes) and needs init_size %#x bytes at %#x, up to %#x; low RAM ends at %#x (%d MiB)", load, pmSize, initSize, run, kernelEnd, top, top>>20)
	}

	cmdlineLimit := uint64(le.Uint32(image[hdrCmdlineSize:]))
	cmdline, err := writeCmdline(mem, opts.Cmdline, cmdlineLimit)
	if err != nil {
		return nil, err
	}

	zp := make([]byte, memory.PageSize)
	copy(zp[hdrSetupSects:], image[hdrSetupSects:hdrEnd])
	le.PutUint16(zp[hdrVidMode:], 0xFFFF) // "normal": no mode change
	zp[hdrTypeOfLoader] = loaderUnknown
	zp[hdrLoadFlags] = loadFlags | canUseHeap
	le.PutUint32(zp[hdrCode32Start:], uint32(load))
	le.PutUint16(zp[hdrHeapEndPtr:], heapEndPtr)
	le.PutUint32(zp[hdrCmdLinePtr:], uint32(cmdline))
	le.PutUint32(zp[hdrHardwareSubarch:], 0) // a PC
	if hdrEnd >= hdrSetupData+8 {
		le.PutUint64(zp[hdrSetupData:], 0)
	}

	if n := uint64(len(opts.Initrd)); n > 0 {
		maxAddr := uint64(le.Uint32(image[hdrInitrdAddrMax:]))
		hi := min(top, maxAddr+1)
		addr, err := placeHigh(n, kernelEnd, hi)
		if err != nil {
			return nil, fmt.Errorf("initrd: %w (above the kernel's %#x, below initrd_addr_max %#x and the top of low RAM %#x)", err, kernelEnd, maxAddr, top)
		}
		if err := mem.Write(addr, opts.Initrd); err != nil {
			return nil, fmt.Errorf("copy initrd to %#x: %w", addr, err)
		}
		le.PutUint32(zp[hdrRamdiskImage:], uint32(addr))
		le.PutUint32(zp[hdrRamdiskSize:], uint32(n))
	} else {
		le.PutUint32(zp[hdrRamdiskImage:], 0)
		le.PutUint32(zp[hdrRamdiskSize:], 0)
	}

	e820 := mem.E820()
	if len(e820) > zpE820Max {
		return nil, fmt.Errorf("memory map has %d entries, the zero page has room for %d", len(e820), zpE820Max)
	}
	zp[zpE820Entries] = uint8(len(e820))
	for i, r := range e820 {
		p := zp[zpE820Table+20*i:]
		le.PutUint64(p, r.Addr)
		le.PutUint64(p[8:], r.Size)
		le.PutUint32(p[16:], r.Type)
	}
	if opts.RSDP != 0 && version >= protoACPIRSDP {
		// Older kernels find the RSDP by scanning 0xE0000-0xFFFFF.
		le.PutUint64(zp[zpACPIRSDP:], opts.RSDP)
	}
	if err := mem.Write(platform.ZeroPage, zp); err != nil {
		return nil, fmt.Errorf("write zero page at %#x: %w", platform.ZeroPage, err)
	}
	if err := mem.Write(load, image[pmOff:]); err != nil {
		return nil, fmt.Errorf("copy protected-mode kernel to %#x: %w", load, err)
	}
	e, err := longMode(mem, load+entry64Offset)
	if err != nil {
		return nil, err
	}
	e.Regs.RSI = platform.ZeroPage
	return e, nil
}
