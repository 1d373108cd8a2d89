package kvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// abiChecks pins every struct size and field offset govmm uses to
// <linux/kvm.h>: want is the value gcc computed from the header on
// x86-64 (recorded here so the test means something without gcc).
var abiChecks = []struct {
	c    string
	got  uintptr
	want uintptr
}{
	{"sizeof(struct kvm_run)", unsafe.Sizeof(kvmRun{}), 2352},
	{"offsetof(struct kvm_run, request_interrupt_window)", unsafe.Offsetof(kvmRun{}.RequestInterruptWindow), 0},
	{"offsetof(struct kvm_run, immediate_exit)", unsafe.Offsetof(kvmRun{}.ImmediateExit), 1},
	{"offsetof(struct kvm_run, exit_reason)", unsafe.Offsetof(kvmRun{}.ExitReason), 8},
	{"offsetof(struct kvm_run, ready_for_interrupt_injection)", unsafe.Offsetof(kvmRun{}.ReadyForInterruptInjection), 12},
	{"offsetof(struct kvm_run, if_flag)", unsafe.Offsetof(kvmRun{}.IfFlag), 13},
	{"offsetof(struct kvm_run, flags)", unsafe.Offsetof(kvmRun{}.Flags), 14},
	{"offsetof(struct kvm_run, cr8)", unsafe.Offsetof(kvmRun{}.CR8), 16},
	{"offsetof(struct kvm_run, apic_base)", unsafe.Offsetof(kvmRun{}.APICBase), 24},
	{"offsetof(struct kvm_run, io)", unsafe.Offsetof(kvmRun{}.Exit), 32},
	{"offsetof(struct kvm_run, io.direction)", runExitUnion + unsafe.Offsetof(kvmRunIO{}.Direction), 32},
	{"offsetof(struct kvm_run, io.size)", runExitUnion + unsafe.Offsetof(kvmRunIO{}.Size), 33},
	{"offsetof(struct kvm_run, io.port)", runExitUnion + unsafe.Offsetof(kvmRunIO{}.Port), 34},
	{"offsetof(struct kvm_run, io.count)", runExitUnion + unsafe.Offsetof(kvmRunIO{}.Count), 36},
	{"offsetof(struct kvm_run, io.data_offset)", runExitUnion + unsafe.Offsetof(kvmRunIO{}.DataOffset), 40},
	{"offsetof(struct kvm_run, mmio.phys_addr)", runExitUnion + unsafe.Offsetof(kvmRunMMIO{}.PhysAddr), 32},
	{"offsetof(struct kvm_run, mmio.data)", runExitUnion + unsafe.Offsetof(kvmRunMMIO{}.Data), 40},
	{"offsetof(struct kvm_run, mmio.len)", runExitUnion + unsafe.Offsetof(kvmRunMMIO{}.Len), 48},
	{"offsetof(struct kvm_run, mmio.is_write)", runExitUnion + unsafe.Offsetof(kvmRunMMIO{}.IsWrite), 52},
	{"offsetof(struct kvm_run, internal.suberror)", runExitUnion + unsafe.Offsetof(kvmRunInternal{}.Suberror), 32},
	{"offsetof(struct kvm_run, internal.ndata)", runExitUnion + unsafe.Offsetof(kvmRunInternal{}.Ndata), 36},
	{"offsetof(struct kvm_run, internal.data)", runExitUnion + unsafe.Offsetof(kvmRunInternal{}.Data), 40},
	{"offsetof(struct kvm_run, emulation_failure.flags)", runExitUnion + unsafe.Offsetof(kvmRunEmulationFailure{}.Flags), 40},
	{"offsetof(struct kvm_run, emulation_failure.insn_size)", runExitUnion + unsafe.Offsetof(kvmRunEmulationFailure{}.InsnSize), 48},
	{"offsetof(struct kvm_run, emulation_failure.insn_bytes)", runExitUnion + unsafe.Offsetof(kvmRunEmulationFailure{}.InsnBytes), 49},
	{"offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason)", runExitUnion + unsafe.Offsetof(kvmRunFailEntry{}.HardwareEntryFailureReason), 32},
	{"offsetof(struct kvm_run, fail_entry.cpu)", runExitUnion + unsafe.Offsetof(kvmRunFailEntry{}.CPU), 40},
	{"offsetof(struct kvm_run, system_event.type)", runExitUnion + unsafe.Offsetof(kvmRunSystemEvent{}.Type), 32},
	{"offsetof(struct kvm_run, system_event.ndata)", runExitUnion + unsafe.Offsetof(kvmRunSystemEvent{}.Ndata), 36},
	{"offsetof(struct kvm_run, system_event.data)", runExitUnion + unsafe.Offsetof(kvmRunSystemEvent{}.Data), 40},
	{"offsetof(struct kvm_run, hyperv.type)", runExitUnion + unsafe.Offsetof(kvmRunHyperV{}.Type), 32},
	{"offsetof(struct kvm_run, hyperv.u.hcall.input)", runExitUnion + unsafe.Offsetof(kvmRunHyperV{}.Input), 40},
	{"offsetof(struct kvm_run, hyperv.u.hcall.result)", runExitUnion + unsafe.Offsetof(kvmRunHyperV{}.Result), 48},
	{"offsetof(struct kvm_run, hyperv.u.hcall.params)", runExitUnion + unsafe.Offsetof(kvmRunHyperV{}.Params), 56},
	{"offsetof(struct kvm_run, eoi.vector)", unsafe.Offsetof(kvmRun{}.Exit), 32},
	{"offsetof(struct kvm_run, debug.arch.exception)", runExitUnion + unsafe.Offsetof(kvmRunDebug{}.Exception), 32},
	{"offsetof(struct kvm_run, debug.arch.pc)", runExitUnion + unsafe.Offsetof(kvmRunDebug{}.PC), 40},
	{"offsetof(struct kvm_run, debug.arch.dr6)", runExitUnion + unsafe.Offsetof(kvmRunDebug{}.DR6), 48},
	{"offsetof(struct kvm_run, debug.arch.dr7)", runExitUnion + unsafe.Offsetof(kvmRunDebug{}.DR7), 56},
	{"sizeof(struct kvm_regs)", unsafe.Sizeof(kvmRegs{}), 144},
	{"offsetof(struct kvm_regs, rip)", unsafe.Offsetof(kvmRegs{}.RIP), 128},
	{"offsetof(struct kvm_regs, rflags)", unsafe.Offsetof(kvmRegs{}.RFLAGS), 136},
	{"offsetof(struct kvm_regs, r15)", unsafe.Offsetof(kvmRegs{}.R15), 120},
	{"sizeof(struct kvm_segment)", unsafe.Sizeof(kvmSegment{}), 24},
	{"offsetof(struct kvm_segment, limit)", unsafe.Offsetof(kvmSegment{}.Limit), 8},
	{"offsetof(struct kvm_segment, selector)", unsafe.Offsetof(kvmSegment{}.Selector), 12},
	{"offsetof(struct kvm_segment, type)", unsafe.Offsetof(kvmSegment{}.Type), 14},
	{"offsetof(struct kvm_segment, present)", unsafe.Offsetof(kvmSegment{}.Present), 15},
	{"offsetof(struct kvm_segment, dpl)", unsafe.Offsetof(kvmSegment{}.DPL), 16},
	{"offsetof(struct kvm_segment, db)", unsafe.Offsetof(kvmSegment{}.DB), 17},
	{"offsetof(struct kvm_segment, s)", unsafe.Offsetof(kvmSegment{}.S), 18},
	{"offsetof(struct kvm_segment, l)", unsafe.Offsetof(kvmSegment{}.L), 19},
	{"offsetof(struct kvm_segment, g)", unsafe.Offsetof(kvmSegment{}.G), 20},
	{"offsetof(struct kvm_segment, avl)", unsafe.Offsetof(kvmSegment{}.AVL), 21},
	{"offsetof(struct kvm_segment, unusable)", unsafe.Offsetof(kvmSegment{}.Unusable), 22},
	{"sizeof(struct kvm_dtable)", unsafe.Sizeof(kvmDTable{}), 16},
	{"offsetof(struct kvm_dtable, limit)", unsafe.Offsetof(kvmDTable{}.Limit), 8},
	{"sizeof(struct kvm_sregs)", unsafe.Sizeof(kvmSregs{}), 312},
	{"offsetof(struct kvm_sregs, ds)", unsafe.Offsetof(kvmSregs{}.DS), 24},
	{"offsetof(struct kvm_sregs, tr)", unsafe.Offsetof(kvmSregs{}.TR), 144},
	{"offsetof(struct kvm_sregs, ldt)", unsafe.Offsetof(kvmSregs{}.LDT), 168},
	{"offsetof(struct kvm_sregs, gdt)", unsafe.Offsetof(kvmSregs{}.GDT), 192},
	{"offsetof(struct kvm_sregs, idt)", unsafe.Offsetof(kvmSregs{}.IDT), 208},
	{"offsetof(struct kvm_sregs, cr0)", unsafe.Offsetof(kvmSregs{}.CR0), 224},
	{"offsetof(struct kvm_sregs, cr8)", unsafe.Offsetof(kvmSregs{}.CR8), 256},
	{"offsetof(struct kvm_sregs, efer)", unsafe.Offsetof(kvmSregs{}.EFER), 264},
	{"offsetof(struct kvm_sregs, apic_base)", unsafe.Offsetof(kvmSregs{}.APICBase), 272},
	{"offsetof(struct kvm_sregs, interrupt_bitmap)", unsafe.Offsetof(kvmSregs{}.InterruptBitmap), 280},
	{"sizeof(struct kvm_fpu)", unsafe.Sizeof(kvmFPU{}), 416},
	{"offsetof(struct kvm_fpu, fcw)", unsafe.Offsetof(kvmFPU{}.FCW), 128},
	{"offsetof(struct kvm_fpu, fsw)", unsafe.Offsetof(kvmFPU{}.FSW), 130},
	{"offsetof(struct kvm_fpu, ftwx)", unsafe.Offsetof(kvmFPU{}.FTWX), 132},
	{"offsetof(struct kvm_fpu, last_opcode)", unsafe.Offsetof(kvmFPU{}.LastOpcode), 134},
	{"offsetof(struct kvm_fpu, last_ip)", unsafe.Offsetof(kvmFPU{}.LastIP), 136},
	{"offsetof(struct kvm_fpu, last_dp)", unsafe.Offsetof(kvmFPU{}.LastDP), 144},
	{"offsetof(struct kvm_fpu, xmm)", unsafe.Offsetof(kvmFPU{}.XMM), 152},
	{"offsetof(struct kvm_fpu, mxcsr)", unsafe.Offsetof(kvmFPU{}.MXCSR), 408},
	{"sizeof(struct kvm_xsave)", unsafe.Sizeof(kvmXSave{}), 4096},
	{"sizeof(struct kvm_xcr)", unsafe.Sizeof(kvmXCR{}), 16},
	{"offsetof(struct kvm_xcr, value)", unsafe.Offsetof(kvmXCR{}.Value), 8},
	{"sizeof(struct kvm_xcrs)", unsafe.Sizeof(kvmXCRs{}), 392},
	{"offsetof(struct kvm_xcrs, flags)", unsafe.Offsetof(kvmXCRs{}.Flags), 4},
	{"offsetof(struct kvm_xcrs, xcrs)", unsafe.Offsetof(kvmXCRs{}.XCRs), 8},
	{"offsetof(struct kvm_xcrs, padding)", unsafe.Offsetof(kvmXCRs{}.Padding), 264},
	{"sizeof(struct kvm_one_reg)", unsafe.Sizeof(kvmOneReg{}), 16},
	{"offsetof(struct kvm_one_reg, addr)", unsafe.Offsetof(kvmOneReg{}.Addr), 8},
	{"sizeof(struct kvm_msrs)", unsafe.Sizeof(kvmMSRsHeader{}), 8},
	{"sizeof(struct kvm_msr_entry)", unsafe.Sizeof(kvmMSREntry{}), 16},
	{"offsetof(struct kvm_msr_entry, data)", unsafe.Offsetof(kvmMSREntry{}.Data), 8},
	{"sizeof(struct kvm_lapic_state)", unsafe.Sizeof(kvmLAPICState{}), 1024},
	{"sizeof(struct kvm_vcpu_events)", unsafe.Sizeof(kvmVCPUEvents{}), 64},
	{"offsetof(struct kvm_vcpu_events, exception.error_code)", unsafe.Offsetof(kvmVCPUEvents{}.Exception) + unsafe.Offsetof(kvmVCPUEvents{}.Exception.ErrorCode), 4},
	{"offsetof(struct kvm_vcpu_events, exception.pending)", unsafe.Offsetof(kvmVCPUEvents{}.Exception) + unsafe.Offsetof(kvmVCPUEvents{}.Exception.Pending), 3},
	{"offsetof(struct kvm_vcpu_events, interrupt)", unsafe.Offsetof(kvmVCPUEvents{}.Interrupt), 8},
	{"offsetof(struct kvm_vcpu_events, nmi)", unsafe.Offsetof(kvmVCPUEvents{}.NMI), 12},
	{"offsetof(struct kvm_vcpu_events, sipi_vector)", unsafe.Offsetof(kvmVCPUEvents{}.SIPIVector), 16},
	{"offsetof(struct kvm_vcpu_events, flags)", unsafe.Offsetof(kvmVCPUEvents{}.Flags), 20},
	{"offsetof(struct kvm_vcpu_events, smi)", unsafe.Offsetof(kvmVCPUEvents{}.SMI), 24},
	{"offsetof(struct kvm_vcpu_events, triple_fault)", unsafe.Offsetof(kvmVCPUEvents{}.TripleFault), 28},
	{"offsetof(struct kvm_vcpu_events, exception_has_payload)", unsafe.Offsetof(kvmVCPUEvents{}.ExceptionHasPayload), 55},
	{"offsetof(struct kvm_vcpu_events, exception_payload)", unsafe.Offsetof(kvmVCPUEvents{}.ExceptionPayload), 56},
	{"sizeof(struct kvm_mp_state)", unsafe.Sizeof(kvmMPState{}), 4},
	{"sizeof(struct kvm_debugregs)", unsafe.Sizeof(kvmDebugRegs{}), 128},
	{"offsetof(struct kvm_debugregs, dr6)", unsafe.Offsetof(kvmDebugRegs{}.DR6), 32},
	{"offsetof(struct kvm_debugregs, dr7)", unsafe.Offsetof(kvmDebugRegs{}.DR7), 40},
	{"offsetof(struct kvm_debugregs, flags)", unsafe.Offsetof(kvmDebugRegs{}.Flags), 48},
	{"sizeof(struct kvm_cpuid2)", unsafe.Sizeof(kvmCPUID2Header{}), 8},
	{"sizeof(struct kvm_cpuid_entry2)", unsafe.Sizeof(kvmCPUIDEntry2{}), 40},
	{"offsetof(struct kvm_cpuid_entry2, flags)", unsafe.Offsetof(kvmCPUIDEntry2{}.Flags), 8},
	{"offsetof(struct kvm_cpuid_entry2, eax)", unsafe.Offsetof(kvmCPUIDEntry2{}.EAX), 12},
	{"offsetof(struct kvm_cpuid_entry2, edx)", unsafe.Offsetof(kvmCPUIDEntry2{}.EDX), 24},
	{"sizeof(struct kvm_userspace_memory_region)", unsafe.Sizeof(kvmUserspaceMemoryRegion{}), 32},
	{"offsetof(struct kvm_userspace_memory_region, flags)", unsafe.Offsetof(kvmUserspaceMemoryRegion{}.Flags), 4},
	{"offsetof(struct kvm_userspace_memory_region, guest_phys_addr)", unsafe.Offsetof(kvmUserspaceMemoryRegion{}.GuestPhysAddr), 8},
	{"offsetof(struct kvm_userspace_memory_region, memory_size)", unsafe.Offsetof(kvmUserspaceMemoryRegion{}.MemorySize), 16},
	{"offsetof(struct kvm_userspace_memory_region, userspace_addr)", unsafe.Offsetof(kvmUserspaceMemoryRegion{}.UserspaceAddr), 24},
	{"sizeof(struct kvm_enable_cap)", unsafe.Sizeof(kvmEnableCap{}), 104},
	{"offsetof(struct kvm_enable_cap, flags)", unsafe.Offsetof(kvmEnableCap{}.Flags), 4},
	{"offsetof(struct kvm_enable_cap, args)", unsafe.Offsetof(kvmEnableCap{}.Args), 8},
	{"sizeof(struct kvm_irq_routing)", unsafe.Sizeof(kvmIRQRoutingHeader{}), 8},
	{"offsetof(struct kvm_irq_routing, flags)", unsafe.Offsetof(kvmIRQRoutingHeader{}.Flags), 4},
	{"sizeof(struct kvm_irq_routing_entry)", unsafe.Sizeof(kvmIRQRoutingEntry{}), 48},
	{"offsetof(struct kvm_irq_routing_entry, type)", unsafe.Offsetof(kvmIRQRoutingEntry{}.Type), 4},
	{"offsetof(struct kvm_irq_routing_entry, flags)", unsafe.Offsetof(kvmIRQRoutingEntry{}.Flags), 8},
	{"offsetof(struct kvm_irq_routing_entry, u)", unsafe.Offsetof(kvmIRQRoutingEntry{}.U), 16},
	{"sizeof(struct kvm_msi)", unsafe.Sizeof(kvmMSI{}), 32},
	{"offsetof(struct kvm_msi, data)", unsafe.Offsetof(kvmMSI{}.Data), 8},
	{"offsetof(struct kvm_msi, flags)", unsafe.Offsetof(kvmMSI{}.Flags), 12},
	{"offsetof(struct kvm_msi, devid)", unsafe.Offsetof(kvmMSI{}.DevID), 16},
	{"sizeof(struct kvm_irqfd)", unsafe.Sizeof(kvmIRQFD{}), 32},
	{"offsetof(struct kvm_irqfd, gsi)", unsafe.Offsetof(kvmIRQFD{}.GSI), 4},
	{"offsetof(struct kvm_irqfd, flags)", unsafe.Offsetof(kvmIRQFD{}.Flags), 8},
	{"offsetof(struct kvm_irqfd, resamplefd)", unsafe.Offsetof(kvmIRQFD{}.ResampleFD), 12},
	{"sizeof(struct kvm_ioeventfd)", unsafe.Sizeof(kvmIOEventFD{}), 64},
	{"offsetof(struct kvm_ioeventfd, addr)", unsafe.Offsetof(kvmIOEventFD{}.Addr), 8},
	{"offsetof(struct kvm_ioeventfd, len)", unsafe.Offsetof(kvmIOEventFD{}.Len), 16},
	{"offsetof(struct kvm_ioeventfd, fd)", unsafe.Offsetof(kvmIOEventFD{}.FD), 20},
	{"offsetof(struct kvm_ioeventfd, flags)", unsafe.Offsetof(kvmIOEventFD{}.Flags), 24},
	{"sizeof(struct kvm_dirty_log)", unsafe.Sizeof(kvmDirtyLog{}), 16},
	{"offsetof(struct kvm_dirty_log, dirty_bitmap)", unsafe.Offsetof(kvmDirtyLog{}.Bitmap), 8},
	{"sizeof(struct kvm_clock_data)", unsafe.Sizeof(kvmClockData{}), 48},
	{"offsetof(struct kvm_clock_data, flags)", unsafe.Offsetof(kvmClockData{}.Flags), 8},
	{"offsetof(struct kvm_clock_data, realtime)", unsafe.Offsetof(kvmClockData{}.Realtime), 16},
	{"offsetof(struct kvm_clock_data, host_tsc)", unsafe.Offsetof(kvmClockData{}.HostTSC), 24},
	{"sizeof(struct kvm_interrupt)", unsafe.Sizeof(kvmInterrupt{}), 4},
	{"sizeof(struct kvm_msr_list)", unsafe.Sizeof(kvmMSRListHeader{}), 4},
}

func TestABILayout(t *testing.T) {
	for _, c := range abiChecks {
		if c.got != c.want {
			t.Errorf("%s: Go has %d, header has %d", c.c, c.got, c.want)
		}
	}
	if runExitUnion != unsafe.Offsetof(kvmRun{}.Exit) || mmioDataOff != runExitUnion+unsafe.Offsetof(kvmRunMMIO{}.Data) {
		t.Errorf("runExitUnion/mmioDataOff constants disagree with the structs")
	}
}

// TestABIAgainstHeader recompiles the checks against the installed
// header with gcc (skipped when gcc or linux-libc-dev is missing).
func TestABIAgainstHeader(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed")
	}
	if _, err := os.Stat("/usr/include/linux/kvm.h"); err != nil {
		t.Skip("linux/kvm.h not installed (apt-get install linux-libc-dev)")
	}
	var b strings.Builder
	b.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void){\n")
	for _, c := range abiChecks {
		fmt.Fprintf(&b, "printf(\"%%lu\\n\", (unsigned long)%s);\n", c.c)
	}
	for _, c := range constChecks {
		fmt.Fprintf(&b, "printf(\"%%lu\\n\", (unsigned long)(%s));\n", c.c)
	}
	b.WriteString("return 0;}\n")
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "abi.c"), filepath.Join(dir, "abi")
	if err := os.WriteFile(src, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(gcc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	vals := strings.Fields(string(out))
	if len(vals) != len(abiChecks)+len(constChecks) {
		t.Fatalf("got %d values from the C program, want %d", len(vals), len(abiChecks)+len(constChecks))
	}
	for i, c := range abiChecks {
		v, _ := strconv.ParseUint(vals[i], 10, 64)
		if uintptr(v) != c.got {
			t.Errorf("%s: Go has %d, gcc says %d", c.c, c.got, v)
		}
	}
	for i, c := range constChecks {
		v, _ := strconv.ParseUint(vals[len(abiChecks)+i], 10, 64)
		if v != c.got {
			t.Errorf("%s: Go has %#x, gcc says %#x", c.c, c.got, v)
		}
	}
}

// constChecks pins the ioctl numbers and constants to <linux/kvm.h>.
var constChecks = []struct {
	c   string
	got uint64
}{
	{"KVM_GET_API_VERSION", ioctlGetAPIVersion},
	{"KVM_CREATE_VM", ioctlCreateVM},
	{"KVM_GET_MSR_INDEX_LIST", ioctlGetMSRIndexList},
	{"KVM_CHECK_EXTENSION", ioctlCheckExtension},
	{"KVM_GET_VCPU_MMAP_SIZE", ioctlGetVCPUMmapSize},
	{"KVM_GET_SUPPORTED_CPUID", ioctlGetSupportedCPUID},
	{"KVM_CREATE_VCPU", ioctlCreateVCPU},
	{"KVM_GET_DIRTY_LOG", ioctlGetDirtyLog},
	{"KVM_SET_USER_MEMORY_REGION", ioctlSetUserMemoryRegion},
	{"KVM_SET_TSS_ADDR", ioctlSetTSSAddr},
	{"KVM_SET_IDENTITY_MAP_ADDR", ioctlSetIdentityMapAddr},
	{"KVM_SET_GSI_ROUTING", ioctlSetGSIRouting},
	{"KVM_IRQFD", ioctlIRQFD},
	{"KVM_IOEVENTFD", ioctlIOEventFD},
	{"KVM_SET_CLOCK", ioctlSetClock},
	{"KVM_GET_CLOCK", ioctlGetClock},
	{"KVM_RUN", ioctlRun},
	{"KVM_GET_REGS", ioctlGetRegs},
	{"KVM_SET_REGS", ioctlSetRegs},
	{"KVM_GET_SREGS", ioctlGetSregs},
	{"KVM_SET_SREGS", ioctlSetSregs},
	{"KVM_INTERRUPT", ioctlInterrupt},
	{"KVM_GET_MSRS", ioctlGetMSRs},
	{"KVM_SET_MSRS", ioctlSetMSRs},
	{"KVM_GET_FPU", ioctlGetFPU},
	{"KVM_SET_FPU", ioctlSetFPU},
	{"KVM_GET_LAPIC", ioctlGetLAPIC},
	{"KVM_SET_LAPIC", ioctlSetLAPIC},
	{"KVM_SET_CPUID2", ioctlSetCPUID2},
	{"KVM_GET_MP_STATE", ioctlGetMPState},
	{"KVM_SET_MP_STATE", ioctlSetMPState},
	{"KVM_NMI", ioctlNMI},
	{"KVM_GET_VCPU_EVENTS", ioctlGetVCPUEvents},
	{"KVM_SET_VCPU_EVENTS", ioctlSetVCPUEvents},
	{"KVM_GET_DEBUGREGS", ioctlGetDebugRegs},
	{"KVM_SET_DEBUGREGS", ioctlSetDebugRegs},
	{"KVM_ENABLE_CAP", ioctlEnableCap},
	{"KVM_GET_XSAVE", ioctlGetXSave},
	{"KVM_SET_XSAVE", ioctlSetXSave},
	{"KVM_SIGNAL_MSI", ioctlSignalMSI},
	{"KVM_GET_XCRS", ioctlGetXCRs},
	{"KVM_SET_XCRS", ioctlSetXCRs},
	{"KVM_GET_XSAVE2", ioctlGetXSave2},
	{"KVM_GET_TSC_KHZ", ioctlGetTSCKHz},
	{"KVM_GET_MSR_FEATURE_INDEX_LIST", ioctlGetMSRFeatureIndexLst},
	{"KVM_GET_ONE_REG", ioctlGetOneReg},
	{"KVM_SET_ONE_REG", ioctlSetOneReg},
	{"KVM_CAP_IRQCHIP", capIRQChip},
	{"KVM_CAP_HLT", capHLT},
	{"KVM_CAP_USER_MEMORY", capUserMemory},
	{"KVM_CAP_SET_TSS_ADDR", capSetTSSAddr},
	{"KVM_CAP_EXT_CPUID", capExtCPUID},
	{"KVM_CAP_NR_VCPUS", capNrVCPUs},
	{"KVM_CAP_MP_STATE", capMPState},
	{"KVM_CAP_COALESCED_MMIO", capCoalescedMMIO},
	{"KVM_CAP_SYNC_MMU", capSyncMMU},
	{"KVM_CAP_SET_GUEST_DEBUG", capSetGuestDebug},
	{"KVM_CAP_IRQ_ROUTING", capIRQRouting},
	{"KVM_CAP_IRQFD", capIRQFD},
	{"KVM_CAP_PIT2", capPIT2},
	{"KVM_CAP_IOEVENTFD", capIOEventFD},
	{"KVM_CAP_SET_IDENTITY_MAP_ADDR", capSetIdentityMapAddr},
	{"KVM_CAP_ADJUST_CLOCK", capAdjustClock},
	{"KVM_CAP_VCPU_EVENTS", capVCPUEvents},
	{"KVM_CAP_HYPERV", capHyperV},
	{"KVM_CAP_DEBUGREGS", capDebugRegs},
	{"KVM_CAP_XSAVE", capXSave},
	{"KVM_CAP_XCRS", capXCRs},
	{"KVM_CAP_TSC_CONTROL", capTSCControl},
	{"KVM_CAP_GET_TSC_KHZ", capGetTSCKHz},
	{"KVM_CAP_MAX_VCPUS", capMaxVCPUs},
	{"KVM_CAP_TSC_DEADLINE_TIMER", capTSCDeadlineTimer},
	{"KVM_CAP_KVMCLOCK_CTRL", capKVMClockCtrl},
	{"KVM_CAP_SIGNAL_MSI", capSignalMSI},
	{"KVM_CAP_READONLY_MEM", capReadonlyMem},
	{"KVM_CAP_IRQFD_RESAMPLE", capIRQFDResample},
	{"KVM_CAP_X86_SMM", capX86SMM},
	{"KVM_CAP_GUEST_DEBUG_HW_BPS", capGuestDebugHWBPs},
	{"KVM_CAP_SPLIT_IRQCHIP", capSplitIRQChip},
	{"KVM_CAP_HYPERV_SYNIC2", capHyperVSynIC2},
	{"KVM_CAP_IOEVENTFD_ANY_LENGTH", capIOEventFDAnyLength},
	{"KVM_CAP_MAX_VCPU_ID", capMaxVCPUID},
	{"KVM_CAP_X2APIC_API", capX2APICAPI},
	{"KVM_CAP_IMMEDIATE_EXIT", capImmediateExit},
	{"KVM_CAP_GET_MSR_FEATURES", capGetMSRFeatures},
	{"KVM_CAP_NESTED_STATE", capNestedState},
	{"KVM_CAP_EXCEPTION_PAYLOAD", capExceptionPayload},
	{"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", capManualDirtyLogProtect2},
	{"KVM_CAP_X86_USER_SPACE_MSR", capX86UserSpaceMSR},
	{"KVM_CAP_X86_MSR_FILTER", capX86MSRFilter},
	{"KVM_CAP_DIRTY_LOG_RING", capDirtyLogRing},
	{"KVM_CAP_SREGS2", capSregs2},
	{"KVM_CAP_EXIT_ON_EMULATION_FAILURE", capExitOnEmulationFailure},
	{"KVM_CAP_XSAVE2", capXSave2},
	{"KVM_CAP_PMU_CAPABILITY", capPMUCapability},
	{"KVM_PMU_CAP_DISABLE", pmuCapDisable},
	{"KVM_CAP_DIRTY_LOG_RING_ACQ_REL", capDirtyLogRingAcqRel},
	{"KVM_EXIT_UNKNOWN", exitUnknown},
	{"KVM_EXIT_EXCEPTION", exitException},
	{"KVM_EXIT_IO", exitIO},
	{"KVM_EXIT_HYPERCALL", exitHypercall},
	{"KVM_EXIT_DEBUG", exitDebug},
	{"KVM_EXIT_HLT", exitHLT},
	{"KVM_EXIT_MMIO", exitMMIO},
	{"KVM_EXIT_IRQ_WINDOW_OPEN", exitIRQWindowOpen},
	{"KVM_EXIT_SHUTDOWN", exitShutdown},
	{"KVM_EXIT_FAIL_ENTRY", exitFailEntry},
	{"KVM_EXIT_INTR", exitIntr},
	{"KVM_EXIT_SET_TPR", exitSetTPR},
	{"KVM_EXIT_TPR_ACCESS", exitTPRAccess},
	{"KVM_EXIT_NMI", exitNMI},
	{"KVM_EXIT_INTERNAL_ERROR", exitInternalError},
	{"KVM_EXIT_SYSTEM_EVENT", exitSystemEvent},
	{"KVM_EXIT_IOAPIC_EOI", exitIOAPICEOI},
	{"KVM_EXIT_X86_RDMSR", exitX86RDMSR},
	{"KVM_EXIT_X86_WRMSR", exitX86WRMSR},
	{"KVM_EXIT_DIRTY_RING_FULL", exitDirtyRingFull},
	{"KVM_EXIT_X86_BUS_LOCK", exitX86BusLock},
	{"KVM_EXIT_NOTIFY", exitNotify},
	{"KVM_EXIT_IO_IN", exitIOIn},
	{"KVM_EXIT_IO_OUT", exitIOOut},
	{"KVM_SYSTEM_EVENT_SHUTDOWN", systemEventShutdown},
	{"KVM_SYSTEM_EVENT_RESET", systemEventReset},
	{"KVM_SYSTEM_EVENT_CRASH", systemEventCrash},
	{"KVM_INTERNAL_ERROR_EMULATION", internalErrorEmulation},
	{"KVM_INTERNAL_ERROR_SIMUL_EX", internalErrorSimulEx},
	{"KVM_INTERNAL_ERROR_DELIVERY_EV", internalErrorDeliveryEv},
	{"KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON", internalErrorUnexpectedEx},
	{"KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES", emulationFlagInsnBytes},
	{"KVM_MEM_LOG_DIRTY_PAGES", memLogDirtyPages},
	{"KVM_MEM_READONLY", memReadonly},
	{"KVM_IRQ_ROUTING_IRQCHIP", irqRoutingIRQChip},
	{"KVM_IRQ_ROUTING_MSI", irqRoutingMSI},
	{"KVM_IRQFD_FLAG_DEASSIGN", irqfdFlagDeassign},
	{"KVM_IRQFD_FLAG_RESAMPLE", irqfdFlagResample},
	{"KVM_IOEVENTFD_FLAG_DATAMATCH", ioeventfdFlagDatamatch},
	{"KVM_IOEVENTFD_FLAG_PIO", ioeventfdFlagPIO},
	{"KVM_IOEVENTFD_FLAG_DEASSIGN", ioeventfdFlagDeassign},
	{"KVM_X2APIC_API_USE_32BIT_IDS", x2apicAPIUse32BitIDs},
	{"KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK", x2apicAPIDisableBroadcastQuirk},
	{"KVM_CPUID_FLAG_SIGNIFCANT_INDEX", cpuidFlagSignificantIndex},
	{"KVM_VCPUEVENT_VALID_NMI_PENDING", vcpuEventValidNMIPending},
	{"KVM_VCPUEVENT_VALID_SIPI_VECTOR", vcpuEventValidSIPIVector},
	{"KVM_VCPUEVENT_VALID_SHADOW", vcpuEventValidShadow},
	{"KVM_VCPUEVENT_VALID_PAYLOAD", vcpuEventValidPayload},
	{"KVM_API_VERSION", apiVersion},
}
