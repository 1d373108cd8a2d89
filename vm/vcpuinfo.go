package vm

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"

	"govmm/accel"
	"govmm/api"
	"govmm/irq/ioapic"
)

// vcpuLook is what InspectVCPUs reads from one vCPU: the part of the
// neutral VCPUState a person looks at first in a hung guest, the bytes at
// CS:RIP and, where the accelerator gives them, the TSC and the LAPIC
// timer's TSC deadline.
type vcpuLook struct {
	state         VCPUState // Regs, Sregs, LAPIC, Events and MPState only
	code          []byte
	tsc, deadline *uint64
}

// msrTSC is IA32_TIME_STAMP_COUNTER.
const msrTSC = 0x10

// inspectPauseBound is how long InspectVCPUs waits for the vCPUs to stop:
// shorter than a snapshot's, because it is asked for when something is
// already stuck, and a vCPU that does not stop is then the answer.
const inspectPauseBound = 5 * time.Second

// InspectVCPUs captures every vCPU's registers, control registers, LAPIC,
// pending events and MP state, decoded for the control socket's "vcpus"
// operation (`govmm info --vcpus`). A running VM is paused for the capture
// and resumed afterwards, also when the capture fails; the result says
// how long it was paused. A paused VM stays paused.
//
// It reads less than a snapshot (no FPU, XSAVE or MSR list), with the same
// accelerator-neutral accessors, on each vCPU's own thread, so that the
// pause stays short; decoding happens after the VM runs again.
func (v *VM) InspectVCPUs() (api.VCPUsResult, error) {
	res := api.VCPUsResult{WasPaused: v.Paused()}
	begin := time.Now()
	if !res.WasPaused {
		if err := v.PauseWithin(inspectPauseBound); err != nil {
			return api.VCPUsResult{}, fmt.Errorf("pause the VM for the vCPU capture: %w", err)
		}
	}
	looks := make([]vcpuLook, v.cfg.NumCPUs)
	var err error
	for i := range looks {
		if e := v.onVCPU(i, func(c accel.VCPU) error { return v.lookVCPU(c, &looks[i]) }); e != nil {
			err = fmt.Errorf("capture vCPU %d: %w", i, e)
			break
		}
	}
	if !res.WasPaused {
		if e := v.Resume(); e != nil {
			if err != nil {
				return api.VCPUsResult{}, fmt.Errorf("%w; and resuming the VM afterwards failed: %v", err, e)
			}
			return api.VCPUsResult{}, fmt.Errorf("vCPUs captured, but resuming the VM failed: %w", e)
		}
		res.PauseMS = float64(time.Since(begin).Microseconds()) / 1000
	}
	if err != nil {
		return api.VCPUsResult{}, err
	}
	for i := range looks {
		res.VCPUs = append(res.VCPUs, decodeVCPU(i, &looks[i]))
	}
	res.IOAPIC, res.INTx = v.interruptLines()
	return res, nil
}

// interruptLines reads the IOAPIC's pins and the virtio functions' INTx
// lines for InspectVCPUs. They are read after the vCPUs ran again: the
// device lines move on their own goroutines anyway, so this is a look,
// not a snapshot, and a lost level interrupt stays lost for it.
func (v *VM) interruptLines() ([]api.IOAPICPin, []api.INTxLine) {
	p := v.plat
	if p == nil || p.chips == nil {
		return nil, nil
	}
	var pins []api.IOAPICPin
	for _, s := range p.chips.IOAPIC().Pins() {
		e := s.Entry
		pins = append(pins, api.IOAPICPin{Pin: s.Pin, Entry: e, Vector: uint8(e & ioapic.RedVector), Dest: uint8(e >> ioapic.RedDestShift),
			Level: e&ioapic.RedLevel != 0, Masked: e&ioapic.RedMasked != 0, RemoteIRR: e&ioapic.RedRemoteIRR != 0,
			Line: s.Line, Resample: s.Resample, Asserted: s.Level, Requested: s.Requested, Resampler: s.Resampler,
			Delivered: s.Delivered, EOIs: s.EOIs, EdgeClears: s.EdgeClears})
	}
	var lines []api.INTxLine
	for _, d := range p.virtio {
		x := d.Transport.INTx()
		if !x.Present {
			continue
		}
		lines = append(lines, api.INTxLine{Device: d.Transport.Describe(), GSI: x.GSI, ISR: x.ISR, MSIX: x.MSIX, Asserted: x.Asserted, Raises: x.Raises})
	}
	return pins, lines
}

// lookVCPU reads what InspectVCPUs shows from c, on c's thread.
func (v *VM) lookVCPU(c accel.VCPU, l *vcpuLook) error {
	s := &l.state
	var st steps
	step := st.step
	step("registers", func() (e error) { s.Regs, e = c.Regs(); return })
	step("segment registers", func() (e error) { s.Sregs, e = c.Sregs(); return })
	step("LAPIC", func() (e error) { s.LAPIC, e = c.LAPIC(); return })
	step("events", func() (e error) { s.Events, e = c.Events(); return })
	step("MP state", func() (e error) { s.MPState, e = c.MPState(); return })
	if st.err != nil {
		return st.err
	}
	// Best effort, one at a time: MSHV reaches MSRs only through named
	// registers, and names no TSC deadline.
	for _, m := range []struct {
		index uint32
		dst   **uint64
	}{{msrTSC, &l.tsc}, {msrTSCDeadline, &l.deadline}} {
		if got, e := c.MSRs([]uint32{m.index}); e == nil && len(got) == 1 {
			val := got[0].Value
			*m.dst = &val
		}
	}
	l.code = v.instructionBytes(c, s.Regs.RIP)
	return nil
}

// decodeVCPU turns one vCPU's captured state into the control socket's form.
func decodeVCPU(index int, l *vcpuLook) api.VCPU {
	r, s := &l.state.Regs, &l.state.Sregs
	out := api.VCPU{
		Index: index, MPState: l.state.MPState.String(),
		CS: s.CS.Selector, SS: s.SS.Selector, RIP: r.RIP, RSP: r.RSP, RFLAGS: DecodeRFLAGS(r.RFLAGS),
		CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER,
		GPRs: map[string]uint64{
			"rax": r.RAX, "rbx": r.RBX, "rcx": r.RCX, "rdx": r.RDX, "rsi": r.RSI, "rdi": r.RDI, "rsp": r.RSP, "rbp": r.RBP,
			"r8": r.R8, "r9": r.R9, "r10": r.R10, "r11": r.R11, "r12": r.R12, "r13": r.R13, "r14": r.R14, "r15": r.R15,
		},
		Code:   hex.EncodeToString(l.code),
		Events: decodeEvents(&l.state.Events),
		LAPIC:  DecodeLAPIC(&l.state.LAPIC, s.APICBase),
	}
	out.Mode, out.CodeBits, out.VM86, out.CPL = cpuMode(s, r.RFLAGS)
	out.LAPIC.TSC, out.LAPIC.TSCDeadline = l.tsc, l.deadline
	return out
}

const (
	cr0PE     = 1 << 0
	rflagsIF  = 1 << 9
	rflagsVM  = 1 << 17
	rflagsIOP = 3 << 12
)

// cpuMode says which mode the vCPU runs in, the default operand size of
// its code segment and its privilege level. CPL is SS.DPL outside real and
// virtual-8086 mode: both VMX and SVM keep it there (KVM reports SVM's CPL
// field as SS.DPL), and a conforming code segment's DPL is not the CPL.
func cpuMode(s *accel.Sregs, rflags uint64) (mode string, bits int, vm86 bool, cpl int) {
	switch {
	case s.CR0&cr0PE == 0:
		return "real", 16, false, 0
	case s.EFER&efeLMA != 0:
		cpl = int(s.SS.DPL & 3)
		switch {
		case s.CS.L:
			return "long", 64, false, cpl
		case s.CS.DB:
			return "long", 32, false, cpl
		}
		return "long", 16, false, cpl
	case rflags&rflagsVM != 0:
		return "protected", 16, true, 3
	}
	cpl = int(s.SS.DPL & 3)
	if s.CS.DB {
		return "protected", 32, false, cpl
	}
	return "protected", 16, false, cpl
}

// rflagsNames are the RFLAGS bits by position (IOPL, bits 12-13, apart).
var rflagsNames = []struct {
	bit  uint
	name string
}{
	{0, "CF"}, {2, "PF"}, {4, "AF"}, {6, "ZF"}, {7, "SF"}, {8, "TF"}, {9, "IF"}, {10, "DF"}, {11, "OF"},
	{14, "NT"}, {16, "RF"}, {17, "VM"}, {18, "AC"}, {19, "VIF"}, {20, "VIP"}, {21, "ID"},
}

// DecodeRFLAGS names the flags set in v, and its IF and IOPL.
func DecodeRFLAGS(v uint64) api.RFLAGS {
	out := api.RFLAGS{Value: v, Set: []string{}, IF: v&rflagsIF != 0, IOPL: int(v&rflagsIOP) >> 12}
	for _, f := range rflagsNames {
		if v&(1<<f.bit) != 0 {
			out.Set = append(out.Set, f.name)
		}
	}
	return out
}

// exceptionNames are the architectural exception mnemonics by vector.
var exceptionNames = [...]string{
	0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF", 9: "#MF(coprocessor overrun)",
	10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM",
	20: "#VE", 21: "#CP", 28: "#HV", 29: "#VC", 30: "#SX",
}

// ExceptionName is the mnemonic of exception vector v ("#GP"), or
// "vector N" for one the architecture does not name.
func ExceptionName(v uint8) string {
	if int(v) < len(exceptionNames) && exceptionNames[v] != "" {
		return exceptionNames[v]
	}
	return fmt.Sprintf("vector %d", v)
}

func decodeEvents(e *accel.Events) api.Events {
	var out api.Events
	if x := e.Exception; x.Injected || x.Pending {
		ex := &api.Exception{Vector: x.Nr, Name: ExceptionName(x.Nr), State: "pending"}
		if x.Injected {
			ex.State = "injected"
		}
		if x.HasErrorCode {
			code := x.ErrorCode
			ex.ErrorCode = &code
		}
		if x.HasPayload {
			p := x.Payload
			ex.Payload = &p
		}
		out.Exception = ex
	}
	if e.Interrupt.Injected {
		out.Interrupt = &api.Interrupt{Vector: e.Interrupt.Nr, Soft: e.Interrupt.Soft}
	}
	switch {
	case e.NMI.Injected:
		out.NMI = "injected"
	case e.NMI.Pending:
		out.NMI = "pending"
	}
	out.NMIMasked = e.NMI.Masked
	switch e.Interrupt.Shadow & 3 {
	case 1:
		out.Shadow = "sti"
	case 2:
		out.Shadow = "mov-ss"
	case 3:
		out.Shadow = "sti/mov-ss"
	}
	out.SIPIVector = e.SIPIVector
	return out
}

// LAPIC register offsets in the xAPIC page (the SDM's Local APIC Register Address Map).
const (
	lapicID    = 0x20
	lapicTPR   = 0x80
	lapicSVR   = 0xF0
	lapicISR   = 0x100
	lapicTMR   = 0x180
	lapicIRR   = 0x200
	lapicTimer = 0x320
	lapicTMICT = 0x380
	lapicTMCCT = 0x390
	lapicTDCR  = 0x3E0
)

// IA32_APIC_BASE bits.
const (
	apicBaseBSP  = 1 << 8
	apicBaseEXTD = 1 << 10 // x2APIC mode
	apicBaseEN   = 1 << 11
)

// lvtTimerModes are the LVT timer's mode field (bits 17-18).
var lvtTimerModes = [4]string{"one-shot", "periodic", "tsc-deadline", "reserved"}

// DecodeLAPIC decodes a LAPIC register page (the neutral xAPIC layout both
// accelerators' state converts to) whose IA32_APIC_BASE is apicBase. In
// x2APIC mode the ID register holds the whole 32-bit x2APIC ID (KVM with
// the 32-bit x2APIC API, and MSHV, store it so); in xAPIC mode the ID is
// its top byte.
func DecodeLAPIC(l *accel.LAPIC, apicBase uint64) api.LAPIC {
	reg := func(off int) uint32 { return binary.LittleEndian.Uint32(l.Regs[off:]) }
	out := api.LAPIC{APICBase: apicBase, BSP: apicBase&apicBaseBSP != 0}
	switch {
	case apicBase&apicBaseEN == 0:
		out.Mode = "disabled"
	case apicBase&apicBaseEXTD != 0:
		out.Mode = "x2apic"
	default:
		out.Mode = "xapic"
	}
	out.ID = reg(lapicID)
	if out.Mode != "x2apic" {
		out.ID >>= 24
	}
	svr := reg(lapicSVR)
	out.SoftwareEnabled, out.SpuriousVector = svr&(1<<8) != 0, uint8(svr)
	out.TPR = uint8(reg(lapicTPR))
	out.ISR, out.TMR, out.IRR = lapicVectors(l, lapicISR), lapicVectors(l, lapicTMR), lapicVectors(l, lapicIRR)
	// PPR (the SDM's Processor Priority Register section): TPR when its class is at least the highest
	// in-service class, else that class with a zero subclass.
	var isrv uint8
	if n := len(out.ISR); n > 0 {
		isrv = uint8(out.ISR[n-1])
	}
	if out.TPR>>4 >= isrv>>4 {
		out.PPR = out.TPR
	} else {
		out.PPR = isrv & 0xf0
	}
	lvt := reg(lapicTimer)
	out.Timer = api.LAPICLVT{
		Raw: lvt, Vector: uint8(lvt), Mode: lvtTimerModes[(lvt>>17)&3],
		Masked: lvt&(1<<16) != 0, Pending: lvt&(1<<12) != 0,
	}
	out.InitialCount, out.CurrentCount = reg(lapicTMICT), reg(lapicTMCCT)
	// TDCR bits 0, 1 and 3 select the divisor: 2 << value, 7 meaning 1.
	tdcr := reg(lapicTDCR)
	if d := tdcr&3 | (tdcr>>1)&4; d == 7 {
		out.Divide = 1
	} else {
		out.Divide = 2 << d
	}
	return out
}

// lapicVectors lists the vectors set in the 256-bit register at off: eight
// 32-bit words, each at the start of a 16-byte slot.
func lapicVectors(l *accel.LAPIC, off int) []int {
	out := []int{}
	for w := range 8 {
		bits := binary.LittleEndian.Uint32(l.Regs[off+0x10*w:])
		for b := range 32 {
			if bits&(1<<b) != 0 {
				out = append(out, w*32+b)
			}
		}
	}
	return out
}
