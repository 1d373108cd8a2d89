package mshvsim

import (
	"bytes"
	"encoding/binary"
	"testing"

	"govmm/accel"
)

// cetHostCPUID is leaves 7 and 0xD of a host with AVX and CET: shadow
// stacks (7.0 ECX bit 7), XSAVES, XCR0 x87|SSE|AVX, IA32_XSS xss (CET_U,
// CET_S and PT, bit 8, which nothing backs, on a CET host).
func cetHostCPUID(xss uint32) []accel.CPUIDEntry {
	sub := func(i, a, b, c uint32) accel.CPUIDEntry {
		return accel.CPUIDEntry{Function: 0xd, Index: i, Flags: accel.CPUIDFlagSignificantIndex, EAX: a, EBX: b, ECX: c}
	}
	return []accel.CPUIDEntry{
		{Function: 7, Flags: accel.CPUIDFlagSignificantIndex, ECX: 1 << 7},
		sub(0, 7, 832, 832),
		sub(1, 0xf, 0, xss),
		sub(2, 256, 576, 0),
		sub(8, 128, 0, 1),
		sub(11, 16, 0, 1), // CET_U: supervisor
		sub(12, 24, 0, 1), // CET_S: supervisor
	}
}

// TestXSaveSupervisorFromCETMSRs: the hypervisor's XSAVE image holds every
// component of the partition's XSAVE_STATES, supervisor ones included
// (drivers/hv/mshv_root_main.c mshv_vp_ioctl_get_set_state asks for
// exactly those; include/hyperv/hvhdk.h hv_x64_xsave_xfem_register has
// cet_u and cet_s). On a host whose IA32_XSS offers CET the simulator's
// layout carries CET_U and CET_S after the user components, filled from
// KVM's CET MSRs (U_CET and PL3_SSP; PL0-2_SSP), with XSTATE_BV set for a
// component not in its init state; a compacted image gives them back as
// MSR values and gives KVM the user components alone. PT, which no MSR
// the simulator serves backs, and PASID are never transferred. Without
// CET in IA32_XSS, or in a partition whose banks disable CET or XSAVES,
// the layout is the user one, as before.
func TestXSaveSupervisorFromCETMSRs(t *testing.T) {
	if l := newLayout(cetHostCPUID(0)); l.super != 0 || l.compactSize != 4096 {
		t.Fatalf("host without CET: supervisor components %#x", l.super)
	}
	const cetXSS = 1<<8 | 1<<11 | 1<<12
	// A partition whose banks disable shadow stacks and IBT (leaf 7), or
	// XSAVES (the XSAVE bank's xsave_supervisor), transfers none.
	for _, c := range []struct {
		what        string
		leaf, index uint32
		clear       func(*accel.CPUIDEntry)
	}{
		{"no shadow stacks or IBT", 7, 0, func(e *accel.CPUIDEntry) { e.ECX = 0 }},
		{"no XSAVES", 0xd, 1, func(e *accel.CPUIDEntry) { e.EAX &^= 1 << 3 }},
	} {
		tab := cetHostCPUID(cetXSS)
		for i := range tab {
			if tab[i].Function == c.leaf && tab[i].Index == c.index {
				c.clear(&tab[i])
			}
		}
		if l := newLayout(tab); l.super != 0 {
			t.Errorf("%s: supervisor components %#x, want none", c.what, l.super)
		}
	}
	l := newLayout(cetHostCPUID(cetXSS))
	if l.super != 1<<11|1<<12 {
		t.Fatalf("supervisor components %#x, want CET_U|CET_S (0x1800)", l.super)
	}
	std := make([]byte, 832)
	binary.LittleEndian.PutUint64(std[512:], 7) // x87, SSE, AVX in use
	for i := range 256 {
		std[576+i] = byte(i) ^ 0x5a
	}
	copy(std[:8], "FPUSTATE")
	cet := cetState{0x5, 0x7ff000, 0, 0, 0} // U_CET, PL3_SSP; CET_S at init
	c := l.compact(std, cet)
	if xc := binary.LittleEndian.Uint64(c[520:]); xc != 1<<63|1<<12|1<<11|7 {
		t.Errorf("XCOMP_BV %#x, want x87|SSE|AVX|CET_U|CET_S|compacted", xc)
	}
	if xs := binary.LittleEndian.Uint64(c[512:]); xs != 1<<11|7 {
		t.Errorf("XSTATE_BV %#x, want AVX and CET_U in use, CET_S at init (0x807)", xs)
	}
	if !bytes.Equal(c[576:832], std[576:832]) || string(c[:8]) != "FPUSTATE" {
		t.Errorf("user state moved in the compacted image")
	}
	if u, p3 := binary.LittleEndian.Uint64(c[832:]), binary.LittleEndian.Uint64(c[840:]); u != 5 || p3 != 0x7ff000 {
		t.Errorf("CET_U at 832: U_CET %#x PL3_SSP %#x", u, p3)
	}

	// Back: KVM gets the user components only, the MSRs their values.
	binary.LittleEndian.PutUint64(c[848:], 0x1000) // PL0_SSP bytes, but CET_S is at init
	back, got, ok := l.standard(c, len(std))
	if !ok {
		t.Fatal("standard refused the simulator's own image")
	}
	if xs := binary.LittleEndian.Uint64(back[512:]); xs != 7 {
		t.Errorf("XSTATE_BV for KVM %#x, want the user components (7)", xs)
	}
	if !bytes.Equal(back[576:832], std[576:832]) {
		t.Errorf("AVX state lost on the way back")
	}
	if got != cet {
		t.Errorf("CET MSRs from the image %#x, want %#x (CET_S at init reads 0)", got, cet)
	}
	binary.LittleEndian.PutUint64(c[512:], 1<<12|7)
	if _, got, _ := l.standard(c, len(std)); got[2] != 0x1000 {
		t.Errorf("CET_S in use: PL0_SSP %#x, want 0x1000", got[2])
	}

	// A component the partition does not transfer is refused.
	binary.LittleEndian.PutUint64(c[520:], 1<<63|1<<10|1<<11|1<<12|7)
	if _, _, ok := l.standard(c, len(std)); ok {
		t.Errorf("an image with PASID (component 10) was taken")
	}
}
