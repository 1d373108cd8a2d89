package mshv

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

func testLayout() *xsaveLayout {
	l := &xsaveLayout{stdSize: 4096, maxSize: 4096, states: 1<<2 | 1<<5 | 1<<6 | 1<<7 | 1<<9 | 3}
	l.comps[2] = xsaveComp{size: 256, stdOff: 576}
	l.comps[5] = xsaveComp{size: 64, stdOff: 1088}
	l.comps[6] = xsaveComp{size: 512, stdOff: 1152}
	l.comps[7] = xsaveComp{size: 1024, stdOff: 1664}
	l.comps[9] = xsaveComp{size: 8, stdOff: 2688, align64: true}
	return l
}

func TestXSaveCompactedOffsets(t *testing.T) {
	l := testLayout()
	offs, end := l.compactedOffsets(l.states)
	want := map[int]int{2: 576, 5: 832, 6: 896, 7: 1408, 9: 2432}
	for c, o := range want {
		if offs[c] != o {
			t.Errorf("component %d at %d, want %d", c, offs[c], o)
		}
	}
	if end != 2440 {
		t.Errorf("end %d, want 2440", end)
	}
	// Without component 7, component 9 still aligns to 64.
	offs, _ = l.compactedOffsets(l.states &^ (1 << 7))
	if offs[9] != 1408 {
		t.Errorf("component 9 at %d without 7, want 1408", offs[9])
	}
}

func TestXSaveRoundTrip(t *testing.T) {
	l := testLayout()
	rng := rand.New(rand.NewSource(1))
	for _, xstate := range []uint64{3, 1<<2 | 3, 1<<9 | 1<<5 | 1, l.states} {
		std := make([]byte, l.stdSize)
		rng.Read(std[:512])
		binary.LittleEndian.PutUint64(std[512:], xstate)
		for i := 2; i < 63; i++ {
			if xstate&(1<<i) != 0 {
				rng.Read(std[l.comps[i].stdOff : l.comps[i].stdOff+l.comps[i].size])
			}
		}
		c, err := l.toCompacted(std)
		if err != nil {
			t.Fatal(err)
		}
		if binary.LittleEndian.Uint64(c[520:]) != l.states|1<<63 {
			t.Errorf("XCOMP_BV %#x", binary.LittleEndian.Uint64(c[520:]))
		}
		back, err := l.toStandard(c)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, std) {
			t.Errorf("xstate %#x: standard -> compacted -> standard differs", xstate)
		}
	}
	bad := make([]byte, 4096)
	binary.LittleEndian.PutUint64(bad[512:], 1<<17)
	if _, err := l.toCompacted(bad); err == nil {
		t.Errorf("component 17 outside the partition's states accepted")
	}
	if _, err := l.toStandard(make([]byte, 100)); err == nil {
		t.Errorf("short image accepted")
	}
}

func TestLAPICConversion(t *testing.T) {
	f := newFake()
	_, v := f.machine(t)
	var l accel.LAPIC
	put := func(off int, val uint32) { binary.LittleEndian.PutUint32(l.Regs[off:], val) }
	put(0x20, 3<<24)
	put(0x80, 0x50)
	rng := rand.New(rand.NewSource(2))
	for _, off := range []int{0x30, 0xC0, 0xD0, 0xE0, 0xF0, 0x280, 0x2F0, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350,
		0x360, 0x370, 0x380, 0x390, 0x3E0} {
		put(off, rng.Uint32())
	}
	for i := 0; i < 8; i++ {
		put(0x100+0x10*i, rng.Uint32())
		put(0x180+0x10*i, rng.Uint32())
		put(0x200+0x10*i, rng.Uint32())
	}
	// Vector 2 is no interrupt; the hypervisor's state uses its IRR bit
	// for a pending NMI (TestFakeNMIPendingInLAPICState).
	put(0x200, binary.LittleEndian.Uint32(l.Regs[0x200:])&^4)
	if err := v.SetLAPIC(&l); err != nil {
		t.Fatal(err)
	}
	s, _ := mshvabi.Load[mshvabi.LocalInterruptControllerState](f.vpstate[mshvabi.VPStateLAPIC])
	// apic_id is the ID register as the page holds it (3<<24 in xAPIC
	// mode), not the ID: rust-vmm mshv-bindings x86_64/regs.rs copies
	// LOCAL_APIC_OFFSET_APIC_ID to and from apic_id unchanged, and
	// OpenVMM's virt::x86::vp sets apic_id<<24 in an xAPIC reset state.
	if s.APICID != 3<<24 || s.APICLVTLINT0 != binary.LittleEndian.Uint32(l.Regs[0x350:]) || s.APICIRR[7] != binary.LittleEndian.Uint32(l.Regs[0x270:]) {
		t.Errorf("hv state: %+v", s)
	}
	if f.regs[mshvabi.RegCR8].Low != 5 {
		t.Errorf("CR8 %d from TPR 0x50", f.regs[mshvabi.RegCR8].Low)
	}
	got, err := v.LAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if got != l {
		for off := 0; off < 1024; off += 4 {
			if a, b := binary.LittleEndian.Uint32(got.Regs[off:]), binary.LittleEndian.Uint32(l.Regs[off:]); a != b {
				t.Errorf("register %#x: got %#x, want %#x", off, a, b)
			}
		}
	}
}

func TestSegmentConversion(t *testing.T) {
	for _, s := range []accel.Segment{
		{Base: 0x1000, Limit: 0xffff, Selector: 0x10, Type: 3, Present: true, S: true, DB: true},
		{Limit: 0xffffffff, Selector: 8, Type: 0xb, Present: true, S: true, L: true, G: true, DPL: 3, AVL: true},
		{Base: 0x5000, Limit: 0x67, Selector: 0x18, Type: 0xb, Present: true},
		{Selector: 0, Unusable: true},
	} {
		if got := toSegment(segFromValue(segValue(fromSegment(s)))); got != s {
			t.Errorf("segment %+v came back as %+v", s, got)
		}
	}
	d := accel.DTable{Base: 0xffff_8000_0000_1000, Limit: 0xfff}
	if got := tableFromValue(tableValue(d)); got != d {
		t.Errorf("table %+v came back as %+v", d, got)
	}
}

// FuzzMessage feeds arbitrary RUN_VP messages (with arbitrary registers)
// to the run loop: the answer is an exit or an error, never a panic.
func FuzzMessage(f *testing.F) {
	seed := func(typ uint32, b ...byte) []byte {
		m := make([]byte, 256)
		binary.LittleEndian.PutUint32(m, typ)
		copy(m[16:], b)
		return m
	}
	f.Add(seed(mshvabi.MsgX64IOPortIntercept, 0, 0, 0, 0, 2, 1), uint64(0))
	f.Add(seed(mshvabi.MsgUnmappedGPA, 0, 0, 0, 0, 0, 1), uint64(0xfeb00000))
	f.Add(seed(mshvabi.MsgX64IOPortIntercept, 0, 0, 0, 0, 2, 0, 0, 0), uint64(1))
	f.Add(seed(0x12345678), uint64(7))
	// A string OUTS intercept without instruction bytes (count 0 at 43):
	// the backend reads them from guest memory.
	strOut := make([]byte, 44)
	strOut[4], strOut[5], strOut[40], strOut[42] = 2, 1, 0xf8, 1|mshvabi.IOAccessString
	f.Add(seed(mshvabi.MsgX64IOPortIntercept, strOut...), uint64(0x10))
	f.Fuzz(func(t *testing.T, msg []byte, regval uint64) {
		fh := newFake()
		_, v := fh.machine(t)
		for _, n := range append(append([]uint32(nil), gprNames...), mshvabi.RegCR0, mshvabi.RegCR4, mshvabi.RegEFER, mshvabi.RegCS, mshvabi.RegDS) {
			fh.regs[n] = mshvabi.RegisterValue{Low: regval, High: regval >> 3}
		}
		fh.msgs = []func(*mshvabi.Message){
			func(m *mshvabi.Message) { copy(mshvabi.Bytes(m), msg) },
			func(m *mshvabi.Message) { header(m, mshvabi.MsgX64Halt, 0) },
		}
		var l log
		v.Run(&l)
	})
}
