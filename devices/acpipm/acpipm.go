// Package acpipm emulates the fixed ACPI power-management hardware the FADT
// points at: the PM1a event block (PM1_STS, PM1_EN), the PM1a control
// block (SCI_EN, SLP_TYP/SLP_EN), the 24-bit ACPI PM timer at 3.579545 MHz
// and the reset register at port 0xCF9.
//
// The PM timer is computed from the host's monotonic clock, so guests that
// calibrate against it (Linux, the irq and probe test guests) measure real
// time. Entering S5 (SLP_TYP = SlpTypS5 with SLP_EN) powers the VM off;
// writing 0x06 or 0x0E to 0xCF9 resets it. The SCI (ISA IRQ9, level,
// active high as the MADT says) is raised while an enabled status bit is
// set: the timer-overflow event (TMR_STS, every 2^23 ticks) and the power
// button (PowerButton).
//
// The GPE0 block (GPE0Port, GPE0BlockLen bytes: status then enable) carries
// the general-purpose events the DSDT's \_GPE methods serve: RaiseGPE sets
// a status bit, and the SCI is raised while an enabled GPE or PM1 status
// bit is set. PCI hotplug (package pcihp) is GPE 1.
package acpipm

import (
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"time"

	"govmm/devices/bus"
	"govmm/irq"
)

// TimerFreq is the PM timer frequency in Hz.
const TimerFreq = 3579545

// Register offsets within the block at platform.PortACPIPM.
const (
	OffPM1Sts = 0
	OffPM1En  = 2
	OffPM1Cnt = 4
	OffPMTmr  = 8
	// BlockSize is how much of the port range the device decodes.
	BlockSize = 12
)

// PM1 status/enable bits.
const (
	TmrSts    = 1 << 0
	BMSts     = 1 << 4
	GblSts    = 1 << 5
	PwrBtnSts = 1 << 8
	SlpBtnSts = 1 << 9
	RTCSts    = 1 << 10
	WakSts    = 1 << 15
	// enMask are the enable bits that exist.
	enMask = TmrSts | GblSts | PwrBtnSts | SlpBtnSts | RTCSts
)

// PM1 control bits.
const (
	SCIEn       = 1 << 0
	SlpTypShift = 10
	SlpTypMask  = 7 << SlpTypShift
	SlpEn       = 1 << 13
	cntWritable = SCIEn | 1<<1 | SlpTypMask
)

// SlpTypS5 is the SLP_TYP value of soft-off; the DSDT's \_S5 package
// carries it (see package acpi).
const SlpTypS5 = 5

// ResetValue is the FADT reset register value (0x0E, a full reset, is
// accepted too).
const ResetValue = 0x06

// The GPE0 block: GPE0BlockLen bytes at the port the FADT names
// (platform.PortGPE0), the status half then the enable half.
const (
	GPE0BlockLen = 4
	gpeHalf      = GPE0BlockLen / 2
	// NumGPEs is how many general-purpose events the block has.
	NumGPEs = 8 * gpeHalf
)

// State is the PM block's saved state.
type State struct {
	Sts uint16 `json:"sts"` // without TMR_STS, which derives from the timer
	En  uint16 `json:"en"`
	Cnt uint16 `json:"cnt"`
	// Ticks is the full PM timer count (the register is its low 24 bits).
	Ticks uint64 `json:"ticks"`
	// TmrAcked is the number of timer-MSB toggles the guest has
	// acknowledged by clearing TMR_STS.
	TmrAcked uint64 `json:"tmr_acked"`
	Reset    uint8  `json:"reset"` // last value written to 0xCF9
	// GPESts and GPEEn are the GPE0 block's status and enable bits
	// (snapshots from before the block have neither: all clear).
	GPESts uint16 `json:"gpe_sts,omitempty"`
	GPEEn  uint16 `json:"gpe_en,omitempty"`
}

// PM is the ACPI PM1a/PM-timer block; it implements bus.Device for the
// port range at platform.PortACPIPM.
type PM struct {
	sci        irq.Line
	onPowerOff func()
	onReset    func()
	clock      func() int64
	log        *slog.Logger

	mu     sync.Mutex
	s      State
	origin int64 // clock value at which Ticks was 0
	level  bool  // SCI output
	t      *time.Timer
	closed bool
}

// New returns the PM block. sci is ISA IRQ9; onPowerOff and onReset are
// called (outside the device's lock, on the vCPU thread that wrote the
// register) when the guest enters S5 or writes the reset register.
func New(sci irq.Line, onPowerOff, onReset func()) *PM {
	start := time.Now()
	return newPM(sci, onPowerOff, onReset, func() int64 { return int64(time.Since(start)) })
}

func newPM(sci irq.Line, onPowerOff, onReset func(), clock func() int64) *PM {
	if sci == nil {
		sci = irq.NoLine{}
	}
	nop := func() {}
	if onPowerOff == nil {
		onPowerOff = nop
	}
	if onReset == nil {
		onReset = nop
	}
	p := &PM{sci: sci, onPowerOff: onPowerOff, onReset: onReset, clock: clock, log: slog.Default()}
	p.origin = clock()
	// No SMI_CMD in the FADT: the machine is always in ACPI mode.
	p.s.Cnt = SCIEn
	return p
}

// SetLogger sets where unsupported requests are reported.
func (p *PM) SetLogger(l *slog.Logger) { p.log = l }

func (p *PM) ticks(now int64) uint64 {
	if now <= p.origin {
		return 0
	}
	hi, lo := bits.Mul64(uint64(now-p.origin), TimerFreq)
	q, _ := bits.Div64(hi%1e9, lo, 1e9)
	return q
}

// toggles is how many times the timer's bit 23 changed.
func (p *PM) toggles(now int64) uint64 { return p.ticks(now) >> 23 }

func (p *PM) sts(now int64) uint16 {
	s := p.s.Sts
	if p.toggles(now) != p.s.TmrAcked {
		s |= TmrSts
	}
	return s
}

// update recomputes the SCI level and the overflow timer. Called with mu
// held; returns the level to drive if it changed.
func (p *PM) update(now int64) (change, level bool) {
	level = p.sts(now)&p.s.En&enMask != 0 || p.s.GPESts&p.s.GPEEn != 0
	p.armTimer(now)
	if level == p.level {
		return false, level
	}
	p.level = level
	return true, level
}

func (p *PM) armTimer(now int64) {
	if p.closed || p.s.En&TmrSts == 0 || p.sts(now)&TmrSts != 0 {
		if p.t != nil {
			p.t.Stop()
		}
		return
	}
	next := (p.toggles(now) + 1) << 23
	hi, lo := bits.Mul64(next, 1e9)
	ns, _ := bits.Div64(hi%TimerFreq, lo, TimerFreq)
	d := time.Duration(int64(ns)+p.origin-now) + time.Microsecond
	if p.t == nil {
		p.t = time.AfterFunc(d, p.timerFired)
	} else {
		p.t.Reset(d)
	}
}

func (p *PM) timerFired() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	change, level := p.update(p.clock())
	p.mu.Unlock()
	if change {
		p.sci.Set(level)
	}
}

// PowerButton presses the power button: PWRBTN_STS is set and, if the
// guest enabled it, the SCI raised.
func (p *PM) PowerButton() {
	p.mu.Lock()
	p.s.Sts |= PwrBtnSts
	change, level := p.update(p.clock())
	p.mu.Unlock()
	if change {
		p.sci.Set(level)
	}
}

func (p *PM) reg(off uint64, now int64) (uint32, int) {
	switch off {
	case OffPM1Sts, OffPM1Sts + 1:
		return uint32(p.sts(now)), OffPM1Sts
	case OffPM1En, OffPM1En + 1:
		return uint32(p.s.En), OffPM1En
	case OffPM1Cnt, OffPM1Cnt + 1:
		return uint32(p.s.Cnt), OffPM1Cnt
	case OffPMTmr, OffPMTmr + 1, OffPMTmr + 2, OffPMTmr + 3:
		return uint32(p.ticks(now) & 0xffffff), OffPMTmr
	}
	return 0, int(off)
}

// Read implements bus.Device.
func (p *PM) Read(offset uint64, data []byte) {
	p.mu.Lock()
	now := p.clock()
	for i := range data {
		off := offset + uint64(i)
		v, base := p.reg(off, now)
		data[i] = byte(v >> (8 * (int(off) - base)))
	}
	p.mu.Unlock()
}

// Write implements bus.Device. PM1_STS bits are write-one-to-clear;
// the PM timer is read-only.
func (p *PM) Write(offset uint64, data []byte) {
	p.mu.Lock()
	now := p.clock()
	var cntWritten bool
	for i, b := range data {
		off := offset + uint64(i)
		if off >= BlockSize {
			break
		}
		shift := 8 * (off & 1)
		v := uint16(b) << shift
		switch off &^ 1 {
		case OffPM1Sts:
			if v&TmrSts != 0 {
				p.s.TmrAcked = p.toggles(now)
			}
			p.s.Sts &^= v
		case OffPM1En:
			p.s.En = (p.s.En&^(0xff<<shift) | v) & enMask
		case OffPM1Cnt:
			p.s.Cnt = p.s.Cnt&^(0xff<<shift) | v
			cntWritten = true
		}
	}
	sleep := false
	var typ uint16
	if cntWritten {
		sleep = p.s.Cnt&SlpEn != 0
		typ = p.s.Cnt & SlpTypMask >> SlpTypShift
		p.s.Cnt &= cntWritable
		if sleep {
			p.s.Sts |= WakSts
		}
	}
	change, level := p.update(now)
	p.mu.Unlock()
	if change {
		p.sci.Set(level)
	}
	if sleep {
		if typ == SlpTypS5 {
			p.onPowerOff()
		} else {
			p.log.Warn("acpi: guest asked for a sleep state govmm does not implement; ignored (only S5 is supported)", "slp_typ", typ)
		}
	}
}

type resetDev struct{ p *PM }

func (d resetDev) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) > 0 && offset == 0 {
		d.p.mu.Lock()
		data[0] = d.p.s.Reset
		d.p.mu.Unlock()
	}
}

func (d resetDev) Write(offset uint64, data []byte) {
	if len(data) == 0 || offset != 0 {
		return
	}
	v := data[0]
	d.p.mu.Lock()
	d.p.s.Reset = v & 0x0e
	d.p.mu.Unlock()
	if v == 0x06 || v == 0x0e {
		d.p.onReset()
	}
}

// RaiseGPE sets GPE status bit n (0..NumGPEs-1): the SCI is raised if
// the guest enabled that GPE, and once it does otherwise.
func (p *PM) RaiseGPE(n int) {
	if n < 0 || n >= NumGPEs {
		panic(fmt.Sprintf("acpipm: GPE %d out of range", n))
	}
	p.mu.Lock()
	p.s.GPESts |= 1 << n
	change, level := p.update(p.clock())
	p.mu.Unlock()
	if change {
		p.sci.Set(level)
	}
}

type gpeDev struct{ p *PM }

// Read returns the status half (offsets 0..1) and the enable half
// (2..3), a byte at a time.
func (d gpeDev) Read(offset uint64, data []byte) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	for i := range data {
		off := offset + uint64(i)
		switch {
		case off < gpeHalf:
			data[i] = byte(d.p.s.GPESts >> (8 * off))
		case off < GPE0BlockLen:
			data[i] = byte(d.p.s.GPEEn >> (8 * (off - gpeHalf)))
		default:
			data[i] = 0
		}
	}
}

// Write clears the status bits written as one and sets the enable bits.
func (d gpeDev) Write(offset uint64, data []byte) {
	p := d.p
	p.mu.Lock()
	for i, b := range data {
		off := offset + uint64(i)
		switch {
		case off < gpeHalf:
			p.s.GPESts &^= uint16(b) << (8 * off)
		case off < GPE0BlockLen:
			sh := 8 * (off - gpeHalf)
			p.s.GPEEn = p.s.GPEEn&^(0xff<<sh) | uint16(b)<<sh
		}
	}
	change, level := p.update(p.clock())
	p.mu.Unlock()
	if change {
		p.sci.Set(level)
	}
}

// GPEBlock is the GPE0 block's registers (GPE0BlockLen ports).
func (p *PM) GPEBlock() bus.Device { return gpeDev{p} }

// ResetPort is the reset control register (port 0xCF9, 1 byte).
func (p *PM) ResetPort() bus.Device { return resetDev{p} }

// Close stops the timer-overflow event timer.
func (p *PM) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.t != nil {
		p.t.Stop()
	}
	return nil
}

// Save returns the block's state.
func (p *PM) Save() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.s
	s.Ticks = p.ticks(p.clock())
	return s
}

// Restore loads a saved state; the PM timer continues from the saved count.
func (p *PM) Restore(s State) error {
	if s.En&^enMask != 0 || s.Cnt&^cntWritable != 0 || s.Sts&TmrSts != 0 {
		return fmt.Errorf("acpipm restore: reserved bits set (sts %#x en %#x cnt %#x)", s.Sts, s.En, s.Cnt)
	}
	if s.TmrAcked > s.Ticks>>23 {
		return fmt.Errorf("acpipm restore: %d timer overflows acknowledged but only %d happened", s.TmrAcked, s.Ticks>>23)
	}
	p.mu.Lock()
	now := p.clock()
	hi, lo := bits.Mul64(s.Ticks, 1e9)
	ns, _ := bits.Div64(hi%TimerFreq, lo, TimerFreq)
	p.origin = now - int64(ns)
	// Round so that ticks(now) == s.Ticks exactly.
	for p.ticks(now) < s.Ticks {
		p.origin--
	}
	p.s = s
	p.level = false
	change, level := p.update(now)
	p.mu.Unlock()
	if change {
		p.sci.Set(level)
	}
	return nil
}
