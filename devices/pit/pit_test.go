package pit

import (
	"encoding/json"
	"math/big"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct {
	ns    int64  // base
	ticks uint64 // input clocks advanced since base
}

func (c *fakeClock) now() int64 { return c.ns + nsOf(c.ticks) }

// advance moves the clock by n input clocks (exactly).
func (c *fakeClock) advance(n uint64) { c.ticks += n }

type countLine struct{ pulses atomic.Int64 }

func (l *countLine) Set(bool) {}
func (l *countLine) Pulse()   { l.pulses.Add(1) }

func newTest() (*PIT, *fakeClock, *countLine) {
	clk := &fakeClock{ns: 1e9}
	l := &countLine{}
	return newPIT(l, clk.now, false), clk, l
}

func out(p *PIT, port int, v uint8) {
	if port == 0x61 {
		p.Port61().Write(0, []byte{v})
		return
	}
	p.Write(uint64(port-0x40), []byte{v})
}

func in(p *PIT, port int) uint8 {
	b := []byte{0}
	if port == 0x61 {
		p.Port61().Read(0, b)
	} else {
		p.Read(uint64(port-0x40), b)
	}
	return b[0]
}

func read16(p *PIT, port int) uint16 {
	lo := in(p, port)
	return uint16(lo) | uint16(in(p, port))<<8
}

func TestConversions(t *testing.T) {
	if got := ticks(1e9); got != Freq {
		t.Fatalf("ticks(1s) = %d", got)
	}
	want := new(big.Int).Mul(big.NewInt(1<<62), big.NewInt(Freq))
	want.Add(want, big.NewInt(5e8))
	want.Div(want, big.NewInt(1e9))
	if got := ticks(1 << 62); got != want.Uint64() {
		t.Fatalf("ticks(1<<62) = %d, want %d", got, want)
	}
	for _, n := range []uint64{1, 2, 11932, 65536, Freq} {
		if ticks(nsOf(n)) != n {
			t.Fatalf("ticks(nsOf(%d)) = %d", n, ticks(nsOf(n)))
		}
	}
	if toBCD(1234) != 0x1234 || fromBCD(0x9999) != 9999 {
		t.Fatal("BCD")
	}
}

func TestMode2CounterAndIRQ(t *testing.T) {
	p, clk, l := newTest()
	out(p, 0x43, 0x34) // channel 0, lobyte/hibyte, mode 2
	out(p, 0x40, 0x9c)
	out(p, 0x40, 0x2e) // 11932: 100 Hz
	if v := read16(p, 0x40); v != 11932 {
		t.Fatalf("counter right after load = %d", v)
	}
	clk.advance(1000)
	if v := read16(p, 0x40); v != 10932 {
		t.Fatalf("counter after 1000 clocks = %d, want 10932", v)
	}
	// Latch: the value is frozen until read.
	out(p, 0x43, 0x00)
	clk.advance(500)
	if v := read16(p, 0x40); v != 10932 {
		t.Fatalf("latched = %d", v)
	}
	if v := read16(p, 0x40); v != 10432 {
		t.Fatalf("live after latch = %d", v)
	}
	// One second of simulated time gives exactly 100 edges.
	n := 0
	for i := 0; i < 1000; i++ {
		clk.advance(Freq / 1000)
		for p.poll(clk.now()) {
			n++
		}
	}
	if n != 100 {
		t.Fatalf("%d IRQ0 edges in one second at 100 Hz", n)
	}
	_ = l
}

func TestCatchUpBounded(t *testing.T) {
	p, clk, _ := newTest()
	out(p, 0x43, 0x36) // mode 3
	out(p, 0x40, 0x00)
	out(p, 0x40, 0x01) // 256 clocks
	clk.advance(256 * 1000)
	n := 0
	for p.poll(clk.now()) {
		n++
	}
	if n != maxCatchUp {
		t.Fatalf("after a long stall %d edges delivered, want the bound %d", n, maxCatchUp)
	}
}

func TestMode0AndReadBack(t *testing.T) {
	p, clk, _ := newTest()
	out(p, 0x43, 0x30) // channel 0 mode 0
	// Read-back status before the count: null count, OUT low.
	out(p, 0x43, 0xe2)
	if s := in(p, 0x40); s != 0x70 {
		t.Fatalf("status = %#x, want 0x70 (null count, rw 3, mode 0)", s)
	}
	out(p, 0x40, 100)
	out(p, 0x40, 0)
	clk.advance(99)
	if p.poll(clk.now()) {
		t.Fatal("edge before terminal count")
	}
	out(p, 0x43, 0xe2)
	if s := in(p, 0x40); s != 0x30 {
		t.Fatalf("status = %#x before terminal count", s)
	}
	clk.advance(1)
	if !p.poll(clk.now()) || p.poll(clk.now()) {
		t.Fatal("mode 0 must give exactly one edge")
	}
	clk.advance(1000)
	if p.poll(clk.now()) {
		t.Fatal("mode 0 repeated")
	}
	// Read-back of count and status together: status first.
	out(p, 0x43, 0xc2)
	if s := in(p, 0x40); s&0x80 == 0 {
		t.Fatalf("OUT not high after terminal count: %#x", s)
	}
	if v := read16(p, 0x40); v != uint16(0x10000+100-1100) {
		t.Fatalf("wrapped count = %d", v)
	}
}

func TestBCDAndByteModes(t *testing.T) {
	p, clk, _ := newTest()
	out(p, 0x43, 0x95) // channel 2, LSB only, mode 2, BCD
	out(p, 0x61, 1)    // gate 2 high
	out(p, 0x42, 0x50) // 50 in BCD
	clk.advance(7)
	if v := in(p, 0x42); v != 0x43 {
		t.Fatalf("BCD counter = %#x, want 0x43", v)
	}
	out(p, 0x43, 0xa0) // channel 2, MSB only, mode 0
	out(p, 0x42, 0x02) // 512
	clk.advance(12)
	if v := in(p, 0x42); v != 0x01 {
		t.Fatalf("MSB = %#x", v)
	}
}

func TestGate2AndOUT2(t *testing.T) {
	p, clk, _ := newTest()
	out(p, 0x61, 0)    // gate low
	out(p, 0x43, 0xb0) // channel 2, word, mode 0
	out(p, 0x42, 0xe8)
	out(p, 0x42, 0x03) // 1000
	clk.advance(5000)
	if in(p, 0x61)&0x20 != 0 {
		t.Fatal("OUT2 high although gate 2 was low")
	}
	out(p, 0x61, 3) // gate high, speaker on
	if v := in(p, 0x61); v&3 != 3 {
		t.Fatalf("port 0x61 = %#x", v)
	}
	clk.advance(999)
	if in(p, 0x61)&0x20 != 0 {
		t.Fatal("OUT2 high early")
	}
	clk.advance(1)
	if in(p, 0x61)&0x20 == 0 {
		t.Fatal("OUT2 low at terminal count")
	}
	// Mode 1 on channel 2: waits for a gate edge.
	out(p, 0x43, 0xb2)
	out(p, 0x42, 10)
	out(p, 0x42, 0)
	clk.advance(100)
	if in(p, 0x61)&0x20 == 0 {
		t.Fatal("mode 1 OUT must stay high until triggered")
	}
	out(p, 0x61, 0)
	out(p, 0x61, 1)
	if in(p, 0x61)&0x20 != 0 {
		t.Fatal("mode 1 OUT must go low on trigger")
	}
	clk.advance(10)
	if in(p, 0x61)&0x20 == 0 {
		t.Fatal("mode 1 OUT must go high at terminal count")
	}
}

func TestTimerDeliversAndStops(t *testing.T) {
	l := &countLine{}
	p := New(l)
	out(p, 0x43, 0x34)
	out(p, 0x40, 0x9c)
	out(p, 0x40, 0x2e) // 100 Hz
	deadline := time.Now().Add(10 * time.Second)
	for l.pulses.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if l.pulses.Load() < 3 {
		t.Fatal("timer did not raise IRQ0")
	}
	p.Close()
	time.Sleep(30 * time.Millisecond)
	n := l.pulses.Load()
	time.Sleep(100 * time.Millisecond)
	if l.pulses.Load() != n {
		t.Fatal("IRQ0 still pulsing after Close")
	}
}

func TestSaveRestore(t *testing.T) {
	p, clk, _ := newTest()
	out(p, 0x43, 0x34)
	out(p, 0x40, 0x00)
	out(p, 0x40, 0x10)
	clk.advance(100)
	s := p.Save()
	js, _ := json.Marshal(s)
	var s2 State
	json.Unmarshal(js, &s2)
	q, clk2, _ := newTest()
	clk2.ns = 5e9
	if err := q.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if v := read16(q, 0x40); v != 0x1000-100 {
		t.Fatalf("restored counter %d", v)
	}
	bad := s
	bad.Channels[1].Mode = 7
	if err := q.Restore(bad); err == nil {
		t.Fatal("bad mode accepted")
	}
}

// FuzzPIT drives the PIT with random port accesses and clock steps.
func FuzzPIT(f *testing.F) {
	f.Add([]byte{3, 0x34, 0, 0x9c, 0, 0x2e, 5, 100, 4, 0, 4, 0})
	f.Add([]byte{3, 0xb0, 6, 1, 2, 0xff, 2, 0xff, 3, 0xc8, 4, 2, 7, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		p, clk, _ := newTest()
		for len(ops) >= 2 {
			op, arg := ops[0], ops[1]
			ops = ops[2:]
			switch op % 8 {
			case 0, 1, 2, 3:
				out(p, 0x40+int(op%4), arg)
			case 4:
				in(p, 0x40+int(arg%4))
			case 5:
				clk.advance(uint64(arg) * uint64(arg))
				p.poll(clk.now())
			case 6:
				out(p, 0x61, arg)
			case 7:
				in(p, 0x61)
			}
			for i, c := range p.Save().Channels {
				if c.Mode > 5 || c.RW < 1 || c.RW > 3 || c.Count < 1 || c.Count > 0x10000 || (c.BCD && c.Count > 10000) {
					t.Fatalf("channel %d out of the chip's rules: %+v", i, c)
				}
			}
		}
	})
}

// ackLine is a Line that reports acknowledgements (irq.AckNotifier).
type ackLine struct {
	countLine
	ack    func()
	masked bool // the controller no longer takes the line
}

func (l *ackLine) OnAck(fn func())   { l.ack = fn }
func (l *ackLine) AckExpected() bool { return !l.masked }

// TestReinjectionMasked is Linux's check_timer: after ticks were taken
// through the 8259A, IRQ0 is masked there and routed through the IOAPIC,
// which reports no acknowledgements. Ticks must keep coming.
func TestReinjectionMasked(t *testing.T) {
	clk := &fakeClock{ns: 1e9}
	l := &ackLine{}
	p := newPIT(l, clk.now, false)
	out(p, 0x43, 0x34)
	out(p, 0x40, 100)
	out(p, 0x40, 0)
	clk.advance(100)
	if !p.poll(clk.now()) {
		t.Fatal("first tick")
	}
	l.ack()
	clk.advance(100)
	if !p.poll(clk.now()) {
		t.Fatal("second tick")
	}
	l.masked = true // outstanding, never to be acknowledged
	for i := 0; i < 5; i++ {
		clk.advance(100)
		if !p.poll(clk.now()) {
			t.Fatalf("tick %d after IRQ0 was masked at the PIC waited for an acknowledgement", i+3)
		}
	}
}

func TestReinjection(t *testing.T) {
	clk := &fakeClock{ns: 1e9}
	l := &ackLine{}
	p := newPIT(l, clk.now, false)
	if l.ack == nil {
		t.Fatal("PIT did not register for acknowledgements")
	}
	out(p, 0x43, 0x34)
	out(p, 0x40, 100)
	out(p, 0x40, 0) // 100 clocks per tick
	// Before any acknowledgement: plain catch-up.
	clk.advance(100)
	if !p.poll(clk.now()) {
		t.Fatal("first tick")
	}
	l.ack() // the guest took it: ack mode from now on
	// Five ticks fall due while the vCPU does not run: one goes out,
	// the rest wait for acknowledgements.
	clk.advance(500)
	n := 0
	for p.poll(clk.now()) {
		n++
	}
	if n != 1 {
		t.Fatalf("%d ticks delivered without acknowledgement, want 1", n)
	}
	pulses := l.pulses.Load()
	for i := 0; i < 4; i++ {
		l.ack() // each acknowledgement releases the next owed tick
	}
	if got := l.pulses.Load() - pulses; got != 4 {
		t.Fatalf("4 acknowledgements released %d ticks", got)
	}
	l.ack()
	if l.pulses.Load()-pulses != 4 {
		t.Fatal("an acknowledgement with nothing owed delivered a tick")
	}
	// No acknowledgement for longer than ackTimeout: back to plain mode.
	clk.advance(100)
	if !p.poll(clk.now()) {
		t.Fatal("tick after the owed ones")
	}
	clk.ns += ackTimeout + 1
	clk.advance(100)
	if !p.poll(clk.now()) {
		t.Fatal("PIT kept waiting for an acknowledgement past the timeout")
	}
}
