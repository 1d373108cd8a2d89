package decode

import (
	"strings"
	"testing"
)

// The classifier behind TestObjdump must not excuse a disagreement it has
// no reason for. Each case is a length disagreement that an earlier
// version of the test filed as "known".
func TestClassifyLoopholes(t *testing.T) {
	pad := func(b ...byte) []byte {
		for len(b) < 16 {
			b = append(b, 0x90)
		}
		return b
	}
	cases := []struct {
		name string
		c    []byte
		mode int
		text string
		olen int
	}{
		// VEX3 whose payload byte is 41: not a REX prefix.
		{"REX-looking VEX payload", pad(0xc4, 0x41, 0x78, 0x58, 0xc0), 64, "vaddps %xmm8,%xmm0,%xmm8", 3},
		// EVEX payload bytes 4x likewise.
		{"REX-looking EVEX payload", pad(0x62, 0x41, 0x7c, 0x48, 0x58, 0xc0), 64, "vaddps %zmm8,%zmm0,%zmm8", 4},
		// FWAIT followed by a NOP: objdump has no reason to fold them.
		{"FWAIT then a non-x87", pad(0x9b, 0x90), 32, "fwait", 5},
		// FWAIT then x87, but objdump's length is not 9B plus the x87 one.
		{"FWAIT then x87 of another length", pad(0x9b, 0xdd, 0x38), 32, "fnstsw (%eax)", 5},
	}
	for _, c := range cases {
		var in Inst
		err := Decode(c.c, c.mode, &in)
		cls := classify(c.c, c.mode, &in, err, c.text, c.olen, false)
		if !strings.HasPrefix(cls, "DISAGREE") {
			t.Errorf("%s (% x, objdump len %d, ours %d): classified %q", c.name, c.c[:6], c.olen, in.Len, cls)
		}
	}
	// The documented quirks still are what they are.
	var in Inst
	c := pad(0x9b, 0xdd, 0x38)
	err := Decode(c, 32, &in)
	if cls := classify(c, 32, &in, err, "fnstsw (%eax)", 3, false); !strings.HasPrefix(cls, "known: objdump takes FWAIT") {
		t.Errorf("9B DD 38 as fstsw: %q", cls)
	}
	c = pad(0x66, 0x43, 0xf0, 0xbc, 0x27, 0x15, 0xe6, 0x9a)
	err = Decode(c, 64, &in)
	if cls := classify(c, 64, &in, err, "lock mov $0x9ae61527,%esp", 8, false); !strings.HasPrefix(cls, "known: objdump ends the instruction at a REX") {
		t.Errorf("66 REX F0 BC: %q", cls)
	}
}

// The last line of objdump's output has no next line to measure against.
func TestObjdumpLastLine(t *testing.T) {
	lines := []objLine{{0, "nop"}, {1, "nop"}}
	if n := lineLen(lines, 0, 0); n != 1 {
		t.Fatalf("first line: %d", n)
	}
	if n := lineLen(lines, 1, 1); n != objStride {
		t.Fatalf("last line: %d", n)
	}
}
