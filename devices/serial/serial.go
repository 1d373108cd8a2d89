// Package serial is a 16550A UART, the PC's COM1 (port 0x3f8, IRQ4). It is
// the console of every guest govmm runs: Linux's 8250 driver must detect
// it as a 16550A and drive it by interrupt, and bare-metal test guests
// poll it or take its interrupts. The chip is modelled at the register
// level (divisor latch, FIFOs, interrupt identification and priorities,
// loopback, modem status) but with an infinitely fast line: a transmitted
// byte leaves at once, so THRE and TEMT are always set.
//
// Host input (stdin) goes through Input into a 16-byte receive FIFO; what
// does not fit waits in a bounded buffer and flows in as the guest drains
// the FIFO, so typing faster than the guest reads loses nothing until that
// buffer is full. Output is handed to a goroutine that writes it to the
// host writer, so a slow terminal never stalls a vCPU for long; Flush
// waits until it is all written.
package serial

import (
	"fmt"
	"io"
	"sync"

	"govmm/irq"
)

// Size is the port range the UART claims (register at platform.PortCOM1).
const Size = 8

// Register offsets.
const (
	RegData = 0 // RBR (read), THR (write); DLL when LCR.DLAB
	RegIER  = 1 // IER; DLM when LCR.DLAB
	RegIIR  = 2 // IIR (read), FCR (write)
	RegLCR  = 3
	RegMCR  = 4
	RegLSR  = 5
	RegMSR  = 6
	RegSCR  = 7
)

// IER bits.
const (
	IERRDI  = 0x01 // received data available (and character timeout)
	IERTHRI = 0x02 // transmitter holding register empty
	IERRLSI = 0x04 // receiver line status
	IERMSI  = 0x08 // modem status
)

// IIR values (bits 3:1 identify the source; bit 0 set means none).
const (
	IIRNone    = 0x01
	IIRMSI     = 0x00
	IIRTHRI    = 0x02
	IIRRDI     = 0x04
	IIRRLSI    = 0x06
	IIRTimeout = 0x0C
	IIRFIFO    = 0xC0 // both bits set while the FIFOs are enabled
)

// FCR bits.
const (
	FCREnable  = 0x01
	FCRClearRX = 0x02
	FCRClearTX = 0x04
	FCRDMA     = 0x08
	FCRTrigger = 0xC0
)

// LCR and MCR bits.
const (
	LCRDLAB     = 0x80
	MCRDTR      = 0x01
	MCRRTS      = 0x02
	MCROUT1     = 0x04
	MCROUT2     = 0x08
	MCRLoop     = 0x10
	mcrWritable = 0x1F
)

// LSR bits.
const (
	LSRDR     = 0x01
	LSROE     = 0x02
	LSRPE     = 0x04
	LSRFE     = 0x08
	LSRBI     = 0x10
	LSRTHRE   = 0x20
	LSRTEMT   = 0x40
	LSRFIFOE  = 0x80
	lsrErrors = LSROE | LSRPE | LSRFE | LSRBI
)

// MSR bits.
const (
	MSRDCTS  = 0x01
	MSRDDSR  = 0x02
	MSRTERI  = 0x04
	MSRDDCD  = 0x08
	MSRCTS   = 0x10
	MSRDSR   = 0x20
	MSRRI    = 0x40
	MSRDCD   = 0x80
	msrDelta = 0x0F
	// msrIdle is what the modem lines read when not in loopback: a
	// terminal is attached and ready (CTS, DSR and DCD asserted).
	msrIdle = MSRCTS | MSRDSR | MSRDCD
)

const (
	// FIFOSize is the depth of the receive FIFO.
	FIFOSize = 16
	// InputBufferSize bounds host input waiting for room in the FIFO.
	InputBufferSize = 64 << 10
	// outputBufferMax bounds output not yet written to the host; a vCPU
	// that transmits beyond it waits for the writer (flow control).
	outputBufferMax = 1 << 20
)

var triggerLevels = [4]int{1, 4, 8, 14}

// UART is one 16550A. All methods are safe for concurrent use (the vCPU
// thread and the stdin goroutine both call in).
type UART struct {
	line irq.Line
	tx   *txQueue

	mu    sync.Mutex
	s     State
	level bool // last level driven on line (it starts low)
}

// State is the UART's snapshot state. Output not yet written to the host
// is not part of it: call Flush before saving.
type State struct {
	DLL uint8 `json:"dll"`
	DLM uint8 `json:"dlm"`
	IER uint8 `json:"ier"`
	// FCR is the last FIFO control value in effect (enable, DMA mode and
	// trigger bits; the self-clearing reset bits are not kept).
	FCR uint8 `json:"fcr"`
	LCR uint8 `json:"lcr"`
	MCR uint8 `json:"mcr"`
	// LSR keeps the sticky error bits (OE, PE, FE, BI); the others are
	// derived from the FIFO.
	LSR uint8 `json:"lsr"`
	MSR uint8 `json:"msr"`
	SCR uint8 `json:"scr"`
	// THRIPending is the transmitter-empty interrupt latch: set when THR
	// empties or THRI is enabled, cleared by writing THR or by reading
	// IIR while it is the reported source.
	THRIPending bool `json:"thri_pending"`
	// RX is the receive FIFO, oldest first (at most FIFOSize bytes, one
	// when the FIFOs are disabled).
	RX []byte `json:"rx"`
	// Input is host input waiting for room in RX.
	Input []byte `json:"input"`
	// Dropped counts host input bytes lost because Input was full.
	Dropped uint64 `json:"dropped"`
	// Overruns counts bytes lost to a full FIFO in loopback mode.
	Overruns uint64 `json:"overruns"`
}

// New returns a UART in its reset state. Transmitted bytes are written to
// out (nil discards them) from a separate goroutine; line is the
// interrupt output (nil means not connected). The line is driven as a
// level: high while an enabled interrupt is pending. Like QEMU's model,
// the output is not gated by MCR.OUT2. line.Set is called with the UART's
// lock held (so levels arrive in order): it must not call back into the
// UART.
func New(out io.Writer, line irq.Line) *UART {
	if line == nil {
		line = irq.NoLine{}
	}
	return &UART{
		line: line,
		tx:   newTxQueue(out),
		s:    State{MSR: msrIdle, DLL: 0x0C}, // 9600 baud, as firmware leaves it
	}
}

// Read handles a guest read at offset in the 8-port range. A multi-byte
// access is split into byte accesses to consecutive registers, as the
// 8-bit ISA bus does.
func (u *UART) Read(offset uint64, data []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		off := offset + uint64(i)
		if off >= Size {
			data[i] = 0xff
			continue
		}
		data[i] = u.readReg(int(off))
	}
	u.updateIRQ()
}

// Write handles a guest write at offset (split into byte accesses).
func (u *UART) Write(offset uint64, data []byte) {
	var out []byte
	u.mu.Lock()
	for i, b := range data {
		off := offset + uint64(i)
		if off >= Size {
			continue
		}
		if c, ok := u.writeReg(int(off), b); ok {
			out = append(out, c)
		}
	}
	u.updateIRQ()
	u.mu.Unlock()
	// Hand output over outside the register lock: if the host writer
	// is far behind this may wait, and stdin input must still get in.
	if len(out) > 0 {
		u.tx.put(out)
	}
}

func (u *UART) dlab() bool        { return u.s.LCR&LCRDLAB != 0 }
func (u *UART) fifoEnabled() bool { return u.s.FCR&FCREnable != 0 }
func (u *UART) loopback() bool    { return u.s.MCR&MCRLoop != 0 }

func (u *UART) rxCapacity() int {
	if u.fifoEnabled() {
		return FIFOSize
	}
	return 1
}

func (u *UART) readReg(off int) uint8 {
	switch off {
	case RegData:
		if u.dlab() {
			return u.s.DLL
		}
		if len(u.s.RX) == 0 {
			return 0
		}
		b := u.s.RX[0]
		u.s.RX = append(u.s.RX[:0], u.s.RX[1:]...)
		u.refill()
		return b
	case RegIER:
		if u.dlab() {
			return u.s.DLM
		}
		return u.s.IER
	case RegIIR:
		iir := u.iir()
		if iir == IIRTHRI {
			// Reading IIR while THRE is the source acknowledges it.
			u.s.THRIPending = false
		}
		if u.fifoEnabled() {
			iir |= IIRFIFO
		}
		return iir
	case RegLCR:
		return u.s.LCR
	case RegMCR:
		return u.s.MCR
	case RegLSR:
		lsr := u.lsr()
		u.s.LSR &^= lsrErrors // error bits clear on read
		return lsr
	case RegMSR:
		msr := u.s.MSR
		u.s.MSR &^= msrDelta // delta bits clear on read
		return msr
	default: // RegSCR
		return u.s.SCR
	}
}

// writeReg applies a register write; it returns a byte to transmit to the
// host when the write is a THR write outside loopback.
func (u *UART) writeReg(off int, v uint8) (uint8, bool) {
	switch off {
	case RegData:
		if u.dlab() {
			u.s.DLL = v
			return 0, false
		}
		// The line is infinitely fast: THR empties at once, so the
		// THRE interrupt is (re)armed right after the write cleared it.
		u.s.THRIPending = true
		if u.loopback() {
			u.receive(v)
			return 0, false
		}
		return v, true
	case RegIER:
		if u.dlab() {
			u.s.DLM = v
			return 0, false
		}
		old := u.s.IER
		u.s.IER = v & 0x0F
		if u.s.IER&IERTHRI != 0 && old&IERTHRI == 0 {
			// Enabling THRI with THR empty raises the interrupt, as
			// the chip does (Linux's 8250 driver relies on this).
			u.s.THRIPending = true
		}
	case RegIIR:
		u.writeFCR(v)
	case RegLCR:
		u.s.LCR = v
	case RegMCR:
		u.s.MCR = v & mcrWritable
		u.updateMSR()
		u.refill()
	case RegLSR, RegMSR:
		// Factory test registers on the real chip; writes are ignored.
	default: // RegSCR
		u.s.SCR = v
	}
	return 0, false
}

func (u *UART) writeFCR(v uint8) {
	old := u.s.FCR
	if (v^old)&FCREnable != 0 {
		// Switching between 16450 and FIFO mode empties the FIFOs.
		u.s.RX = u.s.RX[:0]
	}
	if v&FCREnable == 0 {
		u.s.FCR = 0
		u.refill()
		return
	}
	if v&FCRClearRX != 0 {
		u.s.RX = u.s.RX[:0]
	}
	// FCRClearTX: the transmit FIFO is always empty.
	u.s.FCR = v &^ (FCRClearRX | FCRClearTX)
	u.refill()
}

// updateMSR recomputes the modem status lines from MCR (loopback) or the
// idle terminal, setting delta bits for every change.
func (u *UART) updateMSR() {
	var lines uint8 = msrIdle
	if u.loopback() {
		lines = 0
		if u.s.MCR&MCRRTS != 0 {
			lines |= MSRCTS
		}
		if u.s.MCR&MCRDTR != 0 {
			lines |= MSRDSR
		}
		if u.s.MCR&MCROUT1 != 0 {
			lines |= MSRRI
		}
		if u.s.MCR&MCROUT2 != 0 {
			lines |= MSRDCD
		}
	}
	old := u.s.MSR
	changed := (old ^ lines) & 0xF0
	delta := old & msrDelta
	if changed&MSRCTS != 0 {
		delta |= MSRDCTS
	}
	if changed&MSRDSR != 0 {
		delta |= MSRDDSR
	}
	if changed&MSRRI != 0 && lines&MSRRI == 0 {
		delta |= MSRTERI // trailing edge of ring indicator only
	}
	if changed&MSRDCD != 0 {
		delta |= MSRDDCD
	}
	u.s.MSR = lines | delta
}

// receive puts one byte into the receive FIFO, as the wire would (used for
// loopback); a full FIFO overruns.
func (u *UART) receive(b uint8) {
	if len(u.s.RX) >= u.rxCapacity() {
		u.s.LSR |= LSROE
		u.s.Overruns++
		return
	}
	u.s.RX = append(u.s.RX, b)
}

// refill moves waiting host input into the FIFO while it has room. In
// loopback the receiver is cut off from the line, so input waits.
func (u *UART) refill() {
	if u.loopback() {
		return
	}
	n := u.rxCapacity() - len(u.s.RX)
	if n <= 0 || len(u.s.Input) == 0 {
		return
	}
	if n > len(u.s.Input) {
		n = len(u.s.Input)
	}
	u.s.RX = append(u.s.RX, u.s.Input[:n]...)
	u.s.Input = append(u.s.Input[:0], u.s.Input[n:]...)
}

func (u *UART) lsr() uint8 {
	lsr := u.s.LSR&lsrErrors | LSRTHRE | LSRTEMT
	if len(u.s.RX) > 0 {
		lsr |= LSRDR
	}
	return lsr
}

// iir returns the highest-priority enabled pending interrupt (without the
// FIFO bits): line status > received data / timeout > THRE > modem status.
func (u *UART) iir() uint8 {
	ier := u.s.IER
	if ier&IERRLSI != 0 && u.s.LSR&lsrErrors != 0 {
		return IIRRLSI
	}
	if ier&IERRDI != 0 && len(u.s.RX) > 0 {
		if !u.fifoEnabled() || len(u.s.RX) >= triggerLevels[u.s.FCR>>6] {
			return IIRRDI
		}
		// Fewer bytes than the trigger level and nothing more arriving
		// (a waiting byte would already be in the FIFO): the character
		// timeout. The line is infinitely fast, so the four character
		// times of silence have already passed.
		return IIRTimeout
	}
	if ier&IERTHRI != 0 && u.s.THRIPending {
		return IIRTHRI
	}
	if ier&IERMSI != 0 && u.s.MSR&msrDelta != 0 {
		return IIRMSI
	}
	return IIRNone
}

// updateIRQ drives the interrupt line to match the pending state. It runs
// under u.mu so that level changes reach the line in order.
func (u *UART) updateIRQ() {
	level := u.iir() != IIRNone
	if level != u.level {
		u.level = level
		u.line.Set(level)
	}
}

// Input queues host input for the guest. Bytes beyond InputBufferSize
// waiting are dropped and counted.
func (u *UART) Input(p []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	room := InputBufferSize - len(u.s.Input)
	if room < 0 {
		room = 0
	}
	if len(p) > room {
		u.s.Dropped += uint64(len(p) - room)
		p = p[:room]
	}
	u.s.Input = append(u.s.Input, p...)
	u.refill()
	u.updateIRQ()
}

// Dropped returns how many host input bytes were lost to a full buffer.
func (u *UART) Dropped() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.s.Dropped
}

// Flush waits until all output transmitted so far has been written to the
// host writer and returns the first write error, if any.
func (u *UART) Flush() error { return u.tx.flush() }

// Save returns the UART state.
func (u *UART) Save() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.s
	s.RX = append([]byte{}, u.s.RX...)
	s.Input = append([]byte{}, u.s.Input...)
	return s
}

// Restore sets the UART state and drives the interrupt line to match it.
func (u *UART) Restore(s State) error {
	capacity := 1
	if s.FCR&FCREnable != 0 {
		capacity = FIFOSize
	}
	if len(s.RX) > capacity {
		return fmt.Errorf("serial: restore: %d bytes in the receive FIFO, at most %d with FCR %#x", len(s.RX), capacity, s.FCR)
	}
	if len(s.Input) > InputBufferSize {
		return fmt.Errorf("serial: restore: %d bytes of waiting input, at most %d", len(s.Input), InputBufferSize)
	}
	s.IER &= 0x0F
	s.MCR &= mcrWritable
	s.LSR &= lsrErrors
	s.FCR &^= FCRClearRX | FCRClearTX
	if s.FCR&FCREnable == 0 {
		s.FCR = 0
	}
	s.RX = append([]byte{}, s.RX...)
	s.Input = append([]byte{}, s.Input...)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.s = s
	u.refill()
	// Drive the line whatever it was before, so that the interrupt
	// controller sees the restored level.
	u.level = u.iir() != IIRNone
	u.line.Set(u.level)
	return nil
}

// txQueue decouples the vCPU from the host writer: put appends to a
// buffer and a goroutine, started on demand and exiting when the buffer is
// empty, writes it out.
type txQueue struct {
	out io.Writer

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	running bool
	err     error
}

func newTxQueue(out io.Writer) *txQueue {
	q := &txQueue{out: out}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *txQueue) put(p []byte) {
	if q.out == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.buf) >= outputBufferMax && q.err == nil {
		q.cond.Wait()
	}
	if q.err != nil {
		return // the writer failed; Flush reports it
	}
	q.buf = append(q.buf, p...)
	if !q.running {
		q.running = true
		go q.run()
	}
}

func (q *txQueue) run() {
	var chunk []byte
	q.mu.Lock()
	for len(q.buf) > 0 && q.err == nil {
		chunk, q.buf = q.buf, chunk[:0]
		q.cond.Broadcast() // room for blocked writers
		q.mu.Unlock()
		_, err := q.out.Write(chunk)
		q.mu.Lock()
		if err != nil {
			q.err = fmt.Errorf("serial: write console output: %w", err)
			q.buf = nil
		}
	}
	q.running = false
	q.cond.Broadcast()
	q.mu.Unlock()
}

func (q *txQueue) flush() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.running || (len(q.buf) > 0 && q.err == nil) {
		q.cond.Wait()
	}
	return q.err
}
