package confine

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// rawVM loads an assembled filter into x/net/bpf's VM.
func rawVM(t *testing.T, raw []unix.SockFilter, err error) *bpf.VM {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	insts := make([]bpf.RawInstruction, len(raw))
	for i, r := range raw {
		insts[i] = bpf.RawInstruction{Op: r.Code, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	dis, ok := bpf.Disassemble(insts)
	if !ok {
		t.Fatal("the filter does not disassemble")
	}
	vm, err := bpf.NewVM(dis)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestDeviceThreadFilterDecisions(t *testing.T) {
	withArch(t, &archAMD64) // x86-64's numbers, on any host
	nr := func(name string) uint32 { return mustNr(t, name) }
	const x86 = auditArchX86_64
	mustVM := func(raw []unix.SockFilter, err error) *bpf.VM {
		t.Helper()
		return rawVM(t, raw, err)
	}
	netVM := mustVM(netQueueFilter(SeccompOn, []int{7, 9}))
	trapNet := uint32(retTrap | roleNetQueue)
	checkDecisions(t, netVM, "virtio-net queue thread", []filterCase{
		{"writev to TAP queue 0", x86, nr("writev"), []uint64{7, 0, 2}, retAllow},
		{"writev to TAP queue 1", x86, nr("writev"), []uint64{9, 0, 2}, retAllow},
		{"writev to another descriptor", x86, nr("writev"), []uint64{8, 0, 2}, trapNet},
		{"writev to stderr", x86, nr("writev"), []uint64{2, 0, 2}, trapNet},
		{"writev to fd 7 in the high half (fd 7 + 2^32)", x86, nr("writev"), []uint64{7 | 1<<32, 0, 2}, retAllow},
		{"read (the TAP, eventfds)", x86, nr("read"), []uint64{7}, retAllow},
		{"write (eventfds, the log)", x86, nr("write"), []uint64{2}, retAllow},
		{"TUNSETQUEUE (the control queue)", x86, nr("ioctl"), []uint64{7, unix.TUNSETQUEUE}, retAllow},
		{"TUNSETOFFLOAD (the vCPU thread's, at DRIVER_OK)", x86, nr("ioctl"), []uint64{7, unix.TUNSETOFFLOAD}, trapNet},
		{"KVM_IRQFD (interrupts are eventfd writes)", x86, nr("ioctl"), []uint64{4, 0x4020ae76}, trapNet},
		{"KVM_SET_GSI_ROUTING", x86, nr("ioctl"), []uint64{4, 0x4008ae6a}, trapNet},
		{"KVM_SET_USER_MEMORY_REGION", x86, nr("ioctl"), []uint64{4, 0x4020ae46}, trapNet},
		{"KVM_RUN", x86, nr("ioctl"), []uint64{5, 0xae80}, trapNet},
		{"VHOST_NET_SET_BACKEND", x86, nr("ioctl"), []uint64{9, 0x4008af30}, trapNet},
		{"TUNSETIFF (attach another TAP)", x86, nr("ioctl"), []uint64{7, unix.TUNSETIFF}, trapNet},
		{"KVM_CREATE_VCPU", x86, nr("ioctl"), []uint64{4, 0xae41}, trapNet},
		{"futex", x86, nr("futex"), nil, retAllow},
		{"epoll_pwait", x86, nr("epoll_pwait"), nil, retAllow},
		{"mmap RW", x86, nr("mmap"), []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, retAllow},
		{"mmap RX", x86, nr("mmap"), []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, trapNet},
		{"tgkill another process", x86, nr("tgkill"), []uint64{1, 1, uint64(unix.SIGKILL)}, trapNet},
		{"openat", x86, nr("openat"), nil, trapNet},
		{"socket AF_INET", x86, nr("socket"), []uint64{unix.AF_INET, unix.SOCK_STREAM}, trapNet},
		{"connect", x86, nr("connect"), nil, trapNet},
		{"sendmsg", x86, nr("sendmsg"), nil, trapNet},
		{"recvmsg", x86, nr("recvmsg"), nil, trapNet},
		{"clone a thread", x86, nr("clone"), []uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND}, trapNet},
		{"clone3", x86, nr("clone3"), nil, retErrno | uint32(unix.ENOSYS)},
		{"execve", x86, nr("execve"), nil, trapNet},
		{"pread64 (a disk worker's)", x86, nr("pread64"), nil, trapNet},
		{"readv", x86, nr("readv"), nil, trapNet},
		{"prctl PR_SET_NAME (named before its filter)", x86, nr("prctl"), []uint64{unix.PR_SET_NAME}, trapNet},
		{"x32 writev", x86, nr("writev") | x32Bit, []uint64{7}, retErrno | uint32(unix.ENOSYS)},
		{"i386 write", 0x40000003, 4, nil, trapNet},
	})
	// Another device's filter has its own descriptors.
	other := mustVM(netQueueFilter(SeccompOn, []int{12}))
	if got := eval(t, other, x86, nr("writev"), 7); got != trapNet {
		t.Errorf("a device on fd 12: writev to fd 7 gets %#x, want %#x", got, trapNet)
	}
	if got := eval(t, other, x86, nr("writev"), 12); got != retAllow {
		t.Errorf("a device on fd 12: writev to fd 12 gets %#x, want allowed", got)
	}
	logNet := mustVM(netQueueFilter(SeccompLog, []int{7}))
	if got := eval(t, logNet, x86, nr("openat")); got != retLog {
		t.Errorf("log mode: openat gets %#x, want SECCOMP_RET_LOG", got)
	}
	if _, err := netQueueFilter(SeccompOn, nil); err == nil {
		t.Error("a virtio-net filter without TAP descriptors was built")
	}

	vsockVM := mustVM(vsockQueueRaw(SeccompOn))
	trapVsock := uint32(retTrap | roleVsockQueue)
	checkDecisions(t, vsockVM, "virtio-vsock queue thread", []filterCase{
		{"close (a connection torn down)", x86, nr("close"), nil, retAllow},
		{"epoll_ctl (its socket leaves the poller)", x86, nr("epoll_ctl"), nil, retAllow},
		{"write (eventfds)", x86, nr("write"), nil, retAllow},
		{"KVM_IRQFD", x86, nr("ioctl"), []uint64{4, 0x4020ae76}, trapVsock},
		{"VHOST_VSOCK_SET_RUNNING", x86, nr("ioctl"), []uint64{9, 0x4004af61}, trapVsock},
		{"TUNSETQUEUE", x86, nr("ioctl"), []uint64{7, unix.TUNSETQUEUE}, trapVsock},
		{"writev", x86, nr("writev"), []uint64{7}, trapVsock},
		{"socket AF_UNIX", x86, nr("socket"), []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, trapVsock},
		{"connect", x86, nr("connect"), nil, trapVsock},
		{"accept4", x86, nr("accept4"), nil, trapVsock},
		{"shutdown", x86, nr("shutdown"), nil, trapVsock},
		{"openat", x86, nr("openat"), nil, trapVsock},
		{"execve", x86, nr("execve"), nil, trapVsock},
	})
	logVsock := mustVM(vsockQueueRaw(SeccompLog))
	if got := eval(t, logVsock, x86, nr("connect")); got != retLog {
		t.Errorf("log mode: connect gets %#x, want SECCOMP_RET_LOG", got)
	}
}

// TestRoleIoctls: each thread role's filter allows ioctl with exactly
// its own requests, every one of them also in the process filter's list:
// the vCPU threads the process filter's whole list, the disk workers and
// vsock queue threads none, the virtio-net queue threads TUNSETQUEUE
// alone. Every request the process filter knows, set-up-only ones too,
// is tried on each.
func TestRoleIoctls(t *testing.T) {
	withArch(t, &archAMD64) // x86-64's numbers, on any host
	const x86 = auditArchX86_64
	ioctlNr := mustNr(t, "ioctl")
	process := map[uint32]bool{}
	for _, r := range ioctls() {
		process[r.req] = true
	}
	all := append(append(ioctls(), kvmSetupOnly...), mshvSetupOnly()...)
	all = append(all, ioctlReq{"TUNSETIFF", unix.TUNSETIFF}, ioctlReq{"TIOCSTI", unix.TIOCSTI})
	mustVM := func(raw []unix.SockFilter, err error) *bpf.VM {
		t.Helper()
		return rawVM(t, raw, err)
	}
	vcpu, err := vcpuProgram(SeccompOn, 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	vcpuVM, err := bpf.NewVM(vcpu)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []struct {
		name string
		vm   *bpf.VM
		reqs []ioctlReq
		trap uint32
	}{
		{"vCPU", vcpuVM, ioctls(), retTrap | roleVCPU0},
		{"virtio-blk", mustVM(diskWorkerRaw(SeccompOn)), diskWorkerIoctls, retTrap | roleDiskWorker},
		{"virtio-net", mustVM(netQueueFilter(SeccompOn, []int{7})), netQueueIoctls, retTrap | roleNetQueue},
		{"virtio-vsock", mustVM(vsockQueueRaw(SeccompOn)), vsockQueueIoctls, retTrap | roleVsockQueue},
	} {
		mine := map[uint32]bool{}
		for _, r := range role.reqs {
			mine[r.req] = true
			if !process[r.req] {
				t.Errorf("%s threads: %s (%#x) is not in the process filter's list, which refuses it", role.name, r.name, r.req)
			}
		}
		if names, ok := DeviceIoctls(role.name); role.name != "vCPU" && (!ok || len(names) != len(role.reqs)) {
			t.Errorf("DeviceIoctls(%q) = %v, %v; the role's list has %d requests", role.name, names, ok, len(role.reqs))
		}
		for _, r := range all {
			want := role.trap
			if mine[r.req] {
				want = retAllow
			}
			if got := eval(t, role.vm, x86, ioctlNr, 5, uint64(r.req)); got != want {
				t.Errorf("%s thread: ioctl %s (%#x) gets %#x, want %#x", role.name, r.name, r.req, got, want)
			}
		}
		t.Logf("%s threads: ioctl with %d of the process filter's %d requests", role.name, len(role.reqs), len(ioctls()))
	}
}

// TestDeviceThreadCalls: the device threads' filters allow nothing the
// process filter refuses (their calls are the vCPU threads' and, for
// virtio-net, writev), each extra call with its reason.
func TestDeviceThreadCalls(t *testing.T) {
	process := map[string]bool{}
	for _, a := range allowed {
		process[a.name] = true
	}
	for _, c := range conditional() {
		process[c.name] = true
	}
	for _, c := range netQueueConditional([]int{3}) {
		if !process[c.name] {
			t.Errorf("virtio-net queue threads: %s, which the process filter refuses", c.name)
		}
	}
	for _, c := range netQueueExtra {
		if c.why == "" || !process[c.name] {
			t.Errorf("netQueueExtra %s: no reason, or the process filter refuses it", c.name)
		}
	}
	for _, name := range vcpuNames(Options{}) {
		if !process[name] {
			t.Errorf("device threads: %s, which the process filter refuses", name)
		}
	}
	t.Logf("virtio-net queue threads: %d of the process filter's %d system calls; virtio-vsock queue threads: %d",
		len(vcpuCalls(Options{}))+len(netQueueExtra), Syscalls(), len(vcpuCalls(Options{})))
}

func unsafeBytes(m sigsysMessage) []byte { return unsafe.Slice(m.p, m.n) }

// TestDeviceRoleMessages: the SIGSYS handler's role lines name the
// device threads.
func TestDeviceRoleMessages(t *testing.T) {
	prepareMessages()
	for role, want := range map[int]string{
		roleDiskWorker: " on a virtio-blk worker thread",
		roleNetQueue:   " on a virtio-net queue thread",
		roleVsockQueue: " on a virtio-vsock queue thread",
	} {
		m := sigsysRoles[role]
		if got := string(unsafeBytes(m)); !strings.HasPrefix(got, want) {
			t.Errorf("role %d: %q, want %q", role, got, want)
		}
	}
}

// deviceThreadChild applies the process filter (mode o.Seccomp), then
// runs fn on a locked thread that took a device role's filter through
// install. It checks from another thread the role thread's name and that
// it has one filter more than this thread (none more with
// SeccompProcess).
func deviceThreadChild(o Options, name string, install func() error, fn func()) int {
	if _, err := Apply(o); err != nil {
		fmt.Println("apply:", err)
		return 1
	}
	tid, done := make(chan int), make(chan int)
	go func() {
		runtime.LockOSThread()
		if err := install(); err != nil {
			fmt.Println("install:", err)
			os.Exit(1)
		}
		tid <- unix.Gettid()
		<-tid
		fn()
		done <- 0
	}()
	t := <-tid
	mine, err1 := seccompFilters(unix.Gettid())
	theirs, err2 := seccompFilters(t)
	comm, err3 := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", t))
	if err1 != nil || err2 != nil || err3 != nil {
		fmt.Println("FAIL: status:", err1, err2, err3)
		return 1
	}
	fmt.Printf("thread %s: filters %d, this thread %d\n", bytes.TrimSpace(comm), theirs, mine)
	want := mine + 1
	if o.Seccomp == SeccompProcess {
		want = mine
	} else if string(bytes.TrimSpace(comm)) != name {
		fmt.Println("FAIL: the thread is not named", name)
		return 1
	}
	if theirs != want {
		fmt.Printf("FAIL: the device thread has %d filters, want %d\n", theirs, want)
		return 1
	}
	tid <- 0
	return <-done
}

// fakeTap is a SOCK_SEQPACKET pair standing for a TAP queue: the device
// side non-blocking and served by the poller, as a TAP queue's file.
func fakeTap() (*os.File, *os.File, int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, 0, err
	}
	return os.NewFile(uintptr(fds[0]), "tap"), os.NewFile(uintptr(fds[1]), "peer"), fds[0], nil
}

// netWork does on a virtio-net queue thread what its queues do: packets
// read from the TAP through the poller (waiting for one), packets sent
// with writev, and the runtime's and interrupts' calls (vcpuWork).
func netWork(tap, peer *os.File, fd int) {
	go func() {
		for i := range 3 {
			peer.Write([]byte(fmt.Sprintf("packet %d to the guest", i)))
		}
	}()
	buf := make([]byte, 2048)
	for i := range 3 {
		n, err := tap.Read(buf)
		if err != nil || string(buf[:n]) != fmt.Sprintf("packet %d to the guest", i) {
			fmt.Println("FAIL: TAP read:", n, err)
			os.Exit(1)
		}
	}
	rc, err := tap.SyscallConn()
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	for i := range 3 {
		var werr error
		err := rc.Write(func(fd uintptr) bool {
			_, werr = unix.Writev(int(fd), [][]byte{[]byte("header "), []byte(fmt.Sprintf("packet %d from the guest", i))})
			return werr != unix.EAGAIN
		})
		if err != nil || werr != nil {
			fmt.Println("FAIL: writev:", err, werr)
			os.Exit(1)
		}
		n, err := peer.Read(buf)
		if err != nil || string(buf[:n]) != fmt.Sprintf("header packet %d from the guest", i) {
			fmt.Println("FAIL: the peer read:", n, err)
			os.Exit(1)
		}
	}
	vcpuWork()
	fmt.Println("net queue thread: work done")
}

func deviceThreadScenario(name string) (int, bool) {
	if !strings.HasPrefix(name, "net-") && !strings.HasPrefix(name, "vsock-") {
		return 0, false
	}
	tap, peer, fd, err := fakeTap()
	if err != nil {
		fmt.Println("FAIL: socketpair:", err)
		return 1, true
	}
	netThread := func(o Options) func() error {
		return func() error { return NetQueueThread("net0-tx0", []int{fd}, o) }
	}
	vsockThread := func(o Options) func() error {
		return func() error { return VsockQueueThread("vsock-txq", o) }
	}
	on, process := Options{Seccomp: SeccompOn}, Options{Seccomp: SeccompProcess}
	switch name {
	case "net-work":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() { netWork(tap, peer, fd) }), true
	case "net-work-process":
		return deviceThreadChild(process, "net0-tx0", netThread(process), func() {
			// --seccomp=process: the thread keeps the process filter
			// alone, which lets it open files.
			f, err := unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				fmt.Println("FAIL: open / under the process filter alone:", err)
				os.Exit(1)
			}
			unix.Close(f)
			fmt.Println("net queue thread: process filter alone")
		}), true
	case "net-writev-other":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() {
			unix.Writev(1, [][]byte{[]byte("writev to stdout returned\n")})
			fmt.Println("writev returned")
		}), true
	case "net-openat":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() {
			unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			fmt.Println("openat returned")
		}), true
	case "net-socket":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() {
			unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			fmt.Println("socket returned")
		}), true
	case "vsock-work":
		return deviceThreadChild(on, "vsock-txq", vsockThread(on), func() {
			vcpuWork()
			// A connection torn down: its socket closed.
			if err := peer.Close(); err != nil {
				fmt.Println("FAIL: close:", err)
				os.Exit(1)
			}
			fmt.Println("vsock queue thread: work done")
		}), true
	case "net-tunsetqueue":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() {
			// The control queue attaching a TAP queue: the fake TAP is a
			// socket, which answers with an error, but the filter lets
			// the request through.
			err := unix.IoctlIfreq(fd, unix.TUNSETQUEUE, &unix.Ifreq{})
			fmt.Printf("net queue thread: TUNSETQUEUE allowed (%v)\n", err)
		}), true
	case "net-gsi-routing":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() { gsiRouting() }), true
	case "net-tunsetoffload":
		return deviceThreadChild(on, "net0-tx0", netThread(on), func() {
			unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0)
			fmt.Println("TUNSETOFFLOAD returned")
		}), true
	case "vsock-gsi-routing":
		return deviceThreadChild(on, "vsock-txq", vsockThread(on), func() { gsiRouting() }), true
	case "vsock-socket":
		return deviceThreadChild(on, "vsock-txq", vsockThread(on), func() {
			unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			fmt.Println("socket returned")
		}), true
	case "vsock-writev":
		return deviceThreadChild(on, "vsock-txq", vsockThread(on), func() {
			unix.Writev(fd, [][]byte{[]byte("x")})
			fmt.Println("writev returned")
		}), true
	}
	return 0, false
}

// gsiRouting makes KVM_SET_GSI_ROUTING on a fresh eventfd: allowed, the
// kernel would answer ENOTTY.
func gsiRouting() {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		fmt.Println("FAIL: eventfd:", err)
		os.Exit(1)
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(efd), 0x4008ae6a, 0) // KVM_SET_GSI_ROUTING
	fmt.Println("KVM_SET_GSI_ROUTING returned", e)
}

// TestNetQueueThread: a virtio-net queue thread does its work (TAP
// reads through the poller, writev of packets, the runtime's calls)
// under its filter, named; writev elsewhere than the TAP, openat and
// socket stop the process naming the call and the thread; with
// --seccomp=process the thread gets no filter of its own.
func TestNetQueueThread(t *testing.T) {
	for _, c := range []struct{ child, want string }{
		{"net-work", "net queue thread: work done"},
		{"net-work-process", "net queue thread: process filter alone"},
		{"net-tunsetqueue", "net queue thread: TUNSETQUEUE allowed"},
	} {
		out, code := runChild(t, c.child)
		if code != 0 || !strings.Contains(out, c.want) {
			t.Fatalf("%s: exit %d:\n%s", c.child, code, out)
		}
	}
	for _, c := range []struct{ child, want string }{
		{"net-writev-other", "forbidden system call writev (20) on a virtio-net queue thread"},
		{"net-openat", "forbidden system call openat (257) on a virtio-net queue thread"},
		{"net-socket", "forbidden system call socket (41) on a virtio-net queue thread"},
		{"net-gsi-routing", "forbidden system call ioctl (16) on a virtio-net queue thread"},
		{"net-tunsetoffload", "forbidden system call ioctl (16) on a virtio-net queue thread"},
	} {
		out, code := runChild(t, c.child)
		if code != ExitSIGSYS || !strings.Contains(out, c.want) || strings.Contains(out, "returned") {
			t.Errorf("%s: want exit %d and %q, got exit %d:\n%s", c.child, ExitSIGSYS, c.want, code, out)
		}
	}
}

// TestVsockQueueThread: a virtio-vsock queue thread does a vCPU
// thread's work and closes a socket under its filter; socket and writev
// stop the process naming the thread.
func TestVsockQueueThread(t *testing.T) {
	out, code := runChild(t, "vsock-work")
	if code != 0 || !strings.Contains(out, "thread vsock-txq") || !strings.Contains(out, "vsock queue thread: work done") {
		t.Fatalf("vsock-work: exit %d:\n%s", code, out)
	}
	for _, c := range []struct{ child, want string }{
		{"vsock-socket", "forbidden system call socket (41) on a virtio-vsock queue thread"},
		{"vsock-writev", "forbidden system call writev (20) on a virtio-vsock queue thread"},
		{"vsock-gsi-routing", "forbidden system call ioctl (16) on a virtio-vsock queue thread"},
	} {
		out, code := runChild(t, c.child)
		if code != ExitSIGSYS || !strings.Contains(out, c.want) || strings.Contains(out, "returned") {
			t.Errorf("%s: want exit %d and %q, got exit %d:\n%s", c.child, ExitSIGSYS, c.want, code, out)
		}
	}
}
