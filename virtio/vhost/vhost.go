// Package vhost drives a Linux kernel vhost backend (/dev/vhost-vsock,
// and later /dev/vhost-net): the device-independent half that every
// vhost device shares. It takes ownership of the backend, negotiates
// features, gives it guest RAM as a memory table of the VMM's own
// mappings, and sets up, starts and stops its virtqueues (size, ring
// addresses, next available index, and the kick and call eventfds).
//
// It exists so that a virtio device's data path can run in the host
// kernel with no VMM thread in it: the guest's doorbell is an ioeventfd
// whose eventfd the kernel polls (the kick), and the kernel signals an
// eventfd bound as an irqfd to the queue's MSI-X route (the call). The
// device-specific requests (vhost-vsock's CID and running switch) are
// the device package's; the raw ABI is in virtio/vhost/abi.
package vhost

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"govmm/virtio/vhost/abi"
)

// Region is one range of guest RAM and its mapping in the VMM.
type Region struct {
	GPA  uint64
	Host []byte
}

// Vring is one split virtqueue as the driver programmed it: its size,
// the guest physical addresses of its three parts, and the available
// index the backend starts from.
type Vring struct {
	Size              uint16
	Desc, Avail, Used uint64
	Base              uint16
	// Log has the kernel log its writes to the used ring in the dirty
	// log (VHOST_VRING_F_LOG; SetLogBase, VHOST_F_LOG_ALL).
	Log bool
}

// Ioctls is the raw request seam: the real backend issues ioctls on its
// file; tests put a fake behind it to check what a device asks of the
// kernel, in which order.
type Ioctls interface {
	Ioctl(req uintptr) error
	GetU64(req uintptr) (uint64, error)
	SetU64(req uintptr, v uint64) error
	SetInt(req uintptr, v int32) error
	SetState(req uintptr, s abi.VringState) error
	GetState(req uintptr, index uint32) (abi.VringState, error)
	SetFile(req uintptr, f abi.VringFile) error
	SetAddr(a abi.VringAddr) error
	SetMem(regions []abi.MemoryRegion) error
	Close() error
}

// Backend is one vhost device file. Its methods are safe for concurrent
// use (one lock orders them).
type Backend struct {
	name     string
	io       Ioctls
	mu       sync.Mutex
	features uint64
	regions  []Region
}

// Open opens the vhost device at path (as "/dev/vhost-vsock"), makes the
// calling process its owner (VHOST_SET_OWNER: the kernel's worker thread
// then runs in this process's address space and cgroups) and reads the
// features the kernel offers.
func Open(path string) (*Backend, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		hint := ""
		if os.IsNotExist(err) {
			hint = " (load the kernel module: modprobe " + moduleOf(path) + ")"
		}
		return nil, fmt.Errorf("open %s: %w%s", path, err, hint)
	}
	return New(path, fileIoctls{fd})
}

func moduleOf(path string) string {
	switch path {
	case "/dev/vhost-vsock":
		return "vhost_vsock"
	case "/dev/vhost-net":
		return "vhost_net"
	}
	return "the vhost module"
}

// New takes ownership of a backend behind io (the real file, or a
// test's fake) and reads its features.
func New(name string, io Ioctls) (*Backend, error) {
	b := &Backend{name: name, io: io}
	if err := io.Ioctl(abi.SetOwner); err != nil {
		io.Close()
		return nil, fmt.Errorf("%s: VHOST_SET_OWNER: %w", name, err)
	}
	f, err := io.GetU64(abi.GetFeatures)
	if err != nil {
		io.Close()
		return nil, fmt.Errorf("%s: VHOST_GET_FEATURES: %w", name, err)
	}
	b.features = f
	return b, nil
}

// Name is the device file's path.
func (b *Backend) Name() string { return b.name }

// Features are the features the kernel offers (virtio feature bits and
// vhost's own, such as VHOST_F_LOG_ALL).
func (b *Backend) Features() uint64 { return b.features }

// IO is the request seam, for the device-specific requests.
func (b *Backend) IO() Ioctls { return b.io }

// SetFeatures acks the features the driver negotiated; any the kernel
// does not offer is refused here, naming them.
func (b *Backend) SetFeatures(f uint64) error {
	if x := f &^ b.features; x != 0 {
		return fmt.Errorf("%s: features %#x are not offered by the kernel (%#x)", b.name, x, b.features)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.io.SetU64(abi.SetFeatures, f); err != nil {
		return fmt.Errorf("%s: VHOST_SET_FEATURES %#x: %w", b.name, f, err)
	}
	return nil
}

// SetMemTable gives the kernel guest RAM: each region's guest physical
// range and where the VMM maps it. Rings and buffers are found through
// it, so every address a queue uses must lie in one region.
func (b *Backend) SetMemTable(regions []Region) error {
	var rs []abi.MemoryRegion
	for _, r := range regions {
		if len(r.Host) == 0 {
			continue
		}
		rs = append(rs, abi.MemoryRegion{GuestPhys: r.GPA, Size: uint64(len(r.Host)), UserAddr: abi.UserAddr(r.Host)})
	}
	if len(rs) == 0 {
		return fmt.Errorf("%s: no guest RAM to give the kernel", b.name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.io.SetMem(rs); err != nil {
		return fmt.Errorf("%s: VHOST_SET_MEM_TABLE (%d regions): %w", b.name, len(rs), err)
	}
	b.regions = append([]Region(nil), regions...)
	return nil
}

// userAddr translates [gpa, gpa+n) to the VMM's address of its first
// byte; the range must lie in one region.
func (b *Backend) userAddr(gpa, n uint64) (uint64, error) {
	for _, r := range b.regions {
		if gpa >= r.GPA && gpa-r.GPA < uint64(len(r.Host)) && n <= uint64(len(r.Host))-(gpa-r.GPA) {
			return abi.UserAddr(r.Host[gpa-r.GPA:]), nil
		}
	}
	return 0, fmt.Errorf("guest range %#x+%#x is not in one RAM region", gpa, n)
}

// SetVring programs ring i while it is stopped: size, addresses (as the
// VMM's addresses of the guest's rings) and the next available index.
func (b *Backend) SetVring(i int, v Vring) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, err := b.vringAddr(i, v)
	if err != nil {
		return fmt.Errorf("%s: %w", b.name, err)
	}
	idx := uint32(i)
	if err := b.io.SetState(abi.SetVringNum, abi.VringState{Index: idx, Num: uint32(v.Size)}); err != nil {
		return fmt.Errorf("%s: VHOST_SET_VRING_NUM %d for ring %d: %w", b.name, v.Size, i, err)
	}
	if err := b.io.SetAddr(a); err != nil {
		return fmt.Errorf("%s: VHOST_SET_VRING_ADDR for ring %d: %w", b.name, i, err)
	}
	if err := b.io.SetState(abi.SetVringBase, abi.VringState{Index: idx, Num: uint32(v.Base)}); err != nil {
		return fmt.Errorf("%s: VHOST_SET_VRING_BASE %d for ring %d: %w", b.name, v.Base, i, err)
	}
	return nil
}

// vringAddr is ring i's VHOST_SET_VRING_ADDR argument: its parts as the
// VMM's addresses, and the used ring's GPA for the dirty log. Called
// with mu held.
func (b *Backend) vringAddr(i int, v Vring) (abi.VringAddr, error) {
	n := uint64(v.Size)
	desc, err := b.userAddr(v.Desc, 16*n)
	if err != nil {
		return abi.VringAddr{}, fmt.Errorf("ring %d descriptors: %w", i, err)
	}
	avail, err := b.userAddr(v.Avail, 6+2*n)
	if err != nil {
		return abi.VringAddr{}, fmt.Errorf("ring %d available ring: %w", i, err)
	}
	used, err := b.userAddr(v.Used, 6+8*n)
	if err != nil {
		return abi.VringAddr{}, fmt.Errorf("ring %d used ring: %w", i, err)
	}
	a := abi.VringAddr{Index: uint32(i), DescUser: desc, UsedUser: used, AvailUser: avail, LogGuestAddr: v.Used}
	if v.Log {
		a.Flags = abi.VringFLog
	}
	return a, nil
}

// SetKick sets the eventfd the kernel polls for ring i's doorbell.
func (b *Backend) SetKick(i, fd int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.io.SetFile(abi.SetVringKick, abi.VringFile{Index: uint32(i), Fd: int32(fd)}); err != nil {
		return fmt.Errorf("%s: VHOST_SET_VRING_KICK %d for ring %d: %w", b.name, fd, i, err)
	}
	return nil
}

// SetCall sets the eventfd the kernel signals when it used buffers of
// ring i and the driver wants an interrupt.
func (b *Backend) SetCall(i, fd int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.io.SetFile(abi.SetVringCall, abi.VringFile{Index: uint32(i), Fd: int32(fd)}); err != nil {
		return fmt.Errorf("%s: VHOST_SET_VRING_CALL %d for ring %d: %w", b.name, fd, i, err)
	}
	return nil
}

// SetRing programs ring i for a start, as a device hands its queue to
// the kernel: the ring (SetVring), its doorbell (SetKick) and its
// interrupt (SetCall).
func (b *Backend) SetRing(i int, v Vring, kick, call int) error {
	if err := b.SetVring(i, v); err != nil {
		return err
	}
	if err := b.SetKick(i, kick); err != nil {
		return err
	}
	return b.SetCall(i, call)
}

// VringBase reads ring i's next available index (VHOST_GET_VRING_BASE);
// the device must have stopped the ring first.
func (b *Backend) VringBase(i int) (uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, err := b.io.GetState(abi.GetVringBase, uint32(i))
	if err != nil {
		return 0, fmt.Errorf("%s: VHOST_GET_VRING_BASE for ring %d: %w", b.name, i, err)
	}
	return uint16(s.Num), nil
}

// Close closes the device file; the kernel stops and frees everything.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.io.Close()
}

// fileIoctls issues the requests on a vhost device file.
type fileIoctls struct{ fd int }

func (f fileIoctls) Ioctl(req uintptr) error                    { return abi.Ioctl(f.fd, req) }
func (f fileIoctls) GetU64(req uintptr) (uint64, error)         { return abi.GetU64(f.fd, req) }
func (f fileIoctls) SetU64(req uintptr, v uint64) error         { return abi.SetU64(f.fd, req, v) }
func (f fileIoctls) SetInt(req uintptr, v int32) error          { return abi.SetInt(f.fd, req, v) }
func (f fileIoctls) SetFile(req uintptr, v abi.VringFile) error { return abi.SetFile(f.fd, req, v) }
func (f fileIoctls) SetAddr(a abi.VringAddr) error              { return abi.SetAddr(f.fd, a) }
func (f fileIoctls) SetMem(rs []abi.MemoryRegion) error         { return abi.SetMem(f.fd, rs) }
func (f fileIoctls) SetState(req uintptr, s abi.VringState) error {
	return abi.SetState(f.fd, req, s)
}
func (f fileIoctls) GetState(req uintptr, i uint32) (abi.VringState, error) {
	return abi.GetState(f.fd, req, i)
}
func (f fileIoctls) Close() error { return unix.Close(f.fd) }
