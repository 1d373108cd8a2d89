package boot

import (
	"bytes"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/memory"
	"govmm/platform"
)

func TestDetect(t *testing.T) {
	nearELF := append([]byte("\x7fELG"), make([]byte, 60)...)
	elf32Plain := buildELF(32, emI386, 0x100000, []tseg{{vaddr: 0x100000, paddr: 0x100000, data: code(64, 1)}})
	mbNoAddr := append(make([]byte, 16), mbHeaderBytes(mbFlagMemInfo)...)
	elf32PVH := buildELF(32, emI386, 0x100000, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(64, 1)},
		{typ: ptNote, data: pvhNote(0x100000, false)},
	})
	badMachine := elf64Image()
	le.PutUint16(badMachine[18:], 40) // ARM
	tests := []struct {
		name    string
		image   []byte
		want    string
		wantErr string
	}{
		{"empty", nil, "", "empty"},
		{"elf64", elf64Image(), FormatELF64, ""},
		{"multiboot elf32", multibootELF32Image(mbFlagPageAlign | mbFlagMemInfo), FormatMultiboot, ""},
		{"multiboot kludge", kludgeImage(), FormatMultiboot, ""},
		{"pvh", pvhImage(false), FormatPVH, ""},
		{"pvh 8-byte note", pvhImage(true), FormatPVH, ""},
		{"pvh elf32", elf32PVH, FormatPVH, ""},
		{"bzimage", buildBzImage(defaultBz()), FormatBzImage, ""},
		{"raw", []byte{0xf4}, FormatRaw, ""},
		{"damaged ELF magic", nearELF, "", "bad ELF magic"},
		{"ELF32 without multiboot or PVH", elf32Plain, "", "neither a Multiboot"},
		{"multiboot without address fields in a flat file", mbNoAddr, "", "flag bit 16"},
		{"ELF bad machine", badMachine, "", "machine 40"},
		{"ELF truncated header", elf64Image()[:40], "", "truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect(tc.image)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Detect = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Detect = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// checkLongMode verifies the 64-bit entry state and the boot page tables
// and GDT in memory.
func checkLongMode(t *testing.T, m *memory.Memory, e *Entry) {
	t.Helper()
	s := e.Sregs
	if s.CR0&(cr0PE|cr0PG) != cr0PE|cr0PG || s.CR4&cr4PAE == 0 || s.EFER != eferLME|eferLMA || s.CR3 != platform.PML4Addr {
		t.Errorf("control registers CR0=%#x CR4=%#x EFER=%#x CR3=%#x", s.CR0, s.CR4, s.EFER, s.CR3)
	}
	wantCS := accel.Segment{Limit: 0xFFFFFFFF, Selector: 0x10, Type: 0xB, Present: true, S: true, L: true, G: true}
	if s.CS != wantCS {
		t.Errorf("CS = %+v, want %+v", s.CS, wantCS)
	}
	for name, seg := range map[string]accel.Segment{"DS": s.DS, "ES": s.ES, "FS": s.FS, "GS": s.GS, "SS": s.SS} {
		if seg.Selector != 0x18 || !seg.Present || seg.Type != 3 || seg.Base != 0 || seg.Limit != 0xFFFFFFFF || !seg.DB {
			t.Errorf("%s = %+v", name, seg)
		}
	}
	if s.GDT.Base != platform.BootGDT || s.GDT.Limit != 31 || s.IDT.Base != platform.BootIDT {
		t.Errorf("GDT %+v IDT %+v", s.GDT, s.IDT)
	}
	if s.TR.Type != 0xB || !s.TR.Present || s.APICBase != 0xFEE00900 {
		t.Errorf("TR %+v APICBase %#x", s.TR, s.APICBase)
	}
	if e.Regs.RFLAGS != 2 || e.Regs.RSP != platform.BootStackTop {
		t.Errorf("RFLAGS %#x RSP %#x", e.Regs.RFLAGS, e.Regs.RSP)
	}
	if got := readU64(t, m, platform.BootGDT+0x10); got != descCode64 {
		t.Errorf("GDT[0x10] = %#x, want %#x", got, uint64(descCode64))
	}
	if got := readU64(t, m, platform.BootGDT+0x18); got != descData {
		t.Errorf("GDT[0x18] = %#x, want %#x", got, uint64(descData))
	}
	if got := readU64(t, m, platform.PML4Addr); got != platform.PDPTAddr|3 {
		t.Errorf("PML4[0] = %#x", got)
	}
	if got := readU64(t, m, platform.PML4Addr+8); got != 0 {
		t.Errorf("PML4[1] = %#x, want 0", got)
	}
	for i := uint64(0); i < 4; i++ {
		if got := readU64(t, m, platform.PDPTAddr+8*i); got != platform.PDAddr+i*0x1000|3 {
			t.Errorf("PDPT[%d] = %#x", i, got)
		}
	}
	for _, i := range []uint64{0, 1, 511, 512, 2047} {
		if got := readU64(t, m, platform.PDAddr+8*i); got != i<<21|0x83 {
			t.Errorf("PD entry %d = %#x, want %#x", i, got, i<<21|0x83)
		}
	}
}

func checkProtected32(t *testing.T, m *memory.Memory, e *Entry) {
	t.Helper()
	s := e.Sregs
	if s.CR0&cr0PE == 0 || s.CR0&cr0PG != 0 || s.CR4 != 0 || s.EFER != 0 {
		t.Errorf("CR0=%#x CR4=%#x EFER=%#x, want protected mode without paging", s.CR0, s.CR4, s.EFER)
	}
	wantCS := accel.Segment{Limit: 0xFFFFFFFF, Selector: 0x08, Type: 0xB, Present: true, S: true, DB: true, G: true}
	if s.CS != wantCS {
		t.Errorf("CS = %+v, want %+v", s.CS, wantCS)
	}
	wantDS := accel.Segment{Limit: 0xFFFFFFFF, Selector: 0x10, Type: 0x3, Present: true, S: true, DB: true, G: true}
	for name, seg := range map[string]accel.Segment{"DS": s.DS, "ES": s.ES, "FS": s.FS, "GS": s.GS, "SS": s.SS} {
		if seg != wantDS {
			t.Errorf("%s = %+v, want %+v", name, seg, wantDS)
		}
	}
	if s.TR.Type != 0xB || s.TR.Limit != 0x67 || !s.TR.Present {
		t.Errorf("TR = %+v", s.TR)
	}
	if got := readU64(t, m, platform.BootGDT+8); got != descCode32 {
		t.Errorf("GDT[0x08] = %#x", got)
	}
	if got := readU64(t, m, platform.BootGDT+16); got != descData {
		t.Errorf("GDT[0x10] = %#x", got)
	}
	if e.Regs.RFLAGS != 2 {
		t.Errorf("RFLAGS = %#x (interrupts must be off)", e.Regs.RFLAGS)
	}
}

// checkMultibootInfo verifies the Multiboot information and returns the
// module list (start, end) if any.
func checkMultibootInfo(t *testing.T, m *memory.Memory, info uint64, cmdline string) [][2]uint32 {
	t.Helper()
	flags := readU32(t, m, info)
	for _, bit := range []uint32{mbiMem, mbiCmd, mbiMods, mbiMmap, mbiLoader} {
		if flags&bit == 0 {
			t.Errorf("info flags %#x lack %#x", flags, bit)
		}
	}
	if got := readU32(t, m, info+4); got != 639 {
		t.Errorf("mem_lower = %d, want 639", got)
	}
	if got, want := readU32(t, m, info+8), uint32((m.Size()-0x100000)>>10); got != want {
		t.Errorf("mem_upper = %d, want %d", got, want)
	}
	cmdAddr := uint64(readU32(t, m, info+16))
	if got := readCString(t, m, cmdAddr); got != cmdline {
		t.Errorf("cmdline at %#x = %q, want %q", cmdAddr, got, cmdline)
	}
	if got := readCString(t, m, uint64(readU32(t, m, info+64))); got != "govmm" {
		t.Errorf("boot_loader_name = %q", got)
	}
	e820 := m.E820()
	mmapLen, mmapAddr := readU32(t, m, info+44), uint64(readU32(t, m, info+48))
	if mmapLen != uint32(24*len(e820)) {
		t.Errorf("mmap_length = %d, want %d", mmapLen, 24*len(e820))
	}
	for i, r := range e820 {
		p := mmapAddr + 24*uint64(i)
		if readU32(t, m, p) != 20 || readU64(t, m, p+4) != r.Addr || readU64(t, m, p+12) != r.Size || readU32(t, m, p+20) != r.Type {
			t.Errorf("mmap entry %d = % x, want %+v", i, readBytes(t, m, p, 24), r)
		}
	}
	var mods [][2]uint32
	n, addr := readU32(t, m, info+20), uint64(readU32(t, m, info+24))
	for i := uint64(0); i < uint64(n); i++ {
		p := addr + 16*i
		mods = append(mods, [2]uint32{readU32(t, m, p), readU32(t, m, p+4)})
		if s := readCString(t, m, uint64(readU32(t, m, p+8))); s != "initrd" {
			t.Errorf("module %d string = %q", i, s)
		}
	}
	return mods
}

// checkUsualLayout checks that an image at 1 MiB or above gets the boot
// structures at their platform addresses.
func checkUsualLayout(t *testing.T, m *memory.Memory, e *Entry) {
	t.Helper()
	if e.Regs.RBX != platform.MultibootInfo || e.Regs.RSP != platform.BootStackTop {
		t.Errorf("RBX %#x RSP %#x, want the information at %#x and the stack top at %#x", e.Regs.RBX, e.Regs.RSP, platform.MultibootInfo, platform.BootStackTop)
	}
	if got := readU32(t, m, e.Regs.RBX+16); got != platform.CmdlineAddr {
		t.Errorf("cmdline at %#x, want %#x", got, platform.CmdlineAddr)
	}
}

func TestELF64(t *testing.T) {
	m := newMem(t, 64<<20)
	// Garbage where the bss goes: the loader must zero it.
	if err := m.Write(0x200080, bytes.Repeat([]byte{0xAA}, 0x100)); err != nil {
		t.Fatal(err)
	}
	initrd := code(5000, 42)
	e, err := Load(m, elf64Image(), Options{Cmdline: "hello world", Initrd: initrd})
	if err != nil {
		t.Fatal(err)
	}
	if e.Format != FormatELF64 || e.Regs.RIP != 0x100010 {
		t.Fatalf("format %q RIP %#x", e.Format, e.Regs.RIP)
	}
	if !bytes.Equal(readBytes(t, m, 0x100000, 0x300), code(0x300, 1)) || !bytes.Equal(readBytes(t, m, 0x200000, 0x80), code(0x80, 2)) {
		t.Error("segment contents differ")
	}
	if !bytes.Equal(readBytes(t, m, 0x200080, 0x3000-0x80), make([]byte, 0x3000-0x80)) {
		t.Error("bss not zeroed")
	}
	checkLongMode(t, m, e)
	if e.Regs.RAX != MultibootMagic || e.Regs.RBX != platform.MultibootInfo || e.Regs.RDI != MultibootMagic || e.Regs.RSI != platform.MultibootInfo {
		t.Errorf("RAX %#x RBX %#x RDI %#x RSI %#x", e.Regs.RAX, e.Regs.RBX, e.Regs.RDI, e.Regs.RSI)
	}
	mods := checkMultibootInfo(t, m, platform.MultibootInfo, "hello world")
	checkUsualLayout(t, m, e)
	if len(mods) != 1 || mods[0][0] != 0x203000 || mods[0][1] != 0x203000+5000 {
		t.Fatalf("modules %#x, want initrd at 0x203000 (page above the bss end)", mods)
	}
	if !bytes.Equal(readBytes(t, m, 0x203000, 5000), initrd) {
		t.Error("initrd contents differ")
	}
}

func TestELF64EntryTranslated(t *testing.T) {
	// Linked high, loaded at 1 MiB: the entry is translated to its
	// physical address.
	img := buildELF(64, emX8664, 0xffffffff80000020, []tseg{{vaddr: 0xffffffff80000000, paddr: 0x100000, data: code(0x100, 1)}})
	e, err := Load(newMem(t, 16<<20), img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Regs.RIP != 0x100020 {
		t.Errorf("RIP = %#x, want 0x100020", e.Regs.RIP)
	}
}

func TestELFErrors(t *testing.T) {
	one := func(paddr uint64, n int, memsz uint64) tseg {
		return tseg{vaddr: paddr, paddr: paddr, data: code(n, 1), memsz: memsz}
	}
	badClass := elf64Image()
	badClass[4] = 3
	bigEndian := elf64Image()
	bigEndian[5] = 2
	fileszBig := elf64Image()
	le.PutUint64(fileszBig[64+32:], 0x10000) // filesz > memsz and past the file
	tests := []struct {
		name  string
		image []byte
		want  []string
	}{
		{"truncated segment", elf64Image()[:0x200], []string{"truncated", "segment 0"}},
		{"truncated program headers", elf64Image()[:64+40], []string{"truncated", "program headers"}},
		{"bad class", badClass, []string{"class 3"}},
		{"big endian", bigEndian, []string{"little-endian"}},
		{"filesz past file", fileszBig, []string{"segment 0"}},
		{"overlap", buildELF(64, emX8664, 0x100000, []tseg{one(0x100000, 0x100, 0x2000), one(0x101000, 0x100, 0)}), []string{"segment 0 [0x100000, 0x102000) overlaps segment 1 [0x101000, 0x101100)"}},
		{"below KernelMin", buildELF(64, emX8664, 0x8000, []tseg{one(0x8000, 0x100, 0)}), []string{"segment 0 [0x8000, 0x8100)", "below 0x100000"}},
		{"outside RAM", buildELF(64, emX8664, 0x100000, []tseg{one(0x100000, 0x10, 0), one(0x2000000, 0x10, 0)}), []string{"segment 1 [0x2000000, 0x2000010) is outside guest RAM"}},
		{"too big", buildELF(64, emX8664, 0x100000, []tseg{one(0x100000, 0x10, 64<<20)}), []string{"too big for memory", "segment 0"}},
		{"entry outside segments", buildELF(64, emX8664, 0x500000, []tseg{one(0x100000, 0x10, 0)}), []string{"entry point 0x500000"}},
		{"no loadable segment", buildELF(64, emX8664, 0x100000, []tseg{{typ: 6, data: code(8, 1)}}), []string{"entry point"}},
		{"wraps", buildELF(64, emX8664, 0xfffffffffffff000, []tseg{one(0xfffffffffffff000, 0x10, 0x2000)}), []string{"wraps"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(newMem(t, 16<<20), tc.image, Options{})
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestMultibootELF32(t *testing.T) {
	m := newMem(t, 32<<20)
	initrd := code(0x1800, 7)
	img := multibootELF32Image(mbFlagPageAlign | mbFlagMemInfo)
	e, err := Load(m, img, Options{Cmdline: "console=ttyS0 x=1", Initrd: initrd, KernelName: "/boot/mb.elf"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Format != FormatMultiboot || e.Regs.RIP != 0x10000C || e.Regs.RAX != 0x2BADB002 || e.Regs.RBX != platform.MultibootInfo {
		t.Fatalf("format %q RIP %#x EAX %#x EBX %#x", e.Format, e.Regs.RIP, e.Regs.RAX, e.Regs.RBX)
	}
	checkProtected32(t, m, e)
	if got := readU32(t, m, 0x100000); got != mbHeaderMagic {
		t.Errorf("image start = %#x, want the Multiboot header", got)
	}
	if !bytes.Equal(readBytes(t, m, 0x101040, 0x2000-0x40), make([]byte, 0x2000-0x40)) {
		t.Error("bss not zero")
	}
	// The kernel's name comes first, as with GRUB and QEMU's -kernel.
	mods := checkMultibootInfo(t, m, platform.MultibootInfo, "/boot/mb.elf console=ttyS0 x=1")
	checkUsualLayout(t, m, e)
	if len(mods) != 1 || mods[0][0] != 0x103000 || mods[0][1]-mods[0][0] != 0x1800 {
		t.Fatalf("modules %#x, want one at 0x103000 of 0x1800 bytes", mods)
	}
	if !bytes.Equal(readBytes(t, m, 0x103000, 0x1800), initrd) {
		t.Error("module contents differ")
	}
}

func TestMultibootNoInitrdVideoFlag(t *testing.T) {
	m := newMem(t, 16<<20)
	// Bit 2 (video mode) is accepted: govmm boots in text mode.
	e, err := Load(m, multibootELF32Image(mbFlagMemInfo|mbFlagVideo), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if mods := checkMultibootInfo(t, m, e.Regs.RBX, DefaultKernelName); len(mods) != 0 {
		t.Errorf("modules %v, want none", mods)
	}
	if flags := readU32(t, m, e.Regs.RBX); flags&(1<<11|1<<12) != 0 {
		t.Errorf("info flags %#x claim video information", flags)
	}
}

func TestMultibootKludge(t *testing.T) {
	m := newMem(t, 16<<20)
	if err := m.Write(0x201000, bytes.Repeat([]byte{0x55}, 0x2000)); err != nil {
		t.Fatal(err)
	}
	img := kludgeImage()
	e, err := Load(m, img, Options{Cmdline: "k", Initrd: []byte("module!")})
	if err != nil {
		t.Fatal(err)
	}
	if e.Format != FormatMultiboot || e.Regs.RIP != 0x200040 || e.Regs.RAX != MultibootMagic {
		t.Fatalf("format %q RIP %#x EAX %#x", e.Format, e.Regs.RIP, e.Regs.RAX)
	}
	checkProtected32(t, m, e)
	if !bytes.Equal(readBytes(t, m, 0x200000, 0x1000), img) {
		t.Error("image not at load_addr")
	}
	if !bytes.Equal(readBytes(t, m, 0x201000, 0x2000), make([]byte, 0x2000)) {
		t.Error("bss not zeroed")
	}
	mods := checkMultibootInfo(t, m, e.Regs.RBX, "kernel k")
	if len(mods) != 1 || mods[0][0] != 0x203000 {
		t.Fatalf("modules %#x", mods)
	}
}

func TestMultibootErrors(t *testing.T) {
	kl := func(hdrAddr, load, loadEnd, bssEnd, entry uint32) []byte {
		b := append(make([]byte, 8), mbHeaderBytes(mbFlagAddr, hdrAddr, load, loadEnd, bssEnd, entry)...)
		return append(b, make([]byte, 0x100)...)
	}
	truncatedAddr := append(make([]byte, 8), mbHeaderBytes(mbFlagAddr)...)
	tests := []struct {
		name  string
		image []byte
		want  string
	}{
		{"unknown requirement bit", multibootELF32Image(1 << 3), "unknown requirement bits 0x8"},
		{"load after header", kl(0x200000, 0x200010, 0, 0, 0x200010), "above header_addr"},
		{"image before file start", kl(0x200100, 0x200000, 0, 0, 0x200100), "before the file"},
		{"load end past file", kl(0x200008, 0x200000, 0x210000, 0, 0x200010), "truncated"},
		{"bss below load end", kl(0x200008, 0x200000, 0x200100, 0x200010, 0x200010), "bss_end_addr"},
		{"entry outside", kl(0x200008, 0x200000, 0, 0, 0x300000), "entry_addr 0x300000"},
		{"below MultibootMin", kl(0x7008, 0x7000, 0, 0, 0x7010), "[0x7000, 0x7128) lies below 0x8000"},
		{"over the BIOS area", kl(0x9f008, 0x9f000, 0, 0xa1000, 0x9f010), "[0x9f000, 0xa1000) overlaps [0x9fc00, 0x100000)"},
		{"address fields truncated", truncatedAddr, "address fields"},
		{"initrd too big", nil, "initrd"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, opts := tc.image, Options{}
			if img == nil {
				img, opts = kludgeImage(), Options{Initrd: make([]byte, 15<<20)}
			}
			_, err := Load(newMem(t, 16<<20), img, opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestCmdlineLimits(t *testing.T) {
	m := newMem(t, 16<<20)
	if _, err := Load(m, elf64Image(), Options{Cmdline: strings.Repeat("x", platform.CmdlineMax)}); err == nil || !strings.Contains(err.Error(), "command line is 65536 bytes, the limit is 65535") {
		t.Errorf("long cmdline: %v", err)
	}
	if _, err := Load(m, elf64Image(), Options{Cmdline: "a\x00b"}); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("NUL in cmdline: %v", err)
	}
	if _, err := Load(m, elf64Image(), Options{Cmdline: strings.Repeat("x", platform.CmdlineMax-1)}); err != nil {
		t.Errorf("cmdline of the maximum length: %v", err)
	}
}

func TestPVH(t *testing.T) {
	for _, eight := range []bool{false, true} {
		m := newMem(t, 64<<20)
		initrd := code(0x2345, 8)
		e, err := Load(m, pvhImage(eight), Options{Cmdline: "console=hvc0", Initrd: initrd, RSDP: 0xE0000})
		if err != nil {
			t.Fatal(err)
		}
		if e.Format != FormatPVH || e.Regs.RIP != 0x1000040 || e.Regs.RBX != platform.PVHStartInfo {
			t.Fatalf("format %q RIP %#x EBX %#x", e.Format, e.Regs.RIP, e.Regs.RBX)
		}
		checkProtected32(t, m, e)
		si := uint64(platform.PVHStartInfo)
		if readU32(t, m, si) != 0x336ec578 || readU32(t, m, si+4) != 1 {
			t.Errorf("start info magic/version % x", readBytes(t, m, si, 8))
		}
		if got := readCString(t, m, readU64(t, m, si+24)); got != "console=hvc0" {
			t.Errorf("cmdline %q", got)
		}
		if got := readU64(t, m, si+32); got != 0xE0000 {
			t.Errorf("rsdp_paddr %#x", got)
		}
		if n := readU32(t, m, si+12); n != 1 {
			t.Fatalf("nr_modules %d", n)
		}
		mod := readU64(t, m, si+16)
		addr, size := readU64(t, m, mod), readU64(t, m, mod+8)
		if size != 0x2345 || addr%4096 != 0 || addr < 0x1002000 || addr+size > 64<<20 || addr+size+4096 <= 64<<20 {
			t.Errorf("initrd at %#x size %#x: want page aligned, as high as possible below 64 MiB", addr, size)
		}
		if !bytes.Equal(readBytes(t, m, addr, size), initrd) {
			t.Error("initrd contents differ")
		}
		e820 := m.E820()
		mm, n := readU64(t, m, si+40), readU32(t, m, si+48)
		if int(n) != len(e820) {
			t.Fatalf("memmap_entries %d, want %d", n, len(e820))
		}
		for i, r := range e820 {
			p := mm + 24*uint64(i)
			if readU64(t, m, p) != r.Addr || readU64(t, m, p+8) != r.Size || readU32(t, m, p+16) != r.Type {
				t.Errorf("memmap %d = % x, want %+v", i, readBytes(t, m, p, 24), r)
			}
		}
		if !bytes.Equal(readBytes(t, m, 0x1000000, 0x400), code(0x400, 5)) {
			t.Error("kernel not at its physical address")
		}
	}
}

func TestPVHErrors(t *testing.T) {
	outside := buildELF(64, emX8664, 0, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(0x100, 1)},
		{typ: ptNote, data: pvhNote(0x2000000, false)},
	})
	badDesc := buildELF(64, emX8664, 0, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(0x100, 1)},
		{typ: ptNote, data: note("Xen", xenNotePhys32Entry, []byte{1, 2})},
	})
	high := buildELF(64, emX8664, 0, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(0x100, 1)},
		{typ: ptNote, data: pvhNote(1<<32, true)},
	})
	runaway := buildELF(64, emX8664, 0, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(0x100, 1)},
		{typ: ptNote, data: append(u32(100), u32(4)...)},
	})
	for name, tc := range map[string]struct {
		img  []byte
		want string
	}{
		"entry outside":  {outside, "PVH entry point 0x2000000 is not inside"},
		"bad descriptor": {badDesc, "2-byte descriptor"},
		"entry above 4G": {high, "above 4 GiB"},
		"truncated note": {runaway, "truncated note"},
		"small memory":   {pvhImage(false), "outside guest RAM"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(newMem(t, 16<<20), tc.img, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRaw(t *testing.T) {
	m := newMem(t, 16<<20)
	img := code(0x200, 9)
	e, err := Load(m, img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Format != FormatRaw || e.Sregs.CS.Selector != 0 || e.Sregs.CS.Base != 0 || e.Regs.RIP != 0x7c00 || e.Regs.RSP != 0x7000 {
		t.Fatalf("format %q CS %+v RIP %#x RSP %#x", e.Format, e.Sregs.CS, e.Regs.RIP, e.Regs.RSP)
	}
	if !bytes.Equal(readBytes(t, m, 0x7c00, 0x200), img) {
		t.Error("image not at 0x7c00")
	}
	s := e.Sregs
	if s.CR0&cr0PE != 0 || s.EFER != 0 || s.CS.Limit != 0xFFFF || s.CS.DB || s.CS.G || !s.CS.Present || s.DS.Base != 0 || s.SS.Limit != 0xFFFF || s.IDT.Limit != 0x3FF {
		t.Errorf("not a real-mode state: %+v", s)
	}

	// Above 64 KiB: CS = addr>>4, IP = addr&0xF.
	e, err = Load(m, img, Options{RawAddr: 0x12345})
	if err != nil {
		t.Fatal(err)
	}
	if e.Sregs.CS.Selector != 0x1234 || e.Sregs.CS.Base != 0x12340 || e.Regs.RIP != 5 {
		t.Errorf("CS %+v IP %#x, want 1234:0005", e.Sregs.CS, e.Regs.RIP)
	}
	if !bytes.Equal(readBytes(t, m, 0x12345, 0x200), img) {
		t.Error("image not at 0x12345")
	}

	// An image over the default stack moves the stack below itself.
	e, err = Load(m, code(0x2000, 1), Options{RawAddr: 0x6000})
	if err != nil {
		t.Fatal(err)
	}
	if e.Regs.RSP != 0x6000 {
		t.Errorf("RSP = %#x, want 0x6000 (below the image)", e.Regs.RSP)
	}
}

func TestRawErrors(t *testing.T) {
	m := newMem(t, 16<<20)
	for name, tc := range map[string]struct {
		img  []byte
		opts Options
		want string
	}{
		"too big":        {make([]byte, 0x9FC00-0x7c00+1), Options{}, "does not fit below 0x9fc00"},
		"over the IVT":   {[]byte{1}, Options{RawAddr: 0x400}, "interrupt vector table"},
		"cmdline":        {[]byte{1}, Options{Cmdline: "x"}, "command line"},
		"initrd":         {[]byte{1}, Options{Initrd: []byte{1}}, "initrd"},
		"no stack space": {make([]byte, 0xFC00-0x500), Options{RawAddr: 0x500}, "no room for a real-mode stack"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(m, tc.img, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := Load(newMem(t, 0x4000), []byte{1}, Options{}); err == nil || !strings.Contains(err.Error(), "outside guest RAM") {
		t.Errorf("raw image in 16 KiB of RAM: %v", err)
	}
}
