package ioapic

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"

	"govmm/accel"
)

type rec struct{ msis []accel.MSI }

func (r *rec) deliver(m accel.MSI) error { r.msis = append(r.msis, m); return nil }

func w32(a *IOAPIC, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	a.Write(off, b[:])
}

func r32(a *IOAPIC, off uint64) uint32 {
	var b [4]byte
	a.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func setReg(a *IOAPIC, idx, v uint32) { w32(a, RegSel, idx); w32(a, RegWin, v) }
func getReg(a *IOAPIC, idx uint32) uint32 {
	w32(a, RegSel, idx)
	return r32(a, RegWin)
}

func program(a *IOAPIC, pin int, e uint64) {
	setReg(a, IndexRedTbl+uint32(2*pin)+1, uint32(e>>32))
	setReg(a, IndexRedTbl+uint32(2*pin), uint32(e))
}

func TestRegisters(t *testing.T) {
	a := New(Config{})
	if v := getReg(a, IndexVersion); v != 0x170020 {
		t.Fatalf("version = %#x, want 0x170020", v)
	}
	setReg(a, IndexID, 0x0f000000|0xabc)
	if v := getReg(a, IndexID); v != 0x0f000000 {
		t.Fatalf("id = %#x", v)
	}
	if v := getReg(a, IndexArb); v != 0x0f000000 {
		t.Fatalf("arb = %#x", v)
	}
	for pin := 0; pin < NumPins; pin++ {
		if v := getReg(a, IndexRedTbl+uint32(2*pin)); v != RedMasked {
			t.Fatalf("pin %d reset low = %#x, want masked", pin, v)
		}
	}
	// Read-only bits (delivery status, remote IRR) cannot be set.
	setReg(a, IndexRedTbl, 0xffffffff)
	if v := getReg(a, IndexRedTbl); v != 0x1afff {
		t.Fatalf("redir low after writing all ones = %#x, want 0x1afff", v)
	}
	setReg(a, IndexRedTbl+1, 0xffffffff)
	if v := getReg(a, IndexRedTbl+1); v != 0xff000000 {
		t.Fatalf("redir high = %#x", v)
	}
	if v := getReg(a, 0x10+2*NumPins); v != 0 {
		t.Fatalf("register past the table = %#x", v)
	}
	if v := r32(a, RegSel); v != 0x10+2*NumPins {
		t.Fatalf("IOREGSEL readback %#x", v)
	}
}

func TestMSIEncoding(t *testing.T) {
	cases := []struct {
		e    uint64
		addr uint32
		data uint32
	}{
		{0x30, 0xFEE00000, 0x30},
		{3<<56 | 0x41 | RedLevel, 0xFEE03000, 0xc041},
		{0xff<<56 | RedDestLogical | DelLowest<<8 | 0x22, 0xFEEFF004, 0x122},
		{DelNMI << 8, 0xFEE00000, 0x400},
		{DelExtINT << 8, 0xFEE00000, 0x700},
	}
	for _, c := range cases {
		m := MSIFromEntry(c.e)
		if m.AddressLo != c.addr || m.Data != c.data || m.AddressHi != 0 {
			t.Errorf("entry %#x -> %+v, want addr %#x data %#x", c.e, m, c.addr, c.data)
		}
	}
}

func TestEdge(t *testing.T) {
	var r rec
	a := New(Config{Deliver: r.deliver})
	program(a, 2, 1<<56|0x30)
	a.SetPin(2, true)
	a.SetPin(2, true) // still high: no new edge
	a.SetPin(2, false)
	a.SetPin(2, true)
	a.SetPin(2, false)
	if len(r.msis) != 2 || r.msis[0].Data != 0x30 || r.msis[0].AddressLo != 0xFEE01000 {
		t.Fatalf("delivered %+v, want two vector 0x30 to APIC 1", r.msis)
	}
}

func TestMaskedEdgeLatches(t *testing.T) {
	var r rec
	a := New(Config{Deliver: r.deliver})
	program(a, 4, RedMasked|0x34)
	a.SetPin(4, true)
	a.SetPin(4, false)
	a.SetPin(4, true)
	a.SetPin(4, false)
	if len(r.msis) != 0 {
		t.Fatalf("masked pin delivered %+v", r.msis)
	}
	program(a, 4, 0x34)
	if len(r.msis) != 1 || r.msis[0].Data != 0x34 {
		t.Fatalf("unmask delivered %+v, want exactly one latched edge", r.msis)
	}
	program(a, 4, RedMasked|0x34)
	program(a, 4, 0x34)
	if len(r.msis) != 1 {
		t.Fatalf("a second unmask redelivered: %+v", r.msis)
	}
}

func TestLevelRemoteIRR(t *testing.T) {
	var r rec
	changes := 0
	a := New(Config{Deliver: r.deliver, RoutesChanged: func() { changes++ }})
	program(a, 9, RedLevel|0x39)
	if changes == 0 {
		t.Fatal("RoutesChanged not called on a redirection write")
	}
	a.SetPin(9, true)
	if len(r.msis) != 1 || r.msis[0].Data != 0xc039 {
		t.Fatalf("level delivery %+v", r.msis)
	}
	if getReg(a, IndexRedTbl+18)&RedRemoteIRR == 0 {
		t.Fatal("Remote IRR not set after delivery")
	}
	a.SetPin(9, true)
	a.EOI(0x40) // another vector: nothing
	if len(r.msis) != 1 {
		t.Fatalf("redelivered while Remote IRR set: %d", len(r.msis))
	}
	// EOI with the line still high: delivered again.
	a.EOI(0x39)
	if len(r.msis) != 2 {
		t.Fatalf("line high after EOI: %d deliveries, want 2", len(r.msis))
	}
	// Device deasserts, guest EOIs: nothing more, Remote IRR clear.
	a.SetPin(9, false)
	a.EOI(0x39)
	if len(r.msis) != 2 {
		t.Fatalf("deliveries after deassert: %d", len(r.msis))
	}
	if getReg(a, IndexRedTbl+18)&RedRemoteIRR != 0 {
		t.Fatal("Remote IRR still set after EOI")
	}
	// Level held while masked is delivered on unmask; a line that
	// dropped while masked is not.
	program(a, 9, RedMasked|RedLevel|0x39)
	a.SetPin(9, true)
	program(a, 9, RedLevel|0x39)
	if len(r.msis) != 3 {
		t.Fatalf("unmask with line high: %d deliveries, want 3", len(r.msis))
	}
	a.SetPin(9, false)
	a.EOI(0x39)
	program(a, 9, RedMasked|RedLevel|0x39)
	a.SetPin(9, true)
	a.SetPin(9, false)
	program(a, 9, RedLevel|0x39)
	if len(r.msis) != 3 {
		t.Fatalf("line that dropped while masked was delivered")
	}
}

func TestDeliverFailureRetries(t *testing.T) {
	fail := true
	n := 0
	a := New(Config{Deliver: func(accel.MSI) error {
		if fail {
			return errors.New("boom")
		}
		n++
		return nil
	}})
	program(a, 1, 0x31)
	a.SetPin(1, true)
	fail = false
	program(a, 1, 0x32) // any service opportunity retries the latched edge
	if n != 1 {
		t.Fatalf("latched edge after a failed delivery: %d deliveries", n)
	}
}

func TestSaveRestore(t *testing.T) {
	var r rec
	a := New(Config{Deliver: r.deliver})
	program(a, 3, RedLevel|2<<56|0x50)
	a.SetPin(3, true)
	setReg(a, IndexID, 5<<24)
	s := a.Save()
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	if err := json.Unmarshal(js, &s2); err != nil {
		t.Fatal(err)
	}
	var r2 rec
	b := New(Config{Deliver: r2.deliver})
	if err := b.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if b.Save() != s {
		t.Fatalf("restored state differs")
	}
	b.EOI(0x50)
	if len(r2.msis) != 1 || r2.msis[0].AddressLo != 0xFEE02000 {
		t.Fatalf("restored IOAPIC did not redeliver on EOI: %+v", r2.msis)
	}
	bad := s
	bad.Redir[0] |= 1 << 40
	if err := b.Restore(bad); err == nil {
		t.Fatal("restore accepted reserved bits")
	}
}

func checkInvariants(t *testing.T, a *IOAPIC) {
	s := a.Save()
	if s.ID > 0xf || s.RegSel > 0xff {
		t.Fatalf("id/regsel out of range: %+v", s)
	}
	for i, e := range s.Redir {
		if e&^(redWritable|RedRemoteIRR) != 0 {
			t.Fatalf("entry %d has reserved bits: %#x", i, e)
		}
		if e&RedLevel == 0 && e&RedRemoteIRR != 0 {
			t.Fatalf("edge entry %d has Remote IRR", i)
		}
	}
}

// FuzzIOAPIC drives the IOAPIC with random register accesses, pin changes
// and EOIs; it must never panic and its state must stay within the rules.
func FuzzIOAPIC(f *testing.F) {
	f.Add([]byte{0, 0, 0x10, 0, 0, 0, 1, 0x10, 0x30, 0x80, 0, 0, 2, 0, 1, 3, 0x30})
	f.Add([]byte{0, 0, 0x01, 0, 0, 0, 5, 0x10, 0xff, 0xff, 0xff, 0xff, 2, 5, 0})
	f.Add([]byte{0, 0, 0x16, 0, 0, 0, 5, 0x10, 0x33, 0x80, 0, 0, 5, 0x85, 3, 0x33, 5, 0x85, 4, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		a := New(Config{Deliver: func(accel.MSI) error { return nil }})
		a.SetResampler(3, func() { a.SetResampleInput(3, true) }) // an owner that always re-asserts
		for len(ops) >= 2 {
			op, arg := ops[0], ops[1]
			ops = ops[2:]
			switch op % 6 {
			case 0: // write: arg = offset byte, then 4 data bytes
				n := 1 << (arg >> 6 & 3)
				if n > 8 || len(ops) < n {
					return
				}
				off := uint64(arg & 0x3f)
				if off >= 0x30 {
					off += 0x10 // 0x40-0x4f: the EOI register
				}
				a.Write(off, ops[:n])
				ops = ops[n:]
			case 1:
				var b [8]byte
				a.Read(uint64(arg&0x3f), b[:1<<(arg>>6&3)])
			case 2:
				a.SetPin(int(arg%30)-2, arg&0x80 != 0)
			case 3:
				a.EOI(arg)
			case 4:
				a.Reset()
			case 5:
				a.SetResampleInput(int(arg%30)-2, arg&0x80 != 0)
			}
			checkInvariants(t, a)
		}
	})
}

// TestResampleInput: the resample input asserts like a device line, the
// EOI deasserts it before Remote IRR is cleared (no redelivery unless a
// device line is still high) and calls the pin's resampler, which an EOI
// of another vector, an edge pin or a pin without Remote IRR does not.
func TestResampleInput(t *testing.T) {
	var r rec
	a := New(Config{Deliver: r.deliver})
	program(a, 5, RedLevel|0x45)
	resampled := 0
	a.SetResampler(5, func() {
		// Called without the lock (this read would deadlock): the
		// owner may assert again at once.
		getReg(a, IndexVersion)
		resampled++
	})
	a.SetResampleInput(5, true)
	a.SetResampleInput(5, true)
	if len(r.msis) != 1 || r.msis[0].Data != 0xc045 {
		t.Fatalf("resample input: deliveries %+v, want one level MSI", r.msis)
	}
	a.EOI(0x46)
	if resampled != 0 {
		t.Fatal("EOI of another vector resampled")
	}
	a.EOI(0x45)
	if resampled != 1 || len(r.msis) != 1 {
		t.Fatalf("after EOI: %d resamples (want 1), %d deliveries (want 1: the input was deasserted)", resampled, len(r.msis))
	}
	if a.Save().Level&(1<<5) != 0 || getReg(a, IndexRedTbl+10)&RedRemoteIRR != 0 {
		t.Fatal("pin still asserted or in service after the EOI")
	}
	a.EOI(0x45) // nothing in service
	if resampled != 1 {
		t.Fatal("EOI without Remote IRR resampled")
	}
	// A device line on the same pin keeps it asserted across the EOI.
	a.SetPin(5, true)
	a.SetResampleInput(5, true)
	a.EOI(0x45)
	if resampled != 2 || len(r.msis) != 3 {
		t.Fatalf("line and resample input: %d resamples (want 2), %d deliveries (want 3: the line is still high)", resampled, len(r.msis))
	}
	a.SetPin(5, false)
	a.EOI(0x45)
	if resampled != 3 || len(r.msis) != 3 || a.Save().Level != 0 {
		t.Fatalf("after line drop: %d resamples, %d deliveries, level %#x", resampled, len(r.msis), a.Save().Level)
	}
	// Save leaves the resample input out (its irqfd is assigned again
	// after a restore); Reset drops it and tells the resampler.
	program(a, 5, RedMasked|RedLevel|0x45)
	a.SetResampleInput(5, true)
	if s := a.Save(); s.Level&(1<<5) != 0 || s.IRR&(1<<5) != 0 {
		t.Fatalf("Save included the resample input: level %#x irr %#x", s.Level, s.IRR)
	}
	a.Reset()
	if resampled != 4 {
		t.Fatalf("Reset with the resample input high: %d resamples, want 4", resampled)
	}
	a.SetResampler(5, nil)
	program(a, 5, RedLevel|0x45)
	a.SetResampleInput(5, true)
	a.EOI(0x45)
	if resampled != 4 {
		t.Fatal("removed resampler still called")
	}
	checkInvariants(t, a)
}

// TestPins: the diagnostic view shows only live pins, with their inputs,
// Remote IRR and counts of deliveries, EOIs and edge-rewrite clears.
func TestPins(t *testing.T) {
	var r rec
	a := New(Config{Deliver: r.deliver})
	if p := a.Pins(); len(p) != 0 {
		t.Fatalf("reset IOAPIC shows pins %+v", p)
	}
	program(a, 7, RedLevel|0x47)
	a.SetResampler(7, func() {})
	a.SetResampleInput(7, true)
	p := a.Pins()
	if len(p) != 1 || p[0].Pin != 7 || !p[0].Resample || p[0].Line || !p[0].Level || p[0].Entry&RedRemoteIRR == 0 ||
		!p[0].Resampler || p[0].Delivered != 1 || p[0].EOIs != 0 {
		t.Fatalf("pin 7 after one delivery: %+v", p)
	}
	a.EOI(0x47)
	a.SetResampleInput(7, true)
	// Linux's pin EOI without an EOI register: masked and edge, then
	// the entry again. It clears Remote IRR, which is counted; the
	// resample input stays up and the pin fires again.
	program(a, 7, RedMasked|0x47)
	program(a, 7, RedLevel|0x47)
	p = a.Pins()
	if len(p) != 1 || p[0].Delivered != 3 || p[0].EOIs != 1 || p[0].EdgeClears != 1 || !p[0].Resample {
		t.Fatalf("pin 7 after an EOI and an edge rewrite: %+v", p)
	}
	// A masked pin with nothing asserted or in service is left out.
	a.EOI(0x47)
	program(a, 7, RedMasked|RedLevel|0x47)
	if p := a.Pins(); len(p) != 0 {
		t.Fatalf("masked idle pin shown: %+v", p)
	}
}

// TestEOIRegister: version 0x20's EOI register ends the level interrupt
// in service with the vector written, as a LAPIC EOI does (the resample
// input dropped, the resampler called, a line still high delivered
// again); a write that is not 32 bits at 0x40, or of another vector,
// does nothing.
func TestEOIRegister(t *testing.T) {
	if v := getReg(New(Config{}), IndexVersion); v&0xff != 0x20 {
		t.Fatalf("version %#x: want 0x20, the IOAPIC with an EOI register", v&0xff)
	}
	var r rec
	a := New(Config{Deliver: r.deliver})
	program(a, 6, RedLevel|0x46)
	resampled := 0
	a.SetResampler(6, func() { resampled++ })
	a.SetResampleInput(6, true)
	remote := func() bool { return getReg(a, IndexRedTbl+12)&RedRemoteIRR != 0 }
	a.Write(RegEOI, []byte{0x46, 0}) // 16 bits: ignored
	var b [4]byte
	b[0] = 0x46
	a.Write(RegEOI+1, b[:3]) // not at 0x40: ignored
	w32(a, RegEOI, 0x47)     // another vector
	if !remote() || resampled != 0 {
		t.Fatalf("EOI register writes that do not count: Remote IRR %v, %d resamples", remote(), resampled)
	}
	w32(a, RegEOI, 0x46)
	if remote() || resampled != 1 || len(r.msis) != 1 || a.Save().Level != 0 {
		t.Fatalf("EOI register: Remote IRR %v, %d resamples (want 1), %d deliveries (want 1), level %#x (want 0)", remote(), resampled, len(r.msis), a.Save().Level)
	}
	if p := a.Pins(); len(p) != 1 || p[0].EOIs != 1 || p[0].EdgeClears != 0 {
		t.Fatalf("pin 6 after an EOI by register: %+v", p)
	}
	// With the device line still high the pin fires again.
	a.SetPin(6, true)
	w32(a, RegEOI, 0x46)
	if len(r.msis) != 3 || !remote() {
		t.Fatalf("EOI register with the line high: %d deliveries, want 3", len(r.msis))
	}
	if v := r32(a, RegEOI); v != 0 {
		t.Fatalf("EOI register reads %#x, want 0", v)
	}
}
