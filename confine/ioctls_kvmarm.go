package confine

// kvmARMIoc encodes an arm64 KVM request the asm-generic way (direction
// in bits 30-31, the argument's size in bits 16-29, type 0xae, number).
func kvmARMIoc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | 0xae<<8 | nr }

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// kvmARM64Ioctls are the KVM requests govmm's arm64 backend (accel/kvmarm)
// makes once the VM runs; TestKVMARM64IoctlsCovered checks that every
// request accel/kvmarm defines is here or in kvmARM64SetupOnly, with the
// same number. KVM_RUN comes first: the filter tests requests in order.
var kvmARM64Ioctls = []ioctlReq{
	{"KVM_RUN", kvmARMIoc(iocNone, 0x80, 0)},
	// The vGIC's SPI lines: the PL011's interrupt and virtio INTx.
	{"KVM_IRQ_LINE", kvmARMIoc(iocWrite, 0x61, 8)},
	// MSI-X vectors the guest programs (GSI routes through the ITS),
	// and their irqfds and the queues' doorbells.
	{"KVM_SET_GSI_ROUTING", kvmARMIoc(iocWrite, 0x6a, 8)},
	{"KVM_IRQFD", kvmARMIoc(iocWrite, 0x76, 32)},
	{"KVM_IOEVENTFD", kvmARMIoc(iocWrite, 0x79, 64)},
	// A snapshot or migration saves (and a restore sets) the vCPUs'
	// registers, listed by KVM_GET_REG_LIST, and their power state.
	{"KVM_GET_ONE_REG", kvmARMIoc(iocWrite, 0xab, 16)},
	{"KVM_SET_ONE_REG", kvmARMIoc(iocWrite, 0xac, 16)},
	{"KVM_GET_REG_LIST", kvmARMIoc(iocRead|iocWrite, 0xb0, 8)},
	{"KVM_GET_MP_STATE", kvmARMIoc(iocRead, 0x98, 4)},
	{"KVM_SET_MP_STATE", kvmARMIoc(iocWrite, 0x99, 4)},
	// The vGICv3's and ITS's registers saved, and their control
	// attributes (the ITS tables and pending tables flushed to guest
	// memory for a snapshot are KVM_SET_DEVICE_ATTR).
	{"KVM_GET_DEVICE_ATTR", kvmARMIoc(iocWrite, 0xe2, 24)},
	{"KVM_SET_DEVICE_ATTR", kvmARMIoc(iocWrite, 0xe1, 24)},
	{"KVM_HAS_DEVICE_ATTR", kvmARMIoc(iocWrite, 0xe3, 24)},
	// A live migration's dirty log: logging turned on and off on the
	// RAM slot, and the bitmap read.
	{"KVM_GET_DIRTY_LOG", kvmARMIoc(iocWrite, 0x42, 16)},
	{"KVM_SET_USER_MEMORY_REGION", kvmARMIoc(iocWrite, 0x46, 32)},
	{"KVM_CHECK_EXTENSION", kvmARMIoc(iocNone, 0x03, 0)},
}

// kvmARM64SetupOnly are the arm64 KVM requests made only while the VM is
// built: creating VMs, vCPUs and in-kernel devices (the vGIC and ITS)
// and initialising vCPUs. Refused once it runs.
var kvmARM64SetupOnly = []ioctlReq{
	{"KVM_GET_API_VERSION", kvmARMIoc(iocNone, 0x00, 0)},
	{"KVM_CREATE_VM", kvmARMIoc(iocNone, 0x01, 0)},
	{"KVM_GET_VCPU_MMAP_SIZE", kvmARMIoc(iocNone, 0x04, 0)},
	{"KVM_CREATE_VCPU", kvmARMIoc(iocNone, 0x41, 0)},
	{"KVM_ENABLE_CAP", kvmARMIoc(iocWrite, 0xa3, 104)},
	{"KVM_ARM_VCPU_INIT", kvmARMIoc(iocWrite, 0xae, 32)},
	{"KVM_ARM_PREFERRED_TARGET", kvmARMIoc(iocRead, 0xaf, 32)},
	{"KVM_CREATE_DEVICE", kvmARMIoc(iocRead|iocWrite, 0xe0, 12)},
}
