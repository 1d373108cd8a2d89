package mshv

import (
	"strings"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// TestFakeInterruptShadowEnded: an intercepted instruction that ran in an
// interrupt shadow (execution_state bit 12, interrupt_shadow, of
// hv_x64_intercept_message_header) and that the VMM completes must leave
// the shadow behind it: the STI or MOV SS shadow covers exactly one
// instruction (Intel SDM vol. 3A 6.8.3; AMD APM vol. 2 15.21.5), and KVM
// clears it whenever it retires an instruction for the guest
// (kvm_skip_emulated_instruction -> svm.c __svm_skip_emulated_instruction
// / vmx.c skip_emulated_instruction -> set_interrupt_shadow(vcpu, 0);
// x86.c x86_emulate_instruction -> toggle_interruptibility). The backend
// writes HV_REGISTER_INTERRUPT_STATE with interrupt_shadow clear and
// nmi_masked as it was, for each way it completes an instruction (scalar
// and string port I/O, MMIO, CPUID, MSR); without the bit it does not
// touch the register; an emulated instruction that faults does not retire,
// and keeps its shadow. The old backend never wrote INTERRUPT_STATE.
func TestFakeInterruptShadowEnded(t *testing.T) {
	const shadowNMI = mshvabi.InterruptStateShadow | mshvabi.InterruptStateNMIMasked
	realCS := mshvabi.SegmentRegister{Limit: 0xffff, Attributes: 0x9b}
	data := func(base uint64) mshvabi.RegisterValue {
		return segValue(mshvabi.SegmentRegister{Base: base, Limit: 0xffff, Selector: uint16(base >> 4), Attributes: 0x93})
	}
	cases := []struct {
		name   string
		msg    func(m *mshvabi.Message)
		rip    uint64 // RIP after the intercept (0: not written)
		retire bool   // the instruction retires
	}{
		{"out", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1001)
			h.InsnLenCR8, h.InterceptAccessType = 2, mshvabi.AccessWrite
			io := m.IOPort()
			io.PortNumber, io.AccessInfo = 0x80, 1
		}, 0x1003, true},
		{"in", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1001)
			h.InsnLenCR8, h.InterceptAccessType = 1, mshvabi.AccessRead
			io := m.IOPort()
			io.PortNumber, io.AccessInfo = 0x60, 1
		}, 0x1002, true},
		{"outsb", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1001)
			h.InsnLenCR8, h.InterceptAccessType = 1, mshvabi.AccessWrite
			h.CS, h.RFLAGS = realCS, 2
			io := m.IOPort()
			io.PortNumber, io.AccessInfo = 0x80, 1|mshvabi.IOAccessString
			io.InstructionByteCount, io.InstructionBytes[0] = 1, 0x6E
			io.RSI = 0x10
			io.DS = mshvabi.SegmentRegister{Base: 0xd0000, Limit: 0xffff, Selector: 0xd000, Attributes: 0x93}
			io.ES = io.DS
		}, 0x1002, true},
		{"mmio", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgUnmappedGPA, 0x1001)
			h.InterceptAccessType, h.CS, h.RFLAGS = mshvabi.AccessWrite, realCS, 2
			mm := m.Memory()
			mm.GPA, mm.InstructionByteCount = 0xd0010, 3
			copy(mm.InstructionBytes[:], []byte{0xA2, 0x10, 0x00}) // mov [0x10], al
		}, 0x1004, true},
		{"cpuid", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64CPUIDIntercept, 0x1001)
			h.InsnLenCR8 = 2
		}, 0x1003, true},
		{"rdmsr", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64MSRIntercept, 0x1001)
			h.InsnLenCR8, h.InterceptAccessType = 2, mshvabi.AccessRead
		}, 0x1003, true},
		{"mmio-fault", func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgUnmappedGPA, 0x1001)
			h.InterceptAccessType, h.CS, h.RFLAGS = mshvabi.AccessWrite, realCS, 2
			mm := m.Memory()
			mm.GPA, mm.InstructionByteCount = 0xdffff, 3
			copy(mm.InstructionBytes[:], []byte{0xA3, 0xFF, 0xFF}) // mov [0xffff], ax: #GP
		}, 0, false},
	}
	for _, c := range cases {
		for _, inShadow := range []bool{true, false} {
			f := newFake()
			vm, v := f.machine(t)
			host := pageAligned(0x2000)
			if err := vm.MapMemory(accel.MemoryRegion{GPA: 0xd0000, Host: host}); err != nil {
				t.Fatal(err)
			}
			f.regs[mshvabi.RegCR0] = mshvabi.RegisterValue{Low: 0x10}
			for _, n := range []uint32{mshvabi.RegDS, mshvabi.RegES, mshvabi.RegSS, mshvabi.RegFS, mshvabi.RegGS} {
				f.regs[n] = data(0xd0000)
			}
			f.regs[mshvabi.RegInterruptState] = mshvabi.RegisterValue{Low: mshvabi.InterruptStateNMIMasked}
			if inShadow {
				f.regs[mshvabi.RegInterruptState] = mshvabi.RegisterValue{Low: shadowNMI}
			}
			msg := c.msg
			f.msgs = []func(*mshvabi.Message){
				func(m *mshvabi.Message) {
					msg(m)
					if inShadow {
						m.InterceptHeader().ExecutionState |= mshvabi.ExecStateInterruptShadow
					}
				},
				func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x2000) },
			}
			var l log
			if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitHalt {
				t.Fatalf("%s (shadow %v): exit %+v %v", c.name, inShadow, e, err)
			}
			if rip := f.regs[mshvabi.RegRIP].Low; rip != c.rip {
				t.Errorf("%s (shadow %v): rip %#x after the intercept, want %#x", c.name, inShadow, rip, c.rip)
			}
			is := f.regs[mshvabi.RegInterruptState].Low
			writes := f.written[[2]uint32{mshvabi.RegInterruptState, 0}]
			switch {
			case inShadow && c.retire:
				if is != mshvabi.InterruptStateNMIMasked || writes != 1 {
					t.Errorf("%s in a shadow: INTERRUPT_STATE %#x after %d writes, want %#x (shadow ended, NMI mask kept) in one write",
						c.name, is, writes, mshvabi.InterruptStateNMIMasked)
				}
			case inShadow:
				if is != shadowNMI || writes != 0 {
					t.Errorf("%s faulted in a shadow: INTERRUPT_STATE %#x after %d writes, want %#x untouched", c.name, is, writes, shadowNMI)
				}
			default:
				if writes != 0 {
					t.Errorf("%s outside a shadow wrote INTERRUPT_STATE %d times", c.name, writes)
				}
			}
		}
	}
}

// TestFakeDeliveryIntercept: a memory intercept with execution_state bit
// 6 (interruption_pending) was taken while the processor delivered an
// event, here a #PF whose IDT entry lies in GPA space without RAM. The
// instruction at RIP has not run and must not be emulated: the backend
// ends with a fatal exit that names the event (from
// HV_REGISTER_PENDING_INTERRUPTION), the GPA and RIP, as KVM stops with
// KVM_INTERNAL_ERROR_DELIVERY_EV (arch/x86/kvm/x86.c
// kvm_prepare_event_vectoring_exit) and OpenVMM with "an interrupt caused
// the memory access exit" (virt_support_x86emu emulate()). The old backend
// emulated the MOV at RIP: an MMIO write the guest never made, and RIP
// moved past an instruction that never ran.
func TestFakeDeliveryIntercept(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	f.regs[mshvabi.RegCR0] = mshvabi.RegisterValue{Low: 0x80000011}
	f.regs[mshvabi.RegCR4] = mshvabi.RegisterValue{Low: 0x20}
	f.regs[mshvabi.RegEFER] = mshvabi.RegisterValue{Low: 0x500}
	f.regs[mshvabi.RegRAX] = mshvabi.RegisterValue{Low: 0xfeb00010}
	f.regs[mshvabi.RegPendingInterruption] = mshvabi.RegisterValue{Low: mshvabi.PendingIntrPending |
		mshvabi.PendingTypeException<<mshvabi.PendingIntrTypeShift | 14<<mshvabi.PendingIntrVectorShift |
		mshvabi.PendingIntrDeliverErr | 2<<mshvabi.PendingIntrErrorShift}
	f.msgs = []func(*mshvabi.Message){
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgUnmappedGPA, 0x400000)
			h.InterceptAccessType = mshvabi.AccessRead
			h.CS = mshvabi.SegmentRegister{Selector: 8, Attributes: 0xa09b}
			h.RFLAGS = 2
			h.ExecutionState = mshvabi.ExecStateCR0PE | mshvabi.ExecStateEFERLMA | mshvabi.ExecStateInterruptionPending
			mm := m.Memory()
			mm.GPA = 0xfee000e0 // IDT entry 14 of an IDT at 0xfee00000
			mm.InstructionByteCount = 2
			copy(mm.InstructionBytes[:], []byte{0x89, 0x18}) // mov [rax], ebx
		},
		func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x400002) },
	}
	var l log
	e, err := v.Run(&l)
	if err != nil {
		t.Fatal(err)
	}
	if e.Reason != accel.ExitInternalError || e.RIP != 0x400000 {
		t.Fatalf("exit %v at rip %#x (%s), want an internal error at 0x400000", e.Reason, e.RIP, e.Detail)
	}
	for _, want := range []string{"GPA 0xfee000e0", "exception vector 14 error code 0x2", "interruption_pending", "rip 0x400000"} {
		if !strings.Contains(e.Detail, want) {
			t.Errorf("detail %q does not name %q", e.Detail, want)
		}
	}
	if len(l) != 0 {
		t.Errorf("accesses %q: the instruction at RIP was emulated", l)
	}
	if _, ok := f.regs[mshvabi.RegRIP]; ok {
		t.Errorf("RIP written (%#x) for an instruction that never ran", f.regs[mshvabi.RegRIP].Low)
	}
}
