package vhost

import (
	"fmt"
	"sync"

	"govmm/virtio/vhost/abi"
)

// Fake is an Ioctls that records the requests a device makes, for tests
// of vhost devices on hosts without the kernel module: each request as a
// line ("VHOST_SET_VRING_NUM 0 256"), and GET_VRING_BASE answers Bases.
type Fake struct {
	mu sync.Mutex
	// Offer is what VHOST_GET_FEATURES answers.
	Offer uint64
	// Bases answers VHOST_GET_VRING_BASE by ring.
	Bases map[uint32]uint32
	// Fail makes the request of this number fail with EINVAL.
	Fail uintptr
	log  []string
}

// Log returns the requests made so far and forgets them.
func (f *Fake) Log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.log
	f.log = nil
	return l
}

func (f *Fake) rec(req uintptr, format string, a ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, fmt.Sprintf(format, a...))
	if req == f.Fail {
		return fmt.Errorf("fake vhost: %s: invalid argument", format)
	}
	return nil
}

var names = map[uintptr]string{
	abi.SetOwner: "VHOST_SET_OWNER", abi.ResetOwner: "VHOST_RESET_OWNER", abi.GetFeatures: "VHOST_GET_FEATURES",
	abi.SetFeatures: "VHOST_SET_FEATURES", abi.SetLogBase: "VHOST_SET_LOG_BASE", abi.SetVringNum: "VHOST_SET_VRING_NUM",
	abi.SetVringBase: "VHOST_SET_VRING_BASE", abi.GetVringBase: "VHOST_GET_VRING_BASE", abi.SetVringKick: "VHOST_SET_VRING_KICK",
	abi.SetVringCall: "VHOST_SET_VRING_CALL", abi.SetVringErr: "VHOST_SET_VRING_ERR", abi.NetSetBackend: "VHOST_NET_SET_BACKEND",
	abi.VsockSetCID: "VHOST_VSOCK_SET_GUEST_CID", abi.VsockSetRunning: "VHOST_VSOCK_SET_RUNNING",
}

func name(req uintptr) string {
	if n, ok := names[req]; ok {
		return n
	}
	return fmt.Sprintf("%#x", req)
}

func (f *Fake) Ioctl(req uintptr) error { return f.rec(req, "%s", name(req)) }
func (f *Fake) GetU64(req uintptr) (uint64, error) {
	return f.Offer, f.rec(req, "%s", name(req))
}
func (f *Fake) SetU64(req uintptr, v uint64) error { return f.rec(req, "%s %#x", name(req), v) }
func (f *Fake) SetInt(req uintptr, v int32) error  { return f.rec(req, "%s %d", name(req), v) }
func (f *Fake) SetState(req uintptr, s abi.VringState) error {
	return f.rec(req, "%s %d %d", name(req), s.Index, s.Num)
}
func (f *Fake) GetState(req uintptr, i uint32) (abi.VringState, error) {
	f.mu.Lock()
	n := f.Bases[i]
	f.mu.Unlock()
	return abi.VringState{Index: i, Num: n}, f.rec(req, "%s %d", name(req), i)
}
func (f *Fake) SetFile(req uintptr, v abi.VringFile) error {
	return f.rec(req, "%s %d %d", name(req), v.Index, v.Fd)
}
func (f *Fake) SetAddr(a abi.VringAddr) error {
	if a.Flags&abi.VringFLog != 0 {
		return f.rec(abi.SetVringAddr, "VHOST_SET_VRING_ADDR %d %#x %#x %#x log %#x", a.Index, a.DescUser, a.AvailUser, a.UsedUser, a.LogGuestAddr)
	}
	return f.rec(abi.SetVringAddr, "VHOST_SET_VRING_ADDR %d %#x %#x %#x", a.Index, a.DescUser, a.AvailUser, a.UsedUser)
}
func (f *Fake) SetMem(rs []abi.MemoryRegion) error {
	s := "VHOST_SET_MEM_TABLE"
	for _, r := range rs {
		s += fmt.Sprintf(" %#x+%#x@%#x", r.GuestPhys, r.Size, r.UserAddr)
	}
	return f.rec(abi.SetMemTable, "%s", s)
}
func (f *Fake) Close() error { return f.rec(0, "close") }
