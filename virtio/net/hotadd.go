package net

import (
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"os"

	"golang.org/x/sys/unix"
)

// hotAddCheck refuses what a hot-added device does not support: more than
// one queue pair (one descriptor per queue) and vhost=on (the kernel's
// vhost-net would have to be opened).
func hotAddCheck(c Config) error {
	if c.Queues > 1 {
		return fmt.Errorf("virtio-net %s: a hot-added device has one queue pair (queues=%d)", c.Tap, c.Queues)
	}
	if c.Vhost {
		return fmt.Errorf("virtio-net %s: vhost=on is not supported for a hot-added device", c.Tap)
	}
	return nil
}

// OpenTapFile attaches to (or creates) the TAP of c for a device to be
// hot-added, as Open does, and returns its queue's file: the control
// socket's client runs it and passes the descriptor to the VMM, which may
// not open /dev/net/tun once it is confined. hostMAC is the address it
// gave the host side of a TAP it created (HostMAC of the guest's), nil
// where it attached to a TAP that was there.
func OpenTapFile(c Config) (f *os.File, hostMAC stdnet.HardwareAddr, err error) {
	if err := hotAddCheck(c); err != nil {
		return nil, nil, err
	}
	mac, err := checkConfig(&c)
	if err != nil {
		return nil, nil, err
	}
	t, err := openTap(c.Tap, 1, mac)
	if err != nil {
		return nil, nil, fmt.Errorf("virtio-net: %w", err)
	}
	return t.fs[0], t.hostMAC, nil
}

// OpenFD builds the device of c on fd, a TAP queue OpenTapFile opened
// (in the client's process) and passed over the control socket, and
// starts its receive goroutine. fd must be a non-blocking character
// device opened read-write; the device owns it from then on, also on
// error (it is closed).
func OpenFD(c Config, fd int, log *slog.Logger) (*Device, error) {
	if err := hotAddCheck(c); err != nil {
		unix.Close(fd)
		return nil, err
	}
	mac, err := checkConfig(&c)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := checkTapFD(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("virtio-net %s: %w", c.Tap, err)
	}
	// Non-blocking: os.NewFile puts it in Go's poller, as openTap's.
	f := os.NewFile(uintptr(fd), "/dev/net/tun:"+c.Tap+":0")
	return newDevice(c, mac, &tap{fs: []*os.File{f}, name: c.Tap}, log, true), nil
}

// checkTapFD checks that fd looks like a TAP queue: a character device
// (the TUN driver's) opened read-write and non-blocking.
func checkTapFD(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("the descriptor passed: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return errors.New("the descriptor passed is not a TAP (/dev/net/tun) queue")
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("the descriptor passed: %w", err)
	}
	if fl&unix.O_ACCMODE != unix.O_RDWR || fl&unix.O_NONBLOCK == 0 {
		return errors.New("the TAP descriptor passed must be read-write and non-blocking")
	}
	return nil
}
