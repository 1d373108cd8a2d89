//go:build linux && arm64

package kvmarm

import (
	"encoding/binary"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
)

// needKVM skips a test without /dev/kvm (these run in the aarch64 L1, in
// e2e's TestARM64LinuxBoot), and fails it where KVM is required.
func needKVM(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal("no /dev/kvm")
		}
		t.Skip("no /dev/kvm")
	}
}

// kickingIO is an accel.IOHandler whose MMIO kicks the vCPU from inside
// the access, as a pause (a snapshot, a live migration) does when it
// comes while the vCPU's thread serves an MMIO exit.
type kickingIO struct {
	v              *VCPU
	readVal        uint32
	reads, writes  int
	lastWrite      uint32
	addrR, addrW   uint64
	kickOnAccesses bool
}

func (h *kickingIO) PIORead(uint16, []byte)  {}
func (h *kickingIO) PIOWrite(uint16, []byte) {}
func (h *kickingIO) MMIORead(addr uint64, data []byte) {
	h.reads++
	h.addrR = addr
	var b [8]byte
	binary.LittleEndian.PutUint32(b[:], h.readVal)
	copy(data, b[:])
	if h.kickOnAccesses {
		h.v.Kick()
	}
}
func (h *kickingIO) MMIOWrite(addr uint64, data []byte) {
	h.writes++
	h.addrW = addr
	var b [8]byte
	copy(b[:], data)
	h.lastWrite = binary.LittleEndian.Uint32(b[:])
	if h.kickOnAccesses {
		h.v.Kick()
	}
}

// TestKickCompletesMMIO: a Kick that comes while Run serves an MMIO exit
// returns ExitInterrupted with the access complete in the vCPU's
// registers (what KVM_GET_ONE_REG, and so a saved state, sees): after a
// read the destination register holds the value served and the PC is past
// the load; after a write the PC is past the store. Run again, the guest
// goes on from there and makes neither access a second time. Before Run
// completed the access on a kick, the PC stayed on the instruction and a
// restored vCPU replayed it: a migrated virtio INTx guest re-read its
// read-to-clear ISR as 0 and lost the interrupt (issue #17).
func TestKickCompletesMMIO(t *testing.T) {
	needKVM(t)
	const (
		ram  = 0x4000_0000
		mmio = 0x0900_0000 // nothing is mapped there: every access exits
	)
	k, err := Open("/dev/kvm")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	vm, err := k.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	mem, err := unix.Mmap(-1, 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	code := []uint32{
		0xd2a12000, // movz x0, #0x0900, lsl #16
		0xb9400001, // ldr w1, [x0]
		0x11000421, // add w1, w1, #1
		0xb9000401, // str w1, [x0, #4]
		0x14000000, // b .
	}
	for i, c := range code {
		binary.LittleEndian.PutUint32(mem[4*i:], c)
	}
	if err := vm.MapMemory(accel.MemoryRegion{GPA: ram, Host: mem}); err != nil {
		t.Fatal(err)
	}
	if err := vm.CreateGICv3(0x0800_0000, 0x080a_0000, 64); err != nil {
		t.Fatal(err)
	}
	v, err := vm.CreateVCPU(0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.InitGIC(); err != nil {
		t.Fatal(err)
	}
	const pstateEL1hDAIF = 0x3c5
	for _, r := range []struct{ id, val uint64 }{{RegPState, pstateEL1hDAIF}, {RegPC, ram}, {XReg(1), 0}} {
		if err := v.SetReg(r.id, r.val); err != nil {
			t.Fatal(err)
		}
	}

	h := &kickingIO{v: v, readVal: 0x5c, kickOnAccesses: true}
	type step struct {
		what   string
		pc, x1 uint64
		reason accel.ExitReason
		err    error
	}
	done := make(chan []step)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var steps []step
		run := func(what string) {
			x, err := v.Run(h)
			s := step{what: what, reason: x.Reason, err: err}
			s.pc, _ = v.Reg(RegPC)
			s.x1, _ = v.Reg(XReg(1))
			steps = append(steps, s)
		}
		run("load")
		run("store")
		// The guest spins on b . now: a kick from elsewhere ends it.
		h.kickOnAccesses = false
		timer := time.AfterFunc(200*time.Millisecond, v.Kick)
		run("spin")
		timer.Stop()
		done <- steps
	}()
	var steps []step
	select {
	case steps = <-done:
	case <-time.After(time.Minute):
		v.Kick()
		t.Fatal("Run did not return within a minute")
	}
	want := []step{
		{what: "load", pc: ram + 8, x1: 0x5c},
		{what: "store", pc: ram + 16, x1: 0x5d},
		{what: "spin", pc: ram + 16, x1: 0x5d},
	}
	for i, s := range steps {
		if s.err != nil || s.reason != accel.ExitInterrupted {
			t.Fatalf("%s: Run returned %v, %v; want an interrupted exit", s.what, s.reason, s.err)
		}
		if w := want[i]; s.pc != w.pc || s.x1 != w.x1 {
			t.Errorf("after the kick in the %s: PC %#x, x1 %#x; want PC %#x, x1 %#x (the access complete)", s.what, s.pc, s.x1, w.pc, w.x1)
		}
	}
	if h.reads != 1 || h.writes != 1 {
		t.Errorf("the guest made %d MMIO reads and %d writes, want 1 and 1 (an access made again after a kick)", h.reads, h.writes)
	}
	if h.addrR != mmio || h.addrW != mmio+4 || h.lastWrite != 0x5d {
		t.Errorf("MMIO read at %#x, write of %#x at %#x; want a read at %#x and 0x5d written at %#x", h.addrR, h.lastWrite, h.addrW, uint64(mmio), uint64(mmio+4))
	}
}
