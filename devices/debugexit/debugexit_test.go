package debugexit

import (
	"encoding/binary"
	"encoding/json"
	"testing"
)

func TestWriteSizes(t *testing.T) {
	cases := []struct {
		data []byte
		want int
	}{
		{[]byte{0x00}, 1},
		{[]byte{0x10}, 0x21},
		{[]byte{0xff}, 0x1ff},
		{[]byte{0x34, 0x12}, 0x2469},
		{[]byte{0x78, 0x56, 0x34, 0x12}, 0x12345678<<1 | 1},
		{[]byte{0xff, 0xff, 0xff, 0xff}, 0xffffffff<<1 | 1},
	}
	for _, c := range cases {
		got := -1
		calls := 0
		d := New(func(s int) { got = s; calls++ })
		for _, off := range []uint64{0, 1, 3} {
			calls = 0
			d.Write(off, c.data)
			if calls != 1 || got != c.want {
				t.Errorf("write %x at +%d: onExit(%#x) called %d times, want onExit(%#x) once", c.data, off, got, calls, c.want)
			}
		}
		if s := d.Save(); !s.Exited || s.LastStatus != int64(c.want) {
			t.Errorf("state after write %x = %+v", c.data, s)
		}
	}
}

func TestReadReturnsZero(t *testing.T) {
	d := New(func(int) { t.Fatal("read must not exit") })
	for _, n := range []int{1, 2, 4} {
		b := make([]byte, n)
		for i := range b {
			b[i] = 0xaa
		}
		d.Read(0, b)
		for _, x := range b {
			if x != 0 {
				t.Fatalf("read %d bytes = %x, want zeroes", n, b)
			}
		}
	}
}

func TestNilCallback(t *testing.T) {
	d := New(nil)
	d.Write(0, []byte{1})
	if !d.Save().Exited {
		t.Fatal("write not recorded")
	}
}

func TestSaveRestore(t *testing.T) {
	d := New(func(int) {})
	d.Write(0, []byte{7})
	b, err := json.Marshal(d.Save())
	if err != nil {
		t.Fatal(err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	called := false
	d2 := New(func(int) { called = true })
	if err := d2.Restore(s); err != nil {
		t.Fatal(err)
	}
	if called {
		t.Fatal("Restore called onExit")
	}
	if d2.Save() != d.Save() {
		t.Fatalf("restored %+v, want %+v", d2.Save(), d.Save())
	}
}

func FuzzAccess(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0x10, 0, 0, 0})
	f.Add([]byte{3, 4, 1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var last int
		d := New(func(s int) { last = s })
		for len(ops) >= 7 {
			off := uint64(ops[0] % Size)
			size := []int{1, 2, 4}[int(ops[1])%3]
			write := ops[2]&1 == 1
			val := binary.LittleEndian.Uint32(ops[3:7])
			ops = ops[7:]
			buf := make([]byte, 4)
			binary.LittleEndian.PutUint32(buf, val)
			buf = buf[:size]
			if write {
				d.Write(off, buf)
				want := int(uint64(val)&(1<<(8*size)-1)<<1 | 1)
				if last != want {
					t.Fatalf("write %#x size %d: status %#x want %#x", val, size, last, want)
				}
			} else {
				d.Read(off, buf)
				for _, x := range buf {
					if x != 0 {
						t.Fatalf("read returned %x", buf)
					}
				}
			}
		}
	})
}
