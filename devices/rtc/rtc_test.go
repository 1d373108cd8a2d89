package rtc

import (
	"encoding/binary"
	"encoding/json"
	"sort"
	"sync"
	"testing"
	"time"
)

type fakeLine struct {
	mu   sync.Mutex
	sets []bool
}

func (l *fakeLine) Set(h bool) { l.mu.Lock(); l.sets = append(l.sets, h); l.mu.Unlock() }
func (l *fakeLine) Pulse()     { panic("the RTC drives a level") }

func (l *fakeLine) level() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sets) > 0 && l.sets[len(l.sets)-1]
}

// rises counts low-to-high transitions.
func (l *fakeLine) rises() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, prev := 0, false
	for _, s := range l.sets {
		if s && !prev {
			n++
		}
		prev = s
	}
	return n
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

// rig is an RTC on a fake clock whose timers fire as the test advances
// the clock.
type rig struct {
	t      testing.TB
	now    time.Time
	timers []*fakeTimer
	line   *fakeLine
	r      *RTC
}

var start = time.Date(2026, 11, 26, 9, 58, 54, 0, time.UTC) // a Thursday

func newRig(t testing.TB) *rig {
	g := &rig{t: t, now: start, line: &fakeLine{}}
	g.r = New(g.line, func() time.Time { return g.now })
	g.r.afterFunc = func(d time.Duration, f func()) func() bool {
		ft := &fakeTimer{at: g.now.Add(d), f: f}
		g.timers = append(g.timers, ft)
		return func() bool { was := !ft.stopped; ft.stopped = true; return was }
	}
	return g
}

func (g *rig) live() []*fakeTimer {
	var out []*fakeTimer
	for _, ft := range g.timers {
		if !ft.stopped {
			out = append(out, ft)
		}
	}
	g.timers = out
	return out
}

// advance moves the clock forward by d, firing due timers in order.
func (g *rig) advance(d time.Duration) {
	end := g.now.Add(d)
	for {
		ts := g.live()
		sort.Slice(ts, func(i, j int) bool { return ts[i].at.Before(ts[j].at) })
		if len(ts) == 0 || ts[0].at.After(end) {
			break
		}
		ft := ts[0]
		ft.stopped = true
		if ft.at.After(g.now) {
			g.now = ft.at
		}
		ft.f()
	}
	g.now = end
}

func (g *rig) write(idx, v byte) {
	g.r.Write(0, []byte{idx})
	g.r.Write(1, []byte{v})
}

func (g *rig) read(idx byte) byte {
	g.r.Write(0, []byte{idx})
	b := []byte{0}
	g.r.Read(1, b)
	return b[0]
}

func (g *rig) wantTime(want map[byte]byte) {
	g.t.Helper()
	for idx, v := range want {
		if got := g.read(idx); got != v {
			g.t.Errorf("register %#x = %#x, want %#x", idx, got, v)
		}
	}
}

func TestTimeBCD24(t *testing.T) {
	g := newRig(t)
	g.wantTime(map[byte]byte{RegSeconds: 0x54, RegMinutes: 0x58, RegHours: 0x09, RegWeekday: 0x05,
		RegDayOfMonth: 0x26, RegMonth: 0x11, RegYear: 0x26, RegCentury: 0x20})
	g.advance(90 * time.Second)
	g.wantTime(map[byte]byte{RegSeconds: 0x24, RegMinutes: 0x00, RegHours: 0x10})
}

func TestTimeBinaryAnd12Hour(t *testing.T) {
	g := newRig(t)
	g.write(RegB, BDM|B24)
	g.wantTime(map[byte]byte{RegSeconds: 54, RegMinutes: 58, RegHours: 9, RegDayOfMonth: 26, RegMonth: 11, RegYear: 26, RegCentury: 20})
	g.write(RegB, 0) // BCD, 12-hour
	g.wantTime(map[byte]byte{RegHours: 0x09})
	g.advance(11 * time.Hour) // 20:58
	g.wantTime(map[byte]byte{RegHours: 0x88})
	g.advance(4 * time.Hour) // 00:58 next day
	g.wantTime(map[byte]byte{RegHours: 0x12, RegDayOfMonth: 0x27, RegWeekday: 0x06})
	g.advance(12 * time.Hour) // 12:58
	g.wantTime(map[byte]byte{RegHours: 0x92})
	g.write(RegB, BDM) // binary 12-hour
	g.wantTime(map[byte]byte{RegHours: 0x8C})
	g.write(RegHours, 0x01) // 1 AM
	g.write(RegB, B24)
	g.wantTime(map[byte]byte{RegHours: 0x01})
}

func TestGuestSetsTimeAndItKeepsRunning(t *testing.T) {
	g := newRig(t)
	g.write(RegYear, 0x30)
	g.write(RegMonth, 0x02)
	g.write(RegDayOfMonth, 0x03)
	g.advance(5 * time.Second)
	g.wantTime(map[byte]byte{RegYear: 0x30, RegMonth: 0x02, RegDayOfMonth: 0x03, RegSeconds: 0x59, RegCentury: 0x20})
	g.advance(time.Second)
	g.wantTime(map[byte]byte{RegSeconds: 0x00, RegMinutes: 0x59})
	want := time.Date(2030, 2, 3, 9, 58, 54, 0, time.UTC).Sub(start)
	if got := g.r.Save().Offset; got != want {
		t.Fatalf("offset %v, want %v", got, want)
	}
	g.write(RegCentury, 0x21)
	g.wantTime(map[byte]byte{RegYear: 0x30, RegCentury: 0x21})
}

func TestSETHoldsTheClock(t *testing.T) {
	g := newRig(t)
	g.write(RegB, B24|BSET|BUIE)
	if b := g.read(RegB); b != B24|BSET {
		t.Fatalf("B = %#x: setting SET must clear UIE", b)
	}
	g.advance(10 * time.Second)
	g.wantTime(map[byte]byte{RegSeconds: 0x54})
	g.write(RegHours, 0x23)
	g.write(RegMinutes, 0x59)
	g.write(RegSeconds, 0x58)
	g.advance(10 * time.Second)
	g.wantTime(map[byte]byte{RegHours: 0x23, RegSeconds: 0x58})
	if g.read(RegA)&AUIP != 0 {
		t.Fatal("UIP set while SET holds the clock")
	}
	g.read(RegC)
	g.write(RegB, B24)
	g.advance(3 * time.Second)
	g.wantTime(map[byte]byte{RegHours: 0x00, RegMinutes: 0x00, RegSeconds: 0x01, RegDayOfMonth: 0x27})
	if c := g.read(RegC); c&CUF == 0 {
		t.Fatalf("C = %#x: no update flag after the clock restarted", c)
	}
}

func TestDividerReset(t *testing.T) {
	g := newRig(t)
	g.advance(300 * time.Millisecond)
	g.write(RegA, 0x70|0x06)
	g.advance(10 * time.Second)
	g.wantTime(map[byte]byte{RegSeconds: 0x54})
	g.read(RegC)
	if c := g.read(RegC); c != 0 {
		t.Fatalf("C = %#x with the divider in reset", c)
	}
	g.write(RegA, 0x26)
	g.advance(499 * time.Millisecond)
	if c := g.read(RegC); c&CUF != 0 {
		t.Fatalf("update before 500 ms after divider release (C=%#x)", c)
	}
	g.advance(time.Millisecond)
	if c := g.read(RegC); c&CUF == 0 {
		t.Fatalf("no update 500 ms after divider release (C=%#x)", c)
	}
	g.wantTime(map[byte]byte{RegSeconds: 0x55})
}

func TestIndexAndMemory(t *testing.T) {
	g := newRig(t)
	g.r.Write(0, []byte{0x80 | 0x40})
	if !g.r.NMIDisabled() {
		t.Fatal("NMI disable bit not recorded")
	}
	g.r.Write(1, []byte{0xAB})
	b := []byte{0}
	g.r.Read(0, b)
	if b[0] != 0xff {
		t.Fatalf("index port reads %#x, want 0xff", b[0])
	}
	if g.read(0x40) != 0xAB || g.r.NMIDisabled() {
		t.Fatal("CMOS byte 0x40 lost, or NMI still masked after index write without bit 7")
	}
	g.write(0x7F, 0x11)
	if g.read(0x7F) != 0x11 {
		t.Fatal("CMOS byte 0x7f")
	}
	// 16-bit write at the index port: index then data.
	g.r.Write(0, []byte{0x41, 0x77})
	if g.read(0x41) != 0x77 {
		t.Fatal("16-bit index/data write")
	}
	g.write(RegD, 0)
	if g.read(RegD) != DVRT {
		t.Fatal("register D must read VRT")
	}
}

func TestUIP(t *testing.T) {
	g := newRig(t)
	g.advance(time.Second - 100*time.Microsecond)
	if a := g.read(RegA); a != AUIP|0x26 {
		t.Fatalf("A = %#x just before the update, want UIP|0x26", a)
	}
	g.advance(200 * time.Microsecond)
	if a := g.read(RegA); a != 0x26 {
		t.Fatalf("A = %#x after the update", a)
	}
	g.write(RegA, 0xA6) // UIP is read-only
	if g.r.Save().CMOS[RegA] != 0x26 {
		t.Fatal("UIP written")
	}
}

func TestPeriodicInterrupt(t *testing.T) {
	g := newRig(t)
	g.write(RegA, 0x20|0x0F) // 2 Hz
	g.read(RegC)
	g.write(RegB, B24|BPIE)
	if g.line.level() || len(g.live()) != 1 {
		t.Fatalf("line %v timers %d after enabling PIE", g.line.level(), len(g.live()))
	}
	for i := 1; i <= 4; i++ {
		g.advance(500 * time.Millisecond)
		if !g.line.level() {
			t.Fatalf("interrupt %d did not fire", i)
		}
		if len(g.live()) != 0 {
			t.Fatal("timer armed while IRQF is set")
		}
		if c := g.read(RegC); c&(CIRQF|CPF) != CIRQF|CPF {
			t.Fatalf("C = %#x", c)
		}
		if g.line.level() {
			t.Fatal("reading C did not lower the line")
		}
		if c := g.read(RegC); c != 0 {
			t.Fatalf("C = %#x on second read", c)
		}
	}
	if g.line.rises() != 4 {
		t.Fatalf("%d interrupts, want 4", g.line.rises())
	}
	// Unacknowledged: one level, held.
	g.advance(2 * time.Second)
	if g.line.rises() != 5 || !g.line.level() {
		t.Fatalf("rises %d level %v", g.line.rises(), g.line.level())
	}
	// Disabling PIE drops IRQF (it is PF·PIE).
	g.write(RegB, B24)
	if g.line.level() {
		t.Fatal("line still high with every interrupt disabled")
	}
	if c := g.read(RegC); c != CPF|CUF {
		t.Fatalf("C = %#x, want PF|UF without IRQF", c)
	}
}

func TestPeriodicRates(t *testing.T) {
	for rs, hz := range map[byte]int{1: 256, 2: 128, 3: 8192, 6: 1024, 15: 2} {
		g := newRig(t)
		g.write(RegA, 0x20|rs)
		g.read(RegC)
		g.write(RegB, B24|BPIE)
		n := 0
		for i := 0; i < 2*hz; i++ {
			g.advance(time.Second / time.Duration(2*hz))
			if g.read(RegC)&CPF != 0 {
				n++
			}
		}
		// One second in half-periods: hz interrupts, +-1 for phase.
		if n < hz-1 || n > hz+1 {
			t.Errorf("RS=%d: %d interrupts in one second, want %d", rs, n, hz)
		}
	}
}

func TestFlagsWithoutInterrupts(t *testing.T) {
	g := newRig(t)
	g.advance(1500 * time.Millisecond)
	if c := g.read(RegC); c != CPF|CUF {
		t.Fatalf("C = %#x, want PF|UF", c)
	}
	if len(g.line.sets) != 0 || len(g.live()) != 0 {
		t.Fatalf("line %v timers %d with no interrupt enabled", g.line.sets, len(g.live()))
	}
	// Enabling an interrupt whose flag is pending raises IRQF at once.
	g.advance(time.Second)
	g.write(RegB, B24|BUIE)
	if !g.line.level() {
		t.Fatal("UIE with UF pending did not raise the line")
	}
}

func TestUpdateInterrupt(t *testing.T) {
	g := newRig(t)
	g.write(RegA, 0x20) // no periodic
	g.advance(300 * time.Millisecond)
	g.read(RegC)
	g.write(RegB, B24|BUIE)
	g.advance(699 * time.Millisecond)
	if g.line.level() {
		t.Fatal("update interrupt early")
	}
	g.advance(time.Millisecond)
	if !g.line.level() {
		t.Fatal("no update interrupt at the second")
	}
	if c := g.read(RegC); c != CIRQF|CUF {
		t.Fatalf("C = %#x", c)
	}
	g.wantTime(map[byte]byte{RegSeconds: 0x55})
	for i := 0; i < 3; i++ {
		g.advance(time.Second)
		g.read(RegC)
	}
	if g.line.rises() != 4 {
		t.Fatalf("%d update interrupts in 4 s", g.line.rises())
	}
}

func TestAlarm(t *testing.T) {
	g := newRig(t)
	g.write(RegA, 0x20)
	g.write(RegSecondsAlarm, 0x57)
	g.write(RegMinutesAlarm, 0x58)
	g.write(RegHoursAlarm, 0x09)
	g.write(RegB, B24|BAIE)
	g.advance(2 * time.Second) // 09:58:56
	if g.line.level() {
		t.Fatal("alarm early")
	}
	g.advance(time.Second) // 09:58:57
	if !g.line.level() {
		t.Fatal("alarm did not fire")
	}
	if c := g.read(RegC); c&(CIRQF|CAF) != CIRQF|CAF {
		t.Fatalf("C = %#x", c)
	}
	g.advance(time.Hour)
	if g.line.level() {
		t.Fatal("alarm fired again without matching")
	}
	// Don't-care hours and minutes: fires at the next :00 seconds.
	g.write(RegHoursAlarm, 0xC0)
	g.write(RegMinutesAlarm, 0xFF)
	g.write(RegSecondsAlarm, 0x00)
	g.read(RegC)
	g.advance(2 * time.Second) // 10:58:59
	if g.line.level() {
		t.Fatal("don't-care alarm early")
	}
	g.advance(time.Second)
	if !g.line.level() {
		t.Fatal("don't-care alarm did not fire")
	}
}

func TestAlarmFlagLazy(t *testing.T) {
	g := newRig(t)
	g.write(RegSecondsAlarm, 0x00)
	g.write(RegMinutesAlarm, 0x30)
	g.write(RegHoursAlarm, 0x11)
	g.read(RegC)
	g.advance(time.Hour) // 10:58:54: no match
	if c := g.read(RegC); c&CAF != 0 {
		t.Fatalf("C = %#x: alarm flag without a match", c)
	}
	g.advance(time.Hour) // passes 11:30:00
	if c := g.read(RegC); c&CAF == 0 || c&CIRQF != 0 {
		t.Fatalf("C = %#x: want AF without IRQF", c)
	}
	if len(g.live()) != 0 {
		t.Fatal("timers armed with no interrupt enabled")
	}
}

func TestClose(t *testing.T) {
	g := newRig(t)
	g.write(RegB, B24|BPIE)
	if len(g.live()) != 1 {
		t.Fatal("no timer armed")
	}
	if err := g.r.Close(); err != nil {
		t.Fatal(err)
	}
	if len(g.live()) != 0 {
		t.Fatal("Close left a timer armed")
	}
	g.read(RegC)
	if len(g.live()) != 0 {
		t.Fatal("timer armed after Close")
	}
}

// chanLine reports each level change on a channel.
type chanLine chan bool

func (c chanLine) Set(h bool) {
	select {
	case c <- h:
	default:
	}
}
func (c chanLine) Pulse() {}

func TestRealTimer(t *testing.T) {
	line := make(chanLine, 16)
	r := New(line, nil)
	defer r.Close()
	r.Write(0, []byte{RegA})
	r.Write(1, []byte{0x23}) // 8192 Hz
	r.Write(0, []byte{RegB})
	r.Write(1, []byte{B24 | BPIE})
	for i := 0; i < 3; i++ {
		select {
		case h := <-line:
			if !h {
				t.Fatal("line lowered before rising")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no periodic interrupt from the host timer")
		}
		r.Write(0, []byte{RegC})
		c := []byte{0}
		r.Read(1, c)
		if c[0]&CIRQF == 0 {
			t.Fatalf("C = %#x after the line rose", c[0])
		}
		if h := <-line; h {
			t.Fatal("reading C did not lower the line")
		}
	}
}

func TestSetMemorySize(t *testing.T) {
	g := newRig(t)
	u16 := func(i int) int { return int(g.read(byte(i))) | int(g.read(byte(i+1)))<<8 }
	u24 := func(i int) int { return u16(i) | int(g.read(byte(i+2)))<<16 }
	g.r.SetMemorySize(256<<20, 0)
	if u16(0x15) != 640 || u16(0x17) != 0xFFFF || u16(0x30) != 0xFFFF || u16(0x34) != (256-16)*16 || u24(0x5b) != 0 {
		t.Fatalf("256M: %d %#x %#x %#x %#x", u16(0x15), u16(0x17), u16(0x30), u16(0x34), u24(0x5b))
	}
	g.r.SetMemorySize(8<<20, 0)
	if u16(0x17) != 7*1024 || u16(0x34) != 0 {
		t.Fatalf("8M: %#x %#x", u16(0x17), u16(0x34))
	}
	g.r.SetMemorySize(3<<30, 2<<30)
	if u16(0x34) != (3072-16)*16 || u24(0x5b) != 2<<30>>16 {
		t.Fatalf("3G+2G: %#x %#x", u16(0x34), u24(0x5b))
	}
	var sum int
	for i := 0x10; i <= 0x2d; i++ {
		sum += int(g.read(byte(i)))
	}
	if int(g.read(0x2e))<<8|int(g.read(0x2f)) != sum {
		t.Fatal("CMOS checksum")
	}
}

func TestSaveRestore(t *testing.T) {
	g := newRig(t)
	g.write(RegYear, 0x31)
	g.write(0x50, 0x99)
	g.write(RegB, B24|BPIE|BDM)
	g.advance(10 * time.Millisecond) // PF -> IRQF
	if !g.line.level() {
		t.Fatal("setup: no interrupt")
	}
	g.r.Write(0, []byte{0x80 | 0x50})
	s := g.r.Save()
	j, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	if err := json.Unmarshal(j, &s2); err != nil {
		t.Fatal(err)
	}
	// Restore on a host whose clock is an hour later: the guest clock
	// follows the host clock at the saved offset.
	h := newRig(t)
	h.now = g.now.Add(time.Hour)
	if err := h.r.Restore(s2); err != nil {
		t.Fatal(err)
	}
	if !h.line.level() {
		t.Fatal("restored IRQF not driven on the line")
	}
	if !h.r.NMIDisabled() {
		t.Fatal("NMI mask lost")
	}
	b := []byte{0}
	h.r.Read(1, b) // index 0x50 was saved
	if b[0] != 0x99 {
		t.Fatalf("selected CMOS byte %#x", b[0])
	}
	h.wantTime(map[byte]byte{RegYear: 31, RegHours: 10, RegMinutes: 58, RegSeconds: 54})
	if h.read(RegC)&CIRQF == 0 || h.line.level() {
		t.Fatal("restored C / line")
	}

	// A held clock stays held across restore.
	g.write(RegB, B24|BSET)
	g.write(RegSeconds, 7)
	s3 := g.r.Save()
	k := newRig(t)
	k.now = g.now.Add(time.Hour)
	if err := k.r.Restore(s3); err != nil {
		t.Fatal(err)
	}
	k.advance(time.Minute)
	k.wantTime(map[byte]byte{RegSeconds: 0x07})

	bad := s2
	bad.CMOS = bad.CMOS[:64]
	if err := k.r.Restore(bad); err == nil {
		t.Fatal("Restore accepted 64 bytes of CMOS")
	}
}

func validBCD(b byte) bool { return b&0x0F <= 9 && b>>4 <= 9 }

func FuzzAccess(f *testing.F) {
	// Ops of 8 bytes: kind, offset, size, value (4), spare.
	f.Add([]byte{1, 0, 0, 0x0B, 0, 0, 0, 0, 1, 1, 0, 0x72, 0, 0, 0, 0, 2, 0, 0, 0x40, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0x8A, 0, 0, 0, 0, 1, 1, 0, 0x7F, 0, 0, 0, 0, 2, 0, 0, 0xff, 0xff, 0, 0, 0})
	f.Add([]byte{1, 0, 1, 0x09, 0x99, 0, 0, 0, 1, 0, 1, 0x32, 0x99, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		g := newRig(t)
		for len(ops) >= 8 {
			kind, off := ops[0]%3, uint64(ops[1]%2)
			size := []int{1, 2, 4}[int(ops[2])%3]
			val := make([]byte, 4)
			copy(val, ops[3:7])
			val = val[:size]
			ops = ops[8:]
			switch kind {
			case 0:
				g.r.Read(off, val)
				if off == 1 {
					g.r.mu.Lock()
					idx, bcd := g.r.index, !g.r.binary()
					g.r.mu.Unlock()
					switch idx {
					case RegSeconds, RegMinutes, RegWeekday, RegDayOfMonth, RegMonth, RegYear, RegCentury:
						if bcd && !validBCD(val[0]) {
							t.Fatalf("register %#x reads %#x in BCD mode", idx, val[0])
						}
					case RegD:
						if val[0] != DVRT {
							t.Fatalf("D = %#x", val[0])
						}
					}
				}
			case 1:
				g.r.Write(off, val)
			case 2:
				g.advance(time.Duration(binary.LittleEndian.Uint16(ops0(val))) * time.Millisecond)
			}
			g.r.mu.Lock()
			c, b := g.r.cmos[RegC], g.r.cmos[RegB]
			want := (c&CPF != 0 && b&BPIE != 0) || (c&CAF != 0 && b&BAIE != 0) || (c&CUF != 0 && b&BUIE != 0)
			irqf, level, idx, a := c&CIRQF != 0, g.r.level, g.r.index, g.r.cmos[RegA]
			g.r.mu.Unlock()
			if irqf != want || level != irqf || g.line.level() != level {
				t.Fatalf("C=%#x B=%#x: IRQF %v line %v/%v", c, b, irqf, level, g.line.level())
			}
			if c&0x0F != 0 || a&AUIP != 0 || idx >= CMOSSize || (b&BSET != 0 && b&BUIE != 0) {
				t.Fatalf("chip rules broken: A=%#x B=%#x C=%#x index=%#x", a, b, c, idx)
			}
			if n := len(g.live()); n > 1 || (irqf && n != 0) {
				t.Fatalf("%d timers armed with IRQF %v", n, irqf)
			}
		}
		s := g.r.Save()
		h := newRig(t)
		h.now = g.now
		if err := h.r.Restore(s); err != nil {
			t.Fatalf("restore of saved state: %v", err)
		}
		s2 := h.r.Save()
		if string(s2.CMOS) != string(s.CMOS) || s2.Offset != s.Offset || !s2.Frozen.Equal(s.Frozen) {
			t.Fatalf("save/restore round trip differs:\n%+v\n%+v", s, s2)
		}
	})
}

func ops0(v []byte) []byte {
	b := make([]byte, 2)
	copy(b, v)
	return b
}
