package pci

import (
	"encoding/binary"
	"testing"

	"govmm/devices/bus"
	"govmm/platform"
)

// recDev records the last access it saw.
type recDev struct {
	off  uint64
	n    int
	hits int
}

func (d *recDev) Read(off uint64, data []byte) {
	d.off, d.n = off, len(data)
	d.hits++
	for i := range data {
		data[i] = 0xAB
	}
}

func (d *recDev) Write(off uint64, data []byte) {
	d.off, d.n = off, len(data)
	d.hits++
}

var testWindows = Windows{
	IOBase: platform.PortPCIIOWindow, IOEnd: platform.PortPCIIOEnd,
	Mem32Base: platform.PCIMMIO32Base, Mem32End: platform.PCIMMIO32End,
	Mem64Base: 1 << 33, Mem64End: 1<<33 + platform.PCIMMIO64Size,
}

func cfgRead32(f *Function, off int) uint32 {
	var b [4]byte
	f.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func cfgWrite32(f *Function, off int, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	f.WriteConfig(off, b[:])
}

func testFunction(t *testing.T) (*Function, *recDev, *recDev, *recDev) {
	t.Helper()
	f := NewFunction(Identity{Vendor: 0x1234, Device: 0x5678, Class: 0xff, InterruptPin: 1})
	mem, mem64, io := &recDev{}, &recDev{}, &recDev{}
	for i, b := range []struct {
		i int
		b BAR
	}{
		{0, BAR{Kind: BARMem32, Size: 0x1000, Dev: mem}},
		{1, BAR{Kind: BARIO, Size: 0x100, Dev: io}},
		{2, BAR{Kind: BARMem64, Size: 0x4000_0000, Prefetchable: true, Dev: mem64}},
	} {
		if err := f.SetBAR(b.i, b.b); err != nil {
			t.Fatalf("BAR %d: %v", i, err)
		}
	}
	return f, mem, mem64, io
}

// TestBARSizing probes each BAR the way Linux's __pci_read_base does:
// write all ones, read back the size mask, restore the original value.
func TestBARSizing(t *testing.T) {
	f, _, _, _ := testFunction(t)
	for _, c := range []struct {
		off  int
		want uint32
	}{
		{RegBAR0, 0xFFFFF000},      // 4 KiB 32-bit memory, not prefetchable
		{RegBAR0 + 4, 0xFFFFFF01},  // 256-byte I/O
		{RegBAR0 + 8, 0xC000000C},  // 1 GiB 64-bit prefetchable, low half
		{RegBAR0 + 12, 0xFFFFFFFF}, // high half
		{RegBAR0 + 16, 0},          // unimplemented
		{RegROM, 0},                // no expansion ROM
	} {
		orig := cfgRead32(f, c.off)
		cfgWrite32(f, c.off, 0xFFFFFFFF)
		if got := cfgRead32(f, c.off); got != c.want {
			t.Errorf("register %#x after all ones = %#x, want %#x", c.off, got, c.want)
		}
		cfgWrite32(f, c.off, orig)
		if got := cfgRead32(f, c.off); got != orig {
			t.Errorf("register %#x restored to %#x, reads %#x", c.off, orig, got)
		}
	}
	if _, ok := f.BARAddress(4); ok {
		t.Error("BAR 4 reported as implemented")
	}
	if f.SetBAR(3, BAR{Kind: BARMem32, Size: 16, Dev: &recDev{}}) == nil {
		t.Error("BAR 3 (upper half of a 64-bit BAR) accepted")
	}
	for _, b := range []BAR{{Kind: BARIO, Size: 512, Dev: &recDev{}}, {Kind: BARMem32, Size: 3000, Dev: &recDev{}},
		{Kind: BARMem32, Size: 4096}, {Kind: BARMem64, Size: 4096, Dev: &recDev{}}} {
		i := 4
		if b.Kind == BARMem64 {
			i = 5
		}
		if f.SetBAR(i, b) == nil {
			t.Errorf("bad BAR %+v accepted", b)
		}
	}
}

// TestCommandGatesDecode checks that a BAR decodes only with its space
// enabled in the command register and a non-zero address, and that the
// Root's resolvers follow the guest's writes.
func TestCommandGatesDecode(t *testing.T) {
	r := NewRoot(testWindows)
	f, mem, mem64, io := testFunction(t)
	if err := r.Add(3, f); err != nil {
		t.Fatal(err)
	}
	// Placed like firmware: I/O from 0xC000, the 4 KiB BAR at the
	// 32-bit window's start, the 1 GiB 64-bit BAR in the 64-bit window.
	for i, want := range map[int]uint64{0: platform.PCIMMIO32Base, 1: platform.PortPCIIOWindow, 2: 1 << 33} {
		if got, _ := f.BARAddress(i); got != want {
			t.Errorf("BAR %d at %#x, want %#x", i, got, want)
		}
	}
	if f.Command()&(CmdIO|CmdMemory) != CmdIO|CmdMemory {
		t.Fatalf("command %#x: decoding not enabled", f.Command())
	}
	pio, mmio := bus.New("pio", nil), bus.New("mmio", nil)
	pio.SetFallback(r.IOSpace())
	mmio.SetFallback(r.MemSpace())
	b := make([]byte, 4)
	mmio.Read(platform.PCIMMIO32Base+0x10, b)
	pio.Write(platform.PortPCIIOWindow+0x20, b[:1])
	mmio.Read(1<<33+0x3000_0000, b)
	if mem.hits != 1 || mem.off != 0x10 || io.hits != 1 || io.off != 0x20 || mem64.hits != 1 || mem64.off != 0x3000_0000 {
		t.Fatalf("decode: mem %+v io %+v mem64 %+v", mem, io, mem64)
	}
	// Memory decode off: memory BARs vanish, the I/O BAR stays.
	cfgWrite32(f, RegCommand, CmdIO)
	mmio.Read(platform.PCIMMIO32Base, b)
	if mem.hits != 1 || b[0] != 0xff {
		t.Fatal("memory BAR decodes with memory space disabled")
	}
	pio.Read(platform.PortPCIIOWindow, b[:2])
	if io.hits != 2 {
		t.Fatal("I/O BAR does not decode")
	}
	// Move the 32-bit BAR while memory decode is on.
	cfgWrite32(f, RegBAR0, 0xD0000000)
	cfgWrite32(f, RegCommand, CmdIO|CmdMemory)
	mmio.Read(0xD0000FFC, b)
	if mem.hits != 2 || mem.off != 0xFFC {
		t.Fatalf("moved BAR: %+v", mem)
	}
	// During sizing (all ones) with decode on, the I/O BAR's address
	// is beyond 64 KiB: it decodes nowhere.
	cfgWrite32(f, RegBAR0+4, 0xFFFFFFFF)
	pio.Read(0xFF00, b[:1])
	if io.hits != 2 {
		t.Fatalf("I/O BAR being sized decodes: %+v", io)
	}
	cfgWrite32(f, RegBAR0+4, 0xFF01)
	pio.Read(0xFFFF, b[:1])
	if io.hits != 3 || io.off != 0xFF {
		t.Fatalf("I/O BAR at 0xFF00: %+v", io)
	}
	// An I/O BAR placed beyond 64 KiB does not decode.
	cfgWrite32(f, RegBAR0+4, 0x10000)
	if len(r.Regions()) != 2 {
		t.Fatalf("regions %+v", r.Regions())
	}
	// A BAR at zero is unplaced.
	cfgWrite32(f, RegBAR0, 0)
	mmio.Read(0, b)
	if mem.hits != 2 {
		t.Fatal("BAR at 0 decodes")
	}
}

func TestCapabilities(t *testing.T) {
	f := NewFunction(Identity{Vendor: 1, Device: 2})
	if f.Capabilities(-1) != nil || cfgRead32(f, RegCommand)>>16&StatusCapList != 0 {
		t.Fatal("capability list without capabilities")
	}
	a, err := f.AddCapability(0x09, []byte{3, 0xAA}, []byte{0, 0xff}) // vendor-specific, 4 bytes
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.AddCapability(0x11, make([]byte, 10), nil) // MSI-X sized
	if err != nil {
		t.Fatal(err)
	}
	if a != 0x40 || b != 0x44 {
		t.Fatalf("capabilities at %#x, %#x", a, b)
	}
	if got := f.Capabilities(-1); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("walk: %v", got)
	}
	if got := f.Capabilities(0x11); len(got) != 1 || got[0] != b {
		t.Fatalf("walk for 0x11: %v", got)
	}
	if cfgRead32(f, RegCommand)>>16&StatusCapList == 0 || cfgRead32(f, RegCapPtr)&0xff != 0x40 {
		t.Fatal("status bit or capabilities pointer")
	}
	// The next pointers and IDs are read-only; the writable byte is not.
	cfgWrite32(f, a, 0xFFFFFFFF)
	if got := cfgRead32(f, a); got != 0xFF034409 {
		t.Fatalf("capability header after all ones: %#x", got)
	}
	for {
		if _, err := f.AddCapability(0x09, make([]byte, 30), nil); err != nil {
			break
		}
	}
	if n := len(f.Capabilities(-1)); n < 3 {
		t.Fatalf("%d capabilities after filling", n)
	}
}

func TestStatusAndReadOnly(t *testing.T) {
	f := NewFunction(Identity{Vendor: 0x1b36, Device: 5, Class: 0, Subclass: 0xff})
	f.mu.Lock()
	binary.LittleEndian.PutUint16(f.cfg[RegStatus:], 0x8000) // detected parity error, set by the device
	f.mu.Unlock()
	cfgWrite32(f, RegVendorID, 0)
	if cfgRead32(f, RegVendorID) != 0x00051b36 {
		t.Fatal("IDs are writable")
	}
	cfgWrite32(f, RegCommand, 0xFFFF)
	if got := cfgRead32(f, RegCommand); got != 0x8000_0000|cmdWritable {
		t.Fatalf("command/status after all ones: %#x", got)
	}
	cfgWrite32(f, RegCommand, 0x8000_0000)
	if got := cfgRead32(f, RegCommand); got != 0 {
		t.Fatalf("status bit not cleared by writing one: %#x", got)
	}
	if got := cfgRead32(f, RegClass-1); got != 0x00ff0000 {
		t.Fatalf("class/revision %#x", got)
	}
	// Interrupt line is writable, pin is not.
	cfgWrite32(f, RegInterruptLine, 0xFFFF)
	if got := cfgRead32(f, RegInterruptLine) & 0xffff; got != 0x00ff {
		t.Fatalf("interrupt line/pin %#x", got)
	}
}

func TestConfigMechanism1(t *testing.T) {
	r := NewRoot(testWindows)
	f, _, _, _ := testFunction(t)
	if err := r.Add(1, f); err != nil {
		t.Fatal(err)
	}
	pio := bus.New("pio", nil)
	if err := r.RegisterPorts(pio); err != nil {
		t.Fatal(err)
	}
	out := func(port uint64, v uint32, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		pio.Write(port, b)
	}
	in := func(port uint64, n int) uint32 {
		b := make([]byte, n)
		pio.Read(port, b)
		return le32(b)
	}
	// Linux's pci_check_type1.
	out(0xCFB, 1, 1)
	out(0xCF8, 0x80000000, 4)
	if in(0xCF8, 4) != 0x80000000 {
		t.Fatal("CONFIG_ADDRESS does not read back")
	}
	cfg := func(busNr, slot, fn, reg int) uint32 {
		return 0x80000000 | uint32(busNr)<<16 | uint32(slot)<<11 | uint32(fn)<<8 | uint32(reg)
	}
	out(0xCF8, cfg(0, 0, 0, 0), 4)
	if got := in(0xCFC, 4); got != 0x00081b36 {
		t.Fatalf("00:00.0 ID %#x", got)
	}
	out(0xCF8, cfg(0, 0, 0, 8), 4)
	if got := in(0xCFE, 2); got != 0x0600 {
		t.Fatalf("host bridge class %#x", got)
	}
	out(0xCF8, cfg(0, 1, 0, 0), 4)
	if got := in(0xCFC, 4); got != 0x56781234 {
		t.Fatalf("00:01.0 ID %#x", got)
	}
	if got := in(0xCFE, 2); got != 0x5678 {
		t.Fatalf("00:01.0 device ID through 0xCFE: %#x", got)
	}
	if got := in(0xCFF, 2); got != 0xFFFF&(0xFF00|0x56) {
		t.Fatalf("2-byte read at 0xCFF: %#x", got)
	}
	for _, a := range []uint32{cfg(0, 2, 0, 0), cfg(0, 1, 1, 0), cfg(1, 0, 0, 0), cfg(0, 0, 0, 0) &^ configEnable} {
		out(0xCF8, a, 4)
		if got := in(0xCFC, 4); got != 0xFFFFFFFF {
			t.Fatalf("absent function at %#x reads %#x", a, got)
		}
	}
	// BAR sizing through the ports.
	out(0xCF8, cfg(0, 1, 0, RegBAR0), 4)
	out(0xCFC, 0xFFFFFFFF, 4)
	if got := in(0xCFC, 4); got != 0xFFFFF000 {
		t.Fatalf("BAR0 size mask through the ports: %#x", got)
	}
	// Byte writes to 0xCF8-0xCFB do not change the latch.
	out(0xCF8, 0, 1)
	if in(0xCF8, 4) != cfg(0, 1, 0, RegBAR0) {
		t.Fatal("byte write changed CONFIG_ADDRESS")
	}
}

func TestECAM(t *testing.T) {
	r := NewRoot(testWindows)
	f, _, _, _ := testFunction(t)
	if err := r.Add(4, f); err != nil {
		t.Fatal(err)
	}
	mmio := bus.New("mmio", nil)
	if err := mmio.Register(platform.PCIECAMBase, platform.PCIECAMSize, "ecam", r.ECAM()); err != nil {
		t.Fatal(err)
	}
	at := func(busNr, slot, fn, reg int) uint64 {
		return platform.PCIECAMBase + uint64(busNr)<<20 | uint64(slot)<<15 | uint64(fn)<<12 | uint64(reg)
	}
	rd := func(a uint64, n int) uint32 {
		b := make([]byte, n)
		mmio.Read(a, b)
		return le32(b)
	}
	if got := rd(at(0, 0, 0, 0), 4); got != 0x00081b36 {
		t.Fatalf("host bridge through ECAM: %#x", got)
	}
	if got := rd(at(0, 4, 0, 2), 2); got != 0x5678 {
		t.Fatalf("device ID through ECAM: %#x", got)
	}
	for _, c := range []struct {
		a uint64
		n int
	}{{at(0, 4, 0, 1), 2}, {at(0, 4, 0, 2), 4}, {at(0, 4, 0, 0), 8}, {at(0, 4, 0, 0x100), 4}, {at(0, 4, 0, 0xFFC), 4}, {at(0, 5, 0, 0), 4}, {at(255, 31, 7, 0), 4}} {
		if got := rd(c.a, c.n); got != uint32(1<<(8*min(c.n, 4))-1) {
			t.Errorf("ECAM read %d at %#x = %#x, want all ones", c.n, c.a, got)
		}
	}
	mmio.Write(at(0, 4, 0, RegBAR0), []byte{0xff, 0xff, 0xff, 0xff})
	if got := rd(at(0, 4, 0, RegBAR0), 4); got != 0xFFFFF000 {
		t.Fatalf("BAR0 through ECAM: %#x", got)
	}
	// Unaligned writes are dropped.
	mmio.Write(at(0, 4, 0, RegBAR0+1), []byte{0, 0})
	if got := rd(at(0, 4, 0, RegBAR0), 4); got != 0xFFFFF000 {
		t.Fatalf("unaligned write changed BAR0: %#x", got)
	}
}

func TestSaveRestore(t *testing.T) {
	mk := func() (*Root, *Function) {
		r := NewRoot(testWindows)
		f, _, _, _ := testFunction(t)
		if err := r.Add(2, f); err != nil {
			t.Fatal(err)
		}
		return r, f
	}
	r1, f1 := mk()
	cfgWrite32(f1, RegBAR0, 0xD0000000)
	cfgWrite32(f1, RegCommand, CmdMemory|CmdBusMaster)
	cfgWrite32(f1, RegInterruptLine, 11)
	r1.addr.Store(0x80001000)
	s := r1.Save()
	r2, f2 := mk()
	if err := r2.Restore(s); err != nil {
		t.Fatal(err)
	}
	if a, _ := f2.BARAddress(0); a != 0xD0000000 || f2.Command() != CmdMemory|CmdBusMaster || r2.addr.Load() != 0x80001000 {
		t.Fatalf("restored: BAR0 %#x command %#x latch %#x", a, f2.Command(), r2.addr.Load())
	}
	if rs := r2.Regions(); len(rs) != 2 || rs[0].Base != 0xD0000000 {
		t.Fatalf("restored regions %+v", rs)
	}
	// Read-only bits come from the model, not the snapshot.
	s.Functions["2.0"].Config[0] = 0x99
	if err := r2.Restore(s); err != nil || cfgRead32(f2, 0) != 0x56781234 {
		t.Fatal("restore changed a read-only register")
	}
	delete(s.Functions, "2.0")
	if r2.Restore(s) == nil {
		t.Fatal("restore without a function accepted")
	}
	s.Functions["2.0"] = FunctionState{Config: []byte{1}}
	if r2.Restore(s) == nil {
		t.Fatal("short configuration space accepted")
	}
	s.Functions["2.0"] = f1.Save()
	s.Functions["7.0"] = f1.Save()
	if r2.Restore(s) == nil {
		t.Fatal("extra function accepted")
	}
}

func TestAddErrors(t *testing.T) {
	r := NewRoot(Windows{IOBase: 0xC000, IOEnd: 0xC100, Mem32Base: 0xC0000000, Mem32End: 0xC0001000})
	for _, slot := range []int{0, 32, -1} {
		if r.Add(slot, NewFunction(Identity{})) == nil {
			t.Errorf("slot %d accepted", slot)
		}
	}
	f, _, _, _ := testFunction(t)
	if r.Add(1, f) == nil {
		t.Fatal("BARs larger than the windows accepted")
	}
}

// TestOnWrite checks the hook a device uses to act on its capability
// registers (MSI-X enable, for one): it sees every write, after the
// function's registers changed.
func TestOnWrite(t *testing.T) {
	f := NewFunction(Identity{Vendor: 1, Device: 2})
	off, err := f.AddCapability(0x11, []byte{0, 0}, []byte{0, 0xC0}) // MSI-X message control: enable, mask
	if err != nil {
		t.Fatal(err)
	}
	var seen []int
	f.OnWrite = func(o, n int) {
		v := cfgRead32(f, off) >> 16
		seen = append(seen, o, n, int(v))
	}
	f.WriteConfig(off+3, []byte{0xFF})
	if len(seen) != 3 || seen[0] != off+3 || seen[1] != 1 || seen[2] != 0xC000 {
		t.Fatalf("hook saw %v", seen)
	}
}

// TestExpansionROM: a ROM is placed like firmware leaves one (below 4 GiB,
// after the BARs, not enabled), sizes as PCI 3.0 says (the enable bit
// stays writable), decodes only with its enable bit and memory decode
// both on, follows the guest's moves, and a function without one keeps
// register 0x30 at zero.
func TestExpansionROM(t *testing.T) {
	r := NewRoot(testWindows)
	f, mem, _, _ := testFunction(t)
	rom := &recDev{}
	for _, size := range []uint64{0, 1 << 10, 3 << 10, 32 << 20} {
		if f.SetROM(size, rom) == nil {
			t.Errorf("ROM of %#x bytes accepted", size)
		}
	}
	if f.SetROM(8<<10, nil) == nil {
		t.Error("ROM without a device accepted")
	}
	if err := f.SetROM(8<<10, rom); err != nil {
		t.Fatal(err)
	}
	if f.SetROM(8<<10, rom) == nil {
		t.Error("second ROM accepted")
	}
	if err := r.Add(3, f); err != nil {
		t.Fatal(err)
	}
	// The 4 KiB BAR 0 is at the window's start; the ROM comes after it,
	// aligned to its 8 KiB.
	want := uint32(platform.PCIMMIO32Base + 0x2000)
	if got := cfgRead32(f, RegROM); got != want {
		t.Fatalf("ROM register %#x, want %#x (placed, disabled)", got, want)
	}
	mmio := bus.New("mmio", nil)
	mmio.SetFallback(r.MemSpace())
	b := make([]byte, 4)
	mmio.Read(uint64(want)+0x10, b)
	if rom.hits != 0 || b[0] != 0xff {
		t.Fatal("a disabled ROM decodes")
	}
	// Sizing: all ones (enable clear) reads back the size mask.
	cfgWrite32(f, RegROM, 0xfffff800)
	if got := cfgRead32(f, RegROM); got != 0xffffe000 {
		t.Fatalf("ROM sizing reads %#x, want 0xffffe000", got)
	}
	// The guest places and enables it.
	at := uint32(platform.PCIMMIO32Base + 0x10_0000)
	cfgWrite32(f, RegROM, at|1)
	mmio.Read(uint64(at)+0x1ffc, b)
	if rom.hits != 1 || rom.off != 0x1ffc || b[0] != 0xAB {
		t.Fatalf("enabled ROM: %+v, read %x", rom, b)
	}
	if regs := f.Regions(); regs[len(regs)-1].BAR != ROMBAR || regs[len(regs)-1].Size != 8<<10 {
		t.Fatalf("regions %+v: no ROM last", regs)
	}
	// Memory decode off hides it, with the BARs.
	cfgWrite32(f, RegCommand, CmdIO)
	mmio.Read(uint64(at), b)
	if rom.hits != 1 || mem.hits != 0 {
		t.Fatal("ROM decodes with memory space disabled")
	}
	// Back on, then the enable bit off.
	cfgWrite32(f, RegCommand, CmdIO|CmdMemory)
	cfgWrite32(f, RegROM, at)
	mmio.Read(uint64(at), b)
	if rom.hits != 1 {
		t.Fatal("ROM decodes with its enable bit clear")
	}
	// A saved and restored function keeps the guest's placement.
	cfgWrite32(f, RegROM, at|1)
	g, _, _, _ := testFunction(t)
	if err := g.SetROM(8<<10, rom); err != nil {
		t.Fatal(err)
	}
	if err := g.Restore(f.Save()); err != nil {
		t.Fatal(err)
	}
	if got := cfgRead32(g, RegROM); got != at|1 {
		t.Fatalf("restored ROM register %#x, want %#x", got, at|1)
	}
	// Without a ROM the register stays zero whatever is written.
	h, _, _, _ := testFunction(t)
	cfgWrite32(h, RegROM, 0xffffffff)
	if got := cfgRead32(h, RegROM); got != 0 {
		t.Fatalf("no ROM: register reads %#x", got)
	}
}

// TestHotAddRemove adds a function while "the guest runs": it is found by
// configuration cycles at once, decodes nothing until the guest places
// its BAR and enables memory decoding, and stops decoding when removed.
func TestHotAddRemove(t *testing.T) {
	r := NewRoot(testWindows)
	f, mem, _, _ := testFunction(t)
	if err := r.HotAdd(5, f); err != nil {
		t.Fatal(err)
	}
	if r.HotAdd(5, NewFunction(Identity{})) == nil || r.Add(5, NewFunction(Identity{})) == nil {
		t.Fatal("a second function at a taken slot was accepted")
	}
	var id [4]byte
	r.ReadConfig(0, 5, 0, RegVendorID, id[:])
	if binary.LittleEndian.Uint32(id[:]) != 0x5678_1234 {
		t.Fatalf("vendor/device at 00:05.0 = % x", id)
	}
	if a, _ := f.BARAddress(0); a != 0 || f.Command() != 0 || len(r.Regions()) != 0 {
		t.Fatalf("a hot-added function decodes before the guest placed it: BAR 0 at %#x, command %#x, regions %v", a, f.Command(), r.Regions())
	}
	mmio := bus.New("mmio", nil)
	mmio.SetFallback(r.MemSpace())
	const at = platform.PCIMMIO32Base + 0x10_0000
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], at)
	r.WriteConfig(0, 5, 0, RegBAR0, b[:])
	r.WriteConfig(0, 5, 0, RegCommand, []byte{CmdMemory, 0})
	mmio.Read(at+8, b[:])
	if mem.hits != 1 || mem.off != 8 {
		t.Fatalf("after the guest placed BAR 0: %+v", mem)
	}
	if got := r.Remove(5); got != f {
		t.Fatalf("Remove returned %p, want %p", got, f)
	}
	if r.Remove(5) != nil || r.Remove(0) != nil || r.Remove(99) != nil {
		t.Fatal("Remove of an empty slot, the host bridge or a bad slot returned a function")
	}
	mmio.Read(at+8, b[:])
	r.ReadConfig(0, 5, 0, RegVendorID, id[:])
	if mem.hits != 1 || id != [4]byte{0xff, 0xff, 0xff, 0xff} || len(r.Regions()) != 0 {
		t.Fatalf("after Remove: BAR hits %d, vendor % x, regions %v", mem.hits, id, r.Regions())
	}
	// The slot takes a new function again.
	if err := r.HotAdd(5, NewFunction(Identity{Vendor: 1})); err != nil {
		t.Fatal(err)
	}
}
