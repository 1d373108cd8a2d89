//go:build !arm64

package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"govmm/vm"
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
	once     sync.Once
}

func newConsole(stdin io.Reader, interactive bool, stderr io.Writer) *console {
	c := &console{in: stdin, stderr: stderr, fd: -1}
	if !interactive {
		return c
	}
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		st, err := term.MakeRaw(fd)
		if err == nil {
			c.fd, c.oldState = fd, st
			// Keep output post-processing so the guest's "\n" still
			// returns the carriage.
			if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
				t.Oflag |= unix.OPOST | unix.ONLCR
				_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
			}
		}
	}
	return c
}

// restore puts the terminal back as it was; safe to call more than once.
func (c *console) restore() {
	c.once.Do(func() {
		if c.oldState != nil {
			_ = term.Restore(c.fd, c.oldState)
		}
	})
}

// pump copies host input to the guest until input ends, interpreting the
// escape sequence when the console is a raw terminal.
func (c *console) pump(m *vm.VM) {
	if c.oldState == nil {
		m.CopySerialInput(c.in)
		return
	}
	buf := make([]byte, 256)
	escaped := false
	for {
		n, err := c.in.Read(buf)
		out := buf[:0]
		for _, b := range buf[:n] {
			if escaped {
				escaped = false
				switch b {
				case 'x', 'X':
					m.Stop(vm.Result{Kind: vm.StopRequested, Status: 0})
					return
				case 'h', 'H', '?':
					fmt.Fprint(c.stderr, "\r\nC-a x  stop the VM\r\nC-a C-a  send C-a\r\nC-a h  this help\r\n")
				case escapeKey:
					out = append(out, escapeKey)
				}
				continue
			}
			if b == escapeKey {
				escaped = true
				continue
			}
			out = append(out, b)
		}
		if len(out) > 0 {
			m.SerialInput(out)
		}
		if err != nil {
			return
		}
	}
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
