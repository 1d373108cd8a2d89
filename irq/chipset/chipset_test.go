package chipset

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	"govmm/accel"
	"govmm/devices/bus"
	"govmm/irq"
	"govmm/irq/ioapic"
)

type fakeVM struct {
	accel.VM
	msis    []accel.MSI
	commits [][]accel.Route
}

func (v *fakeVM) SignalMSI(m accel.MSI) error { v.msis = append(v.msis, m); return nil }
func (v *fakeVM) SetGSIRouting(r []accel.Route) error {
	v.commits = append(v.commits, r)
	return nil
}

func TestWiring(t *testing.T) {
	vm := &fakeVM{}
	kicks := 0
	cs, err := New(vm, func() { kicks++ })
	if err != nil {
		t.Fatal(err)
	}
	pio, mmio := bus.New("pio", nil), bus.New("mmio", nil)
	if err := cs.Register(pio, mmio); err != nil {
		t.Fatal(err)
	}
	if len(vm.commits) != 1 {
		t.Fatal("no initial commit")
	}
	w := func(off uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		mmio.Write(0xFEC00000+off, b[:])
	}
	// Program IOAPIC pin 2 (IRQ0 override) edge vector 0x30, pin 9 level
	// vector 0x39 (the SCI).
	w(0, 0x14)
	w(0x10, 0x30)
	w(0, 0x22)
	w(0x10, 0x39|ioapic.RedLevel)
	last := vm.commits[len(vm.commits)-1]
	if last[2].MSI.Data != 0x30 || last[9].MSI.Data != 0xc039 {
		t.Fatalf("IOAPIC entries not mirrored: pin2 %+v pin9 %+v", last[2], last[9])
	}
	// PIC: init with vector base 0x20 and unmask everything.
	for _, pv := range [][2]uint16{{0x20, 0x11}, {0x21, 0x20}, {0x21, 4}, {0x21, 1}, {0x21, 0}} {
		pio.Write(uint64(pv[0]), []byte{byte(pv[1])})
	}
	cs.Line(0).Pulse()
	if len(vm.msis) != 1 || vm.msis[0].Data != 0x30 {
		t.Fatalf("IRQ0 via IOAPIC pin 2: %+v", vm.msis)
	}
	if kicks != 1 || !cs.ExtINT().Pending() {
		t.Fatal("IRQ0 did not reach the PIC")
	}
	if v, ok := cs.ExtINT().Ack(); !ok || v != 0x20 {
		t.Fatalf("PIC vector %#x", v)
	}
	sci := cs.Line(9)
	sci.Set(true)
	sci.Set(true)
	if len(vm.msis) != 2 || vm.msis[1].Data != 0xc039 {
		t.Fatalf("SCI: %+v", vm.msis)
	}
	cs.EOI(0x39)
	if len(vm.msis) != 3 {
		t.Fatal("level SCI still high after EOI was not redelivered")
	}
	sci.Set(false)
	cs.EOI(0x39)
	cs.Line(17).Set(true) // masked: nothing
	if len(vm.msis) != 3 {
		t.Fatal("masked pin 17 delivered")
	}
	if _, ok := cs.Line(40).(interface{ Set(bool) }); !ok {
		t.Fatal("no line for out of range GSI")
	}
	s := cs.Save()
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	json.Unmarshal(js, &s2)
	vm2 := &fakeVM{}
	cs2, _ := New(vm2, nil)
	if err := cs2.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if got := vm2.commits[len(vm2.commits)-1]; got[9].MSI.Data != 0xc039 {
		t.Fatalf("restore did not commit mirrored routes")
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAckNotifier(t *testing.T) {
	vm := &fakeVM{}
	cs, err := New(vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	pio, mmio := bus.New("pio", nil), bus.New("mmio", nil)
	cs.Register(pio, mmio)
	l, ok := cs.Line(0).(irq.AckNotifier)
	if !ok {
		t.Fatal("chipset lines do not implement irq.AckNotifier")
	}
	acks := 0
	l.OnAck(func() { acks++ })
	for _, pv := range [][2]uint16{{0x20, 0x11}, {0x21, 0x20}, {0x21, 4}, {0x21, 1}, {0x21, 0}} {
		pio.Write(uint64(pv[0]), []byte{byte(pv[1])})
	}
	if !l.AckExpected() {
		t.Fatal("IRQ0 unmasked at the PIC, but no acknowledgement expected")
	}
	cs.Line(0).Pulse()
	cs.Line(1).Pulse()
	if v, ok := cs.PIC().Ack(); !ok || v != 0x20 || acks != 1 {
		t.Fatalf("INTA of IRQ0: vector %#x, %d acks", v, acks)
	}
	pio.Write(0x20, []byte{0x20})
	if v, ok := cs.PIC().Ack(); !ok || v != 0x21 || acks != 1 {
		t.Fatalf("INTA of IRQ1 acknowledged IRQ0's line: vector %#x, %d acks", v, acks)
	}
	pio.Write(0x21, []byte{1}) // mask IRQ0, as Linux does before it tests the IOAPIC path
	if l.AckExpected() {
		t.Fatal("IRQ0 masked at the PIC, but an acknowledgement is still expected")
	}
	if l, ok := cs.Line(12).(irq.AckNotifier); !ok || !l.AckExpected() {
		t.Fatal("IRQ12 (slave, unmasked) expects no acknowledgement")
	}
	pio.Write(0x21, []byte{1 | 4}) // mask the cascade
	if cs.Line(12).(irq.AckNotifier).AckExpected() {
		t.Fatal("IRQ12 behind a masked cascade still expects an acknowledgement")
	}
}
