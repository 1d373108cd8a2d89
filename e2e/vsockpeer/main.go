// Command vsockpeer is the guest's end of the vsock and network
// end-to-end tests: a tiny static program for the test initramfs, since
// busybox has no vsock tool (and its nc cannot half-close). It moves deterministic data over AF_VSOCK and prints what it
// received as "vsock-test: KEY BYTES SHA256" lines on stdout (the guest's
// console), which the test compares with what the host sent.
//
//	vsockpeer serve PORT N SEED BYTES  accept N connections on PORT; read
//	                                   each to EOF, reply BYTES of SEED
//	vsockpeer dial PORT SEED BYTES     connect to the host's PORT, send BYTES
//	                                   of SEED, shut down sending, read to EOF
//	vsockpeer tcpserve PORT N SEED BYTES  the same over TCP
//	vsockpeer tcpdial HOST:PORT SEED BYTES
//
// and, for the host's end where the test runs it as a program (the
// aarch64 L1's scripts), over govmm's hybrid vsock socket:
//
//	vsockpeer unixserve PATH_PORT N SEED BYTES  the host side of a guest's
//	                                   dial to PORT (govmm connects to PATH_PORT)
//	vsockpeer unixdial PATH PORT SEED BYTES  "CONNECT PORT" on PATH, then
//	                                   as dial
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Pattern is n bytes made of SHA-256 blocks of "seed-i", the same bytes
// the test builds on the host.
func Pattern(seed string, n int) []byte {
	out := make([]byte, 0, n+32)
	for i := 0; len(out) < n; i++ {
		h := sha256.Sum256(fmt.Appendf(nil, "%s-%d", seed, i))
		out = append(out, h[:]...)
	}
	return out[:n]
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Printf("vsock-test: error %v\n", err)
		os.Exit(1)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Printf("vsock-test: error bad number %q\n", s)
		os.Exit(2)
	}
	return n
}

func run(args []string) error {
	switch {
	case len(args) == 5 && args[0] == "serve":
		return serve(uint32(atoi(args[1])), atoi(args[2]), args[3], atoi(args[4]))
	case len(args) == 4 && args[0] == "dial":
		return dial(uint32(atoi(args[1])), args[2], atoi(args[3]))
	case len(args) == 5 && args[0] == "tcpserve":
		return tcpServe(atoi(args[1]), atoi(args[2]), args[3], atoi(args[4]))
	case len(args) == 4 && args[0] == "tcpdial":
		return tcpDial(args[1], args[2], atoi(args[3]))
	case len(args) == 5 && args[0] == "unixserve":
		return unixServe(args[1], atoi(args[2]), args[3], atoi(args[4]))
	case len(args) == 5 && args[0] == "unixdial":
		return unixDial(args[1], atoi(args[2]), args[3], atoi(args[4]))
	}
	return fmt.Errorf("usage: vsockpeer serve PORT N SEED BYTES | dial PORT SEED BYTES | tcpserve PORT N SEED BYTES | tcpdial HOST:PORT SEED BYTES | unixserve PATH N SEED BYTES | unixdial PATH PORT SEED BYTES")
}

// drain reads fd to EOF and prints its length and checksum under key.
func drain(fd int, key string) error {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: read after %d bytes: %w", key, total, err)
		}
		if n == 0 {
			break
		}
		h.Write(buf[:n])
		total += n
	}
	fmt.Printf("vsock-test: %s %d %s\n", key, total, hex.EncodeToString(h.Sum(nil)))
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func serve(port uint32, conns int, seed string, n int) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return fmt.Errorf("bind port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Printf("vsock-test: listening %d\n", port)
	for i := 1; i <= conns; i++ {
		c, sa, err := unix.Accept(fd)
		if err == unix.EINTR {
			i--
			continue
		}
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		if vm, ok := sa.(*unix.SockaddrVM); ok {
			fmt.Printf("vsock-test: accepted %d from %d:%d\n", i, vm.CID, vm.Port)
		}
		if err := drain(c, fmt.Sprintf("h2g-recv-%d", i)); err != nil {
			// A connection the host side lost (a restored VM's):
			// the next one is served.
			fmt.Printf("vsock-test: lost %d: %v\n", i, err)
			unix.Close(c)
			continue
		}
		if err := writeAll(c, Pattern(fmt.Sprintf("%s-%d", seed, i), n)); err != nil {
			return fmt.Errorf("reply: %w", err)
		}
		// writeAll returns once the transport queued the reply, up to a
		// credit's worth (256 KiB) of it not yet on the virtqueue, and the
		// guest powers off soon after "served": with SO_LINGER, close
		// waits until the device answered the shutdown, which it does
		// only after the host socket took the last byte (a CI run of
		// 2026-12-07 read 393,216 of 524,288 bytes on the host).
		if err := unix.SetsockoptLinger(c, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 60}); err != nil {
			return fmt.Errorf("linger: %w", err)
		}
		if err := unix.Close(c); err != nil {
			return fmt.Errorf("close after the reply: %w", err)
		}
		fmt.Printf("vsock-test: served %d\n", i)
	}
	return nil
}

func dial(port uint32, seed string, n int) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: port}); err != nil {
		return fmt.Errorf("connect to host port %d: %w", port, err)
	}
	return exchange(fd, seed, n)
}

// exchange is a dialer's side of a connection: it sends n bytes of the
// pattern seed, half-closes, reads the reply to its end and closes.
func exchange(fd int, seed string, n int) error {
	if err := writeAll(fd, Pattern(seed, n)); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := drain(fd, "g2h-reply"); err != nil {
		return err
	}
	return unix.Close(fd)
}

// tcpFD is the descriptor of a TCP or Unix socket; the vsock code above
// then serves it unchanged.
func tcpFD(c interface {
	File() (*os.File, error)
	Close() error
}) (int, error) {
	f, err := c.File()
	c.Close()
	if err != nil {
		return -1, err
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	return fd, err
}

// answer serves connection i of a server over a TCP or Unix socket: it
// reads the dialer's bytes to their end, replies with n bytes of the
// pattern seed-i and closes, with SO_LINGER if linger is set so that
// close waits for the peer to acknowledge the last byte.
func answer(fd, i int, seed string, n int, linger bool) error {
	if err := drain(fd, fmt.Sprintf("h2g-recv-%d", i)); err != nil {
		return err
	}
	if err := writeAll(fd, Pattern(fmt.Sprintf("%s-%d", seed, i), n)); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	if linger {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 60}); err != nil {
			return fmt.Errorf("linger: %w", err)
		}
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close after the reply: %w", err)
	}
	return nil
}

func tcpServe(port, conns int, seed string, n int) error {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{Port: port})
	if err != nil {
		return err
	}
	fmt.Printf("vsock-test: listening %d\n", port)
	for i := 1; i <= conns; i++ {
		c, err := ln.AcceptTCP()
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		fmt.Printf("vsock-test: accepted %d from %s\n", i, c.RemoteAddr())
		fd, err := tcpFD(c)
		if err != nil {
			return err
		}
		// The reply sits in the send buffer when writeAll returns, and the
		// guest powers off soon after "served": close must not return
		// before the peer has acknowledged the last byte, or a segment the
		// network lost and TCP would resend dies with the guest
		// (TestNetLiveMigration's host once read 1,672 bytes short and
		// timed out).
		if err := answer(fd, i, seed, n, true); err != nil {
			return err
		}
		fmt.Printf("vsock-test: served %d\n", i)
	}
	return nil
}

func tcpDial(addr, seed string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return err
	}
	fd, err := tcpFD(c.(*net.TCPConn))
	if err != nil {
		return err
	}
	return exchange(fd, seed, n)
}

// unixServe is the host's end of a guest's dials to one port over govmm's
// hybrid vsock device: govmm connects to path (the device's socket with
// "_PORT" appended) for each, and the connections are served as serve
// serves vsock ones.
func unixServe(path string, conns int, seed string, n int) error {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	fmt.Printf("vsock-test: listening %s\n", path)
	for i := 1; i <= conns; i++ {
		c, err := ln.AcceptUnix()
		if err != nil {
			return fmt.Errorf("accept on %s: %w", path, err)
		}
		fmt.Printf("vsock-test: accepted %d\n", i)
		fd, err := tcpFD(c)
		if err != nil {
			return err
		}
		if err := answer(fd, i, seed, n, false); err != nil {
			return err
		}
		fmt.Printf("vsock-test: served %d\n", i)
	}
	return nil
}

// unixDial connects to the guest's vsock port through govmm's hybrid
// vsock socket at path ("CONNECT PORT", answered "OK HOSTPORT"), then
// sends and reads as dial does.
func unixDial(path string, port int, seed string, n int) error {
	c, err := net.DialTimeout("unix", path, 30*time.Second)
	if err != nil {
		return err
	}
	fd, err := tcpFD(c.(*net.UnixConn))
	if err != nil {
		return err
	}
	if err := writeAll(fd, fmt.Appendf(nil, "CONNECT %d\n", port)); err != nil {
		return fmt.Errorf("CONNECT %d: %w", port, err)
	}
	// The answer a byte at a time: what follows it is the guest's.
	var line []byte
	for len(line) == 0 || line[len(line)-1] != '\n' {
		var b [1]byte
		k, err := unix.Read(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 || len(line) > 64 {
			return fmt.Errorf("CONNECT %d: answer %q, then %v", port, line, err)
		}
		line = append(line, b[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		return fmt.Errorf("CONNECT %d: answer %q, want OK <port>", port, line)
	}
	return exchange(fd, seed, n)
}
