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
// ioeventfds (the guest writes, the kernel signals it). It is non-blocking
// and registered with Go's poller, so Wait blocks a goroutine, not a
// thread, and Close wakes any waiter.
type EventFD struct {
	fd   int // kept: File.Fd() would switch the file to blocking mode
	f    *os.File
	once sync.Once
}

// NewEventFD creates an eventfd with a zero counter.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	return &EventFD{fd: fd, f: os.NewFile(uintptr(fd), "eventfd")}, nil
}

// dup returns a second EventFD on the same eventfd (reads on either
// consume the one counter). Closing it wakes its own waiters only, so a
// server goroutine can be stopped without closing the owner's descriptor.
func (e *EventFD) dup() (*EventFD, error) {
	fd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate eventfd %d: %w", e.fd, err)
	}
	return &EventFD{fd: fd, f: os.NewFile(uintptr(fd), "eventfd")}, nil
}

// FD is the descriptor number to hand to the accelerator.
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the counter (what a device does to raise its irqfd).
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	if _, err := e.f.Write(b[:]); err != nil {
		return fmt.Errorf("signal eventfd %d: %w", e.fd, err)
	}
	return nil
}

// Wait blocks until the counter is non-zero and returns (and clears) it.
// It returns an error wrapping os.ErrClosed once the eventfd is closed.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, fmt.Errorf("wait on eventfd %d: %w", e.fd, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// TryRead returns (and clears) the counter without blocking; 0 if it was 0.
func (e *EventFD) TryRead() (uint64, error) {
	var b [8]byte
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

// Close closes the eventfd (idempotent).
func (e *EventFD) Close() error {
	var err error
	e.once.Do(func() { err = e.f.Close() })
	return err
}
