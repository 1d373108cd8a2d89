package pci

import (
	"testing"

	"govmm/devices/bus"
	"govmm/platform"
)

// fuzzMachine is a bus with the host bridge and a function with every
// BAR kind, reachable through the ports, the ECAM window and the BARs.
func fuzzMachine(t *testing.T) (r *Root, f *Function, pio, mmio *bus.Bus) {
	r = NewRoot(testWindows)
	f, _, _, _ = testFunction(t)
	if _, err := f.AddCapability(0x09, []byte{6, 0, 0, 0}, []byte{0, 0xff, 0x0f, 0}); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(1, f); err != nil {
		t.Fatal(err)
	}
	pio, mmio = bus.New("pio", nil), bus.New("mmio", nil)
	if err := r.RegisterPorts(pio); err != nil {
		t.Fatal(err)
	}
	if err := mmio.Register(platform.PCIECAMBase, platform.PCIECAMSize, "ecam", r.ECAM()); err != nil {
		t.Fatal(err)
	}
	pio.SetFallback(r.IOSpace())
	mmio.SetFallback(r.MemSpace())
	return r, f, pio, mmio
}

// checkInvariants checks what no guest write may change.
func checkInvariants(t *testing.T, r *Root, f *Function) {
	t.Helper()
	if got := cfgRead32(f, RegVendorID); got != 0x56781234 {
		t.Fatalf("IDs changed to %#x", got)
	}
	if got := cfgRead32(r.Function(0, 0), RegVendorID); got != 0x00081b36 {
		t.Fatalf("host bridge IDs changed to %#x", got)
	}
	if cfgRead32(f, RegBAR0)&15 != 0 || cfgRead32(f, RegBAR0+4)&3 != 1 || cfgRead32(f, RegBAR0+8)&15 != 0xC {
		t.Fatal("BAR type bits changed")
	}
	if cfgRead32(f, RegBAR0+16) != 0 || cfgRead32(f, RegROM) != 0 {
		t.Fatal("unimplemented BAR or ROM became writable")
	}
	if got := f.Capabilities(-1); len(got) != 1 || got[0] != 0x40 {
		t.Fatalf("capability list changed: %v", got)
	}
	for _, reg := range r.Regions() {
		if reg.Size == 0 || reg.Base == 0 || reg.Base+reg.Size < reg.Base || reg.Space == SpaceIO && reg.Base+reg.Size > 1<<16 {
			t.Fatalf("bad decoded region %+v", reg)
		}
	}
}

// FuzzConfigPorts drives mechanism #1 with arbitrary port accesses: each
// 7-byte record is (op, port offset, size, 4 value bytes).
func FuzzConfigPorts(f *testing.F) {
	f.Add([]byte{1, 0, 4, 0x10, 0x08, 0, 0x80, 1, 4, 4, 0xff, 0xff, 0xff, 0xff, 0, 4, 4, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 4, 0x04, 0x08, 0, 0x80, 1, 6, 2, 0xff, 0xff, 0, 0, 0, 7, 2, 0, 0, 0, 0})
	f.Add([]byte{1, 3, 1, 1, 0, 0, 0, 1, 0, 4, 0, 0, 0, 0x80, 0, 0, 4, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r, fn, pio, _ := fuzzMachine(t)
		for ; len(ops) >= 7; ops = ops[7:] {
			port := uint64(platform.PortPCIConfig) + uint64(ops[1]%8)
			n := []int{1, 2, 4, 8}[ops[2]%4]
			data := make([]byte, n)
			copy(data, ops[3:7])
			if ops[0]&1 == 1 {
				pio.Write(port, data)
			} else {
				pio.Read(port, data)
			}
		}
		checkInvariants(t, r, fn)
	})
}

// FuzzECAM drives the ECAM window: each 8-byte record is (op, size, a
// 3-byte offset spread over the 256 MiB window, 3 value bytes); then it
// accesses the last byte of every decoding BAR.
func FuzzECAM(f *testing.F) {
	f.Add([]byte{1, 2, 0x10, 0x80, 0, 0xff, 0xff, 0xff, 0, 2, 0x10, 0x80, 0, 0, 0, 0})
	f.Add([]byte{1, 1, 0x04, 0x80, 0, 3, 0, 0, 1, 2, 0x14, 0x80, 0, 0x01, 0xff, 0})
	f.Add([]byte{1, 3, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r, fn, pio, mmio := fuzzMachine(t)
		for ; len(ops) >= 8; ops = ops[8:] {
			off := uint64(ops[2]) | uint64(ops[3])<<8 | uint64(ops[4])<<16
			// Spread the 24 bits over the window: bus from the top
			// byte, so both bus 0 and the rest are reached.
			off = off&0xfffff | uint64(ops[4]&0xf0)<<16
			n := []int{1, 2, 4, 8}[ops[1]%4]
			data := make([]byte, n)
			copy(data, ops[5:8])
			if ops[0]&1 == 1 {
				mmio.Write(platform.PCIECAMBase+off, data)
			} else {
				mmio.Read(platform.PCIECAMBase+off, data)
			}
		}
		checkInvariants(t, r, fn)
		b := make([]byte, 4)
		for _, reg := range r.Regions() {
			if reg.Space == SpaceIO {
				pio.Read(reg.Base+reg.Size-1, b)
			} else {
				mmio.Write(reg.Base+reg.Size-1, b)
			}
		}
	})
}

// FuzzFunctionConfig writes and reads a function's configuration space at
// any offset and size, including beyond 256 and negative offsets, then
// saves and restores it.
func FuzzFunctionConfig(f *testing.F) {
	f.Add([]byte{0x10, 4, 0xff, 0xff, 0xff, 0xff, 0x04, 2, 3, 0, 0, 0})
	f.Add([]byte{0x3c, 2, 0xff, 0xff, 0, 0, 0x40, 4, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r, fn, _, _ := fuzzMachine(t)
		for ; len(ops) >= 6; ops = ops[6:] {
			off := int(int8(ops[0])) * 3 // -384..381
			n := int(ops[1] % 9)
			data := make([]byte, n)
			copy(data, ops[2:6])
			if n%2 == 1 {
				fn.WriteConfig(off, data)
			} else {
				fn.ReadConfig(off, data)
			}
		}
		checkInvariants(t, r, fn)
		s := r.Save()
		r2, fn2, _, _ := fuzzMachine(t)
		if err := r2.Restore(s); err != nil {
			t.Fatal(err)
		}
		a, b := fn.Save().Config, fn2.Save().Config
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("restored config differs at %#x: %#x != %#x", i, b[i], a[i])
			}
		}
	})
}
