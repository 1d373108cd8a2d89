package main

// The host terminal as the guest's console, the same on x86 and arm64.

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// escapeKey starts a console escape sequence: Ctrl-A x stops the VM,
// Ctrl-A Ctrl-A sends a literal Ctrl-A, Ctrl-A h prints help (as in QEMU).
const escapeKey = 0x01

// console connects the host terminal to the guest's serial port. When
// stdin is a terminal it is put in raw mode (with output processing kept,
// as QEMU does) and restored on every way out.
type console struct {
	in       io.Reader
	stderr   io.Writer
	fd       int
	oldState *term.State
	// raw is set once stdin is a terminal in raw mode: input then goes
	// through the escape sequences. It is set before the guest's input
	// is read (the reader starts with the VM).
	raw  bool
	once sync.Once
}

// newConsole is the console on stdin, in raw mode at once when
// interactive (see makeRaw).
func newConsole(stdin io.Reader, interactive bool, stderr io.Writer) *console {
	c := &console{in: stdin, stderr: stderr, fd: -1}
	if interactive {
		c.makeRaw()
	}
	return c
}

// makeRaw puts stdin in raw mode if it is a terminal. The arm64 build
// calls it once the machine is built (its input reader exists before),
// the x86 build through newConsole.
func (c *console) makeRaw() {
	if f, ok := c.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		st, err := term.MakeRaw(fd)
		if err == nil {
			c.fd, c.oldState, c.raw = fd, st, true
			// Keep output post-processing so the guest's "\n" still
			// returns the carriage.
			if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
				t.Oflag |= unix.OPOST | unix.ONLCR
				_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
			}
		}
	}
}

// restore puts the terminal back as it was; safe to call more than once.
func (c *console) restore() {
	c.once.Do(func() {
		if c.oldState != nil {
			_ = term.Restore(c.fd, c.oldState)
		}
	})
}

// input is the guest's console input: stdin, and, while the console is
// a raw terminal, with the escape sequence interpreted (Ctrl-A x calls
// stop and ends the input).
func (c *console) input(stop func()) io.Reader {
	return &escapeReader{c: c, stop: stop}
}

// escapeReader is stdin without the console escapes of a raw terminal.
type escapeReader struct {
	c       *console
	stop    func()
	escaped bool
	stopped bool
}

func (r *escapeReader) Read(p []byte) (int, error) {
	if r.stopped {
		return 0, io.EOF
	}
	if !r.c.raw {
		return r.c.in.Read(p)
	}
	buf := make([]byte, len(p))
	for {
		n, err := r.c.in.Read(buf)
		k := 0
		for _, b := range buf[:n] {
			if r.escaped {
				r.escaped = false
				switch b {
				case 'x', 'X':
					r.stopped = true
					r.stop()
					return k, io.EOF
				case 'h', 'H', '?':
					fmt.Fprint(r.c.stderr, "\r\nC-a x  stop the VM\r\nC-a C-a  send C-a\r\nC-a h  this help\r\n")
				case escapeKey:
					p[k] = escapeKey
					k++
				}
				continue
			}
			if b == escapeKey {
				r.escaped = true
				continue
			}
			p[k] = b
			k++
		}
		// A read that held only an escape returns nothing: read on.
		if k > 0 || err != nil || n == 0 {
			return k, err
		}
	}
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
