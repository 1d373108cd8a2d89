package confine

import (
	"encoding/binary"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// eval runs the filter on one system call, as the kernel would. The
// kernel loads seccomp_data's 32-bit words in host order; x/net/bpf's VM
// loads packet words big-endian, so each word is stored big-endian here
// (an argument's low word first, as on x86-64).
func eval(t *testing.T, vm *bpf.VM, archID uint32, nr uint32, args ...uint64) uint32 {
	t.Helper()
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[dataNr:], nr)
	binary.BigEndian.PutUint32(data[dataArch:], archID)
	for i, a := range args {
		binary.BigEndian.PutUint32(data[dataArgs+8*i:], uint32(a))
		binary.BigEndian.PutUint32(data[dataArgs+8*i+4:], uint32(a>>32))
	}
	r, err := vm.Run(data)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(r)
}

// filterCase is one system call and what a filter must return for it.
type filterCase struct {
	what string
	arch uint32
	nr   uint32
	args []uint64
	want uint32
}

// checkDecisions evaluates each case on vm.
func checkDecisions(t *testing.T, vm *bpf.VM, filter string, cases []filterCase) {
	t.Helper()
	for _, c := range cases {
		if got := eval(t, vm, c.arch, c.nr, c.args...); got != c.want {
			t.Errorf("%s: %s: filter returned %#x, want %#x", filter, c.what, got, c.want)
		}
	}
}

// mustNr is sysnr for a name the test knows to exist.
func mustNr(t *testing.T, name string) uint32 {
	t.Helper()
	n, err := sysnr(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFilterDecisions(t *testing.T) {
	withArch(t, &archAMD64) // x86-64's numbers, on any host
	insts, err := program(SeccompOn)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := bpf.NewVM(insts)
	if err != nil {
		t.Fatal(err)
	}
	nr := func(name string) uint32 { return mustNr(t, name) }
	const x86 = auditArchX86_64
	checkDecisions(t, vm, "process filter", []filterCase{
		{"KVM_RUN", x86, nr("ioctl"), []uint64{5, 0xae80}, retAllow},
		{"KVM_RUN with garbage in the high half", x86, nr("ioctl"), []uint64{5, 0xdead_0000_ae80}, retAllow},
		{"KVM_SET_CPUID2", x86, nr("ioctl"), []uint64{5, 0x4008ae90}, retAllow},
		{"TCSETS", x86, nr("ioctl"), []uint64{0, unix.TCSETS}, retAllow},
		{"TUNSETOFFLOAD", x86, nr("ioctl"), []uint64{7, unix.TUNSETOFFLOAD}, retAllow},
		{"TUNSETIFF (a TAP is attached before the filter)", x86, nr("ioctl"), []uint64{7, unix.TUNSETIFF}, retTrap},
		{"MSHV_RUN_VP", x86, nr("ioctl"), []uint64{5, uint64(mshvIoctls()[0].req)}, retAllow},
		{"KVM_CREATE_VM", x86, nr("ioctl"), []uint64{3, 0xae01}, retTrap},
		{"VHOST_SET_FEATURES", x86, nr("ioctl"), []uint64{9, 0x4008af00}, retAllow},
		{"VHOST_SET_VRING_NUM", x86, nr("ioctl"), []uint64{9, 0x4008af10}, retAllow},
		{"VHOST_SET_VRING_ADDR", x86, nr("ioctl"), []uint64{9, 0x4028af11}, retAllow},
		{"VHOST_SET_VRING_BASE", x86, nr("ioctl"), []uint64{9, 0x4008af12}, retAllow},
		{"VHOST_GET_VRING_BASE", x86, nr("ioctl"), []uint64{9, 0xc008af12}, retAllow},
		{"VHOST_SET_VRING_KICK", x86, nr("ioctl"), []uint64{9, 0x4008af20}, retAllow},
		{"VHOST_SET_VRING_CALL", x86, nr("ioctl"), []uint64{9, 0x4008af21}, retAllow},
		{"VHOST_VSOCK_SET_RUNNING", x86, nr("ioctl"), []uint64{9, 0x4004af61}, retAllow},
		{"VHOST_NET_SET_BACKEND", x86, nr("ioctl"), []uint64{9, 0x4008af30}, retAllow},
		{"VHOST_SET_LOG_BASE", x86, nr("ioctl"), []uint64{9, 0x4008af04}, retAllow},
		{"VFIO_IOMMU_UNMAP_DMA (the legacy container, at exit)", x86, nr("ioctl"), []uint64{10, 0x3b72}, retAllow},
		{"VFIO_MIG_GET_PRECOPY_INFO (a live migration's rounds)", x86, nr("ioctl"), []uint64{12, 0x3b79}, retAllow},
		{"IOMMU_IOAS_UNMAP (iommufd, at exit)", x86, nr("ioctl"), []uint64{10, 0x3b86}, retAllow},
		{"IOMMU_IOAS_MAP (set-up only)", x86, nr("ioctl"), []uint64{10, 0x3b85}, retTrap},
		{"VFIO_DEVICE_BIND_IOMMUFD (set-up only)", x86, nr("ioctl"), []uint64{11, 0x3b76}, retTrap},
		{"VFIO_DEVICE_ATTACH_IOMMUFD_PT (set-up only)", x86, nr("ioctl"), []uint64{11, 0x3b77}, retTrap},
		{"VHOST_SET_OWNER (set-up only)", x86, nr("ioctl"), []uint64{9, 0xaf01}, retTrap},
		{"VHOST_SET_MEM_TABLE (set-up only)", x86, nr("ioctl"), []uint64{9, 0x4008af03}, retTrap},
		{"VHOST_VSOCK_SET_GUEST_CID (set-up only)", x86, nr("ioctl"), []uint64{9, 0x4008af60}, retTrap},
		{"KVM_CREATE_VCPU", x86, nr("ioctl"), []uint64{4, 0xae41}, retTrap},
		{"ioctl 0 (read's number: a filter that compares the argument with call numbers would allow it)", x86, nr("ioctl"), []uint64{4, 0}, retTrap},
		{"TIOCSTI", x86, nr("ioctl"), []uint64{0, unix.TIOCSTI}, retTrap},
		{"read", x86, nr("read"), nil, retAllow},
		{"futex", x86, nr("futex"), nil, retAllow},
		{"mmap RW", x86, nr("mmap"), []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, retAllow},
		{"mmap RX", x86, nr("mmap"), []uint64{0, 4096, unix.PROT_READ | unix.PROT_EXEC}, retTrap},
		{"mprotect X", x86, nr("mprotect"), []uint64{0, 4096, unix.PROT_EXEC}, retTrap},
		{"mprotect none", x86, nr("mprotect"), []uint64{0, 4096, unix.PROT_NONE}, retAllow},
		{"clone a thread", x86, nr("clone"), []uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND}, retAllow},
		{"fork", x86, nr("clone"), []uint64{uint64(unix.SIGCHLD)}, retTrap},
		{"clone3", x86, nr("clone3"), nil, retErrno | uint32(unix.ENOSYS)},
		{"socket AF_UNIX", x86, nr("socket"), []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, retAllow},
		{"socket AF_INET6", x86, nr("socket"), []uint64{unix.AF_INET6, unix.SOCK_STREAM}, retAllow},
		{"socket AF_NETLINK", x86, nr("socket"), []uint64{unix.AF_NETLINK, unix.SOCK_RAW}, retTrap},
		{"socket AF_PACKET", x86, nr("socket"), []uint64{unix.AF_PACKET, unix.SOCK_RAW}, retTrap},
		{"tgkill a thread of this process", x86, nr("tgkill"), []uint64{uint64(os.Getpid()), 7, uint64(unix.SIGURG)}, retAllow},
		{"tgkill another process", x86, nr("tgkill"), []uint64{1, 1, uint64(unix.SIGKILL)}, retTrap},
		{"kill another process", x86, nr("kill"), []uint64{1, uint64(unix.SIGKILL)}, retTrap},
		{"kill itself", x86, nr("kill"), []uint64{uint64(os.Getpid()), uint64(unix.SIGQUIT)}, retAllow},
		{"execve", x86, nr("execve"), nil, retTrap},
		{"ptrace", x86, nr("ptrace"), nil, retTrap},
		{"mount", x86, nr("mount"), nil, retTrap},
		{"open (not openat)", x86, nr("open"), nil, retTrap},
		{"bind", x86, nr("bind"), nil, retTrap},
		{"x32 read", x86, nr("read") | x32Bit, nil, retErrno | uint32(unix.ENOSYS)},
		{"i386 read", 0x40000003, 3, nil, retTrap},
	})

	logInsts, err := program(SeccompLog)
	if err != nil {
		t.Fatal(err)
	}
	lvm, _ := bpf.NewVM(logInsts)
	if got := eval(t, lvm, x86, nr("execve")); got != retLog {
		t.Errorf("log mode: execve gets %#x, want SECCOMP_RET_LOG", got)
	}
}

// TestKVMIoctlsCovered keeps the filter in step with accel/kvm: every
// ioctl request number accel/kvm defines must be in kvmIoctls (allowed)
// or kvmSetupOnly (refused after set-up), with the same value, so a new
// ioctl cannot be added to the backend without deciding here.
func TestKVMIoctlsCovered(t *testing.T) {
	f, src := parseBackendABI(t, "kvm")
	known := map[uint32]string{}
	for _, r := range append(append([]ioctlReq(nil), kvmIoctls...), kvmSetupOnly...) {
		if prev, dup := known[r.req]; dup {
			t.Errorf("%s and %s: same number %#x", prev, r.name, r.req)
		}
		known[r.req] = r.name
	}
	n := 0
	ast.Inspect(f, func(node ast.Node) bool {
		vs, ok := node.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || len(vs.Values) != 1 || !strings.HasPrefix(vs.Names[0].Name, "ioctl") {
			return true
		}
		lit, ok := vs.Values[0].(*ast.BasicLit)
		if !ok {
			return true
		}
		v, err := strconv.ParseUint(lit.Value, 0, 32)
		if err != nil {
			t.Errorf("%s = %s: %v", vs.Names[0].Name, lit.Value, err)
			return true
		}
		n++
		if _, ok := known[uint32(v)]; !ok {
			t.Errorf("accel/kvm's %s (%#x) is neither allowed nor listed as set-up only: decide in ioctls.go", vs.Names[0].Name, v)
		}
		return true
	})
	if n < 40 {
		t.Fatalf("found only %d ioctl constants in %s: has the file changed shape?", n, src)
	}
}

// TestMSHVIoctlsCovered does the same for the /dev/mshv requests.
func TestMSHVIoctlsCovered(t *testing.T) {
	known := map[uint32]bool{}
	for _, r := range append(mshvIoctls(), mshvSetupOnly()...) {
		known[r.req] = true
	}
	// Every Req* in mshvabi, by value (reflection-free: the list is short).
	for _, want := range []uint32{0xC010B801} { // GET_HOST_PARTITION_PROPERTY shares GET_VP_STATE's number
		if !known[want] {
			t.Errorf("%#x not covered", want)
		}
	}
	t.Logf("filter: %d system calls, %d KVM ioctls, %d MSHV ioctls", Syscalls(), len(kvmIoctls), len(mshvIoctls()))
	if len(known) != 12 {
		t.Errorf("%d distinct MSHV requests covered, want the 12 distinct numbers mshvabi defines", len(known))
	}
}

// TestSiginfoOffsets checks the siginfo_t offsets the assembly handler
// reads against the C library's headers.
func TestSiginfoOffsets(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("no gcc to read the C headers with")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "off.c")
	prog := `#include <signal.h>
#include <stddef.h>
#include <stdio.h>
int main(void) { printf("%zu %zu %zu\n", offsetof(siginfo_t, si_errno), offsetof(siginfo_t, si_syscall), offsetof(siginfo_t, si_arch)); return 0; }
`
	if err := writeFile(src, prog); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "off")
	if out, err := exec.Command(cc, "-o", exe, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(exe).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strconv.Itoa(siginfoErrnoOff) + " " + strconv.Itoa(siginfoSyscallOff) + " " + strconv.Itoa(siginfoArchOff)
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("siginfo_t si_errno, si_syscall, si_arch offsets: C says %s, the handler uses %s", got, want)
	}
}

// parseBackendABI parses accel/BACKEND/abi.go, where an accelerator
// backend defines its ioctl request numbers, and returns it and its path.
func parseBackendABI(t *testing.T, backend string) (*ast.File, string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(filepath.Dir(file)), "accel", backend, "abi.go")
	f, err := parser.ParseFile(token.NewFileSet(), src, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return f, src
}
