package boot

import (
	"bytes"
	"fmt"
	"sort"
	"strings"
	"testing"

	"govmm/guests"
	"govmm/memory"
	"govmm/platform"
)

// Multiboot images below 1 MiB: the boot structures move around the image.

// mbELFLow is a Multiboot ELF32 image whose segments are given as
// (address, memory size) pairs; each has up to 0x1000 bytes of file data
// (the first one starting with the Multiboot header) and the rest bss.
// The entry is 0x20 bytes into the first segment.
func mbELFLow(segs ...[2]uint64) ([]byte, []tseg) {
	var ts []tseg
	for i, s := range segs {
		data := code(int(min(s[1], 0x1000)), byte(0x30+i))
		if i == 0 {
			data = append(mbHeaderBytes(mbFlagPageAlign|mbFlagMemInfo), data[12:]...)
		}
		ts = append(ts, tseg{vaddr: s[0], paddr: s[0], data: data, memsz: s[1]})
	}
	return buildELF(32, emI386, segs[0][0]+0x20, ts), ts
}

// checkLowLayout checks what a Multiboot guest finds after Load: the
// information is valid, the image's bytes and zeroed bss are intact (Load
// writes the boot structures after the image, so an overlap would show),
// and the image, information page, stack, command line, module and boot
// GDT lie in RAM without overlapping one another.
func checkLowLayout(t *testing.T, m *memory.Memory, e *Entry, ts []tseg, cmdline string, initrd []byte) {
	t.Helper()
	if e.Format != FormatMultiboot || e.Regs.RAX != MultibootMagic {
		t.Fatalf("format %q EAX %#x", e.Format, e.Regs.RAX)
	}
	info := e.Regs.RBX
	mods := checkMultibootInfo(t, m, info, cmdline)
	type rng struct {
		name       string
		start, end uint64
	}
	cmd := uint64(readU32(t, m, info+16))
	rs := []rng{
		{"boot GDT and IDT", platform.BootGDT, platform.BootIDT + 16},
		{"information page", info, info + memory.PageSize},
		{"stack", e.Regs.RSP - platform.BootStackSize, e.Regs.RSP},
		{"command line", cmd, cmd + uint64(len(cmdline)) + 1},
	}
	for i, s := range ts {
		memsz := max(s.memsz, uint64(len(s.data)))
		rs = append(rs, rng{fmt.Sprintf("segment %d", i), s.paddr, s.paddr + memsz})
		if !bytes.Equal(readBytes(t, m, s.paddr, uint64(len(s.data))), s.data) {
			t.Errorf("segment %d [%#x, %#x): contents overwritten", i, s.paddr, s.paddr+memsz)
		}
		if bss := memsz - uint64(len(s.data)); bss > 0 && !bytes.Equal(readBytes(t, m, s.paddr+uint64(len(s.data)), bss), make([]byte, bss)) {
			t.Errorf("segment %d: bss [%#x, %#x) not zero", i, s.paddr+uint64(len(s.data)), s.paddr+memsz)
		}
	}
	if len(initrd) > 0 {
		if len(mods) != 1 || uint64(mods[0][1]-mods[0][0]) != uint64(len(initrd)) || mods[0][0]%memory.PageSize != 0 {
			t.Fatalf("modules %#x, want one page-aligned module of %#x bytes", mods, len(initrd))
		}
		rs = append(rs, rng{"module 0", uint64(mods[0][0]), uint64(mods[0][1])})
		if !bytes.Equal(readBytes(t, m, uint64(mods[0][0]), uint64(len(initrd))), initrd) {
			t.Error("module contents differ")
		}
	} else if len(mods) != 0 {
		t.Errorf("modules %#x, want none", mods)
	}
	// The pointers inside the information lead into its page.
	for _, off := range []uint64{24, 48, 64} {
		if p := uint64(readU32(t, m, info+off)); p < info || p >= info+memory.PageSize {
			t.Errorf("information field at +%d points to %#x, outside the page [%#x, %#x)", off, p, info, info+memory.PageSize)
		}
	}
	var ram []memory.E820Entry
	for _, r := range m.E820() {
		if r.Type == memory.E820RAM {
			ram = append(ram, r)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].start < rs[j].start })
	for i, r := range rs {
		inRAM := false
		for _, e := range ram {
			if r.start >= e.Addr && r.end <= e.Addr+e.Size {
				inRAM = true
			}
		}
		if !inRAM || r.end > 1<<32 {
			t.Errorf("%s [%#x, %#x) is not in RAM below 4 GiB", r.name, r.start, r.end)
		}
		if i > 0 && r.start < rs[i-1].end {
			t.Errorf("%s [%#x, %#x) overlaps %s [%#x, %#x)", rs[i-1].name, rs[i-1].start, rs[i-1].end, r.name, r.start, r.end)
		}
	}
}

func TestMultibootBelow1MiB(t *testing.T) {
	kludge8000 := func() ([]byte, []tseg) {
		// a.out kludge at 0x8000: 0x1000 bytes of file, bss to 0x40000.
		b := append(make([]byte, 8), mbHeaderBytes(mbFlagAddr|mbFlagMemInfo, 0x8008, 0x8000, 0x9000, 0x40000, 0x8040)...)
		b = append(b, code(0x1000-len(b), 0x44)...)
		return b, []tseg{{paddr: 0x8000, data: b, memsz: 0x38000}}
	}
	tests := []struct {
		name    string
		image   func() ([]byte, []tseg)
		cmdline string
		initrd  int
		// Where the structures must go.
		info, stackTop, cmdAddr, module uint64
	}{
		{
			// The usual information page (0x8000) is free; the stack
			// (0x1b000-0x1f000) and command line (0x20000) move below
			// the image; the module goes right above it.
			name:  "ELF at 0x10000",
			image: func() ([]byte, []tseg) { return mbELFLow([2]uint64{0x10000, 0x20000}) },
			// The kernel name comes first.
			cmdline: "k a b", initrd: 0x1800,
			info: 0x8000, stackTop: 0x5000, cmdAddr: 0x5000, module: 0x30000,
		},
		{
			name:    "ELF at 0x10000, 3 MiB module",
			image:   func() ([]byte, []tseg) { return mbELFLow([2]uint64{0x10000, 0x20000}) },
			cmdline: "k", initrd: 3 << 20,
			info: 0x8000, stackTop: 0x5000, cmdAddr: 0x5000, module: 0x100000,
		},
		{
			name:    "a.out kludge at 0x8000 with bss",
			image:   kludge8000,
			cmdline: "k test=x", initrd: 0x2000,
			info: 0x1000, stackTop: 0x6000, cmdAddr: 0x6000, module: 0x40000,
		},
		{
			// 0x8000-0x9f000 is the image: a command line too long for
			// the free 8 KiB below it goes above 1 MiB, and so does the
			// module, which does not fit in the 3 KiB above the image.
			name:    "ELF filling conventional memory",
			image:   func() ([]byte, []tseg) { return mbELFLow([2]uint64{0x8000, 0x97000}) },
			cmdline: "k " + strings.Repeat("x", 20000), initrd: 0x2000,
			info: 0x1000, stackTop: 0x6000, cmdAddr: 0x100000, module: 0x105000,
		},
		{
			name:    "ELF segments over the usual homes",
			image:   func() ([]byte, []tseg) { return mbELFLow([2]uint64{0x8000, 0x1000}, [2]uint64{0x1b000, 0x6000}) },
			cmdline: "k", initrd: 1,
			info: 0x1000, stackTop: 0x6000, cmdAddr: 0x6000, module: 0x21000,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMem(t, 16<<20)
			img, ts := tc.image()
			initrd := code(tc.initrd, 0x99)
			name, args, _ := strings.Cut(tc.cmdline, " ")
			e, err := Load(m, img, Options{KernelName: name, Cmdline: args, Initrd: initrd})
			if err != nil {
				t.Fatal(err)
			}
			checkProtected32(t, m, e)
			checkLowLayout(t, m, e, ts, tc.cmdline, initrd)
			if e.Regs.RBX != tc.info || e.Regs.RSP != tc.stackTop {
				t.Errorf("information at %#x, stack top %#x; want %#x and %#x", e.Regs.RBX, e.Regs.RSP, tc.info, tc.stackTop)
			}
			if got := uint64(readU32(t, m, e.Regs.RBX+16)); got != tc.cmdAddr {
				t.Errorf("command line at %#x, want %#x", got, tc.cmdAddr)
			}
			if got := uint64(readU32(t, m, uint64(readU32(t, m, e.Regs.RBX+24)))); got != tc.module {
				t.Errorf("module at %#x, want %#x", got, tc.module)
			}
		})
	}
}

// TestMultibootLayoutGrid loads Multiboot images at many places below
// 1 MiB with command lines and modules of many sizes: each either loads
// with nothing overlapping or is refused for crossing into the BIOS area.
func TestMultibootLayoutGrid(t *testing.T) {
	m := newMem(t, 16<<20)
	n := 0
	for _, base := range []uint64{0x8000, 0x9000, 0x10000, 0x1c000, 0x20000, 0x50000, 0x9e000} {
		for _, size := range []uint64{0x1000, 0x10000, 0x40000, 0x97000} {
			for _, cmdLen := range []int{0, 100, 9000, 40000} {
				for _, initrdLen := range []int{0, 0x1800, 1 << 20} {
					img, ts := mbELFLow([2]uint64{base, size})
					args := strings.Repeat("a", cmdLen)
					initrd := code(initrdLen, byte(n))
					n++
					e, err := Load(m, img, Options{KernelName: "k", Cmdline: args, Initrd: initrd})
					if base+size > platform.MPTable {
						if err == nil || !strings.Contains(err.Error(), "overlaps [0x9fc00, 0x100000)") {
							t.Errorf("image [%#x, %#x): error %v, want the BIOS area named", base, base+size, err)
						}
						continue
					}
					if err != nil {
						t.Errorf("image [%#x, %#x), cmdline %d, initrd %d: %v", base, base+size, cmdLen, initrdLen, err)
						continue
					}
					cmdline := MultibootCmdline("k", args)
					checkLowLayout(t, m, e, ts, cmdline, initrd)
					if t.Failed() {
						t.Fatalf("image [%#x, %#x), cmdline %d, initrd %d", base, base+size, cmdLen, initrdLen)
					}
				}
			}
		}
	}
}

func TestMultibootLayoutNoRoom(t *testing.T) {
	// 2 MiB of RAM, all of it image but 0x1000-0x8000: the information
	// page and the stack fit there, an 8 KiB command line does not.
	img, _ := mbELFLow([2]uint64{0x8000, 0x97000}, [2]uint64{0x100000, 0x100000})
	_, err := Load(newMem(t, 2<<20), img, Options{KernelName: "k", Cmdline: strings.Repeat("x", 0x2000)})
	for _, want := range []string{
		"command line of 8195 bytes does not fit in free guest RAM below 4 GiB",
		"RAM is [0x0, 0x9fc00), [0x100000, 0x200000)",
		"segment 0 [0x8000, 0x9f000)", "segment 1 [0x100000, 0x200000)",
		"Multiboot information [0x1000, 0x2000)", "boot stack [0x2000, 0x6000)",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one containing %q", err, want)
		}
	}
	// The module finds no room either.
	_, err = Load(newMem(t, 2<<20), img, Options{Initrd: make([]byte, 0x3000)})
	if err == nil || !strings.Contains(err.Error(), "initrd (module 0) of 12288 bytes does not fit") {
		t.Errorf("error %v, want the initrd named", err)
	}
}

func TestMultibootCmdlineName(t *testing.T) {
	mbCmdline := func(t *testing.T, m *memory.Memory, e *Entry) string {
		return readCString(t, m, uint64(readU32(t, m, e.Regs.RBX+16)))
	}
	tests := []struct {
		name  string
		image []byte
		opts  Options
		want  string
		read  func(*testing.T, *memory.Memory, *Entry) string
	}{
		{"multiboot", multibootELF32Image(mbFlagMemInfo), Options{KernelName: "guests/bin/testguest.elf", Cmdline: "test=cmdline x"}, "guests/bin/testguest.elf test=cmdline x", mbCmdline},
		{"multiboot without arguments", multibootELF32Image(mbFlagMemInfo), Options{KernelName: "/k"}, "/k", mbCmdline},
		{"multiboot without a name", kludgeImage(), Options{Cmdline: "a"}, "kernel a", mbCmdline},
		// Only Multiboot kernels get the name.
		{"elf64", elf64Image(), Options{KernelName: "/k", Cmdline: "a"}, "a", mbCmdline},
		{"pvh", pvhImage(false), Options{KernelName: "/k", Cmdline: "a"}, "a", func(t *testing.T, m *memory.Memory, e *Entry) string {
			return readCString(t, m, readU64(t, m, e.Regs.RBX+24))
		}},
		{"bzimage", buildBzImage(defaultBz()), Options{KernelName: "/k", Cmdline: "a"}, "a", func(t *testing.T, m *memory.Memory, e *Entry) string {
			return readCString(t, m, uint64(readU32(t, m, e.Regs.RSI+hdrCmdLinePtr)))
		}},
		// govmm's words reach its own guests (Multiboot, ELF64), after the
		// user's; Linux and PVH kernels never see them.
		{"multiboot guest info", multibootELF32Image(mbFlagMemInfo), Options{KernelName: "/k", Cmdline: "a", GuestInfo: "govmm.cpu=x"}, "/k a govmm.cpu=x", mbCmdline},
		{"multiboot guest info alone", multibootELF32Image(mbFlagMemInfo), Options{KernelName: "/k", GuestInfo: "govmm.cpu=x"}, "/k govmm.cpu=x", mbCmdline},
		{"elf64 guest info", elf64Image(), Options{Cmdline: "a", GuestInfo: "govmm.cpu=x"}, "a govmm.cpu=x", mbCmdline},
		{"pvh guest info", pvhImage(false), Options{Cmdline: "a", GuestInfo: "govmm.cpu=x"}, "a", func(t *testing.T, m *memory.Memory, e *Entry) string {
			return readCString(t, m, readU64(t, m, e.Regs.RBX+24))
		}},
		{"bzimage guest info", buildBzImage(defaultBz()), Options{Cmdline: "a", GuestInfo: "govmm.cpu=x"}, "a", func(t *testing.T, m *memory.Memory, e *Entry) string {
			return readCString(t, m, uint64(readU32(t, m, e.Regs.RSI+hdrCmdLinePtr)))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMem(t, 64<<20)
			e, err := Load(m, tc.image, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.read(t, m, e); got != tc.want {
				t.Errorf("command line %q, want %q", got, tc.want)
			}
		})
	}
	// The name counts towards the limit.
	_, err := Load(newMem(t, 16<<20), kludgeImage(), Options{KernelName: "k", Cmdline: strings.Repeat("x", platform.CmdlineMax-2)})
	if want := `command line is 65536 bytes, the limit is 65535 (a Multiboot kernel receives its name "k", a space, then the command line)`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want one containing %q", err, want)
	}
}

// TestMultibootMblowLayout loads guests/bin/mblow.elf, the real guest of
// e2e's TestBootMultibootBelow1MiB, linked at 0x8000 with a bss that covers
// the usual homes of the information, stack and command line.
func TestMultibootMblowLayout(t *testing.T) {
	img, err := guests.Image("mblow")
	if err != nil {
		t.Fatal(err)
	}
	f, err := parseELF(img)
	if err != nil {
		t.Fatal(err)
	}
	var ts []tseg
	for _, s := range f.loadSegments(img) {
		ts = append(ts, tseg{paddr: s.gpa, data: s.data, memsz: s.memsz})
	}
	if len(ts) != 1 || ts[0].paddr != 0x8000 || ts[0].paddr+ts[0].memsz <= platform.CmdlineAddr {
		t.Fatalf("mblow segments %+v: want one at 0x8000 reaching past %#x", ts, platform.CmdlineAddr)
	}
	for _, initrd := range [][]byte{code(5000, 1), code(2<<20, 2)} {
		m := newMem(t, 64<<20)
		e, err := Load(m, img, Options{KernelName: "/tmp/mblow", Cmdline: "first second", Initrd: initrd})
		if err != nil {
			t.Fatal(err)
		}
		checkLowLayout(t, m, e, ts, "/tmp/mblow first second", initrd)
		if e.Regs.RBX+memory.PageSize > 0x8000 || e.Regs.RSP > 0x8000 {
			t.Errorf("information at %#x, stack top %#x: want both below the image", e.Regs.RBX, e.Regs.RSP)
		}
	}
}
