package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestConsoleEscapes: a raw terminal's input reaches the guest without the
// escapes: Ctrl-A Ctrl-A is one Ctrl-A, Ctrl-A h prints the help on
// stderr, Ctrl-A x stops the VM once and ends the input (what follows is
// not delivered), also when the sequence is split across reads.
func TestConsoleEscapes(t *testing.T) {
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
	} {
		var stderr bytes.Buffer
		c := &console{in: wrap(strings.NewReader("ab\x01\x01c\x01hd\x01xe")), stderr: &stderr, raw: true}
		stops := 0
		got, err := io.ReadAll(c.input(func() { stops++ }))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if string(got) != "ab\x01cd" || stops != 1 {
			t.Errorf("%s: the guest got %q and the VM was stopped %d times, want %q and 1", name, got, stops, "ab\x01cd")
		}
		if !strings.Contains(stderr.String(), "C-a x  stop the VM") {
			t.Errorf("%s: no help on stderr: %q", name, stderr.String())
		}
	}
}

// TestConsoleNotRaw: input that is not a raw terminal (a pipe, a file)
// goes to the guest byte for byte, escapes included.
func TestConsoleNotRaw(t *testing.T) {
	in := "ab\x01xc\x01\x01"
	c := newConsole(strings.NewReader(in), true, io.Discard)
	got, err := io.ReadAll(c.input(func() { t.Error("stopped") }))
	if err != nil || string(got) != in {
		t.Fatalf("got %q, %v; want %q", got, err, in)
	}
}
