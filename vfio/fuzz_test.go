package vfio

import (
	"encoding/binary"
	"testing"

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
	f.Fuzz(func(t *testing.T, data []byte) {
		p, d, ev, r := setup(t, OrderIRQsFirst, true)
		msi := p.msi.cap
		for len(data) >= 4 {
			off, size := int(data[0]), int(data[1]%4)+1
			v := binary.LittleEndian.Uint16(data[2:4])
			data = data[4:]
			cfgWrite(r, off, size, uint32(v)|uint32(v)<<16)
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
			ctl := cfgRead(r, msi+2, 2)
			if (ctl&msiCtlEnable != 0) != (d.irqsOn[abi.PCIMSIIRQ] == 1) {
				t.Fatalf("MSI control %#x, device MSI vectors %d", ctl, d.irqsOn[abi.PCIMSIIRQ])
			}
			if cmd := binary.LittleEndian.Uint16(d.cfg[4:]); cmd&^cmdPassed != 0 {
				t.Fatalf("device command %#x has bits the guest may not pass", cmd)
			}
		}
	})
}
