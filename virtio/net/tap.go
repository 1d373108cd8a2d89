package net

import (
	"errors"
	"fmt"
	stdnet "net"
	"os"

	"golang.org/x/sys/unix"

	"govmm/virtio/net/tapabi"
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

// tap is an open TAP device with virtio-net headers: one file per queue
// (several with IFF_MULTI_QUEUE).
type tap struct {
	fs   []*os.File
	name string
	// hostMAC is the address govmm gave the TAP's host side when it
	// created the TAP (HostMAC of the guest's); nil for a TAP that
	// existed before, whose owner chose its address.
	hostMAC stdnet.HardwareAddr
}

// HostMAC is the Ethernet address govmm gives the host side of a TAP it
// creates for a guest whose address is guest: the guest's, with its
// first byte 0xfe (0xfa where the guest's is 0xfe already), as libvirt
// gives the TAPs it creates. Both are unicast, locally administered
// bytes, and the address differs from the guest's, so the host never
// sees its own address as a frame's source. Because it depends on
// nothing but the guest's MAC, which a snapshot and a migration keep,
// the TAP that a restore or a migration's destination creates has the
// address the one before had, and the guest's neighbour (ARP) entry for
// the host's address stays right.
func HostMAC(guest stdnet.HardwareAddr) stdnet.HardwareAddr {
	h := append(stdnet.HardwareAddr(nil), guest...)
	if len(h) == 0 {
		return h
	}
	if h[0] == 0xfe {
		h[0] = 0xfa
	} else {
		h[0] = 0xfe
	}
	return h
}

// openTap attaches to the TAP called name, creating it (for as long as
// govmm holds it) if there is none, in IFF_TAP|IFF_NO_PI|IFF_VNET_HDR
// mode with 12-byte headers; with more than one queue in
// IFF_MULTI_QUEUE mode, with one file per queue and queues 1.. detached
// (the driver enables them). A TAP it creates gets HostMAC(guest) as its
// host side's address before anything can bring it up. The files are
// non-blocking and served by Go's poller, so Close ends a Read in
// progress.
func openTap(name string, queues int, guest stdnet.HardwareAddr) (*tap, error) {
	return openTapFor(name, queues, true, guest)
}

// openTapFor is openTap; with polled false the files are blocking and
// stay out of Go's poller, for a TAP that only the kernel's vhost-net
// reads and writes: Go's poller is edge-triggered epoll, and a TAP in it
// would wake a VMM thread for each packet the host queues towards the
// guest (and as transmitted packets free the TAP's send buffer), taking
// CPU from the vCPU and the vhost worker that move the packets.
func openTapFor(name string, queues int, polled bool, guest stdnet.HardwareAddr) (*tap, error) {
	if len(name) >= unix.IFNAMSIZ || name == "" {
		return nil, fmt.Errorf("tap %q: a name of 1..%d bytes", name, unix.IFNAMSIZ-1)
	}
	if len(guest) != macLen {
		return nil, fmt.Errorf("tap %s: guest MAC %q is not a 6-byte Ethernet address", name, guest)
	}
	before, err := ifIndex(name)
	if err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	t := &tap{name: name}
	for i := range queues {
		// The ioctls come first: a TUN file is pollable only once it
		// is attached, and os.NewFile registers it with the poller.
		flags := unix.O_RDWR | unix.O_CLOEXEC
		if polled {
			flags |= unix.O_NONBLOCK
		}
		fd, err := unix.Open("/dev/net/tun", flags, 0)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", name, err)
		}
		if err := attach(fd, name, queues > 1); err != nil {
			unix.Close(fd)
			t.close()
			if queues > 1 {
				return nil, fmt.Errorf("tap %s: queue %d of %d: %w", name, i, queues, err)
			}
			return nil, fmt.Errorf("tap %s: %w", name, err)
		}
		if i == 0 {
			if err := t.setHostMAC(fd, before, guest); err != nil {
				unix.Close(fd)
				return nil, err
			}
		}
		t.fs = append(t.fs, os.NewFile(uintptr(fd), fmt.Sprintf("/dev/net/tun:%s:%d", name, i)))
	}
	for i := 1; i < queues; i++ {
		if err := t.setAttached(i, false); err != nil {
			t.close()
			return nil, err
		}
	}
	return t, nil
}

// setHostMAC gives the TAP that fd (its first queue) is attached to
// HostMAC(guest) if the attach created it: if no interface had its name
// before (before is 0) or one of another index did (a TAP going away
// with the process that held it). A TAP that was there stays as its
// owner made it. The TAP is down: nothing has brought up an interface
// that did not exist a moment ago.
func (t *tap) setHostMAC(fd, before int, guest stdnet.HardwareAddr) error {
	after, err := ifIndex(t.name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	if before != 0 && before == after {
		return nil
	}
	mac := HostMAC(guest)
	if err := tapabi.SetMAC(fd, mac); err != nil {
		return fmt.Errorf("tap %s: the host side's MAC of the TAP govmm created: %w", t.name, err)
	}
	t.hostMAC = mac
	return nil
}

// ifIndex is the index of the network interface called name, 0 if there
// is none (SIOCGIFINDEX, which any socket takes).
func ifIndex(name string) (int, error) {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("a socket to look the interface up: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	switch err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); {
	case errors.Is(err, unix.ENODEV):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("SIOCGIFINDEX: %w", err)
	}
	return int(ifr.Uint32()), nil
}

// attach puts fd on the TAP called name, with 12-byte virtio-net
// headers and no offloaded packets towards the guest until its driver
// asks for them. With mq the TAP is (or must already be) a multiqueue
// one; without, a multiqueue TAP that exists is attached all the same,
// as its one queue.
func attach(fd int, name string, mq bool) error {
	feat, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
	if err != nil {
		return fmt.Errorf("TUNGETFEATURES: %w", err)
	}
	if feat&unix.IFF_VNET_HDR == 0 {
		return errors.New("the host's TUN driver has no IFF_VNET_HDR")
	}
	if mq && feat&unix.IFF_MULTI_QUEUE == 0 {
		return errors.New("the host's TUN driver has no IFF_MULTI_QUEUE (multiqueue TAPs)")
	}
	set := func(flags uint16) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(flags)
		return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if mq {
		err = set(flags | unix.IFF_MULTI_QUEUE)
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("TUNSETIFF with IFF_MULTI_QUEUE: %w (a TAP that exists must have been made multiqueue, as by \"ip tuntap add NAME mode tap multi_queue vnet_hdr\"; queues=1 takes any TAP)", err)
		}
	} else {
		err = set(flags)
		if errors.Is(err, unix.EINVAL) {
			// An existing multiqueue TAP refuses a single-queue
			// attach.
			err = set(flags | unix.IFF_MULTI_QUEUE)
		}
	}
	if err != nil {
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

func (t *tap) queues() []*os.File { return t.fs }

// control runs f on queue i's descriptor.
func (t *tap) control(i int, f func(fd int) error) error {
	rc, err := t.fs[i].SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = f(int(fd)) }); err != nil {
		return err
	}
	return ierr
}

// setOffload tells the TAP which offloaded packets the guest takes. The
// setting is the TAP's, made through queue 0, which is always attached.
func (t *tap) setOffload(flags int) error {
	if err := t.control(0, func(fd int) error { return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, flags) }); err != nil {
		return fmt.Errorf("tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, err)
	}
	return nil
}

// setAttached attaches or detaches queue i with TUNSETQUEUE.
func (t *tap) setAttached(i int, on bool) error {
	flag, what := uint16(unix.IFF_DETACH_QUEUE), "detach"
	if on {
		flag, what = unix.IFF_ATTACH_QUEUE, "attach"
	}
	err := t.control(i, func(fd int) error {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			return err
		}
		ifr.SetUint16(flag)
		return unix.IoctlIfreq(fd, unix.TUNSETQUEUE, ifr)
	})
	if err != nil {
		return fmt.Errorf("tap %s: TUNSETQUEUE (%s queue %d): %w", t.name, what, i, err)
	}
	return nil
}

func (t *tap) close() error {
	var first error
	for _, f := range t.fs {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// writev sends one packet (header first) made of bufs through f.
func writev(f *os.File, bufs [][]byte) error {
	rc, err := f.SyscallConn()
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
