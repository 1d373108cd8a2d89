package pic

import (
	"encoding/json"
	"testing"
)

func out(p *PIC, port uint16, v uint8) {
	switch {
	case port < 0xa0:
		p.Master().Write(uint64(port-0x20), []byte{v})
	case port < 0x4d0:
		p.Slave().Write(uint64(port-0xa0), []byte{v})
	default:
		p.ELCR().Write(uint64(port-0x4d0), []byte{v})
	}
}

func in(p *PIC, port uint16) uint8 {
	b := []byte{0}
	switch {
	case port < 0xa0:
		p.Master().Read(uint64(port-0x20), b)
	case port < 0x4d0:
		p.Slave().Read(uint64(port-0xa0), b)
	default:
		p.ELCR().Read(uint64(port-0x4d0), b)
	}
	return b[0]
}

// initPIC is the BIOS/Linux init sequence: vectors 0x20/0x28, cascade on
// IR2, 8086 mode, optional auto-EOI.
func initPIC(p *PIC, aeoi bool) {
	icw4 := uint8(0x01)
	if aeoi {
		icw4 |= 0x02
	}
	out(p, 0x20, 0x11)
	out(p, 0x21, 0x20)
	out(p, 0x21, 0x04)
	out(p, 0x21, icw4)
	out(p, 0xa0, 0x11)
	out(p, 0xa1, 0x28)
	out(p, 0xa1, 0x02)
	out(p, 0xa1, icw4)
	out(p, 0x21, 0)
	out(p, 0xa1, 0)
}

func ack(t *testing.T, p *PIC) uint8 {
	t.Helper()
	if !p.Pending() {
		t.Fatal("no INTR when one was expected")
	}
	v, ok := p.Ack()
	if !ok {
		t.Fatal("Ack not ok")
	}
	return v
}

func TestEdgeAndEOI(t *testing.T) {
	kicks := 0
	p := New(func() { kicks++ })
	initPIC(p, false)
	p.SetIRQ(0, true)
	p.SetIRQ(0, false)
	if kicks != 1 {
		t.Fatalf("onChange called %d times, want 1", kicks)
	}
	p.SetIRQ(4, true)
	if v := ack(t, p); v != 0x20 {
		t.Fatalf("first vector %#x, want 0x20 (IRQ0 has priority)", v)
	}
	if p.Pending() {
		t.Fatal("IRQ4 delivered while IRQ0 in service")
	}
	out(p, 0x20, 0x0b) // OCW3 read ISR
	if isr := in(p, 0x20); isr != 1 {
		t.Fatalf("ISR = %#x", isr)
	}
	out(p, 0x20, 0x20) // non-specific EOI
	if v := ack(t, p); v != 0x24 {
		t.Fatalf("second vector %#x, want 0x24", v)
	}
	out(p, 0x20, 0x64) // specific EOI IR4
	if in(p, 0x20) != 0 {
		t.Fatal("ISR not clear after specific EOI")
	}
	out(p, 0x20, 0x0a) // read IRR
	if irr := in(p, 0x20); irr != 0 {
		t.Fatalf("IRR = %#x after edges were acked", irr)
	}
	if p.Pending() {
		t.Fatal("pending with nothing requested")
	}
}

func TestMaskAndSlave(t *testing.T) {
	p := New(nil)
	initPIC(p, false)
	out(p, 0xa1, 0xff)
	p.SetIRQ(8, true)
	if p.Pending() {
		t.Fatal("masked slave IRQ raised INTR")
	}
	if in(p, 0xa1) != 0xff {
		t.Fatal("IMR readback")
	}
	out(p, 0xa1, 0xfe) // unmask IRQ8: the latched edge is delivered
	if v := ack(t, p); v != 0x28 {
		t.Fatalf("slave vector %#x, want 0x28", v)
	}
	out(p, 0x20, 0x0b)
	out(p, 0xa0, 0x0b)
	if in(p, 0x20) != 4 || in(p, 0xa0) != 1 {
		t.Fatal("cascade ISR bits not set on both chips")
	}
	out(p, 0xa0, 0x20)
	out(p, 0x20, 0x20)
	if in(p, 0x20) != 0 || in(p, 0xa0) != 0 {
		t.Fatal("ISR not clear after EOIs")
	}
}

func TestLevelELCR(t *testing.T) {
	p := New(nil)
	initPIC(p, false)
	out(p, 0x4d1, 0xff)
	if v := in(p, 0x4d1); v != 0xde {
		t.Fatalf("ELCR2 = %#x, want 0xde (IRQ8/13 edge only)", v)
	}
	out(p, 0x4d0, 0xff)
	if v := in(p, 0x4d0); v != 0xf8 {
		t.Fatalf("ELCR1 = %#x, want 0xf8", v)
	}
	p.SetIRQ(9, true)
	if v := ack(t, p); v != 0x29 {
		t.Fatalf("vector %#x", v)
	}
	out(p, 0xa0, 0x20)
	out(p, 0x20, 0x20)
	// The line is still high: level requests again.
	if v := ack(t, p); v != 0x29 {
		t.Fatalf("level line still high: vector %#x", v)
	}
	p.SetIRQ(9, false)
	out(p, 0xa0, 0x20)
	out(p, 0x20, 0x20)
	if p.Pending() {
		t.Fatal("pending after the level line dropped")
	}
}

func TestSpurious(t *testing.T) {
	p := New(nil)
	initPIC(p, false)
	out(p, 0x4d0, 0x20) // IRQ5 level
	p.SetIRQ(5, true)
	if !p.Pending() {
		t.Fatal("no INTR")
	}
	p.SetIRQ(5, false)
	v, ok := p.Ack()
	if !ok || v != 0x27 {
		t.Fatalf("request went away: got %#x %v, want spurious IRQ7 0x27", v, ok)
	}
	out(p, 0x20, 0x0b)
	if in(p, 0x20) != 0 {
		t.Fatal("spurious IRQ7 set ISR")
	}
	// Spurious IRQ15: slave request gone after the cascade edge.
	out(p, 0x4d1, 0x02) // IRQ9 level
	p.SetIRQ(9, true)
	p.SetIRQ(9, false)
	v, ok = p.Ack()
	if !ok || v != 0x2f {
		t.Fatalf("slave request went away: got %#x %v, want 0x2f", v, ok)
	}
	out(p, 0xa0, 0x0b)
	if in(p, 0xa0) != 0 || in(p, 0x20) != 4 {
		t.Fatal("spurious IRQ15: slave ISR must stay clear, master IR2 in service")
	}
}

func TestAutoEOIAndRotate(t *testing.T) {
	p := New(nil)
	initPIC(p, true)
	p.SetIRQ(3, true)
	if v := ack(t, p); v != 0x23 {
		t.Fatalf("vector %#x", v)
	}
	out(p, 0x20, 0x0b)
	if in(p, 0x20) != 0 {
		t.Fatal("auto-EOI left ISR set")
	}
	p.SetIRQ(3, false)
	// Rotate in auto-EOI mode: after IR3, IR4 has top priority.
	out(p, 0x20, 0x80)
	p.SetIRQ(3, true)
	ack(t, p)
	p.SetIRQ(1, true)
	p.SetIRQ(4, true)
	if v := ack(t, p); v != 0x24 {
		t.Fatalf("after rotation IR4 should win, got %#x", v)
	}
	// Set priority: IR1 lowest, so IR2..7 beat IR1; only IR1 left.
	out(p, 0x20, 0xc1)
	if v := ack(t, p); v != 0x21 {
		t.Fatalf("got %#x", v)
	}
}

func TestPollAndSpecialMask(t *testing.T) {
	p := New(nil)
	initPIC(p, false)
	p.SetIRQ(6, true)
	out(p, 0x20, 0x0c) // poll
	if v := in(p, 0x20); v != 0x86 {
		t.Fatalf("poll = %#x, want 0x86", v)
	}
	out(p, 0x20, 0x0c)
	if v := in(p, 0x20); v != 0 {
		t.Fatalf("poll with IR6 in service = %#x, want 0", v)
	}
	// Special mask: mask IR6 (in service) and lower priority IR7 gets through.
	out(p, 0x21, 0x40)
	out(p, 0x20, 0x68)
	p.SetIRQ(7, true)
	if v := ack(t, p); v != 0x27 {
		t.Fatalf("special mask: %#x", v)
	}
}

func TestSaveRestore(t *testing.T) {
	p := New(nil)
	initPIC(p, false)
	out(p, 0x4d1, 0x02)
	p.SetIRQ(9, true)
	s := p.Save()
	js, _ := json.Marshal(s)
	var s2 State
	if err := json.Unmarshal(js, &s2); err != nil {
		t.Fatal(err)
	}
	q := New(nil)
	if err := q.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if q.Save() != s {
		t.Fatalf("restored %+v != %+v", q.Save(), s)
	}
	if v := ack(t, q); v != 0x29 {
		t.Fatalf("restored PIC delivered %#x", v)
	}
	bad := s
	bad.Master.ELCR = 1
	if err := q.Restore(bad); err == nil {
		t.Fatal("bad ELCR accepted")
	}
}

func checkInvariants(t *testing.T, p *PIC) {
	s := p.Save()
	for _, c := range []ChipState{s.Master, s.Slave} {
		if c.InitState > 3 || c.PrioAdd > 7 || c.IRQBase&7 != 0 {
			t.Fatalf("chip state out of range: %+v", c)
		}
	}
	if s.Master.ELCR&^elcrMaskMaster != 0 || s.Slave.ELCR&^elcrMaskSlave != 0 {
		t.Fatalf("ELCR has edge-only bits: %+v", s)
	}
	if s.Output != p.Pending() {
		t.Fatal("output inconsistent")
	}
}

// FuzzPIC drives the pair with random port accesses, line changes and INTA
// cycles.
func FuzzPIC(f *testing.F) {
	f.Add([]byte{0, 0x11, 1, 0x20, 1, 0x04, 1, 0x01, 4, 0x83, 5, 0, 2, 0x20})
	f.Add([]byte{2, 0x11, 3, 0x28, 3, 0x02, 3, 0x03, 6, 0x02, 4, 0x89, 5, 0, 0, 0x0c, 7, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		p := New(nil)
		ports := []uint16{0x20, 0x21, 0xa0, 0xa1, 0, 0, 0x4d0, 0x4d1}
		for len(ops) >= 2 {
			op, arg := ops[0], ops[1]
			ops = ops[2:]
			switch k := op % 10; k {
			case 0, 1, 2, 3, 6, 7:
				out(p, ports[k], arg)
			case 4:
				p.SetIRQ(int(arg&0x1f)-4, arg&0x80 != 0)
			case 5:
				p.Ack()
			case 8:
				in(p, ports[arg%8])
			case 9:
				p.Pending()
			}
			checkInvariants(t, p)
		}
	})
}
