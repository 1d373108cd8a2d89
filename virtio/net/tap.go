package net

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// TUNSETOFFLOAD flags (linux/if_tun.h): which offloaded packets the TAP
// may hand to its reader.
const (
	tunFCsum = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
)

// vnetHdrLen is struct virtio_net_hdr_v1, with num_buffers: the header
// both the TAP and a VERSION_1 driver put before every packet.
const vnetHdrLen = 12

// tap is an open TAP device with virtio-net headers.
type tap struct {
	f    *os.File
	name string
}

// openTap attaches to the TAP called name, creating it (for as long as
// govmm holds it) if there is none, in IFF_TAP|IFF_NO_PI|IFF_VNET_HDR
// mode with 12-byte headers. The file is non-blocking and served by Go's
// poller, so Close ends a Read in progress.
func openTap(name string) (*tap, error) {
	if len(name) >= unix.IFNAMSIZ || name == "" {
		return nil, fmt.Errorf("tap %q: a name of 1..%d bytes", name, unix.IFNAMSIZ-1)
	}
	// The ioctls come first: a TUN file is pollable only once it is
	// attached, and os.NewFile registers it with the poller.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", name, err)
	}
	if err := attach(fd, name); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun:"+name)
	return &tap{f: f, name: name}, nil
}

// attach puts fd on the TAP called name, with 12-byte virtio-net
// headers and no offloaded packets towards the guest until its driver
// asks for them.
func attach(fd int, name string) error {
	feat, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
	if err != nil {
		return fmt.Errorf("TUNGETFEATURES: %w", err)
	}
	if feat&unix.IFF_VNET_HDR == 0 {
		return errors.New("the host's TUN driver has no IFF_VNET_HDR")
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF (attach or create the TAP; creating needs CAP_NET_ADMIN): %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen); err != nil {
		return fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return fmt.Errorf("TUNSETOFFLOAD: %w", err)
	}
	return nil
}

// setOffload tells the TAP which offloaded packets the guest takes.
func (t *tap) setOffload(flags int) error {
	rc, err := t.f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags) }); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, ierr)
	}
	return nil
}

// writev sends one packet (header first) made of bufs.
func (t *tap) writev(bufs [][]byte) error {
	rc, err := t.f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), bufs)
		return werr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return werr
}
