// Package tapabi is the part of Linux's TAP ABI that golang.org/x/sys/unix
// has no typed call for: a TAP's hardware address, which the TUN driver
// sets and reads through the TAP's own /dev/net/tun file
// (SIOCSIFHWADDR and SIOCGIFHWADDR with a struct ifreq whose union holds
// ifr_hwaddr, a struct sockaddr). govmm gives a TAP it creates a host-side
// MAC derived from the guest's, so that a restored or migrated guest's
// neighbour entry for the host stays right (package virtio/net). It is
// the only place in the TAP code that uses unsafe or issues a raw ioctl;
// abi_test.go checks the struct's size and offsets and the request
// numbers against the kernel's headers.
package tapabi

import (
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Request numbers (linux/sockios.h). The TUN driver takes both on a file
// attached to a TAP (drivers/net/tun.c, __tun_chr_ioctl), so neither
// needs a socket.
const (
	SetHwaddr = unix.SIOCSIFHWADDR
	GetHwaddr = unix.SIOCGIFHWADDR
)

// IfreqHwaddr is struct ifreq (linux/if.h) with its union read as
// ifr_hwaddr, a struct sockaddr: the address family (ARPHRD_ETHER for a
// TAP) and the address in the first six bytes of Data. Pad covers the
// rest of the union (struct ifmap, 24 bytes, is its largest member).
type IfreqHwaddr struct {
	Name   [unix.IFNAMSIZ]byte
	Family uint16
	Data   [14]byte
	Pad    [8]byte
}

// ioctl issues request req with ifr on fd.
func ioctl(fd int, req uintptr, ifr *IfreqHwaddr) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(ifr)))
	if e != 0 {
		return e
	}
	return nil
}

// SetMAC gives the TAP that fd is attached to the Ethernet address mac
// (SIOCSIFHWADDR). The kernel refuses a multicast or all-zero address
// (EADDRNOTAVAIL) and, on a device that cannot change its address while
// up, one that is up (EBUSY; a TAP can).
func SetMAC(fd int, mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("SIOCSIFHWADDR: %q is not a 6-byte Ethernet address", mac)
	}
	ifr := IfreqHwaddr{Family: unix.ARPHRD_ETHER}
	copy(ifr.Data[:], mac)
	if err := ioctl(fd, SetHwaddr, &ifr); err != nil {
		return fmt.Errorf("SIOCSIFHWADDR %s: %w", mac, err)
	}
	return nil
}

// MAC reads the Ethernet address of the TAP that fd is attached to
// (SIOCGIFHWADDR).
func MAC(fd int) (net.HardwareAddr, error) {
	var ifr IfreqHwaddr
	if err := ioctl(fd, GetHwaddr, &ifr); err != nil {
		return nil, fmt.Errorf("SIOCGIFHWADDR: %w", err)
	}
	if ifr.Family != unix.ARPHRD_ETHER {
		return nil, fmt.Errorf("SIOCGIFHWADDR: address family %d, not ARPHRD_ETHER", ifr.Family)
	}
	return net.HardwareAddr(append([]byte(nil), ifr.Data[:6]...)), nil
}
