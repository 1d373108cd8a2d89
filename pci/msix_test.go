package pci

import (
	"encoding/binary"
	"errors"
	"testing"

	"govmm/accel"
	"govmm/irq/routes"
)

// msixVM is the accelerator as the routing table sees it: it records the
// committed table and the assigned irqfds.
type msixVM struct {
	accel.VM
	routes map[uint32]accel.Route
	irqfds map[int]accel.IRQFD
	fail   bool
}

func (v *msixVM) SetGSIRouting(rs []accel.Route) error {
	if v.fail {
		return errors.New("EINVAL")
	}
	v.routes = map[uint32]accel.Route{}
	for _, r := range rs {
		v.routes[r.GSI] = r
	}
	return nil
}
func (v *msixVM) AssignIRQFD(f accel.IRQFD) error {
	if _, ok := v.irqfds[f.FD]; ok {
		return errors.New("EBUSY")
	}
	v.irqfds[f.FD] = f
	return nil
}
func (v *msixVM) DeassignIRQFD(f accel.IRQFD) error {
	delete(v.irqfds, f.FD)
	return nil
}

type msixRig struct {
	t   *testing.T
	vm  *msixVM
	tb  *routes.Table
	f   *Function
	m   *MSIX
	bar *recDev
}

const (
	rigVectors = 5
	rigTable   = 0x1000
	rigPBA     = 0x1800
)

func newMSIXRig(t *testing.T, vm *msixVM, tb *routes.Table) *msixRig {
	t.Helper()
	if vm == nil {
		vm = &msixVM{irqfds: map[int]accel.IRQFD{}}
		tb = routes.New(vm, nil)
	}
	f := NewFunction(Identity{Vendor: 0x1af4, Device: 0x1041})
	bar := &recDev{}
	if err := f.SetBAR(0, BAR{Kind: BARMem64, Size: 0x2000, Dev: bar}); err != nil {
		t.Fatal(err)
	}
	m, err := NewMSIX(f, MSIXConfig{Vectors: rigVectors, BAR: 0, TableOffset: rigTable, PBAOffset: rigPBA, Router: tb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &msixRig{t: t, vm: vm, tb: tb, f: f, m: m, bar: bar}
}

func (r *msixRig) ctl(v uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], v)
	r.f.WriteConfig(r.m.CapOffset()+2, b[:])
}

func (r *msixRig) entry(v int, addr uint64, data uint32, masked bool) {
	var e [16]byte
	le := binary.LittleEndian
	le.PutUint64(e[0:], addr)
	le.PutUint32(e[8:], data)
	if masked {
		e[12] = 1
	}
	// As Linux does: address and data as dwords, then vector control.
	for _, o := range []int{0, 4, 8, 12} {
		r.m.Table().Write(uint64(v*16+o), e[o:o+4])
	}
}

func (r *msixRig) mask(v int, masked bool) {
	var b [4]byte
	if masked {
		b[0] = 1
	}
	r.m.Table().Write(uint64(v*16+12), b[:])
}

func (r *msixRig) pba() uint64 {
	var b [8]byte
	r.m.PBA().Read(0, b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// fired returns how many times vector v's irqfd was signalled since the
// last call.
func (r *msixRig) fired(v int) uint64 {
	r.t.Helper()
	n, err := r.m.vec[v].ev.TryRead()
	if err != nil {
		r.t.Fatal(err)
	}
	return n
}

func (r *msixRig) routeOf(v int) (accel.Route, bool) {
	rt, ok := r.vm.routes[r.m.vec[v].gsi]
	return rt, ok
}

func TestMSIXCapability(t *testing.T) {
	r := newMSIXRig(t, nil, nil)
	caps := r.f.Capabilities(CapIDMSIX)
	if len(caps) != 1 || caps[0] != r.m.CapOffset() {
		t.Fatalf("MSI-X capability at %v, want [%#x]", caps, r.m.CapOffset())
	}
	o := r.m.CapOffset()
	if got := cfgRead32(r.f, o) >> 16; got != rigVectors-1 {
		t.Fatalf("table size field %d, want %d", got, rigVectors-1)
	}
	if got := cfgRead32(r.f, o+4); got != rigTable|0 {
		t.Fatalf("table offset/BIR %#x", got)
	}
	if got := cfgRead32(r.f, o+8); got != rigPBA|0 {
		t.Fatalf("PBA offset/BIR %#x", got)
	}
	// Only enable and function mask are writable.
	cfgWrite32(r.f, o, 0xffffffff)
	if got := cfgRead32(r.f, o) >> 16; got != 0xc000|(rigVectors-1) {
		t.Fatalf("message control after writing ones: %#x", got)
	}
	cfgWrite32(r.f, o+4, 0)
	if cfgRead32(r.f, o+4) != rigTable {
		t.Fatal("table offset writable")
	}
	// Every vector starts masked.
	for v := range rigVectors {
		var b [4]byte
		r.m.Table().Read(uint64(v*16+12), b[:])
		if b[0] != 1 {
			t.Fatalf("vector %d control %#x after reset, want masked", v, b[0])
		}
	}
}

func TestMSIXDeliveryAndMasking(t *testing.T) {
	r := newMSIXRig(t, nil, nil)
	// Disabled: nothing is sent and nothing is pending.
	if err := r.m.Trigger(1); err != nil {
		t.Fatal(err)
	}
	if r.pba() != 0 || r.fired(1) != 0 {
		t.Fatal("a disabled MSI-X function sent or held a message")
	}
	r.ctl(msixCtlEnable)
	// Masked vector: pending, no route yet.
	r.m.Trigger(1)
	if r.pba() != 1<<1 || r.fired(1) != 0 {
		t.Fatalf("masked vector: PBA %#x", r.pba())
	}
	if _, ok := r.routeOf(1); ok {
		t.Fatal("a masked, unprogrammed vector got a route")
	}
	// Program and unmask: route committed, irqfd assigned, the pending
	// message delivered.
	r.entry(1, 0xfee01000, 0x41, false)
	rt, ok := r.routeOf(1)
	if !ok || rt.MSI != (accel.MSI{AddressLo: 0xfee01000, Data: 0x41}) {
		t.Fatalf("route after unmask: %+v %v", rt, ok)
	}
	if len(r.vm.irqfds) != 1 {
		t.Fatalf("%d irqfds assigned, want 1", len(r.vm.irqfds))
	}
	if r.pba() != 0 || r.fired(1) != 1 {
		t.Fatal("pending message not delivered on unmask")
	}
	// Unmasked: straight through the irqfd.
	r.m.Trigger(1)
	r.m.Trigger(1)
	if r.fired(1) != 2 || r.pba() != 0 {
		t.Fatal("unmasked vector did not fire twice")
	}
	// Vector mask.
	r.mask(1, true)
	r.m.Trigger(1)
	if r.fired(1) != 0 || r.pba() != 2 {
		t.Fatal("masked vector fired")
	}
	r.mask(1, false)
	if r.fired(1) != 1 || r.pba() != 0 {
		t.Fatal("unmask did not deliver")
	}
	// Function mask.
	r.ctl(msixCtlEnable | msixCtlFuncMask)
	r.m.Trigger(1)
	if r.fired(1) != 0 || r.pba() != 2 {
		t.Fatal("function-masked vector fired")
	}
	r.ctl(msixCtlEnable)
	if r.fired(1) != 1 || r.pba() != 0 {
		t.Fatal("function unmask did not deliver")
	}
	// Rerouted when the guest changes address or data while unmasked.
	r.entry(1, 0xfee02000, 0x42, false)
	if rt, _ := r.routeOf(1); rt.MSI != (accel.MSI{AddressLo: 0xfee02000, Data: 0x42}) {
		t.Fatalf("route not updated: %+v", rt.MSI)
	}
	if len(r.vm.irqfds) != 1 {
		t.Fatal("reroute assigned a second irqfd")
	}
	// Out of range.
	if err := r.m.Trigger(rigVectors); err == nil {
		t.Fatal("Trigger of a vector past the table accepted")
	}
	// The PBA is read-only.
	r.mask(3, true)
	r.m.Trigger(3)
	r.m.PBA().Write(0, make([]byte, 8))
	if r.pba() != 1<<3 {
		t.Fatal("PBA write cleared a pending bit")
	}
}

func TestMSIXTableAccess(t *testing.T) {
	r := newMSIXRig(t, nil, nil)
	// A qword write of address, a dword of data.
	var q [8]byte
	binary.LittleEndian.PutUint64(q[:], 0x1_fee0_0003)
	r.m.Table().Write(2*16, q[:])
	r.m.Table().Read(2*16, q[:])
	if got := binary.LittleEndian.Uint64(q[:]); got != 0x1_fee0_0000 {
		t.Fatalf("address %#x: the low two bits must read zero", got)
	}
	// Reserved vector-control bits read zero.
	r.m.Table().Write(2*16+12, []byte{0xff, 0xff, 0xff, 0xff})
	var c [4]byte
	r.m.Table().Read(2*16+12, c[:])
	if binary.LittleEndian.Uint32(c[:]) != 1 {
		t.Fatalf("vector control %x", c)
	}
	// Past the table: zeros, writes dropped, no panic.
	r.m.Table().Write(rigVectors*16, []byte{1, 2, 3, 4})
	r.m.Table().Read(rigVectors*16-2, c[:])
	if c[2] != 0 || c[3] != 0 {
		t.Fatalf("bytes past the table read %x", c)
	}
	r.m.Table().Read(^uint64(0), c[:])
	r.m.PBA().Read(^uint64(1), c[:])
}

func TestMSIXRouteFailureKeepsPending(t *testing.T) {
	r := newMSIXRig(t, nil, nil)
	r.vm.fail = true
	r.ctl(msixCtlEnable)
	r.entry(0, 0xfee00000, 0x30, false)
	r.m.Trigger(0)
	if r.pba() != 1 || r.fired(0) != 0 {
		t.Fatal("a vector whose route failed did not stay pending")
	}
	r.vm.fail = false
	r.mask(0, true)
	r.mask(0, false)
	if r.pba() != 0 || r.fired(0) != 1 {
		t.Fatal("the pending message was not delivered once the route worked")
	}
}

func TestMSIXSaveRestore(t *testing.T) {
	r := newMSIXRig(t, nil, nil)
	r.ctl(msixCtlEnable)
	r.entry(0, 0xfee00000, 0x30, false)
	r.entry(2, 0xfee01000, 0x31, true)
	r.m.Trigger(2)
	fs, ms := r.f.Save(), r.m.Save()

	// A fresh machine: new table and function, same GSIs.
	r2 := newMSIXRig(t, nil, nil)
	if err := r2.f.Restore(fs); err != nil {
		t.Fatal(err)
	}
	if err := r2.m.Restore(ms); err != nil {
		t.Fatal(err)
	}
	if !r2.m.Enabled() || r2.pba() != 1<<2 {
		t.Fatalf("restored: enabled %v PBA %#x", r2.m.Enabled(), r2.pba())
	}
	if rt, ok := r2.routeOf(0); !ok || rt.MSI.Data != 0x30 || len(r2.vm.irqfds) != 1 {
		t.Fatalf("restored vector 0 route %+v %v, %d irqfds", rt, ok, len(r2.vm.irqfds))
	}
	r2.m.Trigger(0)
	if r2.fired(0) != 1 {
		t.Fatal("restored vector 0 does not fire")
	}
	r2.mask(2, false)
	if r2.fired(2) != 1 || r2.pba() != 0 {
		t.Fatal("restored pending vector not delivered on unmask")
	}

	bad := ms
	bad.Table = bad.Table[:16]
	if err := r2.m.Restore(bad); err == nil {
		t.Fatal("restore of a shorter table accepted")
	}
	bad = r.m.Save()
	bad.GSIs = append([]uint32(nil), bad.GSIs...)
	bad.GSIs[1] = 4000
	if err := r2.m.Restore(bad); err == nil {
		t.Fatal("restore with other GSIs accepted")
	}
}

func TestMSIXConfigErrors(t *testing.T) {
	vm := &msixVM{irqfds: map[int]accel.IRQFD{}}
	tb := routes.New(vm, nil)
	for _, c := range []MSIXConfig{
		{Vectors: 0, Router: tb},
		{Vectors: 4, BAR: 1, Router: tb},                            // no such BAR
		{Vectors: 4, TableOffset: 4, Router: tb},                    // unaligned
		{Vectors: 4, TableOffset: 0x1ff0, PBAOffset: 0, Router: tb}, // past the BAR
		{Vectors: 4, TableOffset: 0, PBAOffset: 0x20, Router: tb},   // overlap
		{Vectors: 4, TableOffset: 0, PBAOffset: 0x1000},             // no router
	} {
		f := NewFunction(Identity{Vendor: 1})
		if err := f.SetBAR(0, BAR{Kind: BARMem32, Size: 0x2000, Dev: &recDev{}}); err != nil {
			t.Fatal(err)
		}
		if _, err := NewMSIX(f, c); err == nil {
			t.Errorf("NewMSIX(%+v) accepted", c)
		}
	}
}
