package acpi

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"govmm/memory"
	"govmm/platform"
)

func build(t *testing.T, ncpu int) (*memory.Memory, uint64) {
	t.Helper()
	mem, err := memory.New(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	rsdp, err := Build(mem, Config{NumCPUs: ncpu, PCI: testPCI})
	if err != nil {
		t.Fatal(err)
	}
	return mem, rsdp
}

var testPCI = &PCIHost{
	ECAMBase: platform.PCIECAMBase, BusEnd: platform.PCIECAMBusEnd,
	Mem32Base: platform.PCIMMIO32Base, Mem32End: platform.PCIMMIO32End,
	Mem64Base: 0x1_0000_0000, Mem64End: 0x1_0000_0000 + platform.PCIMMIO64Size,
	GSI: platform.PCIGSI, Hotplug: []int{3, 31},
}

func read(t *testing.T, mem *memory.Memory, gpa uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := mem.Read(gpa, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// tables walks the tables from the RSDP the way an OS does and returns
// them by signature (the RSDP as "RSDP").
func tables(t *testing.T, mem *memory.Memory, rsdpAddr uint64) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	if rsdpAddr%16 != 0 || rsdpAddr < platform.ACPIBase || rsdpAddr >= platform.ACPIEnd {
		t.Fatalf("RSDP at %#x: not 16-byte aligned in the BIOS area", rsdpAddr)
	}
	r := read(t, mem, rsdpAddr, 36)
	if string(r[:8]) != "RSD PTR " || r[15] != 2 || sum(r[:20]) != 0 || sum(r) != 0 {
		t.Fatalf("bad RSDP % x", r)
	}
	out["RSDP"] = r
	get := func(addr uint64) []byte {
		h := read(t, mem, addr, 36)
		n := binary.LittleEndian.Uint32(h[4:])
		tb := read(t, mem, addr, int(n))
		if sum(tb) != 0 {
			t.Fatalf("table %s at %#x: checksum wrong", tb[:4], addr)
		}
		out[string(tb[:4])] = tb
		return tb
	}
	x := get(binary.LittleEndian.Uint64(r[24:]))
	rs := get(uint64(binary.LittleEndian.Uint32(r[16:])))
	if string(x[:4]) != "XSDT" || string(rs[:4]) != "RSDT" {
		t.Fatal("RSDP does not point at XSDT/RSDT")
	}
	if (len(x)-36)/8 != (len(rs)-36)/4 {
		t.Fatal("XSDT and RSDT list different tables")
	}
	for i := 36; i < len(x); i += 8 {
		a := binary.LittleEndian.Uint64(x[i:])
		if uint64(binary.LittleEndian.Uint32(rs[36+(i-36)/2:])) != a {
			t.Fatal("XSDT and RSDT entries differ")
		}
		get(a)
	}
	f := out["FACP"]
	if f == nil || out["APIC"] == nil {
		t.Fatal("FADT or MADT missing from the XSDT")
	}
	facs := binary.LittleEndian.Uint64(f[132:])
	if uint64(binary.LittleEndian.Uint32(f[36:])) != facs || facs%64 != 0 {
		t.Fatal("FACS pointers disagree or FACS misaligned")
	}
	out["FACS"] = read(t, mem, facs, 64)
	dsdt := binary.LittleEndian.Uint64(f[140:])
	if uint64(binary.LittleEndian.Uint32(f[40:])) != dsdt {
		t.Fatal("DSDT pointers disagree")
	}
	get(dsdt)
	return out
}

func TestTables(t *testing.T) {
	mem, rsdp := build(t, 4)
	ts := tables(t, mem, rsdp)
	f := ts["FACP"]
	if len(f) != 276 || f[8] != 6 {
		t.Fatalf("FADT length %d revision %d, want 276 / 6", len(f), f[8])
	}
	le32 := func(b []byte, o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	if binary.LittleEndian.Uint16(f[46:]) != 9 || le32(f, 56) != 0x600 || le32(f, 64) != 0x604 || le32(f, 76) != 0x608 {
		t.Fatal("FADT SCI / PM blocks wrong")
	}
	flags := le32(f, 112)
	if flags&fadtResetRegSup == 0 || flags&fadtHWReduced != 0 {
		t.Fatalf("FADT flags %#x", flags)
	}
	if f[116] != 1 || binary.LittleEndian.Uint64(f[120:]) != 0xCF9 || f[128] != 6 {
		t.Fatal("reset register")
	}
	if a := binary.LittleEndian.Uint16(f[109:]); a&boot8042 != 0 || a&bootLegacyDevs == 0 {
		t.Fatalf("IAPC_BOOT_ARCH %#x: want legacy devices and no 8042 (see fadt)", a)
	}
	m := ts["APIC"]
	if le32(m, 36) != 0xFEE00000 {
		t.Fatal("local APIC address")
	}
	var lapics, overrides, ioapics, nmis int
	for i := 44; i < len(m); i += int(m[i+1]) {
		switch m[i] {
		case madtLAPIC:
			if m[i+3] != byte(lapics) || le32(m, i+4) != 1 {
				t.Fatalf("LAPIC entry %d", lapics)
			}
			lapics++
		case madtIOAPIC:
			ioapics++
			if le32(m, i+4) != 0xFEC00000 || le32(m, i+8) != 0 {
				t.Fatal("IOAPIC entry")
			}
		case madtOverride:
			overrides++
			src, gsi, fl := m[i+3], le32(m, i+4), binary.LittleEndian.Uint16(m[i+8:])
			if !(src == 0 && gsi == 2 && fl == 0) && !(src == 9 && gsi == 9 && fl == 0xd) {
				t.Fatalf("override %d -> %d flags %#x", src, gsi, fl)
			}
		case madtLAPICNMI:
			nmis++
			if m[i+5] != 1 {
				t.Fatal("NMI not on LINT1")
			}
		}
		if m[i+1] == 0 {
			t.Fatal("zero-length MADT entry")
		}
	}
	if lapics != 4 || ioapics != 1 || overrides != 2 || nmis != 1 {
		t.Fatalf("MADT: %d LAPICs, %d IOAPICs, %d overrides, %d NMIs", lapics, ioapics, overrides, nmis)
	}
	if !bytes.Contains(ts["DSDT"], []byte("_S5_")) {
		t.Fatal("no \\_S5 in the DSDT")
	}
}

func TestX2APICEntries(t *testing.T) {
	mem, rsdp := build(t, 300)
	m := tables(t, mem, rsdp)["APIC"]
	x2 := 0
	for i := 44; i < len(m); i += int(m[i+1]) {
		if m[i] == madtX2APIC {
			x2++
		}
	}
	if x2 != 300-255 {
		t.Fatalf("%d x2APIC entries, want %d", x2, 300-255)
	}
}

func TestBadConfig(t *testing.T) {
	mem, err := memory.New(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if _, err := Build(mem, Config{}); err == nil {
		t.Fatal("0 CPUs accepted")
	}
	if _, err := Build(mem, Config{NumCPUs: MaxCPUs + 1}); err == nil {
		t.Fatal("too many CPUs accepted")
	}
}

// flatten strips comments from iasl's output and collapses white space,
// so tests can match constructs that span lines.
func flatten(dsl string) string {
	dsl = regexp.MustCompile(`(?s)/\*.*?\*/`).ReplaceAllString(dsl, "")
	dsl = regexp.MustCompile(`//[^\n]*`).ReplaceAllString(dsl, "")
	return strings.Join(strings.Fields(dsl), " ")
}

// TestIASL disassembles every table with iasl -d (Debian's acpica-tools),
// which checks lengths, checksums and field values the way Linux's ACPICA
// parses them. The RSDP is the exception: iasl only reads files that start
// with a standard table header whose signature is a valid ACPI name, and
// "RSD PTR " is not, so iasl refuses an RSDP file whatever it contains; the
// RSDP is checked field by field in tables() instead.
func TestIASL(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal("iasl not found (apt-get install -y acpica-tools); required when GOVMM_REQUIRE_KVM=1")
		}
		t.Skip("iasl not found (apt-get install -y acpica-tools)")
	}
	for _, ncpu := range []int{1, 300} {
		mem, rsdp := build(t, ncpu)
		dir := t.TempDir()
		for sig, tb := range tables(t, mem, rsdp) {
			if sig == "RSDP" {
				continue
			}
			path := filepath.Join(dir, sig+".dat")
			if err := os.WriteFile(path, tb, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(iasl, "-d", path)
			cmd.Dir = dir
			outb, err := cmd.CombinedOutput()
			out := string(outb)
			if err != nil {
				t.Fatalf("iasl -d %s (%d CPUs): %v\n%s", sig, ncpu, err, out)
			}
			if os.Getenv("ACPI_DUMP") != "" {
				os.WriteFile(filepath.Join(os.Getenv("ACPI_DUMP"), sig+".dat"), tb, 0o644)
			}
			dsl, err := os.ReadFile(strings.TrimSuffix(path, ".dat") + ".dsl")
			if err != nil {
				t.Fatalf("iasl -d %s wrote no .dsl: %v\n%s", sig, err, out)
			}
			text := string(dsl)
			for _, bad := range []string{"Incorrect checksum", "Invalid", "**** Unknown", "Error", "Warning"} {
				if strings.Contains(text, bad) || strings.Contains(out, bad) {
					t.Errorf("iasl -d %s (%d CPUs) reports %q:\n%s\n%s", sig, ncpu, bad, out, text)
				}
			}
			var want []string
			switch sig {
			case "DSDT":
				want = []string{
					"Name (_S5, Package (0x04) { 0x05, 0x05, Zero, Zero })",
					"Scope (\\_SB) { Device (PCI0) {",
					`Name (_HID, EisaId ("PNP0A08") )`,
					`Name (_CID, EisaId ("PNP0A03") )`,
					"Name (_SEG, Zero)",
					"Name (_BBN, Zero)",
					"Name (_UID, Zero)",
					"WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, 0x0000, 0x0000, 0x0000, 0x0001,",
					"IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08, )",
					"WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x0000, 0x0CF7, 0x0000, 0x0CF8,",
					"WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300,",
					"DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite, 0x00000000, 0xC0000000, 0xDFFFFFFF, 0x00000000, 0x20000000,",
					"QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite, 0x0000000000000000, 0x0000000100000000, 0x00000008FFFFFFFF, 0x0000000000000000, 0x0000000800000000,",
					"Name (_PRT, Package (0x80) { Package (0x04) { 0xFFFF, Zero, Zero, 0x10 },",
					"Package (0x04) { 0x0001FFFF, 0x03, Zero, 0x14 },",
					"Package (0x04) { 0x001FFFFF, 0x03, Zero, 0x12 } })",
					"Device (MRES) {",
					`Name (_HID, EisaId ("PNP0C02") )`,
					"Memory32Fixed (ReadWrite, 0xE0000000, 0x00100000, )",
					// PCI hotplug: the controller's registers, a slot
					// device per free slot and the GPE that notifies them.
					"OperationRegion (PCST, SystemIO, 0x0620, 0x0C) Field (PCST, DWordAcc, NoLock, WriteAsZeros) { PCIU, 32, PCID, 32, B0EJ, 32 }",
					"Device (S03) { Name (_ADR, 0x00030000) Name (_SUN, 0x03) Method (_EJ0, 1, NotSerialized) { B0EJ = 0x08 } }",
					"Device (S1F) { Name (_ADR, 0x001F0000) Name (_SUN, 0x1F) Method (_EJ0, 1, NotSerialized) { B0EJ = 0x80000000 } }",
					"Scope (\\_GPE) { Method (_E01, 0, NotSerialized) { Local0 = \\_SB.PCI0.PCIU If ((Local0 & 0x08)) { Notify (\\_SB.PCI0.S03, One) } If ((Local0 & 0x80000000)) { Notify (\\_SB.PCI0.S1F, One) } } }",
				}
			case "FACP":
				want = []string{
					"GPE0 Block Address : 00000610",
					"GPE0 Block Length : 04",
					"[0DCh 0220 12] GPE0 Block : [Generic Address Structure] [0DCh 0220 1] Space ID : 01 [SystemIO] [0DDh 0221 1] Bit Width : 20 [0DEh 0222 1] Bit Offset : 00 [0DFh 0223 1] Encoded Access Width : 01 [Byte Access:8] [0E0h 0224 8] Address : 0000000000000610",
				}
			case "MCFG":
				want = []string{
					"Base Address : 00000000E0000000",
					"Segment Group Number : 0000",
					"Start Bus Number : 00",
					"End Bus Number : 00",
				}
			}
			flat := flatten(text)
			for _, w := range want {
				if !strings.Contains(flat, w) {
					t.Errorf("disassembled %s lacks %q:\n%s", sig, w, text)
				}
			}
		}
	}
}
