package acpipm

import (
	"encoding/binary"
	"encoding/json"
	"testing"
)

type lvl struct {
	high bool
	sets int
}

func (l *lvl) Set(h bool) { l.high = h; l.sets++ }
func (l *lvl) Pulse()     {}

type clk struct{ ns int64 }

func (c *clk) now() int64 { return c.ns }

func rd(p *PM, off uint64, n int) uint32 {
	b := make([]byte, 4)
	p.Read(off, b[:n])
	return binary.LittleEndian.Uint32(b)
}

func wr(p *PM, off uint64, n int, v uint32) {
	b := make([]byte, 4)
	binary.LittleEndian.PutUint32(b, v)
	p.Write(off, b[:n])
}

func TestTimer(t *testing.T) {
	c := &clk{ns: 5e9}
	p := newPM(nil, nil, nil, c.now)
	if v := rd(p, OffPMTmr, 4); v != 0 {
		t.Fatalf("timer at start %d", v)
	}
	c.ns += 1e9
	if v := rd(p, OffPMTmr, 4); v != TimerFreq&0xffffff {
		t.Fatalf("timer after 1 s = %d, want %d", v, TimerFreq)
	}
	// Byte reads see the same value.
	b := uint32(0)
	for i := 0; i < 4; i++ {
		b |= rd(p, OffPMTmr+uint64(i), 1) << (8 * i)
	}
	if b != TimerFreq {
		t.Fatalf("bytewise %d", b)
	}
	c.ns += 10e9 // 2^24 ticks is 4.69 s: the register wraps at 24 bits
	if v := rd(p, OffPMTmr, 4); v != uint32(uint64(11*TimerFreq)&0xffffff) {
		t.Fatalf("wrapped timer %d", v)
	}
	wr(p, OffPMTmr, 4, 0) // read-only
	if v := rd(p, OffPMTmr, 4); v != uint32(uint64(11*TimerFreq)&0xffffff) {
		t.Fatal("timer writable")
	}
}

func TestSCIAndStatus(t *testing.T) {
	c := &clk{}
	sci := &lvl{}
	p := newPM(sci, nil, nil, c.now)
	if rd(p, OffPM1Cnt, 2)&SCIEn == 0 {
		t.Fatal("SCI_EN clear at reset (no SMI_CMD: always ACPI mode)")
	}
	c.ns += 3e9 // past one MSB toggle (2.34 s)
	if rd(p, OffPM1Sts, 2)&TmrSts == 0 {
		t.Fatal("TMR_STS not set after the timer MSB toggled")
	}
	if sci.high {
		t.Fatal("SCI raised with TMR_EN clear")
	}
	wr(p, OffPM1En, 2, TmrSts|PwrBtnSts|0x8000)
	if !sci.high {
		t.Fatal("SCI not raised when TMR_EN set with TMR_STS pending")
	}
	if rd(p, OffPM1En, 2) != TmrSts|PwrBtnSts {
		t.Fatal("reserved enable bits stuck")
	}
	wr(p, OffPM1Sts, 2, TmrSts)
	if sci.high || rd(p, OffPM1Sts, 2)&TmrSts != 0 {
		t.Fatal("writing 1 to TMR_STS did not clear it and drop the SCI")
	}
	p.PowerButton()
	if !sci.high || rd(p, OffPM1Sts, 2)&PwrBtnSts == 0 {
		t.Fatal("power button")
	}
	wr(p, OffPM1Sts, 1, 0) // writing 0 clears nothing
	if !sci.high {
		t.Fatal("status cleared by writing zero")
	}
	wr(p, OffPM1Sts+1, 1, PwrBtnSts>>8)
	if sci.high {
		t.Fatal("byte write to the status high byte did not clear PWRBTN_STS")
	}
}

func TestSleepAndReset(t *testing.T) {
	off, rst := 0, 0
	p := newPM(nil, func() { off++ }, func() { rst++ }, (&clk{}).now)
	wr(p, OffPM1Cnt, 2, SCIEn|3<<SlpTypShift|SlpEn) // S3: not supported
	if off != 0 {
		t.Fatal("S3 powered off")
	}
	wr(p, OffPM1Cnt, 2, SCIEn|SlpTypS5<<SlpTypShift)
	if off != 0 {
		t.Fatal("SLP_TYP without SLP_EN powered off")
	}
	wr(p, OffPM1Cnt, 2, SCIEn|SlpTypS5<<SlpTypShift|SlpEn)
	if off != 1 {
		t.Fatal("S5 did not power off")
	}
	if rd(p, OffPM1Cnt, 2)&SlpEn != 0 {
		t.Fatal("SLP_EN reads back as 1")
	}
	r := p.ResetPort()
	r.Write(0, []byte{0x02})
	if rst != 0 {
		t.Fatal("0x02 reset")
	}
	r.Write(0, []byte{ResetValue})
	r.Write(0, []byte{0x0e})
	if rst != 2 {
		t.Fatalf("reset called %d times", rst)
	}
}

func TestSaveRestore(t *testing.T) {
	c := &clk{}
	p := newPM(nil, nil, nil, c.now)
	c.ns = 7e9
	wr(p, OffPM1En, 2, PwrBtnSts)
	s := p.Save()
	js, _ := json.Marshal(s)
	var s2 State
	json.Unmarshal(js, &s2)
	c2 := &clk{ns: 123}
	q := newPM(nil, nil, nil, c2.now)
	if err := q.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if a, b := rd(p, OffPMTmr, 4), rd(q, OffPMTmr, 4); a != b {
		t.Fatalf("timer after restore %d, want %d", b, a)
	}
	if rd(q, OffPM1Sts, 2) != rd(p, OffPM1Sts, 2) {
		t.Fatal("status differs after restore")
	}
	s2.En = 0xffff
	if q.Restore(s2) == nil {
		t.Fatal("bad enable accepted")
	}
}

// FuzzPM drives the block with random accesses.
func FuzzPM(f *testing.F) {
	f.Add([]byte{1, 2, 0x01, 0x01, 0, 0, 0x01, 0, 2, 8})
	f.Fuzz(func(t *testing.T, ops []byte) {
		c := &clk{}
		p := newPM(nil, nil, nil, c.now)
		for len(ops) >= 3 {
			op, off, v := ops[0], uint64(ops[1]%16), ops[2]
			ops = ops[3:]
			n := 1 << (op >> 1 & 3)
			if n > 4 {
				n = 4
			}
			if op&1 == 0 {
				wr(p, off, n, uint32(v)*0x01010101)
			} else {
				rd(p, off, n)
			}
			c.ns += int64(v) * 1e7
			s := p.Save()
			if s.En&^enMask != 0 || s.Cnt&^cntWritable != 0 {
				t.Fatalf("state out of rules: %+v", s)
			}
		}
	})
}

// TestGPE checks the GPE0 block: a raised GPE drives the SCI only while
// enabled, a status bit is cleared by writing one, and the bits survive
// Save and Restore.
func TestGPE(t *testing.T) {
	c := &clk{}
	sci := &lvl{}
	p := newPM(sci, nil, nil, c.now)
	g := p.GPEBlock()
	p.RaiseGPE(1)
	if sci.high {
		t.Fatal("SCI raised by a GPE the guest has not enabled")
	}
	var b [GPE0BlockLen]byte
	g.Read(0, b[:])
	if b != [GPE0BlockLen]byte{2, 0, 0, 0} {
		t.Fatalf("GPE0 block = % x, want status bit 1", b)
	}
	g.Write(2, []byte{2}) // enable GPE 1
	if !sci.high {
		t.Fatal("SCI low with GPE 1 pending and enabled")
	}
	st := p.Save()
	if st.GPESts != 2 || st.GPEEn != 2 {
		t.Fatalf("saved GPE status %#x enable %#x, want 2 and 2", st.GPESts, st.GPEEn)
	}
	g.Write(0, []byte{2}) // acknowledge
	if sci.high {
		t.Fatal("SCI high after the GPE was acknowledged")
	}
	g.Read(0, b[:])
	if b != [GPE0BlockLen]byte{0, 0, 2, 0} {
		t.Fatalf("GPE0 block = % x after the acknowledge", b)
	}
	q := newPM(&lvl{}, nil, nil, c.now)
	if err := q.Restore(st); err != nil {
		t.Fatal(err)
	}
	q.GPEBlock().Read(0, b[:])
	if b != [GPE0BlockLen]byte{2, 0, 2, 0} {
		t.Fatalf("restored GPE0 block = % x", b)
	}
	defer func() {
		if recover() == nil {
			t.Error("RaiseGPE(16) did not panic")
		}
	}()
	p.RaiseGPE(NumGPEs)
}
