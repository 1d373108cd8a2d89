package mshvsim

import (
	"testing"

	"govmm/accel"
)

func TestDecodePIO(t *testing.T) {
	long := &accel.Sregs{EFER: 1 << 10, CS: accel.Segment{L: true}}
	real := &accel.Sregs{}
	for _, c := range []struct {
		b    []byte
		s    *accel.Sregs
		want pioInsn
	}{
		{[]byte{0xEE}, long, pioInsn{length: 1, size: 1, out: true, port: -1}},
		{[]byte{0xE6, 0x80}, long, pioInsn{length: 2, size: 1, out: true, port: 0x80}},
		{[]byte{0x66, 0xE7, 0x70}, long, pioInsn{length: 3, size: 2, out: true, port: 0x70}},
		{[]byte{0xED}, real, pioInsn{length: 1, size: 2, port: -1}},
		{[]byte{0x66, 0xED}, real, pioInsn{length: 2, size: 4, port: -1}},
		{[]byte{0xF3, 0x6E}, long, pioInsn{length: 2, size: 1, out: true, str: true, rep: true, port: -1}},
		{[]byte{0xF3, 0x48, 0x6D}, long, pioInsn{length: 3, size: 4, str: true, rep: true, port: -1}},
	} {
		got, ok := decodePIO(c.b, c.s)
		if !ok || got != c.want {
			t.Errorf("% x: %+v %v, want %+v", c.b, got, ok, c.want)
		}
	}
	for _, b := range [][]byte{{}, {0x90}, {0xE4}, {0x66, 0x66}} {
		if _, ok := decodePIO(b, long); ok {
			t.Errorf("% x decoded as port I/O", b)
		}
	}
}

func FuzzDecodePIO(f *testing.F) {
	f.Add([]byte{0xF3, 0x6E}, true)
	f.Add([]byte{0x66, 0xE7, 0x70}, false)
	f.Fuzz(func(t *testing.T, b []byte, long bool) {
		s := &accel.Sregs{}
		if long {
			s.EFER, s.CS.L = 1<<10, true
		}
		d, ok := decodePIO(b, s)
		if ok && (d.length < 1 || d.length > len(b) || (d.size != 1 && d.size != 2 && d.size != 4)) {
			t.Fatalf("% x: %+v", b, d)
		}
	})
}

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions("noregpage, v2,self,eagain=4")
	if err != nil || o != (Options{EAGAINEvery: 4, NoRegisterPage: true, V2: true, SelfHvcall: true}) {
		t.Errorf("got %+v %v", o, err)
	}
	o, err = ParseOptions("next,scrub")
	if err != nil || o != (Options{EAGAINEvery: DefaultEAGAINEvery, V2: true, SelfHvcall: true, PropertyEx: true, Scrub: true}) {
		t.Errorf("next: %+v %v", o, err)
	}
	if o, err := ParseOptions(""); err != nil || o != (Options{EAGAINEvery: DefaultEAGAINEvery}) {
		t.Errorf("empty: %+v %v", o, err)
	}
	for _, bad := range []string{"eagain=-1", "eagain=x", "fast", "nov2", "noself"} {
		if _, err := ParseOptions(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
