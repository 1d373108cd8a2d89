package confine

import (
	"go/ast"
	"go/token"
	"slices"
	"strconv"
	"testing"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// withArch has the filters assembled for a (whatever the host) until the
// test ends: the decision tests evaluate the programs in x/net/bpf's VM,
// so x86-64's and arm64's filters are both checked on either host.
func withArch(t *testing.T, a *archInfo) {
	t.Helper()
	prev := hostArch
	hostArch = a
	resetFilterCaches()
	t.Cleanup(func() {
		hostArch = prev
		resetFilterCaches()
	})
}

// resetFilterCaches drops the filters assembled for another architecture.
func resetFilterCaches() {
	vcpuTemplate.Lock()
	vcpuTemplate.raw = nil
	vcpuTemplate.Unlock()
	diskWorkerFilter.Lock()
	diskWorkerFilter.raw = nil
	diskWorkerFilter.Unlock()
	vsockQueueFilter.Lock()
	vsockQueueFilter.raw = nil
	vsockQueueFilter.Unlock()
	netQueueFilters.Lock()
	netQueueFilters.m = nil
	netQueueFilters.Unlock()
}

// everyListedCall is every system call name the filters' lists hold.
func everyListedCall() []string {
	var out []string
	for _, l := range [][]struct{ name, why string }{allowed, vcpuAllowed, vcpuRefused, netQueueExtra, diskWorkerExtra} {
		for _, a := range l {
			out = append(out, a.name)
		}
	}
	for _, c := range conditional() {
		out = append(out, c.name)
	}
	return append(out, "clone3", "personality")
}

// TestSyscallNamesResolve: every name in the lists resolves on both
// architectures, or is one arm64 lacks by design (arch.go's renamed map),
// and every rename names a call the lists hold and the target
// architecture has. A name added for x86-64 alone fails here, on any
// host, before an arm64 filter would fail to assemble.
func TestSyscallNamesResolve(t *testing.T) {
	listed := map[string]bool{}
	for _, n := range everyListedCall() {
		listed[n] = true
	}
	for _, a := range []*archInfo{&archAMD64, &archARM64} {
		for n := range listed {
			if _, _, err := a.nr(n); err != nil {
				t.Errorf("%s: %v (map it in arch.go)", a.name, err)
			}
		}
		for from, to := range a.renamed {
			if !listed[from] {
				t.Errorf("%s: arch.go renames %q, which no list holds", a.name, from)
			}
			if to != "" {
				if _, ok := a.sys.SyscallNames[to]; !ok {
					t.Errorf("%s: arch.go renames %q to %q, which %s lacks", a.name, from, to, a.name)
				}
			}
		}
	}
	// The two names arm64 spells differently or lacks: the Go runtime
	// and os package make the sibling, which must be allowed on arm64.
	if n, ok, _ := archARM64.nr("newfstatat"); !ok || n != 79 {
		t.Errorf("arm64 newfstatat: %d, %v; want 79 (fstatat)", n, ok)
	}
	if _, ok, _ := archARM64.nr("epoll_wait"); ok {
		t.Error("arm64 has no epoll_wait, but it resolved")
	}
	if !listed["epoll_pwait"] {
		t.Error("epoll_pwait, the netpoller's call on arm64, is in no list")
	}
}

// TestEveryFilterAssembles: the process filter and every thread role's
// assemble on both architectures.
func TestEveryFilterAssembles(t *testing.T) {
	for _, a := range []*archInfo{&archAMD64, &archARM64} {
		t.Run(a.name, func(t *testing.T) {
			withArch(t, a)
			for _, mode := range []SeccompMode{SeccompOn, SeccompLog} {
				if _, err := program(mode); err != nil {
					t.Errorf("process filter (%s): %v", mode, err)
				}
				if _, err := vcpuFilter(mode, 3, Options{VCPUDeviceIO: true}); err != nil {
					t.Errorf("vCPU filter (%s): %v", mode, err)
				}
				if _, err := diskWorkerRaw(mode); err != nil {
					t.Errorf("disk worker filter (%s): %v", mode, err)
				}
				if _, err := netQueueFilter(mode, []int{7}); err != nil {
					t.Errorf("net queue filter (%s): %v", mode, err)
				}
				if _, err := vsockQueueRaw(mode); err != nil {
					t.Errorf("vsock queue filter (%s): %v", mode, err)
				}
			}
		})
	}
}

// arm64 system call numbers (asm-generic <unistd.h>), written out so that
// the decisions below do not take them from the table under test.
const (
	arm64Ioctl      = 29
	arm64Openat     = 56
	arm64Close      = 57
	arm64Read       = 63
	arm64Write      = 64
	arm64Fstatat    = 79
	arm64EpollPwait = 22
	arm64Renameat   = 38
	arm64Execve     = 221
	arm64Mmap       = 222
	arm64Clone      = 220
	arm64Clone3     = 435
	arm64Personal   = 92
	arm64Socket     = 198
	arm64Futex      = 98
)

func TestARM64FilterDecisions(t *testing.T) {
	withArch(t, &archARM64)
	insts, err := program(SeccompOn)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(insts)
	if err != nil {
		t.Fatal(err)
	}
	const a64 = auditArchAARCH64
	trap := uint32(retTrap | roleProcess)
	checkDecisions(t, vm, "arm64 process filter", []filterCase{
		{"KVM_RUN", a64, arm64Ioctl, []uint64{5, 0xae80}, retAllow},
		{"KVM_IRQ_LINE", a64, arm64Ioctl, []uint64{4, 0x4008ae61}, retAllow},
		{"KVM_IRQFD", a64, arm64Ioctl, []uint64{4, 0x4020ae76}, retAllow},
		{"KVM_IOEVENTFD", a64, arm64Ioctl, []uint64{4, 0x4040ae79}, retAllow},
		{"KVM_SET_GSI_ROUTING", a64, arm64Ioctl, []uint64{4, 0x4008ae6a}, retAllow},
		{"KVM_GET_ONE_REG", a64, arm64Ioctl, []uint64{5, 0x4010aeab}, retAllow},
		{"KVM_GET_REG_LIST", a64, arm64Ioctl, []uint64{5, 0xc008aeb0}, retAllow},
		{"KVM_GET_DEVICE_ATTR", a64, arm64Ioctl, []uint64{6, 0x4018aee2}, retAllow},
		{"KVM_SET_DEVICE_ATTR", a64, arm64Ioctl, []uint64{6, 0x4018aee1}, retAllow},
		{"KVM_GET_DIRTY_LOG", a64, arm64Ioctl, []uint64{4, 0x4010ae42}, retAllow},
		{"TUNSETOFFLOAD", a64, arm64Ioctl, []uint64{7, unix.TUNSETOFFLOAD}, retAllow},
		{"VHOST_SET_VRING_CALL", a64, arm64Ioctl, []uint64{9, 0x4008af21}, retAllow},
		{"KVM_CREATE_VM", a64, arm64Ioctl, []uint64{3, 0xae01}, trap},
		{"KVM_CREATE_VCPU", a64, arm64Ioctl, []uint64{4, 0xae41}, trap},
		{"KVM_ARM_VCPU_INIT", a64, arm64Ioctl, []uint64{5, 0x4020aeae}, trap},
		{"KVM_CREATE_DEVICE", a64, arm64Ioctl, []uint64{4, 0xc00caee0}, trap},
		{"KVM_SET_CPUID2 (x86's)", a64, arm64Ioctl, []uint64{5, 0x4008ae90}, trap},
		{"MSHV_RUN_VP (no MSHV on arm64)", a64, arm64Ioctl, []uint64{5, 0x8100b800}, trap},
		{"VFIO_DEVICE_RESET (no VFIO on arm64)", a64, arm64Ioctl, []uint64{5, 0x3b6f}, trap},
		{"openat", a64, arm64Openat, nil, retAllow},
		{"fstatat (os.Stat)", a64, arm64Fstatat, nil, retAllow},
		{"epoll_pwait (the netpoller)", a64, arm64EpollPwait, nil, retAllow},
		{"renameat (os.Rename)", a64, arm64Renameat, nil, retAllow},
		{"read", a64, arm64Read, nil, retAllow},
		{"write", a64, arm64Write, nil, retAllow},
		{"close", a64, arm64Close, nil, retAllow},
		{"futex", a64, arm64Futex, nil, retAllow},
		{"mmap RW", a64, arm64Mmap, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, retAllow},
		{"mmap RX", a64, arm64Mmap, []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, trap},
		{"clone a thread", a64, arm64Clone, []uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND}, retAllow},
		{"fork", a64, arm64Clone, []uint64{uint64(unix.SIGCHLD)}, trap},
		{"clone3", a64, arm64Clone3, nil, retErrno | uint32(unix.ENOSYS)},
		{"socket AF_UNIX", a64, arm64Socket, []uint64{unix.AF_UNIX}, retAllow},
		{"socket AF_NETLINK", a64, arm64Socket, []uint64{unix.AF_NETLINK}, trap},
		{"execve", a64, arm64Execve, nil, trap},
		{"personality", a64, arm64Personal, nil, trap},
		{"a number with bit 30 set (no x32 on arm64: the default action)", a64, arm64Read | x32Bit, nil, trap},
		{"x86-64's read (another architecture)", auditArchX86_64, 0, nil, trap},
		{"AArch32's read", 0x40000028, 3, nil, trap},
	})

	vraw, err := vcpuFilter(SeccompOn, 2, Options{})
	vvm := rawVM(t, vraw, err)
	trap2 := uint32(retTrap | (roleVCPU0 + 2))
	checkDecisions(t, vvm, "arm64 vCPU 2's filter", []filterCase{
		{"KVM_RUN", a64, arm64Ioctl, []uint64{5, 0xae80}, retAllow},
		{"KVM_IRQ_LINE", a64, arm64Ioctl, []uint64{4, 0x4008ae61}, retAllow},
		{"KVM_ARM_VCPU_INIT", a64, arm64Ioctl, []uint64{5, 0x4020aeae}, trap2},
		{"read", a64, arm64Read, nil, retAllow},
		{"epoll_pwait", a64, arm64EpollPwait, nil, retAllow},
		{"openat", a64, arm64Openat, nil, trap2},
		{"socket AF_UNIX", a64, arm64Socket, []uint64{unix.AF_UNIX}, trap2},
		{"clone a thread", a64, arm64Clone, []uint64{unix.CLONE_VM | unix.CLONE_THREAD}, trap2},
	})

	// Device threads: KVM_IRQFD (INTx's resample irqfd, assigned by the
	// thread that first raises the line) besides their own requests.
	draw, err := diskWorkerRaw(SeccompOn)
	dvm := rawVM(t, draw, err)
	trapD := uint32(retTrap | roleDiskWorker)
	checkDecisions(t, dvm, "arm64 disk worker filter", []filterCase{
		{"pread64", a64, 67, nil, retAllow},
		{"KVM_IRQFD (INTx)", a64, arm64Ioctl, []uint64{4, 0x4020ae76}, retAllow},
		{"KVM_CHECK_EXTENSION (asked when the VM is created, not here)", a64, arm64Ioctl, []uint64{3, 0xae03}, trapD},
		{"KVM_RUN", a64, arm64Ioctl, []uint64{5, 0xae80}, trapD},
		{"KVM_SET_GSI_ROUTING", a64, arm64Ioctl, []uint64{4, 0x4008ae6a}, trapD},
		{"openat", a64, arm64Openat, nil, trapD},
	})
	sraw, err := vsockQueueRaw(SeccompOn)
	svm := rawVM(t, sraw, err)
	trapS := uint32(retTrap | roleVsockQueue)
	checkDecisions(t, svm, "arm64 vsock queue filter", []filterCase{
		{"KVM_IRQFD (INTx)", a64, arm64Ioctl, []uint64{4, 0x4020ae76}, retAllow},
		{"KVM_IOEVENTFD", a64, arm64Ioctl, []uint64{4, 0x4040ae79}, trapS},
	})
	nraw, err := netQueueFilter(SeccompOn, []int{7})
	nvm := rawVM(t, nraw, err)
	trapN := uint32(retTrap | roleNetQueue)
	checkDecisions(t, nvm, "arm64 net queue filter", []filterCase{
		{"KVM_IRQFD (INTx)", a64, arm64Ioctl, []uint64{4, 0x4020ae76}, retAllow},
		{"TUNSETQUEUE", a64, arm64Ioctl, []uint64{7, unix.TUNSETQUEUE}, retAllow},
		{"TUNSETOFFLOAD", a64, arm64Ioctl, []uint64{7, unix.TUNSETOFFLOAD}, trapN},
	})
	if names, _ := DeviceIoctls("virtio-blk"); !slices.Equal(names, []string{"KVM_IRQFD"}) {
		t.Errorf("arm64 DeviceIoctls(virtio-blk) = %v, want [KVM_IRQFD]", names)
	}
}

// TestKVMARM64IoctlsCovered keeps the arm64 filter in step with
// accel/kvmarm: every request number accel/kvmarm's abi.go defines (as
// ioctlNum(dir, nr, size), evaluated here from the file's constants) must
// be in kvmARM64Ioctls or kvmARM64SetupOnly with the same value.
func TestKVMARM64IoctlsCovered(t *testing.T) {
	f, src := parseBackendABI(t, "kvmarm")
	consts := map[string]uint64{}
	var eval func(e ast.Expr) (uint64, bool)
	eval = func(e ast.Expr) (uint64, bool) {
		switch e := e.(type) {
		case *ast.BasicLit:
			v, err := strconv.ParseUint(e.Value, 0, 64)
			return v, err == nil
		case *ast.Ident:
			v, ok := consts[e.Name]
			return v, ok
		case *ast.ParenExpr:
			return eval(e.X)
		case *ast.BinaryExpr:
			x, ok1 := eval(e.X)
			y, ok2 := eval(e.Y)
			if !ok1 || !ok2 {
				return 0, false
			}
			switch e.Op {
			case token.OR:
				return x | y, true
			case token.SHL:
				return x << y, true
			}
		case *ast.CallExpr:
			if id, ok := e.Fun.(*ast.Ident); ok && id.Name == "uintptr" && len(e.Args) == 1 {
				return eval(e.Args[0])
			}
		}
		return 0, false
	}
	// Two passes: the constants (sizes, directions), then the requests.
	var reqs []*ast.ValueSpec
	ast.Inspect(f, func(node ast.Node) bool {
		vs, ok := node.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || len(vs.Values) != 1 {
			return true
		}
		if v, ok := eval(vs.Values[0]); ok {
			consts[vs.Names[0].Name] = v
		}
		if call, ok := vs.Values[0].(*ast.CallExpr); ok {
			if id, ok := call.Fun.(*ast.Ident); ok && id.Name == "ioctlNum" {
				reqs = append(reqs, vs)
			}
		}
		return true
	})
	known := map[uint32]string{}
	for _, r := range append(append([]ioctlReq(nil), kvmARM64Ioctls...), kvmARM64SetupOnly...) {
		if prev, dup := known[r.req]; dup {
			t.Errorf("%s and %s: same number %#x", prev, r.name, r.req)
		}
		known[r.req] = r.name
	}
	for _, vs := range reqs {
		call := vs.Values[0].(*ast.CallExpr)
		var a [3]uint64
		for i := range a {
			v, ok := eval(call.Args[i])
			if !ok {
				t.Fatalf("%s: cannot evaluate argument %d of ioctlNum", vs.Names[0].Name, i)
			}
			a[i] = v
		}
		req := uint32(kvmARMIoc(uint32(a[0]), uint32(a[1]), uint32(a[2])))
		if _, ok := known[req]; !ok {
			t.Errorf("accel/kvmarm's %s (%#x) is neither allowed nor listed as set-up only: decide in ioctls_kvmarm.go", vs.Names[0].Name, req)
		}
	}
	if len(reqs) < 20 {
		t.Fatalf("found only %d ioctlNum requests in %s: has the file changed shape?", len(reqs), src)
	}
	if len(reqs) != len(known) {
		t.Errorf("accel/kvmarm defines %d requests, confine lists %d: a request listed here that the backend no longer makes should go", len(reqs), len(known))
	}
}

// TestSigactionLayout checks kernelSigaction against the kernel's struct
// sigaction on x86-64 and arm64 (64-bit pointers, unsigned long flags,
// sa_restorer, a 64-bit sigset_t).
func TestSigactionLayout(t *testing.T) {
	var s kernelSigaction
	got := []uintptr{unsafe.Sizeof(s), unsafe.Offsetof(s.handler), unsafe.Offsetof(s.flags), unsafe.Offsetof(s.restorer), unsafe.Offsetof(s.mask)}
	want := []uintptr{32, 0, 8, 16, 24}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("kernelSigaction size and offsets %v, want %v", got, want)
		}
	}
}
