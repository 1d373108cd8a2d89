package confine

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// TestVCPURolePartition: every call the process filter allows is either
// kept by vCPU threads (vcpuAllowed, or a conditional call vcpuConditional
// keeps) or refused them (vcpuRefused), never both, each with its reason;
// and a vCPU thread keeps nothing the process filter lacks.
func TestVCPURolePartition(t *testing.T) {
	process := map[string]bool{}
	for _, a := range allowed {
		process[a.name] = true
	}
	for _, c := range conditional() {
		process[c.name] = true
	}
	placed := map[string]string{}
	place := func(name, list, why string) {
		if why == "" {
			t.Errorf("%s in %s: no reason given", name, list)
		}
		if !process[name] {
			t.Errorf("%s in %s: the process filter does not allow it, so listing it for vCPU threads means nothing", name, list)
		}
		if prev, dup := placed[name]; dup {
			t.Errorf("%s is in %s and in %s", name, prev, list)
		}
		placed[name] = list
	}
	for _, a := range vcpuAllowed {
		place(a.name, "vcpuAllowed", a.why)
	}
	for _, c := range vcpuConditional() {
		place(c.name, "vcpuConditional", "conditions kept")
	}
	for _, r := range vcpuRefused {
		place(r.name, "vcpuRefused", r.why)
	}
	for name := range process {
		if placed[name] == "" {
			t.Errorf("the process filter allows %s: decide in vcpu.go whether vCPU threads keep it", name)
		}
	}
	t.Logf("vCPU threads: %d of the process filter's %d system calls (%d with a VFIO device)", len(vcpuCalls(Options{})), Syscalls(), len(vcpuCalls(Options{VCPUDeviceIO: true})))
}

func TestVCPUFilterDecisions(t *testing.T) {
	withArch(t, &archAMD64) // x86-64's numbers, on any host
	nr := func(name string) uint32 { return mustNr(t, name) }
	const x86 = auditArchX86_64
	mustVM := func(insts []bpf.Instruction, err error) *bpf.VM {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		vm, err := bpf.NewVM(insts)
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}
	vm3 := mustVM(vcpuProgram(SeccompOn, 3, Options{}))
	trap3 := uint32(retTrap | (roleVCPU0 + 3))
	checkDecisions(t, vm3, "vCPU 3", []filterCase{
		{"KVM_RUN", x86, nr("ioctl"), []uint64{5, 0xae80}, retAllow},
		{"MSHV_RUN_VP", x86, nr("ioctl"), []uint64{5, uint64(mshvIoctls()[0].req)}, retAllow},
		{"KVM_SET_GSI_ROUTING (a route the guest programs)", x86, nr("ioctl"), []uint64{4, 0x4008ae6a}, retAllow},
		{"KVM_CREATE_VCPU", x86, nr("ioctl"), []uint64{4, 0xae41}, trap3},
		// vhost-vsock: the driver's DRIVER_OK and reset, and MSI-X
		// masking, reach the kernel's queues from this thread.
		{"VHOST_SET_VRING_CALL (a masked vector)", x86, nr("ioctl"), []uint64{9, 0x4008af21}, retAllow},
		{"VHOST_VSOCK_SET_RUNNING", x86, nr("ioctl"), []uint64{9, 0x4004af61}, retAllow},
		{"VHOST_NET_SET_BACKEND (DRIVER_OK with vhost=on)", x86, nr("ioctl"), []uint64{9, 0x4008af30}, retAllow},
		{"VHOST_SET_MEM_TABLE (set-up only)", x86, nr("ioctl"), []uint64{9, 0x4008af03}, trap3},
		{"ioctl 0", x86, nr("ioctl"), []uint64{4, 0}, trap3},
		{"futex", x86, nr("futex"), nil, retAllow},
		{"write", x86, nr("write"), nil, retAllow},
		{"eventfd2", x86, nr("eventfd2"), nil, retAllow},
		{"exit", x86, nr("exit"), nil, retAllow},
		{"mmap RW", x86, nr("mmap"), []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, retAllow},
		{"mmap RX", x86, nr("mmap"), []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, trap3},
		{"mprotect X", x86, nr("mprotect"), []uint64{0, 4096, unix.PROT_EXEC}, trap3},
		{"tgkill a thread of this process", x86, nr("tgkill"), []uint64{uint64(os.Getpid()), 7, uint64(unix.SIGURG)}, retAllow},
		{"tgkill another process", x86, nr("tgkill"), []uint64{1, 1, uint64(unix.SIGKILL)}, trap3},
		{"openat", x86, nr("openat"), nil, trap3},
		{"socket AF_UNIX (the process filter allows it)", x86, nr("socket"), []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, trap3},
		{"connect", x86, nr("connect"), nil, trap3},
		{"accept4", x86, nr("accept4"), nil, trap3},
		{"sendmsg", x86, nr("sendmsg"), nil, trap3},
		{"clone a thread (the process filter allows it)", x86, nr("clone"), []uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND}, trap3},
		{"clone3", x86, nr("clone3"), nil, retErrno | uint32(unix.ENOSYS)},
		{"unlinkat", x86, nr("unlinkat"), nil, trap3},
		{"pread64 without a VFIO device", x86, nr("pread64"), nil, trap3},
		{"prctl PR_SET_NAME (the thread named itself before)", x86, nr("prctl"), []uint64{unix.PR_SET_NAME}, trap3},
		{"execve", x86, nr("execve"), nil, trap3},
		{"x32 read", x86, nr("read") | x32Bit, nil, retErrno | uint32(unix.ENOSYS)},
		{"i386 read", 0x40000003, 3, nil, trap3},
	})

	vfio := mustVM(vcpuProgram(SeccompOn, 0, Options{VCPUDeviceIO: true}))
	for _, call := range []string{"pread64", "pwrite64"} {
		if got := eval(t, vfio, x86, nr(call)); got != retAllow {
			t.Errorf("with a VFIO device: %s gets %#x, want allowed", call, got)
		}
	}
	if got := eval(t, vfio, x86, nr("openat")); got != retTrap|roleVCPU0 {
		t.Errorf("vCPU 0: openat gets %#x, want a trap naming vCPU 0 (%#x)", got, retTrap|roleVCPU0)
	}
	logVM := mustVM(vcpuProgram(SeccompLog, 0, Options{}))
	if got := eval(t, logVM, x86, nr("openat")); got != retLog {
		t.Errorf("log mode: openat gets %#x, want SECCOMP_RET_LOG", got)
	}
	// The process filter names no vCPU.
	proc := mustVM(program(SeccompOn))
	if got := eval(t, proc, x86, nr("execve")); got != retTrap|roleProcess {
		t.Errorf("process filter: execve gets %#x, want %#x", got, retTrap|roleProcess)
	}
	if _, err := vcpuProgram(SeccompOn, maxVCPURoles, Options{}); err == nil {
		t.Errorf("vCPU %d: a filter was built, but its role does not fit the messages", maxVCPURoles)
	}
}

// TestVCPUFilterPatched: the filter copied from the template with the
// vCPU's role patched in is the one assembled for that vCPU.
func TestVCPUFilterPatched(t *testing.T) {
	for _, o := range []Options{{Seccomp: SeccompOn}, {Seccomp: SeccompOn, VCPUDeviceIO: true}, {Seccomp: SeccompLog}} {
		for _, index := range []int{0, 1, 7, 254} {
			prog, err := vcpuProgram(o.Seccomp, index, o)
			if err != nil {
				t.Fatal(err)
			}
			want, err := rawFilter(prog)
			if err != nil {
				t.Fatal(err)
			}
			got, err := vcpuFilter(o.Seccomp, index, o)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s, device I/O %v, vCPU %d: the patched filter differs from the one assembled for it", o.Seccomp, o.VCPUDeviceIO, index)
			}
		}
	}
}

// TestRoleMessages: the SIGSYS handler's role lines name the vCPU.
func TestRoleMessages(t *testing.T) {
	prepareMessages()
	text := func(m sigsysMessage) string {
		return string(unsafe.Slice(m.p, m.n))
	}
	if got := text(sigsysRoles[roleVCPU0+7]); !strings.HasPrefix(got, " on vCPU 7's thread") {
		t.Errorf("role of vCPU 7: %q", got)
	}
	if got := text(sigsysRoles[roleProcess]); !strings.Contains(got, "process filter") {
		t.Errorf("role of the process filter: %q", got)
	}
}

// vcpuChild is the vCPU-thread scenarios' child: it confines itself as
// govmm does, then runs fn on a locked thread that took vCPU 0's filter.
// Before that it checks from another thread that the vCPU thread has one
// filter more than the others.
func vcpuChild(o Options, fn func()) int {
	if _, err := Apply(o); err != nil {
		fmt.Println("apply:", err)
		return 1
	}
	tid := make(chan int)
	ended := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with this goroutine.
		begin := time.Now()
		if err := VCPUThread(0, o); err != nil {
			fmt.Println("VCPUThread:", err)
			os.Exit(1)
		}
		fmt.Printf("VCPUThread took %v\n", time.Since(begin))
		tid <- unix.Gettid()
		<-tid
		fn()
		close(ended)
	}()
	t := <-tid
	mine, err1 := seccompFilters(unix.Gettid())
	theirs, err2 := seccompFilters(t)
	comm, err3 := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", t))
	if err1 != nil || err2 != nil || err3 != nil {
		fmt.Println("status:", err1, err2, err3)
		return 1
	}
	fmt.Printf("filters: this thread %d, vCPU thread %d (%s)\n", mine, theirs, bytes.TrimSpace(comm))
	if theirs != mine+1 || string(bytes.TrimSpace(comm)) != "vcpu0" {
		fmt.Println("FAIL: the vCPU thread does not carry one filter more, under its name")
		return 1
	}
	tid <- 0
	<-ended
	// The thread ends with its goroutine (the runtime reaps it shortly).
	gone := false
	for i := 0; i < 100 && !gone; i++ {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", t))
		gone = os.IsNotExist(err)
		if !gone {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !gone {
		fmt.Println("FAIL: the vCPU thread outlived its goroutine")
		return 1
	}
	return after()
}

// after runs once the vCPU thread ended: threads that run goroutines
// since (some of them made at the vCPU thread's request) carry only the
// process filter, and may open files.
func after() int {
	want, err := seccompFilters(unix.Gettid())
	if err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tid := unix.Gettid()
			n, err := seccompFilters(tid)
			if err == nil && n != want {
				err = fmt.Errorf("thread %d has %d filters, want %d: it inherited the vCPU thread's", tid, n, want)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fmt.Println("FAIL: another thread:", err)
		return 1
	}
	fmt.Printf("after the vCPU thread: other threads have %d filter and open files\n", want)
	return 0
}

// seccompFilters reads Seccomp_filters from a thread of this process.
func seccompFilters(tid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Seccomp_filters:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("thread %d: no Seccomp_filters line (Linux before 5.9)", tid)
}

// vcpuWork does on the vCPU thread what a vCPU thread does: allocation
// enough for several garbage collections (some started here, one forced
// from here, which stops and restarts the world from this thread),
// goroutines started and woken, a timer moved (the netpoller's wake-up),
// an eventfd made, wrapped, written and closed, a signal sent to another
// thread of the process, memory mapped and unmapped, a log line.
func vcpuWork() {
	var keep [][]byte
	for i := range 4000 {
		keep = append(keep, make([]byte, 64<<10))
		if len(keep) > 200 {
			keep = keep[:0]
		}
		if i == 2000 {
			runtime.GC()
		}
	}
	results := make(chan int, 16)
	for i := range 16 {
		go func() {
			time.Sleep(time.Millisecond)
			results <- i
		}()
	}
	for range 16 {
		<-results
	}
	tm := time.NewTimer(time.Hour)
	tm.Reset(time.Millisecond)
	<-tm.C
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		fmt.Println("FAIL: eventfd:", err)
		os.Exit(1)
	}
	f := os.NewFile(uintptr(efd), "eventfd")
	if _, err := f.Write([]byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		fmt.Println("FAIL: eventfd write:", err)
		os.Exit(1)
	}
	f.Close()
	unix.Tgkill(unix.Getpid(), os.Getpid(), unix.SIGURG)
	m, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("FAIL: mmap:", err)
		os.Exit(1)
	}
	m[0] = 1
	unix.Munmap(m)
	fmt.Printf("vCPU thread: work done at %s\n", time.Now().Format(time.Kitchen))
}

func vcpuScenario(name string) (int, bool) {
	switch name {
	case "vcpu-work":
		return vcpuChild(Options{Seccomp: SeccompOn}, vcpuWork), true
	case "vcpu-openat":
		return vcpuChild(Options{Seccomp: SeccompOn}, func() {
			unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			fmt.Println("openat returned")
		}), true
	case "vcpu-socket":
		return vcpuChild(Options{Seccomp: SeccompOn}, func() {
			// Another thread first: the process filter lets it make a
			// socket; then the vCPU thread, whose filter does not.
			done := make(chan error)
			go func() {
				fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err == nil {
					unix.Close(fd)
				}
				done <- err
			}()
			if err := <-done; err != nil {
				fmt.Println("FAIL: another thread's socket:", err)
				os.Exit(1)
			}
			fmt.Println("another thread made a socket")
			unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			fmt.Println("socket returned")
		}), true
	case "vcpu-sigquit":
		// A goroutine dump asked for with SIGQUIT, taken on the vCPU
		// thread: the runtime's crash path (write, rt_sigaction,
		// tgkill, exit_group) passes the vCPU filter.
		return vcpuChild(Options{Seccomp: SeccompOn}, func() {
			unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGQUIT)
			time.Sleep(10 * time.Second)
			fmt.Println("no dump")
		}), true
	case "vcpu-log":
		return vcpuChild(Options{Seccomp: SeccompLog}, func() {
			fd, err := unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			fmt.Println("log mode: openat returned", err)
		}), true
	}
	return 0, false
}

func TestVCPUThreadWorkload(t *testing.T) {
	out, code := runChild(t, "vcpu-work")
	t.Logf("child:\n%s", out)
	if code != 0 || !strings.Contains(out, "vCPU thread: work done") || !strings.Contains(out, "after the vCPU thread") {
		t.Fatalf("a vCPU thread's work under its filter: exit %d", code)
	}
}

// TestVCPUThreadRefusals: what the vCPU filter refuses stops the process,
// naming the call and the vCPU (another thread makes the same socket
// call first, under the process filter); in log mode it goes through; a
// call the process filter refuses elsewhere names that filter.
func TestVCPUThreadRefusals(t *testing.T) {
	for _, c := range []struct {
		child string
		code  int
		want  []string
	}{
		{"vcpu-openat", ExitSIGSYS, []string{"forbidden system call openat (257) on vCPU 0's thread"}},
		{"vcpu-socket", ExitSIGSYS, []string{"another thread made a socket", "forbidden system call socket (41) on vCPU 0's thread"}},
		{"vcpu-log", 0, []string{"log mode: openat returned <nil>"}},
		{"forbidden", ExitSIGSYS, []string{"personality (135) on a thread under the process filter alone"}},
	} {
		out, code := runChild(t, c.child)
		ok := code == c.code
		for _, w := range c.want {
			ok = ok && strings.Contains(out, w)
		}
		if !ok {
			t.Errorf("%s: want exit %d and %q, got exit %d:\n%s", c.child, c.code, c.want, code, out)
		}
	}
}

func TestVCPUThreadGoroutineDump(t *testing.T) {
	out, code := runChild(t, "vcpu-sigquit")
	if code != 2 || !strings.Contains(out, "SIGQUIT: quit") || !strings.Contains(out, "goroutine ") || strings.Contains(out, "forbidden system call") {
		t.Fatalf("SIGQUIT on a vCPU thread: want the runtime's goroutine dump and exit 2, got exit %d:\n%s", code, out)
	}
}
