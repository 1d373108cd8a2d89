package kvmarm

import (
	"strings"
	"testing"
	"unsafe"

	"govmm/accel"
	"govmm/internal/abicheck"
)

// abiCase is a value govmm computes and what it must be.
type abiCase[T comparable] struct {
	name      string
	got, want T
}

func check[T comparable](t *testing.T, cases []abiCase[T]) {
	t.Helper()
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
}

// abi pins the structs, request numbers and constants govmm uses to
// <linux/kvm.h> on arm64 (and the ids QEMU and kvmtool print for these
// registers): checked against the arm64 headers with the cross compiler
// .ci/run installs.
var abi = []abicheck.Value{
	abicheck.V("KVM_CREATE_VM", ioctlCreateVM, 0xae01),
	abicheck.V("KVM_RUN", ioctlRun, 0xae80),
	abicheck.V("KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion, 0x4020ae46),
	abicheck.V("KVM_GET_DIRTY_LOG", ioctlGetDirtyLog, 0x4010ae42),
	abicheck.V("KVM_IRQ_LINE", ioctlIRQLine, 0x4008ae61),
	abicheck.V("KVM_ENABLE_CAP", ioctlEnableCap, 0x4068aea3),
	abicheck.V("KVM_GET_ONE_REG", ioctlGetOneReg, 0x4010aeab),
	abicheck.V("KVM_SET_ONE_REG", ioctlSetOneReg, 0x4010aeac),
	abicheck.V("KVM_ARM_VCPU_INIT", ioctlARMVCPUInit, 0x4020aeae),
	abicheck.V("KVM_ARM_PREFERRED_TARGET", ioctlARMPreferredTarget, 0x8020aeaf),
	abicheck.V("KVM_GET_REG_LIST", ioctlGetRegList, 0xc008aeb0),
	abicheck.V("KVM_CREATE_DEVICE", ioctlCreateDevice, 0xc00caee0),
	abicheck.V("KVM_SET_DEVICE_ATTR", ioctlSetDeviceAttr, 0x4018aee1),
	abicheck.V("KVM_SET_GSI_ROUTING", ioctlSetGSIRouting, 0x4008ae6a),
	abicheck.V("KVM_IRQFD", ioctlIRQFD, 0x4020ae76),
	abicheck.V("KVM_IOEVENTFD", ioctlIOEventFD, 0x4040ae79),
	abicheck.V("KVM_CAP_USER_MEMORY", capUserMemory, 3),
	abicheck.V("KVM_CAP_NR_VCPUS", capNrVCPUs, 9),
	abicheck.V("KVM_CAP_MAX_VCPUS", capMaxVCPUs, 66),
	abicheck.V("KVM_CAP_ONE_REG", capOneReg, 70),
	abicheck.V("KVM_CAP_DEVICE_CTRL", capDeviceCtrl, 89),
	abicheck.V("KVM_CAP_ARM_PSCI_0_2", capARMPSCI02, 102),
	abicheck.V("KVM_CAP_ARM_NISV_TO_USER", capARMNISVToUser, 177),
	abicheck.V("KVM_MEM_LOG_DIRTY_PAGES", memLogDirtyPages, 1),
	abicheck.V("KVM_MEM_READONLY", memReadonly, 2),
	abicheck.V("KVM_EXIT_MMIO", exitMMIO, 6),
	abicheck.V("KVM_EXIT_FAIL_ENTRY", exitFailEntry, 9),
	abicheck.V("KVM_EXIT_INTR", exitIntr, 10),
	abicheck.V("KVM_EXIT_INTERNAL_ERROR", exitInternalError, 17),
	abicheck.V("KVM_EXIT_SYSTEM_EVENT", exitSystemEvent, 24),
	abicheck.V("KVM_EXIT_ARM_NISV", exitARMNISV, 28),
	abicheck.V("KVM_DEV_TYPE_ARM_VGIC_V3", devTypeVGICv3, 7),
	abicheck.V("KVM_DEV_TYPE_ARM_VGIC_ITS", devTypeVGICITS, 8),
	abicheck.V("KVM_VGIC_ITS_ADDR_TYPE", vgicITSAddrType, 4),
	abicheck.V("KVM_CAP_IRQ_ROUTING", capIRQRouting, 25),
	abicheck.V("KVM_CAP_IRQFD", capIRQFD, 32),
	abicheck.V("KVM_CAP_IOEVENTFD", capIOEventFD, 36),
	abicheck.V("KVM_CAP_MSI_DEVID", capMSIDevID, 131),
	abicheck.V("KVM_IRQ_ROUTING_MSI", irqRoutingMSI, 2),
	abicheck.V("KVM_MSI_VALID_DEVID", msiValidDevID, 1),
	abicheck.V("KVM_IRQFD_FLAG_DEASSIGN", irqfdFlagDeassign, 1),
	abicheck.V("KVM_IRQFD_FLAG_RESAMPLE", irqfdFlagResample, 2),
	abicheck.V("KVM_IRQ_ROUTING_IRQCHIP", irqRoutingIrqchipType, 1),
	abicheck.V("KVM_CAP_IRQFD_RESAMPLE", capIRQFDResample, 82),
	abicheck.V("KVM_IOEVENTFD_FLAG_DATAMATCH", ioeventfdFlagDatamatch, 1),
	abicheck.V("KVM_IOEVENTFD_FLAG_PIO", ioeventfdFlagPIO, 2),
	abicheck.V("KVM_IOEVENTFD_FLAG_DEASSIGN", ioeventfdFlagDeassign, 4),
	abicheck.V("sizeof(struct kvm_vcpu_init)", unsafe.Sizeof(vcpuInit{}), sizeofVCPUInit),
	abicheck.V("sizeof(struct kvm_one_reg)", unsafe.Sizeof(oneReg{}), sizeofOneReg),
	abicheck.V("sizeof(struct kvm_userspace_memory_region)", unsafe.Sizeof(memoryRegion{}), sizeofMemoryRegion),
	abicheck.V("sizeof(struct kvm_dirty_log)", unsafe.Sizeof(dirtyLog{}), sizeofDirtyLog),
	abicheck.V("offsetof(struct kvm_dirty_log, dirty_bitmap)", unsafe.Offsetof(dirtyLog{}.Bitmap), 8),
	abicheck.V("sizeof(struct kvm_irq_level)", unsafe.Sizeof(irqLevel{}), sizeofIRQLevel),
	abicheck.V("sizeof(struct kvm_enable_cap)", unsafe.Sizeof(enableCap{}), sizeofEnableCap),
	abicheck.V("sizeof(struct kvm_create_device)", unsafe.Sizeof(createDevice{}), sizeofCreateDevice),
	abicheck.V("sizeof(struct kvm_device_attr)", unsafe.Sizeof(deviceAttr{}), sizeofDeviceAttr),
	abicheck.V("offsetof(struct kvm_enable_cap, args)", unsafe.Offsetof(enableCap{}.Args), 8),
	abicheck.V("offsetof(struct kvm_device_attr, attr)", unsafe.Offsetof(deviceAttr{}.Attr), 8),
	abicheck.V("offsetof(struct kvm_userspace_memory_region, guest_phys_addr)", unsafe.Offsetof(memoryRegion{}.GuestPhysAddr), 8),
	abicheck.V("sizeof(struct kvm_irq_routing)", unsafe.Sizeof(irqRoutingHeader{}), sizeofIRQRouting),
	abicheck.V("sizeof(struct kvm_irq_routing_entry)", unsafe.Sizeof(irqRoutingEntry{}), sizeofIRQRoutingEntry),
	abicheck.V("offsetof(struct kvm_irq_routing_entry, u.msi.devid)", unsafe.Offsetof(irqRoutingEntry{}.DevID), 28),
	abicheck.V("offsetof(struct kvm_irq_routing_entry, u.msi.address_lo)", unsafe.Offsetof(irqRoutingEntry{}.AddressLo), 16),
	abicheck.V("sizeof(struct kvm_irq_routing_entry)", unsafe.Sizeof(irqRoutingIrqchip{}), sizeofIRQRoutingEntry),
	abicheck.V("offsetof(struct kvm_irq_routing_entry, u.irqchip.irqchip)", unsafe.Offsetof(irqRoutingIrqchip{}.Irqchip), 16),
	abicheck.V("offsetof(struct kvm_irq_routing_entry, u.irqchip.pin)", unsafe.Offsetof(irqRoutingIrqchip{}.Pin), 20),
	abicheck.V("sizeof(struct kvm_irqfd)", unsafe.Sizeof(irqfd{}), sizeofIRQFD),
	abicheck.V("sizeof(struct kvm_ioeventfd)", unsafe.Sizeof(ioeventfd{}), sizeofIOEventFD),
	abicheck.V("offsetof(struct kvm_ioeventfd, flags)", unsafe.Offsetof(ioeventfd{}.Flags), 24),
	abicheck.V("offsetof(struct kvm_irqfd, resamplefd)", unsafe.Offsetof(irqfd{}.ResampleFD), 12),
	// The snapshot's ioctls, groups and register ids (<asm/kvm.h>).
	abicheck.V("KVM_GET_MP_STATE", ioctlGetMPState, 0x8004ae98),
	abicheck.V("KVM_SET_MP_STATE", ioctlSetMPState, 0x4004ae99),
	abicheck.V("KVM_GET_DEVICE_ATTR", ioctlGetDeviceAttr, 0x4018aee2),
	abicheck.V("KVM_HAS_DEVICE_ATTR", ioctlHasDeviceAttr, 0x4018aee3),
	abicheck.V("KVM_REG_ARM_TIMER_CTL", RegTimerCtl, 0x603000000013df19),
	abicheck.V("KVM_REG_ARM_TIMER_CNT", RegTimerCnt, 0x603000000013df1a),
	abicheck.V("KVM_REG_ARM_TIMER_CVAL", RegTimerCval, 0x603000000013df02),
	abicheck.V("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", vgicGroupDistRegs, 1),
	abicheck.V("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", vgicGroupRedistRegs, 5),
	abicheck.V("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", vgicGroupCPUSysregs, 6),
	abicheck.V("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", vgicGroupLevelInfo, 7),
	abicheck.V("KVM_DEV_ARM_VGIC_GRP_ITS_REGS", vgicGroupITSRegs, 8),
	abicheck.V("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES", vgicSavePending, 3),
	abicheck.V("KVM_DEV_ARM_ITS_SAVE_TABLES", itsSaveTables, 1),
	abicheck.V("KVM_DEV_ARM_ITS_RESTORE_TABLES", itsRestoreTables, 2),
	abicheck.V("KVM_MP_STATE_STOPPED", MPStopped, 5),
	abicheck.V("KVM_MP_STATE_SUSPENDED", MPSuspended, 10),
	// Register ids.
	abicheck.V("KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.regs[0])", XReg(0), 0x6030000000100000),
	abicheck.V("KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.regs[1])", XReg(1), 0x6030000000100002),
	abicheck.V("KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pc)", RegPC, 0x6030000000100040),
	abicheck.V("KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pstate)", RegPState, 0x6030000000100042),
	abicheck.V("ARM64_SYS_REG(3, 0, 0, 0, 5)", RegMPIDR, 0x603000000013c005),
	abicheck.V("ARM64_SYS_REG(3, 3, 14, 3, 2)", SysReg(3, 3, 14, 3, 2), 0x603000000013df1a),
}

func TestABI(t *testing.T) {
	abicheck.Recorded(t, abi)
	// KVM_IRQCHIP_NUM_PINS is the kernel's, not uapi's (1020 - 32: the SPIs).
	if irqchipNumPins != 988 {
		t.Errorf("KVM_IRQCHIP_NUM_PINS (arm64) = %d, want 988", irqchipNumPins)
	}
}

func TestABIAgainstHeader(t *testing.T) {
	abicheck.Headers(t, "aarch64-linux-gnu-gcc", []string{"linux/kvm.h"}, abi)
}

func TestSPILine(t *testing.T) {
	got, err := spiLine(33)
	if err != nil || got != 0x01000021 {
		t.Errorf("spiLine(33) = %#x, %v; want 0x1000021", got, err)
	}
	for _, bad := range []uint32{0, 16, 31, 0x10000} {
		if _, err := spiLine(bad); err == nil {
			t.Errorf("spiLine(%d) accepted a non-SPI", bad)
		}
	}
}

func TestDescribeDataAbort(t *testing.T) {
	s := DescribeDataAbort(esrWnR)
	if !strings.HasPrefix(s, "write") || !strings.Contains(s, "ISV=0") {
		t.Errorf("write without ISV: %q", s)
	}
	if s := DescribeDataAbort(esrISV); s != "read" {
		t.Errorf("read with ISV: %q", s)
	}
}

// TestRequesterID: bus 8 bits, device 5, function 3, as PCI numbers
// requesters (and as the device tree's msi-map passes them to the ITS).
func TestRequesterID(t *testing.T) {
	check(t, []abiCase[uint32]{
		{"00:00.0", RequesterID(0, 0, 0), 0},
		{"00:01.0", RequesterID(0, 1, 0), 0x08},
		{"00:1f.7", RequesterID(0, 31, 7), 0xff},
		{"01:02.3", RequesterID(1, 2, 3), 0x113},
	})
}

// TestCapTable: every capability `govmm caps` asks for has the number
// <linux/kvm.h> gives it, and every one Open or the platform relies on is
// marked required.
func TestCapTable(t *testing.T) {
	want := map[string]struct {
		num  uintptr
		need capNeed
	}{
		"USER_MEMORY":           {3, capRequired},
		"ONE_REG":               {70, capRequired},
		"ARM_PSCI_0_2":          {102, capRequired},
		"DEVICE_CTRL":           {89, capRequired},
		"IRQ_ROUTING":           {25, capRequired},
		"IRQFD":                 {32, capRequired},
		"IOEVENTFD":             {36, capRequired},
		"MSI_DEVID":             {131, capRequired},
		"IRQFD_RESAMPLE":        {82, capOptional},
		"ARM_NISV_TO_USER":      {177, capOptional},
		"SIGNAL_MSI":            {77, capListed},
		"ARM_PMU_V3":            {126, capListed},
		"ARM_VM_IPA_SIZE":       {165, capListed},
		"ARM_PSCI":              {87, capListed},
		"ARM_EL1_32BIT":         {93, capListed},
		"ARM_IRQ_LINE_LAYOUT_2": {174, capListed},
		"IRQCHIP":               {0, capListed},
	}
	seen := map[string]bool{}
	for _, c := range capTable {
		w, ok := want[c.name]
		if !ok {
			t.Errorf("capTable has %s, which this test does not know", c.name)
			continue
		}
		if seen[c.name] {
			t.Errorf("capTable lists %s twice", c.name)
		}
		seen[c.name] = true
		if c.num != w.num || c.need != w.need {
			t.Errorf("%s = %d (%v), want KVM_CAP_%s = %d (%v)", c.name, c.num, c.need, c.name, w.num, w.need)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("capTable lacks %s", name)
		}
	}
	if len(devTable) != 2 || devTable[0] != (capEntry{"DEV_ARM_VGIC_V3", 7, capRequired}) ||
		devTable[1] != (capEntry{"DEV_ARM_VGIC_ITS", 8, capRequired}) {
		t.Errorf("devTable = %+v, want the vGICv3 (7) then the ITS (8), both required", devTable)
	}
}

func TestTargetName(t *testing.T) {
	for target, want := range map[uint32]string{
		5: "5 (KVM_ARM_TARGET_GENERIC_V8)", 2: "2 (KVM_ARM_TARGET_CORTEX_A57)",
		4: "4 (KVM_ARM_TARGET_CORTEX_A53)", 9: "9 (unknown)",
	} {
		if got := targetName(target); got != want {
			t.Errorf("targetName(%d) = %q, want %q", target, got, want)
		}
	}
}

// TestCapsVerdict: a required capability or device at 0 is missing, an
// optional or unused one at 0 is not, and unknown names are ignored.
func TestCapsVerdict(t *testing.T) {
	feats := []accel.Capability{
		{Name: "USER_MEMORY", Value: 1}, {Name: "MSI_DEVID", Value: 0},
		{Name: "ARM_NISV_TO_USER", Value: 0}, {Name: "ARM_PMU_V3", Value: 0},
		{Name: "DEV_ARM_VGIC_ITS", Value: 0}, {Name: "SOMETHING_ELSE", Value: 0},
	}
	req, opt, missing := capsVerdict(feats)
	if strings.Join(req, " ") != "USER_MEMORY MSI_DEVID DEV_ARM_VGIC_ITS" {
		t.Errorf("required = %v", req)
	}
	if strings.Join(opt, " ") != "ARM_NISV_TO_USER" {
		t.Errorf("optional = %v", opt)
	}
	if strings.Join(missing, " ") != "MSI_DEVID DEV_ARM_VGIC_ITS" {
		t.Errorf("missing = %v", missing)
	}
	if _, _, m := capsVerdict(feats[:1]); len(m) != 0 {
		t.Errorf("all present: missing = %v", m)
	}
}

// TestStateABI: the snapshot's ioctls, groups and register ids against
// <linux/kvm.h> and <asm/kvm.h> on arm64.
func TestStateABI(t *testing.T) {
	check(t, []abiCase[uint64]{
		// MPIDR Aff3=1 Aff2=2 Aff1=3 Aff0=4 (plus the RES1 bit 31).
		{"affinity attr", AffinityAttr(0x1_8002_0304), 0x01020304_00000000},
	})
	for _, c := range []struct {
		id   uint64
		want int
	}{
		{XReg(0), 8},
		{0x6020000000100000 | 0x0043, 4}, // a 32-bit core register (fpsr's size class)
		{0x6040000000100054, 16},         // vregs[0], U128
		{0x6080000000150000, 256},        // an SVE Z register, U2048
	} {
		if got, err := RegBytes(c.id); err != nil || got != c.want {
			t.Errorf("RegBytes(%#x) = %d, %v; want %d", c.id, got, err, c.want)
		}
	}
	if _, err := RegBytes(0x60f0000000000000); err == nil {
		t.Error("RegBytes accepted size class 15")
	}
}
