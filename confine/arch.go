package confine

import (
	"fmt"

	"github.com/elastic/go-seccomp-bpf/arch"
)

// govmm is built for x86-64 and arm64, and its filters are the same
// allowlists on both: the lists in seccomp.go, vcpu.go, worker.go and
// devthread.go name system calls as x86-64 spells them, and each
// architecture resolves the names to its own numbers (go-seccomp-bpf's
// tables, from the kernels' syscall tables). What differs is here: the
// AUDIT_ARCH the filter insists on, the names one architecture spells
// differently or lacks, and the ioctl requests its KVM takes.

// archInfo is one architecture as the filters see it.
type archInfo struct {
	name  string
	audit uint32 // AUDIT_ARCH_*: seccomp_data.arch of a native call
	// x32 is whether native numbers with bit 30 set are another ABI's
	// (x86-64's x32), which the filter refuses with ENOSYS.
	x32 bool
	sys *arch.Info
	// renamed maps an allowlist name (x86-64's) to this architecture's
	// name for the same call, or to "" where the architecture lacks it
	// and the Go runtime and standard library use a sibling that the
	// lists also have.
	renamed map[string]string
	// kvm are the KVM requests allowed once the VM runs, in the order
	// the filter tests them (KVM_RUN first); kvmSetupOnly are those
	// made while the VM is built and refused after.
	kvm, kvmSetupOnly []ioctlReq
	// deviceIoctls are requests every device thread role's filter
	// allows on this architecture besides the role's own list.
	deviceIoctls []ioctlReq
	// mshvVFIO: the build has the MSHV backend and VFIO passthrough,
	// whose requests the filter then allows.
	mshvVFIO bool
}

const (
	auditArchX86_64  = 0xc000003e
	auditArchAARCH64 = 0xc00000b7
)

var archAMD64 = archInfo{
	name:         "x86-64",
	audit:        auditArchX86_64,
	x32:          true,
	sys:          arch.X86_64,
	kvm:          kvmIoctls,
	kvmSetupOnly: kvmSetupOnly,
	mshvVFIO:     true,
}

var archARM64 = archInfo{
	name:  "arm64",
	audit: auditArchAARCH64,
	sys:   arch.AARCH64,
	renamed: map[string]string{
		// arm64 (asm-generic) has the same call, number 79, which the
		// kernel's table calls newfstatat and go-seccomp-bpf's
		// fstatat; Go's os.Stat makes it (syscall.Fstatat).
		"newfstatat": "fstatat",
		// arm64 has no epoll_wait, only epoll_pwait, which the Go
		// runtime's netpoller uses there (internal/runtime/syscall's
		// EpollWait) and the lists have.
		"epoll_wait": "",
	},
	kvm:          kvmARM64Ioctls,
	kvmSetupOnly: kvmARM64SetupOnly,
	// A virtio function's INTx is a resample irqfd on the in-kernel
	// vGIC's SPI, assigned (KVM_IRQFD) by the thread that first raises
	// the line: with a driver that leaves MSI-X off, a disk worker's or
	// a queue thread's completion (accel/kvmarm asked whether KVM
	// resamples irqfds when it created the VM, so that thread makes no
	// query). On x86 govmm's userspace IOAPIC serves INTx without an
	// ioctl, so device threads there make none.
	deviceIoctls: []ioctlReq{{"KVM_IRQFD", kvmARMIoc(iocWrite, 0x76, 32)}},
	// arm64 govmm has no MSHV backend (mshvarm refuses) and no
	// --device (VFIO): their requests stay refused.
}

// nr is the system call name's number on a, with ok false where a lacks
// the call by design (renamed to ""); an unknown name is an error.
func (a *archInfo) nr(name string) (n uint32, ok bool, err error) {
	spelled := name
	if r, found := a.renamed[name]; found {
		if r == "" {
			return 0, false, nil
		}
		spelled = r
	}
	v, found := a.sys.SyscallNames[spelled]
	if !found {
		return 0, false, fmt.Errorf("no %s system call named %q", a.name, spelled)
	}
	return uint32(v), true, nil
}

// has reports whether the host architecture has the call.
func has(name string) bool {
	_, ok, err := hostArch.nr(name)
	return ok && err == nil
}

// present is names without those the host architecture lacks.
func present(names []string) []string {
	var out []string
	for _, n := range names {
		if has(n) {
			out = append(out, n)
		}
	}
	return out
}
