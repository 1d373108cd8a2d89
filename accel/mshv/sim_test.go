package mshv_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/mshv"
	"govmm/accel/mshv/mshvabi"
	"govmm/accel/mshv/mshvsim"
	"govmm/internal/kvmtest"
)

// recorder is an IOHandler that logs accesses and answers reads from
// fixed tables.
type recorder struct {
	mu    sync.Mutex
	log   []string
	pio   map[uint16][]byte
	mmio  map[uint64][]byte
	onOut func(port uint16, data []byte)
}

func (r *recorder) add(f string, a ...any) {
	r.mu.Lock()
	r.log = append(r.log, fmt.Sprintf(f, a...))
	r.mu.Unlock()
}

func (r *recorder) PIORead(port uint16, data []byte) {
	copy(data, r.pio[port])
	r.add("in %#x %d", port, len(data))
}

func (r *recorder) PIOWrite(port uint16, data []byte) {
	r.add("out %#x % x", port, data)
	if r.onOut != nil {
		r.onOut(port, data)
	}
}

func (r *recorder) MMIORead(addr uint64, data []byte) {
	copy(data, r.mmio[addr])
	r.add("mmio-read %#x %d", addr, len(data))
}

func (r *recorder) MMIOWrite(addr uint64, data []byte) {
	r.add("mmio-write %#x % x", addr, data)
}

type machine struct {
	acc *mshv.Accelerator
	vm  *mshv.VM
	cpu *mshv.VCPU
	mem []byte
	sim *mshvsim.Sim
}

func newMachine(t *testing.T, opts mshvsim.Options, memSize int) *machine {
	t.Helper()
	sim, acc := openSim(t, opts)
	return newMachineOn(t, sim, acc, memSize, nil)
}

// openSim opens the MSHV backend on a new simulator, closed when the test
// ends.
func openSim(t *testing.T, opts mshvsim.Options) (*mshvsim.Sim, *mshv.Accelerator) {
	t.Helper()
	kvmtest.Need(t)
	sim, err := mshvsim.NewWithOptions(opts)
	if err != nil {
		t.Fatal(err)
	}
	return sim, openOn(t, sim)
}

// openOn opens the MSHV backend on dev (a simulator, or a Tap on one),
// closed when the test ends.
func openOn(t *testing.T, dev mshvabi.Device) *mshv.Accelerator {
	t.Helper()
	acc, err := mshv.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { acc.Close() })
	return acc
}

// newMachineOn creates a 1-vCPU VM with memSize bytes of RAM at GPA 0 on
// acc, with the CPU model cpuid (nil: the hypervisor's CPUID).
func newMachineOn(t *testing.T, sim *mshvsim.Sim, acc *mshv.Accelerator, memSize int, cpuid []accel.CPUIDEntry) *machine {
	t.Helper()
	vm, err := acc.NewVM(accel.VMConfig{NumVCPUs: 1, CPUID: cpuid})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.MapMemory(accel.MemoryRegion{GPA: 0, Host: mem}); err != nil {
		t.Fatal(err)
	}
	cpu, err := vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	m := &machine{acc: acc, vm: vm, cpu: cpu, mem: mem, sim: sim}
	t.Cleanup(func() {
		cpu.Close()
		vm.Close()
		unix.Munmap(mem)
	})
	return m
}

// cpuidLeaf returns the last entry of ids for leaf fn, or nil.
func cpuidLeaf(ids []accel.CPUIDEntry, fn uint32) *accel.CPUIDEntry {
	var e *accel.CPUIDEntry
	for i := range ids {
		if ids[i].Function == fn {
			e = &ids[i]
		}
	}
	return e
}

// outDword is the 32-bit value of the i-th logged port write, which must
// be an OUT to port.
func outDword(t *testing.T, rec *recorder, i int, port uint16) uint32 {
	t.Helper()
	prefix := fmt.Sprintf("out %#x ", port)
	if len(rec.log) <= i || !strings.HasPrefix(rec.log[i], prefix) {
		t.Fatalf("log %q: want entry %d to be a write to port %#x", rec.log, i, port)
	}
	var b [4]byte
	fmt.Sscanf(strings.TrimPrefix(rec.log[i], prefix), "%x %x %x %x", &b[0], &b[1], &b[2], &b[3])
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// runToF4 runs m from real-mode 0:0x1000 with code there until it writes
// port 0xf4, recording the port writes.
func (m *machine) runToF4(t *testing.T, code []byte) *recorder {
	t.Helper()
	copy(m.mem[0x1000:], code)
	m.realMode(t, 0x1000)
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) {
		if port == 0xf4 {
			m.cpu.Kick()
		}
	}
	if e, err := m.run(t, rec); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: %+v %v (log %q)", e, err, rec.log)
	}
	return rec
}

// realMode puts the vCPU in real mode at 0:rip with flat 64 KiB segments.
func (m *machine) realMode(t *testing.T, rip uint64) {
	t.Helper()
	s, err := m.cpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	code := accel.Segment{Limit: 0xffff, Type: 0xb, Present: true, S: true}
	data := accel.Segment{Limit: 0xffff, Type: 0x3, Present: true, S: true}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.CR0 = 0x10
	if err := m.cpu.SetSregs(&s); err != nil {
		t.Fatal(err)
	}
	if err := m.cpu.SetRegs(&accel.Regs{RIP: rip, RFLAGS: 2, RSP: 0x8000}); err != nil {
		t.Fatal(err)
	}
}

// run runs the vCPU on a locked thread until it exits.
func (m *machine) run(t *testing.T, h accel.IOHandler) (accel.Exit, error) {
	t.Helper()
	type res struct {
		e   accel.Exit
		err error
	}
	ch := make(chan res)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		e, err := m.cpu.Run(h)
		ch <- res{e, err}
	}()
	r := <-ch
	return r.e, r.err
}

// pioMMIOGuest is a real-mode guest doing scalar and string port I/O and
// several MMIO instruction forms, then writing to port 0xf4.
var pioMMIOGuest = []byte{
	0xBA, 0xF8, 0x03, // mov dx, 0x3f8
	0xB0, 0x41, // mov al, 'A'
	0xEE,       // out dx, al
	0xE6, 0x80, // out 0x80, al
	0xEC,       // in al, dx
	0x88, 0xC3, // mov bl, al
	0xBE, 0x00, 0x11, // mov si, 0x1100
	0xB9, 0x03, 0x00, // mov cx, 3
	0xF3, 0x6E, // rep outsb
	0xBF, 0x00, 0x12, // mov di, 0x1200
	0xB9, 0x02, 0x00, // mov cx, 2
	0xF3, 0x6C, // rep insb
	0xB8, 0x00, 0xD0, // mov ax, 0xd000
	0x8E, 0xD8, // mov ds, ax
	0xC6, 0x06, 0x10, 0x00, 0x77, // mov byte [0x10], 0x77
	0xA1, 0x20, 0x00, // mov ax, [0x20]
	0x89, 0xC1, // mov cx, ax
	0xA3, 0x30, 0x00, // mov [0x30], ax
	0x66, 0x89, 0x0E, 0x40, 0x00, // mov [0x40], ecx
	0x83, 0x06, 0x50, 0x00, 0x05, // add word [0x50], 5
	0x0F, 0xB6, 0x16, 0x60, 0x00, // movzx dx, byte [0x60]
	0x31, 0xC0, // xor ax, ax
	0x8E, 0xD8, // mov ds, ax
	0xE6, 0xF4, // out 0xf4, al
	0xEB, 0xFE, // jmp $
}

func TestSimPIOAndMMIO(t *testing.T) {
	for _, opts := range []mshvsim.Options{
		{EAGAINEvery: mshvsim.DefaultEAGAINEvery},
		{EAGAINEvery: 3, NoRegisterPage: true, V2: true, SelfHvcall: true, PropertyEx: true},
	} {
		t.Run(fmt.Sprintf("regpage=%v", !opts.NoRegisterPage), func(t *testing.T) {
			m := newMachine(t, opts, 0x10000)
			if m.vm.V2 != opts.V2 {
				t.Errorf("partition created with v2=%v, simulator V2=%v", m.vm.V2, opts.V2)
			}
			copy(m.mem[0x1000:], pioMMIOGuest)
			copy(m.mem[0x1100:], "xyz")
			m.realMode(t, 0x1000)
			rec := &recorder{
				pio:  map[uint16][]byte{0x3f8: {0x5a}},
				mmio: map[uint64][]byte{0xd0020: {0x34, 0x12}, 0xd0050: {0x10, 0x00}, 0xd0060: {0xab}},
			}
			rec.onOut = func(port uint16, data []byte) {
				if port == 0xf4 {
					m.cpu.Kick()
				}
			}
			e, err := m.run(t, rec)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if e.Reason != accel.ExitInterrupted {
				t.Fatalf("exit %v (%s), want interrupted; log:\n%s", e.Reason, e.Detail, strings.Join(rec.log, "\n"))
			}
			want := []string{
				"out 0x3f8 41", "out 0x80 41", "in 0x3f8 1",
				"out 0x3f8 78", "out 0x3f8 79", "out 0x3f8 7a",
				"in 0x3f8 1", "in 0x3f8 1",
				"mmio-write 0xd0010 77", "mmio-read 0xd0020 2", "mmio-write 0xd0030 34 12",
				"mmio-write 0xd0040 34 12 00 00", "mmio-read 0xd0050 2", "mmio-write 0xd0050 15 00",
				"mmio-read 0xd0060 1", "out 0xf4 00",
			}
			if got := strings.Join(rec.log, "\n"); got != strings.Join(want, "\n") {
				t.Errorf("accesses:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
			}
			r, err := m.cpu.Regs()
			if err != nil {
				t.Fatal(err)
			}
			wantRIP := uint64(0x1000 + len(pioMMIOGuest) - 2)
			if r.RIP != wantRIP || r.RAX&0xffff != 0 || r.RBX&0xff != 0x5a || r.RCX&0xffff != 0x1234 ||
				r.RDX&0xffff != 0xab || r.RSI&0xffff != 0x1103 || r.RDI&0xffff != 0x1202 {
				t.Errorf("registers after the guest: %+v (want rip %#x ax 0 bl 5a cx 1234 dx ab si 1103 di 1202)", r, wantRIP)
			}
			if !bytes.Equal(m.mem[0x1200:0x1202], []byte{0x5a, 0x5a}) {
				t.Errorf("rep insb stored % x, want 5a 5a", m.mem[0x1200:0x1202])
			}
		})
	}
}

// TestSimAccessesAcrossPages runs port I/O and MMIO instructions that
// straddle a page boundary. The intercept message carries only the bytes
// up to the end of the page, as the hypervisor may; the backend fetches
// the rest, and mshvsim must still find the instruction KVM stopped on
// (an OUT at 0x...fff once failed with "cannot find the instruction").
func TestSimAccessesAcrossPages(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: mshvsim.DefaultEAGAINEvery}, 0x10000)
	put := func(at int, code ...byte) { copy(m.mem[at:], code) }
	put(0x1ff0,
		0xB8, 0x00, 0xD0, // mov ax, 0xd000
		0x8E, 0xC0, // mov es, ax
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0xBE, 0x00, 0x11, // mov si, 0x1100
		0xB9, 0x02, 0x00, // mov cx, 2
		0x90,       // nop
		0xE6, 0xA1, // 0x1fff: out 0xa1, al
		0xE9, 0xF7, 0x0F) // jmp 0x2ffb
	put(0x2ffb,
		0x26, 0xC6, 0x06, 0x10, 0x00, 0x77, // mov byte es:[0x10], 0x77
		0xE9, 0xFB, 0x0F) // jmp 0x3fff
	put(0x3fff,
		0xE4, 0x61, // in al, 0x61
		0xE9, 0xFB, 0x0F) // jmp 0x4fff
	put(0x4fff,
		0xF3, 0x6E, // rep outsb
		0xE6, 0xF4, // out 0xf4, al
		0xEB, 0xFE) // jmp $
	copy(m.mem[0x1100:], "xy")
	m.realMode(t, 0x1ff0)
	rec := &recorder{pio: map[uint16][]byte{0x61: {0x5a}}}
	rec.onOut = func(port uint16, data []byte) {
		if port == 0xf4 {
			m.cpu.Kick()
		}
	}
	e, err := m.run(t, rec)
	if err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: exit %v (%s), %v; log:\n%s", e.Reason, e.Detail, err, strings.Join(rec.log, "\n"))
	}
	want := []string{"out 0xa1 00", "mmio-write 0xd0010 77", "in 0x61 1", "out 0x3f8 78", "out 0x3f8 79", "out 0xf4 5a"}
	if got := strings.Join(rec.log, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("accesses:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	r, err := m.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RIP != 0x5003 || r.RCX&0xffff != 0 || r.RSI&0xffff != 0x1102 {
		t.Errorf("registers after the guest: rip %#x cx %#x si %#x, want rip 0x5003 cx 0 si 0x1102", r.RIP, r.RCX, r.RSI)
	}
}

// TestSimStringPIOSegmentOverride: mshvsim's port-I/O intercepts carry no
// instruction bytes, so the backend reads fs: rep outsb from guest memory
// and sends the bytes at FS:SI, not DS:SI.
func TestSimStringPIOSegmentOverride(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: mshvsim.DefaultEAGAINEvery}, 0x10000)
	copy(m.mem[0x1000:], []byte{
		0xB8, 0x00, 0x03, // mov ax, 0x300
		0x8E, 0xE0, // mov fs, ax
		0xBE, 0x10, 0x00, // mov si, 0x10
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0xB9, 0x02, 0x00, // mov cx, 2
		0x64, 0xF3, 0x6E, // fs rep outsb
		0xE6, 0xF4, // out 0xf4, al
		0xEB, 0xFE, // jmp $
	})
	copy(m.mem[0x10:], "zz")
	copy(m.mem[0x3010:], "ab")
	m.realMode(t, 0x1000)
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) {
		if port == 0xf4 {
			m.cpu.Kick()
		}
	}
	if e, err := m.run(t, rec); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: exit %v (%s), %v; log %q", e.Reason, e.Detail, err, rec.log)
	}
	if got := strings.Join(rec.log, ";"); got != "out 0x3f8 61;out 0x3f8 62;out 0xf4 00" {
		t.Errorf("accesses %q, want FS:SI's 'a' and 'b'", got)
	}
}

// TestSimMemoryInterceptGVA: under non-identity paging (linear
// 0x80000000 maps GPA 0x40000000), a memory intercept carries the linear
// address of the access with gva_valid and gva_gpa_valid and the
// instruction length, as hv_x64_memory_intercept_message does, and the
// backend, which then hands the GVA->GPA pair to its emulator as a hint,
// writes the device at the GPA.
func TestSimMemoryInterceptGVA(t *testing.T) {
	kvmtest.Need(t)
	sim, err := mshvsim.NewWithOptions(mshvsim.Options{EAGAINEvery: mshvsim.DefaultEAGAINEvery})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []mshvabi.MemoryInterceptMessage
	tap := &mshvabi.Tap{Device: sim, OnMessage: func(fd int, m *mshvabi.Message) {
		if m.Header.MessageType == mshvabi.MsgUnmappedGPA {
			mu.Lock()
			seen = append(seen, *m.Memory())
			mu.Unlock()
		}
	}}
	m := newMachineOn(t, sim, openOn(t, tap), 0x100000, nil)
	copy(m.mem[0x1000:], []byte{
		0xB8, 0x44, 0x33, 0x22, 0x11, // mov eax, 0x11223344
		0x48, 0xBB, 0x10, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0x80000010
		0x89, 0x03, // mov [rbx], eax
		0xE6, 0xF4, 0xEB, 0xFE, // out 0xf4, al; jmp $
	})
	m.longMode(t, 0x1000)
	// PDPT[2]: linear 0x80000000 -> a page directory whose 2 MiB page 0
	// is GPA 0x40000000.
	binary.LittleEndian.PutUint64(m.mem[0x11010:], 0x14000|3)
	binary.LittleEndian.PutUint64(m.mem[0x14000:], 0x40000000|0x83)
	if err := m.cpu.SetRegs(&accel.Regs{RIP: 0x1000, RFLAGS: 2, RSP: 0x8000}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) { m.cpu.Kick() }
	if e, err := m.run(t, rec); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("exit %+v %v; log %q", e, err, rec.log)
	}
	if got := strings.Join(rec.log, ";"); got != "mmio-write 0x40000010 44 33 22 11;out 0xf4 44" {
		t.Errorf("accesses %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 {
		t.Fatalf("%d memory intercepts, want 1", len(seen))
	}
	mm := seen[0]
	if mm.MemoryAccessInfo&(mshvabi.MemAccessGVAValid|mshvabi.MemAccessGVAGPAValid) != mshvabi.MemAccessGVAValid|mshvabi.MemAccessGVAGPAValid ||
		mm.GVA != 0x80000010 || mm.GPA != 0x40000010 || mm.Header.InstructionLength() != 2 {
		t.Errorf("memory intercept: access info %#x, GVA %#x, GPA %#x, instruction length %d; want gva_valid|gva_gpa_valid, 0x80000010, 0x40000010, 2",
			mm.MemoryAccessInfo, mm.GVA, mm.GPA, mm.Header.InstructionLength())
	}
}

// TestSimInterruptShadowInIntercept: an IN right after STI runs in STI's
// interrupt shadow, and its port-I/O intercept says so in execution_state
// (bit 12, interrupt_shadow, of hv_x64_intercept_message_header); the next
// port access, outside the shadow, does not.
func TestSimInterruptShadowInIntercept(t *testing.T) {
	sim, acc, shadowAt := shadowTap(t, mshvsim.Options{EAGAINEvery: mshvsim.DefaultEAGAINEvery})
	m := newMachineOn(t, sim, acc, 0x10000, nil)
	m.runToF4(t, []byte{
		0xFB,       // sti
		0xE4, 0x61, // in al, 0x61 (in STI's shadow)
		0xE4, 0x62, // in al, 0x62
		0xE6, 0xF4, // out 0xf4, al
		0xEB, 0xFE, // jmp $
	})
	_, s61 := shadowAt(0x61)
	_, s62 := shadowAt(0x62)
	if !s61 || s62 {
		t.Errorf("interrupt_shadow in the intercepts: port 0x61 %v (want true, after STI), port 0x62 %v (want false)", s61, s62)
	}
}

// TestSimKick runs a guest that counts in RAM forever, kicks it, checks
// that Run returns ExitInterrupted with state intact, and resumes it.
func TestSimKick(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: 5}, 0x10000)
	copy(m.mem[0x1000:], []byte{
		0x66, 0xFF, 0x06, 0x00, 0x20, // inc dword [0x2000]
		0xEB, 0xF9, // jmp 0x1000
	})
	m.realMode(t, 0x1000)
	count := func() uint32 {
		return uint32(m.mem[0x2000]) | uint32(m.mem[0x2001])<<8 | uint32(m.mem[0x2002])<<16 | uint32(m.mem[0x2003])<<24
	}
	rec := &recorder{}
	var prev uint32
	for round := 0; round < 3; round++ {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for count() <= prev+1000 {
				runtime.Gosched()
			}
			m.cpu.Kick()
		}()
		e, err := m.run(t, rec)
		<-done
		if err != nil || e.Reason != accel.ExitInterrupted {
			t.Fatalf("round %d: exit %v %v (%s)", round, e.Reason, err, e.Detail)
		}
		r, err := m.cpu.Regs()
		if err != nil {
			t.Fatal(err)
		}
		if r.RIP != 0x1000 && r.RIP != 0x1005 {
			t.Fatalf("round %d: rip %#x after kick, want 0x1000 or 0x1005", round, r.RIP)
		}
		c := count()
		if c <= prev {
			t.Fatalf("round %d: counter %d did not advance past %d", round, c, prev)
		}
		prev = c
	}
	if len(rec.log) != 0 {
		t.Errorf("unexpected accesses: %v", rec.log)
	}
}

// TestSimStateRoundTrip gets each state class through the simulator, sets
// it back and gets it again: the neutral state must come back unchanged.
func TestSimStateRoundTrip(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: 4}, 0x10000)
	copy(m.mem[0x1000:], []byte{0xE6, 0xF4, 0xEB, 0xFE}) // out 0xf4, al; jmp $
	m.realMode(t, 0x1000)
	c := m.cpu
	// Make the state non-trivial first.
	regs := accel.Regs{RAX: 1, RBX: 2, RCX: 3, RDX: 4, RSI: 5, RDI: 6, RSP: 0x7ff0, RBP: 8, R8: 9, R9: 10,
		R10: 11, R11: 12, R12: 13, R13: 14, R14: 15, R15: 0x1_0000_0000_16, RIP: 0x1000, RFLAGS: 0x202}
	if err := c.SetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	var fpu accel.FPU
	fpu.FCW, fpu.MXCSR, fpu.MXCSRMask = 0x37f, 0x1f80, 0xffff
	for i := range fpu.XMM {
		for j := range fpu.XMM[i] {
			fpu.XMM[i][j] = byte(i*16 + j)
		}
	}
	fpu.ST[3][0], fpu.ST[3][9] = 0x11, 0x3f
	if err := c.SetFPU(&fpu); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) { c.Kick() }
	if e, err := m.run(t, rec); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: %v %v", e, err)
	}

	check := func(name string, get func() (any, error), set func(any) error) {
		t.Helper()
		a, err := get()
		if err != nil {
			t.Fatalf("%s: get: %v", name, err)
		}
		if err := set(a); err != nil {
			t.Fatalf("%s: set: %v", name, err)
		}
		b, err := get()
		if err != nil {
			t.Fatalf("%s: get after set: %v", name, err)
		}
		if fmt.Sprintf("%+v", a) != fmt.Sprintf("%+v", b) {
			t.Errorf("%s does not round-trip:\n got %+v\nwant %+v", name, b, a)
		}
	}
	check("regs", func() (any, error) { return c.Regs() }, func(x any) error { r := x.(accel.Regs); return c.SetRegs(&r) })
	r, _ := c.Regs()
	if r.R15 != regs.R15 || r.RBX != regs.RBX || r.RIP != 0x1002 {
		t.Errorf("regs after run: %+v", r)
	}
	check("sregs", func() (any, error) { return c.Sregs() }, func(x any) error { s := x.(accel.Sregs); return c.SetSregs(&s) })
	check("fpu", func() (any, error) { return c.FPU() }, func(x any) error { f := x.(accel.FPU); return c.SetFPU(&f) })
	f, _ := c.FPU()
	if f.XMM != fpu.XMM || f.ST[3] != fpu.ST[3] {
		t.Errorf("FPU did not keep what was set: %+v", f)
	}
	check("xsave", func() (any, error) { return c.XSave() }, func(x any) error { s := x.(accel.XSave); return c.SetXSave(&s) })
	check("xcrs", func() (any, error) { return c.XCRs() }, func(x any) error { return c.SetXCRs(x.([]accel.XCR)) })
	check("lapic", func() (any, error) { return c.LAPIC() }, func(x any) error { l := x.(accel.LAPIC); return c.SetLAPIC(&l) })
	l, _ := c.LAPIC()
	if l.Regs[0x350+1] != 0x07 || l.Regs[0x361] != 0x04 || l.Regs[0xf0] != 0xff {
		t.Errorf("LAPIC LINT0/LINT1/SVR not as initialised: % x % x % x", l.Regs[0x350:0x354], l.Regs[0x360:0x364], l.Regs[0xf0:0xf4])
	}
	check("events", func() (any, error) { return c.Events() }, func(x any) error { e := x.(accel.Events); return c.SetEvents(&e) })
	check("mpstate", func() (any, error) { return c.MPState() }, func(x any) error { return c.SetMPState(x.(accel.MPState)) })
	check("debugregs", func() (any, error) { return c.DebugRegs() }, func(x any) error { d := x.(accel.DebugRegs); return c.SetDebugRegs(&d) })
	idx, err := c.MSRIndexList()
	if err != nil || len(idx) < 20 {
		t.Fatalf("MSR index list: %v (%d entries)", err, len(idx))
	}
	noTSC := idx[:0:0]
	for _, m := range idx {
		if m != 0x10 { // the TSC moves on between reads
			noTSC = append(noTSC, m)
		}
	}
	check("msrs", func() (any, error) { return c.MSRs(noTSC) }, func(x any) error { return c.SetMSRs(x.([]accel.MSR)) })
	if err := c.SetMSRs([]accel.MSR{{Index: 0x277, Value: 0x0007040600070406}, {Index: 0xC0000081, Value: 0x0023001000000000}}); err != nil {
		t.Fatal(err)
	}
	ms, err := c.MSRs([]uint32{0x277, 0xC0000081})
	if err != nil || ms[0].Value != 0x0007040600070406 || ms[1].Value != 0x0023001000000000 {
		t.Errorf("MSRs read back %+v, %v", ms, err)
	}
	if _, err := c.MSRs([]uint32{0x12345}); err == nil || !strings.Contains(err.Error(), "0x12345") {
		t.Errorf("unknown MSR: err %v", err)
	}
	// A non-trivial events state: an injected exception with error code,
	// interrupt shadow and NMI masked.
	var ev accel.Events
	ev.Exception.Injected, ev.Exception.Nr, ev.Exception.HasErrorCode, ev.Exception.ErrorCode = true, 13, true, 0x18
	ev.Interrupt.Shadow, ev.NMI.Masked = 1, true
	if err := c.SetEvents(&ev); err != nil {
		t.Fatal(err)
	}
	got, err := c.Events()
	if err != nil || fmt.Sprint(got) != fmt.Sprint(ev) {
		t.Errorf("events: got %+v (%v), want %+v", got, err, ev)
	}
}

// longMode puts the vCPU in 64-bit mode with identity-mapped 2 MiB pages
// for the first 2 MiB and for the 2 MiB at 0x40000000 (unmapped: MMIO).
func (m *machine) longMode(t *testing.T, rip uint64) {
	t.Helper()
	put := func(a uint64, v uint64) {
		for i := 0; i < 8; i++ {
			m.mem[a+uint64(i)] = byte(v >> (8 * i))
		}
	}
	put(0x10000, 0x11000|3)
	put(0x11000, 0x12000|3)
	put(0x11008, 0x13000|3)
	put(0x12000, 0x83)
	put(0x13000, 0x40000000|0x83)
	s, err := m.cpu.Sregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS = accel.Segment{Selector: 8, Limit: 0xffffffff, Type: 0xb, Present: true, S: true, L: true, G: true}
	data := accel.Segment{Selector: 0x10, Limit: 0xffffffff, Type: 0x3, Present: true, S: true, DB: true, G: true}
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = accel.Segment{Selector: 0x18, Limit: 0x67, Type: 0xb, Present: true}
	s.LDT = accel.Segment{Unusable: true}
	s.CR0, s.CR3, s.CR4, s.EFER = 0x80000031, 0x10000, 0x620, 0x500
	if err := m.cpu.SetSregs(&s); err != nil {
		t.Fatal(err)
	}
}

// mmioGuest64 exercises MMIO instruction forms in 64-bit mode. KVM
// retires stores before it exits, so the simulator has to find each
// store's start: plain, REP STOS and REP MOVS (one element per exit) and
// a 16-byte SSE store (two 8-byte KVM exits).
var mmioGuest64 = []byte{
	0x49, 0xB8, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, // mov r8, 0x40000000
	0x41, 0xC7, 0x00, 0x44, 0x33, 0x22, 0x11, // mov dword [r8], 0x11223344
	0x49, 0x89, 0x58, 0x08, // mov [r8+8], rbx
	0x41, 0x8B, 0x48, 0x10, // mov ecx, [r8+0x10]
	0x49, 0x0F, 0xBE, 0x50, 0x18, // movsx rdx, byte [r8+0x18]
	0x41, 0x87, 0x58, 0x20, // xchg [r8+0x20], ebx
	0x49, 0x8D, 0x78, 0x40, // lea rdi, [r8+0x40]
	0xB9, 0x02, 0x00, 0x00, 0x00, // mov ecx, 2
	0xB8, 0xEF, 0xBE, 0xAD, 0xDE, // mov eax, 0xdeadbeef
	0xF3, 0xAB, // rep stosd
	0xBE, 0x00, 0x30, 0x00, 0x00, // mov esi, 0x3000
	0x49, 0x8D, 0x78, 0x50, // lea rdi, [r8+0x50]
	0xB9, 0x04, 0x00, 0x00, 0x00, // mov ecx, 4
	0xF3, 0xA4, // rep movsb
	0x41, 0x0F, 0x11, 0x40, 0x60, // movups [r8+0x60], xmm0
	0xE6, 0xF4, // out 0xf4, al
	0xEB, 0xFE, // jmp $
}

func TestSimMMIO64(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: mshvsim.DefaultEAGAINEvery}, 0x100000)
	copy(m.mem[0x1000:], mmioGuest64)
	copy(m.mem[0x3000:], "ABCD")
	m.longMode(t, 0x1000)
	if err := m.cpu.SetRegs(&accel.Regs{RIP: 0x1000, RFLAGS: 2, RSP: 0x8000, RBX: 0x0102030405060708}); err != nil {
		t.Fatal(err)
	}
	f, err := m.cpu.FPU()
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.XMM[0] {
		f.XMM[0][i] = byte(0xa0 + i)
	}
	f.MXCSR = 0x1f80
	if err := m.cpu.SetFPU(&f); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{mmio: map[uint64][]byte{0x40000010: {0x88, 0x77, 0x66, 0x55}, 0x40000018: {0x80}, 0x40000020: {0xdd, 0xcc, 0xbb, 0xaa}}}
	rec.onOut = func(port uint16, data []byte) { m.cpu.Kick() }
	e, err := m.run(t, rec)
	if err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("exit %+v %v; log:\n%s", e, err, strings.Join(rec.log, "\n"))
	}
	want := []string{
		"mmio-write 0x40000000 44 33 22 11",
		"mmio-write 0x40000008 08 07 06 05 04 03 02 01",
		"mmio-read 0x40000010 4",
		"mmio-read 0x40000018 1",
		"mmio-read 0x40000020 4", "mmio-write 0x40000020 08 07 06 05",
		"mmio-write 0x40000040 ef be ad de", "mmio-write 0x40000044 ef be ad de",
		"mmio-write 0x40000050 41", "mmio-write 0x40000051 42", "mmio-write 0x40000052 43", "mmio-write 0x40000053 44",
		"mmio-write 0x40000060 a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af",
		"out 0xf4 ef",
	}
	if got := strings.Join(rec.log, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("accesses:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	r, err := m.cpu.Regs()
	if err != nil {
		t.Fatal(err)
	}
	if r.RBX != 0xaabbccdd || r.RDX != 0xffffffffffffff80 || r.RCX != 0 || r.RSI != 0x3004 || r.RDI != 0x40000054 ||
		r.RIP != uint64(0x1000+len(mmioGuest64)-2) {
		t.Errorf("registers: %+v", r)
	}
}

// TestSimDirtyAndClock writes pages from a guest with dirty tracking on and
// checks the GPAP-based bitmap, then the clock and pause/resume.
func TestSimDirtyAndClock(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: 6}, 0x10000)
	// Write a byte to pages 3, 5 and 9, then out 0xf4.
	copy(m.mem[0x1000:], []byte{
		0xC6, 0x06, 0x00, 0x30, 0x01, // mov byte [0x3000], 1
		0xC6, 0x06, 0x10, 0x50, 0x01, // mov byte [0x5010], 1
		0xC6, 0x06, 0xFF, 0x9F, 0x01, // mov byte [0x9fff], 1
		0xE6, 0xF4, 0xEB, 0xFE,
	})
	m.realMode(t, 0x1000)
	if err := m.vm.EnableDirtyLog(); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) { m.cpu.Kick() }
	if e, err := m.run(t, rec); err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("run: %+v %v", e, err)
	}
	bm, err := m.vm.DirtyLog(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(bm) != 1 {
		t.Fatalf("bitmap of %d words for 16 pages", len(bm))
	}
	// The guest's stack and code pages may be dirty too; the three it
	// wrote must be.
	for _, p := range []uint{3, 5, 9} {
		if bm[0]>>p&1 == 0 {
			t.Errorf("page %d not dirty: bitmap %#x", p, bm[0])
		}
	}
	if bm[0]>>4&1 != 0 || bm[0]>>6&1 != 0 {
		t.Errorf("untouched pages dirty: bitmap %#x", bm[0])
	}
	again, err := m.vm.DirtyLog(0)
	if err != nil || again[0]>>3&1 != 0 {
		t.Errorf("dirty bits not cleared by the first read: %#x %v", again, err)
	}
	if err := m.vm.DisableDirtyLog(); err != nil {
		t.Fatal(err)
	}

	c1, err := m.vm.Clock()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.vm.SetClock(c1 + 5_000_000_000); err != nil {
		t.Fatal(err)
	}
	c2, err := m.vm.Clock()
	if err != nil || c2 < c1+5_000_000_000 {
		t.Errorf("clock after SetClock(+5s): %d -> %d (%v)", c1, c2, err)
	}
	if err := m.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := m.vm.Resume(); err != nil {
		t.Fatal(err)
	}
}

// TestSimCapsProbing: the backend's capability probes against the
// mainline kernel (drivers/hv/mshv_root_main.c: no v2 payload, no
// MSHV_ROOT_HVCALL on /dev/mshv, no GET_PARTITION_PROPERTY_EX) and
// against a later one with all three; the partition works on both.
func TestSimCapsProbing(t *testing.T) {
	for _, c := range []struct {
		name  string
		opts  mshvsim.Options
		later bool
	}{{"mainline", mshvsim.Options{}, false}, {"next", mshvsim.Options{V2: true, SelfHvcall: true, PropertyEx: true, Scrub: true}, true}} {
		t.Run(c.name, func(t *testing.T) {
			_, acc := openSim(t, c.opts)
			caps, err := acc.Caps()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"CREATE_PARTITION_V2", "SELF_PARTITION_PROPERTY", "GET_PARTITION_PROPERTY_EX"} {
				if caps.Has(name) != c.later {
					t.Errorf("%s: %v, want %v", name, caps.Has(name), c.later)
				}
			}
			if caps.Accel != "mshv" || !caps.Has("VP_REGISTER_PAGE") || caps.Has("PIO_IOEVENTFD") {
				t.Errorf("caps: %+v", caps)
			}
			vm, err := acc.NewVM(accel.VMConfig{NumVCPUs: 1})
			if err != nil {
				t.Fatal(err)
			}
			if vm.V2 != c.later {
				t.Errorf("partition created with v2=%v", vm.V2)
			}
			vm.Close()
		})
	}
}

func TestSimCapsAndCPUID(t *testing.T) {
	sim, acc := openSim(t, mshvsim.Options{})
	ids, err := acc.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	leaf0, leaf1 := cpuidLeaf(ids, 0), cpuidLeaf(ids, 1)
	if leaf0 == nil || leaf1 == nil || leaf0.EAX < 1 || leaf1.EDX&1 == 0 {
		t.Fatalf("supported CPUID lacks sane leaves 0 and 1: %+v", ids)
	}
	// The CPU model reaches the guest through CPUID overrides: clear CX16
	// (leaf 1 ECX bit 13) and have the guest report leaf 1 ECX.
	model := append([]accel.CPUIDEntry(nil), ids...)
	for i := range model {
		if model[i].Function == 1 {
			model[i].ECX &^= 1 << 13
		}
	}
	guest := []byte{
		0x66, 0xB8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
		0x0F, 0xA2, // cpuid
		0x66, 0x89, 0xC8, // mov eax, ecx
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0x66, 0xEF, // out dx, eax
		0xE6, 0xF4, 0xEB, 0xFE, // out 0xf4, al; jmp $
	}
	for _, cfg := range []struct {
		cpuid []accel.CPUIDEntry
		cx16  bool
	}{{nil, leaf1.ECX&(1<<13) != 0}, {model, false}} {
		m := newMachineOn(t, sim, acc, 0x10000, cfg.cpuid)
		ecx := outDword(t, m.runToF4(t, guest), 0, 0x3f8)
		if got := ecx&(1<<13) != 0; got != cfg.cx16 {
			t.Errorf("model given: %v: guest sees CX16 %v, want %v (ecx %#x)", cfg.cpuid != nil, got, cfg.cx16, ecx)
		}
	}
}

// BenchmarkSimPIOExit measures one port-I/O intercept round trip through
// the backend and mshvsim (guest: out 0x80, al in a loop at CPL0).
func BenchmarkSimPIOExit(b *testing.B) {
	loopExits(b, []byte{0xE6, 0x80, 0xEB, 0xFC}, 0, &countHandler{}) // out 0x80, al; jmp back
}

// BenchmarkSimMMIOWriteExit measures one MMIO write intercept round trip
// through the backend and mshvsim (guest: mov [moffs16], al in a loop at
// CPL0, into a page no memory backs). mshvsim recovers each write's
// instruction, which KVM retired before it exited.
func BenchmarkSimMMIOWriteExit(b *testing.B) {
	h := &countHandler{}
	h.mmio = func(addr uint64, d []byte) {
		if addr != 0x20000 {
			b.Fatalf("MMIO write at %#x, want 0x20000", addr)
		}
	}
	loopExits(b, []byte{0xA2, 0x00, 0x00, 0xEB, 0xFB}, 0x20000, h) // mov [0], al (DS at 0x20000, unbacked); jmp back
}

// loopExits runs a real-mode guest whose code (at 0x1000, with DS based at
// dsBase) loops on one exit, through the backend and mshvsim, until h has
// seen b.N port or MMIO writes.
func loopExits(b *testing.B, code []byte, dsBase uint64, h *countHandler) {
	kvmtest.Need(b)
	sim, err := mshvsim.New()
	if err != nil {
		b.Fatal(err)
	}
	acc, _ := mshv.Open(sim)
	defer acc.Close()
	vm, err := acc.NewVM(accel.VMConfig{NumVCPUs: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer vm.Close()
	mem, _ := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	defer unix.Munmap(mem)
	if err := vm.MapMemory(accel.MemoryRegion{Host: mem}); err != nil {
		b.Fatal(err)
	}
	cpu, err := vm.NewVCPU(0)
	if err != nil {
		b.Fatal(err)
	}
	defer cpu.Close()
	copy(mem[0x1000:], code)
	s, _ := cpu.Sregs()
	cs := accel.Segment{Limit: 0xffff, Type: 0xb, Present: true, S: true}
	data := accel.Segment{Limit: 0xffff, Type: 0x3, Present: true, S: true}
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS = cs, data, data, data, data, data
	s.DS.Base, s.DS.Selector = dsBase, uint16(dsBase>>4)
	s.CR0 = 0x10
	cpu.SetSregs(&s)
	cpu.SetRegs(&accel.Regs{RIP: 0x1000, RFLAGS: 2})
	n := 0
	count := func() {
		n++
		if n >= b.N {
			cpu.Kick()
		}
	}
	pio, mmio := h.f, h.mmio
	h.f = func(port uint16, d []byte) {
		if pio != nil {
			pio(port, d)
		}
		count()
	}
	h.mmio = func(addr uint64, d []byte) {
		if mmio != nil {
			mmio(addr, d)
		}
		count()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ResetTimer()
	if _, err := cpu.Run(h); err != nil {
		b.Fatal(err)
	}
}

type countHandler struct {
	f    func(uint16, []byte)
	mmio func(uint64, []byte)
}

func (c *countHandler) PIORead(port uint16, data []byte) {}
func (c *countHandler) PIOWrite(port uint16, data []byte) {
	if c.f != nil {
		c.f(port, data)
	}
}
func (c *countHandler) MMIORead(addr uint64, data []byte) {}
func (c *countHandler) MMIOWrite(addr uint64, data []byte) {
	if c.mmio != nil {
		c.mmio(addr, data)
	}
}

// TestSimHaltAndMSI: the guest halts with interrupts on (HLT is handled
// inside the "hypervisor", no exit) and an MSI injected with
// ASSERT_VIRTUAL_INTERRUPT wakes it into its real-mode handler.
func TestSimHaltAndMSI(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: 5}, 0x10000)
	copy(m.mem[0x1000:], []byte{
		0xE6, 0x81, // out 0x81, al (about to halt)
		0xFB, 0xF4, // sti; hlt
		0xE6, 0xF4, 0xEB, 0xFE, // out 0xf4, al; jmp $
	})
	copy(m.mem[0x1200:], []byte{0xB0, 0x55, 0xE6, 0x80, 0xCF}) // mov al, 0x55; out 0x80, al; iret
	m.mem[0x40*4], m.mem[0x40*4+1] = 0x00, 0x12                // IVT[0x40] = 0000:1200
	m.realMode(t, 0x1000)
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) {
		switch port {
		case 0x81:
			go func() {
				time.Sleep(20 * time.Millisecond)
				if err := m.vm.SignalMSI(accel.MSI{AddressLo: 0xfee00000, Data: 0x40}); err != nil {
					t.Errorf("SignalMSI: %v", err)
				}
			}()
		case 0xf4:
			m.cpu.Kick()
		}
	}
	e, err := m.run(t, rec)
	if err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("exit %+v %v", e, err)
	}
	if got := strings.Join(rec.log, ";"); got != "out 0x81 00;out 0x80 55;out 0xf4 55" {
		t.Errorf("accesses %q", got)
	}
}

// TestSimIRQFDAndIOEventFD: an MSI route plus irqfd wakes a halted guest,
// and an MMIO ioeventfd doorbell write signals its eventfd without a
// userspace access.
func TestSimIRQFDAndIOEventFD(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: 5}, 0x10000)
	copy(m.mem[0x1000:], []byte{
		0xB8, 0x00, 0xD0, // mov ax, 0xd000
		0x8E, 0xD8, // mov ds, ax
		0xC7, 0x06, 0x00, 0x00, 0x01, 0x00, // mov word [0], 1 (doorbell)
		0xE6, 0x81, // out 0x81, al
		0xFB, 0xF4, // sti; hlt
		0xE6, 0xF4, 0xEB, 0xFE, // out 0xf4, al; jmp $
	})
	copy(m.mem[0x1200:], []byte{0xB0, 0x66, 0xE6, 0x80, 0xCF})
	m.mem[0x41*4], m.mem[0x41*4+1] = 0x00, 0x12
	m.realMode(t, 0x1000)
	irq, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(irq)
	bell, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(bell)
	if err := m.vm.SetGSIRouting([]accel.Route{{GSI: 5, Kind: accel.RouteMSI, MSI: accel.MSI{AddressLo: 0xfee00000, Data: 0x41}}}); err != nil {
		t.Fatal(err)
	}
	if err := m.vm.AssignIRQFD(accel.IRQFD{FD: irq, GSI: 5, ResampleFD: -1}); err != nil {
		t.Fatal(err)
	}
	if err := m.vm.AssignIOEventFD(accel.IOEventFD{FD: bell, Addr: 0xd0000, Len: 2}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	rec.onOut = func(port uint16, data []byte) {
		switch port {
		case 0x81:
			go func() {
				time.Sleep(20 * time.Millisecond)
				unix.Write(irq, []byte{1, 0, 0, 0, 0, 0, 0, 0})
			}()
		case 0xf4:
			m.cpu.Kick()
		}
	}
	e, err := m.run(t, rec)
	if err != nil || e.Reason != accel.ExitInterrupted {
		t.Fatalf("exit %+v %v", e, err)
	}
	if got := strings.Join(rec.log, ";"); got != "out 0x81 00;out 0x80 66;out 0xf4 66" {
		t.Errorf("accesses %q (the doorbell write must not reach userspace)", got)
	}
	var cnt [8]byte
	if n, err := unix.Read(bell, cnt[:]); n != 8 || err != nil || cnt[0] != 1 {
		t.Errorf("doorbell eventfd: %d %v % x", n, err, cnt)
	}
	if err := m.vm.DeassignIOEventFD(accel.IOEventFD{FD: bell, Addr: 0xd0000, Len: 2}); err != nil {
		t.Error(err)
	}
	if err := m.vm.DeassignIRQFD(accel.IRQFD{FD: irq, GSI: 5, ResampleFD: -1}); err != nil {
		t.Error(err)
	}
}

// TestSimSynICRoundTrip: the SynIC pages and synthetic timers set through
// MSHV_SET_VP_STATE come back unchanged.
func TestSimSynICRoundTrip(t *testing.T) {
	m := newMachine(t, mshvsim.Options{EAGAINEvery: 3}, 0x10000)
	c := m.cpu
	var s accel.SynIC
	s.MessagePage = make([]byte, 4096)
	s.EventFlagsPage = make([]byte, 4096)
	for i := range s.MessagePage {
		s.MessagePage[i] = byte(i * 7)
		s.EventFlagsPage[i] = byte(i * 13)
	}
	s.Timers[1] = accel.STimer{Config: 0x30001, Count: 12345, Adjustment: 7, UndeliveredExpTime: 99, UndeliveredMessagePending: true}
	if !s.InUse() {
		t.Fatal("InUse: false for a used SynIC")
	}
	if err := c.SetSynIC(&s); err != nil {
		t.Fatal(err)
	}
	got, err := c.SynIC()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", s) {
		t.Fatalf("SynIC does not round-trip:\n got %+v\nwant %+v", got.Timers, s.Timers)
	}
	if (&accel.SynIC{MessagePage: make([]byte, 4096)}).InUse() {
		t.Fatal("InUse: true for an untouched SynIC")
	}
}

// TestSimHypervInterface: the hypervisor's own CPUID leaves reach the
// guest and the supported CPUID (so snapshots record them), and the
// synthetic MSRs they promise work: the guest writes its OS ID, and the
// VMM reads it back as the backend's MSR 0x40000000.
func TestSimHypervInterface(t *testing.T) {
	sim, acc := openSim(t, mshvsim.Options{})
	ids, err := acc.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	vendor, features := cpuidLeaf(ids, 0x40000000), cpuidLeaf(ids, 0x40000003)
	if vendor == nil || features == nil || vendor.EAX < 0x40000005 || vendor.EBX != 0x7263694d || features.EAX&(1<<9) == 0 {
		t.Fatalf("supported CPUID lacks Hyper-V's leaves with the reference TSC page: vendor %+v features %+v", vendor, features)
	}
	m := newMachineOn(t, sim, acc, 0x10000, ids)
	rec := m.runToF4(t, []byte{
		0x66, 0xB8, 0x03, 0x00, 0x00, 0x40, // mov eax, 0x40000003
		0x0F, 0xA2, // cpuid
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0x66, 0xEF, // out dx, eax
		0x66, 0xB9, 0x00, 0x00, 0x00, 0x40, // mov ecx, 0x40000000 (HV_X64_MSR_GUEST_OS_ID)
		0x66, 0xB8, 0x34, 0x12, 0x00, 0x00, // mov eax, 0x1234
		0x66, 0x31, 0xD2, // xor edx, edx
		0x0F, 0x30, // wrmsr
		0xE6, 0xF4, 0xEB, 0xFE, // out 0xf4, al; jmp $
	})
	if eax := outDword(t, rec, 0, 0x3f8); eax != features.EAX {
		t.Errorf("guest reads leaf 0x40000003 EAX %#x, want %#x", eax, features.EAX)
	}
	got, err := m.cpu.MSRs([]uint32{0x40000000})
	if err != nil || len(got) != 1 || got[0].Value != 0x1234 {
		t.Errorf("guest OS ID after the guest's WRMSR: %+v %v, want 0x1234", got, err)
	}
	// The reference TSC page MSR round-trips through the VMM.
	if err := m.cpu.SetMSRs([]accel.MSR{{Index: 0x40000021, Value: 0x5000 | 1}}); err != nil {
		t.Fatal(err)
	}
	if got, err := m.cpu.MSRs([]uint32{0x40000021}); err != nil || len(got) != 1 || got[0].Value != 0x5001 {
		t.Errorf("REFERENCE_TSC: %+v %v, want 0x5001", got, err)
	}
}
