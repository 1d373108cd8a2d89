package pl011

import (
	"bytes"
	"encoding/binary"
	"testing"
)

type line struct {
	level bool
	sets  int
}

func (l *line) Set(high bool) { l.level = high; l.sets++ }
func (l *line) Pulse()        {}

func rd(u *UART, off uint64) uint32 {
	var b [4]byte
	u.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func wr(u *UART, off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	u.Write(off, b[:])
}

func TestTransmitAndTXInterrupt(t *testing.T) {
	var out bytes.Buffer
	l := &line{}
	u := New(&out, l)
	if fr := rd(u, regFR); fr&frTXFE == 0 || fr&frTXFF != 0 || fr&frRXFE == 0 {
		t.Errorf("FR at reset %#x", fr)
	}
	for _, c := range []byte("hi\n") {
		wr(u, regDR, uint32(c))
	}
	if out.String() != "hi\n" {
		t.Errorf("output %q", out.String())
	}
	if l.level {
		t.Error("interrupt raised while all are masked")
	}
	// Linux unmasks TX when it has more to send than the FIFO took:
	// the FIFO is empty, so the interrupt fires at once.
	wr(u, regIMSC, IntTX)
	if !l.level || rd(u, regMIS) != IntTX {
		t.Errorf("TX unmasked: level %v MIS %#x", l.level, rd(u, regMIS))
	}
	wr(u, regICR, IntTX)
	if l.level || rd(u, regRIS)&IntTX != 0 {
		t.Error("ICR did not clear TX")
	}
	wr(u, regDR, 'x') // a write empties the FIFO again
	if !l.level {
		t.Error("TX did not rise after a write")
	}
	wr(u, regIMSC, 0)
	if l.level {
		t.Error("masking did not lower the line")
	}
}

func TestReceive(t *testing.T) {
	l := &line{}
	u := New(&bytes.Buffer{}, l)
	wr(u, regIMSC, IntRX|IntRT)
	if n := u.Receive([]byte("ab")); n != 2 {
		t.Fatalf("queued %d", n)
	}
	if !l.level || rd(u, regFR)&frRXFE != 0 || rd(u, regMIS)&IntRX == 0 {
		t.Errorf("after input: level %v FR %#x", l.level, rd(u, regFR))
	}
	if c := rd(u, regDR); c != 'a' {
		t.Errorf("DR %q", rune(c))
	}
	if c := rd(u, regDR); c != 'b' {
		t.Errorf("DR %q", rune(c))
	}
	if l.level || rd(u, regFR)&frRXFE == 0 {
		t.Error("line still high or FIFO not empty once drained")
	}
	big := make([]byte, InputBufferSize+10)
	if n := u.Receive(big); n != InputBufferSize {
		t.Errorf("queued %d of an oversized input, want %d", n, InputBufferSize)
	}
	if rd(u, regFR)&frRXFF == 0 {
		t.Error("RXFF clear with a full buffer")
	}
}

func TestIDRegisters(t *testing.T) {
	u := New(&bytes.Buffer{}, nil)
	var periph, cell uint32
	for i := range 4 {
		periph |= rd(u, regID+uint64(4*i)) << (8 * i)
		cell |= rd(u, regID+16+uint64(4*i)) << (8 * i)
	}
	// Linux's amba-pl011 matches id 0x00041011 under mask 0x000fffff.
	if periph&0xfffff != 0x41011 || cell != 0xb105f00d {
		t.Errorf("periph id %#x, cell id %#x", periph, cell)
	}
}

func TestNarrowAndOddAccesses(t *testing.T) {
	u := New(&bytes.Buffer{}, nil)
	wr(u, regIBRD, 0x12345)
	if v := rd(u, regIBRD); v != 0x2345 {
		t.Errorf("IBRD %#x (16 bits wide)", v)
	}
	var b [1]byte
	u.Read(regIBRD+1, b[:])
	if b[0] != 0x23 {
		t.Errorf("byte read at +1: %#x", b[0])
	}
	u.Write(regIBRD+1, []byte{0xff}) // unaligned writes are dropped
	if v := rd(u, regIBRD); v != 0x2345 {
		t.Errorf("IBRD changed by an unaligned write: %#x", v)
	}
	var wide [8]byte
	u.Read(regFR, wide[:])
	if binary.LittleEndian.Uint64(wide[:])>>32 != 0 {
		t.Error("an 8-byte read sees bits above the register")
	}
	u.Read(0x800, wide[:4]) // unknown offsets read as zero
}

func FuzzRegisters(f *testing.F) {
	f.Add([]byte{0x38, 0, 0, 0, 0x30, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		u := New(&bytes.Buffer{}, &line{})
		for i := 0; i+5 <= len(ops); i += 5 {
			off := uint64(binary.LittleEndian.Uint16(ops[i:])) % Size
			n := 1 << (ops[i+2] % 4)
			data := bytes.Repeat(ops[i+3:i+5], 4)[:n]
			if ops[i+2]&0x80 != 0 {
				u.Write(off, data)
			} else {
				u.Read(off, data)
			}
			if i%3 == 0 {
				u.Receive(ops[i : i+5])
			}
		}
	})
}
