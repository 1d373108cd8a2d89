package confine

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// A virtio-blk worker thread reads requests out of guest memory and runs
// them against the disk image: after the vCPU threads, the code nearest
// to what a guest controls. Like a vCPU thread it gets a filter of its
// own on top of the process filter: the vCPU threads' allowlist (the Go
// runtime's needs, eventfds, the interrupt a finished request raises)
// with the image's calls added and no ioctl at all (diskWorkerIoctls), so
// that it cannot open a file, make a socket, start a process or ask
// anything of KVM, MSHV, VFIO or vhost. The virtio-net and virtio-vsock queues'
// goroutines have roles of their own (devthread.go); the other device
// goroutines are not locked to threads of their own and stay under the
// process filter.

// diskWorkerExtra are the calls a disk worker makes besides a vCPU
// thread's.
var diskWorkerExtra = []struct{ name, why string }{
	{"pread64", "reads of the image"},
	{"pwrite64", "writes to the image"},
	{"preadv", "reads of the image into a request's buffers"},
	{"pwritev", "writes of a request's buffers to the image"},
	{"fdatasync", "FLUSH"},
	{"fallocate", "DISCARD and WRITE_ZEROES"},
}

// diskWorkerNames are the calls a disk worker's filter allows whatever
// their arguments.
func diskWorkerNames() []string {
	out := vcpuNames(Options{})
	for _, c := range diskWorkerExtra {
		out = append(out, c.name)
	}
	return out
}

// diskWorkerFilter is the disk workers' filter, assembled once per mode.
var diskWorkerFilter struct {
	sync.Mutex
	mode SeccompMode
	raw  []unix.SockFilter
}

func diskWorkerRaw(mode SeccompMode) ([]unix.SockFilter, error) {
	diskWorkerFilter.Lock()
	defer diskWorkerFilter.Unlock()
	if diskWorkerFilter.raw == nil || diskWorkerFilter.mode != mode {
		prog, err := assemble(defaultAction(mode, roleDiskWorker), deviceConditional(diskWorkerIoctls), diskWorkerNames())
		if err != nil {
			return nil, err
		}
		raw, err := rawFilter(prog)
		if err != nil {
			return nil, err
		}
		diskWorkerFilter.mode, diskWorkerFilter.raw = mode, raw
	}
	return diskWorkerFilter.raw, nil
}

// DiskWorkerThread names the calling thread (name, at most 15 bytes, as
// "vda-io0") and gives it the disk workers' filter, on top of the process
// filter Apply installed; with o.Seccomp off or "process" it does
// nothing. As for VCPUThread, call it after Apply, on a thread locked to
// its goroutine that ends without unlocking it.
func DiskWorkerThread(name string, o Options) error {
	if o.Seccomp == SeccompOff || o.Seccomp == SeccompProcess {
		return nil
	}
	filter, err := diskWorkerRaw(o.Seccomp)
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	if err := nameThread(name); err != nil {
		return fmt.Errorf("name disk worker thread %s: %w", name, err)
	}
	prepareVCPUThreads()
	if err := loadRaw(filter, false); err != nil {
		return fmt.Errorf("seccomp: disk worker %s's filter: %w", name, err)
	}
	return nil
}
