package mshvsim_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
	"govmm/accel/mshv/mshvsim"
)

// TestSynICState: a partition granted the SynIC and the synthetic timers
// (QEMU's synthetic feature set) has them backed by KVM's SynIC. The
// SynIC registers (SINTn, SCONTROL, SIMP) hold what the VMM sets; SINTs
// start masked (TLFS: SINTx reset value 0x10000). While SIMP is enabled
// the message page's VP state (MSHV_GET/SET_VP_STATE type SIMP) is the
// guest page SIMP names, where the hypervisor overlays it; and the timer
// state carries STIMERn's configuration and count, also through the
// STIMERn registers.
func TestSynICState(t *testing.T) {
	s := newSim(t, mshvsim.Options{})
	pfd := newPartition(t, s, mshvabi.DefaultSyntheticProcFeatures)
	mem, err := unix.Mmap(-1, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	if err := mshvabi.SetGuestMemory(s, pfd, 0, mem, mshvabi.MemWritable); err != nil {
		t.Fatal(err)
	}
	vfd, err := mshvabi.CreateVPFD(s, pfd, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(vfd) })

	if got := getReg(t, s, pfd, 0, mshvabi.RegSINT0+2); got != 1<<16 {
		t.Errorf("SINT2 reads %#x at reset, want 0x10000 (masked)", got)
	}
	for _, r := range []struct {
		name uint32
		v    uint64
	}{{mshvabi.RegSINT0 + 2, 0x52}, {mshvabi.RegSCONTROL, 1}, {mshvabi.RegSIMP, 0x2000 | 1}} {
		if _, err := setReg(s, pfd, 0, r.name, r.v); err != nil {
			t.Fatalf("set register %#x: %v", r.name, err)
		}
		if got := getReg(t, s, pfd, 0, r.name); got != r.v {
			t.Errorf("register %#x reads %#x, want %#x", r.name, got, r.v)
		}
	}

	// The message page is the guest page at 0x2000.
	copy(mem[0x2000:], "a message for SINT0")
	page := mshvabi.AlignedBuffer(4096)
	if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateSIMP, page); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(page, []byte("a message for SINT0")) {
		t.Errorf("SIMP state starts %q, want the guest page under SIMP", page[:19])
	}
	copy(page, "restored message")
	if _, err := mshvabi.SetVPState(s, vfd, mshvabi.VPStateSIMP, page); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(mem[0x2000:], []byte("restored message")) {
		t.Errorf("guest page under SIMP starts %q after SET_VP_STATE, want the state set", mem[0x2000:0x2010])
	}

	// STIMER1: periodic, direct mode, vector 0x53, 1 ms.
	const cfg = 1 | 2 | 1<<12 | 0x53<<4
	ts := mshvabi.AlignedBuffer(4096)
	if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateSyntheticTimers, ts); err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(ts[40+8:], cfg)
	binary.LittleEndian.PutUint64(ts[40+16:], 10000)
	if _, err := mshvabi.SetVPState(s, vfd, mshvabi.VPStateSyntheticTimers, ts); err != nil {
		t.Fatal(err)
	}
	if got := getReg(t, s, pfd, 0, 0xB0002); got != cfg {
		t.Errorf("STIMER1_CONFIG reads %#x after the timer state was set, want %#x", got, cfg)
	}
	if got := getReg(t, s, pfd, 0, 0xB0003); got != 10000 {
		t.Errorf("STIMER1_COUNT reads %d, want 10000", got)
	}
	clear(ts)
	if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateSyntheticTimers, ts); err != nil {
		t.Fatal(err)
	}
	if c, n := binary.LittleEndian.Uint64(ts[40+8:]), binary.LittleEndian.Uint64(ts[40+16:]); c != cfg || n != 10000 {
		t.Errorf("timer state reads STIMER1 config %#x count %d, want %#x and 10000", c, n, cfg)
	}
}
