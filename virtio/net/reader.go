package net

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tapWaiter is how a pair's receive goroutine waits for its TAP queue:
// an epoll instance of its own, level-triggered, holding the TAP queue's
// descriptor (non-blocking, outside Go's poller) and an eventfd that
// wakes it (a detach, Close). The goroutine reads the TAP until it is
// empty and then sleeps in epoll_wait on its own thread, so that a packet
// from the host wakes that thread alone. Had it parked in Go's poller,
// each packet would wake the poller's thread, which hands the goroutine
// (locked to its thread once confined) to that thread and sleeps again:
// two threads woken, not one, per packet after the TAP ran dry.
type tapWaiter struct {
	ep, wake int
}

// newTapWaiter makes the pair's epoll instance for the TAP queue f,
// which it makes non-blocking.
func newTapWaiter(f *os.File) (*tapWaiter, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	if err := rc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("make the TAP queue non-blocking: %w", err)
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1 for the TAP queue's reader: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("eventfd to wake the TAP queue's reader: %w", err)
	}
	w := &tapWaiter{ep: ep, wake: wake}
	for _, x := range []int{fd, wake} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(x)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, x, &ev); err != nil {
			w.close()
			return nil, fmt.Errorf("epoll_ctl ADD %d for the TAP queue's reader: %w", x, err)
		}
	}
	return w, nil
}

// read reads one packet from f without blocking (unix.EAGAIN: none
// queued). The file's read lock keeps its descriptor from being closed
// under the read.
func (w *tapWaiter) read(f *os.File, buf []byte) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), buf)
		return true
	}); err != nil {
		return 0, err
	}
	return n, rerr
}

// wait sleeps until the TAP queue has a packet (or an error) or someone
// called poke, on the calling thread (epoll_wait, which a virtio-net
// queue thread's seccomp filter allows).
func (w *tapWaiter) wait() error {
	var evs [2]unix.EpollEvent
	for {
		n, err := unix.EpollWait(w.ep, evs[:], -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait on the TAP queue: %w", err)
		}
		for _, ev := range evs[:n] {
			if int(ev.Fd) == w.wake {
				var b [8]byte
				unix.Read(w.wake, b[:])
			}
		}
		return nil
	}
}

// poke wakes the reader from wait (or makes its next wait return).
func (w *tapWaiter) poke() error {
	var one = [8]byte{1}
	if _, err := unix.Write(w.wake, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("wake the TAP queue's reader: %w", err)
	}
	return nil
}

func (w *tapWaiter) close() {
	unix.Close(w.ep)
	unix.Close(w.wake)
}
