package acpi

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// decodePkgLength is the inverse of amlPkgLength, as ACPICA reads it.
func decodePkgLength(b []byte) (total, n int) {
	k := int(b[0] >> 6)
	if k == 0 {
		return int(b[0] & 0x3F), 1
	}
	total = int(b[0] & 0xF)
	for i := 0; i < k; i++ {
		total |= int(b[1+i]) << (4 + 8*i)
	}
	return total, 1 + k
}

func TestPkgLength(t *testing.T) {
	for _, n := range []int{0, 1, 61, 62, 63, 64, 0xFFC, 0xFFD, 0xFFE, 0xFFFFC, 0xFFFFD, 0x100000} {
		enc := amlPkgLength(n)
		total, used := decodePkgLength(enc)
		if used != len(enc) || total != n+len(enc) {
			t.Errorf("PkgLength(%d) = % x decodes to total %d in %d bytes", n, enc, total, used)
		}
	}
	if got := amlPkgLength(62); len(got) != 1 || got[0] != 63 {
		t.Errorf("PkgLength(62) = % x, want 3f", got)
	}
	if got := amlPkgLength(63); !bytes.Equal(got, []byte{0x41, 0x04}) {
		t.Errorf("PkgLength(63) = % x, want 41 04", got)
	}
}

func TestAMLConstants(t *testing.T) {
	for _, c := range []struct {
		got, want []byte
	}{
		{amlInt(0), []byte{0x00}},
		{amlInt(1), []byte{0x01}},
		{amlInt(2), []byte{0x0A, 2}},
		{amlInt(0x1234), []byte{0x0B, 0x34, 0x12}},
		{amlInt(0x12345678), []byte{0x0C, 0x78, 0x56, 0x34, 0x12}},
		{amlInt(1 << 32), []byte{0x0E, 0, 0, 0, 0, 1, 0, 0, 0}},
		{amlString("ab"), []byte{0x0D, 'a', 'b', 0}},
		// iasl: EisaId ("PNP0A03") = 0x030AD041.
		{amlEISAID("PNP0A03"), []byte{0x0C, 0x41, 0xD0, 0x0A, 0x03}},
		{amlNameString("_SB"), []byte("_SB_")},
		{amlNameString("\\_SB"), []byte("\\_SB_")},
		{amlNameString("\\_SB.PCI0"), []byte("\\\x2e_SB_PCI0")},
		{amlNameString("A.B.C"), []byte("\x2f\x03A___B___C___")},
		{amlName("_UID", amlInt(0)), []byte{0x08, '_', 'U', 'I', 'D', 0}},
		{amlPackage(amlInt(5), amlInt(0)), []byte{0x12, 0x05, 0x02, 0x0A, 0x05, 0x00}},
		{amlBuffer([]byte{0x79, 0}), []byte{0x11, 0x05, 0x0A, 0x02, 0x79, 0}},
		{rdIO(0xCF8, 0xCF8, 1, 8), []byte{0x47, 1, 0xF8, 0x0C, 0xF8, 0x0C, 1, 8}},
		{rdMemory32Fixed(0xE0000000, 0x10000000), []byte{0x86, 9, 0, 1, 0, 0, 0, 0xE0, 0, 0, 0, 0x10}},
	} {
		if !bytes.Equal(c.got, c.want) {
			t.Errorf("got % x, want % x", c.got, c.want)
		}
	}
	for _, d := range []struct {
		b    []byte
		size int
	}{
		{rdWordBusNumber(0, 255), 16}, {rdWordIO(0, 0xCF7), 16},
		{rdDWordMemory(0, 1, false), 26}, {rdQWordMemory(0, 1, true), 46},
	} {
		if len(d.b) != d.size || int(d.b[1])|int(d.b[2])<<8 != d.size-3 {
			t.Errorf("descriptor % x: %d bytes, length field %d", d.b, len(d.b), int(d.b[1]))
		}
	}
	for _, bad := range []func(){
		func() { amlNameString("TOOLONG") },
		func() { amlNameString("1ABC") },
		func() { amlEISAID("PNP0A0") },
		func() { amlEISAID("pnp0A03") },
		func() { amlString("\x00") },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("bad AML input accepted")
				}
			}()
			bad()
		}()
	}
}

// TestAMLDisassembles runs iasl -d on a DSDT built from every construct
// the encoder has, including a method and packages long enough to need
// multi-byte PkgLengths.
func TestAMLDisassembles(t *testing.T) {
	iasl, err := exec.LookPath("iasl")
	if err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal("iasl not found (apt-get install -y acpica-tools); required when GOVMM_REQUIRE_KVM=1")
		}
		t.Skip("iasl not found (apt-get install -y acpica-tools)")
	}
	var long [][]byte
	for i := 0; i < 200; i++ {
		long = append(long, amlInt(uint64(i)<<20))
	}
	tb := header("DSDT", 2)
	tb = append(tb, amlScope("\\_SB",
		amlDevice("DEV0",
			amlName("_HID", amlString("GOVM0001")),
			amlName("_STR", amlString("a test device")),
			amlName("BIG", amlPackage(long...)),
			amlName("QW", amlInt(0x123456789A)),
			amlMethod("_STA", 0, amlReturn(amlInt(0x0F))),
			amlName("_CRS", amlResourceTemplate(rdWordBusNumber(0, 7), rdWordIO(0x1000, 0x1FFF), rdIO(0x70, 0x70, 1, 2),
				rdDWordMemory(0x80000000, 0x8FFFFFFF, true), rdQWordMemory(1<<40, 1<<40+1<<30-1, false))),
		))...)
	tb = finish(tb)
	dir := t.TempDir()
	path := filepath.Join(dir, "DSDT.dat")
	if err := os.WriteFile(path, tb, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(iasl, "-d", path)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("iasl -d: %v\n%s", err, out)
	}
	dsl, err := os.ReadFile(filepath.Join(dir, "DSDT.dsl"))
	if err != nil {
		t.Fatal(err)
	}
	flat := flatten(string(dsl))
	for _, w := range []string{
		`Device (DEV0) { Name (_HID, "GOVM0001")`,
		`Name (_STR, "a test device")`,
		"Name (BIG, Package (0xC8) { Zero, 0x00100000, 0x00200000,",
		"0x0C700000 })",
		"Name (QW, 0x000000123456789A)",
		"Method (_STA, 0, NotSerialized) { Return (0x0F) }",
		"WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, 0x0000, 0x0007, 0x0000, 0x0008,",
		"WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x1000, 0x1FFF, 0x0000, 0x1000,",
		"IO (Decode16, 0x0070, 0x0070, 0x01, 0x02, )",
		"DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite, 0x00000000, 0x80000000, 0x8FFFFFFF, 0x00000000, 0x10000000,",
		"QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite, 0x0000000000000000, 0x0000010000000000, 0x000001003FFFFFFF, 0x0000000000000000, 0x0000000040000000,",
	} {
		if !strings.Contains(flat, w) {
			t.Errorf("disassembly lacks %q:\n%s", w, dsl)
		}
	}
	for _, bad := range []string{"Error", "Warning", "Invalid", "Unknown"} {
		if strings.Contains(string(out)+string(dsl), bad) {
			t.Errorf("iasl reports %q:\n%s\n%s", bad, out, dsl)
		}
	}
}
