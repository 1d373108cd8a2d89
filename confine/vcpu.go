package confine

import (
	"fmt"
	"slices"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// vcpuAllowed are the process filter's unconditional calls a vCPU thread
// keeps, each with what it needs it for. A vCPU thread runs KVM_RUN (or
// MSHV_RUN_VP and, on MSHV, the instruction emulator) and the device
// handlers of the port and MMIO accesses it traps; the Go runtime runs on
// it too: a locked thread runs only its goroutine, but that goroutine
// allocates, may start a garbage collection, and is preempted by signals.
var vcpuAllowed = []struct{ name, why string }{
	{"futex", "waking device goroutines (doorbells, a stopped VM), runtime locks, parking while the VM is paused"},
	{"sched_yield", "runtime spin-waits"},
	{"nanosleep", "runtime sleeps (stopping the world for a collection this thread starts)"},
	{"clock_gettime", "time, when the vDSO does not answer (device timers)"},
	{"munmap", "the runtime's heap and stacks"},
	{"madvise", "the runtime's heap"},
	{"exit", "the thread ends with its vCPU"},
	{"exit_group", "a fatal runtime error on this thread ends the process"},
	{"rt_sigaction", "a crash on this thread: the runtime restores the default action before it re-raises the signal"},
	{"rt_sigprocmask", "runtime signal masks, the thread's as it ends"},
	{"rt_sigreturn", "return from the kick and preemption signals' handler"},
	{"sigaltstack", "the thread's signal stack is dropped as it ends"},
	{"restart_syscall", "a system call interrupted by a signal resumes"},
	{"gettid", "the thread a kick signals, stored at each entry"},
	{"getpid", "kicking the other vCPUs (a VM the guest stops), preempting other threads (tgkill needs the process id)"},
	{"getrandom", "the runtime's random numbers"},
	{"read", "eventfds"},
	{"write", "the serial console's output, the log, eventfds (irqfds, the netpoller's wake-up when a device timer moves)"},
	{"close", "eventfds of the routes and doorbells the guest reprograms, vsock connections a device reset ends"},
	{"fcntl", "new eventfds (F_GETFL as os.NewFile wraps them, F_DUPFD_CLOEXEC)"},
	{"eventfd2", "irqfds and doorbells the guest's programming adds (MSI-X vectors, moved BARs)"},
	{"epoll_ctl", "those eventfds join the netpoller, and leave it when closed"},
	{"epoll_pwait", "a garbage collection this thread starts polls the netpoller as it restarts the world"},
	{"epoll_wait", "as epoll_pwait"},
}

// vcpuRefused are the process filter's calls a vCPU thread never makes,
// with who makes them instead. TestVCPURolePartition keeps these two lists
// and the process filter's in step: a call added to the process filter
// must be placed in one of them.
var vcpuRefused = []struct{ name, why string }{
	{"openat", "snapshots (the control socket's goroutine)"},
	{"newfstatat", "snapshots"},
	{"fstat", "snapshots"},
	{"lseek", "snapshots (holes of the memory file)"},
	{"fsync", "snapshots"},
	{"fdatasync", "snapshots, virtio-blk flush (the disk's workers)"},
	{"ftruncate", "snapshots"},
	{"fallocate", "virtio-blk discard and write-zeroes (the disk's workers)"},
	{"mkdirat", "snapshots"},
	{"unlinkat", "snapshots, the control socket at exit"},
	{"renameat", "snapshots"},
	{"pread64", "virtio-blk (the disk's workers), /proc/self/pagemap (snapshots); allowed on vCPU threads only with a passed-through VFIO device (Options.VCPUDeviceIO)"},
	{"pwrite64", "as pread64"},
	{"writev", "virtio-net's transmit queue threads (their own filter allows it on the TAP's descriptors alone)"},
	{"preadv", "virtio-blk (the disk's workers)"},
	{"pwritev", "as preadv"},
	{"accept4", "the control socket's goroutine"},
	{"connect", "migration, vsock (their goroutines)"},
	{"getsockopt", "the control socket, migration"},
	{"setsockopt", "migration"},
	{"getsockname", "sockets"},
	{"getpeername", "sockets"},
	{"shutdown", "migration, vsock"},
	{"sendto", "sockets, name resolution"},
	{"recvfrom", "sockets, name resolution"},
	{"sendmsg", "sockets"},
	{"recvmsg", "sockets"},
	{"socket", "the control socket, migration, vsock"},
	{"getuid", "the control socket's peer check"},
	{"sysinfo", "migration's size check"},
	{"uname", "the net package"},
	{"epoll_create1", "the netpoller, which exists before the guest runs"},
	{"clone", "no thread is created from a vCPU thread: the runtime hands thread creation on a locked thread to its template thread"},
	{"set_robust_list", "a new C library thread (a cgo build), never a vCPU thread"},
	{"rseq", "as set_robust_list"},
	{"sched_getaffinity", "the runtime's GOMAXPROCS update (sysmon's thread)"},
	{"prctl", "the vCPU thread names itself before it takes its filter"},
	{"seccomp", "the vCPU thread's own filter is its last"},
}

// maxVCPURoles bounds the vCPU index a filter can name in its
// SECCOMP_RET_DATA (govmm has at most 255 vCPUs).
const maxVCPURoles = 256

// roleProcess is the process filter's role: a thread that is not a
// vCPU's or a device thread's. vCPU index i is role roleVCPU0+i.
// roleDiskWorker is a virtio-blk worker thread's (worker.go),
// roleNetQueue a virtio-net queue thread's and roleVsockQueue a
// virtio-vsock queue thread's (devthread.go). The SIGSYS handler's
// assembly holds numRoles too.
const (
	roleProcess    = 0
	roleVCPU0      = 1
	roleDiskWorker = roleVCPU0 + maxVCPURoles
	roleNetQueue   = roleDiskWorker + 1
	roleVsockQueue = roleNetQueue + 1
	numRoles       = roleVsockQueue + 1
)

// vcpuNames are the calls a vCPU thread's filter allows whatever their
// arguments.
func vcpuNames(o Options) []string {
	var out []string
	for _, a := range vcpuAllowed {
		out = append(out, a.name)
	}
	if o.VCPUDeviceIO {
		out = append(out, "pread64", "pwrite64")
	}
	return out
}

// vcpuCalls lists the calls a vCPU thread's filter allows, conditional
// ones included (each keeps the process filter's conditions).
func vcpuCalls(o Options) []string {
	var out []string
	for _, c := range vcpuConditional() {
		out = append(out, c.name)
	}
	return append(out, vcpuNames(o)...)
}

// vcpuConditional are the process filter's conditional calls a vCPU
// thread keeps, with the same conditions: ioctl by request (the vCPU
// ioctls, and the VM's for the interrupt routes, doorbells and BARs the
// guest programs through this thread; the request list is the process
// filter's), mmap and mprotect never executable (the heap; pc-testdev's
// page flush), tgkill and kill only of this process (kicks, preemption,
// a crash re-raising its signal).
func vcpuConditional() []conditionalCall {
	keep := []string{"ioctl", "mmap", "mprotect", "tgkill", "kill"}
	var out []conditionalCall
	for _, c := range conditional() {
		if slices.Contains(keep, c.name) {
			out = append(out, c)
		}
	}
	return out
}

// deviceConditional is a device thread role's conditional calls: the
// vCPU threads', with ioctl narrowed to the role's requests reqs and the
// architecture's device thread requests (archInfo.deviceIoctls), or left
// out (refused) when there are none.
func deviceConditional(reqs []ioctlReq) []conditionalCall {
	reqs = append(slices.Clone(reqs), hostArch.deviceIoctls...)
	var out []conditionalCall
	for _, c := range vcpuConditional() {
		if c.name == "ioctl" {
			if len(reqs) == 0 {
				continue
			}
			c = ioctlCall(reqs)
		}
		out = append(out, c)
	}
	return out
}

// vcpuProgram assembles vCPU index's filter.
func vcpuProgram(mode SeccompMode, index int, o Options) ([]bpf.Instruction, error) {
	if index < 0 || index >= maxVCPURoles {
		return nil, fmt.Errorf("vCPU %d: a filter names vCPUs 0 to %d", index, maxVCPURoles-1)
	}
	return assemble(defaultAction(mode, uint16(roleVCPU0+index)), vcpuConditional(), vcpuNames(o))
}

// vcpuTemplate is the vCPU filter assembled once per VM (for vCPU 0)
// and copied for each vCPU with its role patched in: assembling it takes
// a few hundred microseconds, which would otherwise delay every vCPU's
// first entry, the BSP's on the way to the guest's first instruction.
var vcpuTemplate struct {
	sync.Mutex
	mode     SeccompMode
	deviceIO bool
	raw      []unix.SockFilter
}

// vcpuFilter returns vCPU index's filter, assembled.
func vcpuFilter(mode SeccompMode, index int, o Options) ([]unix.SockFilter, error) {
	if index < 0 || index >= maxVCPURoles {
		return nil, fmt.Errorf("vCPU %d: a filter names vCPUs 0 to %d", index, maxVCPURoles-1)
	}
	vcpuTemplate.Lock()
	defer vcpuTemplate.Unlock()
	if vcpuTemplate.raw == nil || vcpuTemplate.mode != mode || vcpuTemplate.deviceIO != o.VCPUDeviceIO {
		prog, err := vcpuProgram(mode, 0, o)
		if err != nil {
			return nil, err
		}
		raw, err := rawFilter(prog)
		if err != nil {
			return nil, err
		}
		vcpuTemplate.mode, vcpuTemplate.deviceIO, vcpuTemplate.raw = mode, o.VCPUDeviceIO, raw
	}
	out := slices.Clone(vcpuTemplate.raw)
	from, to := defaultAction(mode, roleVCPU0), defaultAction(mode, uint16(roleVCPU0+index))
	for i, in := range out {
		if in.Code == unix.BPF_RET|unix.BPF_K && in.K == from {
			out[i].K = to
		}
	}
	return out, nil
}

// prepareVCPUThreads does before the vCPU filters what a vCPU thread
// would otherwise do later under one: the local time zone is read from
// /etc/localtime the first time a time is shown in it (the first log
// line's time stamp, which may be a warning a device handler logs), an
// openat the vCPU filter refuses. Apply calls it, off the vCPUs' way to
// the guest; VCPUThread again, for callers without Apply.
func prepareVCPUThreads() { time.Now().Zone() }

// VCPUThread names the calling thread "vcpuN" and gives it vCPU index's
// own filter, on top of the process filter Apply installed (with
// o.Seccomp off or "process" it does nothing): what a vCPU thread may do is then the
// intersection of the two allowlists (see vcpuAllowed and vcpuRefused).
// A call the vCPU filter refuses ends the process with a message that
// names the call and the vCPU (or, with SeccompLog, is logged by the
// kernel under the thread's name).
//
// Call it after Apply, on the vCPU's thread, locked to its goroutine with
// runtime.LockOSThread, before the vCPU first enters the guest; that
// goroutine must end without unlocking the thread, so that the runtime
// ends the thread with it instead of running other goroutines under the
// narrower filter.
func VCPUThread(index int, o Options) error {
	if o.Seccomp == SeccompOff || o.Seccomp == SeccompProcess {
		return nil
	}
	filter, err := vcpuFilter(o.Seccomp, index, o)
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	name := []byte(fmt.Sprintf("vcpu%d\x00", index))
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0); err != nil {
		return fmt.Errorf("name vCPU %d's thread: %w", index, err)
	}
	prepareVCPUThreads()
	if err := loadRaw(filter, false); err != nil {
		return fmt.Errorf("seccomp: vCPU %d's filter: %w", index, err)
	}
	vcpuTestHook(index)
	return nil
}
