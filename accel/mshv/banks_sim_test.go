package mshv

import (
	"encoding/binary"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
	"govmm/accel/mshv/mshvsim"
	"govmm/cpu"
	"govmm/internal/kvmtest"
)

// vpCPUID reads leaf.sub of VP v with GET_VP_CPUID_VALUES: the
// hypervisor's own value, or with overrides applied (flags bit 1).
func vpCPUID(t *testing.T, v *VCPU, leaf, sub uint32, overrides bool) [4]uint32 {
	t.Helper()
	in := make([]byte, 48)
	binary.LittleEndian.PutUint32(in[8:], uint32(v.index))
	if overrides {
		binary.LittleEndian.PutUint32(in[12:], 2)
	}
	binary.LittleEndian.PutUint32(in[24:], leaf)
	binary.LittleEndian.PutUint32(in[28:], sub)
	binary.LittleEndian.PutUint64(in[32:], 7)
	out := make([]byte, 16)
	if reps, err := v.hv.call(mshvabi.HvcallGetVPCPUIDValues, 1, in, out); err != nil || reps != 1 {
		t.Fatalf("GET_VP_CPUID_VALUES %#x.%d: %v (reps %d)", leaf, sub, err, reps)
	}
	var r [4]uint32
	for i := range r {
		r[i] = binary.LittleEndian.Uint32(out[4*i:])
	}
	return r
}

// TestSimBanksEnforceModel: on mshvsim with the v2 payload, a partition
// whose guest CPUID lacks AVX is created with AVX disabled in its XSAVE
// bank, and the hypervisor then enforces it: the VP's CPUID has no AVX
// and no YMM state component even when a CPUID override claims AVX, and
// XCR0.AVX is refused. A partition of the host model keeps both.
func TestSimBanksEnforceModel(t *testing.T) {
	kvmtest.Need(t)
	sim, err := mshvsim.NewWithOptions(mshvsim.Options{V2: true})
	if err != nil {
		t.Fatal(err)
	}
	acc, err := Open(sim)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	sup, err := acc.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := cpuidReader(sup)(1, 0); r[2]&(1<<28) == 0 {
		t.Skip("no AVX on this host")
	}
	noAVX, err := cpu.Hide(sup, []string{"avx"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cpuid []accel.CPUIDEntry
		avx   bool
	}{{"host", sup, true}, {"host,-avx", noAVX, false}} {
		vm, err := acc.NewVM(accel.VMConfig{NumVCPUs: 1, CPUID: tc.cpuid})
		if err != nil {
			t.Fatal(err)
		}
		if !vm.V2 {
			t.Fatalf("%s: partition created without the v2 payload", tc.name)
		}
		v, err := vm.NewVCPU(0)
		if err != nil {
			t.Fatal(err)
		}
		// An override that claims AVX (the host's leaf 1) changes nothing
		// when the partition has AVX disabled.
		if err := v.SetCPUID(sup); err != nil {
			t.Fatal(err)
		}
		for _, ov := range []bool{false, true} {
			l1, d0 := vpCPUID(t, v, 1, 0, ov), vpCPUID(t, v, 0xd, 0, ov)
			if got := l1[2]&(1<<28) != 0; got != tc.avx {
				t.Errorf("%s: VP CPUID (overrides applied %v) reports AVX %v", tc.name, ov, got)
			}
			if got := d0[0]&4 != 0; got != tc.avx {
				t.Errorf("%s: VP CPUID 0xD.0 (overrides applied %v) offers the YMM component %v", tc.name, ov, got)
			}
		}
		if err := v.SetXCRs([]accel.XCR{{Index: 0, Value: 3}}); err != nil {
			t.Errorf("%s: XCR0 = x87|SSE refused: %v", tc.name, err)
		}
		err = v.SetXCRs([]accel.XCR{{Index: 0, Value: 7}})
		if tc.avx && err != nil {
			t.Errorf("%s: XCR0 = x87|SSE|AVX refused: %v", tc.name, err)
		}
		if !tc.avx && err == nil {
			t.Errorf("%s: XCR0 = x87|SSE|AVX accepted with AVX disabled in the partition", tc.name)
		}
		v.Close()
		vm.Close()
	}
}
