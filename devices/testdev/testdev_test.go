package testdev

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"testing"
)

func rd64(d *Device, off uint64) uint64 {
	b := make([]byte, 8)
	d.Read(off, b)
	return binary.LittleEndian.Uint64(b)
}

func TestScratchWidths(t *testing.T) {
	d := New()
	for _, n := range []int{1, 2, 4, 8, 16, 32} {
		off := uint64(0x20 * n)
		in := make([]byte, n)
		for i := range in {
			in[i] = byte(n*7 + i)
		}
		d.Write(off, in)
		out := make([]byte, n)
		d.Read(off, out)
		if !bytes.Equal(in, out) {
			t.Fatalf("width %d at %#x: read %x, wrote %x", n, off, out, in)
		}
		if !bytes.Equal(d.Snapshot()[off:off+uint64(n)], in) {
			t.Fatalf("Snapshot does not show width-%d write", n)
		}
	}
	// Overlapping accesses behave like memory (little endian).
	d.Write(0x7f8, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	b := make([]byte, 2)
	d.Read(0x7fb, b)
	if b[0] != 4 || b[1] != 5 {
		t.Fatalf("unaligned read %x", b)
	}
}

func TestOutOfScratch(t *testing.T) {
	d := New()
	before := d.Snapshot()
	d.Write(0x7fc, []byte{1, 2, 3, 4, 5, 6, 7, 8}) // crosses the end
	d.Write(0, make([]byte, 33))                   // too wide
	if !bytes.Equal(before, d.Snapshot()) {
		t.Fatal("an out-of-range write changed scratch")
	}
	b := make([]byte, 8)
	d.Read(0x7fc, b)
	for i := 0; i < 4; i++ { // bytes 0x7fc-0x7ff are not a register either
		if b[i] != 0xff {
			t.Fatalf("crossing read %x", b)
		}
	}
	for _, off := range []uint64{0x818, 0x820, 0xff8} {
		if v := rd64(d, off); v != ^uint64(0) {
			t.Fatalf("read at %#x = %#x, want all ones", off, v)
		}
	}
}

func TestCounters(t *testing.T) {
	d := New()
	d.Write(0x10, []byte{1, 2, 3, 4})      // access 1, write 1
	d.Read(0x12, make([]byte, 2))          // access 2
	if v := rd64(d, RegAccesses); v != 2 { // access 3
		t.Fatalf("accesses %d, want 2", v)
	}
	if v := rd64(d, RegWrites); v != 1 { // access 4
		t.Fatalf("writes %d, want 1", v)
	}
	// Last access is the RegWrites read: offset 0x808, size 8, read.
	if v := rd64(d, RegLast); v != 0x808|8<<16 {
		t.Fatalf("last %#x", v)
	}
	d.Write(0x20, make([]byte, 16))
	if v := rd64(d, RegLast); v != 0x20|16<<16|1<<24 {
		t.Fatalf("last after 16-byte write %#x", v)
	}
	// Read-only registers ignore writes (but the write is counted).
	d.Write(RegAccesses, make([]byte, 8))
	if v := rd64(d, RegAccesses); v != 8 {
		t.Fatalf("accesses %d after write to RO register, want 8", v)
	}
	// A 4-byte read of the upper half of a register.
	b := make([]byte, 4)
	d.Read(RegAccesses+4, b)
	if binary.LittleEndian.Uint32(b) != 0 {
		t.Fatalf("upper half %x", b)
	}
	d.Write(RegReset, []byte{1})
	if a, w, l := d.Counters(); a != 0 || w != 0 || l != 0 {
		t.Fatalf("after reset: %d %d %#x", a, w, l)
	}
	if v := rd64(d, RegAccesses); v != 0 {
		t.Fatalf("accesses %d right after reset", v)
	}
}

func TestSaveRestore(t *testing.T) {
	d := New()
	d.Write(5, []byte{9, 8, 7})
	d.Read(0x800, make([]byte, 8))
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
	if !bytes.Equal(d.Snapshot(), d2.Snapshot()) {
		t.Fatal("scratch differs after restore")
	}
	a1, w1, l1 := d.Counters()
	a2, w2, l2 := d2.Counters()
	if a1 != a2 || w1 != w2 || l1 != l2 {
		t.Fatal("counters differ after restore")
	}
	s.Scratch = s.Scratch[:10]
	if err := d2.Restore(s); err == nil {
		t.Fatal("Restore accepted a short scratch area")
	}
}

func FuzzAccess(f *testing.F) {
	f.Add([]byte{0, 0, 2, 1, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x18, 8, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d := New()
		var model [ScratchSize]byte
		var acc, wr uint64
		for len(ops) >= 12 {
			off := uint64(binary.LittleEndian.Uint16(ops[0:2]) % Size)
			size := []int{1, 2, 4, 8, 16, 32, 3, 33}[int(ops[2])%8]
			write := ops[3]&1 == 1
			val := ops[4:12]
			ops = ops[12:]
			buf := make([]byte, size)
			for i := range buf {
				buf[i] = val[i%8]
			}
			inside := off+uint64(size) <= ScratchSize && size <= MaxAccess
			if write {
				d.Write(off, buf)
				if inside {
					copy(model[off:], buf)
				}
				if off == RegReset {
					acc, wr = 0, 0
				} else {
					acc++
					wr++
				}
			} else {
				d.Read(off, buf)
				if inside && !bytes.Equal(buf, model[off:off+uint64(size)]) {
					t.Fatalf("read %#x+%d = %x, want %x", off, size, buf, model[off:off+uint64(size)])
				}
				acc++
			}
			if a, w, _ := d.Counters(); a != acc || w != wr {
				t.Fatalf("counters %d/%d want %d/%d", a, w, acc, wr)
			}
		}
		if !bytes.Equal(d.Snapshot(), model[:]) {
			t.Fatal("scratch differs from model")
		}
	})
}
