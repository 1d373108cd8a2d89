package boot

import (
	"bytes"
	"strings"
	"testing"

	"govmm/platform"
)

func TestBzImage(t *testing.T) {
	m := newMem(t, 128<<20)
	o := defaultBz()
	img := buildBzImage(o)
	initrd := code(0x5001, 11)
	e, err := Load(m, img, Options{Cmdline: "console=ttyS0 root=/dev/vda", Initrd: initrd, RSDP: 0xE0000})
	if err != nil {
		t.Fatal(err)
	}
	if e.Format != FormatBzImage {
		t.Fatalf("format %q", e.Format)
	}
	// Relocatable, and pref_address + init_size fits: loaded at 16 MiB.
	const load = 0x1000000
	if e.Regs.RIP != load+0x200 || e.Regs.RSI != platform.ZeroPage {
		t.Errorf("RIP %#x RSI %#x, want %#x and the zero page", e.Regs.RIP, e.Regs.RSI, load+0x200)
	}
	checkLongMode(t, m, e)
	if !bytes.Equal(readBytes(t, m, load, uint64(o.pmSize)), code(o.pmSize, 6)) {
		t.Error("protected-mode kernel not at the load address")
	}

	zp := readBytes(t, m, platform.ZeroPage, 4096)
	// The header is copied up to its end (0x26C) and no further.
	if !bytes.Equal(zp[0x1F1:0x1FA], img[0x1F1:0x1FA]) || string(zp[0x202:0x206]) != "HdrS" || zp[0x26C] != 0 {
		t.Error("setup header not copied exactly")
	}
	if le.Uint16(zp[hdrVidMode:]) != 0xFFFF || zp[hdrTypeOfLoader] != 0xFF || zp[hdrLoadFlags]&(loadedHigh|canUseHeap) != loadedHigh|canUseHeap {
		t.Errorf("vid_mode %#x type_of_loader %#x loadflags %#x", le.Uint16(zp[hdrVidMode:]), zp[hdrTypeOfLoader], zp[hdrLoadFlags])
	}
	if le.Uint16(zp[hdrHeapEndPtr:]) != 0xDE00 {
		t.Errorf("heap_end_ptr %#x", le.Uint16(zp[hdrHeapEndPtr:]))
	}
	cmd := uint64(le.Uint32(zp[hdrCmdLinePtr:]))
	if cmd != platform.CmdlineAddr || readCString(t, m, cmd) != "console=ttyS0 root=/dev/vda" {
		t.Errorf("cmd_line_ptr %#x -> %q", cmd, readCString(t, m, cmd))
	}
	rd, rdSize := uint64(le.Uint32(zp[hdrRamdiskImage:])), uint64(le.Uint32(zp[hdrRamdiskSize:]))
	if rdSize != 0x5001 || rd%4096 != 0 || rd+rdSize > 128<<20 || rd+rdSize+4096 <= 128<<20 {
		t.Errorf("initrd at %#x size %#x: want page aligned, as high as possible below 128 MiB", rd, rdSize)
	}
	if !bytes.Equal(readBytes(t, m, rd, rdSize), initrd) {
		t.Error("initrd contents differ")
	}
	if got := le.Uint64(zp[zpACPIRSDP:]); got != 0xE0000 {
		t.Errorf("acpi_rsdp_addr %#x", got)
	}
	e820 := m.E820()
	if int(zp[zpE820Entries]) != len(e820) {
		t.Fatalf("e820_entries %d, want %d", zp[zpE820Entries], len(e820))
	}
	for i, r := range e820 {
		p := zp[zpE820Table+20*i:]
		if le.Uint64(p) != r.Addr || le.Uint64(p[8:]) != r.Size || le.Uint32(p[16:]) != r.Type {
			t.Errorf("e820 %d = % x, want %+v", i, p[:20], r)
		}
	}
}

func TestBzImageLoadAddress(t *testing.T) {
	// Not relocatable: 1 MiB; RAM must still hold pref_address + init_size.
	o := defaultBz()
	o.relocatable = false
	m := newMem(t, 64<<20)
	e, err := Load(m, buildBzImage(o), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Regs.RIP != 0x100200 {
		t.Errorf("RIP %#x, want 0x100200", e.Regs.RIP)
	}
	if le.Uint32(readBytes(t, m, platform.ZeroPage+hdrRamdiskSize, 4)) != 0 {
		t.Error("ramdisk_size set without an initrd")
	}
	// Old protocol without acpi_rsdp_addr: the field stays 0.
	o = defaultBz()
	o.version = 0x020D
	if _, err := Load(m, buildBzImage(o), Options{RSDP: 0xE0000}); err != nil {
		t.Fatal(err)
	}
	if got := readU64(t, m, platform.ZeroPage+zpACPIRSDP); got != 0 {
		t.Errorf("acpi_rsdp_addr %#x written for protocol 2.13", got)
	}
	// setup_sects 0 means 4.
	o = defaultBz()
	o.setupSects = 0
	if _, err := Load(m, buildBzImage(o), Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readBytes(t, m, 0x1000000, 16), code(16, 6)) {
		t.Error("setup_sects 0: kernel not taken from offset 0xA00")
	}
}

func TestBzImageErrors(t *testing.T) {
	mod := func(f func(*bzOpts)) []byte {
		o := defaultBz()
		f(&o)
		return buildBzImage(o)
	}
	badFlag := buildBzImage(defaultBz())
	badFlag[hdrBootFlag] = 0
	truncated := buildBzImage(defaultBz())
	truncated = truncated[:len(truncated)-0x100]
	noKernel := buildBzImage(defaultBz())[:5*512]
	tests := []struct {
		name   string
		image  []byte
		opts   Options
		memory uint64
		want   string
	}{
		{"boot flag", badFlag, Options{}, 64 << 20, "boot_flag"},
		{"old protocol", mod(func(o *bzOpts) { o.version = 0x0205 }), Options{}, 64 << 20, "2.05 is too old"},
		{"zImage", mod(func(o *bzOpts) { o.loadFlags = 0 }), Options{}, 64 << 20, "zImage"},
		{"no 64-bit entry", mod(func(o *bzOpts) { o.xload = 0 }), Options{}, 64 << 20, "XLF_KERNEL_64"},
		{"protocol without xloadflags", mod(func(o *bzOpts) { o.version = 0x020B }), Options{}, 64 << 20, "no 64-bit entry"},
		{"truncated", truncated, Options{}, 64 << 20, "truncated"},
		{"no kernel", noKernel, Options{}, 64 << 20, "truncated"},
		{"cmdline too long", buildBzImage(defaultBz()), Options{Cmdline: strings.Repeat("a", 2048)}, 64 << 20, "limit is 2047"},
		{"memory too small", buildBzImage(defaultBz()), Options{}, 16 << 20, "does not fit in guest RAM"},
		{"initrd too big", buildBzImage(defaultBz()), Options{Initrd: make([]byte, 60<<20)}, 64 << 20, "initrd"},
		{"initrd above initrd_addr_max", mod(func(o *bzOpts) { o.initrdMax = 0x1200000 }), Options{Initrd: make([]byte, 4096)}, 64 << 20, "initrd_addr_max 0x1200000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(newMem(t, tc.memory), tc.image, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
