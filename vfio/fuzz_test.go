package vfio

import (
	"encoding/binary"
	"testing"

	"govmm/pci"
	"govmm/vfio/abi"
)

// FuzzConfigWrites feeds a passed-through function's configuration space
// arbitrary guest writes (offset, size, value triples) and checks what
// VFIO was asked: never more than one interrupt type on at a time, MSI
// on exactly when the guest's capability says so, and the device's
// command register holding only the guest's decode and bus-master bits.
func FuzzConfigWrites(f *testing.F) {
	f.Add([]byte{0x44, 4, 0, 0, 0xe0, 0xfe, 0x4c, 2, 0x41, 0, 0x42, 2, 1, 0})
	f.Add([]byte{0x04, 2, 6, 0, 0x10, 4, 0xff, 0xff, 0xff, 0xff, 0x42, 2, 0x71, 0})
	// MSI-X on with the function masked, vector 0 programmed, unmasked.
	f.Add([]byte{0x8e, 2, 0, 0xc0, 0x00, 3, 0x01, 0xfe, 0x08, 3, 0x41, 0, 0x0c, 3, 0, 0, 0x8e, 2, 0, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, d, ev, r := setup(t, OrderIRQsFirst, true)
		msi := p.msi.cap
		var bar pci.Region
		for _, reg := range r.Regions() {
			if reg.BAR == 0 {
				bar = reg
			}
		}
		for len(data) >= 4 {
			off, size := int(data[0]), int(data[1]%4)+1
			v := binary.LittleEndian.Uint16(data[2:4])
			data = data[4:]
			if data0 := off; size == 4 && v&1 != 0 && data0 < 0x80 {
				// A write into the MSI-X table (0x2000, 4 vectors) or
				// just past it.
				b := make([]byte, 4)
				binary.LittleEndian.PutUint32(b, uint32(v)<<16|uint32(v))
				bar.Dev.Write(0x2000+uint64(off), b)
			} else {
				cfgWrite(r, off, size, uint32(v)|uint32(v)<<16)
			}
			ev.take()
			on := 0
			for _, n := range d.irqsOn {
				if n > 0 {
					on++
				}
			}
			if on > 1 {
				t.Fatalf("interrupt types on at once: %v", d.irqsOn)
			}
			ctl, xctl := cfgRead(r, msi+2, 2), cfgRead(r, p.msix.cap+2, 2)
			if d.irqsOn[abi.PCIMSIIRQ] == 1 && ctl&msiCtlEnable == 0 {
				t.Fatalf("MSI control %#x, device MSI vectors %d", ctl, d.irqsOn[abi.PCIMSIIRQ])
			}
			if d.irqsOn[abi.PCIMSIXIRQ] > 0 && xctl&msixCtlEnable == 0 {
				t.Fatalf("MSI-X control %#x, device MSI-X vectors %d", xctl, d.irqsOn[abi.PCIMSIXIRQ])
			}
			if cmd := binary.LittleEndian.Uint16(d.cfg[4:]); cmd&^cmdPassed != 0 {
				t.Fatalf("device command %#x has bits the guest may not pass", cmd)
			}
		}
	})
}
