package confine

import (
	"slices"

	"golang.org/x/sys/unix"

	vhostabi "govmm/virtio/vhost/abi"
)

// ioctlReq is an ioctl request number the filter allows, with its name.
type ioctlReq struct {
	name string
	req  uint32
}

// kvmIoctls are the KVM requests govmm makes once the VM runs on x86-64
// (arm64's are kvmARM64Ioctls; the numbers of <linux/kvm.h> on x86-64, as accel/kvm defines them; ioctls_test.go
// checks that every request accel/kvm defines is here or in kvmSetupOnly).
// KVM_RUN comes first: the filter tests requests in this order.
var kvmIoctls = []ioctlReq{
	{"KVM_RUN", 0xae80},
	{"KVM_GET_REGS", 0x8090ae81},
	{"KVM_SET_REGS", 0x4090ae82},
	{"KVM_GET_SREGS", 0x8138ae83},
	{"KVM_SET_SREGS", 0x4138ae84},
	{"KVM_INTERRUPT", 0x4004ae86},
	{"KVM_NMI", 0xae9a},
	{"KVM_SIGNAL_MSI", 0x4020aea5},
	{"KVM_SET_GSI_ROUTING", 0x4008ae6a},
	{"KVM_IRQFD", 0x4020ae76},
	{"KVM_IOEVENTFD", 0x4040ae79},
	{"KVM_GET_MSRS", 0xc008ae88},
	{"KVM_SET_MSRS", 0x4008ae89},
	{"KVM_GET_FPU", 0x81a0ae8c},
	{"KVM_SET_FPU", 0x41a0ae8d},
	{"KVM_GET_LAPIC", 0x8400ae8e},
	{"KVM_SET_LAPIC", 0x4400ae8f},
	{"KVM_GET_MP_STATE", 0x8004ae98},
	{"KVM_SET_MP_STATE", 0x4004ae99},
	{"KVM_GET_VCPU_EVENTS", 0x8040ae9f},
	{"KVM_SET_VCPU_EVENTS", 0x4040aea0},
	{"KVM_GET_DEBUGREGS", 0x8080aea1},
	{"KVM_SET_DEBUGREGS", 0x4080aea2},
	{"KVM_GET_XSAVE", 0x9000aea4},
	{"KVM_SET_XSAVE", 0x5000aea5},
	{"KVM_GET_XSAVE2", 0x9000aecf},
	{"KVM_GET_XCRS", 0x8188aea6},
	{"KVM_SET_XCRS", 0x4188aea7},
	// CET's shadow-stack pointer (KVM_REG_GUEST_SSP), saved and
	// restored with the vCPU's other state.
	{"KVM_GET_ONE_REG", 0x4010aeab},
	{"KVM_SET_ONE_REG", 0x4010aeac},
	{"KVM_GET_CLOCK", 0x8030ae7c},
	{"KVM_SET_CLOCK", 0x4030ae7b},
	{"KVM_GET_TSC_KHZ", 0xaea3},
	{"KVM_GET_DIRTY_LOG", 0x4010ae42},
	// Dirty logging on and off for a migration, PCI BARs that move.
	{"KVM_SET_USER_MEMORY_REGION", 0x4020ae46},
	{"KVM_CHECK_EXTENSION", 0xae03},
	// A snapshot lists the MSRs to save.
	{"KVM_GET_MSR_INDEX_LIST", 0xc004ae02},
	// mshvsim gives a vCPU its CPUID again when the guest changes what
	// it depends on (Hyper-V's interface).
	{"KVM_SET_CPUID2", 0x4008ae90},
}

// kvmSetupOnly are KVM requests govmm makes only while it builds the VM;
// after set-up they are refused. Creating VMs and vCPUs is what matters
// most here: a subverted VMM cannot grow more of them.
var kvmSetupOnly = []ioctlReq{
	{"KVM_GET_API_VERSION", 0xae00},
	{"KVM_CREATE_VM", 0xae01},
	{"KVM_GET_VCPU_MMAP_SIZE", 0xae04},
	{"KVM_GET_SUPPORTED_CPUID", 0xc008ae05},
	{"KVM_GET_MSR_FEATURE_INDEX_LIST", 0xc004ae0a},
	{"KVM_CREATE_VCPU", 0xae41},
	{"KVM_SET_TSS_ADDR", 0xae47},
	{"KVM_SET_IDENTITY_MAP_ADDR", 0x4008ae48},
	{"KVM_ENABLE_CAP", 0x4068aea3},
}

// The TAP requests virtio-net makes while the guest runs: the offloads
// follow what the guest's driver negotiates (on the vCPU thread that
// writes DRIVER_OK or a reset), and a multiqueue TAP's queues are
// attached and detached as the driver enables queue pairs (on the
// control queue's thread, or the thread that restores a snapshot).
var (
	tunSetOffload = ioctlReq{"TUNSETOFFLOAD", unix.TUNSETOFFLOAD}
	tunSetQueue   = ioctlReq{"TUNSETQUEUE", unix.TUNSETQUEUE}
	tapIoctls     = []ioctlReq{tunSetOffload, tunSetQueue}
)

// terminalIoctls restore the terminal a console put in raw mode
// (golang.org/x/term) when the VM ends.
var terminalIoctls = []ioctlReq{
	{"TCGETS", unix.TCGETS},
	{"TCSETS", unix.TCSETS},
}

// vhostIoctls are the vhost requests a kernel-served virtio device
// (--vsock without socket=, vhost-vsock; --net vhost=on, vhost-net)
// makes once the guest runs, on the vCPU thread that writes the driver's
// DRIVER_OK, reset or MSI-X mask, or on the thread that pauses or
// resumes the VM: its queues programmed, started (vhost-net: the TAP
// queue made a ring's backend) and stopped, and their interrupt eventfd
// moved while a vector is masked; and, on the thread that live-migrates,
// vhost-net's dirty log set (VHOST_SET_LOG_BASE; features and ring
// addresses again for the log). VHOST_SET_OWNER, VHOST_SET_MEM_TABLE and
// VHOST_VSOCK_SET_GUEST_CID are made at set-up only, and refused after.
func vhostIoctls() []ioctlReq {
	return []ioctlReq{
		{"VHOST_SET_VRING_CALL", uint32(vhostabi.SetVringCall)},
		{"VHOST_SET_FEATURES", uint32(vhostabi.SetFeatures)},
		{"VHOST_SET_VRING_NUM", uint32(vhostabi.SetVringNum)},
		{"VHOST_SET_VRING_ADDR", uint32(vhostabi.SetVringAddr)},
		{"VHOST_SET_VRING_BASE", uint32(vhostabi.SetVringBase)},
		{"VHOST_GET_VRING_BASE", uint32(vhostabi.GetVringBase)},
		{"VHOST_SET_VRING_KICK", uint32(vhostabi.SetVringKick)},
		{"VHOST_VSOCK_SET_RUNNING", uint32(vhostabi.VsockSetRunning)},
		{"VHOST_NET_SET_BACKEND", uint32(vhostabi.NetSetBackend)},
		{"VHOST_SET_LOG_BASE", uint32(vhostabi.SetLogBase)},
	}
}

// ioctls is every request the filter allows, in the order it tests them:
// the architecture's KVM requests, MSHV's and VFIO's where the build has
// them (x86-64), then vhost's, the TAP's and the terminal's.
func ioctls() []ioctlReq {
	out := append([]ioctlReq(nil), hostArch.kvm...)
	if hostArch.mshvVFIO {
		out = append(out, mshvIoctls()...)
		out = append(out, vfioIoctls()...)
	}
	out = append(out, vhostIoctls()...)
	out = append(out, tapIoctls...)
	return append(out, terminalIoctls...)
}

// The device threads with filters of their own take ioctl with their own
// requests only: they raise interrupts by writing eventfds (an MSI-X
// vector's irqfd; INTx's trigger, which govmm's userspace IOAPIC serves
// from a goroutine of its own), never by an ioctl, and what else a
// running VM asks of KVM, MSHV, VFIO and vhost (routes, doorbells, BARs,
// a kernel backend started, stopped or moved) comes from the vCPU
// threads, the control socket's and migration's goroutines, and the
// goroutine that stops a kernel backend after a queue thread found the
// driver at fault (virtio.PCI). TestRoleIoctls and virtio's and
// virtio/net's thread tests keep these lists in step with the code.
var (
	// diskWorkerIoctls: none. A virtio-blk worker reads and writes the
	// image and completes requests.
	diskWorkerIoctls []ioctlReq
	// netQueueIoctls: the control queue's thread attaches and detaches
	// a multiqueue TAP's queues as the driver enables queue pairs
	// (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET); the other queue threads and
	// the TAP readers make none.
	netQueueIoctls = []ioctlReq{tunSetQueue}
	// vsockQueueIoctls: none. A vsock queue thread parses the guest's
	// packets and hands their data to connections' goroutines.
	vsockQueueIoctls []ioctlReq
)

// DeviceIoctls names the ioctl requests the filter of device thread role
// allows on the host architecture ("virtio-blk", "virtio-net", "virtio-vsock"; ok false for
// another), for the device packages' tests, which check that the threads
// they confine make no other.
func DeviceIoctls(role string) (names []string, ok bool) {
	var reqs []ioctlReq
	switch role {
	case "virtio-blk":
		reqs = diskWorkerIoctls
	case "virtio-net":
		reqs = netQueueIoctls
	case "virtio-vsock":
		reqs = vsockQueueIoctls
	default:
		return nil, false
	}
	reqs = append(slices.Clone(reqs), hostArch.deviceIoctls...)
	for _, r := range reqs {
		names = append(names, r.name)
	}
	return names, true
}
