package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The socket is 0600 whatever the umask, and it never appears at its path
// with another mode: the only file ever at path is the finished one.
func TestListenPrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			uid, err := PeerUID(c)
			if err != nil || int(uid) != os.Getuid() || !PeerAllowed(uid) {
				t.Errorf("peer uid %d, %v", uid, err)
			}
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Read(make([]byte, 1))
	c.Close()
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second listener on the same path: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
}
