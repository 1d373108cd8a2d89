// Package pl011 is the Arm PrimeCell UART (PL011), the console of an arm64
// guest (Linux's ttyAMA0, earlycon=pl011). It is the arm64 counterpart of
// devices/serial's 16550A: output goes to the host as soon as the guest
// writes it (the transmit FIFO never fills), host input waits in a bounded
// receive buffer, and one level-triggered interrupt line reports what the
// guest unmasked.
package pl011

import (
	"io"
	"sync"

	"govmm/irq"
)

// Size is the register window (4 KiB, the AMBA peripheral ID included).
const Size = 0x1000

// Register offsets.
const (
	regDR    = 0x000
	regRSR   = 0x004
	regFR    = 0x018
	regILPR  = 0x020
	regIBRD  = 0x024
	regFBRD  = 0x028
	regLCRH  = 0x02c
	regCR    = 0x030
	regIFLS  = 0x034
	regIMSC  = 0x038
	regRIS   = 0x03c
	regMIS   = 0x040
	regICR   = 0x044
	regDMACR = 0x048
	regID    = 0xfe0 // PeriphID0..3, PCellID0..3: one byte per word
)

// Flag register bits.
const (
	frCTS  = 1 << 0
	frBUSY = 1 << 3
	frRXFE = 1 << 4
	frTXFF = 1 << 5
	frRXFF = 1 << 6
	frTXFE = 1 << 7
)

// Interrupt bits (RIS, MIS, IMSC, ICR).
const (
	IntRX   = 1 << 4
	IntTX   = 1 << 5
	IntRT   = 1 << 6
	intMask = 0x7ff
)

// id is what the ID registers read: part 0x011 (PL011), designer 0x41
// (Arm), revision r1p5, and the PrimeCell ID 0xb105f00d. Linux's AMBA bus
// matches the driver on it.
var id = [8]byte{0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1}

// fifoDepth is the depth of the hardware receive FIFO: FR.RXFF is set at
// this level. Input beyond it waits in the host buffer.
const fifoDepth = 32

// InputBufferSize bounds host input not yet read by the guest.
const InputBufferSize = 64 << 10

// UART is one PL011. Methods are safe for concurrent use (vCPU threads and
// the host input goroutine).
type UART struct {
	out  io.Writer
	line irq.Line

	mu                     sync.Mutex
	rx                     []byte
	ris, imsc              uint32
	ibrd, fbrd, lcrh, ifls uint32
	cr, dmacr, ilpr        uint32
	level                  bool
	outErr                 error
}

// New returns a UART writing the guest's output to out and raising line.
func New(out io.Writer, line irq.Line) *UART {
	if line == nil {
		line = irq.NoLine{}
	}
	// Reset values (PL011 TRM 3.3): UART and both directions enabled
	// the way firmware leaves them, interrupt FIFO levels at half.
	return &UART{out: out, line: line, cr: 0x300, ifls: 0x12, ris: IntTX}
}

// update drives the line from the masked status; the caller holds mu.
func (u *UART) update() {
	if u.rx != nil && len(u.rx) > 0 {
		u.ris |= IntRX | IntRT
	} else {
		u.ris &^= IntRX | IntRT
	}
	lvl := u.ris&u.imsc != 0
	if lvl != u.level {
		u.level = lvl
		u.line.Set(lvl)
	}
}

// Receive queues host input for the guest; input beyond InputBufferSize
// is dropped (as a real UART overruns). It returns how much was queued.
func (u *UART) Receive(b []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := min(len(b), InputBufferSize-len(u.rx))
	u.rx = append(u.rx, b[:n]...)
	u.update()
	return n
}

// OutputError is the first error writing the guest's output, if any.
func (u *UART) OutputError() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.outErr
}

func (u *UART) read32(off uint64) uint32 {
	switch off {
	case regDR:
		if len(u.rx) == 0 {
			return 0
		}
		c := u.rx[0]
		u.rx = u.rx[1:]
		if len(u.rx) == 0 {
			u.rx = nil
		}
		u.update()
		return uint32(c)
	case regRSR:
		return 0
	case regFR:
		fr := uint32(frTXFE | frCTS)
		if len(u.rx) == 0 {
			fr |= frRXFE
		} else if len(u.rx) >= fifoDepth {
			fr |= frRXFF
		}
		return fr
	case regILPR:
		return u.ilpr
	case regIBRD:
		return u.ibrd
	case regFBRD:
		return u.fbrd
	case regLCRH:
		return u.lcrh
	case regCR:
		return u.cr
	case regIFLS:
		return u.ifls
	case regIMSC:
		return u.imsc
	case regRIS:
		return u.ris
	case regMIS:
		return u.ris & u.imsc
	case regDMACR:
		return u.dmacr
	}
	if off >= regID && off < regID+32 && off%4 == 0 {
		return uint32(id[(off-regID)/4])
	}
	return 0
}

func (u *UART) write32(off uint64, v uint32) {
	switch off {
	case regDR:
		if u.outErr == nil {
			if _, err := u.out.Write([]byte{byte(v)}); err != nil {
				u.outErr = err
			}
		}
		// Sent at once: the transmit FIFO is empty again.
		u.ris |= IntTX
	case regRSR:
	case regILPR:
		u.ilpr = v & 0xff
	case regIBRD:
		u.ibrd = v & 0xffff
	case regFBRD:
		u.fbrd = v & 0x3f
	case regLCRH:
		u.lcrh = v & 0xff
	case regCR:
		u.cr = v & 0xffff
	case regIFLS:
		u.ifls = v & 0x3f
	case regIMSC:
		u.imsc = v & intMask
	case regICR:
		u.ris &^= v & intMask
	case regDMACR:
		u.dmacr = v & 7
	}
	u.update()
}

// Read is a guest read of the register window. Registers are 32 bits wide;
// narrower reads see the low bytes, wider ones zeros above.
func (u *UART) Read(off uint64, data []byte) {
	u.mu.Lock()
	v := u.read32(off &^ 3)
	u.mu.Unlock()
	v >>= 8 * (off & 3)
	for i := range data {
		data[i] = byte(v)
		v >>= 8
	}
}

// Write is a guest write of the register window.
func (u *UART) Write(off uint64, data []byte) {
	if off&3 != 0 {
		return // registers are only written whole
	}
	var v uint32
	for i := len(data) - 1; i >= 0; i-- {
		if i < 4 {
			v = v<<8 | uint32(data[i])
		}
	}
	u.mu.Lock()
	u.write32(off, v)
	u.mu.Unlock()
}
