package mshvsim_test

import (
	"encoding/binary"
	"testing"

	"govmm/accel/mshv/mshvabi"
	"govmm/accel/mshv/mshvsim"
)

// newVP creates and initialises a partition with the given payload (nil:
// v1) and its VP 0.
func newVP(t *testing.T, s *mshvsim.Sim, v2 *mshvabi.CreatePartitionV2) int {
	t.Helper()
	var pfd int
	var err error
	if v2 == nil {
		pfd, err = mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 7})
	} else {
		pfd, err = mshvabi.CreatePartitionV2FD(s, v2)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(pfd) })
	if err := mshvabi.InitializePartition(s, pfd); err != nil {
		t.Fatal(err)
	}
	vfd, err := mshvabi.CreateVPFD(s, pfd, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(vfd) })
	return vfd
}

func vpCPUID(t *testing.T, s *mshvsim.Sim, vfd int, leaf, sub uint32) [4]uint32 {
	t.Helper()
	in := make([]byte, 48)
	binary.LittleEndian.PutUint32(in[24:], leaf)
	binary.LittleEndian.PutUint32(in[28:], sub)
	binary.LittleEndian.PutUint64(in[32:], 7)
	out := make([]byte, 16)
	if _, err := hvcall(s, vfd, mshvabi.HvcallGetVPCPUIDValues, 1, in, out); err != nil {
		t.Fatalf("GET_VP_CPUID_VALUES %#x.%d: %v", leaf, sub, err)
	}
	var r [4]uint32
	for i := range r {
		r[i] = binary.LittleEndian.Uint32(out[4*i:])
	}
	return r
}

func setXCR0(s *mshvsim.Sim, vfd int, v uint64) error {
	in := make([]byte, 16+32)
	binary.LittleEndian.PutUint32(in[16:], mshvabi.RegXFEM)
	binary.LittleEndian.PutUint64(in[32:], v)
	_, err := hvcall(s, vfd, mshvabi.HvcallSetVPRegisters, 1, in, nil)
	return err
}

// TestFeatureBanks checks the partition's feature banks as the hypervisor
// enforces them: mainline (no v2 payload) disables nothing; a kernel with
// the v2 payload applies its whitelist to a v1 caller (AVX2 off, AVX on)
// and the caller's banks to a v2 one; a disabled feature is gone from the
// VP's CPUID and, for AVX, from XCR0.
func TestFeatureBanks(t *testing.T) {
	main := newSim(t, mshvsim.Options{})
	vfd := newVP(t, main, nil)
	l1, l7 := vpCPUID(t, main, vfd, 1, 0), vpCPUID(t, main, vfd, 7, 0)
	if l1[2]&(1<<28) == 0 || l7[1]&(1<<5) == 0 {
		t.Skip("this host has no AVX or AVX2")
	}
	if err := setXCR0(main, vfd, 7); err != nil {
		t.Errorf("mainline: XCR0.AVX refused: %v", err)
	}

	later := newSim(t, mshvsim.Options{V2: true})
	vfd = newVP(t, later, nil)
	l1, l7 = vpCPUID(t, later, vfd, 1, 0), vpCPUID(t, later, vfd, 7, 0)
	if l1[2]&(1<<28) == 0 || l7[1]&(1<<5) != 0 {
		t.Errorf("v1 payload on a v2 kernel: AVX %v AVX2 %v, want the whitelist's (AVX only)", l1[2]>>28&1, l7[1]>>5&1)
	}

	avx, _ := mshvabi.LookupBankFeature("avx")
	smep, _ := mshvabi.LookupBankFeature("smep")
	vfd = newVP(t, later, &mshvabi.CreatePartitionV2{Flags: 0xf, NumCPUFBanks: 2,
		CPUFBanks: [2]uint64{1 << smep.Bit}, DisabledXSave: 1 << avx.Bit})
	l1, l7, d0 := vpCPUID(t, later, vfd, 1, 0), vpCPUID(t, later, vfd, 7, 0), vpCPUID(t, later, vfd, 0xd, 0)
	if l1[2]&(1<<28) != 0 || d0[0]&4 != 0 {
		t.Errorf("AVX disabled: the VP reports AVX %v, XCR0.YMM %v", l1[2]>>28&1, d0[0]>>2&1)
	}
	if l7[1]&(1<<7) != 0 {
		t.Errorf("SMEP disabled: the VP reports it")
	}
	if l7[1]&(1<<5) == 0 {
		t.Errorf("AVX2 not disabled: the VP lost it")
	}
	if err := setXCR0(later, vfd, 3); err != nil {
		t.Errorf("XCR0 = x87|SSE refused: %v", err)
	}
	if err := setXCR0(later, vfd, 7); err == nil {
		t.Errorf("XCR0.AVX accepted with AVX disabled")
	}
}
