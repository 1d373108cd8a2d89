package virtio

import (
	"encoding/binary"
	"fmt"
)

// The VIRTIO_PCI_CAP_PCI_CFG capability (virtio 1.2 §4.1.4.9) is a
// window onto BAR 0 through configuration space: the driver writes which
// BAR, the offset and the access width (1, 2 or 4 bytes) into the
// capability, then reads or writes its 4-byte pci_cfg_data, and the
// device carries the access out on the BAR. Firmware and boot loaders
// that reach virtio devices before they map BARs use it, and the
// specification requires every device to offer it. It comes last in the
// capability list, so that the capabilities before it keep the offsets
// older snapshots saved them at.
const (
	capPCICfg = 5
	// Offsets inside the capability: virtio_pci_cap's bar, offset and
	// length, then pci_cfg_data.
	cfgCapBar    = 4
	cfgCapOffset = 8
	cfgCapLength = 12
	cfgCapData   = 16
	cfgCapLen    = 20
)

// addPCICfgCap appends the capability; bar, offset, length and the data
// window are the driver's to write.
func (t *PCI) addPCICfgCap() error {
	body := append(vendorCap(capPCICfg, 0, 0, cfgCapLen), 0, 0, 0, 0)
	writable := make([]byte, len(body))
	for _, r := range [][2]int{{cfgCapBar, 1}, {cfgCapOffset, 4}, {cfgCapLength, 4}, {cfgCapData, 4}} {
		for i := range r[1] {
			writable[r[0]-2+i] = 0xff // body starts after the ID and next bytes
		}
	}
	off, err := t.fn.AddCapability(capVendor, body, writable)
	if err != nil {
		return fmt.Errorf("%s: %w", t.dev.Name(), err)
	}
	t.cfgCap = off
	return nil
}

// cfgWindow reports whether a configuration access at off of size bytes
// touches pci_cfg_data and, if so, the BAR 0 access the capability
// selects. An access the specification leaves undefined (another BAR, a
// width other than 1, 2 or 4, an offset not aligned to it or past the
// BAR) does nothing, as on QEMU: the window then reads what was last
// stored in it.
func (t *PCI) cfgWindow(off, size int) (barOff uint64, n int, ok bool) {
	data := t.cfgCap + cfgCapData
	if t.cfgCap == 0 || off >= data+4 || off+size <= data {
		return 0, 0, false
	}
	var b [cfgCapData - cfgCapBar]byte
	t.fn.PeekConfig(t.cfgCap+cfgCapBar, b[:])
	bar := b[0]
	o := binary.LittleEndian.Uint32(b[cfgCapOffset-cfgCapBar:])
	l := binary.LittleEndian.Uint32(b[cfgCapLength-cfgCapBar:])
	if bar != 0 || l != 1 && l != 2 && l != 4 || o%l != 0 || uint64(o)+uint64(l) > barSize {
		return 0, 0, false
	}
	return uint64(o), int(l), true
}

// configRead is the function's OnRead: a read of pci_cfg_data first
// reads the selected bytes of BAR 0 into it.
func (t *PCI) configRead(off, size int) {
	o, n, ok := t.cfgWindow(off, size)
	if !ok {
		return
	}
	var buf [4]byte
	barDev{t}.Read(o, buf[:n])
	t.fn.StoreConfig(t.cfgCap+cfgCapData, buf[:n])
}

// cfgWindowWritten carries a write of pci_cfg_data out on BAR 0, with the
// first length bytes of what pci_cfg_data holds after the write.
func (t *PCI) cfgWindowWritten(off, size int) {
	o, n, ok := t.cfgWindow(off, size)
	if !ok {
		return
	}
	var buf [4]byte
	t.fn.PeekConfig(t.cfgCap+cfgCapData, buf[:n])
	barDev{t}.Write(o, buf[:n])
}
