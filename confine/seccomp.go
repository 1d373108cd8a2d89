package confine

import (
	"fmt"
	"os"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// allowed lists, by name (x86-64's; arch.go maps the names another
// architecture spells differently), the system calls govmm makes once its
// VM runs, each with why. Those with conditions on their arguments are in
// conditional below. The hot ones come first: the filter tests them in
// order (the kernel's per-syscall cache skips the filter entirely for the
// unconditional ones).
var allowed = []struct{ name, why string }{
	// Go runtime: scheduling, memory, threads, signals, timers.
	{"futex", "goroutine parking, locks"},
	{"sched_yield", "runtime spin-waits"},
	{"nanosleep", "runtime sleeps (usleep)"},
	{"clock_gettime", "time, when the vDSO does not answer"},
	{"munmap", "runtime and guest-memory unmapping"},
	{"madvise", "runtime returns memory to the kernel"},
	{"exit", "a thread ends (a vCPU goroutine that exits locked)"},
	{"exit_group", "the process ends"},
	{"rt_sigaction", "os/signal registration"},
	{"rt_sigprocmask", "runtime signal masks; vCPU threads unblock the kick signal"},
	{"rt_sigreturn", "return from every signal handler"},
	{"sigaltstack", "each new runtime thread's signal stack"},
	{"restart_syscall", "a system call interrupted by a signal resumes"},
	{"gettid", "vCPU thread ids, for kicks"},
	{"getpid", "kicks (tgkill needs the process id)"},
	{"getuid", "the control socket admits this user's peers (SO_PEERCRED)"},
	{"getrandom", "runtime and map hash seeds"},
	{"set_robust_list", "C library threads (a cgo build: go run with a C compiler)"},
	{"rseq", "C library threads (a cgo build)"},
	{"sched_getaffinity", "the runtime's periodic GOMAXPROCS update; C library thread start (a cgo build)"},
	{"uname", "the net package checks the kernel's version"},
	// Files and descriptors: the console, the log, snapshots, eventfds.
	{"read", "console input, sockets, eventfds"},
	{"write", "console output, the log, sockets, snapshots, eventfds"},
	{"pread64", "virtio-blk reads, /proc/self/pagemap for a snapshot's holes"},
	{"pwrite64", "virtio-blk writes, the snapshot memory file"},
	{"writev", "virtio-net sends a packet to its TAP"},
	{"preadv", "virtio-blk reads a request's buffers in one call"},
	{"pwritev", "virtio-blk writes a request's buffers in one call"},
	{"close", "descriptors"},
	{"openat", "snapshot files (Landlock decides which paths)"},
	{"newfstatat", "os.Stat, MkdirAll of the snapshot directory"},
	{"fstat", "os.File"},
	{"lseek", "snapshot memory file, SEEK_DATA/SEEK_HOLE"},
	{"fsync", "a snapshot made durable"},
	{"fdatasync", "a snapshot made durable, virtio-blk flush"},
	{"ftruncate", "the snapshot memory file's size"},
	{"fallocate", "virtio-blk discard and write-zeroes (holes punched in the image)"},
	{"mkdirat", "the snapshot directory"},
	{"unlinkat", "replacing a snapshot, the control socket at exit"},
	{"renameat", "a snapshot's files under their real names"},
	{"fcntl", "non-blocking descriptors, F_DUPFD_CLOEXEC of eventfds"},
	{"eventfd2", "irqfds and ioeventfds a guest's routes add, the netpoller's wake-up"},
	{"epoll_create1", "the netpoller, if first used after set-up"},
	{"epoll_ctl", "the netpoller"},
	{"epoll_pwait", "the netpoller"},
	{"epoll_wait", "the netpoller"},
	// Sockets: the control socket's connections, live migration.
	{"accept4", "control connections"},
	{"connect", "a live migration's destination"},
	{"getsockopt", "SO_PEERCRED of a control peer, SO_ERROR of a connect"},
	{"setsockopt", "TCP options of a migration connection"},
	{"getsockname", "net.Conn addresses"},
	{"getpeername", "net.Conn addresses"},
	{"shutdown", "closing a migration stream"},
	{"sendto", "sockets, name resolution"},
	{"recvfrom", "sockets, name resolution"},
	{"sendmsg", "sockets"},
	{"recvmsg", "sockets"},
	{"sysinfo", "host RAM, for a migration's size check"},
}

// cond is one condition on a system call's argument: the whole 64-bit
// value equals val, or (bitsClear) has none of val's bits set, or (bitsSet)
// has all of them.
type cond struct {
	arg int
	op  condOp
	val uint64
}

type condOp int

const (
	opEqual condOp = iota
	opBitsClear
	opBitsSet
)

// conditionalCall is a system call allowed only when one of its condition
// sets holds (each set is a conjunction).
type conditionalCall struct {
	name string
	sets [][]cond
}

// conditional are allowed only with the arguments shown.
func conditional() []conditionalCall {
	// ioctl: by request number (argument 1), KVM_RUN first.
	ioctl := ioctlCall(ioctls())
	noExec := [][]cond{{{arg: 2, op: opBitsClear, val: unix.PROT_EXEC}}}
	var socket conditionalCall
	socket.name = "socket"
	// socket: Unix and IP families only (the control socket, migration,
	// name resolution), no netlink, packet or raw sockets.
	for _, family := range []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6} {
		socket.sets = append(socket.sets, []cond{{arg: 0, op: opEqual, val: family}})
	}
	return []conditionalCall{
		ioctl,
		// mmap and mprotect: never executable memory (govmm maps guest
		// RAM, vCPU run pages and runtime heap; it generates no code).
		{"mmap", noExec},
		{"mprotect", noExec},
		// clone: threads only, never a new process.
		{"clone", [][]cond{{{arg: 0, op: opBitsSet, val: unix.CLONE_THREAD}}}},
		// tgkill: kicking a vCPU out of the guest, runtime preemption;
		// only this process's threads.
		{"tgkill", [][]cond{{{arg: 0, op: opEqual, val: uint64(os.Getpid())}}}},
		// kill: the Go runtime re-raising a fatal signal on itself (a
		// crash dump, SIGQUIT's goroutine dump); no other process.
		{"kill", [][]cond{{{arg: 0, op: opEqual, val: uint64(os.Getpid())}}}},
		socket,
		// prctl: only a thread naming itself (each vCPU thread, as
		// "vcpuN", before it takes its own filter: ps, top and the
		// audit log's comm= then tell the threads apart).
		{"prctl", [][]cond{{{arg: 0, op: opEqual, val: unix.PR_SET_NAME}}}},
		// seccomp: only a thread adding a filter to itself (a vCPU
		// thread's own, VCPUThread), which can only narrow what it
		// may do; never TSYNC or another operation.
		{"seccomp", [][]cond{{{arg: 0, op: opEqual, val: setModeFilter}, {arg: 1, op: opEqual, val: 0}}}},
	}
}

// ioctlCall is ioctl allowed with the requests reqs, tested in order.
func ioctlCall(reqs []ioctlReq) conditionalCall {
	c := conditionalCall{name: "ioctl"}
	for _, r := range reqs {
		c.sets = append(c.sets, []cond{{arg: 1, op: opEqual, val: uint64(r.req)}})
	}
	return c
}

// Syscalls counts the system calls the filter lets through, with or
// without conditions on their arguments, on the host architecture.
func Syscalls() int {
	n := 0
	for _, a := range allowed {
		if has(a.name) {
			n++
		}
	}
	for _, c := range conditional() {
		if has(c.name) {
			n++
		}
	}
	return n
}

// installSeccomp loads the filter on every thread (TSYNC) and returns the
// number of system calls it allows. Outside SeccompLog mode a forbidden
// system call traps into the SIGSYS handler, which names it and ends the
// process.
func installSeccomp(mode SeccompMode) (int, error) {
	prog, err := program(mode)
	if err != nil {
		return 0, err
	}
	if mode != SeccompLog {
		if err := installSIGSYSHandler(); err != nil {
			return 0, err
		}
	}
	if err := seccomp.SetNoNewPrivs(); err != nil {
		return 0, fmt.Errorf("set no_new_privs: %w", err)
	}
	if err := loadFilter(prog, true); err != nil {
		return 0, fmt.Errorf("install the filter: %w", err)
	}
	return Syscalls(), nil
}
