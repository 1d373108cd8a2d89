package vfio

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/irq/routes"
	"govmm/pci"
	"govmm/vfio/abi"
)

// migMSIX is the edu-like fakeDev (MSI at 0x40, MSI-X with 4 vectors at
// 0x90, the table at 0x2000 and the PBA at 0x3000 of BAR 0) with
// fakeMtty's VFIO migration: a device with both, which no device in the
// test L1s is.
type migMSIX struct{ *fakeMtty }

func newMigMSIX(ev *events, tweaks ...func(*fakeDev)) migMSIX {
	d := newFakeDev(ev, false)
	for _, tw := range tweaks {
		tw(d)
	}
	return migMSIX{&fakeMtty{fakeDev: d, flags: abi.MigrationStopCopy, state: "fifo:abc"}}
}

func (d migMSIX) Name() string            { return d.fakeDev.Name() }
func (d migMSIX) CanReset() bool          { return d.fakeDev.CanReset() }
func (d migMSIX) Region(i int) abi.Region { return d.fakeDev.Region(i) }
func (d migMSIX) ReadRegion(i int, off uint64, b []byte) error {
	return d.fakeDev.ReadRegion(i, off, b)
}
func (d migMSIX) SetIRQUnmaskEventFD(index uint32, fd int32) error {
	return d.fakeDev.SetIRQUnmaskEventFD(index, fd)
}

// recKVM is kernelVM whose irqfd assignments are in the call sequence.
type recKVM struct{ *kernelVM }

func (k recKVM) AssignIRQFD(f accel.IRQFD) error {
	k.ev.add("irqfd gsi=%d", f.GSI)
	return k.kernelVM.AssignIRQFD(f)
}
func (k recKVM) DeassignIRQFD(f accel.IRQFD) error {
	k.ev.add("deirqfd gsi=%d", f.GSI)
	return k.kernelVM.DeassignIRQFD(f)
}

// migSide is one end of a migration: a device on a bus at slot 3 over a
// kernelVM.
type migSide struct {
	t   *testing.T
	p   *PCI
	d   migMSIX
	k   *kernelVM
	r   *pci.Root
	bar pci.Region
}

// restore brings a destination side up as a restore does: the bus's
// state, then the function's migration state, then its interrupts
// (Start); the calls before the load are dropped, those of the load and
// Start are left for the test to read.
func (m *migSide) restore(bus pci.State, ms MigrationState) {
	m.t.Helper()
	if err := m.r.Restore(bus); err != nil {
		m.t.Fatal(err)
	}
	m.k.ev.take()
	if err := m.p.LoadMigration(ms); err != nil {
		m.t.Fatal(err)
	}
	if err := m.p.Start(); err != nil {
		m.t.Fatal(err)
	}
}

// newMigSide builds a side; a source is started, a destination is left
// as a VM built for saved state leaves it (Start after LoadMigration).
func newMigSide(t *testing.T, order Order, start bool, tweaks ...func(*fakeDev)) *migSide {
	t.Helper()
	k := newKernelVM()
	d := newMigMSIX(k.ev, tweaks...)
	rt := routes.New(recKVM{k}, nil)
	rt.SetPinController(fakePins{k.ev})
	p, err := newPCI(d, PCIConfig{Router: rt, Order: order, Log: slog.New(slog.DiscardHandler),
		INTxGSI: func(pin int) uint32 { return uint32(16 + (3+pin-1)%8) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	r := pci.NewRoot(pci.Windows{IOBase: 0xc000, IOEnd: 0x10000, Mem32Base: 0xc0000000, Mem32End: 0xe0000000})
	if err := r.Add(3, p.Function()); err != nil {
		t.Fatal(err)
	}
	if start {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
	}
	s := &migSide{t: t, p: p, d: d, k: k, r: r}
	for _, reg := range r.Regions() {
		if reg.BAR == 0 {
			s.bar = reg
		}
	}
	return s
}

func (s *migSide) w32(off uint64, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	s.bar.Dev.Write(off, b)
	s.k.wake(s.t)
}

func (s *migSide) table() []byte {
	b := make([]byte, 4*msixEntrySize)
	for o := 0; o < len(b); o += 4 {
		s.bar.Dev.Read(0x2000+uint64(o), b[o:o+4])
	}
	return b
}

func (s *migSide) pba() uint8 {
	b := make([]byte, 8)
	s.bar.Dev.Read(0x3000, b)
	s.k.wake(s.t)
	return b[0]
}

func (s *migSide) injected(gsis []uint32) []int {
	s.k.wake(s.t)
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	var out []int
	for _, g := range gsis {
		out = append(out, s.k.injected[g])
	}
	return out
}

// irqCalls keeps the calls that wire interrupts and move the device.
func irqCalls(l []string) []string {
	return slices.DeleteFunc(l, func(s string) bool {
		for _, p := range []string{"set_irqs", "disable_irqs", "commit", "irqfd", "deirqfd", "load", "run", "save", "unmask", "resampler"} {
			if strings.HasPrefix(s, p) {
				return false
			}
		}
		return true
	})
}

// TestMigrationMSIX: a device with MSI-X and VFIO migration is saved and
// restored with the table the guest programmed (addresses, data, mask
// bits) and the pending bits of its masked vectors, in both orders. On
// the destination the device's data is loaded first; then the enabled
// vectors are wired in the order's sequence, only the unmasked ones with
// a route and an irqfd, with no INTx (VFIO takes one interrupt type);
// then the device runs. A vector pending at the source reads pending in
// the destination's PBA and is delivered once when unmasked; nothing is
// delivered at the restore. With the function mask on, nothing is
// routed until the guest clears it.
func TestMigrationMSIX(t *testing.T) {
	for _, c := range []struct {
		order Order
		want  []string
	}{
		{OrderRouteFirst, []string{"load fifo:abc",
			"commit 24:0xfee00000/0x60", "irqfd gsi=24", "commit 24:0xfee00000/0x60,26:0xfee02000/0x62", "irqfd gsi=26", "set_irqs index=2 n=4",
			"run"}},
		{OrderIRQsFirst, []string{"load fifo:abc",
			"set_irqs index=2 n=4", "commit 24:0xfee00000/0x60", "irqfd gsi=24", "commit 24:0xfee00000/0x60,26:0xfee02000/0x62", "irqfd gsi=26",
			"run"}},
	} {
		for _, fmask := range []bool{false, true} {
			name := c.order.String()
			if fmask {
				name += "-function-masked"
			}
			t.Run(name, func(t *testing.T) {
				src := newMigSide(t, c.order, true)
				for v := uint64(0); v < 4; v++ {
					src.w32(0x2000+v*16, 0xfee00000|uint32(v)<<12)
					src.w32(0x2000+v*16+8, 0x60+uint32(v))
				}
				ctl := uint32(msixCtlEnable)
				if fmask {
					ctl |= msixCtlFuncMask
				}
				cfgWrite(src.r, src.p.msix.cap+2, 2, ctl)
				src.w32(0x2000+0*16+12, 0) // vectors 0 and 2 unmasked, 1 and 3 masked
				src.w32(0x2000+2*16+12, 0)
				sg := slices.Clone(src.p.msix.gsis)
				// Vector 1's message is drained into its pending bit by a
				// PBA read; vector 3's still waits in its eventfd.
				src.k.signal(t, src.p.msix.evs[1])
				if pba := src.pba(); pba != 0x2 {
					t.Fatalf("source PBA %#x, want 0x2", pba)
				}
				src.k.signal(t, src.p.msix.evs[3])
				if !fmask {
					src.k.signal(t, src.p.msix.evs[0]) // delivered at the source
				}
				srcTable := src.table()
				srcInj := src.injected(sg)

				ms, err := src.p.SaveMigration()
				if err != nil {
					t.Fatal(err)
				}
				if ms.MSIX == nil || ms.MSIX.Vectors != 4 || !bytes.Equal(ms.MSIX.Table, srcTable) || !slices.Equal(ms.MSIX.Pending, []uint64{0xa}) {
					t.Fatalf("saved MSI-X %+v, want the table % x and pending 0xa", ms.MSIX, srcTable)
				}
				bus := src.r.Save()

				dst := newMigSide(t, c.order, false)
				dst.restore(bus, ms)
				if err := dst.p.Run(); err != nil {
					t.Fatal(err)
				}
				want := c.want
				if fmask {
					want = slices.DeleteFunc(slices.Clone(want), func(s string) bool {
						return strings.HasPrefix(s, "commit") || strings.HasPrefix(s, "irqfd")
					})
				}
				if l := irqCalls(dst.k.ev.take()); !slices.Equal(l, want) {
					t.Errorf("restore: %q\nwant %q", l, want)
				}
				if dst.d.irqsOn[abi.PCIINTxIRQ] != 0 || dst.d.irqsOn[abi.PCIMSIXIRQ] != 4 {
					t.Errorf("device interrupts after the restore: %v, want MSI-X's 4 vectors only", dst.d.irqsOn)
				}
				if got := dst.table(); !bytes.Equal(got, srcTable) {
					t.Errorf("destination table\n% x\nwant\n% x", got, srcTable)
				}
				dg := dst.p.msix.gsis
				if inj := dst.injected(dg); !slices.Equal(inj, []int{0, 0, 0, 0}) {
					t.Errorf("the restore delivered %v (source had %v)", inj, srcInj)
				}
				if pba := dst.pba(); pba != 0xa {
					t.Errorf("destination PBA %#x, want 0xa", pba)
				}
				if fmask {
					cfgWrite(dst.r, dst.p.msix.cap+2, 2, msixCtlEnable)
					if l := irqCalls(dst.k.ev.take()); !slices.Equal(l, []string{"commit 24:0xfee00000/0x60", "irqfd gsi=24", "commit 24:0xfee00000/0x60,26:0xfee02000/0x62", "irqfd gsi=26"}) {
						t.Errorf("function mask cleared: %q", l)
					}
				}
				// Unmasking vector 1 delivers its pending message once.
				dst.w32(0x2000+1*16+12, 0)
				if inj, pba := dst.injected(dg), dst.pba(); !slices.Equal(inj, []int{0, 1, 0, 0}) || pba != 0x8 {
					t.Errorf("vector 1 unmasked: injected %v, PBA %#x; want [0 1 0 0], 0x8", inj, pba)
				}
				dst.k.signal(t, dst.p.msix.evs[2])
				if inj := dst.injected(dg); !slices.Equal(inj, []int{0, 1, 1, 0}) {
					t.Errorf("vector 2 fired: injected %v", inj)
				}
			})
		}
	}
}

// TestMigrationMSIXRefused: saved MSI-X state that does not fit the
// function, truncated or damaged, or missing (a version 1 section) is
// refused before the device takes anything, saying what is wrong.
func TestMigrationMSIXRefused(t *testing.T) {
	src := newMigSide(t, OrderRouteFirst, true)
	cfgWrite(src.r, src.p.msix.cap+2, 2, msixCtlEnable)
	good, err := src.p.SaveMigration()
	if err != nil {
		t.Fatal(err)
	}
	dst := newMigSide(t, OrderRouteFirst, false)
	for _, c := range []struct {
		name string
		edit func(*MigrationState)
		want string
	}{
		{"no MSI-X state", func(s *MigrationState) { s.MSIX = nil }, "carries no MSI-X table"},
		{"other vector count", func(s *MigrationState) { s.MSIX.Vectors = 8 }, "has 4 MSI-X vectors, the saved device 0000:00:03.0 had 8"},
		{"truncated table", func(s *MigrationState) { s.MSIX.Table = s.MSIX.Table[:40] }, "table is 40 bytes, 4 vectors need 64"},
		{"no pending bits", func(s *MigrationState) { s.MSIX.Pending = nil }, "pending bits are 0 words"},
		{"pending past the table", func(s *MigrationState) { s.MSIX.Pending = []uint64{1 << 4} }, "name vectors past its 4"},
		{"MSI pending without masking", func(s *MigrationState) { s.MSI = &MSIState{Pending: 1} }, "no MSI with per-vector masking"},
		{"pre-copy bytes missing", func(s *MigrationState) { s.PreCopy = 3 }, "sent in pre-copy"},
	} {
		bad := good
		m := *good.MSIX
		m.Table = slices.Clone(m.Table)
		bad.MSIX = &m
		c.edit(&bad)
		dst.k.ev.take()
		err := dst.p.LoadMigration(bad)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "0000:00:03.0") {
			t.Errorf("%s: load = %v, want an error naming the device with %q", c.name, err, c.want)
		}
		if l := irqCalls(dst.k.ev.take()); len(l) != 0 {
			t.Errorf("%s: the refused state reached the device or the accelerator: %q", c.name, l)
		}
	}
	// A function without MSI-X refuses a state that has it.
	ev := &events{}
	mtty := newMttyPCI(t, ev, newFakeMtty(ev))
	s := good
	s.Vendor, s.Device, s.SubVen, s.SubID, s.MigFlags = 0x4348, 0x3253, 0, 0, abi.MigrationStopCopy
	if err := mtty.CheckMigration(s); err == nil || !strings.Contains(err.Error(), "has no MSI-X") {
		t.Errorf("MSI-X state for a function without it: %v", err)
	}
}

// TestMigrationMSIPending: MSI with per-vector masking carries its
// pending bits (the mask bits travel in configuration space): a message
// sent under the mask at the source is pending at the destination and
// delivered once by the unmask, in both orders.
func TestMigrationMSIPending(t *testing.T) {
	for _, order := range []Order{OrderRouteFirst, OrderIRQsFirst} {
		t.Run(order.String(), func(t *testing.T) {
			src := newMigSide(t, order, true, maskable(true, 2))
			m := src.p.msi
			cfgWrite(src.r, m.cap+m.maskOff(), 4, 0x5) // vectors 0 and 2 masked
			cfgWrite(src.r, m.cap+4, 4, 0xfee00000)
			cfgWrite(src.r, m.cap+m.dataOff(), 2, 0x60)
			cfgWrite(src.r, m.cap+2, 2, msiCtlEnable|2<<4)
			src.k.wake(t)
			src.k.signal(t, m.evs[0])
			src.k.signal(t, m.evs[1]) // unmasked: delivered at the source
			ms, err := src.p.SaveMigration()
			if err != nil {
				t.Fatal(err)
			}
			if ms.MSI == nil || ms.MSI.Pending != 1 {
				t.Fatalf("saved MSI %+v, want pending 0x1", ms.MSI)
			}
			dst := newMigSide(t, order, false, maskable(true, 2))
			dst.restore(src.r.Save(), ms)
			l := irqCalls(dst.k.ev.take())
			si := slices.Index(l, "set_irqs index=1 n=4")
			if l[0] != "load fifo:abc" || si < 0 || slices.Contains(l, "set_irqs index=0 n=1") {
				t.Errorf("restore: %q", l)
			}
			dm := dst.p.msi
			dst.k.wake(t)
			if p := cfgRead(dst.r, dm.cap+dm.pendingOff(), 4); p != 1 {
				t.Errorf("destination pending bits %#x, want 0x1", p)
			}
			if inj := dst.injected(dm.gsis); !slices.Equal(inj, []int{0, 0, 0, 0}) {
				t.Errorf("the restore delivered %v", inj)
			}
			cfgWrite(dst.r, dm.cap+dm.maskOff(), 4, 0x4)
			if inj := dst.injected(dm.gsis); !slices.Equal(inj, []int{1, 0, 0, 0}) {
				t.Errorf("vector 0 unmasked: injected %v, want [1 0 0 0]", inj)
			}
			if p := cfgRead(dst.r, dm.cap+dm.pendingOff(), 4); p != 0 {
				t.Errorf("pending bits after the unmask %#x", p)
			}
		})
	}
}
