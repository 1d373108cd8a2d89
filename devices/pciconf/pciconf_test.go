package pciconf

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	"govmm/devices/bus"
)

func le32(v uint32) []byte { b := make([]byte, 4); binary.LittleEndian.PutUint32(b, v); return b }

func TestLinuxType1Probe(t *testing.T) {
	// The sequence of arch/x86/pci/direct.c pci_check_type1, through a bus
	// with the two views registered as the VMM does.
	d := New()
	b := bus.New("pio", nil)
	if err := b.Register(0xCF8, AddressSize, "pci-addr", d.AddressPort()); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0xCFC, DataSize, "pci-data", d.DataPort()); err != nil {
		t.Fatal(err)
	}
	b.Write(0xCFB, []byte{0x01}) // unclaimed: mechanism select byte
	saved := make([]byte, 4)
	b.Read(0xCF8, saved)
	b.Write(0xCF8, le32(0x80000000))
	got := make([]byte, 4)
	b.Read(0xCF8, got)
	if binary.LittleEndian.Uint32(got) != 0x80000000 {
		t.Fatalf("CONFIG_ADDRESS read back %#x", binary.LittleEndian.Uint32(got))
	}
	// Vendor/device of 00:00.0 and any other function: no device.
	for _, addr := range []uint32{0x80000000, 0x80000800, 0x8000f800, 0x80ff0000} {
		b.Write(0xCF8, le32(addr))
		v := make([]byte, 4)
		b.Read(0xCFC, v)
		if binary.LittleEndian.Uint32(v) != 0xffffffff {
			t.Fatalf("config read at %#x = %x, want all ones", addr, v)
		}
		w := []byte{0}
		b.Read(0xCFE, w) // byte read of the high half of register 0
		if w[0] != 0xff {
			t.Fatalf("byte read at 0xCFE = %#x", w[0])
		}
	}
	b.Write(0xCF8, saved)
	b.Read(0xCF8, got)
	if string(got) != string(saved) {
		t.Fatalf("restored latch %x, want %x", got, saved)
	}
}

func TestNarrowWritesIgnored(t *testing.T) {
	d := New()
	d.Write(0, le32(0x80001234))
	d.Write(0, []byte{0x55})       // byte write to 0xCF8
	d.Write(0, []byte{0x55, 0x66}) // word write
	d.Write(1, []byte{0x06})       // 0xCF9: not ours
	if d.Save().Address != 0x80001234 {
		t.Fatalf("latch %#x changed by a narrow write", d.Save().Address)
	}
	b := []byte{0, 0}
	d.Read(0, b)
	if b[0] != 0x34 || b[1] != 0x12 {
		t.Fatalf("16-bit latch read %x", b)
	}
	d.Read(2, b)
	if b[0] != 0xff || b[1] != 0xff {
		t.Fatalf("read at 0xCFA = %x, want all ones", b)
	}
	d.Write(4, le32(0))
	v := make([]byte, 4)
	d.Read(4, v)
	if binary.LittleEndian.Uint32(v) != 0xffffffff {
		t.Fatalf("data write stuck: %x", v)
	}
	if d.Save().DataWrites != 1 {
		t.Fatalf("DataWrites = %d", d.Save().DataWrites)
	}
}

func TestSaveRestore(t *testing.T) {
	d := New()
	d.Write(0, le32(0x8000abcc))
	d.Write(4, []byte{1})
	j, err := json.Marshal(d.Save())
	if err != nil {
		t.Fatal(err)
	}
	var s State
	if err := json.Unmarshal(j, &s); err != nil {
		t.Fatal(err)
	}
	d2 := New()
	if err := d2.Restore(s); err != nil {
		t.Fatal(err)
	}
	if d2.Save() != d.Save() {
		t.Fatalf("restored %+v want %+v", d2.Save(), d.Save())
	}
	b := make([]byte, 4)
	d2.Read(0, b)
	if binary.LittleEndian.Uint32(b) != 0x8000abcc {
		t.Fatalf("restored latch reads %x", b)
	}
}

func FuzzAccess(f *testing.F) {
	f.Add([]byte{0, 2, 1, 0, 0, 0, 0x80, 4, 2, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 1, 6, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d := New()
		var latch uint32
		for len(ops) >= 7 {
			off := uint64(ops[0] % Size)
			size := []int{1, 2, 4}[int(ops[1])%3]
			write := ops[2]&1 == 1
			val := binary.LittleEndian.Uint32(ops[3:7])
			ops = ops[7:]
			buf := le32(val)[:size]
			if write {
				d.Write(off, buf)
				if off == 0 && size == 4 {
					latch = val
				}
			} else {
				d.Read(off, buf)
				for i, x := range buf {
					want := byte(0xff)
					if off == 0 {
						want = byte(latch >> (8 * i))
					}
					if x != want {
						t.Fatalf("read off %d size %d = %x (latch %#x)", off, size, buf, latch)
					}
				}
			}
			if d.Save().Address != latch {
				t.Fatalf("latch %#x want %#x", d.Save().Address, latch)
			}
		}
	})
}
