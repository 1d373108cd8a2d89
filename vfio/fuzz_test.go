package vfio

import (
	"encoding/binary"
	"fmt"
	"testing"

	"govmm/pci"
	"govmm/vfio/abi"
)

// FuzzConfigWrites feeds a passed-through function's configuration space
// arbitrary guest writes (offset, size, value triples) and checks what
// VFIO was asked: never more than one interrupt type on at a time, MSI
// on exactly when the guest's capability says so, and the device's
// command register holding only the guest's decode and bus-master bits.
// The first byte picks the device's MSI capability: bit 0 per-vector
// masking (4 vectors), bit 1 a 32-bit address. With masking, an MSI
// vector must have its irqfd exactly when MSI is on, the vector enabled
// and its mask bit clear; the mask bits beyond the 4 vectors read 0, and
// the pending bits read 0 (the fake device sends nothing).
func FuzzConfigWrites(f *testing.F) {
	f.Add([]byte{0, 0x44, 4, 0, 0, 0xe0, 0xfe, 0x4c, 2, 0x41, 0, 0x42, 2, 1, 0})
	f.Add([]byte{0, 0x04, 2, 6, 0, 0x10, 4, 0xff, 0xff, 0xff, 0xff, 0x42, 2, 0x71, 0})
	// MSI-X on with the function masked, vector 0 programmed, unmasked.
	f.Add([]byte{0, 0x8e, 2, 0, 0xc0, 0x00, 3, 0x01, 0xfe, 0x08, 3, 0x41, 0, 0x0c, 3, 0, 0, 0x8e, 2, 0, 0x80})
	// Maskable MSI: vectors 0-2 masked, 4 vectors enabled, vector 1
	// unmasked, then 2 vectors.
	f.Add([]byte{1, 0x50, 3, 0x07, 0, 0x42, 2, 0x21, 0, 0x50, 3, 0x05, 0, 0x42, 2, 0x11, 0})
	f.Add([]byte{3, 0x4c, 3, 0x0f, 0, 0x42, 2, 0x21, 0, 0x4c, 0, 0x00, 0, 0x50, 3, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		var tweaks []func(*fakeDev)
		if data[0]&1 != 0 {
			tweaks = append(tweaks, maskable(data[0]&2 == 0, 2))
		}
		data = data[1:]
		ev := &events{}
		vm := &fakeVM{ev: ev}
		p, d, r := setupOn(t, vm, ev, vm, OrderIRQsFirst, true, tweaks...)
		msi := p.msi.cap
		bound := map[int]bool{} // GSIs with an irqfd
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
			for _, l := range ev.take() {
				var gsi int
				if _, err := fmt.Sscanf(l, "irqfd gsi=%d", &gsi); err == nil {
					bound[gsi] = true
				} else if _, err := fmt.Sscanf(l, "deirqfd gsi=%d", &gsi); err == nil {
					delete(bound, gsi)
				}
			}
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
			if m := p.msi; m.pvm {
				mask, pend := cfgRead(r, msi+m.maskOff(), 4), cfgRead(r, msi+m.pendingOff(), 4)
				if mask&^0xf != 0 || pend != 0 {
					t.Fatalf("mask bits %#x, pending bits %#x: want only 4 mask bits and nothing pending", mask, pend)
				}
				n := 1 << min(int(ctl>>4&7), 2)
				for v, gsi := range m.gsis {
					want := m.on && v < n && mask>>v&1 == 0
					if bound[int(gsi)] != want {
						t.Fatalf("MSI vector %d (GSI %d): irqfd %v, want %v (control %#x, mask %#x, MSI on %v)", v, gsi, bound[int(gsi)], want, ctl, mask, m.on)
					}
				}
				if m.on && ctl&msiCtlEnable == 0 {
					t.Fatalf("MSI on with control %#x", ctl)
				}
			}
		}
	})
}
