package virtio_test

import (
	"encoding/binary"
	"testing"

	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// pciCfgCap finds the VIRTIO_PCI_CAP_PCI_CFG capability as a driver
// does: the vendor capability whose cfg_type is 5.
func pciCfgCap(t testing.TB, f *pci.Function) int {
	t.Helper()
	var found []int
	for _, c := range f.Capabilities(0x09) {
		var b [3]byte
		f.ReadConfig(c+2, b[:])
		if b[1] == 5 {
			if b[0] != 20 {
				t.Fatalf("PCI_CFG capability at %#x: cap_len %d, want 20", c, b[0])
			}
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d VIRTIO_PCI_CAP_PCI_CFG capabilities, want 1", len(found))
	}
	return found[0]
}

// cfgSelect writes the capability's bar, offset and length.
func cfgSelect(f *pci.Function, c int, bar byte, off, length uint32) {
	f.WriteConfig(c+4, []byte{bar})
	var b [8]byte
	binary.LittleEndian.PutUint32(b[:], off)
	binary.LittleEndian.PutUint32(b[4:], length)
	f.WriteConfig(c+8, b[:])
}

// cfgRead reads pci_cfg_data as a 4-byte configuration read.
func cfgRead(f *pci.Function, c int) uint32 {
	var b [4]byte
	f.ReadConfig(c+16, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func cfgWrite(f *pci.Function, c int, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	f.WriteConfig(c+16, b[:])
}

// TestPCICfgWindow drives a device through VIRTIO_PCI_CAP_PCI_CFG alone
// (virtio 1.2 §4.1.4.9): reads and writes of pci_cfg_data carry out the
// access the capability selects on BAR 0, and a selection the
// specification leaves undefined does nothing.
func TestPCICfgWindow(t *testing.T) {
	d, tr := newRNG(t)
	f := tr.Function()
	c := pciCfgCap(t, f)
	// Last in the list: the capabilities older snapshots saved keep
	// their offsets.
	var next [1]byte
	f.ReadConfig(c+1, next[:])
	if next[0] != 0 {
		t.Errorf("PCI_CFG capability at %#x is not the last (next %#x)", c, next[0])
	}
	for _, o := range f.Capabilities(-1) {
		if o > c {
			t.Errorf("capability at %#x after PCI_CFG at %#x", o, c)
		}
	}
	// The common configuration's offset in BAR 0, from its capability.
	var cb [4]byte
	f.ReadConfig(pciCfgCapOf(t, f, 1)+8, cb[:])
	common := binary.LittleEndian.Uint32(cb[:])

	// num_queues (2 bytes): the rng has one queue.
	cfgSelect(f, c, 0, common+0x12, 2)
	if got := cfgRead(f, c) & 0xffff; got != 1 {
		t.Errorf("num_queues through the window: %d, want 1", got)
	}
	// device_feature_select = 1 written through the window, then the
	// high feature word read through it: VERSION_1 is bit 32.
	cfgSelect(f, c, 0, common+0x00, 4)
	cfgWrite(f, c, 1)
	if got := d.Common(0x00, 4); got != 1 {
		t.Fatalf("device_feature_select after a window write: %d, want 1", got)
	}
	cfgSelect(f, c, 0, common+0x04, 4)
	if got := cfgRead(f, c); got&1 == 0 {
		t.Errorf("device_feature[63:32] through the window: %#x, VERSION_1 missing", got)
	}
	// device_status (1 byte): ACKNOWLEDGE through the window.
	cfgSelect(f, c, 0, common+0x14, 1)
	cfgWrite(f, c, virtio.StatusAcknowledge)
	if st := d.Status(); st != virtio.StatusAcknowledge {
		t.Fatalf("status after a window write: %#x, want ACKNOWLEDGE", st)
	}
	if got := cfgRead(f, c) & 0xff; got != virtio.StatusAcknowledge {
		t.Errorf("status read through the window: %#x", got)
	}

	// Undefined selections: another BAR, a width of 3, an unaligned
	// offset, an offset past the BAR. Writes change nothing; reads give
	// back what the window last held.
	held := cfgRead(f, c)
	for _, s := range []struct {
		name   string
		bar    byte
		off, n uint32
	}{
		{"BAR 1", 1, common + 0x14, 1},
		{"width 3", 0, common + 0x14, 3},
		{"width 8", 0, common + 0x14, 8},
		{"unaligned", 0, common + 0x13, 2},
		{"past the BAR", 0, 0xfffffffe, 2},
	} {
		cfgSelect(f, c, s.bar, s.off, s.n)
		cfgWrite(f, c, 0x0f)
		if st := d.Status(); st != virtio.StatusAcknowledge {
			t.Errorf("%s: a window write reached the device: status %#x", s.name, st)
		}
		cfgWrite(f, c, held)
		if got := cfgRead(f, c); got != held {
			t.Errorf("%s: window read %#x, want the bytes it held, %#x", s.name, got, held)
		}
	}
}

// TestPCICfgDoorbell: a driver that notifies through the window (as
// firmware without a mapped BAR would) gets its buffer served.
func TestPCICfgDoorbell(t *testing.T) {
	d, tr := newRNG(t)
	f := tr.Function()
	c := pciCfgCap(t, f)
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	var nb [4]byte
	f.ReadConfig(pciCfgCapOf(t, f, 2)+8, nb[:])
	notify := binary.LittleEndian.Uint32(nb[:])
	// One 64-byte writable buffer as descriptor 0, made available by
	// hand: Put would ring the doorbell through the BAR.
	desc, avail, _ := d.Rings(0)
	le := binary.LittleEndian
	le.PutUint64(d.Mem.B[desc:], virtiotest.BufBase)
	le.PutUint32(d.Mem.B[desc+8:], 64)
	le.PutUint16(d.Mem.B[desc+12:], 2) // VIRTQ_DESC_F_WRITE
	le.PutUint16(d.Mem.B[avail+4:], 0)
	le.PutUint16(d.Mem.B[avail+2:], 1)
	cfgSelect(f, c, 0, notify, 2)
	cfgWrite(f, c, 0)
	u, err := d.Wait(0, wait)
	if err != nil {
		t.Fatalf("a doorbell through the window: %v", err)
	}
	if u.ID != 0 || u.Len != 64 {
		t.Fatalf("used %+v, want descriptor 0 with 64 bytes", u)
	}
}

// pciCfgCapOf is the offset of the vendor capability of cfg_type typ.
func pciCfgCapOf(t testing.TB, f *pci.Function, typ byte) int {
	t.Helper()
	for _, c := range f.Capabilities(0x09) {
		var b [1]byte
		f.ReadConfig(c+3, b[:])
		if b[0] == typ {
			return c
		}
	}
	t.Fatalf("no vendor capability of type %d", typ)
	return 0
}
