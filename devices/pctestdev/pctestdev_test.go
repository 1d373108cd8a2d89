package pctestdev

import (
	"bytes"
	"encoding/json"
	"testing"

	"govmm/devices/bus"
	"govmm/irq"
)

type levelLine struct{ high *bool }

func (l levelLine) Set(h bool) { *l.high = h }
func (l levelLine) Pulse()     {}

func newDev(t *testing.T) (*Device, *bus.Bus, *bus.Bus, *[NumIRQs]bool, *[]uint64) {
	t.Helper()
	var levels [NumIRQs]bool
	var flushed []uint64
	d := New(Config{
		Line:  func(gsi int) irq.Line { return levelLine{&levels[gsi]} },
		Flush: func(gpa uint64) error { flushed = append(flushed, gpa); return nil },
	})
	pio, mmio := bus.New("pio", nil), bus.New("mmio", nil)
	if err := d.Register(pio, mmio); err != nil {
		t.Fatal(err)
	}
	return d, pio, mmio, &levels, &flushed
}

func TestPorts(t *testing.T) {
	d, pio, mmio, levels, flushed := newDev(t)
	pio.Write(PortScratch, []byte{0x78, 0x56, 0x34, 0x12})
	b := make([]byte, 4)
	pio.Read(PortScratch, b)
	if !bytes.Equal(b, []byte{0x78, 0x56, 0x34, 0x12}) {
		t.Errorf("scratch port reads % x", b)
	}
	b = b[:1]
	pio.Read(PortScratch, b)
	if b[0] != 0x78 {
		t.Errorf("byte read of the scratch port: %#x", b[0])
	}
	pio.Write(PortIRQ+10, []byte{1})
	pio.Write(PortIRQ+17, []byte{1})
	if !levels[10] || !levels[17] || levels[0] {
		t.Errorf("lines after raising 10 and 17: %v", *levels)
	}
	pio.Write(PortIRQ+10, []byte{0})
	if levels[10] {
		t.Error("line 10 still high after writing 0")
	}
	pio.Write(PortFlush, []byte{0x34, 0x12, 0x10, 0x00})
	if len(*flushed) != 1 || (*flushed)[0] != 0x101000 {
		t.Errorf("flushed %#x", *flushed)
	}
	mmio.Write(MemBase+0x100, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	b = make([]byte, 8)
	mmio.Read(MemBase+0x100, b)
	if !bytes.Equal(b, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("memory reads % x", b)
	}
	// State round trip, through JSON as a snapshot carries it.
	js, err := json.Marshal(d.Save())
	if err != nil {
		t.Fatal(err)
	}
	d2, _, mmio2, levels2, _ := newDev(t)
	var s State
	if err := json.Unmarshal(js, &s); err != nil {
		t.Fatal(err)
	}
	if err := d2.Restore(s); err != nil {
		t.Fatal(err)
	}
	mmio2.Read(MemBase+0x100, b)
	if !bytes.Equal(b, []byte{1, 2, 3, 4, 5, 6, 7, 8}) || !levels2[17] || levels2[10] {
		t.Errorf("restored: memory % x, lines %v", b, *levels2)
	}
	if err := d2.Restore(State{Mem: make([]byte, 5)}); err == nil {
		t.Error("restore of a short memory accepted")
	}
	if err := d2.Restore(State{Mem: make([]byte, MemSize), Levels: 1 << 30}); err == nil {
		t.Error("restore of a level on line 30 accepted")
	}
}

// FuzzAccess: whatever the guest does, the device neither panics nor
// touches lines beyond its 24.
func FuzzAccess(f *testing.F) {
	f.Add(uint16(0x2003), uint8(1), []byte{1})
	f.Add(uint16(0xe2), uint8(0), []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, port uint16, write uint8, data []byte) {
		if len(data) == 0 || len(data) > 64 {
			return
		}
		d, pio, mmio, _, _ := newDev(t)
		if write&1 != 0 {
			pio.Write(uint64(port), data)
			mmio.Write(MemBase+uint64(port)*2, data)
		} else {
			pio.Read(uint64(port), data)
			mmio.Read(MemBase+uint64(port)*2, data)
		}
		if s := d.Save(); s.Levels>>NumIRQs != 0 || len(s.Mem) != MemSize {
			t.Fatalf("state out of range: levels %#x, %d bytes", s.Levels, len(s.Mem))
		}
	})
}
