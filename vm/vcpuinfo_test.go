package vm

import (
	"encoding/binary"
	"errors"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"

	"govmm/accel"
	"govmm/api"
)

// lapicPage builds a register page from offset/value pairs.
func lapicPage(regs map[int]uint32) accel.LAPIC {
	var l accel.LAPIC
	for off, v := range regs {
		binary.LittleEndian.PutUint32(l.Regs[off:], v)
	}
	return l
}

// TestDecodeLAPIC reads each register at its SDM offset: the ID per
// APIC mode, TPR, PPR derived from TPR and the highest in-service vector,
// the vectors of ISR, TMR and IRR (bit n of word w is vector 32w+n), the
// timer LVT's fields, the counts and the divisor.
func TestDecodeLAPIC(t *testing.T) {
	l := lapicPage(map[int]uint32{
		lapicID:          3 << 24,
		lapicTPR:         0x20,
		lapicSVR:         0x1ff,
		lapicISR + 0x10:  1 << 16,              // vector 0x30
		lapicTMR + 0x70:  1 << 31,              // vector 0xff
		lapicIRR + 0x10:  1<<0 | 1<<16,         // 0x20, 0x30
		lapicIRR + 0x70:  1 << 12,              // 0xec
		lapicTimer:       1<<17 | 1<<16 | 0xec, // periodic, masked
		lapicTMICT:       1000000,
		lapicTMCCT:       123456,
		lapicTDCR:        3,          // divide by 16
		lapicIRR + 0x100: 0xffffffff, // past IRR: not a register
	})
	got := DecodeLAPIC(&l, 0xfee00000|apicBaseEN|apicBaseBSP)
	want := api.LAPIC{
		Mode: "xapic", BSP: true, APICBase: 0xfee00000 | apicBaseEN | apicBaseBSP,
		SoftwareEnabled: true, SpuriousVector: 0xff, ID: 3, TPR: 0x20, PPR: 0x30,
		ISR: []int{0x30}, TMR: []int{0xff}, IRR: []int{0x20, 0x30, 0xec},
		Timer:        api.LAPICLVT{Raw: 1<<17 | 1<<16 | 0xec, Vector: 0xec, Mode: "periodic", Masked: true},
		InitialCount: 1000000, CurrentCount: 123456, Divide: 16,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("xAPIC page:\n got %+v\nwant %+v", got, want)
	}

	// x2APIC: the ID register is the whole 32-bit ID; TPR above the
	// in-service class is the PPR; TSC-deadline mode, unmasked, with a
	// delivery pending; TDCR 0xb (bits 0, 1, 3 set) divides by 1.
	l = lapicPage(map[int]uint32{
		lapicID: 0x105, lapicTPR: 0x51, lapicISR + 0x10: 1 << 16,
		lapicTimer: 2<<17 | 1<<12 | 0xef, lapicTDCR: 0xb,
	})
	got = DecodeLAPIC(&l, 0xfee00000|apicBaseEN|apicBaseEXTD)
	if got.Mode != "x2apic" || got.BSP || got.ID != 0x105 || got.TPR != 0x51 || got.PPR != 0x51 || got.SoftwareEnabled ||
		got.Timer != (api.LAPICLVT{Raw: 2<<17 | 1<<12 | 0xef, Vector: 0xef, Mode: "tsc-deadline", Pending: true}) || got.Divide != 1 {
		t.Fatalf("x2APIC page: %+v", got)
	}
	if got := DecodeLAPIC(&accel.LAPIC{}, 0xfee00000); got.Mode != "disabled" || got.Divide != 2 ||
		len(got.ISR)+len(got.IRR)+len(got.TMR) != 0 || got.ISR == nil || got.Timer.Mode != "one-shot" {
		t.Fatalf("empty page, APIC globally disabled: %+v", got)
	}
	// Every divide configuration.
	for tdcr, div := range map[uint32]int{0: 2, 1: 4, 2: 8, 3: 16, 8: 32, 9: 64, 0xa: 128, 0xb: 1} {
		l := lapicPage(map[int]uint32{lapicTDCR: tdcr})
		if got := DecodeLAPIC(&l, apicBaseEN).Divide; got != div {
			t.Errorf("TDCR %#x: divide by %d, want %d", tdcr, got, div)
		}
	}
}

func TestDecodeRFLAGS(t *testing.T) {
	got := DecodeRFLAGS(0x3246) // IOPL 3, IF, ZF, PF, reserved bit 1
	if !reflect.DeepEqual(got, api.RFLAGS{Value: 0x3246, Set: []string{"PF", "ZF", "IF"}, IF: true, IOPL: 3}) {
		t.Errorf("0x3246: %+v", got)
	}
	got = DecodeRFLAGS(1<<21 | 1<<17 | 1<<11 | 2 | 1)
	if !reflect.DeepEqual(got, api.RFLAGS{Value: 1<<21 | 1<<17 | 1<<11 | 2 | 1, Set: []string{"CF", "OF", "VM", "ID"}}) {
		t.Errorf("IF clear: %+v", got)
	}
}

func TestCPUMode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		s      accel.Sregs
		rflags uint64
		mode   string
		bits   int
		vm86   bool
		cpl    int
	}{
		{"real", accel.Sregs{SS: accel.Segment{DPL: 3}}, 2, "real", 16, false, 0},
		{"protected 32-bit CPL0", accel.Sregs{CR0: cr0PE, CS: accel.Segment{DB: true}}, 2, "protected", 32, false, 0},
		{"protected 16-bit", accel.Sregs{CR0: cr0PE}, 2, "protected", 16, false, 0},
		{"vm86", accel.Sregs{CR0: cr0PE, CS: accel.Segment{DB: true}}, rflagsVM | 2, "protected", 16, true, 3},
		{"long 64-bit CPL3", accel.Sregs{CR0: cr0PE | cr0PG, EFER: efeLMA, CS: accel.Segment{L: true, DPL: 3}, SS: accel.Segment{DPL: 3}}, 2, "long", 64, false, 3},
		{"long compat 32-bit", accel.Sregs{CR0: cr0PE | cr0PG, EFER: efeLMA, CS: accel.Segment{DB: true, DPL: 3}, SS: accel.Segment{DPL: 3}}, 2, "long", 32, false, 3},
		// A conforming code segment of DPL 0 run at CPL 3: SS says the CPL.
		{"conforming", accel.Sregs{CR0: cr0PE | cr0PG, EFER: efeLMA, CS: accel.Segment{L: true}, SS: accel.Segment{DPL: 3}}, 2, "long", 64, false, 3},
	} {
		mode, bits, vm86, cpl := cpuMode(&tc.s, tc.rflags)
		if mode != tc.mode || bits != tc.bits || vm86 != tc.vm86 || cpl != tc.cpl {
			t.Errorf("%s: %s %d-bit vm86=%v CPL %d, want %s %d-bit vm86=%v CPL %d", tc.name, mode, bits, vm86, cpl, tc.mode, tc.bits, tc.vm86, tc.cpl)
		}
	}
}

func TestDecodeEvents(t *testing.T) {
	var e accel.Events
	if got := decodeEvents(&e); !reflect.DeepEqual(got, api.Events{}) {
		t.Errorf("no events: %+v", got)
	}
	e.Exception.Pending, e.Exception.Nr, e.Exception.HasErrorCode, e.Exception.ErrorCode = true, 13, true, 0x18
	e.Interrupt.Injected, e.Interrupt.Nr, e.Interrupt.Shadow = true, 0x30, 1
	e.NMI.Pending, e.NMI.Masked = true, true
	got := decodeEvents(&e)
	code := uint32(0x18)
	want := api.Events{
		Exception: &api.Exception{Vector: 13, Name: "#GP", State: "pending", ErrorCode: &code},
		Interrupt: &api.Interrupt{Vector: 0x30}, NMI: "pending", NMIMasked: true, Shadow: "sti",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events:\n got %+v\nwant %+v", got, want)
	}
	// A vector left in a field with nothing pending or injected is no event.
	e = accel.Events{}
	e.Exception.Nr, e.Interrupt.Nr, e.Interrupt.Shadow = 14, 0x20, 3
	if got := decodeEvents(&e); got.Exception != nil || got.Interrupt != nil || got.Shadow != "sti/mov-ss" {
		t.Errorf("stale vectors: %+v", got)
	}
	for v, name := range map[uint8]string{0: "#DE", 8: "#DF", 14: "#PF", 15: "vector 15", 21: "#CP", 0xff: "vector 255"} {
		if got := ExceptionName(v); got != name {
			t.Errorf("exception %d: %q, want %q", v, got, name)
		}
	}
}

// lookVCPUFake is a vCPU with fixed state that parks like a real one
// (Kick does nothing: the test's run loops park on their own).
type lookVCPUFake struct {
	accel.VCPU
	index    int
	failWith error
	mu       sync.Mutex
	calls    int
}

func (f *lookVCPUFake) Kick()        {}
func (f *lookVCPUFake) Close() error { return nil }
func (f *lookVCPUFake) Regs() (accel.Regs, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	return accel.Regs{RIP: 0x200000 + uint64(f.index), RSP: 0x9000, RFLAGS: 0x202, RAX: 7}, nil
}
func (f *lookVCPUFake) Sregs() (accel.Sregs, error) {
	return accel.Sregs{CR0: cr0PE, CS: accel.Segment{DB: true, Selector: 0x10}, APICBase: 0xfee00000 | apicBaseEN}, nil
}
func (f *lookVCPUFake) LAPIC() (accel.LAPIC, error) {
	if f.failWith != nil {
		return accel.LAPIC{}, f.failWith
	}
	return lapicPage(map[int]uint32{lapicID: uint32(f.index) << 24, lapicIRR + 0x10: 1}), nil
}
func (f *lookVCPUFake) Events() (accel.Events, error)   { return accel.Events{}, nil }
func (f *lookVCPUFake) MPState() (accel.MPState, error) { return accel.MPState(f.index * 3), nil }
func (f *lookVCPUFake) MSRs(idx []uint32) ([]accel.MSR, error) {
	if idx[0] == msrTSC {
		return []accel.MSR{{Index: msrTSC, Value: 5000}}, nil
	}
	return nil, accel.ErrNotSupported // as MSHV for the TSC deadline
}

// fakeRunning gives the fake machine's vCPUs run loops that park when
// asked, as vCPU threads do between guest entries.
func fakeRunning(t *testing.T, v *VM, vcpus ...*lookVCPUFake) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range vcpus {
		v.vcpus = append(v.vcpus, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				v.maybePark(i, c)
				runtime.Gosched()
			}
		}()
	}
	t.Cleanup(func() { close(done); v.Resume(); wg.Wait() })
}

// TestInspectVCPUs: a running VM is paused for the capture and runs
// again afterwards, also when the capture fails; a paused VM stays paused.
func TestInspectVCPUs(t *testing.T) {
	v := fakeMachine(t)
	a, b := &lookVCPUFake{index: 0}, &lookVCPUFake{index: 1}
	fakeRunning(t, v, a, b)
	code := []byte{0xeb, 0xfe, 0x90} // jmp $; nop
	if err := v.mem.Write(0x200000, code); err != nil {
		t.Fatal(err)
	}
	res, err := v.InspectVCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if v.Paused() || res.WasPaused || res.PauseMS <= 0 || len(res.VCPUs) != 2 {
		t.Fatalf("running VM: paused after %v, result %+v", v.Paused(), res)
	}
	c0, c1 := res.VCPUs[0], res.VCPUs[1]
	if c0.Index != 0 || c0.RIP != 0x200000 || c0.CS != 0x10 || c0.Mode != "protected" || c0.CodeBits != 32 || c0.MPState != "runnable" ||
		!c0.RFLAGS.IF || c0.GPRs["rax"] != 7 || !strings.HasPrefix(c0.Code, "ebfe90") || len(c0.Code) != 30 ||
		c0.LAPIC.Mode != "xapic" || c0.LAPIC.ID != 0 || !reflect.DeepEqual(c0.LAPIC.IRR, []int{0x20}) ||
		c0.LAPIC.TSC == nil || *c0.LAPIC.TSC != 5000 || c0.LAPIC.TSCDeadline != nil {
		t.Errorf("vCPU 0: %+v", c0)
	}
	if c1.Index != 1 || c1.RIP != 0x200001 || c1.LAPIC.ID != 1 || c1.MPState != "halted" {
		t.Errorf("vCPU 1: %+v", c1)
	}

	// Paused before: stays paused, no pause time.
	if err := v.Pause(); err != nil {
		t.Fatal(err)
	}
	res, err = v.InspectVCPUs()
	if err != nil || !res.WasPaused || res.PauseMS != 0 || !v.Paused() || len(res.VCPUs) != 2 {
		t.Fatalf("paused VM: %+v %v (paused after: %v)", res, err, v.Paused())
	}
	if err := v.Resume(); err != nil {
		t.Fatal(err)
	}

	// A failing accessor: the error names the vCPU and what failed, and
	// the VM runs again.
	b.failWith = errors.New("injected failure")
	if _, err := v.InspectVCPUs(); err == nil || !strings.Contains(err.Error(), "capture vCPU 1: LAPIC: injected failure") {
		t.Fatalf("failed capture: %v", err)
	}
	if v.Paused() {
		t.Fatal("the VM stayed paused after a failed capture")
	}
	// Still usable: the next capture works.
	b.failWith = nil
	if _, err := v.InspectVCPUs(); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeVCPU: any register values and LAPIC page decode without
// panicking, and what is decoded stays within its fields' ranges.
func FuzzDecodeVCPU(f *testing.F) {
	f.Add(make([]byte, 1024), uint64(0x202), uint64(0x80000011), uint64(0x500), uint64(0xfee00900), uint8(13), uint8(1), uint8(3))
	f.Fuzz(func(t *testing.T, page []byte, rflags, cr0, efer, apicBase uint64, exc, flags, shadow uint8) {
		var l vcpuLook
		copy(l.state.LAPIC.Regs[:], page)
		l.state.Regs.RFLAGS = rflags
		l.state.Sregs = accel.Sregs{CR0: cr0, EFER: efer, APICBase: apicBase, CS: accel.Segment{L: flags&1 != 0, DB: flags&2 != 0}, SS: accel.Segment{DPL: flags >> 2}}
		l.state.Events.Exception.Pending, l.state.Events.Exception.Nr = flags&8 != 0, exc
		l.state.Events.Interrupt.Shadow = shadow
		l.state.MPState = accel.MPState(int(flags) - 100)
		l.code = page[:min(len(page), 15)]
		c := decodeVCPU(0, &l)
		if c.CPL < 0 || c.CPL > 3 || c.LAPIC.Divide < 1 || c.LAPIC.Divide > 128 || len(c.LAPIC.IRR) > 256 || c.RFLAGS.IOPL > 3 {
			t.Fatalf("out of range: %+v", c)
		}
		if c.Mode != "real" && c.Mode != "protected" && c.Mode != "long" {
			t.Fatalf("mode %q", c.Mode)
		}
	})
}
