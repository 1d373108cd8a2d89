package mshv

import (
	"bytes"
	"encoding/binary"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvsim"
	"govmm/internal/kvmtest"
)

// TestYMMThroughXSave checks the emulator's vector access on MSHV: the
// upper YMM half is read from and written to the XSAVE state.
func TestYMMThroughXSave(t *testing.T) {
	kvmtest.Need(t)
	sim, err := mshvsim.New()
	if err != nil {
		t.Fatal(err)
	}
	acc, _ := Open(sim)
	defer acc.Close()
	vm, err := acc.NewVM(accel.VMConfig{NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	v, err := vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	l, err := vm.xsaveLayout(v)
	if err != nil {
		t.Fatal(err)
	}
	avx := l.comps[2]
	if avx.stdOff == 0 {
		t.Skip("no AVX on this host")
	}
	if err := v.SetXCRs([]accel.XCR{{Index: 0, Value: 7}}); err != nil {
		t.Fatal(err)
	}
	x, err := v.XSave()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		x.Data[avx.stdOff+uint32(i)] = byte(0x80 + i)
	}
	binary.LittleEndian.PutUint64(x.Data[512:], binary.LittleEndian.Uint64(x.Data[512:])|7)
	if err := v.SetXSave(&x); err != nil {
		t.Fatal(err)
	}
	c := v.cpu
	var y [32]byte
	c.ReadVector(0, &y)
	if c.err != nil {
		t.Fatal(c.err)
	}
	for i := 0; i < 16; i++ {
		if y[16+i] != byte(0x80+i) {
			t.Fatalf("ymm0 upper half read as % x", y[16:])
		}
	}
	var w [32]byte
	for i := range w {
		w[i] = byte(i + 1)
	}
	c.WriteVector(1, &w, true)
	if c.err != nil {
		t.Fatal(c.err)
	}
	x, err = v.XSave()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x.Data[160+16:160+32], w[:16]) || !bytes.Equal(x.Data[avx.stdOff+16:avx.stdOff+32], w[16:]) {
		t.Errorf("ymm1 after a VEX write: xmm % x upper % x", x.Data[160+16:160+32], x.Data[avx.stdOff+16:avx.stdOff+32])
	}
	f, err := v.FPU()
	if err != nil || !bytes.Equal(f.XMM[1][:], w[:16]) {
		t.Errorf("xmm1 through the register after a VEX write: % x (%v)", f.XMM[1], err)
	}
}
