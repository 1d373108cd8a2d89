package confine

import (
	"fmt"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The virtio-net and virtio-vsock data paths are, after the vCPU threads
// and the disk workers, the code nearest to what a guest controls: their
// queues' goroutines pop the chains the driver posts and parse what it
// transmits. Each of those goroutines locks its thread (at its first
// kick, or for a TAP reader at its first packet, once the VMM is
// confined), names it, and adds a filter of its own, as a disk worker
// does:
//
//   - a virtio-net queue thread (a queue's server, the control queue's,
//     or a TAP queue's reader) gets the vCPU threads' allowlist plus
//     writev on the device's TAP descriptors alone: a packet goes out as
//     its header and the guest's buffers in one writev; reads of the TAP
//     are read(2), which the vCPU allowlist has for eventfds; ioctl only
//     with TUNSETQUEUE (the control queue attaching a pair).
//   - a virtio-vsock queue thread (the receive, transmit and event
//     queues' servers) gets the vCPU threads' allowlist without ioctl: it parses
//     the guest's packets, buffers their data for the connection's
//     writer goroutine and closes the sockets of connections it tears
//     down (close, epoll_ctl). Connecting to a host Unix socket on a
//     guest's request, and moving a connection's bytes between its
//     socket and the rings, happen on a connection's own goroutines
//     (dial, reader, writer), which stay under the process filter: they
//     are not locked to threads, and a thread each would be three per
//     connection, up to 1024 connections.
//
// Neither may open a file, make a socket, connect or start a process.

// netQueueExtra are the calls a virtio-net queue thread makes besides a
// vCPU thread's.
var netQueueExtra = []struct{ name, why string }{
	{"writev", "a transmitted packet: its checked header, then the guest's buffers, in one writev to the TAP queue (only on the device's TAP descriptors)"},
}

// netQueueConditional is the vCPU threads' conditional calls with ioctl
// narrowed to netQueueIoctls, and writev on the TAP descriptors fds.
func netQueueConditional(fds []int) []conditionalCall {
	writev := conditionalCall{name: "writev"}
	for _, fd := range fds {
		writev.sets = append(writev.sets, []cond{{arg: 0, op: opEqual, val: uint64(fd)}})
	}
	return append(deviceConditional(netQueueIoctls), writev)
}

// netQueueRaw assembles a virtio-net queue thread's filter, for
// the TAP descriptors fds.
func netQueueRaw(mode SeccompMode, fds []int) ([]unix.SockFilter, error) {
	if len(fds) == 0 {
		return nil, fmt.Errorf("a virtio-net queue thread's filter needs the TAP's descriptors")
	}
	prog, err := assemble(defaultAction(mode, roleNetQueue), netQueueConditional(fds), vcpuNames(Options{}))
	if err != nil {
		return nil, err
	}
	return rawFilter(prog)
}

// netQueueFilters are the virtio-net queue threads' filters, one per
// mode and set of TAP descriptors (one per device), assembled once.
var netQueueFilters struct {
	sync.Mutex
	m map[string][]unix.SockFilter
}

func netQueueFilter(mode SeccompMode, fds []int) ([]unix.SockFilter, error) {
	key := fmt.Sprint(mode, fds)
	netQueueFilters.Lock()
	defer netQueueFilters.Unlock()
	if f, ok := netQueueFilters.m[key]; ok {
		return f, nil
	}
	f, err := netQueueRaw(mode, fds)
	if err != nil {
		return nil, err
	}
	if netQueueFilters.m == nil {
		netQueueFilters.m = map[string][]unix.SockFilter{}
	}
	netQueueFilters.m[key] = f
	return f, nil
}

// vsockQueueFilter is the virtio-vsock queue threads' filter, assembled
// once per mode.
var vsockQueueFilter struct {
	sync.Mutex
	mode SeccompMode
	raw  []unix.SockFilter
}

func vsockQueueRaw(mode SeccompMode) ([]unix.SockFilter, error) {
	vsockQueueFilter.Lock()
	defer vsockQueueFilter.Unlock()
	if vsockQueueFilter.raw == nil || vsockQueueFilter.mode != mode {
		prog, err := assemble(defaultAction(mode, roleVsockQueue), deviceConditional(vsockQueueIoctls), vcpuNames(Options{}))
		if err != nil {
			return nil, err
		}
		raw, err := rawFilter(prog)
		if err != nil {
			return nil, err
		}
		vsockQueueFilter.mode, vsockQueueFilter.raw = mode, raw
	}
	return vsockQueueFilter.raw, nil
}

// NetQueueThread names the calling thread (name, at most 15 bytes, as
// "net0-tx0") and gives it the virtio-net queue threads' filter, with
// writev allowed on the TAP descriptors tapFDs only, on top of the
// process filter Apply installed; with o.Seccomp off or "process" it does
// nothing. As for VCPUThread, call it after Apply, on a thread locked to
// its goroutine that ends without unlocking it.
func NetQueueThread(name string, tapFDs []int, o Options) error {
	if o.Seccomp == SeccompOff || o.Seccomp == SeccompProcess {
		return nil
	}
	filter, err := netQueueFilter(o.Seccomp, slices.Clone(tapFDs))
	if err != nil {
		return fmt.Errorf("seccomp: virtio-net thread %s: %w", name, err)
	}
	return roleThread(name, "virtio-net", filter)
}

// VsockQueueThread names the calling thread (as "vsock-txq") and gives it
// the virtio-vsock queue threads' filter, on top of the process filter;
// with o.Seccomp off or "process" it does nothing. Call it as
// NetQueueThread.
func VsockQueueThread(name string, o Options) error {
	if o.Seccomp == SeccompOff || o.Seccomp == SeccompProcess {
		return nil
	}
	filter, err := vsockQueueRaw(o.Seccomp)
	if err != nil {
		return fmt.Errorf("seccomp: virtio-vsock thread %s: %w", name, err)
	}
	return roleThread(name, "virtio-vsock", filter)
}

// roleThread names the calling thread and loads filter on it alone.
func roleThread(name, what string, filter []unix.SockFilter) error {
	if err := nameThread(name); err != nil {
		return fmt.Errorf("name %s thread %s: %w", what, name, err)
	}
	prepareVCPUThreads()
	if err := loadRaw(filter, false); err != nil {
		return fmt.Errorf("seccomp: %s thread %s's filter: %w", what, name, err)
	}
	return nil
}

// nameThread names the calling thread (PR_SET_NAME: 15 bytes at most,
// longer names are cut).
func nameThread(name string) error {
	b := []byte(name)
	if len(b) > 15 {
		b = b[:15]
	}
	b = append(b, 0)
	return unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0)
}
