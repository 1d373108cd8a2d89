package boot

import (
	"testing"

	"govmm/memory"
)

// Every fuzz target feeds arbitrary bytes (plus a command line and an
// initrd) to Load with 16 MiB of guest RAM: it must return either an entry
// or an error, never panic or hang. The seeds are valid images of the
// target's format, so mutations explore that format's parser.

const fuzzMem = 16 << 20

func fuzzLoad(f *testing.F, seeds ...[]byte) {
	for _, s := range seeds {
		f.Add(s, "", []byte(nil))
		f.Add(s, "console=ttyS0", []byte("initrd"))
	}
	var mem *memory.Memory
	f.Fuzz(func(t *testing.T, image []byte, cmdline string, initrd []byte) {
		if mem == nil {
			m, err := memory.New(fuzzMem)
			if err != nil {
				t.Fatal(err)
			}
			mem = m
		}
		e, err := Load(mem, image, Options{Cmdline: cmdline, Initrd: initrd})
		if (e == nil) == (err == nil) {
			t.Fatalf("Load returned entry %v and error %v", e, err)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		format, derr := Detect(image)
		if derr != nil || format != e.Format {
			t.Fatalf("Load said %q, Detect says %q, %v", e.Format, format, derr)
		}
		if e.Regs.RIP >= 1<<32 {
			t.Fatalf("entry RIP %#x above 4 GiB", e.Regs.RIP)
		}
	})
}

// smallBz is a bzImage that fits the fuzzers' 16 MiB.
func smallBz() []byte {
	o := defaultBz()
	o.pref = 0x100000
	o.initSize = 0x100000
	return buildBzImage(o)
}

// smallPVH is a PVH image at 1 MiB.
func smallPVH(eight bool) []byte {
	return buildELF(64, emX8664, 0x100000, []tseg{
		{vaddr: 0x100000, paddr: 0x100000, data: code(0x100, 5), memsz: 0x2000},
		{typ: ptNote, data: append(note("GNU", 3, code(20, 9)), pvhNote(0x100010, eight)...), align: 4},
	})
}

func FuzzDetect(f *testing.F) {
	seeds := [][]byte{elf64Image(), multibootELF32Image(3), kludgeImage(), smallPVH(false), smallBz(), {0xf4}, []byte("\x7fELF")}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, image []byte) {
		format, err := Detect(image)
		if (format == "") == (err == nil) {
			t.Fatalf("Detect = %q, %v", format, err)
		}
	})
}

func FuzzLoadELF(f *testing.F) {
	fuzzLoad(f, elf64Image(), buildELF(64, emX8664, 0xffffffff80000020, []tseg{{vaddr: 0xffffffff80000000, paddr: 0x100000, data: code(0x100, 1)}}))
}

func FuzzMultiboot(f *testing.F) {
	low, _ := mbELFLow([2]uint64{0x8000, 0x1000}, [2]uint64{0x1b000, 0x6000})
	fuzzLoad(f, multibootELF32Image(mbFlagPageAlign|mbFlagMemInfo), multibootELF32Image(mbFlagVideo), kludgeImage(), low)
}

func FuzzBzImage(f *testing.F) {
	fuzzLoad(f, smallBz(), buildBzImage(defaultBz()))
}

func FuzzPVH(f *testing.F) {
	fuzzLoad(f, smallPVH(false), smallPVH(true), pvhImage(false))
}

func FuzzRaw(f *testing.F) {
	fuzzLoad(f, []byte{0xf4}, code(0x1000, 1))
}
