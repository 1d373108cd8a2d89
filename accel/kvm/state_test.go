package kvm

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/cpu"
)

// TestStateRoundTrip sets each class of vCPU state and reads it back.
func TestStateRoundTrip(t *testing.T) {
	tv := newTestVM(t, 1, 1<<16)
	v, err := tv.vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	sup, err := tv.acc.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCPUID(cpu.ForVCPU(sup, 0, 1)); err != nil {
		t.Fatal(err)
	}

	if khz, err := v.TSCKHz(); err != nil || khz == 0 {
		t.Errorf("TSC frequency %d kHz, %v", khz, err)
	}
	t.Run("regs", func(t *testing.T) {
		r := accel.Regs{RAX: 1, RBX: 2, RCX: 3, RDX: 4, RSI: 5, RDI: 6, RSP: 7, RBP: 8, R8: 9, R9: 10,
			R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 16, RIP: 0x1234, RFLAGS: 0x202}
		if err := v.SetRegs(&r); err != nil {
			t.Fatal(err)
		}
		got, err := v.Regs()
		if err != nil {
			t.Fatal(err)
		}
		if got != r {
			t.Errorf("got %+v, want %+v", got, r)
		}
	})
	t.Run("sregs", func(t *testing.T) {
		s, err := v.Sregs()
		if err != nil {
			t.Fatal(err)
		}
		s.DS.Base, s.DS.Selector = 0x1230, 0x123
		s.GDT = accel.DTable{Base: 0x500, Limit: 0x27}
		s.IDT = accel.DTable{Base: 0x600, Limit: 0x3ff}
		s.CR2 = 0xdead000
		if err := v.SetSregs(&s); err != nil {
			t.Fatal(err)
		}
		got, err := v.Sregs()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("got %+v\nwant %+v", got, s)
		}
	})
	t.Run("fpu", func(t *testing.T) {
		f, err := v.FPU()
		if err != nil {
			t.Fatal(err)
		}
		f.FCW, f.FSW, f.MXCSR = 0x27f, 0x0100, 0x1fa0
		f.FTW = 0x80
		f.ST[7] = [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
		for i := range f.XMM {
			f.XMM[i][0], f.XMM[i][15] = byte(i), byte(0xf0+i)
		}
		if err := v.SetFPU(&f); err != nil {
			t.Fatal(err)
		}
		got, err := v.FPU()
		if err != nil {
			t.Fatal(err)
		}
		if got.MXCSRMask == 0 {
			t.Error("MXCSR mask not reported")
		}
		if !reflect.DeepEqual(got, f) {
			t.Errorf("got %+v\nwant %+v", got, f)
		}
	})
	t.Run("xsave", func(t *testing.T) {
		x, err := v.XSave()
		if err != nil {
			t.Fatal(err)
		}
		if len(x.Data) != tv.vm.XSaveSize() || len(x.Data) < 4096 {
			t.Fatalf("XSAVE area %d bytes, VM says %d", len(x.Data), tv.vm.XSaveSize())
		}
		copy(x.Data[160:], "xmm0 round trip") // XMM0 in the legacy area
		x.Data[512] |= 2                      // XSTATE_BV: SSE state in use
		if err := v.SetXSave(&x); err != nil {
			t.Fatal(err)
		}
		got, err := v.XSave()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Data, x.Data) {
			t.Errorf("XSAVE area differs after round trip")
		}
		if err := v.SetXSave(&accel.XSave{Data: make([]byte, 100)}); err == nil {
			t.Error("short XSAVE area accepted")
		}
	})
	t.Run("xcrs", func(t *testing.T) {
		want := []accel.XCR{{Index: 0, Value: 3}} // x87 + SSE
		if err := v.SetXCRs(want); err != nil {
			t.Fatal(err)
		}
		got, err := v.XCRs()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < 1 || got[0] != want[0] {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
	t.Run("msrs", func(t *testing.T) {
		list, err := v.MSRIndexList()
		if err != nil {
			t.Fatal(err)
		}
		has := map[uint32]bool{}
		for _, i := range list {
			has[i] = true
		}
		if !has[0x174] || !has[0xc0000082] {
			t.Fatalf("MSR index list (%d) lacks SYSENTER_CS or LSTAR", len(list))
		}
		want := []accel.MSR{{Index: 0x174, Value: 0x10}, {Index: 0x175, Value: 0x8000}, {Index: 0x176, Value: 0x9000},
			{Index: 0xc0000081, Value: 0x0023001000000000}, {Index: 0xc0000082, Value: 0xffffffff81000000}}
		if err := v.SetMSRs(want); err != nil {
			t.Fatal(err)
		}
		idx := make([]uint32, len(want))
		for i, m := range want {
			idx[i] = m.Index
		}
		got, err := v.MSRs(idx)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if _, err := v.MSRs([]uint32{0x174, 0xdeadbeef}); err == nil || !strings.Contains(err.Error(), "0xdeadbeef") {
			t.Errorf("reading a bogus MSR: %v, want an error naming it", err)
		}
	})
	t.Run("lapic", func(t *testing.T) {
		l, err := v.LAPIC()
		if err != nil {
			t.Fatal(err)
		}
		if l.Regs[0x351]&0x7 != 0x7 || l.Regs[0xf1]&1 != 1 {
			t.Errorf("BSP LAPIC not initialised like a BIOS: LVT0 %x SVR %x", l.Regs[0x350:0x354], l.Regs[0xf0:0xf4])
		}
		l.Regs[0x80] = 0x20                       // TPR
		l.Regs[0x380] = 0                         // initial count: timer stopped
		l.Regs[0x320], l.Regs[0x322] = 0x31, 0x01 // LVT timer: vector 0x31, masked
		if err := v.SetLAPIC(&l); err != nil {
			t.Fatal(err)
		}
		got, err := v.LAPIC()
		if err != nil {
			t.Fatal(err)
		}
		if got != l {
			for off := 0; off < 1024; off += 16 {
				if off == 0xa0 || off == 0x390 { // PPR and current count are derived
					continue
				}
				if !bytes.Equal(got.Regs[off:off+4], l.Regs[off:off+4]) {
					t.Errorf("LAPIC register %#x: got % x, want % x", off, got.Regs[off:off+4], l.Regs[off:off+4])
				}
			}
		}
	})
	t.Run("events", func(t *testing.T) {
		var e accel.Events
		e.NMI.Masked = true
		e.NMI.Pending = true
		e.Interrupt.Shadow = 1
		e.SIPIVector = 0x12
		if err := v.SetEvents(&e); err != nil {
			t.Fatal(err)
		}
		got, err := v.Events()
		if err != nil {
			t.Fatal(err)
		}
		e.SIPIVector = 0 // KVM never reports the SIPI vector
		if got.Interrupt.Shadow == 3 {
			got.Interrupt.Shadow = 1 // SVM has one shadow bit for STI and MOV SS
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("got %+v, want %+v", got, e)
		}
		e = accel.Events{}
		if err := v.SetEvents(&e); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("mpstate", func(t *testing.T) {
		for _, s := range []accel.MPState{accel.MPHalted, accel.MPRunnable} {
			if err := v.SetMPState(s); err != nil {
				t.Fatal(err)
			}
			got, err := v.MPState()
			if err != nil {
				t.Fatal(err)
			}
			if got != s {
				t.Errorf("got %v, want %v", got, s)
			}
		}
		if err := v.SetMPState(accel.MPState(42)); err == nil {
			t.Error("invalid MP state accepted")
		}
	})
	t.Run("debugregs", func(t *testing.T) {
		d := accel.DebugRegs{DR: [4]uint64{0x1000, 0x2000, 0x3000, 0x4000}, DR6: 0xffff0ff0, DR7: 0x400}
		if err := v.SetDebugRegs(&d); err != nil {
			t.Fatal(err)
		}
		got, err := v.DebugRegs()
		if err != nil {
			t.Fatal(err)
		}
		if got != d {
			t.Errorf("got %+v, want %+v", got, d)
		}
	})
}
