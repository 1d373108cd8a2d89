package mshv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
)

// superLayout is testLayout's partition with the supervisor components
// PASID (8 bytes), CET_U (16) and CET_S (24) in its XSAVE_STATES, as
// hv_x64_xsave_xfem_register (include/hyperv/hvhdk.h) names them and as
// the kernel asks for them (drivers/hv/mshv_root_main.c,
// mshv_vp_ioctl_get_set_state: the partition's XSAVE_STATES).
func superLayout() *xsaveLayout {
	l := testLayout()
	l.states |= 1<<xcompPASID | 1<<xcompCETU | 1<<xcompCETS
	l.comps[xcompPASID] = xsaveComp{size: 8}
	l.comps[xcompCETU] = xsaveComp{size: 16}
	l.comps[xcompCETS] = xsaveComp{size: 24}
	return l
}

// TestXSaveSupervisorComponents: the hypervisor's compacted image holds
// the supervisor components after the user ones. The standard format has
// no slot for them: CET_U and CET_S travel as MSRs (U_CET, PL0-3_SSP), so
// the conversion leaves them out without losing the user state around
// them; PASID in use has no register to travel in and is refused by name;
// a component whose size is unknown is refused, since it moves every later
// one.
func TestXSaveSupervisorComponents(t *testing.T) {
	l := superLayout()
	offs, end := l.compactedOffsets(l.states)
	if offs[xcompPASID] != 2440 || offs[xcompCETU] != 2448 || offs[xcompCETS] != 2464 || end != 2488 {
		t.Fatalf("supervisor offsets %d %d %d end %d, want 2440 2448 2464 2488", offs[xcompPASID], offs[xcompCETU], offs[xcompCETS], end)
	}
	c := make([]byte, 4096)
	for i := range c[:512] {
		c[i] = byte(i)
	}
	xstate := uint64(1<<2 | 1<<9 | 1<<xcompCETU | 1<<xcompCETS | 3)
	binary.LittleEndian.PutUint64(c[512:], xstate)
	binary.LittleEndian.PutUint64(c[520:], l.states|1<<63)
	for i := range 256 {
		c[576+i] = 0xA0 ^ byte(i) // AVX
	}
	copy(c[2432:], "PKRU....")
	copy(c[offs[xcompCETU]:], "U_CET...PL3_SSP.")
	std, err := l.toStandard(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(std[512:]); got != 1<<2|1<<9|3 {
		t.Errorf("XSTATE_BV %#x, want the user components only (0x207)", got)
	}
	if !bytes.Equal(std[576:576+256], c[576:576+256]) || string(std[2688:2692]) != "PKRU" {
		t.Errorf("user state around the supervisor components was not kept")
	}
	back, err := l.toCompacted(std)
	if err != nil {
		t.Fatal(err)
	}
	if bv, xc := binary.LittleEndian.Uint64(back[512:]), binary.LittleEndian.Uint64(back[520:]); bv != 1<<2|1<<9|3 || xc != l.states|1<<63 {
		t.Errorf("compacted again: XSTATE_BV %#x XCOMP_BV %#x", bv, xc)
	}
	if !bytes.Equal(back[576:576+256], c[576:576+256]) || string(back[2432:2436]) != "PKRU" {
		t.Errorf("user state moved in the compacted image")
	}

	binary.LittleEndian.PutUint64(c[512:], xstate|1<<xcompPASID)
	if _, err := l.toStandard(c); err == nil || !strings.Contains(err.Error(), "PASID") || !errors.Is(err, accel.ErrNotSupported) {
		t.Errorf("PASID state in use: err %v", err)
	}
	l.comps[xcompCETS] = xsaveComp{}
	binary.LittleEndian.PutUint64(c[512:], xstate)
	if _, err := l.toStandard(c); err == nil || !strings.Contains(err.Error(), "CET_S") {
		t.Errorf("an image with a component of unknown size: err %v", err)
	}
	if _, err := l.toCompacted(std); err == nil || !strings.Contains(err.Error(), "CET_S") {
		t.Errorf("a partition transferring a component of unknown size: err %v", err)
	}
}

// TestFakeCETCarriedAsMSRs: CET_U (IA32_U_CET, IA32_PL3_SSP) and CET_S
// (IA32_PL0-2_SSP) reach the snapshot as MSRs, through the named
// registers hvgdk_mini.h gives them (U_CET 0x8008C, PL0_SSP..PL3_SSP
// 0x8008F-0x80092) as rust-vmm's msr_to_hv_reg_name and QEMU's MSHV
// backend ("migrate CET/SS MSRs") do, and are written back on restore.
func TestFakeCETCarriedAsMSRs(t *testing.T) {
	src := newFake()
	_, v := src.machine(t)
	cet := map[uint32]uint64{0x6A0: 0x5, 0x6A2: 0x4, 0x6A4: 0xffff8000_00010000, 0x6A7: 0x7fff_f000, 0x6A8: 0x1234000}
	for m, val := range cet {
		n, _ := mshvabi.MSRRegisterName(m)
		src.regs[n] = mshvabi.RegisterValue{Low: val}
	}
	list, err := v.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	saved, err := v.MSRs(list)
	if err != nil {
		t.Fatal(err)
	}
	dst := newFake()
	_, w := dst.machine(t)
	if err := w.SetMSRs(saved); err != nil {
		t.Fatal(err)
	}
	for m, val := range cet {
		n, _ := mshvabi.MSRRegisterName(m)
		if got := dst.regs[n].Low; got != val {
			t.Errorf("MSR %#x (register %#x) restored as %#x, want %#x", m, n, got, val)
		}
	}
}
