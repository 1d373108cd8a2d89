package vm

import (
	"testing"

	"govmm/accel"
	"govmm/memory"
)

// TestTranslate checks the diagnostic page walk instructionBytes uses on
// every paging mode, with 4 KiB, 2/4 MiB and 1 GiB pages and a hole.
func TestTranslate(t *testing.T) {
	mem, err := memory.New(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	v := &VM{mem: mem}
	w64 := func(a, x uint64) { mem.WriteU64(a, x) }
	w32 := func(a uint64, x uint32) { mem.WriteU32(a, x) }

	// 4-level: 0x0000_7f00_1234_5000 -> 0x345000 (4 KiB page),
	// 0x40_0020_0000 -> 0x600000 (2 MiB page), 0x80_4000_0000 -> 1 GiB page.
	const pml4, pdpt, pd, pt = 0x10000, 0x11000, 0x12000, 0x13000
	lin4k := uint64(0x00007f0012345000)
	w64(pml4+((lin4k>>39)&0x1ff)*8, pdpt|3)
	w64(pdpt+((lin4k>>30)&0x1ff)*8, pd|3)
	w64(pd+((lin4k>>21)&0x1ff)*8, pt|3)
	w64(pt+((lin4k>>12)&0x1ff)*8, 0x345000|3)
	lin2m := uint64(0x0000004000200000)
	w64(pml4+((lin2m>>39)&0x1ff)*8, 0x14000|3)
	w64(0x14000+((lin2m>>30)&0x1ff)*8, 0x15000|3)
	w64(0x15000+((lin2m>>21)&0x1ff)*8, 0x600000|0x83)
	lin1g := uint64(0x0000008040000000)
	w64(pml4+((lin1g>>39)&0x1ff)*8, 0x16000|3)
	w64(0x16000+((lin1g>>30)&0x1ff)*8, 0x40000000|0x83)
	long := accel.Sregs{CR0: cr0PG | 1, CR4: cr4PAE, EFER: efeLMA | 1<<8, CR3: pml4}

	// PAE: 0xc0201234 -> 0x701234 through a 4 KiB page.
	const pdpte, paepd, paept = 0x20000, 0x21000, 0x22000
	w64(pdpte+3*8, paepd|1)
	w64(paepd+1*8, paept|3)
	w64(paept+1*8, 0x701000|3)
	pae := accel.Sregs{CR0: cr0PG | 1, CR4: cr4PAE, CR3: pdpte}

	// 32-bit: 0x00401234 -> 0x801234 (4 KiB), 0x00c00000 -> 4 MiB page at 0x800000... (PSE).
	const pd32, pt32 = 0x30000, 0x31000
	w32(pd32+1*4, pt32|3)
	w32(pt32+1*4, 0x801000|3)
	w32(pd32+3*4, 0x400000|0x83)
	legacy := accel.Sregs{CR0: cr0PG | 1, CR4: cr4PSE, CR3: pd32}

	cases := []struct {
		name string
		s    accel.Sregs
		lin  uint64
		gpa  uint64
		ok   bool
	}{
		{"no paging", accel.Sregs{CR0: 1}, 0x123456, 0x123456, true},
		{"4-level 4K", long, lin4k | 0xabc, 0x345abc, true},
		{"4-level 2M", long, lin2m | 0x12345, 0x612345, true},
		{"4-level 1G", long, lin1g | 0x123456, 0x40123456, true},
		{"4-level hole", long, 0x0000_1000_0000_0000, 0, false},
		{"PAE 4K", pae, 0xc0201234, 0x701234, true},
		{"PAE hole", pae, 0x00001000, 0, false},
		{"32-bit 4K", legacy, 0x00401234, 0x801234, true},
		{"32-bit 4M", legacy, 0x00c12345, 0x412345, true},
		{"32-bit hole", legacy, 0x10000000, 0, false},
	}
	for _, c := range cases {
		gpa, ok := v.translate(&c.s, c.lin)
		if ok != c.ok || (ok && gpa != c.gpa) {
			t.Errorf("%s: %#x -> %#x, %v; want %#x, %v", c.name, c.lin, gpa, ok, c.gpa, c.ok)
		}
	}
}
