package mptable

import (
	"encoding/binary"
	"testing"

	"govmm/memory"
	"govmm/platform"
)

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func TestTable(t *testing.T) {
	mem, err := memory.New(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := Write(mem, 3); err != nil {
		t.Fatal(err)
	}
	// Find the floating pointer the way a guest does: 16-byte steps in
	// the last KiB of base memory.
	area := make([]byte, areaSize)
	if err := mem.Read(platform.MPTable, area); err != nil {
		t.Fatal(err)
	}
	var fp []byte
	for i := 0; i < len(area); i += 16 {
		if string(area[i:i+4]) == "_MP_" && sum(area[i:i+16]) == 0 {
			fp = area[i : i+16]
			break
		}
	}
	if fp == nil || fp[8] != 1 || fp[9] != 4 || fp[11] != 0 {
		t.Fatalf("no valid floating pointer: % x", fp)
	}
	addr := binary.LittleEndian.Uint32(fp[4:])
	hdr := make([]byte, hdrSize)
	mem.Read(uint64(addr), hdr)
	n := binary.LittleEndian.Uint16(hdr[4:])
	tb := make([]byte, n)
	mem.Read(uint64(addr), tb)
	if string(tb[:4]) != "PCMP" || sum(tb) != 0 || tb[6] != 4 {
		t.Fatal("bad configuration table header or checksum")
	}
	if binary.LittleEndian.Uint32(tb[36:]) != 0xFEE00000 {
		t.Fatal("LAPIC address")
	}
	count := int(binary.LittleEndian.Uint16(tb[34:]))
	var cpus, buses, ioapics, irqs, locals int
	bsp := -1
	pin := map[byte]byte{}
	flags := map[byte]uint16{}
	off := hdrSize
	for i := 0; i < count; i++ {
		switch tb[off] {
		case entryProcessor:
			if tb[off+3]&cpuEnabled == 0 || tb[off+1] != byte(cpus) {
				t.Fatal("processor entry")
			}
			if tb[off+3]&cpuBSP != 0 {
				bsp = int(tb[off+1])
			}
			cpus++
			off += 20
		case entryBus:
			if string(tb[off+2:off+8]) != "ISA   " {
				t.Fatal("bus type")
			}
			buses++
			off += 8
		case entryIOAPIC:
			if binary.LittleEndian.Uint32(tb[off+4:]) != 0xFEC00000 || tb[off+3]&1 == 0 {
				t.Fatal("ioapic entry")
			}
			ioapics++
			off += 8
		case entryIOIntr:
			pin[tb[off+5]] = tb[off+7]
			flags[tb[off+5]] = binary.LittleEndian.Uint16(tb[off+2:])
			irqs++
			off += 8
		case entryLocalIntr:
			locals++
			off += 8
		default:
			t.Fatalf("unknown entry type %d", tb[off])
		}
	}
	if off != int(n) {
		t.Fatalf("entries end at %d, table length %d", off, n)
	}
	if cpus != 3 || bsp != 0 || buses != 1 || ioapics != 1 || irqs != 15 || locals != 2 {
		t.Fatalf("cpus %d bsp %d buses %d ioapics %d irqs %d locals %d", cpus, bsp, buses, ioapics, irqs, locals)
	}
	if pin[0] != 2 || pin[4] != 4 || flags[9] != flagsLevelHigh || flags[4] != 0 {
		t.Fatalf("IRQ routing: %v %v", pin, flags)
	}
}

func TestLimits(t *testing.T) {
	if _, err := Build(platform.MPTable, MaxCPUs); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(platform.MPTable, MaxCPUs+1); err == nil {
		t.Fatal("table larger than its area accepted")
	}
	if _, err := Build(platform.MPTable, 0); err == nil {
		t.Fatal("0 CPUs accepted")
	}
}
