package boot

import (
	"encoding/binary"
	"testing"

	"govmm/memory"
)

// Test images are generated here, byte by byte, so the tests need no
// toolchain and every header field is under the test's control.

var le = binary.LittleEndian

type tseg struct {
	typ          uint32 // 0 means PT_LOAD
	vaddr, paddr uint64
	data         []byte
	memsz        uint64 // 0 means len(data)
	align        uint64
}

// buildELF lays out an ELF file: header, program headers, then each
// segment's data in order.
func buildELF(class int, machine uint16, entry uint64, segs []tseg) []byte {
	hdrSize, phent := 52, 32
	if class == 64 {
		hdrSize, phent = 64, 56
	}
	off := hdrSize + phent*len(segs)
	b := make([]byte, off)
	copy(b, elfMagic)
	b[4] = 1
	if class == 64 {
		b[4] = 2
	}
	b[5], b[6] = 1, 1
	le.PutUint16(b[16:], etExec)
	le.PutUint16(b[18:], machine)
	le.PutUint32(b[20:], 1)
	if class == 64 {
		le.PutUint64(b[24:], entry)
		le.PutUint64(b[32:], uint64(hdrSize))
		le.PutUint16(b[52:], uint16(hdrSize))
		le.PutUint16(b[54:], uint16(phent))
		le.PutUint16(b[56:], uint16(len(segs)))
	} else {
		le.PutUint32(b[24:], uint32(entry))
		le.PutUint32(b[28:], uint32(hdrSize))
		le.PutUint16(b[40:], uint16(hdrSize))
		le.PutUint16(b[42:], uint16(phent))
		le.PutUint16(b[44:], uint16(len(segs)))
	}
	for i, s := range segs {
		typ := s.typ
		if typ == 0 {
			typ = ptLoad
		}
		memsz := s.memsz
		if memsz == 0 {
			memsz = uint64(len(s.data))
		}
		p := b[hdrSize+i*phent:]
		le.PutUint32(p, typ)
		if class == 64 {
			le.PutUint32(p[4:], 7)
			le.PutUint64(p[8:], uint64(off))
			le.PutUint64(p[16:], s.vaddr)
			le.PutUint64(p[24:], s.paddr)
			le.PutUint64(p[32:], uint64(len(s.data)))
			le.PutUint64(p[40:], memsz)
			le.PutUint64(p[48:], s.align)
		} else {
			le.PutUint32(p[4:], uint32(off))
			le.PutUint32(p[8:], uint32(s.vaddr))
			le.PutUint32(p[12:], uint32(s.paddr))
			le.PutUint32(p[16:], uint32(len(s.data)))
			le.PutUint32(p[20:], uint32(memsz))
			le.PutUint32(p[24:], 7)
			le.PutUint32(p[28:], uint32(s.align))
		}
		off += len(s.data)
	}
	for _, s := range segs {
		b = append(b, s.data...)
	}
	return b
}

// note builds one ELF note with 4-byte padding.
func note(name string, typ uint32, desc []byte) []byte {
	n := []byte(name + "\x00")
	b := make([]byte, 12)
	le.PutUint32(b, uint32(len(n)))
	le.PutUint32(b[4:], uint32(len(desc)))
	le.PutUint32(b[8:], typ)
	b = append(b, n...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { b := make([]byte, 4); le.PutUint32(b, v); return b }
func u64(v uint64) []byte { b := make([]byte, 8); le.PutUint64(b, v); return b }

// mbHeaderBytes is a Multiboot v1 header; with flag bit 16 the five
// address fields follow.
func mbHeaderBytes(flags uint32, addrs ...uint32) []byte {
	b := append(u32(mbHeaderMagic), u32(flags)...)
	b = append(b, u32(-(mbHeaderMagic + flags))...)
	for _, a := range addrs {
		b = append(b, u32(a)...)
	}
	return b
}

// code is a recognisable kernel body.
func code(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// elf64Image: a text segment at 1 MiB (vaddr == paddr) with the entry at
// +0x10 and a data segment with bss at 2 MiB.
func elf64Image() []byte {
	return buildELF(64, emX8664, 0x100010, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(0x300, 1)},
		{vaddr: 0x200000, paddr: 0x200000, data: code(0x80, 2), memsz: 0x3000},
	})
}

// multibootELF32Image: ELF32 whose first segment starts with a Multiboot
// header (flags: page align + memory info).
func multibootELF32Image(flags uint32) []byte {
	text := append(mbHeaderBytes(flags), code(0x200, 3)...)
	return buildELF(32, emI386, 0x10000C, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: text},
		{vaddr: 0x101000, paddr: 0x101000, data: code(0x40, 4), memsz: 0x2000},
	})
}

// kludgeImage: a flat file with a Multiboot header at offset 8 carrying
// address fields: loaded at 0x200000, header at 0x200008, 0x1000 bytes of
// file, bss to 0x203000, entry 0x200040.
func kludgeImage() []byte {
	b := make([]byte, 8, 0x1000)
	copy(b, "\xeb\x06kldg")
	b = append(b, mbHeaderBytes(mbFlagAddr|mbFlagMemInfo, 0x200008, 0x200000, 0x201000, 0x203000, 0x200040)...)
	for len(b) < 0x1000 {
		b = append(b, byte(len(b)))
	}
	return b
}

func pvhNote(entry uint64, eight bool) []byte {
	if eight {
		return note("Xen", xenNotePhys32Entry, u64(entry))
	}
	return note("Xen", xenNotePhys32Entry, u32(uint32(entry)))
}

// pvhImage is a vmlinux-like ELF64: text linked high (vaddr
// 0xffffffff81000000) loaded at 16 MiB, a PVH note, and another note
// before it.
func pvhImage(eight bool) []byte {
	notes := append(note("GNU", 3, code(20, 9)), pvhNote(0x1000040, eight)...)
	return buildELF(64, emX8664, 0xffffffff81000000, []tseg{
		{vaddr: 0xffffffff81000000, paddr: 0x1000000, data: code(0x400, 5), memsz: 0x2000},
		{typ: ptNote, data: notes, align: 4},
	})
}

type bzOpts struct {
	version     uint16
	setupSects  byte
	relocatable bool
	pref        uint64
	initSize    uint32
	xload       uint16
	loadFlags   byte
	cmdlineSize uint32
	initrdMax   uint32
	pmSize      int
}

func defaultBz() bzOpts {
	return bzOpts{
		version: 0x020F, setupSects: 4, relocatable: true, pref: 0x1000000,
		initSize: 0x400000, xload: xlfKernel64, loadFlags: loadedHigh,
		cmdlineSize: 2047, initrdMax: 0x7fffffff, pmSize: 0x3000,
	}
}

// buildBzImage makes a minimal bzImage: setup sectors with a setup header
// and a protected-mode kernel of o.pmSize recognisable bytes.
func buildBzImage(o bzOpts) []byte {
	ss := int(o.setupSects)
	if ss == 0 {
		ss = 4
	}
	b := make([]byte, (ss+1)*512)
	b[hdrSetupSects] = o.setupSects
	le.PutUint32(b[hdrSyssize:], uint32((o.pmSize+15)/16))
	le.PutUint16(b[hdrVidMode:], 0xFFFD)
	le.PutUint16(b[hdrBootFlag:], bootFlagMagic)
	b[0x200] = 0xEB
	b[hdrJumpLen] = 0x6A // header ends at 0x26C
	copy(b[hdrMagic:], "HdrS")
	le.PutUint16(b[hdrVersion:], o.version)
	b[hdrLoadFlags] = o.loadFlags
	le.PutUint32(b[hdrCode32Start:], 0x100000)
	le.PutUint32(b[hdrInitrdAddrMax:], o.initrdMax)
	le.PutUint32(b[hdrKernelAlignment:], 0x200000)
	if o.relocatable {
		b[hdrRelocatable] = 1
	}
	le.PutUint16(b[hdrXLoadFlags:], o.xload)
	le.PutUint32(b[hdrCmdlineSize:], o.cmdlineSize)
	le.PutUint64(b[hdrPrefAddress:], o.pref)
	le.PutUint32(b[hdrInitSize:], o.initSize)
	b[0x26C] = 0x99 // first byte of setup code after the header: must not be copied
	return append(b, code(o.pmSize, 6)...)
}

func newMem(t testing.TB, size uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(size)
	if err != nil {
		t.Fatalf("memory.New(%d): %v", size, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func readBytes(t *testing.T, m *memory.Memory, gpa, n uint64) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := m.Read(gpa, b); err != nil {
		t.Fatalf("read %d bytes at %#x: %v", n, gpa, err)
	}
	return b
}

func readU32(t *testing.T, m *memory.Memory, gpa uint64) uint32 {
	t.Helper()
	return le.Uint32(readBytes(t, m, gpa, 4))
}

func readU64(t *testing.T, m *memory.Memory, gpa uint64) uint64 {
	t.Helper()
	return le.Uint64(readBytes(t, m, gpa, 8))
}

func readCString(t *testing.T, m *memory.Memory, gpa uint64) string {
	t.Helper()
	var s []byte
	for i := uint64(0); i < 0x10000; i++ {
		c := readBytes(t, m, gpa+i, 1)[0]
		if c == 0 {
			return string(s)
		}
		s = append(s, c)
	}
	t.Fatalf("no NUL within 64 KiB of %#x", gpa)
	return ""
}
