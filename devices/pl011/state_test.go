package pl011

import (
	"bytes"
	"testing"
)

// TestSaveRestore: a UART with unread input and an unmasked receive
// interrupt saves, restores into a fresh UART, and reads on the same.
func TestSaveRestore(t *testing.T) {
	var out bytes.Buffer
	a := New(&out, nil)
	a.Write(regIMSC, []byte{IntRX, 0, 0, 0})
	a.Write(regLCRH, []byte{0x70, 0, 0, 0})
	a.Receive([]byte("hi"))
	s := a.Save()
	b := New(&out, nil)
	if err := b.Restore(s); err != nil {
		t.Fatal(err)
	}
	var d [4]byte
	b.Read(regMIS, d[:])
	if d[0]&IntRX == 0 {
		t.Fatalf("MIS %#x after restore: the receive interrupt is lost", d[0])
	}
	b.Read(regLCRH, d[:])
	if d[0] != 0x70 {
		t.Fatalf("LCRH %#x after restore, want 0x70", d[0])
	}
	for _, want := range "hi" {
		b.Read(regDR, d[:])
		if rune(d[0]) != want {
			t.Fatalf("read %q, want %q", d[0], want)
		}
	}
	s.CR = 1 << 20
	if err := New(&out, nil).Restore(s); err == nil {
		t.Fatal("a CR no guest can write was restored")
	}
	s.CR = 0x301
	s.RX = make([]byte, InputBufferSize+1)
	if err := New(&out, nil).Restore(s); err == nil {
		t.Fatal("more pending input than the buffer holds was restored")
	}
}
