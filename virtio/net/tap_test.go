package net

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// inPoller reports whether fd is registered with an epoll instance of
// this process (Go's poller), from /proc/self/fdinfo.
func inPoller(t *testing.T, fd int) bool {
	t.Helper()
	links, _ := filepath.Glob("/proc/self/fd/*")
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		b, _ := os.ReadFile("/proc/self/fdinfo/" + filepath.Base(l))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
				return true
			}
		}
	}
	return false
}

// TestTapPolled: the TAP govmm reads itself is in Go's poller (so Close
// ends a read), and the TAP vhost=on hands to the kernel is not, where
// each packet queued on it would wake a VMM thread for nothing.
func TestTapPolled(t *testing.T) {
	for _, polled := range []bool{true, false} {
		name := fmt.Sprintf("gvtp%d", os.Getpid()%100000)
		tp, err := openTapFor(name, 1, polled)
		if err != nil {
			t.Skipf("no TAP here: %v", err)
		}
		var fd int
		if err := tp.control(0, func(f int) error { fd = f; return nil }); err != nil {
			tp.close()
			t.Fatal(err)
		}
		if got := inPoller(t, fd); got != polled {
			t.Errorf("openTapFor(polled %v): the TAP's descriptor in Go's poller: %v", polled, got)
		}
		if err := tp.setOffload(tunFCsum); err != nil {
			t.Errorf("openTapFor(polled %v): TUNSETOFFLOAD: %v", polled, err)
		}
		tp.close()
	}
}
