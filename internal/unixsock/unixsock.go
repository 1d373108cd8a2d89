// Package unixsock creates the Unix sockets through which other processes
// drive govmm (the control socket, the migration listener) so that only
// their owner can connect, with no window: a socket bound at its final path
// and chmod'ed afterwards is open to every user the umask lets in until the
// chmod, and govmm runs untrusted guests whose VMM must not be driven by
// anyone else on the host. It also says who is at the other end of a
// connection (SO_PEERCRED), for servers that admit only their own user.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen listens on a Unix socket at path that only its owner can connect
// to. The socket is bound inside a fresh 0700 directory next to path,
// chmod'ed 0600 there, and then hard-linked to path, which fails rather
// than replace a file that is already there. Closing the listener removes
// path.
func Listen(path string) (net.Listener, error) {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".govmm-sock-")
	if err != nil {
		return nil, fmt.Errorf("listen on unix:%s: %w", path, err)
	}
	defer os.RemoveAll(tmp) // the socket stays reachable through path
	inner := filepath.Join(tmp, "s")
	ln, err := net.Listen("unix", inner)
	if err != nil {
		return nil, fmt.Errorf("listen on unix:%s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(inner, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on unix:%s: %w", path, err)
	}
	if err := os.Link(inner, path); err != nil {
		ln.Close()
		if errors.Is(err, os.ErrExist) {
			err = syscall.EADDRINUSE
		}
		return nil, fmt.Errorf("listen on unix:%s: %w", path, err)
	}
	return &listener{UnixListener: ul, path: path}, nil
}

// listener removes its socket file when closed.
type listener struct {
	*net.UnixListener
	path string
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); err == nil && rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = rerr
	}
	return err
}

// PeerUID returns the user ID of the process at the other end of c, a Unix
// socket connection, as the kernel recorded it at connect time.
func PeerUID(c net.Conn) (uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("peer credentials: %T is not a Unix socket connection", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("peer credentials: SO_PEERCRED: %w", serr)
	}
	return cred.Uid, nil
}

// PeerAllowed reports whether a peer with user ID uid may drive a server
// run by this process: the same user, or root.
func PeerAllowed(uid uint32) bool {
	return uid == 0 || int(uid) == os.Getuid()
}
