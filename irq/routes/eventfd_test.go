package routes

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// inEpoll reports whether fd is registered with any epoll instance of
// this process (Go's poller is one), from /proc/self/fdinfo.
func inEpoll(t *testing.T, fd int) bool {
	t.Helper()
	links, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		found++
		b, err := os.ReadFile("/proc/self/fdinfo/" + filepath.Base(l))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
				return true
			}
		}
	}
	if found == 0 {
		t.Fatal("no epoll instance in the process: Go's poller not found")
	}
	return false
}

// TestEventFDPoller: an eventfd that is only signalled (an irqfd, a
// kernel backend's doorbell or call) stays out of Go's poller, where
// every signal would wake a thread parked in epoll_wait; the first Wait
// puts it in, and Close still wakes a waiter.
func TestEventFDPoller(t *testing.T) {
	// Make sure Go's poller exists (a pipe read through os.File).
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	ev, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := ev.Signal(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := ev.TryRead(); err != nil || n != 3 {
		t.Fatalf("TryRead = %d, %v", n, err)
	}
	if inEpoll(t, ev.FD()) || ev.InPoller() {
		t.Fatal("an eventfd nobody waits on is in Go's poller")
	}
	got := make(chan uint64)
	ev.Serve(func(n uint64) { got <- n })
	ev.Signal()
	if n := <-got; n != 1 {
		t.Fatalf("Serve got %d", n)
	}
	if !inEpoll(t, ev.FD()) || !ev.InPoller() {
		t.Fatal("an eventfd a goroutine waits on is not in Go's poller")
	}

	// Close wakes a waiter, with or without the poller.
	for _, waited := range []bool{false, true} {
		ev, err := NewEventFD()
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error)
		go func() {
			_, err := ev.Wait()
			done <- err
		}()
		if waited {
			time.Sleep(10 * time.Millisecond)
		}
		ev.Close()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("Wait returned no error after Close")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not wake the waiter")
		}
		if err := ev.Signal(); err == nil {
			t.Fatal("Signal after Close succeeded")
		}
		if err := ev.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
}
