package routes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// EventFD is a Linux eventfd: the doorbell both accelerators use for irqfds
// (userspace or another device signals it, the kernel injects) and
// ioeventfds (the guest writes, the kernel signals it). It is non-blocking.
// It joins Go's poller only when a goroutine first waits on it, so Wait
// blocks a goroutine, not a thread, and Close wakes any waiter; an eventfd
// that only the kernel reads (an irqfd, a kernel backend's doorbell or
// call) is never in the poller. Go's poller is edge-triggered epoll: an
// eventfd in it wakes the thread parked in epoll_wait on every signal,
// whether a goroutine waits or not, which for a doorbell and an interrupt
// that the kernel carries from end to end (vhost) cost a VMM thread's
// wake-up per kick and per interrupt, taking CPU from the vCPU and the
// vhost worker.
type EventFD struct {
	fd int // kept: File.Fd() would switch the file to blocking mode

	mu sync.RWMutex
	// f is the poller's file over fd, from the first Wait on (nil
	// before). Closing it closes fd.
	f      *os.File
	closed bool
}

// NewEventFD creates an eventfd with a zero counter.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	return &EventFD{fd: fd}, nil
}

// dup returns a second EventFD on the same eventfd (reads on either
// consume the one counter). Closing it wakes its own waiters only, so a
// server goroutine can be stopped without closing the owner's descriptor.
func (e *EventFD) dup() (*EventFD, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return nil, fmt.Errorf("duplicate eventfd %d: %w", e.fd, os.ErrClosed)
	}
	fd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate eventfd %d: %w", e.fd, err)
	}
	return &EventFD{fd: fd}, nil
}

// InPoller reports whether the eventfd is in Go's poller (a goroutine
// waited on it).
func (e *EventFD) InPoller() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.f != nil
}

// FD is the descriptor number to hand to the accelerator.
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the counter (what a device does to raise its irqfd).
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return fmt.Errorf("signal eventfd %d: %w", e.fd, os.ErrClosed)
	}
	for {
		_, err := unix.Write(e.fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("signal eventfd %d: %w", e.fd, err)
		}
		return nil
	}
}

// pollFile returns the poller's file over fd, creating it (which adds fd
// to the poller) on first use.
func (e *EventFD) pollFile() (*os.File, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, os.ErrClosed
	}
	if e.f == nil {
		e.f = os.NewFile(uintptr(e.fd), "eventfd")
	}
	return e.f, nil
}

// Wait blocks until the counter is non-zero and returns (and clears) it.
// It returns an error wrapping os.ErrClosed once the eventfd is closed.
func (e *EventFD) Wait() (uint64, error) {
	f, err := e.pollFile()
	if err != nil {
		return 0, fmt.Errorf("wait on eventfd %d: %w", e.fd, err)
	}
	var b [8]byte
	if _, err := f.Read(b[:]); err != nil {
		return 0, fmt.Errorf("wait on eventfd %d: %w", e.fd, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// TryRead returns (and clears) the counter without blocking; 0 if it was 0.
func (e *EventFD) TryRead() (uint64, error) {
	var b [8]byte
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return 0, fmt.Errorf("read eventfd %d: %w", e.fd, os.ErrClosed)
	}
	n, err := unix.Read(e.fd, b[:])
	if errors.Is(err, unix.EAGAIN) {
		return 0, nil
	}
	if err != nil || n != 8 {
		return 0, fmt.Errorf("read eventfd %d: %v", e.fd, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Serve calls fn from a new goroutine with each non-zero counter value
// until the eventfd is closed (a resample fd re-raising a level line, or an
// ioeventfd doorbell handler).
func (e *EventFD) Serve(fn func(count uint64)) {
	go func() {
		for {
			n, err := e.Wait()
			if err != nil {
				return
			}
			fn(n)
		}
	}()
}

// Close closes the eventfd (idempotent) and wakes any waiter.
func (e *EventFD) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	if e.f != nil {
		return e.f.Close()
	}
	return unix.Close(e.fd)
}
