package pcitestdev

import (
	"testing"
)

// FuzzBARs drives both BARs with arbitrary accesses: each 6-byte record
// is (op/kind, 2-byte offset, size, 2 value bytes). The device must not
// panic, and its state must stay restorable.
func FuzzBARs(f *testing.F) {
	f.Add([]byte{1, 0, 0, 1, 1, 0, 1, 0x01, 0x08, 1, 0x42, 0, 0, 12, 0, 4, 0, 0})
	f.Add([]byte{3, 0, 0, 4, 2, 0, 3, 0x85, 0, 1, 0xFA, 0, 2, 0xFE, 0, 8, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		d, err := New()
		if err != nil {
			t.Fatal(err)
		}
		for ; len(ops) >= 6; ops = ops[6:] {
			b := bar{d, int(ops[0]>>1) & 1}
			off := uint64(ops[1]) | uint64(ops[2])<<8
			data := make([]byte, []int{1, 2, 4, 8}[ops[3]%4])
			copy(data, ops[4:6])
			if ops[0]&1 == 1 {
				b.Write(off, data)
			} else {
				b.Read(off, data)
			}
		}
		if err := d.Restore(d.Save()); err != nil {
			t.Fatal(err)
		}
	})
}
