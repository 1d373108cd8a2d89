package vfio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/irq/routes"
	"govmm/pci"
	"govmm/vfio/abi"
)

// events is the sequence of calls the fakes saw, in order.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(f string, a ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, fmt.Sprintf(f, a...))
}

func (e *events) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.log
	e.log = nil
	return l
}

// fakeDev is an edu-like device: 1234:11e8, BAR 0 1 MiB of 32-bit
// memory, a 64-bit single-vector MSI capability at 0x40, a PCI Express
// capability at 0x50 and an MSI-X capability at 0x90.
type fakeDev struct {
	ev      *events
	cfg     [256]byte
	bar     []byte
	mmap    bool
	resets  int
	irqsOn  map[uint32]int
	mmapped [][]byte
	rom     []byte // the expansion ROM (region 6), if any
}

func newFakeDev(ev *events, mmap bool) *fakeDev {
	d := &fakeDev{ev: ev, bar: make([]byte, 1<<20), mmap: mmap, irqsOn: map[uint32]int{}}
	le := binary.LittleEndian
	le.PutUint16(d.cfg[0:], 0x1234)
	le.PutUint16(d.cfg[2:], 0x11e8)
	le.PutUint16(d.cfg[6:], pci.StatusCapList)
	d.cfg[8] = 0x10                    // revision
	d.cfg[0xa], d.cfg[0xb] = 0xff, 0x0 // class 00ff
	le.PutUint32(d.cfg[0x10:], 0)      // 32-bit memory BAR
	d.cfg[0x34] = 0x40
	d.cfg[0x40], d.cfg[0x41] = capMSI, 0x50
	le.PutUint16(d.cfg[0x42:], msiCtl64)
	d.cfg[0x50], d.cfg[0x51], d.cfg[0x52] = capPCIe, 0x90, 2
	d.cfg[0x54] = 0xab // device capabilities, read back by the guest
	// MSI-X: 4 vectors, the table at 0x2000 and the PBA at 0x3000 of BAR 0.
	d.cfg[0x90], d.cfg[0x91] = capMSIX, 0
	le.PutUint16(d.cfg[0x92:], 3)
	le.PutUint32(d.cfg[0x94:], 0x2000)
	le.PutUint32(d.cfg[0x98:], 0x3000)
	d.cfg[pci.RegInterruptPin] = 1
	return d
}

func (d *fakeDev) Name() string   { return "0000:00:03.0" }
func (d *fakeDev) CanReset() bool { return true }
func (d *fakeDev) Reset() error   { d.resets++; d.ev.add("reset"); return nil }
func (d *fakeDev) Region(i int) abi.Region {
	switch i {
	case 0:
		r := abi.Region{RegionInfo: abi.RegionInfo{Size: uint64(len(d.bar)), Flags: abi.RegionFlagRead | abi.RegionFlagWrite}}
		if d.mmap {
			r.Flags |= abi.RegionFlagMmap
		}
		return r
	case abi.PCIConfigRegion:
		return abi.Region{RegionInfo: abi.RegionInfo{Size: 256}}
	case abi.PCIROMRegion:
		if d.rom != nil {
			return abi.Region{RegionInfo: abi.RegionInfo{Size: uint64(len(d.rom)), Flags: abi.RegionFlagRead}}
		}
	}
	return abi.Region{}
}
func (d *fakeDev) buf(i int) []byte {
	switch i {
	case abi.PCIConfigRegion:
		return d.cfg[:]
	case abi.PCIROMRegion:
		return d.rom
	}
	return d.bar
}
func (d *fakeDev) ReadRegion(i int, off uint64, b []byte) error {
	copy(b, d.buf(i)[off:])
	return nil
}
func (d *fakeDev) WriteRegion(i int, off uint64, b []byte) error {
	copy(d.buf(i)[off:], b)
	if i == abi.PCIConfigRegion {
		d.ev.add("config write %#x % x", off, b)
	}
	return nil
}
func (d *fakeDev) Mmap(i int, off, size uint64) ([]byte, error) {
	m, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	d.mmapped = append(d.mmapped, m)
	return m, err
}
func (d *fakeDev) SetIRQEventFDs(index uint32, fds []int32) error {
	d.irqsOn[index] = len(fds)
	d.ev.add("set_irqs index=%d n=%d", index, len(fds))
	return nil
}
func (d *fakeDev) SetIRQUnmaskEventFD(index uint32, fd int32) error {
	d.ev.add("unmask_fd index=%d", index)
	return nil
}
func (d *fakeDev) DisableIRQs(index uint32) error {
	d.irqsOn[index] = 0
	d.ev.add("disable_irqs index=%d", index)
	return nil
}
func (d *fakeDev) Close() error { d.ev.add("close"); return nil }

// fakeVM is the accelerator under routes.Table and the BAR mapper.
type fakeVM struct {
	accel.VM
	ev *events
}

func (v *fakeVM) SetGSIRouting(r []accel.Route) error {
	var s []string
	for _, x := range r {
		if x.GSI >= routes.NumReserved {
			s = append(s, fmt.Sprintf("%d:%#x/%#x", x.GSI, x.MSI.AddressLo, x.MSI.Data))
		}
	}
	v.ev.add("commit %s", strings.Join(s, ","))
	return nil
}
func (v *fakeVM) AssignIRQFD(f accel.IRQFD) error   { v.ev.add("irqfd gsi=%d", f.GSI); return nil }
func (v *fakeVM) DeassignIRQFD(f accel.IRQFD) error { v.ev.add("deirqfd gsi=%d", f.GSI); return nil }
func (v *fakeVM) MapMemory(r accel.MemoryRegion) error {
	v.ev.add("map %#x+%#x", r.GPA, len(r.Host))
	return nil
}
func (v *fakeVM) UnmapMemory(gpa uint64) error { v.ev.add("unmap %#x", gpa); return nil }

// fakePins is the userspace IOAPIC under resample irqfds.
type fakePins struct{ ev *events }

func (f fakePins) SetResampleInput(pin int, high bool) { f.ev.add("pin %d input %v", pin, high) }
func (f fakePins) SetResampler(pin int, fn func()) {
	if fn != nil {
		f.ev.add("resampler pin %d", pin)
	}
}

func setup(t *testing.T, order Order, mmap bool) (*PCI, *fakeDev, *events, *pci.Root) {
	t.Helper()
	ev := &events{}
	vm := &fakeVM{ev: ev}
	var mapper Mapper
	if mmap {
		mapper = vm
	}
	p, d, root := setupOn(t, vm, ev, mapper, order, mmap)
	return p, d, ev, root
}

// setupOn puts a fake device (BARs mmap'able or not, changed by tweaks)
// on a bus at slot 3, with vm under its routing table, and starts it; the
// test closes it.
func setupOn(t testing.TB, vm routes.Accel, ev *events, mapper Mapper, order Order, mmap bool, tweaks ...func(*fakeDev)) (*PCI, *fakeDev, *pci.Root) {
	t.Helper()
	d := newFakeDev(ev, mmap)
	for _, tw := range tweaks {
		tw(d)
	}
	rt := routes.New(vm, nil)
	rt.SetPinController(fakePins{ev})
	p, err := newPCI(d, PCIConfig{Router: rt, Mapper: mapper, Order: order, Log: slog.New(slog.DiscardHandler),
		INTxGSI: func(pin int) uint32 { return uint32(16 + (3+pin-1)%8) }})
	if err != nil {
		t.Fatal(err)
	}
	root := pci.NewRoot(pci.Windows{IOBase: 0xc000, IOEnd: 0x10000, Mem32Base: 0xc0000000, Mem32End: 0xe0000000})
	if err := root.Add(3, p.Function()); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, d, root
}

func cfgRead(r *pci.Root, off, n int) uint32 {
	b := make([]byte, 4)
	r.ReadConfig(0, 3, 0, off, b[:n])
	return binary.LittleEndian.Uint32(b)
}

func cfgWrite(r *pci.Root, off, n int, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	r.WriteConfig(0, 3, 0, off, b[:n])
}

func TestConfigSpace(t *testing.T) {
	_, d, ev, r := setup(t, OrderRouteFirst, false)
	if d.resets != 1 {
		t.Errorf("%d resets at start, want 1", d.resets)
	}
	if got := cfgRead(r, 0, 4); got != 0x11e81234 {
		t.Errorf("IDs %#x", got)
	}
	if got := cfgRead(r, pci.RegClass, 3); got != 0x00ff00 {
		t.Errorf("class %#x", got)
	}
	// Govmm placed BAR 0 and enabled memory decode; the device saw the
	// memory enable and nothing of the BAR address.
	if got := cfgRead(r, pci.RegBAR0, 4); got != 0xc0000000 {
		t.Errorf("BAR 0 at %#x, want 0xc0000000", got)
	}
	if le := binary.LittleEndian; le.Uint16(d.cfg[4:])&pci.CmdMemory == 0 || le.Uint32(d.cfg[0x10:]) != 0 {
		t.Errorf("device command %#x, BAR %#x", le.Uint16(d.cfg[4:]), le.Uint32(d.cfg[0x10:]))
	}
	// Bus mastering goes to the device; the guest's BAR sizing does not.
	ev.take()
	cfgWrite(r, pci.RegCommand, 2, pci.CmdMemory|pci.CmdBusMaster)
	cfgWrite(r, pci.RegBAR0, 4, 0xffffffff)
	if got := cfgRead(r, pci.RegBAR0, 4); got != 0xfff00000 {
		t.Errorf("BAR 0 sizing reads %#x, want 0xfff00000 (1 MiB)", got)
	}
	if l := ev.take(); len(l) != 1 || !strings.Contains(l[0], "config write 0x4 06 00") {
		t.Errorf("device config writes %q, want the command register with memory and bus master", l)
	}
	// Capabilities: MSI (64-bit, no per-vector masking), PCIe read-only,
	// MSI-X with the device's table size and places.
	f := r.Function(3, 0)
	if c := f.Capabilities(-1); len(c) != 3 {
		t.Fatalf("capabilities at %v, want MSI, PCIe and MSI-X", c)
	}
	x := f.Capabilities(capMSIX)[0]
	if ctl, tbl, pba := cfgRead(r, x+2, 2), cfgRead(r, x+4, 4), cfgRead(r, x+8, 4); ctl != 3 || tbl != 0x2000 || pba != 0x3000 {
		t.Errorf("MSI-X control %#x table %#x PBA %#x", ctl, tbl, pba)
	}
	msi := f.Capabilities(capMSI)[0]
	if ctl := cfgRead(r, msi+2, 2); ctl != msiCtl64 {
		t.Errorf("MSI control %#x, want 64-bit, one vector", ctl)
	}
	pcie := f.Capabilities(capPCIe)[0]
	cfgWrite(r, pcie+4, 1, 0)
	if got := cfgRead(r, pcie+4, 1); got != 0xab {
		t.Errorf("PCIe device capabilities %#x after a write, want 0xab (read-only)", got)
	}
}

func TestBARTrapped(t *testing.T) {
	_, d, _, r := setup(t, OrderRouteFirst, false)
	binary.LittleEndian.PutUint32(d.bar[0x100:], 0xcafef00d)
	var reg pci.Region
	for _, x := range r.Regions() {
		if x.BAR == 0 {
			reg = x
		}
	}
	b := make([]byte, 4)
	reg.Dev.Read(0x100, b)
	if binary.LittleEndian.Uint32(b) != 0xcafef00d {
		t.Errorf("trapped read % x", b)
	}
	reg.Dev.Write(0x104, []byte{1, 2, 3, 4})
	if d.bar[0x107] != 4 {
		t.Error("trapped write did not reach the device")
	}
	reg.Dev.Read(1<<20-2, b)
	if !slices.Equal(b, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("read past the BAR % x, want all ones", b)
	}
}

// TestExpansionROM: the device's ROM region becomes the guest's expansion
// ROM BAR (rounded up to a power of two), placed and off until the guest
// enables it; reads come from the region, past its end read as all ones,
// and writes change nothing.
func TestExpansionROM(t *testing.T) {
	ev := &events{}
	rom := make([]byte, 5000)
	for i := range rom {
		rom[i] = byte(i * 7)
	}
	rom[0], rom[1] = 0x55, 0xaa
	_, _, r := setupOn(t, &fakeVM{ev: ev}, ev, nil, OrderRouteFirst, false, func(d *fakeDev) { d.rom = rom })
	f := r.Function(3, 0)
	if f.ROMSize() != 8<<10 {
		t.Fatalf("ROM BAR of %#x bytes, want 8 KiB for a 5000-byte ROM", f.ROMSize())
	}
	base := cfgRead(r, pci.RegROM, 4)
	if base == 0 || base&1 != 0 {
		t.Fatalf("ROM register %#x: want placed and disabled", base)
	}
	cfgWrite(r, pci.RegROM, 4, base|1)
	var reg *pci.Region
	for _, x := range r.Regions() {
		if x.BAR == pci.ROMBAR {
			reg = &x
		}
	}
	if reg == nil || reg.Base != uint64(base) {
		t.Fatalf("enabled ROM not decoding at %#x: %+v", base, r.Regions())
	}
	b := make([]byte, 4)
	reg.Dev.Read(0, b)
	if !slices.Equal(b, rom[:4]) {
		t.Errorf("ROM start % x, want % x", b, rom[:4])
	}
	reg.Dev.Read(4998, b)
	if !slices.Equal(b, []byte{rom[4998], rom[4999], 0xff, 0xff}) {
		t.Errorf("read across the ROM's end % x", b)
	}
	reg.Dev.Write(0, []byte{0, 0})
	reg.Dev.Read(0, b[:2])
	if b[0] != 0x55 || b[1] != 0xaa {
		t.Error("a write changed the ROM")
	}

	// A device without a ROM has none.
	_, _, r2 := setupOn(t, &fakeVM{ev: ev}, ev, nil, OrderRouteFirst, false)
	if got := cfgRead(r2, pci.RegROM, 4); got != 0 || r2.Function(3, 0).ROMSize() != 0 {
		t.Errorf("no ROM: register %#x", got)
	}
}

func TestBARMapped(t *testing.T) {
	_, d, ev, r := setup(t, OrderRouteFirst, true)
	if len(d.mmapped) != 1 {
		t.Fatal("BAR 0 not mmap'ed")
	}
	// Mapped around the MSI-X table and PBA pages (0x2000, 0x3000).
	if l := ev.take(); !slices.Contains(l, "map 0xc0000000+0x2000") || !slices.Contains(l, "map 0xc0004000+0xfc000") {
		t.Fatalf("events %q: BAR 0 not mapped around the MSI-X pages", l)
	}
	cfgWrite(r, pci.RegBAR0, 4, 0xd0000000)
	if l := ev.take(); !slices.Equal(l, []string{"unmap 0xc0000000", "unmap 0xc0004000", "map 0xd0000000+0x2000", "map 0xd0004000+0xfc000"}) {
		t.Errorf("events %q: BAR move not followed", l)
	}
	cfgWrite(r, pci.RegCommand, 2, 0)
	if l := ev.take(); !slices.Equal(l, []string{"config write 0x4 00 00", "unmap 0xd0000000", "unmap 0xd0004000"}) {
		t.Errorf("events %q: decode off did not unmap", l)
	}
}

// enableMSI programs the MSI capability as Linux does: address, data,
// then the enable bit.
func enableMSI(r *pci.Root, data uint32, log2 int) {
	msi := r.Function(3, 0).Capabilities(capMSI)[0]
	cfgWrite(r, msi+4, 4, 0xfee00000)
	cfgWrite(r, msi+8, 4, 0)
	cfgWrite(r, msi+12, 2, data)
	cfgWrite(r, msi+2, 2, uint32(log2)<<4|msiCtlEnable)
}

func TestMSIOrders(t *testing.T) {
	for _, c := range []struct {
		order Order
		want  []string
	}{
		{OrderRouteFirst, []string{"commit 24:0xfee00000/0x41", "irqfd gsi=24", "set_irqs index=1 n=1"}},
		{OrderIRQsFirst, []string{"set_irqs index=1 n=1", "commit 24:0xfee00000/0x41", "irqfd gsi=24"}},
	} {
		c.want = append([]string{"disable_irqs index=0", "pin 19 input false"}, c.want...)
		t.Run(c.order.String(), func(t *testing.T) {
			p, d, ev, r := setup(t, c.order, false)
			ev.take()
			enableMSI(r, 0x41, 0)
			if l := ev.take(); !slices.Equal(l, c.want) {
				t.Errorf("enable: %q, want %q", l, c.want)
			}
			// A new data value while enabled: rerouted, nothing else.
			msi := p.msi.cap
			cfgWrite(r, msi+12, 2, 0x42)
			if l := ev.take(); !slices.Equal(l, []string{"commit 24:0xfee00000/0x42"}) {
				t.Errorf("reroute: %q", l)
			}
			cfgWrite(r, msi+2, 2, 0)
			if l := ev.take(); !slices.Equal(l, []string{"disable_irqs index=1", "deirqfd gsi=24", "resampler pin 19", "set_irqs index=0 n=1", "unmask_fd index=0"}) {
				t.Errorf("disable (INTx comes back): %q", l)
			}
			if d.irqsOn[abi.PCIMSIIRQ] != 0 || d.irqsOn[abi.PCIINTxIRQ] != 1 {
				t.Errorf("device interrupts on after MSI disable: %v, want INTx only", d.irqsOn)
			}
			// Enabled again: the same GSI and its unchanged route (no
			// new commit), the irqfd and the device wired anew.
			cfgWrite(r, msi+2, 2, msiCtlEnable)
			want := slices.DeleteFunc(slices.Clone(c.want), func(s string) bool { return strings.HasPrefix(s, "commit") })
			if l := ev.take(); !slices.Equal(l, want) {
				t.Errorf("re-enable: %q, want %q", l, want)
			}
		})
	}
}

func TestMSIX(t *testing.T) {
	for _, c := range []struct {
		order Order
		want  []string
	}{
		{OrderRouteFirst, []string{"commit 25:0xfee00000/0x51", "irqfd gsi=25", "set_irqs index=2 n=4"}},
		{OrderIRQsFirst, []string{"set_irqs index=2 n=4", "commit 25:0xfee00000/0x51", "irqfd gsi=25"}},
	} {
		t.Run(c.order.String(), func(t *testing.T) {
			p, d, ev, r := setup(t, c.order, false)
			x := p.msix.cap
			var tbl pci.Region
			for _, reg := range r.Regions() {
				if reg.BAR == 0 {
					tbl = reg
				}
			}
			w32 := func(off uint64, v uint32) {
				b := make([]byte, 4)
				binary.LittleEndian.PutUint32(b, v)
				tbl.Dev.Write(0x2000+off, b)
			}
			// Vector 1 programmed and unmasked before MSI-X is enabled.
			w32(16, 0xfee00000)
			w32(24, 0x51)
			w32(28, 0)
			ev.take()
			cfgWrite(r, x+2, 2, msixCtlEnable)
			want := append([]string{"disable_irqs index=0", "pin 19 input false"}, c.want...)
			if l := ev.take(); !slices.Equal(l, want) {
				t.Errorf("enable: %q, want %q", l, want)
			}
			// The table reads back as written; the device's own is untouched.
			b := make([]byte, 4)
			tbl.Dev.Read(0x2000+24, b)
			if binary.LittleEndian.Uint32(b) != 0x51 || d.bar[0x2000+24] != 0 {
				t.Errorf("table data % x, device's %#x", b, d.bar[0x2000+24])
			}
			// Masking unbinds, unmasking binds again (no new route).
			w32(28, 1)
			if l := ev.take(); !slices.Equal(l, []string{"deirqfd gsi=25"}) {
				t.Errorf("mask: %q", l)
			}
			w32(28, 0)
			if l := ev.take(); !slices.Equal(l, []string{"irqfd gsi=25"}) {
				t.Errorf("unmask: %q", l)
			}
			// The function mask too.
			cfgWrite(r, x+2, 2, msixCtlEnable|msixCtlFuncMask)
			if l := ev.take(); !slices.Equal(l, []string{"deirqfd gsi=25"}) {
				t.Errorf("function mask: %q", l)
			}
			cfgWrite(r, x+2, 2, 0)
			if l := ev.take(); !slices.Equal(l, []string{"disable_irqs index=2", "resampler pin 19", "set_irqs index=0 n=1", "unmask_fd index=0"}) {
				t.Errorf("disable: %q", l)
			}
			// Outside the table, the BAR is the device's.
			tbl.Dev.Write(0x1010, []byte{7})
			if d.bar[0x1010] != 7 {
				t.Error("write beside the table did not reach the device")
			}
		})
	}
}

func TestMSIMultipleCapped(t *testing.T) {
	// The device offers one vector: a guest asking for 4 gets one.
	_, d, ev, r := setup(t, OrderRouteFirst, false)
	ev.take()
	enableMSI(r, 0x40, 2)
	if d.irqsOn[abi.PCIMSIIRQ] != 1 {
		t.Errorf("%d vectors enabled on the device, want 1 (%q)", d.irqsOn, ev.take())
	}
}

func TestCloseResets(t *testing.T) {
	p, d, ev, r := setup(t, OrderRouteFirst, false)
	enableMSI(r, 0x41, 0)
	ev.take()
	p.Close()
	l := ev.take()
	if !slices.Equal(l, []string{"disable_irqs index=1", "deirqfd gsi=24", "reset", "close"}) {
		t.Errorf("close: %q", l)
	}
	if d.resets != 2 {
		t.Errorf("%d resets, want 2 (start and close)", d.resets)
	}
	// Writes after close change nothing on the device.
	cfgWrite(r, pci.RegCommand, 2, pci.CmdBusMaster)
	if l := ev.take(); len(l) != 0 {
		t.Errorf("after close: %q", l)
	}
}

func TestINTx(t *testing.T) {
	ev := &events{}
	vm := &fakeVM{ev: ev}
	rt := routes.New(vm, nil)
	rt.SetPinController(fakePins{ev})
	d := newFakeDev(ev, false)
	p, err := newPCI(d, PCIConfig{Router: rt, Log: slog.New(slog.DiscardHandler), INTxGSI: func(pin int) uint32 { return uint32(16 + pin) }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := p.Function(); got == nil {
		t.Fatal("no function")
	}
	b := make([]byte, 2)
	p.Function().ReadConfig(pci.RegInterruptLine, b)
	if b[0] != 17 || b[1] != 1 {
		t.Errorf("interrupt line %d pin %d, want 17 and INTA", b[0], b[1])
	}
	ev.take()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if l := ev.take(); !slices.Equal(l, []string{"resampler pin 17", "set_irqs index=0 n=1", "unmask_fd index=0"}) {
		t.Errorf("start: %q", l)
	}
	// Without INTxGSI, no pin.
	d2 := newFakeDev(ev, false)
	p2, err := newPCI(d2, PCIConfig{Router: rt, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	p2.Function().ReadConfig(pci.RegInterruptPin, b[:1])
	if b[0] != 0 {
		t.Errorf("interrupt pin %d without INTx routing", b[0])
	}
}

func TestParseAddress(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/bus/pci/devices/0000:00:03.0":  "0000:00:03.0",
		"/sys/bus/pci/devices/0000:00:03.0/": "0000:00:03.0",
		"0000:AF:1f.7":                       "0000:af:1f.7",
	} {
		if got, err := ParseAddress(in); err != nil || got != want {
			t.Errorf("ParseAddress(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"/tmp/0000:00:03.0", "00:03.0", "0000:00:03.8", "", "/sys/bus/pci/devices/x"} {
		if _, err := ParseAddress(bad); err == nil {
			t.Errorf("ParseAddress(%q): no error", bad)
		}
	}
}

func TestParseOrder(t *testing.T) {
	for in, want := range map[string]Order{"qemu": OrderRouteFirst, "route-first": OrderRouteFirst, "irqs-first": OrderIRQsFirst, "cloud-hypervisor": OrderIRQsFirst} {
		if got, err := ParseOrder(in); err != nil || got != want {
			t.Errorf("ParseOrder(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseOrder("x"); err == nil {
		t.Error("ParseOrder(x): no error")
	}
	if DefaultOrder("kvm") != OrderRouteFirst || DefaultOrder("mshv") != OrderIRQsFirst {
		t.Error("default orders")
	}
}

// TestVendorCapability: a vendor-specific capability (a virtio 1.x
// device's configuration structure locators) is shown read-only, as long
// as its length byte says; one with a length too short is hidden.
func TestVendorCapability(t *testing.T) {
	ev := &events{}
	d := newFakeDev(ev, false)
	d.cfg[0x91] = 0xa0 // MSI-X -> vendor at 0xa0 -> vendor at 0xb4
	d.cfg[0xa0], d.cfg[0xa1], d.cfg[0xa2] = capVendor, 0xb4, 16
	copy(d.cfg[0xa3:0xb0], []byte{1, 4, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0})
	d.cfg[0xb4], d.cfg[0xb5], d.cfg[0xb6] = capVendor, 0, 2
	rt := routes.New(&fakeVM{ev: ev}, nil)
	p, err := newPCI(d, PCIConfig{Router: rt, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	caps := p.fn.Capabilities(capVendor)
	if len(caps) != 1 {
		t.Fatalf("vendor capabilities at %#x, want one", caps)
	}
	got := make([]byte, 16)
	p.fn.ReadConfig(caps[0], got)
	if got[0] != capVendor || !slices.Equal(got[2:], d.cfg[0xa2:0xb0]) {
		t.Errorf("vendor capability % x, want the device's % x", got[2:], d.cfg[0xa2:0xb0])
	}
	p.fn.WriteConfig(caps[0]+4, []byte{0xff, 0xff})
	p.fn.ReadConfig(caps[0], got)
	if !slices.Equal(got[2:], d.cfg[0xa2:0xb0]) {
		t.Errorf("the guest changed a vendor capability: % x", got[2:])
	}
}
