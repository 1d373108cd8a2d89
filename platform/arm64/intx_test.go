package arm64

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/fdt"
	"govmm/irq/routes"
	"govmm/pci"
	"govmm/virtio/blk"
	"govmm/virtio/virtiotest"
)

// findPhandle returns the node of tr whose phandle is ph.
func findPhandle(n *fdt.Node, ph uint32) *fdt.Node {
	if v, ok := n.Prop("phandle"); ok && len(v) == 4 && binary.BigEndian.Uint32(v) == ph {
		return n
	}
	for _, c := range n.Children {
		if f := findPhandle(c, ph); f != nil {
			return f
		}
	}
	return nil
}

func cell(t *testing.T, n *fdt.Node, name string) int {
	t.Helper()
	v, ok := n.Prop(name)
	if !ok || len(v) != 4 {
		t.Fatalf("node %s: %s is %x, want one cell", n.Name, name, v)
	}
	return int(binary.BigEndian.Uint32(v))
}

// mapEntry is one decoded interrupt-map entry.
type mapEntry struct {
	child  []uint32 // unit address and interrupt specifier
	parent *fdt.Node
	spec   []uint32 // the parent's interrupt specifier
}

// decodeInterruptMap walks the host bridge's interrupt-map the way
// Linux's of_irq_parse_raw does: the child unit address (#address-cells
// of the bridge) and specifier (#interrupt-cells), the parent's phandle,
// then the parent's unit address and specifier, sized by the parent's
// own #address-cells and #interrupt-cells.
func decodeInterruptMap(t *testing.T, tr *fdt.Tree, n *fdt.Node) (mask []uint32, entries []mapEntry) {
	t.Helper()
	ac, ic := cell(t, n, "#address-cells"), cell(t, n, "#interrupt-cells")
	mv, ok := n.Prop("interrupt-map-mask")
	if !ok {
		t.Fatal("no interrupt-map-mask")
	}
	mask = u32s(mv)
	if len(mask) != ac+ic {
		t.Fatalf("interrupt-map-mask has %d cells, want %d", len(mask), ac+ic)
	}
	mv, ok = n.Prop("interrupt-map")
	if !ok {
		t.Fatal("no interrupt-map")
	}
	m := u32s(mv)
	for len(m) > 0 {
		if len(m) < ac+ic+1 {
			t.Fatalf("interrupt-map ends inside an entry: %#x", m)
		}
		e := mapEntry{child: m[:ac+ic]}
		if e.parent = findPhandle(tr.Root, m[ac+ic]); e.parent == nil {
			t.Fatalf("interrupt-map entry %#x: no node with phandle %d", m[:ac+ic+1], m[ac+ic])
		}
		m = m[ac+ic+1:]
		if _, ok := e.parent.Prop("interrupt-controller"); !ok {
			t.Fatalf("interrupt-map parent %s is not an interrupt controller", e.parent.Name)
		}
		pac, pic := cell(t, e.parent, "#address-cells"), cell(t, e.parent, "#interrupt-cells")
		if len(m) < pac+pic {
			t.Fatalf("interrupt-map ends inside the parent part of an entry")
		}
		for _, a := range m[:pac] {
			if a != 0 {
				t.Errorf("interrupt-map parent unit address %#x, want zeros", m[:pac])
			}
		}
		e.spec = m[pac : pac+pic]
		m = m[pac+pic:]
		entries = append(entries, e)
	}
	return mask, entries
}

// TestINTxInterruptMap decodes the host bridge's interrupt-map and looks
// up every slot's INTA-INTD in it as Linux does (the masked unit address
// and pin against each entry): each resolves to exactly one GIC SPI,
// level-triggered active high, by the standard swizzle (slot + pin) mod 4
// over SPIs 3-6, the lines QEMU's virt board uses; and PCIINTxSPI, which
// the virtio functions' irqfds use, agrees.
func TestINTxInterruptMap(t *testing.T) {
	tr, _ := tree(t, 1)
	pcie := tr.Lookup(PCIPath)
	if pcie == nil {
		t.Fatal("no PCI host bridge")
	}
	mask, entries := decodeInterruptMap(t, tr, pcie)
	if len(entries) != 16 {
		t.Errorf("%d interrupt-map entries, want 16 (4 slots x 4 pins, the mask repeating them)", len(entries))
	}
	gic := tr.Lookup(fmt.Sprintf("/intc@%x", GICDistBase))
	seen := map[uint32]bool{}
	for slot := range 32 {
		for pin := 1; pin <= 4; pin++ {
			key := []uint32{uint32(slot) << 11, 0, 0, uint32(pin)}
			var hit []mapEntry
			for _, e := range entries {
				match := true
				for i := range key {
					if key[i]&mask[i] != e.child[i] {
						match = false
					}
				}
				if match {
					hit = append(hit, e)
				}
			}
			if len(hit) != 1 {
				t.Fatalf("slot %d INT%c: %d interrupt-map entries match, want 1", slot, 'A'+pin-1, len(hit))
			}
			e := hit[0]
			want := uint32(3 + (slot+pin-1)%4)
			if e.parent != gic || len(e.spec) != 3 || e.spec[0] != gicSPI || e.spec[1] != want || e.spec[2] != irqLevelHigh {
				t.Errorf("slot %d INT%c maps to %s %v, want the GIC's SPI %d level-high", slot, 'A'+pin-1, e.parent.Name, e.spec, want)
			}
			if got := PCIINTxSPI(slot, pin-1); got != want {
				t.Errorf("PCIINTxSPI(%d, %d) = %d, the device tree says %d", slot, pin-1, got, want)
			}
			seen[e.spec[1]] = true
		}
	}
	if len(seen) != PCINumINTxSPIs {
		t.Errorf("the pins use SPIs %v, want %d of them", seen, PCINumINTxSPIs)
	}
	for spi := range seen {
		if spi == UARTSPI || 32+spi >= NumIRQs {
			t.Errorf("INTx SPI %d is the UART's or past the vGIC's %d interrupts", spi, NumIRQs)
		}
	}
}

// TestINTxOnPCI builds a disk and an entropy device as the arm64 machine
// does, after routeINTx: the INTx SPIs' GSIs are committed as irqchip
// routes to those SPIs, each function has Interrupt Pin 1 (INTA) and its
// slot's SPI as Interrupt Line; with MSI-X off, a completion of the
// entropy device assigns a resample irqfd on its SPI's GSI through the
// accelerator (KVM's resampler, not a userspace IOAPIC) and signals it;
// an EOI (the resample eventfd) with the ISR unread raises it again, and
// after the ISR is read the next EOI leaves it low.
func TestINTxOnPCI(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	vm, table := virtiotest.NewVM()
	defer table.Close()
	if err := routeINTx(table); err != nil {
		t.Fatal(err)
	}
	for gsi := uint32(0); gsi < routes.NumReserved; gsi++ {
		r := vm.Routes[gsi]
		intx := gsi >= PCIINTxSPIBase && gsi < PCIINTxSPIBase+PCINumINTxSPIs
		if intx != (r.Kind == accel.RouteIrqchip) || (intx && (r.Chip != 0 || r.Pin != gsi)) {
			t.Errorf("committed route of GSI %d: %+v (want an irqchip route to SPI %d only for the INTx SPIs)", gsi, r, gsi)
		}
	}
	mem, err := virtiotest.NewMem(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	root := pci.NewRoot(PCIWindows())
	set, err := addVirtio(VirtioConfig{Disks: []blk.Config{{Path: img}}, RNG: true}, root, table, &devIDs{ids: map[uint32]uint32{}}, mem, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := set.Close(); err != nil {
			t.Error(err)
		}
	}()
	for slot := 1; slot <= 2; slot++ {
		var b [2]byte
		root.Function(slot, 0).ReadConfig(pci.RegInterruptLine, b[:])
		if want := PCIINTxSPI(slot, 0); b[0] != byte(want) || b[1] != 1 {
			t.Errorf("00:%02x.0 Interrupt Line %d, Pin %d: want %d and 1 (INTA)", slot, b[0], b[1], want)
		}
	}
	tr := set.Devices[1].Transport
	if st := tr.INTx(); !st.Present || st.GSI != PCIINTxSPI(2, 0) {
		t.Fatalf("entropy device INTx %+v, want INTA on GSI %d", st, PCIINTxSPI(2, 0))
	}
	d, err := virtiotest.New(tr, mem, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Init(0, 8); err != nil {
		t.Fatal(err)
	}
	// MSI-X off, as Linux leaves it with pci=nomsi.
	caps := tr.Function().Capabilities(pci.CapIDMSIX)
	if len(caps) != 1 {
		t.Fatal("no MSI-X capability")
	}
	tr.Function().WriteConfig(caps[0]+2, []byte{0, 0})
	waitINTx := func(asserted bool, raises uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st := tr.INTx()
			if st.Asserted == asserted && st.Raises == raises {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("INTx %+v, want asserted %v after %d raises", st, asserted, raises)
			}
			time.Sleep(time.Millisecond)
		}
	}
	d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase, Len: 64, Write: true}}, 0)
	if _, err := d.Wait(0, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitINTx(true, 1)
	resample := -1
	for _, f := range vm.IRQFDs {
		if f.GSI == PCIINTxSPI(2, 0) {
			resample = f.ResampleFD
		}
	}
	if resample < 0 {
		t.Fatalf("no resample irqfd on GSI %d at the accelerator: %+v", PCIINTxSPI(2, 0), vm.IRQFDs)
	}
	eoi := func() {
		t.Helper()
		var one [8]byte
		binary.LittleEndian.PutUint64(one[:], 1)
		if _, err := unix.Write(resample, one[:]); err != nil {
			t.Fatal(err)
		}
	}
	eoi() // the ISR was not read: raised again
	waitINTx(true, 2)
	var isr [4]byte
	tr.BAR().Read(0x1000, isr[:])
	if isr[0] != 1 {
		t.Fatalf("ISR %#x, want 1 (queue)", isr[0])
	}
	eoi()
	time.Sleep(50 * time.Millisecond)
	waitINTx(false, 2)
}
