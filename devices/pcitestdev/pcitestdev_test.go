package pcitestdev

import (
	"encoding/binary"
	"testing"

	"govmm/devices/bus"
	"govmm/pci"
	"govmm/platform"
)

type machine struct {
	pio, mmio *bus.Bus
	root      *pci.Root
	dev       *Device
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	d, err := New()
	if err != nil {
		t.Fatal(err)
	}
	r := pci.NewRoot(pci.Windows{IOBase: platform.PortPCIIOWindow, IOEnd: platform.PortPCIIOEnd,
		Mem32Base: platform.PCIMMIO32Base, Mem32End: platform.PCIMMIO32End})
	if err := r.Add(Slot, d.Function()); err != nil {
		t.Fatal(err)
	}
	m := &machine{pio: bus.New("pio", nil), mmio: bus.New("mmio", nil), root: r, dev: d}
	m.pio.SetFallback(r.IOSpace())
	m.mmio.SetFallback(r.MemSpace())
	return m
}

// ops is one BAR seen the way kvm-unit-tests' pci-testdev.c sees it.
type ops struct {
	b    *bus.Bus
	base uint64
}

func (o ops) readb(off uint64) byte {
	var b [1]byte
	o.b.Read(o.base+off, b[:])
	return b[0]
}

func (o ops) readl(off uint64) uint32 {
	var b [4]byte
	o.b.Read(o.base+off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (o ops) writeb(off uint64, v byte) { o.b.Write(o.base+off, []byte{v}) }

// one runs kvm-unit-tests' pci_testdev_one: select the test, check the
// count is zero, read width, data and offset, write 16 times, and read
// the count back.
func (o ops) one(t *testing.T, n int) uint32 {
	t.Helper()
	o.writeb(0, byte(n))
	if c := o.readl(offCount); c != 0 {
		t.Fatalf("test %d: count %d after selection", n, c)
	}
	if w := o.readb(1); w != 1 {
		t.Fatalf("test %d: width %d", n, w)
	}
	sig := o.readl(8)
	off := o.readl(4)
	for i := 0; i < 16; i++ {
		o.writeb(uint64(off), byte(sig))
	}
	return o.readl(offCount)
}

func TestKVMUnitTestsFlow(t *testing.T) {
	m := newMachine(t)
	memBase, ok := m.dev.Function().BARAddress(0)
	ioBase, ok2 := m.dev.Function().BARAddress(1)
	if !ok || !ok2 || memBase != platform.PCIMMIO32Base || ioBase != platform.PortPCIIOWindow {
		t.Fatalf("BARs at %#x and %#x", memBase, ioBase)
	}
	for kind, o := range []ops{{m.mmio, memBase}, {m.pio, ioBase}} {
		for n := 0; n < numKinds; n++ {
			if c := o.one(t, n); c != 16 {
				t.Errorf("kind %d test %d: count %d, want 16", kind, n, c)
			}
			// The name follows the header.
			name := ""
			for i := uint64(hdrSize); ; i++ {
				c := o.readb(i)
				if c == 0 {
					break
				}
				name += string(rune(c))
			}
			if name != testNames[kind*numKinds+n] {
				t.Errorf("kind %d test %d: name %q", kind, n, name)
			}
		}
	}
	// A non-matching byte does not count in the data-match tests; the
	// wildcard test counts anything.
	o := ops{m.mmio, memBase}
	o.writeb(0, 2)
	o.writeb(memOffset+2, 0x00)
	o.writeb(memOffset+3, dataMatch)
	if c := o.readl(offCount); c != 0 {
		t.Errorf("datamatch counted a wrong byte or offset: %d", c)
	}
	o.writeb(0, 1)
	o.writeb(memOffset+1, 0x42)
	if c := o.readl(offCount); c != 1 {
		t.Errorf("wildcard count %d", c)
	}
	// A 4-byte write acts as four byte writes: 0xFAFAFAFA at the
	// offset counts once (the other bytes land at other offsets).
	o.writeb(0, 0)
	m.mmio.Write(memBase+memOffset, []byte{dataMatch, dataMatch, dataMatch, dataMatch})
	if c := o.readl(offCount); c != 1 {
		t.Errorf("4-byte write counted %d", c)
	}
	// Deselecting: reads are zero.
	o.writeb(0, 9)
	if v := o.readl(0); v != 0 {
		t.Errorf("no test selected reads %#x", v)
	}
	// Memory decode off: the BAR is gone.
	cmd := make([]byte, 2)
	m.root.WriteConfig(0, Slot, 0, pci.RegCommand, []byte{pci.CmdIO, 0})
	o.writeb(0, 0)
	if v := o.readb(0); v != 0xff {
		t.Errorf("BAR 0 answers with memory decode off: %#x", v)
	}
	m.root.ReadConfig(0, Slot, 0, pci.RegCommand, cmd)
	if cmd[0] != pci.CmdIO {
		t.Errorf("command %#x", cmd[0])
	}
}

func TestHeaderAndState(t *testing.T) {
	m := newMachine(t)
	id := make([]byte, 4)
	m.root.ReadConfig(0, Slot, 0, 0, id)
	if binary.LittleEndian.Uint32(id) != 0x00051b36 {
		t.Fatalf("ID %#x", id)
	}
	m.root.ReadConfig(0, Slot, 0, pci.RegRevision, id)
	if binary.LittleEndian.Uint32(id) != 0x00ff0000 {
		t.Fatalf("class %#x", id)
	}
	o := ops{m.pio, platform.PortPCIIOWindow}
	o.writeb(0, 1)
	o.writeb(ioOffset+4, 1)
	s := m.dev.Save()
	if s.Current != 4 || s.Counts[4] != 1 {
		t.Fatalf("state %+v", s)
	}
	m2 := newMachine(t)
	if err := m2.dev.Restore(s); err != nil {
		t.Fatal(err)
	}
	if c := (ops{m2.pio, platform.PortPCIIOWindow}).readl(offCount); c != 1 {
		t.Fatalf("restored count %d", c)
	}
	for _, bad := range []int{-2, numTests} {
		if m2.dev.Restore(State{Current: bad}) == nil {
			t.Errorf("test %d accepted", bad)
		}
	}
	// Accesses past the BAR's end are dropped and read as zero.
	b := bar{m.dev, 1}
	d := []byte{1, 2, 3, 4}
	b.Write(IOBARSize-2, d)
	b.Read(IOBARSize-2, d)
	if binary.LittleEndian.Uint32(d) != 0 {
		t.Fatalf("read past the end: % x", d)
	}
}
