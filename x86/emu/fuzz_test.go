package emu

import (
	"encoding/binary"
	"testing"
)

// FuzzStep runs arbitrary bytes with arbitrary registers in each mode:
// no panic, no access outside the model, termination (REP is bounded by
// MaxRepeat), and RIP either unchanged or advanced by the instruction.
func FuzzStep(f *testing.F) {
	for _, s := range []string{
		"\x89\x03", "\xf3\xa5", "\xf0\x0f\xc7\x0f", "\xc5\xfe\x7f\x0b", "\x8f\x04\x24", "\xf3\x6d",
		"\x0f\xab\x0b", "\x66\x0f\xd6\x0b", "\xe4\x60", "\xa1\x00\x00\x00\xc0",
	} {
		f.Add([]byte(s), uint8(0), uint64(modelMMIO), uint64(0x9000), uint64(4))
		f.Add([]byte(s), uint8(2), uint64(0x200ff0), uint64(0xfffffffffffffff0), uint64(1<<40))
	}
	f.Fuzz(func(t *testing.T, code []byte, mode uint8, a, b, c uint64) {
		modes := []string{"64", "64u", "32", "16"}
		m := newMode(modes[int(mode)%len(modes)])
		m.log = false
		m.lax = true
		if mode&0x10 != 0 {
			m.put64(ptPT+0x10*8, 0) // a hole in the 4 KiB area
		}
		for i := range m.regs {
			m.regs[i] = a*uint64(i+1) ^ b>>uint(i) ^ c<<uint(i)
		}
		m.regs[RBX], m.regs[RSI], m.regs[RDI], m.regs[RCX] = a, b, b^modelMMIO, c&0xffff
		m.rflags = (c>>16)&0x40cd5 | 2
		var buf [8]byte
		binary.LittleEndian.PutUint64(buf[:], a)
		copy(m.mmio[:], buf[:])
		if len(code) > 15 {
			code = code[:15]
		}
		copy(m.ram[testRIP:], code)
		e := New(m)
		e.MaxRepeat = 64
		err := e.Step(code)
		if len(m.oob) != 0 {
			t.Fatalf("% x: outside the model: %v", code, m.oob)
		}
		if err != nil && m.rip != testRIP {
			t.Fatalf("% x: error %v but rip moved to %#x", code, err, m.rip)
		}
		if err == nil && (m.rip < testRIP || m.rip > testRIP+15) && m.ctl[CR0]&cr0PE != 0 {
			t.Fatalf("% x: rip %#x", code, m.rip)
		}
	})
}
