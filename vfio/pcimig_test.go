package vfio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/irq/routes"
	"govmm/pci"
	"govmm/vfio/abi"
)

// fakeMtty is an mtty-like mediated device: 4348:3253, one 8-port I/O
// BAR, INTA, no capabilities, a configuration region of 255 bytes, a
// driver that takes no INTx unmask eventfd, and VFIO migration whose
// state is a string it checks on load. Like mtty's, its PRE_COPY data is
// the header ("fifo:"), and STOP_COPY gives the rest.
type fakeMtty struct {
	*fakeDev
	flags    uint64
	state    string // what SaveMigration returns and LoadMigration sets
	stopped  bool
	unmasks  int
	dmaOn    bool
	dmaPages []uint64
	preCopy  bool // in PRE_COPY
	preRead  int  // bytes of state read in PRE_COPY
}

func newFakeMtty(ev *events) *fakeMtty {
	d := newFakeDev(ev, false)
	d.cfg = [256]byte{}
	le := binary.LittleEndian
	le.PutUint16(d.cfg[0:], 0x4348)
	le.PutUint16(d.cfg[2:], 0x3253)
	le.PutUint32(d.cfg[0x10:], 1) // I/O BAR
	d.cfg[0xb] = 0x07
	d.cfg[pci.RegInterruptPin] = 1
	d.bar = make([]byte, 8)
	return &fakeMtty{fakeDev: d, flags: abi.MigrationStopCopy | abi.MigrationPreCopy, state: "fifo:abc"}
}

func (d *fakeMtty) Name() string   { return "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001" }
func (d *fakeMtty) CanReset() bool { return false }
func (d *fakeMtty) Region(i int) abi.Region {
	if i == abi.PCIConfigRegion {
		return abi.Region{RegionInfo: abi.RegionInfo{Size: 255}}
	}
	return d.fakeDev.Region(i)
}
func (d *fakeMtty) ReadRegion(i int, off uint64, b []byte) error {
	if r := d.Region(i); off+uint64(len(b)) > r.Size {
		return fmt.Errorf("read of %d at %#x past region %d", len(b), off, i)
	}
	return d.fakeDev.ReadRegion(i, off, b)
}
func (d *fakeMtty) SetIRQUnmaskEventFD(index uint32, fd int32) error {
	return fmt.Errorf("unmask fd: %w", unix.ENOTTY)
}
func (d *fakeMtty) UnmaskIRQ(index uint32) error {
	d.ev.add("unmask index=%d", index)
	return nil
}
func (d *fakeMtty) Migratable() bool       { return d.flags&abi.MigrationStopCopy != 0 }
func (d *fakeMtty) MigrationFlags() uint64 { return d.flags }
func (d *fakeMtty) SaveMigration() ([]byte, error) {
	d.stopped = true
	if d.preCopy {
		d.preCopy = false
		d.ev.add("save after %d pre-copied", d.preRead)
		return []byte(d.state[d.preRead:]), nil
	}
	d.ev.add("save")
	return []byte(d.state), nil
}
func (d *fakeMtty) PreCopyCapable() bool {
	return d.flags&(abi.MigrationStopCopy|abi.MigrationPreCopy) == abi.MigrationStopCopy|abi.MigrationPreCopy
}
func (d *fakeMtty) StartPreCopy() error {
	d.preCopy, d.preRead = true, 0
	d.ev.add("pre_copy")
	return nil
}
func (d *fakeMtty) ReadPreCopy() ([]byte, error) {
	if !d.preCopy {
		return nil, nil
	}
	hdr := len("fifo:")
	b := []byte(d.state[d.preRead:hdr])
	d.preRead = hdr
	if len(b) > 0 {
		d.ev.add("pre_copy read %d", len(b))
	}
	return b, nil
}
func (d *fakeMtty) EndPreCopy() error {
	if d.preCopy {
		d.preCopy = false
		d.ev.add("pre_copy end")
	}
	return nil
}
func (d *fakeMtty) LoadMigration(b []byte) error {
	if !strings.HasPrefix(string(b), "fifo:") {
		return fmt.Errorf("bad state %q", b)
	}
	d.stopped = true
	d.state = string(b)
	d.ev.add("load %s", b)
	return nil
}
func (d *fakeMtty) Run() error { d.stopped = false; d.ev.add("run"); return nil }
func (d *fakeMtty) StartDMALogging(r []DirtyRange) error {
	d.dmaOn = true
	return nil
}
func (d *fakeMtty) DMADirty(mark func(gpa, size uint64)) error {
	for _, p := range d.dmaPages {
		mark(p, 4096)
	}
	d.dmaPages = nil
	return nil
}
func (d *fakeMtty) StopDMALogging() error { d.dmaOn = false; return nil }

func newMttyPCI(t *testing.T, ev *events, d device) *PCI {
	t.Helper()
	rt := routes.New(&fakeVM{ev: ev}, nil)
	rt.SetPinController(fakePins{ev})
	p, err := newPCI(d, PCIConfig{Router: rt, Log: slog.New(slog.DiscardHandler), INTxGSI: func(pin int) uint32 { return uint32(16 + pin) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// A mediated device with a short configuration region and no INTx unmask
// eventfd is a function like any other: the region's missing byte reads
// as zero, and govmm unmasks INTx itself when the resample eventfd fires.
func TestMdevFunction(t *testing.T) {
	ev := &events{}
	d := newFakeMtty(ev)
	p := newMttyPCI(t, ev, d)
	var id [4]byte
	p.Function().ReadConfig(pci.RegVendorID, id[:])
	if binary.LittleEndian.Uint32(id[:]) != 0x32534348 {
		t.Fatalf("IDs %x, want 4348:3253", id)
	}
	ev.take()
	if err := p.Start(); err != nil {
		t.Fatalf("start with a driver that refuses the unmask eventfd: %v", err)
	}
	p.intx.unmask.Signal() // the guest's EOI
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(ev.take(), "unmask index=0") {
		if time.Now().After(deadline) {
			t.Fatal("the resample eventfd did not unmask INTx")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A driver that fails the unmask eventfd otherwise is an error.
	ev2 := &events{}
	p2 := newMttyPCI(t, ev2, &refusingUnmask{newFakeMtty(ev2)})
	if err := p2.Start(); err == nil {
		t.Error("an unmask eventfd refused with EINVAL: Start did not fail")
	}
}

type refusingUnmask struct{ *fakeMtty }

func (d *refusingUnmask) SetIRQUnmaskEventFD(uint32, int32) error { return unix.EINVAL }

func TestMigrationState(t *testing.T) {
	ev := &events{}
	src := newFakeMtty(ev)
	p := newMttyPCI(t, ev, src)
	if err := p.Migratable(); err != nil {
		t.Fatal(err)
	}
	ms, err := p.SaveMigration()
	if err != nil {
		t.Fatal(err)
	}
	if ms.Vendor != 0x4348 || ms.Device != 0x3253 || string(ms.Data) != "fifo:abc" || ms.MigFlags != src.flags || ms.Name != src.Name() || !src.stopped {
		t.Fatalf("saved %+v (stopped %v)", ms, src.stopped)
	}
	if err := p.Run(); err != nil || src.stopped {
		t.Fatalf("run: %v, stopped %v", err, src.stopped)
	}

	ev2 := &events{}
	dst := newFakeMtty(ev2)
	dst.state = "fifo:"
	q := newMttyPCI(t, ev2, dst)
	// The guest's command register (I/O decode) comes with the bus's
	// state; loading the device's state forwards it to the device.
	q.Function().WriteConfig(pci.RegCommand, []byte{pci.CmdIO, 0})
	dst.cfg[pci.RegCommand] = 0
	ev2.take()
	if err := q.LoadMigration(ms); err != nil {
		t.Fatal(err)
	}
	if dst.state != "fifo:abc" || !dst.stopped || dst.cfg[pci.RegCommand]&pci.CmdIO == 0 {
		t.Errorf("after load: state %q stopped %v command %#x", dst.state, dst.stopped, dst.cfg[pci.RegCommand])
	}

	for _, c := range []struct {
		name string
		edit func(*MigrationState)
		want string
	}{
		{"vendor", func(s *MigrationState) { s.Vendor = 0x1234 }, "same kind"},
		{"subsystem", func(s *MigrationState) { s.SubID = 7 }, "same kind"},
		{"flags", func(s *MigrationState) { s.MigFlags |= abi.MigrationP2P }, "migration flags"},
		{"empty", func(s *MigrationState) { s.Data = nil }, "no migration data"},
		{"refused", func(s *MigrationState) { s.Data = []byte("garbage") }, "bad state"},
	} {
		bad := ms
		c.edit(&bad)
		dst.state = "fifo:"
		err := q.LoadMigration(bad)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: load = %v, want an error with %q", c.name, err, c.want)
		}
		if dst.state != "fifo:" {
			t.Errorf("%s: the device took %q", c.name, dst.state)
		}
	}

	// A device without migration is refused by name.
	ev3 := &events{}
	plain := newMttyPCI(t, ev3, newFakeDev(ev3, false))
	if err := plain.Migratable(); err == nil || !strings.Contains(err.Error(), "0000:00:03.0") || !strings.Contains(err.Error(), "STOP_COPY") {
		t.Errorf("edu-like device without migration: %v", err)
	}
	if _, err := plain.SaveMigration(); err == nil {
		t.Error("saved a device without migration")
	}
	noMig := newFakeMtty(ev3)
	noMig.flags = abi.MigrationP2P
	if err := newMttyPCI(t, ev3, noMig).Migratable(); err == nil {
		t.Error("a device without STOP_COPY is migratable")
	}
}

func TestDMALoggingPassThrough(t *testing.T) {
	ev := &events{}
	d := newFakeMtty(ev)
	p := newMttyPCI(t, ev, d)
	if err := p.StartDMALogging([]DirtyRange{{0, 1 << 20}}); err != nil || !d.dmaOn {
		t.Fatalf("start: %v", err)
	}
	d.dmaPages = []uint64{0x3000, 0x8000}
	var got []uint64
	if err := p.DMADirty(func(gpa, size uint64) { got = append(got, gpa) }); err != nil || !slices.Equal(got, []uint64{0x3000, 0x8000}) {
		t.Errorf("dirty %#x, %v", got, err)
	}
	if err := p.StopDMALogging(); err != nil || d.dmaOn {
		t.Errorf("stop: %v", err)
	}
	ev2 := &events{}
	if err := newMttyPCI(t, ev2, newFakeDev(ev2, false)).StartDMALogging([]DirtyRange{{0, 4096}}); err == nil {
		t.Error("a device without DMA logging started it")
	}
	// A device whose log cannot be reported does not stop the migration:
	// its fallback (all RAM once stopped) is the device's, and the
	// function only logs why.
	ev3 := &events{}
	if err := newMttyPCI(t, ev3, &unreportable{newFakeMtty(ev3)}).StartDMALogging([]DirtyRange{{0, 4096}}); err != nil {
		t.Errorf("a device with an unusable DMA log: %v", err)
	}
}

type unreportable struct{ *fakeMtty }

func (d *unreportable) StartDMALogging([]DirtyRange) error {
	return fmt.Errorf("report: %w", unix.EOPNOTSUPP)
}

func TestParseMdevAddress(t *testing.T) {
	u := "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
	for _, in := range []string{"/sys/bus/mdev/devices/" + u, "/sys/bus/mdev/devices/" + strings.ToUpper(u) + "/"} {
		if got, err := ParseAddress(in); err != nil || got != u || !IsMdev(got) {
			t.Errorf("ParseAddress(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseAddress("/sys/bus/mdev/devices/not-a-uuid"); err == nil {
		t.Error("a non-UUID mdev name: no error")
	}
	if IsMdev("0000:00:03.0") {
		t.Error("a PCI address is an mdev")
	}
	if _, err := CheckMdev("00000000-0000-0000-0000-000000000000"); err == nil || !strings.Contains(err.Error(), "no such mediated device") {
		t.Errorf("a missing mdev: %v", err)
	}
}

// TestPreCopyState: a device with PRE_COPY gives its initial data while
// it runs, then the rest when stopped; the state counts the pre-copied
// bytes and is refused until they are put back in front (the receiver's
// job); the whole stream loads. A migration that fails returns the
// device from PRE_COPY to RUNNING and forgets the count. A device
// without PRE_COPY is not put in it.
func TestPreCopyState(t *testing.T) {
	ev := &events{}
	src := newFakeMtty(ev)
	p := newMttyPCI(t, ev, src)
	ev.take()
	if on, err := p.StartPreCopy(); !on || err != nil {
		t.Fatalf("start pre-copy: %v, %v", on, err)
	}
	var pre []byte
	for range 3 {
		b, err := p.PreCopyData()
		if err != nil {
			t.Fatal(err)
		}
		pre = append(pre, b...)
	}
	ms, err := p.SaveMigration()
	if err != nil {
		t.Fatal(err)
	}
	if string(pre) != "fifo:" || string(ms.Data) != "abc" || ms.PreCopy != 5 {
		t.Fatalf("pre-copied %q, then %q counting %d; want fifo:, abc, 5", pre, ms.Data, ms.PreCopy)
	}
	if l := ev.take(); !slices.Equal(l, []string{"pre_copy", "pre_copy read 5", "save after 5 pre-copied"}) {
		t.Errorf("source calls %q", l)
	}

	ev2 := &events{}
	dst := newFakeMtty(ev2)
	dst.state = "fifo:"
	q := newMttyPCI(t, ev2, dst)
	if err := q.LoadMigration(ms); err == nil || !strings.Contains(err.Error(), "pre-copy") {
		t.Errorf("state without its pre-copied bytes: %v", err)
	}
	whole := ms
	whole.Data, whole.PreCopy = append(slices.Clone(pre), ms.Data...), 0
	if err := q.LoadMigration(whole); err != nil || dst.state != "fifo:abc" {
		t.Errorf("whole stream: %v, device state %q", err, dst.state)
	}

	// A failed migration: back to RUNNING, and the next one starts
	// counting afresh.
	if err := p.Run(); err != nil {
		t.Fatal(err)
	}
	p.StartPreCopy()
	p.PreCopyData()
	ev.take()
	if err := p.EndPreCopy(); err != nil || src.preCopy {
		t.Fatalf("end pre-copy: %v (still in PRE_COPY: %v)", err, src.preCopy)
	}
	if l := ev.take(); !slices.Equal(l, []string{"pre_copy end"}) {
		t.Errorf("failed migration: %q", l)
	}
	if ms, err := p.SaveMigration(); err != nil || ms.PreCopy != 0 || string(ms.Data) != "fifo:abc" {
		t.Errorf("snapshot after a failed migration: %q counting %d, %v", ms.Data, ms.PreCopy, err)
	}

	ev3 := &events{}
	noPre := newFakeMtty(ev3)
	noPre.flags = abi.MigrationStopCopy
	if on, err := newMttyPCI(t, ev3, noPre).StartPreCopy(); on || err != nil || noPre.preCopy {
		t.Errorf("a device without PRE_COPY: started %v, %v", on, err)
	}
}
