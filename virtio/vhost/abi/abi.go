// Package abi is the Linux vhost user ABI (include/uapi/linux/vhost.h and
// vhost_types.h) that govmm's kernel-served virtio devices speak: the
// device-independent requests (owner, features, memory table, vrings) and
// vhost-vsock's two. It is the only place in the vhost code that issues
// raw ioctls or uses unsafe; abi_test.go checks every struct's size and
// field offsets, and every request number, against the kernel header's.
package abi

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// vhostType is VHOST_VIRTIO, the ioctl type of every vhost request.
const vhostType = 0xaf

// ioc encodes a request as the generic _IOC does (x86-64 and arm64).
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | vhostType<<8 | nr }

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// Request numbers.
var (
	GetFeatures     = ioc(iocRead, 0x00, 8)
	SetFeatures     = ioc(iocWrite, 0x00, 8)
	SetOwner        = ioc(iocNone, 0x01, 0)
	ResetOwner      = ioc(iocNone, 0x02, 0)
	SetMemTable     = ioc(iocWrite, 0x03, unsafe.Sizeof(Memory{}))
	SetLogBase      = ioc(iocWrite, 0x04, 8)
	SetVringNum     = ioc(iocWrite, 0x10, unsafe.Sizeof(VringState{}))
	SetVringAddr    = ioc(iocWrite, 0x11, unsafe.Sizeof(VringAddr{}))
	SetVringBase    = ioc(iocWrite, 0x12, unsafe.Sizeof(VringState{}))
	GetVringBase    = ioc(iocRead|iocWrite, 0x12, unsafe.Sizeof(VringState{}))
	SetVringKick    = ioc(iocWrite, 0x20, unsafe.Sizeof(VringFile{}))
	SetVringCall    = ioc(iocWrite, 0x21, unsafe.Sizeof(VringFile{}))
	SetVringErr     = ioc(iocWrite, 0x22, unsafe.Sizeof(VringFile{}))
	NetSetBackend   = ioc(iocWrite, 0x30, unsafe.Sizeof(VringFile{}))
	VsockSetCID     = ioc(iocWrite, 0x60, 8)
	VsockSetRunning = ioc(iocWrite, 0x61, 4)
)

// Feature bits of vhost itself.
const (
	// FLogAll (VHOST_F_LOG_ALL) asks the backend to log every write to
	// guest memory in the bitmap at VHOST_SET_LOG_BASE.
	FLogAll = 1 << 26
)

// VringFLog is VHOST_VRING_F_LOG (1 << VHOST_VRING_F_LOG, bit 0 of
// vhost_vring_addr.flags): the backend logs its writes to the used ring
// at LogGuestAddr in the dirty log.
const VringFLog = 1 << 0

// LogPageSize is VHOST_PAGE_SIZE, the guest memory one bit of the dirty
// log stands for.
const LogPageSize = 0x1000

// VringState is struct vhost_vring_state: a ring's size
// (VHOST_SET_VRING_NUM) or its next available index (VHOST_SET/GET_VRING_BASE).
type VringState struct {
	Index uint32
	Num   uint32
}

// VringFile is struct vhost_vring_file: an eventfd for a ring (Fd -1
// unbinds it).
type VringFile struct {
	Index uint32
	Fd    int32
}

// VringAddr is struct vhost_vring_addr: a split ring's parts as
// addresses in the VMM's own address space.
type VringAddr struct {
	Index        uint32
	Flags        uint32
	DescUser     uint64
	UsedUser     uint64
	AvailUser    uint64
	LogGuestAddr uint64
}

// Memory is struct vhost_memory's header; the regions follow it.
type Memory struct {
	NRegions uint32
	Padding  uint32
}

// MemoryRegion is struct vhost_memory_region: guest RAM at GuestPhys,
// Size bytes long, mapped at UserAddr in the VMM.
type MemoryRegion struct {
	GuestPhys    uint64
	Size         uint64
	UserAddr     uint64
	FlagsPadding uint64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// Ioctl issues a request that takes no argument.
func Ioctl(fd int, req uintptr) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0)
	if e != 0 {
		return e
	}
	return nil
}

// GetU64 issues a request that reads a __u64 (VHOST_GET_FEATURES).
func GetU64(fd int, req uintptr) (uint64, error) {
	var v uint64
	err := ioctl(fd, req, unsafe.Pointer(&v))
	return v, err
}

// SetU64 issues a request that writes a __u64 (features, log base, CID).
func SetU64(fd int, req uintptr, v uint64) error { return ioctl(fd, req, unsafe.Pointer(&v)) }

// SetInt issues a request that writes an int (VHOST_VSOCK_SET_RUNNING).
func SetInt(fd int, req uintptr, v int32) error { return ioctl(fd, req, unsafe.Pointer(&v)) }

// SetState issues VHOST_SET_VRING_NUM or VHOST_SET_VRING_BASE.
func SetState(fd int, req uintptr, s VringState) error { return ioctl(fd, req, unsafe.Pointer(&s)) }

// GetState issues VHOST_GET_VRING_BASE for ring index.
func GetState(fd int, req uintptr, index uint32) (VringState, error) {
	s := VringState{Index: index}
	err := ioctl(fd, req, unsafe.Pointer(&s))
	return s, err
}

// SetFile issues VHOST_SET_VRING_KICK, _CALL or _ERR.
func SetFile(fd int, req uintptr, f VringFile) error { return ioctl(fd, req, unsafe.Pointer(&f)) }

// SetAddr issues VHOST_SET_VRING_ADDR.
func SetAddr(fd int, a VringAddr) error { return ioctl(fd, SetVringAddr, unsafe.Pointer(&a)) }

// MemTable encodes struct vhost_memory with its regions, as
// VHOST_SET_MEM_TABLE reads it.
func MemTable(regions []MemoryRegion) []byte {
	hdr := Memory{NRegions: uint32(len(regions))}
	n := unsafe.Sizeof(hdr) + uintptr(len(regions))*unsafe.Sizeof(MemoryRegion{})
	b := make([]byte, n)
	*(*Memory)(unsafe.Pointer(&b[0])) = hdr
	for i, r := range regions {
		*(*MemoryRegion)(unsafe.Pointer(&b[unsafe.Sizeof(hdr)+uintptr(i)*unsafe.Sizeof(r)])) = r
	}
	return b
}

// SetMem issues VHOST_SET_MEM_TABLE with the regions.
func SetMem(fd int, regions []MemoryRegion) error {
	if len(regions) == 0 {
		return fmt.Errorf("VHOST_SET_MEM_TABLE: no regions")
	}
	b := MemTable(regions)
	return ioctl(fd, SetMemTable, unsafe.Pointer(&b[0]))
}

// UserAddr is the address of b's first byte in the VMM's address space
// (what vhost reads guest RAM and rings through).
func UserAddr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// Log is a dirty log as VHOST_SET_LOG_BASE takes it: a bitmap in its own
// anonymous mapping, bit p%64 of word p/64 for guest page p (the kernel
// sets bit p%8 of byte p/8, which is the same bit on a little-endian
// host), read and cleared with atomic swaps while the kernel sets bits.
type Log struct {
	Words []atomic.Uint64
	m     []byte
}

// MapLog maps a zeroed log for guest pages below pages.
func MapLog(pages uint64) (*Log, error) {
	words := (pages + 63) / 64
	if words == 0 {
		words = 1
	}
	m, err := unix.Mmap(-1, 0, int(words*8), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map a vhost dirty log of %d pages: %w", pages, err)
	}
	return &Log{Words: unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&m[0])), words), m: m}, nil
}

// Addr is the log's address, VHOST_SET_LOG_BASE's argument.
func (l *Log) Addr() uint64 { return UserAddr(l.m) }

// Unmap unmaps the log; the backend must no longer log into it.
func (l *Log) Unmap() error {
	l.Words = nil
	return unix.Munmap(l.m)
}
