// Package pit emulates the Intel 8254 programmable interval timer (ports
// 0x40-0x43) and the port 0x61 bits tied to it (channel 2 gate, speaker
// data, OUT2).
//
// Counter values are computed from the host's monotonic clock (elapsed
// time since the count was loaded, at 1.193182 MHz), never from counting
// guest accesses, so a guest calibrating its clocks against the PIT gets
// the right answer however often it polls. Channel 0's OUT drives IRQ0
// through an irq.Line: a time.Timer fires at each rising edge scheduled
// from the load time (so timer lateness does not accumulate), and edges
// the host missed are delivered late rather than dropped, up to a bound,
// so the interrupt count tracks real time. When the line reports that its
// interrupts were taken (irq.AckNotifier: the PIC's INTA cycle) and such
// reports have been seen, owed ticks go out one per acknowledgement, so
// ticks that fall due while the vCPU is not running do not merge into one
// pending request (KVM's in-kernel PIT "reinjection"). Through the IOAPIC
// there is no such report (the local APIC's EOI of an edge vector is not
// visible to userspace), so a vCPU starved for more than a tick period can
// still see two ticks merge in its LAPIC, as on any userspace PIT.
package pit

import (
	"fmt"
	"math/bits"
	"sync"
	"time"

	"govmm/devices/bus"
	"govmm/irq"
	"govmm/platform"
)

// Freq is the 8254 input clock in Hz.
const Freq = 1193182

// maxCatchUp bounds how many missed IRQ0 edges are delivered late.
const maxCatchUp = 50

// ackTimeout is how long a tick may stay unacknowledged before the PIT
// stops waiting for acknowledgements (the guest moved IRQ0 elsewhere, or
// the accelerator does not report them).
const ackTimeout = int64(250 * time.Millisecond)

// Access modes (control word bits 4-5).
const (
	rwLatch = 0
	rwLSB   = 1
	rwMSB   = 2
	rwWord  = 3
)

// Channel is one counter's state. Times are stored as elapsed ticks so
// that the state does not depend on the host clock it was saved on.
type Channel struct {
	// Count is the loaded count in counter units: 1..65536 (binary) or
	// 1..10000 (BCD); a written 0 means the maximum.
	Count uint32 `json:"count"`
	Mode  uint8  `json:"mode"` // 0-5
	BCD   bool   `json:"bcd"`
	RW    uint8  `json:"rw"` // 1 LSB, 2 MSB, 3 LSB then MSB
	// ReadHigh / WriteHigh: the next byte of a word access is the MSB.
	ReadHigh   bool  `json:"read_high"`
	WriteHigh  bool  `json:"write_high"`
	WriteLatch uint8 `json:"write_latch"`
	// Latched count (counter latch or read-back command).
	Latched      bool   `json:"latched"`
	LatchedCount uint16 `json:"latched_count"`
	LatchedHigh  bool   `json:"latched_high"` // next latched byte is the MSB
	// Latched status (read-back command).
	StatusLatched bool  `json:"status_latched"`
	Status        uint8 `json:"status"`
	NullCount     bool  `json:"null_count"`
	Gate          bool  `json:"gate"`
	// Armed: a count has been loaded (and, in modes 1 and 5, triggered
	// by a gate edge) so the counter is counting.
	Armed bool `json:"armed"`
	// Elapsed is the number of input clocks counted since the counter
	// (re)started, as of when the state was saved.
	Elapsed uint64 `json:"elapsed"`
	// Delivered counts the IRQ edges already raised since the start
	// (channel 0 only).
	Delivered uint64 `json:"delivered"`
}

// State is the PIT's saved state.
type State struct {
	Channels [3]Channel `json:"channels"`
	// SpeakerData is port 0x61 bit 1.
	SpeakerData bool `json:"speaker_data"`
}

type channel struct {
	Channel
	startNS int64 // clock time matching Elapsed (while running)
}

// PIT is the 8254 plus port 0x61.
type PIT struct {
	line  irq.Line
	clock func() int64
	timer bool // use a real time.Timer for IRQ0 (false in unit tests)

	mu      sync.Mutex
	ch      [3]channel
	speaker bool
	t       *time.Timer
	closed  bool
	// Reinjection: ackMode is set once an acknowledgement was seen; then
	// a delivered tick is outstanding until acknowledged.
	ackMode     bool
	outstanding bool
	outSince    int64
	acks        irq.AckNotifier // nil: the line reports no acknowledgements
}

// ackExpected reports whether a tick delivered now will be acknowledged.
func (p *PIT) ackExpected() bool { return p.acks != nil && p.acks.AckExpected() }

// New returns a PIT whose channel 0 raises line (ISA IRQ0). Close stops its
// timer.
func New(line irq.Line) *PIT {
	start := time.Now()
	return newPIT(line, func() int64 { return int64(time.Since(start)) }, true)
}

func newPIT(line irq.Line, clock func() int64, timer bool) *PIT {
	if line == nil {
		line = irq.NoLine{}
	}
	p := &PIT{line: line, clock: clock, timer: timer}
	p.reset()
	if an, ok := line.(irq.AckNotifier); ok {
		p.acks = an
		an.OnAck(p.acked)
	}
	return p
}

// acked is called when IRQ0 was taken: deliver the next owed tick now.
func (p *PIT) acked() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.ackMode = true
	p.outstanding = false
	edge := p.poll(p.clock())
	p.rearm()
	p.mu.Unlock()
	if edge {
		p.line.Pulse()
	}
}

func (p *PIT) reset() {
	p.ackMode, p.outstanding = false, false
	now := p.clock()
	for i := range p.ch {
		p.ch[i] = channel{Channel: Channel{Count: 0x10000, RW: rwWord, Gate: i != 2}, startNS: now}
	}
	p.speaker = false
}

// Reset returns the PIT to its power-on state.
func (p *PIT) Reset() {
	p.mu.Lock()
	p.reset()
	p.rearm()
	p.mu.Unlock()
}

// ticks converts ns to input clocks, rounding to nearest (so converting
// a clock count to ns and back is exact).
func ticks(ns int64) uint64 {
	if ns <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(ns), Freq)
	lo, c := bits.Add64(lo, 5e8, 0)
	hi += c
	q, _ := bits.Div64(hi%1e9, lo, 1e9)
	return q
}

// nsOf converts input clocks to ns, rounding up.
func nsOf(t uint64) int64 {
	hi, lo := bits.Mul64(t, 1e9)
	q, r := bits.Div64(hi%Freq, lo, Freq)
	if r != 0 {
		q++
	}
	return int64(q)
}

// running reports whether the counter advances (gate and mode allow it).
func (c *channel) running() bool {
	if !c.Armed {
		return false
	}
	switch c.Mode {
	case 1, 5:
		return true // gate only triggers
	default:
		return c.Gate
	}
}

// elapsed is the number of clocks counted at time now.
func (c *channel) elapsed(now int64) uint64 {
	if !c.running() {
		return c.Elapsed
	}
	return c.Elapsed + ticks(now-c.startNS)
}

// freeze stores the elapsed count at now (before changing what running
// depends on).
func (c *channel) freeze(now int64) {
	c.Elapsed = c.elapsed(now)
	c.startNS = now
}

// restart starts counting from zero at now.
func (c *channel) restart(now int64) {
	c.Elapsed, c.Delivered, c.startNS = 0, 0, now
}

func (c *channel) modulus() uint64 {
	if c.BCD {
		return 10000
	}
	return 0x10000
}

// value is the counter's current value (binary, or BCD-encoded).
func (c *channel) value(now int64) uint16 {
	n := uint64(c.Count)
	var v uint64
	if !c.Armed {
		v = n % c.modulus()
	} else {
		d := c.elapsed(now)
		m := c.modulus()
		switch c.Mode {
		case 2:
			v = n - d%n
		case 3:
			v = n - (2*d)%n
		default:
			v = (n + m - d%m) % m
		}
		v %= m
	}
	if c.BCD {
		return toBCD(uint16(v))
	}
	return uint16(v)
}

// out is the channel's OUT pin at now.
func (c *channel) out(now int64) bool {
	n := uint64(c.Count)
	switch c.Mode {
	case 0:
		return c.Armed && c.elapsed(now) >= n
	case 1:
		return !c.Armed || c.elapsed(now) >= n
	case 2:
		if !c.Armed || !c.Gate || n < 2 {
			return true
		}
		return n-c.elapsed(now)%n != 1
	case 3:
		if !c.Armed || !c.Gate {
			return true
		}
		return c.elapsed(now)%n < (n+1)/2
	default: // 4, 5
		return !c.Armed || c.elapsed(now) != n
	}
}

// edges is how many IRQ edges channel 0 has produced after d clocks.
func (c *channel) edges(d uint64) uint64 {
	n := uint64(c.Count)
	switch c.Mode {
	case 0, 4:
		if d >= n {
			return 1
		}
		return 0
	case 2, 3:
		return d / n
	}
	return 0 // modes 1 and 5 need a gate edge, and gate 0 is tied high
}

// edgeClock is the clock count at which edge k (1-based) happens.
func (c *channel) edgeClock(k uint64) uint64 {
	return k * uint64(c.Count)
}

func toBCD(v uint16) uint16 {
	return v%10 | (v/10%10)<<4 | (v/100%10)<<8 | (v/1000%10)<<12
}

func fromBCD(v uint16) uint32 {
	d := func(s uint) uint32 { return min(uint32(v>>s&0xf), 9) }
	return d(0) + 10*d(4) + 100*d(8) + 1000*d(12)
}

func (c *channel) load(v uint16, now int64) {
	var n uint32
	if c.BCD {
		n = fromBCD(v)
		if n == 0 {
			n = 10000
		}
	} else {
		n = uint32(v)
		if n == 0 {
			n = 0x10000
		}
	}
	c.Count = n
	c.NullCount = false
	switch c.Mode {
	case 1, 5:
		// Counting waits for a gate trigger; a count loaded while
		// counting takes effect at the next trigger.
		if !c.Armed {
			return
		}
	}
	// A new count in a periodic mode takes effect at the end of the
	// current period on the chip; restarting here is within one period
	// of that.
	c.Armed = true
	c.restart(now)
}

func (c *channel) status(now int64) uint8 {
	s := c.RW<<4 | c.Mode<<1
	if c.BCD {
		s |= 1
	}
	if c.out(now) {
		s |= 0x80
	}
	if c.NullCount {
		s |= 0x40
	}
	return s
}

func (c *channel) latch(now int64) {
	if !c.Latched {
		c.Latched = true
		c.LatchedCount = c.value(now)
		c.LatchedHigh = c.RW == rwMSB
	}
}

func (p *PIT) control(v uint8, now int64) {
	sel := v >> 6
	if sel == 3 { // read-back
		for i := range p.ch {
			if v&(2<<i) == 0 {
				continue
			}
			c := &p.ch[i]
			if v&0x20 == 0 {
				c.latch(now)
			}
			if v&0x10 == 0 && !c.StatusLatched {
				c.StatusLatched = true
				c.Status = c.status(now)
			}
		}
		return
	}
	c := &p.ch[sel]
	rw := v >> 4 & 3
	if rw == rwLatch {
		c.latch(now)
		return
	}
	c.freeze(now)
	mode := v >> 1 & 7
	if mode > 5 {
		mode -= 4
	}
	c.RW, c.Mode, c.BCD = rw, mode, v&1 != 0
	if c.BCD && c.Count > 10000 {
		c.Count = 10000 // the old count is meaningless until a new one is written
	}
	c.ReadHigh, c.WriteHigh = rw == rwMSB, false
	c.Latched, c.StatusLatched = false, false
	c.NullCount = true
	c.Armed = false
	c.restart(now)
	if sel == 0 {
		p.rearm()
	}
}

func (p *PIT) writeCounter(i int, v uint8, now int64) {
	c := &p.ch[i]
	switch c.RW {
	case rwLSB:
		c.load(uint16(v), now)
	case rwMSB:
		c.load(uint16(v)<<8, now)
	default:
		if !c.WriteHigh {
			c.WriteLatch = v
			c.WriteHigh = true
			if c.Mode == 0 {
				// Writing the first byte stops a mode 0 count.
				c.freeze(now)
				c.Armed = false
			}
			return
		}
		c.WriteHigh = false
		c.load(uint16(c.WriteLatch)|uint16(v)<<8, now)
	}
	if i == 0 {
		p.rearm()
	}
}

func (p *PIT) readCounter(i int, now int64) uint8 {
	c := &p.ch[i]
	if c.StatusLatched {
		c.StatusLatched = false
		return c.Status
	}
	if c.Latched {
		if c.LatchedHigh {
			c.Latched = false
			return uint8(c.LatchedCount >> 8)
		}
		if c.RW == rwWord {
			c.LatchedHigh = true
		} else {
			c.Latched = false
		}
		return uint8(c.LatchedCount)
	}
	v := c.value(now)
	switch c.RW {
	case rwLSB:
		return uint8(v)
	case rwMSB:
		return uint8(v >> 8)
	}
	c.ReadHigh = !c.ReadHigh
	if c.ReadHigh {
		return uint8(v)
	}
	return uint8(v >> 8)
}

// Read implements bus.Device for ports 0x40-0x43.
func (p *PIT) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 || offset > 2 {
		return
	}
	p.mu.Lock()
	data[0] = p.readCounter(int(offset), p.clock())
	p.mu.Unlock()
}

// Write implements bus.Device for ports 0x40-0x43.
func (p *PIT) Write(offset uint64, data []byte) {
	if len(data) == 0 || offset > 3 {
		return
	}
	p.mu.Lock()
	now := p.clock()
	if offset == 3 {
		p.control(data[0], now)
	} else {
		p.writeCounter(int(offset), data[0], now)
	}
	p.mu.Unlock()
}

// setGate2 changes channel 2's gate (port 0x61 bit 0).
func (p *PIT) setGate2(high bool, now int64) {
	c := &p.ch[2]
	if c.Gate == high {
		return
	}
	c.freeze(now)
	c.Gate = high
	if !high {
		return
	}
	switch c.Mode {
	case 1, 5:
		if c.Count != 0 && !c.NullCount {
			c.Armed = true
			c.restart(now)
		}
	case 2, 3:
		c.restart(now)
	default:
		c.startNS = now // resume
	}
}

type speakerDev struct{ p *PIT }

// Read returns port 0x61: gate 2, speaker data, a refresh toggle (bit 4,
// every 15 us) and OUT2 (bit 5).
func (d speakerDev) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 0 || offset != 0 {
		return
	}
	p := d.p
	p.mu.Lock()
	now := p.clock()
	var v uint8
	if p.ch[2].Gate {
		v |= 1
	}
	if p.speaker {
		v |= 2
	}
	if now/15085&1 != 0 {
		v |= 0x10
	}
	if p.ch[2].out(now) {
		v |= 0x20
	}
	p.mu.Unlock()
	data[0] = v
}

func (d speakerDev) Write(offset uint64, data []byte) {
	if len(data) == 0 || offset != 0 {
		return
	}
	p := d.p
	p.mu.Lock()
	p.setGate2(data[0]&1 != 0, p.clock())
	p.speaker = data[0]&2 != 0
	p.mu.Unlock()
}

// Port61 is the port 0x61 device (gate 2, speaker data, OUT2).
func (p *PIT) Port61() bus.Device { return speakerDev{p} }

// Register puts the PIT (0x40-0x43) and port 0x61 on the port bus.
func (p *PIT) Register(pio *bus.Bus) error {
	if err := pio.Register(platform.PortPIT, 4, "pit", p); err != nil {
		return err
	}
	return pio.Register(platform.PortSpeaker, 1, "pit-port61", p.Port61())
}

// rearm schedules the next IRQ0 edge. Called with mu held.
func (p *PIT) rearm() {
	if !p.timer || p.closed {
		return
	}
	next, ok := p.nextIRQ(p.clock())
	if !ok {
		if p.t != nil {
			p.t.Stop()
		}
		return
	}
	if p.t == nil {
		p.t = time.AfterFunc(next, p.fire)
	} else {
		p.t.Reset(next)
	}
}

// nextIRQ returns how long until channel 0 needs attention: the next
// edge, or soon if edges are owed.
func (p *PIT) nextIRQ(now int64) (time.Duration, bool) {
	c := &p.ch[0]
	if !c.running() {
		return 0, false
	}
	d := c.elapsed(now)
	due := c.edges(d)
	if due > c.Delivered {
		// Owed edges go out at half-period spacing (at least 100 us)
		// so the guest can take each one.
		gap := max(nsOf(uint64(c.Count))/2, int64(100*time.Microsecond))
		return time.Duration(gap), true
	}
	if (c.Mode == 0 || c.Mode == 4) && c.Delivered >= 1 {
		return 0, false
	}
	at := c.startNS + nsOf(c.edgeClock(c.Delivered+1)-c.Elapsed)
	return time.Duration(max(at-now, int64(50*time.Microsecond))), true
}

// poll delivers at most one owed IRQ0 edge at now and reports whether it
// did; the timer (or a test) calls it.
func (p *PIT) poll(now int64) bool {
	c := &p.ch[0]
	if !c.running() {
		return false
	}
	due := c.edges(c.elapsed(now))
	if due <= c.Delivered {
		return false
	}
	if due-c.Delivered > maxCatchUp {
		c.Delivered = due - maxCatchUp
	}
	if p.ackMode && p.outstanding {
		if now-p.outSince < ackTimeout && p.ackExpected() {
			return false // wait for the previous tick to be taken
		}
		// Not taken in time, or IRQ0 no longer goes where taking it is
		// reported (Linux's check_timer masks it at the 8259A and tests
		// the IOAPIC path): deliver ticks as they fall due.
		p.ackMode, p.outstanding = false, false
	}
	c.Delivered++
	if p.ackMode && p.ackExpected() {
		p.outstanding, p.outSince = true, now
	}
	return true
}

func (p *PIT) fire() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	edge := p.poll(p.clock())
	p.rearm()
	p.mu.Unlock()
	if edge {
		p.line.Pulse()
	}
}

// Close stops the IRQ0 timer. The PIT still answers port accesses.
func (p *PIT) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.t != nil {
		p.t.Stop()
	}
	return nil
}

// Save returns the PIT's state.
func (p *PIT) Save() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	var s State
	for i := range p.ch {
		c := p.ch[i].Channel
		c.Elapsed = p.ch[i].elapsed(now)
		s.Channels[i] = c
	}
	s.SpeakerData = p.speaker
	return s
}

// Restore loads a saved state; counting resumes from the saved values.
func (p *PIT) Restore(s State) error {
	for i, c := range s.Channels {
		if c.Mode > 5 || c.RW < 1 || c.RW > 3 {
			return fmt.Errorf("pit restore: channel %d: mode %d / access %d out of range", i, c.Mode, c.RW)
		}
		lim := uint32(0x10000)
		if c.BCD {
			lim = 10000
		}
		if c.Count < 1 || c.Count > lim {
			return fmt.Errorf("pit restore: channel %d: count %d out of range", i, c.Count)
		}
		if i == 0 && !c.Gate {
			return fmt.Errorf("pit restore: channel 0 gate is tied high")
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	for i, c := range s.Channels {
		p.ch[i] = channel{Channel: c, startNS: now}
	}
	p.ackMode, p.outstanding = false, false
	p.speaker = s.SpeakerData
	p.rearm()
	return nil
}
