package vm

import "testing"

// TestPCIWindows checks the 64-bit window sits at the first 1 GiB
// boundary above RAM and above 4 GiB, and the 32-bit window in the hole.
func TestPCIWindows(t *testing.T) {
	for _, c := range []struct {
		mem, base64 uint64
	}{
		{512 << 20, 4 << 30},
		{3 << 30, 4 << 30},
		{3<<30 + 4096, 5 << 30},
		{4 << 30, 5 << 30},
		{64 << 30, 65 << 30},
	} {
		w := pciWindows(c.mem)
		if w.Mem64Base != c.base64 || w.Mem64End-w.Mem64Base != 32<<30 {
			t.Errorf("%d MiB RAM: 64-bit window [%#x, %#x)", c.mem>>20, w.Mem64Base, w.Mem64End)
		}
		if w.Mem32Base != 0xC0000000 || w.Mem32End != 0xE0000000 || w.IOBase != 0xC000 || w.IOEnd != 0x10000 {
			t.Errorf("%d MiB RAM: windows %+v", c.mem>>20, w)
		}
	}
}
