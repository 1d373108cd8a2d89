// Package rtc is the PC's MC146818 CMOS real-time clock and its 128 bytes
// of CMOS memory (index port 0x70, data port 0x71, IRQ8). Guests read the
// wall-clock time from it at boot, firmware-style guests read the memory
// size from its CMOS bytes, and Linux's rtc-cmos driver and bare-metal
// tests use its periodic, update-ended and alarm interrupts.
//
// The clock is not a counter that ticks inside the VMM: the guest's time
// is the host clock plus an offset. Guest writes to the time registers
// change the offset, so the guest clock keeps running from what the guest
// set; setting SET in register B (or holding the divider in reset) holds
// it still until released, as on the chip. Events (periodic, update-ended,
// alarm) are computed from the host clock whenever the guest looks, so the
// flags in register C are right even with the interrupts disabled, and a
// host timer runs only while an enabled interrupt is waiting to fire.
package rtc

import (
	"fmt"
	"sync"
	"time"

	"govmm/irq"
)

// Registration: the device claims the two ports at platform.PortCMOS.
const Size = 2

// CMOS register indexes.
const (
	RegSeconds      = 0x00
	RegSecondsAlarm = 0x01
	RegMinutes      = 0x02
	RegMinutesAlarm = 0x03
	RegHours        = 0x04
	RegHoursAlarm   = 0x05
	RegWeekday      = 0x06
	RegDayOfMonth   = 0x07
	RegMonth        = 0x08
	RegYear         = 0x09
	RegA            = 0x0A
	RegB            = 0x0B
	RegC            = 0x0C
	RegD            = 0x0D
	RegCentury      = 0x32 // the IBM PC convention (ACPI FADT CENTURY)
	CMOSSize        = 128
)

// Register A bits.
const (
	AUIP     = 0x80
	ADivMask = 0x70
	ARSMask  = 0x0F
	aDiv32K  = 0x20 // 32.768 kHz time base, running
)

// Register B bits.
const (
	BSET  = 0x80
	BPIE  = 0x40
	BAIE  = 0x20
	BUIE  = 0x10
	BSQWE = 0x08
	BDM   = 0x04 // binary (not BCD)
	B24   = 0x02 // 24-hour mode
	BDSE  = 0x01
)

// Register C bits.
const (
	CIRQF = 0x80
	CPF   = 0x40
	CAF   = 0x20
	CUF   = 0x10
)

// DVRT is register D's valid-RAM-and-time bit.
const DVRT = 0x80

const (
	ticksPerSecond = 32768 // the 32.768 kHz time base
	uipWindow      = 244 * time.Microsecond
	alarmDontCare  = 0xC0
)

// RTC is the clock and CMOS memory. It is safe for concurrent use.
type RTC struct {
	line      irq.Line
	clock     func() time.Time
	afterFunc func(d time.Duration, f func()) (stop func() bool)
	epoch     time.Time // host time the tick count starts from

	mu       sync.Mutex
	cmos     [CMOSSize]byte
	index    uint8
	nmiOff   bool
	offset   time.Duration // guest time minus host time while running
	frozen   time.Time     // the held guest time while SET or divider reset
	lastHost time.Time     // host time events were computed up to
	level    bool
	closed   bool
	stop     func() bool
	gen      uint64
}

// State is the RTC's snapshot state.
type State struct {
	// CMOS is the 128 bytes of CMOS memory and registers; the time and
	// date registers are filled in with the guest time when saved.
	CMOS []byte `json:"cmos"`
	// Index is the selected register (0-127).
	Index uint8 `json:"index"`
	// NMIDisabled is bit 7 of the last index write.
	NMIDisabled bool `json:"nmi_disabled"`
	// Offset is the guest clock minus the host clock, in nanoseconds,
	// while the clock runs.
	Offset time.Duration `json:"offset_ns"`
	// Frozen is the guest time held while register B's SET bit is set or
	// the divider is in reset (zero otherwise).
	Frozen time.Time `json:"frozen,omitzero"`
}

// New returns an RTC showing clock's time (nil means time.Now), with
// register A = 0x26 (32.768 kHz, 1024 Hz periodic rate), register B =
// 0x02 (24-hour BCD), D = VRT. line is IRQ8 (nil: not connected); it is
// driven as a level: high while register C's IRQF is set, low once C has
// been read. line.Set is called with the RTC's lock held and must not call
// back into the RTC. Close stops its timers.
func New(line irq.Line, clock func() time.Time) *RTC {
	if line == nil {
		line = irq.NoLine{}
	}
	if clock == nil {
		clock = time.Now
	}
	r := &RTC{line: line, clock: clock, afterFunc: realAfterFunc}
	r.epoch = clock()
	r.lastHost = r.epoch
	r.cmos[RegA] = aDiv32K | 0x06
	r.cmos[RegB] = B24
	r.cmos[RegD] = DVRT
	return r
}

func realAfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Close stops the RTC's timers; the registers stay readable.
func (r *RTC) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.stopTimer()
	return nil
}

// NMIDisabled reports bit 7 of the last index write (NMI mask).
func (r *RTC) NMIDisabled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nmiOff
}

// SetMemorySize fills the CMOS bytes firmware-style guests read for the
// memory size: low is the RAM below 4 GiB in bytes, high the RAM above.
func (r *RTC) SetMemorySize(low, high uint64) {
	const kib, mib, unit64k = 1 << 10, 1 << 20, 64 << 10
	clamp := func(v uint64) uint16 {
		if v > 0xFFFF {
			return 0xFFFF
		}
		return uint16(v)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	base := uint16(640)
	if low < 640*kib {
		base = uint16(low / kib)
	}
	r.cmos[0x15], r.cmos[0x16] = byte(base), byte(base>>8)
	var ext uint16
	if low > mib {
		ext = clamp((low - mib) / kib)
	}
	r.cmos[0x17], r.cmos[0x18] = byte(ext), byte(ext>>8)
	r.cmos[0x30], r.cmos[0x31] = byte(ext), byte(ext>>8)
	var above16 uint16
	if low > 16*mib {
		above16 = clamp((low - 16*mib) / unit64k)
	}
	r.cmos[0x34], r.cmos[0x35] = byte(above16), byte(above16>>8)
	hi := high / unit64k
	if hi > 0xFFFFFF {
		hi = 0xFFFFFF
	}
	r.cmos[0x5b], r.cmos[0x5c], r.cmos[0x5d] = byte(hi), byte(hi>>8), byte(hi>>16)
	// The standard checksum over 0x10-0x2d, big endian at 0x2e.
	var sum uint16
	for i := 0x10; i <= 0x2d; i++ {
		sum += uint16(r.cmos[i])
	}
	r.cmos[0x2e], r.cmos[0x2f] = byte(sum>>8), byte(sum)
}

// Read handles a read of the index port (offset 0: write-only, reads as
// 0xff like QEMU's) or the data port (offset 1). A wider access is split
// into byte accesses, as on the ISA bus; bytes beyond the two ports read
// as all ones.
func (r *RTC) Read(offset uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range data {
		data[i] = 0xff
		if offset+uint64(i) == 1 {
			now := r.clock()
			r.catchUp(now)
			data[i] = r.readReg(now, r.index)
			r.updateIRQ()
			r.schedule(now)
		}
	}
}

// Write handles a write to the index port (offset 0: bit 7 masks NMI, bits
// 6:0 select the register) or the data port (offset 1). A 16-bit write at
// the index port selects the register and writes its high byte to it.
func (r *RTC) Write(offset uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, v := range data {
		switch offset + uint64(i) {
		case 0:
			r.index = v & 0x7F
			r.nmiOff = v&0x80 != 0
		case 1:
			now := r.clock()
			r.catchUp(now)
			r.writeReg(now, r.index, v)
			r.updateIRQ()
			r.schedule(now)
		}
	}
}

// dividerRunning reports whether the divider chain runs (QEMU accepts the three
// time-base selections, only the reset codes 11x stop it).
func (r *RTC) dividerRunning() bool { return r.cmos[RegA]&ADivMask <= aDiv32K }

func (r *RTC) isFrozen() bool { return r.cmos[RegB]&BSET != 0 || !r.dividerRunning() }

func (r *RTC) guestTime(now time.Time) time.Time {
	if r.isFrozen() {
		return r.frozen
	}
	return now.Add(r.offset).UTC()
}

func (r *RTC) readReg(now time.Time, idx uint8) uint8 {
	switch idx {
	case RegSeconds, RegMinutes, RegHours, RegWeekday, RegDayOfMonth, RegMonth, RegYear, RegCentury:
		return r.timeReg(r.guestTime(now), idx)
	case RegA:
		a := r.cmos[RegA] &^ AUIP
		if !r.isFrozen() {
			g := r.guestTime(now)
			if time.Duration(g.Nanosecond()) >= time.Second-uipWindow {
				a |= AUIP
			}
		}
		return a
	case RegC:
		c := r.cmos[RegC]
		r.cmos[RegC] = 0
		return c
	case RegD:
		return DVRT
	default:
		return r.cmos[idx]
	}
}

func (r *RTC) writeReg(now time.Time, idx, v uint8) {
	switch idx {
	case RegSeconds, RegMinutes, RegHours, RegDayOfMonth, RegMonth, RegYear, RegCentury:
		t := r.setTimeReg(r.guestTime(now), idx, v)
		if r.isFrozen() {
			r.frozen = t
		} else {
			r.offset = t.Sub(now)
		}
	case RegWeekday:
		// The day of the week is derived from the date.
	case RegA:
		wasFrozen, wasReset := r.isFrozen(), !r.dividerRunning()
		g := r.guestTime(now)
		r.cmos[RegA] = v &^ AUIP
		r.transition(now, g, wasFrozen, wasReset)
	case RegB:
		wasFrozen, wasReset := r.isFrozen(), !r.dividerRunning()
		g := r.guestTime(now)
		if v&BSET != 0 {
			v &^= BUIE // setting SET clears UIE, as on the chip
		}
		r.cmos[RegB] = v
		r.transition(now, g, wasFrozen, wasReset)
	case RegC, RegD:
		// Read-only.
	default:
		r.cmos[idx] = v
	}
}

// transition handles the clock stopping or starting after a write to
// register A or B; g is the guest time just before the write.
func (r *RTC) transition(now, g time.Time, wasFrozen, wasReset bool) {
	switch frozen := r.isFrozen(); {
	case !wasFrozen && frozen:
		r.frozen = g
	case wasFrozen && !frozen:
		if wasReset {
			// Leaving divider reset: the first update comes half a
			// second later.
			g = g.Truncate(time.Second).Add(500 * time.Millisecond)
		}
		r.offset = g.Sub(now)
		r.frozen = time.Time{}
	}
}

func (r *RTC) binary() bool { return r.cmos[RegB]&BDM != 0 }

func (r *RTC) enc(v int) uint8 {
	if r.binary() {
		return uint8(v)
	}
	return uint8(v/10%10<<4 | v%10)
}

func (r *RTC) dec(b uint8) int {
	if r.binary() {
		return int(b)
	}
	return int(b>>4)*10 + int(b&0x0F)
}

func (r *RTC) encHour(h int) uint8 {
	if r.cmos[RegB]&B24 != 0 {
		return r.enc(h)
	}
	h12 := h % 12
	if h12 == 0 {
		h12 = 12
	}
	b := r.enc(h12)
	if h >= 12 {
		b |= 0x80
	}
	return b
}

func (r *RTC) decHour(b uint8) int {
	if r.cmos[RegB]&B24 != 0 {
		return r.dec(b)
	}
	h := r.dec(b&0x7F) % 12
	if b&0x80 != 0 {
		h += 12
	}
	return h
}

func (r *RTC) timeReg(t time.Time, idx uint8) uint8 {
	switch idx {
	case RegSeconds:
		return r.enc(t.Second())
	case RegMinutes:
		return r.enc(t.Minute())
	case RegHours:
		return r.encHour(t.Hour())
	case RegWeekday:
		return r.enc(int(t.Weekday()) + 1)
	case RegDayOfMonth:
		return r.enc(t.Day())
	case RegMonth:
		return r.enc(int(t.Month()))
	case RegYear:
		return r.enc(t.Year() % 100)
	default: // RegCentury
		return r.enc(t.Year() / 100 % 100)
	}
}

// setTimeReg returns t with one field replaced by the written register
// value. Out-of-range values are normalised by time.Date (month 13 is
// January of the next year), so the clock stays a valid date.
func (r *RTC) setTimeReg(t time.Time, idx, v uint8) time.Time {
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	switch idx {
	case RegSeconds:
		s = r.dec(v)
	case RegMinutes:
		mi = r.dec(v)
	case RegHours:
		h = r.decHour(v)
	case RegDayOfMonth:
		d = r.dec(v)
	case RegMonth:
		mo = time.Month(r.dec(v))
	case RegYear:
		y = y/100*100 + r.dec(v)
	case RegCentury:
		y = r.dec(v)*100 + y%100
	}
	return time.Date(y, mo, d, h, mi, s, t.Nanosecond(), time.UTC)
}

// periodTicks returns the periodic interrupt period in 32.768 kHz ticks
// selected by register A (0: none).
func (r *RTC) periodTicks() int64 {
	rs := r.cmos[RegA] & ARSMask
	switch {
	case rs == 0:
		return 0
	case rs <= 2:
		return 1 << (rs + 6) // rates 1 and 2 are 256 and 128 Hz
	default:
		return 1 << (rs - 1)
	}
}

// ticks returns the number of whole time-base ticks from epoch to now.
func (r *RTC) ticks(now time.Time) int64 {
	d := now.Sub(r.epoch)
	if d < 0 {
		return 0
	}
	return int64(d/time.Second)*ticksPerSecond + int64(d%time.Second)*ticksPerSecond/int64(time.Second)
}

// tickTime returns how long after epoch tick n starts.
func tickTime(n int64) time.Duration {
	return time.Duration(n/ticksPerSecond)*time.Second +
		time.Duration((n%ticksPerSecond*int64(time.Second)+ticksPerSecond-1)/ticksPerSecond)
}

// catchUp sets the periodic, update-ended and alarm flags for every event
// between the last call and now.
func (r *RTC) catchUp(now time.Time) {
	last := r.lastHost
	if !now.After(last) {
		return
	}
	r.lastHost = now
	if !r.dividerRunning() {
		return
	}
	if p := r.periodTicks(); p != 0 && r.ticks(now)/p > r.ticks(last)/p {
		r.cmos[RegC] |= CPF
	}
	if r.isFrozen() {
		return
	}
	s0 := last.Add(r.offset).Unix()
	s1 := now.Add(r.offset).Unix()
	if s1 <= s0 {
		return
	}
	r.cmos[RegC] |= CUF
	if r.cmos[RegC]&CAF != 0 {
		return
	}
	if s1-s0 > 86400 {
		s0 = s1 - 86400 // the alarm pattern repeats at most daily
	}
	for s := s0 + 1; s <= s1; s++ {
		if r.alarmMatches(s) {
			r.cmos[RegC] |= CAF
			break
		}
	}
}

// alarmMatches compares the alarm registers with the time registers as
// they read at the start of second s (Unix time), as the chip compares
// bytes; alarm bytes 0xC0-0xFF match anything.
func (r *RTC) alarmMatches(s int64) bool {
	day := s % 86400
	if day < 0 {
		day += 86400
	}
	h, m, sec := int(day/3600), int(day/60%60), int(day%60)
	match := func(alarm, cur uint8) bool { return alarm&alarmDontCare == alarmDontCare || alarm == cur }
	return match(r.cmos[RegSecondsAlarm], r.enc(sec)) &&
		match(r.cmos[RegMinutesAlarm], r.enc(m)) &&
		match(r.cmos[RegHoursAlarm], r.encHour(h))
}

// computeIRQF recomputes IRQF = PF·PIE + AF·AIE + UF·UIE into register C.
func (r *RTC) computeIRQF() bool {
	c, b := r.cmos[RegC], r.cmos[RegB]
	irqf := (c&CPF != 0 && b&BPIE != 0) || (c&CAF != 0 && b&BAIE != 0) || (c&CUF != 0 && b&BUIE != 0)
	if irqf {
		r.cmos[RegC] |= CIRQF
	} else {
		r.cmos[RegC] &^= CIRQF
	}
	return irqf
}

// updateIRQ recomputes IRQF and drives the line when it changes.
func (r *RTC) updateIRQ() {
	if irqf := r.computeIRQF(); irqf != r.level {
		r.level = irqf
		r.line.Set(irqf)
	}
}

func (r *RTC) stopTimer() {
	r.gen++
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
}

// schedule arms a host timer for the next event that would raise IRQF.
// Nothing is armed while IRQF is already set (the line is high until the
// guest reads C) or no interrupt is enabled.
func (r *RTC) schedule(now time.Time) {
	r.stopTimer()
	if r.closed || r.cmos[RegC]&CIRQF != 0 || !r.dividerRunning() {
		return
	}
	b := r.cmos[RegB]
	next := time.Duration(-1)
	if p := r.periodTicks(); p != 0 && b&BPIE != 0 {
		n := (r.ticks(now)/p + 1) * p
		next = tickTime(n) - now.Sub(r.epoch)
	}
	if b&(BUIE|BAIE) != 0 && !r.isFrozen() {
		g := now.Add(r.offset)
		d := time.Second - time.Duration(g.Nanosecond())
		if next < 0 || d < next {
			next = d
		}
	}
	if next < 0 {
		return
	}
	if next <= 0 {
		next = 1
	}
	gen := r.gen
	r.stop = r.afterFunc(next, func() { r.fire(gen) })
}

func (r *RTC) fire(gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || gen != r.gen {
		return
	}
	r.stop = nil
	now := r.clock()
	r.catchUp(now)
	r.updateIRQ()
	r.schedule(now)
}

// Save returns the RTC state.
func (r *RTC) Save() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock()
	r.catchUp(now)
	r.updateIRQ()
	s := State{
		CMOS:        make([]byte, CMOSSize),
		Index:       r.index,
		NMIDisabled: r.nmiOff,
		Offset:      r.offset,
	}
	copy(s.CMOS, r.cmos[:])
	g := r.guestTime(now)
	for _, idx := range []uint8{RegSeconds, RegMinutes, RegHours, RegWeekday, RegDayOfMonth, RegMonth, RegYear, RegCentury} {
		s.CMOS[idx] = r.timeReg(g, idx)
	}
	s.CMOS[RegA] &^= AUIP
	if r.isFrozen() {
		s.Frozen = r.frozen
	}
	return s
}

// Restore sets the RTC state: the guest clock continues at the saved
// offset from the host clock (or stays held if it was held), and the
// interrupt line is driven to the saved IRQF.
func (r *RTC) Restore(s State) error {
	if len(s.CMOS) != CMOSSize {
		return fmt.Errorf("rtc: restore: CMOS is %d bytes, want %d", len(s.CMOS), CMOSSize)
	}
	if s.Index >= CMOSSize {
		return fmt.Errorf("rtc: restore: index %#x out of range", s.Index)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	copy(r.cmos[:], s.CMOS)
	r.cmos[RegA] &^= AUIP
	r.cmos[RegD] = DVRT
	if r.cmos[RegB]&BSET != 0 {
		r.cmos[RegB] &^= BUIE
	}
	r.index, r.nmiOff, r.offset = s.Index, s.NMIDisabled, s.Offset
	r.frozen = time.Time{}
	now := r.clock()
	r.lastHost = now
	if r.isFrozen() {
		r.frozen = s.Frozen.UTC()
		if s.Frozen.IsZero() {
			r.frozen = now.Add(s.Offset).UTC()
		}
	}
	// Drive the line whatever it was before, so that the interrupt
	// controller sees the restored level.
	r.level = r.computeIRQF()
	r.line.Set(r.level)
	r.schedule(now)
	return nil
}
