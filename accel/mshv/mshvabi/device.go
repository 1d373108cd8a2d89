package mshvabi

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Device is the seam between the MSHV backend and the kernel: the three
// kinds of fd (/dev/mshv, partition, VP) and the four operations the
// backend performs on them. OSDevice is the real /dev/mshv; package mshvsim
// serves the same ABI in-process. Nothing else in the backend knows which
// one it talks to.
//
// Ioctl takes the raw request number and a pointer to the argument, exactly
// as ioctl(2): the implementation reads and writes the argument bytes (and
// any user pointers inside them, such as mshv_root_hvcall.in_ptr) the way
// the kernel does. It returns the ioctl's non-negative result (a new fd for
// CREATE_PARTITION and CREATE_VP) or an error that is a unix.Errno.
type Device interface {
	// SystemFD is the fd of the opened /dev/mshv.
	SystemFD() int
	Ioctl(fd int, req uint32, arg unsafe.Pointer) (int, error)
	// Mmap maps length bytes of a VP fd at page offset pgoff
	// (MSHV_VP_MMAP_OFFSET_*), shared, read/write.
	Mmap(fd int, pgoff int64, length int) ([]byte, error)
	Munmap(b []byte) error
	// Close closes a partition or VP fd, or SystemFD (the device).
	Close(fd int) error
	// Kick interrupts the VP fd's MSHV_RUN_VP running on OS thread tid
	// (so that it returns EINTR): a signal sent with tgkill.
	Kick(vpFD int, tid int) error
}

// DevicePath is the MSHV root-partition device node.
const DevicePath = "/dev/mshv"

// OSDevice is the real /dev/mshv.
type OSDevice struct {
	fd   int
	Path string
}

// OpenOS opens the MSHV device node at path (O_RDWR|O_CLOEXEC). A missing
// node gives an error wrapping os.ErrNotExist (unix.ENOENT).
func OpenOS(path string) (*OSDevice, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &OSDevice{fd: fd, Path: path}, nil
}

// SystemFD is the /dev/mshv fd.
func (d *OSDevice) SystemFD() int { return d.fd }

// Ioctl issues ioctl(2).
func (d *OSDevice) Ioctl(fd int, req uint32, arg unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// Mmap maps a VP page.
func (d *OSDevice) Mmap(fd int, pgoff int64, length int) ([]byte, error) {
	return unix.Mmap(fd, pgoff*int64(unix.Getpagesize()), length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

// Munmap unmaps a page mapped by Mmap.
func (d *OSDevice) Munmap(b []byte) error { return unix.Munmap(b) }

// Close closes fd.
func (d *OSDevice) Close(fd int) error { return unix.Close(fd) }

// KickSignal is the signal Kick sends. SIGURG is what the Go runtime uses
// for goroutine preemption, so its handler is always installed and does
// nothing harmful; a blocking MSHV_RUN_VP returns EINTR on it.
const KickSignal = unix.SIGURG

// Kick sends KickSignal to thread tid of this process.
func (d *OSDevice) Kick(vpFD int, tid int) error {
	return unix.Tgkill(unix.Getpid(), tid, KickSignal)
}
