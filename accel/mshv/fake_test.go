package mshv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// fakeHV scripts an MSHV kernel for error-path tests.
type fakeHV struct {
	dev          *mshvabi.Fake
	refuseV2     bool
	created      []uint64
	props        map[uint32]uint64
	eagain       int
	alwaysEAGAIN bool
	shortReps    bool
	zeroReps     bool
	regs         map[uint32]mshvabi.RegisterValue
	msgs         []func(m *mshvabi.Message)
	eintr        bool // set by a msgs func: this dispatch returns EINTR
	hvcalls      int
	vpstate      map[uint8][]byte
	irqfdArgs    []mshvabi.UserIRQFD
	routeTables  [][]mshvabi.UserIRQEntry
	// translate: TRANSLATE_VIRTUAL_ADDRESS result code (0: identity
	// translation succeeds); translated counts the calls.
	translate  uint32
	translated int
	// payloads are the CREATE_PARTITION arguments (64 bytes for v2);
	// host, when set, is served as the root partition's
	// PROCESSOR_FEATURES0/1 and PROCESSOR_XSAVE_FEATURES through a
	// self-targeted hypercall (otherwise that call is ENOTTY, as on 6.15).
	payloads [][]byte
	host     *[3]uint64
	// cpuid, when set, answers GET_VP_CPUID_VALUES (otherwise zeros).
	cpuid []accel.CPUIDEntry
	// written counts SET_VP_REGISTERS writes per register name and VP.
	written map[[2]uint32]int
	// cleared counts CLEAR_VIRTUAL_INTERRUPT calls; asserted records
	// ASSERT_VIRTUAL_INTERRUPT inputs.
	cleared  int
	asserted [][]byte
}

func newFake() *fakeHV {
	f := &fakeHV{props: map[uint32]uint64{}, regs: map[uint32]mshvabi.RegisterValue{}}
	f.dev = &mshvabi.Fake{Handler: f.handle, MmapErr: unix.ENODEV}
	return f
}

const (
	fakePartFD = 10
	fakeVPFD   = 11
)

func (f *fakeHV) handle(c *mshvabi.FakeCall) (int, error) {
	sys := c.FD == f.dev.SystemFD()
	switch {
	case sys && c.Req == mshvabi.ReqRootHvcall:
		if f.host == nil || c.Hvcall.Code != mshvabi.HvcallGetPartitionProperty {
			return -1, unix.ENOTTY // a 6.15 kernel: no self-targeted hypercalls
		}
		switch binary.LittleEndian.Uint32(c.In[8:]) {
		case mshvabi.PropProcessorFeatures0:
			binary.LittleEndian.PutUint64(c.Out, f.host[0])
		case mshvabi.PropProcessorFeatures1:
			binary.LittleEndian.PutUint64(c.Out, f.host[1])
		case mshvabi.PropProcessorXSaveFeatures:
			binary.LittleEndian.PutUint64(c.Out, f.host[2])
		default:
			return -1, unix.EIO
		}
		return 0, nil
	case sys && c.Req == mshvabi.ReqCreatePartition:
		fl := binary.LittleEndian.Uint64(c.Arg)
		f.created = append(f.created, fl)
		f.payloads = append(f.payloads, append([]byte(nil), c.Arg...))
		if fl&^0xf != 0 || (fl&8 != 0 && f.refuseV2) {
			return -1, unix.EINVAL
		}
		return fakePartFD, nil
	case sys:
		return -1, unix.ENOTTY
	case c.Req == mshvabi.ReqRootHvcall:
		return 0, f.hvcall(c)
	case c.FD == fakePartFD:
		switch c.Req {
		case mshvabi.ReqIRQFD:
			f.irqfdArgs = append(f.irqfdArgs, mshvabi.UserIRQFD{FD: int32(binary.LittleEndian.Uint32(c.Arg)),
				ResampleFD: int32(binary.LittleEndian.Uint32(c.Arg[4:])), GSI: binary.LittleEndian.Uint32(c.Arg[8:]), Flags: binary.LittleEndian.Uint32(c.Arg[12:])})
			return 0, nil
		case mshvabi.ReqSetMSIRouting:
			f.routeTables = append(f.routeTables, append([]mshvabi.UserIRQEntry(nil), c.Routes...))
			return 0, nil
		case mshvabi.ReqInitializePartition, mshvabi.ReqSetGuestMemory, mshvabi.ReqIOEventFD, mshvabi.ReqGetGPAPAccessBitmap:
			return 0, nil
		case mshvabi.ReqCreateVP:
			return fakeVPFD, nil
		}
	case c.FD == fakeVPFD:
		switch c.Req {
		case mshvabi.ReqGetVPState, mshvabi.ReqSetVPState:
			if f.vpstate == nil {
				f.vpstate = map[uint8][]byte{}
			}
			if c.Req == mshvabi.ReqSetVPState {
				f.vpstate[c.VPState.Type] = append([]byte(nil), c.Buf...)
			} else {
				clear(c.Buf)
				copy(c.Buf, f.vpstate[c.VPState.Type])
			}
			c.VPState.BufSz = 4096
			return 0, nil
		case mshvabi.ReqRunVP:
			if len(f.msgs) == 0 {
				return -1, unix.EIO
			}
			*c.Msg = mshvabi.Message{}
			f.msgs[0](c.Msg)
			f.msgs = f.msgs[1:]
			if f.eintr {
				f.eintr = false
				return -1, unix.EINTR
			}
			return 0, nil
		}
	}
	return -1, unix.ENOTTY
}

func (f *fakeHV) hvcall(c *mshvabi.FakeCall) error {
	f.hvcalls++
	if f.alwaysEAGAIN {
		return unix.EAGAIN
	}
	if f.eagain > 0 {
		f.eagain--
		return unix.EAGAIN
	}
	h := c.Hvcall
	n := h.Reps
	if f.shortReps && n > 1 {
		n = 1
	}
	if f.zeroReps {
		n = 0
	}
	switch h.Code {
	case mshvabi.HvcallGetVPRegisters:
		for i := 0; i < int(n); i++ {
			v := f.regs[binary.LittleEndian.Uint32(c.In[16+4*i:])]
			binary.LittleEndian.PutUint64(c.Out[16*i:], v.Low)
			binary.LittleEndian.PutUint64(c.Out[16*i+8:], v.High)
		}
		h.Reps = n
	case mshvabi.HvcallSetVPRegisters:
		if f.written == nil {
			f.written = map[[2]uint32]int{}
		}
		for i := 0; i < int(n); i++ {
			e := c.In[16+32*i:]
			f.written[[2]uint32{binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(c.In[8:])}]++
			f.regs[binary.LittleEndian.Uint32(e)] = mshvabi.RegisterValue{Low: binary.LittleEndian.Uint64(e[16:]), High: binary.LittleEndian.Uint64(e[24:])}
		}
		h.Reps = n
	case mshvabi.HvcallSetPartitionProperty:
		f.props[binary.LittleEndian.Uint32(c.In[8:])] = binary.LittleEndian.Uint64(c.In[16:])
	case mshvabi.HvcallGetPartitionProperty:
		return unix.EINVAL
	case mshvabi.HvcallGetVPCPUIDValues:
		if f.cpuid != nil {
			get := cpuidReader(f.cpuid)
			for i := 0; i < int(n); i++ {
				q := c.In[24+24*i:]
				r, _ := get(binary.LittleEndian.Uint32(q), binary.LittleEndian.Uint32(q[4:]))
				for j, x := range r {
					binary.LittleEndian.PutUint32(c.Out[16*i+4*j:], x)
				}
			}
		}
		h.Reps = n
	case mshvabi.HvcallClearVirtualInterrupt:
		f.cleared++
	case mshvabi.HvcallAssertVirtualInterrupt:
		f.asserted = append(f.asserted, append([]byte(nil), c.In...))
	case mshvabi.HvcallTranslateVirtualAddress:
		f.translated++
		binary.LittleEndian.PutUint32(c.Out, f.translate)
		binary.LittleEndian.PutUint64(c.Out[8:], binary.LittleEndian.Uint64(c.In[24:]))
	}
	return nil
}

func (f *fakeHV) machine(t *testing.T) (*VM, *VCPU) {
	t.Helper()
	vm, vs := f.machineN(t, 1)
	return vm, vs[0]
}

// machineN opens the backend on the fake and creates a VM with n vCPUs.
func (f *fakeHV) machineN(t *testing.T, n int) (*VM, []*VCPU) {
	t.Helper()
	a, err := Open(f.dev)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := a.NewVM(accel.VMConfig{NumVCPUs: n})
	if err != nil {
		t.Fatal(err)
	}
	vs := make([]*VCPU, n)
	for i := range vs {
		if vs[i], err = vm.NewVCPU(i); err != nil {
			t.Fatal(err)
		}
	}
	return vm, vs
}

func TestFakeBringUpFallsBackToV1(t *testing.T) {
	f := newFake()
	f.refuseV2 = true
	vm, _ := f.machine(t)
	if vm.V2 {
		t.Errorf("V2 after the kernel refused the v2 payload")
	}
	if len(f.created) != 2 || f.created[0] != 0xf || f.created[1] != 0x7 {
		t.Errorf("CREATE_PARTITION flags %#x, want [0xf 0x7]", f.created)
	}
	for code, want := range map[uint32]uint64{
		mshvabi.PropSyntheticProcFeatures:  mshvabi.DefaultSyntheticProcFeatures,
		mshvabi.PropUnimplementedMSRAction: 1,
		mshvabi.PropTimeFreeze:             1,
	} {
		if got, ok := f.props[code]; !ok || got != want {
			t.Errorf("property %#x = %#x (set %v), want %#x", code, got, ok, want)
		}
	}
	// Boot MSRs and the LAPIC's CR8.
	if v := f.regs[mshvabi.RegMTRRDefType].Low; v != 0x806 {
		t.Errorf("MTRRdefType %#x, want 0x806", v)
	}
}

func TestFakeV2Accepted(t *testing.T) {
	f := newFake()
	vm, _ := f.machine(t)
	if !vm.V2 || len(f.created) != 1 || f.created[0] != 0xf {
		t.Errorf("V2 %v, flags %#x", vm.V2, f.created)
	}
}

func TestFakeEAGAINRetried(t *testing.T) {
	f := newFake()
	f.eagain = 7
	_, v := f.machine(t)
	f.regs[mshvabi.RegRIP] = mshvabi.RegisterValue{Low: 0x1234}
	f.eagain = 3
	r, err := v.Regs()
	if err != nil || r.RIP != 0x1234 {
		t.Fatalf("Regs after EAGAINs: %+v %v", r, err)
	}
	f.alwaysEAGAIN = true
	_, err = v.Regs()
	if err == nil || !errors.Is(err, unix.EAGAIN) || !strings.Contains(err.Error(), "retries") {
		t.Fatalf("endless EAGAIN: err %v", err)
	}
}

func TestFakeShortReps(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	for i, n := range gprNames {
		f.regs[n] = mshvabi.RegisterValue{Low: uint64(i + 1)}
	}
	f.shortReps = true
	r, err := v.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RAX != 1 || r.RCX != 2 || r.R15 != 16 || r.RIP != 17 || r.RFLAGS != 18 {
		t.Errorf("registers read one rep at a time: %+v", r)
	}
	r.RBX = 0x55
	if err := v.SetRegs(&r); err != nil || f.regs[mshvabi.RegRBX].Low != 0x55 || f.regs[mshvabi.RegRFLAGS].Low != 18 {
		t.Errorf("SetRegs one rep at a time: %v", err)
	}
	f.zeroReps = true
	if _, err := v.Regs(); err == nil || !strings.Contains(err.Error(), "completed 0 of 18") {
		t.Errorf("zero reps: err %v", err)
	}
}

func header(m *mshvabi.Message, typ uint32, rip uint64) *mshvabi.InterceptMessageHeader {
	m.Header.MessageType = typ
	h := m.InterceptHeader()
	h.RIP = rip
	return h
}

type log []string

func (l *log) PIORead(port uint16, d []byte) {
	*l = append(*l, fmt.Sprintf("in %#x %d", port, len(d)))
	d[0] = 0x42
}
func (l *log) PIOWrite(port uint16, d []byte) { *l = append(*l, fmt.Sprintf("out %#x % x", port, d)) }
func (l *log) MMIORead(a uint64, d []byte) {
	*l = append(*l, fmt.Sprintf("mmio-read %#x %d", a, len(d)))
}
func (l *log) MMIOWrite(a uint64, d []byte) { *l = append(*l, fmt.Sprintf("mmio-write %#x % x", a, d)) }

func TestFakeMessages(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	var l log
	f.msgs = []func(*mshvabi.Message){
		func(m *mshvabi.Message) { header(m, mshvabi.MsgNone, 0) },
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1000)
			h.InsnLenCR8 = 1
			h.InterceptAccessType = mshvabi.AccessWrite
			io := m.IOPort()
			io.PortNumber, io.AccessInfo, io.RAX = 0x3f8, 1, 0x1141
		},
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1001)
			h.InsnLenCR8 = 2
			h.InterceptAccessType = mshvabi.AccessRead
			io := m.IOPort()
			io.PortNumber, io.AccessInfo, io.RAX = 0x60, 2, 0xffff_ffff_ffff_ffff
		},
		func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x1003) },
		func(m *mshvabi.Message) { header(m, mshvabi.MsgUnrecoverableException, 0x2000) },
		func(m *mshvabi.Message) {
			m.Header.MessageType = mshvabi.MsgX64APICEOI
			m.APICEOI().InterruptVector = 0x31
		},
		func(m *mshvabi.Message) { header(m, 0x8000abcd, 0x3000) },
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1000)
			h.InsnLenCR8 = 1
			m.IOPort().AccessInfo = 3 // size 3
		},
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1000)
			h.InsnLenCR8 = 1
			m.IOPort().AccessInfo = 1 | mshvabi.IOAccessRep
		},
	}
	e, err := v.Run(&l)
	if err != nil || e.Reason != accel.ExitHalt || e.RIP != 0x1003 {
		t.Fatalf("first exit %+v %v, want halt at 0x1003", e, err)
	}
	if strings.Join(l, ";") != "out 0x3f8 41;in 0x60 2" {
		t.Errorf("accesses %q", l)
	}
	if rip, rax := f.regs[mshvabi.RegRIP].Low, f.regs[mshvabi.RegRAX].Low; rip != 0x1003 || rax != 0xffff_ffff_ffff_0042 {
		t.Errorf("after port I/O: rip %#x rax %#x, want 0x1003 and 0xffffffffffff0042 (16-bit IN keeps the upper bits)", rip, rax)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitShutdown || e.RIP != 0x2000 {
		t.Errorf("unrecoverable exception: %+v %v", e, err)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitIOAPICEOI || e.Vector != 0x31 {
		t.Errorf("APIC EOI: %+v %v", e, err)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitUnknown || !strings.Contains(e.Detail, "0x8000abcd") || e.RIP != 0x3000 {
		t.Errorf("unknown message: %+v %v", e, err)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitInternalError || !strings.Contains(e.Detail, "access size 3") {
		t.Errorf("bad access size: %+v %v", e, err)
	}
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitInternalError || !strings.Contains(e.Detail, "REP without a string") {
		t.Errorf("REP without string: %+v %v", e, err)
	}
	if _, err := v.Run(&l); err == nil || !errors.Is(err, unix.EIO) {
		t.Errorf("RUN_VP error: %v", err)
	}
	v.Kick()
	if e, err := v.Run(&l); err != nil || e.Reason != accel.ExitInterrupted {
		t.Errorf("kicked before Run: %+v %v", e, err)
	}
}

// TestFakeMMIO emulates a 64-bit MMIO store from an unmapped-GPA message
// (no register page: registers through hypercalls).
func TestFakeMMIO(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	f.regs[mshvabi.RegRAX] = mshvabi.RegisterValue{Low: 0xfeb00010}
	f.regs[mshvabi.RegRBX] = mshvabi.RegisterValue{Low: 0x11223344}
	f.regs[mshvabi.RegCR0] = mshvabi.RegisterValue{Low: 0x80000011}
	f.regs[mshvabi.RegCR4] = mshvabi.RegisterValue{Low: 0x20}
	f.regs[mshvabi.RegEFER] = mshvabi.RegisterValue{Low: 0x500}
	f.msgs = []func(*mshvabi.Message){
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgUnmappedGPA, 0x400000)
			h.InterceptAccessType = mshvabi.AccessWrite
			h.CS = mshvabi.SegmentRegister{Selector: 8, Attributes: 0xa09b}
			h.RFLAGS = 2
			mm := m.Memory()
			mm.GVA, mm.GPA, mm.MemoryAccessInfo = 0xfeb00010, 0xfeb00010, mshvabi.MemAccessGVAValid|mshvabi.MemAccessGVAGPAValid
			mm.InstructionByteCount = 2
			copy(mm.InstructionBytes[:], []byte{0x89, 0x18}) // mov [rax], ebx
		},
		func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x400002) },
	}
	var l log
	e, err := v.Run(&l)
	if err != nil || e.Reason != accel.ExitHalt {
		t.Fatalf("exit %+v %v", e, err)
	}
	if strings.Join(l, ";") != "mmio-write 0xfeb00010 44 33 22 11" {
		t.Errorf("accesses %q", l)
	}
	if rip := f.regs[mshvabi.RegRIP].Low; rip != 0x400002 {
		t.Errorf("rip %#x after the emulated store, want 0x400002", rip)
	}
}

func TestFakeRefusals(t *testing.T) {
	f := newFake()
	vm, _ := f.machine(t)
	err := vm.AssignIOEventFD(accel.IOEventFD{FD: 5, Addr: 0x510, Len: 2, PIO: true})
	if !errors.Is(err, accel.ErrNotSupported) || !strings.Contains(err.Error(), "no port-I/O ioeventfd") {
		t.Errorf("PIO ioeventfd: %v", err)
	}
	if err := vm.AssignIOEventFD(accel.IOEventFD{FD: 5, Addr: 0xfeb00000, Len: 3}); err == nil {
		t.Errorf("ioeventfd of length 3 accepted")
	}
	if err := vm.SetGSIRouting([]accel.Route{{GSI: 1, Kind: accel.RouteIrqchip}}); !errors.Is(err, accel.ErrNotSupported) {
		t.Errorf("irqchip route: %v", err)
	}
	host := pageAligned(8192)
	if err := vm.MapMemory(accel.MemoryRegion{GPA: 0x100000, Host: host}); err != nil {
		t.Fatal(err)
	}
	if err := vm.MapMemory(accel.MemoryRegion{GPA: 0x200000, Host: host[4096:]}); err == nil || !strings.Contains(err.Error(), "alias") {
		t.Errorf("alias: %v", err)
	}
	other := pageAligned(4096)
	if err := vm.MapMemory(accel.MemoryRegion{GPA: 0x101000, Host: other}); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlap: %v", err)
	}
	if err := vm.UnmapMemory(0x300000); err == nil {
		t.Errorf("unmapping nothing succeeded")
	}
	if err := vm.UnmapMemory(0x100000); err != nil {
		t.Errorf("unmap: %v", err)
	}
	if _, err := vm.DirtyLog(0x100000); err == nil {
		t.Errorf("dirty log without tracking succeeded")
	}
}

// TestFakeMMIOFault: an emulated access beyond the DS limit in real mode
// raises #GP, which the backend injects (RIP stays at the instruction).
func TestFakeMMIOFault(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	f.regs[mshvabi.RegCR0] = mshvabi.RegisterValue{Low: 0x10}
	data := segValue(mshvabi.SegmentRegister{Base: 0xd0000, Limit: 0xffff, Selector: 0xd000, Attributes: 0x93})
	for _, n := range []uint32{mshvabi.RegDS, mshvabi.RegES, mshvabi.RegSS, mshvabi.RegFS, mshvabi.RegGS} {
		f.regs[n] = data
	}
	f.msgs = []func(*mshvabi.Message){
		func(m *mshvabi.Message) {
			h := header(m, mshvabi.MsgUnmappedGPA, 0x1000)
			h.InterceptAccessType = mshvabi.AccessWrite
			h.CS = mshvabi.SegmentRegister{Limit: 0xffff, Attributes: 0x9b}
			h.RFLAGS = 2
			mm := m.Memory()
			mm.GPA = 0xdffff
			mm.InstructionByteCount = 3
			copy(mm.InstructionBytes[:], []byte{0xA3, 0xFF, 0xFF}) // mov [0xffff], ax
		},
		func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x1000) },
	}
	var l log
	e, err := v.Run(&l)
	if err != nil || e.Reason != accel.ExitHalt {
		t.Fatalf("exit %+v %v", e, err)
	}
	if len(l) != 0 {
		t.Errorf("accesses %q for a faulting instruction", l)
	}
	pi := f.regs[mshvabi.RegPendingInterruption].Low
	if pi&1 == 0 || pi>>1&7 != mshvabi.PendingTypeException || uint8(pi>>16) != 13 {
		t.Errorf("pending interruption %#x, want #GP", pi)
	}
	if _, ok := f.regs[mshvabi.RegRIP]; ok {
		t.Errorf("RIP written (%#x) for a faulting instruction", f.regs[mshvabi.RegRIP].Low)
	}
}

// TestFakeLevelMSIResampleInUserspace: a resample irqfd on a
// level-triggered MSI route reaches the kernel as a plain irqfd (no
// RESAMPLE flag), and the backend signals the resample eventfd itself when
// a vCPU reports the EOI of the route's vector. Upstream's resampler
// cannot be used: mshv_intercept_isr (drivers/hv/mshv_synic.c) passes the
// EOI'd vector to mshv_notify_acked_gsi (drivers/hv/mshv_eventfd.c), which
// compares it with the irqfd's GSI.
func TestFakeLevelMSIResampleInUserspace(t *testing.T) {
	f := newFake()
	vm, v := f.machine(t)
	if err := vm.SetGSIRouting([]accel.Route{
		{GSI: 24, Kind: accel.RouteMSI, MSI: accel.MSI{AddressLo: 0xfee00000, Data: 0x51}},   // edge
		{GSI: 40, Kind: accel.RouteMSI, MSI: accel.MSI{AddressLo: 0xfee00000, Data: 0xc052}}, // level, vector 0x52
	}); err != nil {
		t.Fatal(err)
	}
	trig, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(trig)
	res, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(res)
	if err := vm.AssignIRQFD(accel.IRQFD{FD: trig, GSI: 24, ResampleFD: res}); err == nil || !strings.Contains(err.Error(), "level-triggered") {
		t.Fatalf("resample irqfd on an edge route: %v", err)
	}
	if err := vm.AssignIRQFD(accel.IRQFD{FD: trig, GSI: 40, ResampleFD: res}); err != nil {
		t.Fatal(err)
	}
	if n := len(f.irqfdArgs); n != 1 || f.irqfdArgs[0].Flags != 0 || f.irqfdArgs[0].GSI != 40 {
		t.Fatalf("MSHV_IRQFD calls %+v, want one plain irqfd on GSI 40 (no RESAMPLE)", f.irqfdArgs)
	}
	eoi := func(vec uint32) func(*mshvabi.Message) {
		return func(m *mshvabi.Message) {
			m.Header.MessageType = mshvabi.MsgX64APICEOI
			m.APICEOI().InterruptVector = vec
		}
	}
	count := func() uint64 {
		var b [8]byte
		if n, _ := unix.Read(res, b[:]); n != 8 {
			return 0
		}
		return binary.LittleEndian.Uint64(b[:])
	}
	for _, c := range []struct {
		vec  uint32
		want uint64
	}{{40, 0}, {0x51, 0}, {0x52, 1}} {
		f.msgs = []func(*mshvabi.Message){eoi(c.vec)}
		e, err := v.Run(&log{})
		if err != nil || e.Reason != accel.ExitIOAPICEOI || e.Vector != uint8(c.vec) {
			t.Fatalf("EOI of %#x: exit %+v %v, want it passed on to the IOAPIC", c.vec, e, err)
		}
		if n := count(); n != c.want {
			t.Errorf("EOI of vector %#x: %d resamples, want %d", c.vec, n, c.want)
		}
	}
	if err := vm.DeassignIRQFD(accel.IRQFD{FD: trig, GSI: 40, ResampleFD: res}); err != nil {
		t.Fatal(err)
	}
	f.msgs = []func(*mshvabi.Message){eoi(0x52)}
	if _, err := v.Run(&log{}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Errorf("resampled after the deassign (%d)", n)
	}
}

// TestFakeUnroutableMSILeftOut: upstream mshv_update_routing_table
// (drivers/hv/mshv_irq.c) refuses a whole table for one entry with a
// nonzero address_hi or a GSI given twice, so the backend leaves such a
// route out (the others still reach the kernel) and logs it naming the GSI
// and address; an irqfd on an address_hi route's GSI is refused.
func TestFakeUnroutableMSILeftOut(t *testing.T) {
	var logged bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	f := newFake()
	vm, _ := f.machine(t)
	good := accel.Route{GSI: 24, Kind: accel.RouteMSI, MSI: accel.MSI{AddressLo: 0xfee00000, Data: 0x51}}
	high := accel.Route{GSI: 25, Kind: accel.RouteMSI, MSI: accel.MSI{AddressLo: 0xfee01000, AddressHi: 0x1, Data: 0x52}}
	if err := vm.SetGSIRouting([]accel.Route{good, high}); err != nil {
		t.Fatal(err)
	}
	last := f.routeTables[len(f.routeTables)-1]
	if len(last) != 1 || last[0].GSI != 24 || last[0].Data != 0x51 {
		t.Fatalf("table sent to the kernel %+v, want GSI 24 alone", last)
	}
	if !strings.Contains(logged.String(), "gsi=25") || !strings.Contains(logged.String(), "0x1_fee01000") {
		t.Errorf("log %q does not name GSI 25 and address 0x1_fee01000", logged.String())
	}
	if u := vm.Unroutable(); len(u) != 1 || u[25] != high.MSI {
		t.Errorf("Unroutable %v", u)
	}
	// Logged once, not at every commit.
	logged.Reset()
	if err := vm.SetGSIRouting([]accel.Route{good, high}); err != nil || logged.Len() != 0 {
		t.Errorf("second commit of the same table: %v, log %q", err, logged.String())
	}
	err := vm.AssignIRQFD(accel.IRQFD{FD: 7, GSI: 25, ResampleFD: -1})
	if err == nil || !strings.Contains(err.Error(), "GSI 25") || !strings.Contains(err.Error(), "0x1_fee01000") {
		t.Errorf("irqfd on the unroutable GSI: %v", err)
	}
	logged.Reset()
	other := good
	other.MSI.Data = 0x61
	if err := vm.SetGSIRouting([]accel.Route{good, other}); err != nil {
		t.Fatalf("duplicate GSI: %v", err)
	}
	if last := f.routeTables[len(f.routeTables)-1]; len(last) != 1 || last[0].Data != 0x51 || !strings.Contains(logged.String(), "routed twice") {
		t.Errorf("duplicate GSI 24: table %+v (want its first route alone), log %q", last, logged.String())
	}
	// The guest fixes the address: the route is in the table again.
	fixed := high
	fixed.MSI.AddressHi = 0
	if err := vm.SetGSIRouting([]accel.Route{good, fixed}); err != nil || len(f.routeTables[len(f.routeTables)-1]) != 2 || len(vm.Unroutable()) != 0 {
		t.Errorf("fixed route: %v %+v", err, f.routeTables[len(f.routeTables)-1])
	}
}

// pageAligned returns size bytes of Go memory that start on a page, as
// MSHV_SET_GUEST_MEMORY wants its userspace address.
func pageAligned(size int) []byte {
	mem := make([]byte, size+4096)
	return mem[(4096-mshvabi.Addr(mem)%4096)%4096:][:size]
}

// TestFakeStringPIOWithoutBytes: a port-I/O intercept may carry no
// instruction bytes. A string instruction's segment override and address
// size are then read from guest memory (TRANSLATE_VIRTUAL_ADDRESS), never
// assumed: fs: outsb sends the byte at FS:SI, not DS:SI. When the bytes
// cannot be read the exit is a clear fatal error.
func TestFakeStringPIOWithoutBytes(t *testing.T) {
	for _, fail := range []bool{false, true} {
		f := newFake()
		vm, v := f.machine(t)
		host := pageAligned(0x4000)
		if err := vm.MapMemory(accel.MemoryRegion{GPA: 0, Host: host}); err != nil {
			t.Fatal(err)
		}
		copy(host[0x1000:], []byte{0x64, 0x6E}) // fs outsb
		host[0x2010], host[0x3010] = 'D', 'F'
		f.regs[mshvabi.RegCR0] = mshvabi.RegisterValue{Low: 0x10}
		f.regs[mshvabi.RegRDX] = mshvabi.RegisterValue{Low: 0x3f8}
		seg := func(base uint64) mshvabi.SegmentRegister {
			return mshvabi.SegmentRegister{Base: base, Limit: 0xffff, Selector: uint16(base >> 4), Attributes: 0x93}
		}
		for n, b := range map[uint32]uint64{mshvabi.RegDS: 0x2000, mshvabi.RegES: 0x2000, mshvabi.RegSS: 0, mshvabi.RegFS: 0x3000, mshvabi.RegGS: 0} {
			f.regs[n] = segValue(seg(b))
		}
		if fail {
			f.translate = mshvabi.TranslatePageNotPresent
		}
		f.msgs = []func(*mshvabi.Message){
			func(m *mshvabi.Message) {
				h := header(m, mshvabi.MsgX64IOPortIntercept, 0x1000)
				h.InterceptAccessType = mshvabi.AccessWrite
				h.InsnLenCR8 = 2
				h.CS = mshvabi.SegmentRegister{Limit: 0xffff, Attributes: 0x9b}
				h.RFLAGS = 2
				io := m.IOPort()
				io.PortNumber = 0x3f8
				io.AccessInfo = 1 | mshvabi.IOAccessString
				io.RSI = 0x10
				io.DS, io.ES = seg(0x2000), seg(0x2000)
			},
			func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0x1002) },
		}
		var l log
		e, err := v.Run(&l)
		if err != nil {
			t.Fatal(err)
		}
		if fail {
			if e.Reason != accel.ExitInternalError || !strings.Contains(e.Detail, "no instruction bytes") || len(l) != 0 {
				t.Errorf("untranslatable instruction: exit %+v, accesses %q", e, l)
			}
			continue
		}
		if e.Reason != accel.ExitHalt || f.translated == 0 {
			t.Fatalf("exit %+v after %d translations", e, f.translated)
		}
		if got := strings.Join(l, ";"); got != "out 0x3f8 46" {
			t.Errorf("accesses %q, want the byte at FS:SI ('F', 0x46)", got)
		}
		if rsi := f.regs[mshvabi.RegRSI].Low; rsi != 0x11 {
			t.Errorf("RSI %#x after outsb, want 0x11", rsi)
		}
	}
}

// TestFakePendingEventType: PENDING_EVENT0's event_type (bits 1-3 of
// hv_x64_pending_exception_event, include/hyperv/hvgdk_mini.h) is 0 for
// an exception (HV_X64_PENDING_EVENT_EXCEPTION in enum
// hv_x64_pending_event_type); an external-interrupt event (5) is not an
// exception, and saving it as one would lose it: Events refuses it by name.
// SetEvents writes exceptions as type 0.
func TestFakePendingEventType(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	f.regs[mshvabi.RegPendingEvent0] = mshvabi.RegisterValue{Low: 1 | 14<<16 | 1<<8 | 2<<32, High: 0xdead000}
	e, err := v.Events()
	if err != nil || !e.Exception.Pending || e.Exception.Nr != 14 || e.Exception.ErrorCode != 2 || e.Exception.Payload != 0xdead000 {
		t.Fatalf("pending #PF (type 0): %+v %v", e.Exception, err)
	}
	f.regs[mshvabi.RegPendingEvent0] = mshvabi.RegisterValue{Low: 1 | 5<<1 | 0x30<<16}
	if _, err := v.Events(); err == nil || !strings.Contains(err.Error(), "type 5 (external interrupt)") {
		t.Errorf("external-interrupt event: %v, want a refusal naming type 5", err)
	}
	e = accel.Events{}
	e.Exception.Pending, e.Exception.Nr = true, 13
	if err := v.SetEvents(&e); err != nil {
		t.Fatal(err)
	}
	if lo := f.regs[mshvabi.RegPendingEvent0].Low; lo&1 == 0 || lo>>1&7 != 0 || uint8(lo>>16) != 13 {
		t.Errorf("SetEvents wrote PENDING_EVENT0 %#x, want pending, type 0, vector 13", lo)
	}
}
