package net

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenFDRefuses checks that a hot-added network device is built only
// on what can be a TAP queue, and only with one queue pair and no vhost.
func TestOpenFDRefuses(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(path string, flag int) int {
		fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	for _, c := range []struct {
		name string
		cfg  Config
		fd   int
		want string
	}{
		{"a regular file", Config{Tap: "t0"}, open(file, unix.O_RDWR|unix.O_NONBLOCK), "not a TAP"},
		{"a blocking descriptor", Config{Tap: "t0"}, open("/dev/null", unix.O_RDWR), "non-blocking"},
		{"a read-only descriptor", Config{Tap: "t0"}, open("/dev/null", unix.O_RDONLY|unix.O_NONBLOCK), "read-write"},
		{"two queue pairs", Config{Tap: "t0", Queues: 2}, open("/dev/null", unix.O_RDWR|unix.O_NONBLOCK), "one queue pair"},
		{"vhost=on", Config{Tap: "t0", Vhost: true}, open("/dev/null", unix.O_RDWR|unix.O_NONBLOCK), "vhost=on"},
	} {
		if _, err := OpenFD(c.cfg, c.fd, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
		if _, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFD, 0); err == nil {
			t.Errorf("%s: the descriptor was left open", c.name)
		}
	}
	if _, _, err := OpenTapFile(Config{Tap: "t0", Queues: 3}); err == nil {
		t.Error("OpenTapFile with three queue pairs succeeded")
	}
}
