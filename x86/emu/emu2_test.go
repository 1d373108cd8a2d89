package emu

import (
	"errors"

	"strings"
	"testing"
)

func TestStrings(t *testing.T) {
	runCases(t, []regCase{
		{name: "movsb ram->mmio", code: "a4", setup: with(reg(RSI, 0x9000), reg(RDI, modelMMIO+1), func(m *model) { m.ram[0x9000] = 0x7e }),
			mmio: map[int]string{1: "7e"}, regs: map[int]uint64{RSI: 0x9001, RDI: modelMMIO + 2}},
		{name: "rep movsd mmio->ram", code: "f3a5", setup: with(reg(RSI, modelMMIO), reg(RDI, 0x9000), reg(RCX, 3), mmioBytes(0, "010000000200000003000000")),
			regs: map[int]uint64{RCX: 0, RSI: modelMMIO + 12, RDI: 0x900c}},
		{name: "rep movsq DF=1", code: "f348a5", setup: with(reg(RSI, 0x9010), reg(RDI, modelMMIO+0x10), reg(RCX, 2), flags(flagDF), func(m *model) {
			m.put64(0x9010, 0x1111)
			m.put64(0x9008, 0x2222)
		}), mmio: map[int]string{0x08: "2222000000000000 1111000000000000"}, regs: map[int]uint64{RCX: 0, RSI: 0x9000, RDI: modelMMIO}},
		{name: "rep stosw", code: "f366ab", setup: with(reg(RDI, modelMMIO), reg(RCX, 3), reg(RAX, 0xabcd)),
			mmio: map[int]string{0: "cdabcdabcdab0000"}, regs: map[int]uint64{RCX: 0, RDI: modelMMIO + 6}},
		{name: "rep stos count 0", code: "f3aa", setup: with(reg(RDI, modelMMIO), reg(RCX, 0), reg(RAX, 1)), mmio: map[int]string{0: "00"}},
		{name: "stosd addr32 wraps edi", code: "67ab", setup: with(reg(RDI, 0x1_0000_9000), reg(RAX, 0x01020304)), regs: map[int]uint64{RDI: 0x9004}},
		{name: "lodsb", code: "ac", setup: with(reg(RSI, modelMMIO), reg(RAX, 0xffff), mmioBytes(0, "12")), regs: map[int]uint64{RAX: 0xff12, RSI: modelMMIO + 1}},
		{name: "lodsq seg fs", code: "6448ad", setup: with(reg(RSI, 8), mmioBytes(8, "0807060504030201"), func(m *model) { m.segs[FS].Base = modelMMIO }), regs: map[int]uint64{RAX: 0x0102030405060708}},
		{name: "repe cmpsb stops at difference", code: "f3a6", setup: with(reg(RSI, modelMMIO), reg(RDI, modelMMIO+0x10), reg(RCX, 8), mmioBytes(0, "01020304"), mmioBytes(0x10, "01020399")),
			regs: map[int]uint64{RCX: 4, RSI: modelMMIO + 4, RDI: modelMMIO + 0x14}, flags: flagCF | flagAF, flagMask: flagsArith},
		{name: "repne scasb finds byte", code: "f2ae", setup: with(reg(RDI, modelMMIO), reg(RCX, 10), reg(RAX, 0x33), mmioBytes(0, "11223344")),
			regs: map[int]uint64{RCX: 7, RDI: modelMMIO + 3}, flags: flagZF | flagPF, flagMask: flagsArith},
		{name: "scasd", code: "af", setup: with(reg(RDI, modelMMIO), reg(RAX, 1), mmioBytes(0, "02000000")), regs: map[int]uint64{RDI: modelMMIO + 4}, flags: flagCF | flagSF | flagAF | flagPF, flagMask: flagsArith},
		{name: "16-bit rep movsb uses cx/si/di", mode: "16", code: "f3a4", setup: func(m *model) {
			m.segs[ES].Base = modelMMIO - 0xe000
			m.regs[RSI], m.regs[RDI], m.regs[RCX] = 0x9000, 0xfffe, 0x10002
			copy(m.ram[0x9000:], "ab")
		}, mmio: map[int]string{0x1ffe: "6162"}, regs: map[int]uint64{RCX: 0x10000, RSI: 0x9002, RDI: 0x0000}},
	})
}

func TestRepResume(t *testing.T) {
	m := newMode("64")
	m.regs[RDI], m.regs[RCX], m.regs[RAX] = modelMMIO, 10, 0x5a
	code := mustHex("f3aa")
	copy(m.ram[testRIP:], code)
	e := New(m)
	e.MaxRepeat = 4
	steps := 0
	for m.rip == testRIP {
		if err := e.Step(code); err != nil {
			t.Fatal(err)
		}
		steps++
		if steps > 10 {
			t.Fatal("rep stos does not finish")
		}
	}
	if steps != 3 || m.regs[RCX] != 0 || m.regs[RDI] != modelMMIO+10 || m.mmioW != 10 {
		t.Errorf("steps %d rcx %d rdi %#x writes %d", steps, m.regs[RCX], m.regs[RDI], m.mmioW)
	}
	// A fault in the middle keeps the progress and leaves RIP.
	m = newMode("64")
	m.put64(ptPT+0x10*8, 0) // 0x210000 not present
	m.regs[RSI], m.regs[RDI], m.regs[RCX] = 0x20fff8, modelMMIO, 4
	err := step(t, m, "f348a5")
	var f *Fault
	if !errors.As(err, &f) || f.Vector != VectorPF || f.CR2 != 0x210000 || f.ErrorCode != 0 {
		t.Fatalf("err %v", err)
	}
	if m.rip != testRIP || m.regs[RCX] != 3 || m.regs[RSI] != 0x210000 || m.regs[RDI] != modelMMIO+8 {
		t.Errorf("after fault: rip %#x rcx %d rsi %#x rdi %#x", m.rip, m.regs[RCX], m.regs[RSI], m.regs[RDI])
	}
}

// TestLockedAccess checks that LOCK forms (and XCHG with memory) are one
// read and one write of the operand size at one address, inside one
// LockBus/UnlockBus pair, and that other forms do not lock.
func TestLockedAccess(t *testing.T) {
	for _, c := range []struct {
		code   string
		locked bool
		log    string
	}{
		{"f00903", true, "r 0xc0000000 4;w 0xc0000000 01 00 00 00"},
		{"f0480fb10b", true, "r 0xc0000000 8;w 0xc0000000 00 00 00 00 00 00 00 00"},
		{"8703", true, "r 0xc0000000 4;w 0xc0000000 01 00 00 00"},
		{"f00fc70b", true, "r 0xc0000000 8;w 0xc0000000 00 00 00 00 00 00 00 00"}, // unequal: written back
		{"0903", false, "r 0xc0000000 4;w 0xc0000000 01 00 00 00"},
		{"3903", false, "r 0xc0000000 4"},
	} {
		m := newMode("64")
		m.regs[RBX], m.regs[RAX], m.regs[RCX] = modelMMIO, 1, 0
		if err := step(t, m, c.code); err != nil {
			t.Fatalf("%s: %v", c.code, err)
		}
		if (m.lockCalls == 1) != c.locked || m.locked != 0 {
			t.Errorf("%s: %d LockBus calls, balance %d", c.code, m.lockCalls, m.locked)
		}
		if got := strings.Join(m.accesses, ";"); got != c.log {
			t.Errorf("%s: device saw %q, want %q", c.code, got, c.log)
		}
	}
}

// TestRepCmpsFault: a fault in the middle of REPE CMPS keeps the progress
// of the completed iterations but restores the flags the instruction
// started with, as the CPU does (confirmed by the differential test).
func TestRepCmpsFault(t *testing.T) {
	m := newMode("64")
	m.put64(ptPT+0x10*8, 0) // 0x210000 not present
	m.regs[RSI], m.regs[RDI], m.regs[RCX] = 0x20fffe, 0x9000, 5
	copy(m.ram[0x20fffe:], "ab")
	copy(m.ram[0x9000:], "ab")
	m.rflags = 2 | flagCF | flagSF
	err := step(t, m, "f3a6")
	var f *Fault
	if !errors.As(err, &f) || f.Vector != VectorPF || f.CR2 != 0x210000 {
		t.Fatalf("err %v", err)
	}
	if m.regs[RCX] != 3 || m.regs[RSI] != 0x210000 || m.regs[RDI] != 0x9002 || m.rflags != 2|flagCF|flagSF {
		t.Errorf("rcx %d rsi %#x rdi %#x rflags %#x", m.regs[RCX], m.regs[RSI], m.regs[RDI], m.rflags)
	}
}

func TestIO(t *testing.T) {
	m := newMode("64")
	m.ports[0x60] = 0xfa
	m.regs[RAX] = 0xffffffffffffffff
	if err := step(t, m, "e460"); err != nil || m.regs[RAX] != 0xffffffffffffffFa {
		t.Fatalf("in al,0x60: %v rax %#x", err, m.regs[RAX])
	}
	m = newMode("64")
	m.regs[RDX], m.regs[RAX] = 0xcfc, 0xffffffffaabbccdd
	if err := step(t, m, "ef"); err != nil || strings.Join(m.pioLog, ";") != "out 0xcfc dd cc bb aa" {
		t.Fatalf("out dx,eax: %v %v", err, m.pioLog)
	}
	m = newMode("64")
	m.regs[RDX] = 0x1f0
	m.ports[0x1f0], m.ports[0x1f1] = 0x34, 0x12
	m.regs[RAX] = 0xffffffffffffffff
	if err := step(t, m, "66ed"); err != nil || m.regs[RAX] != 0xffffffffffff1234 {
		t.Fatalf("in ax,dx: %v rax %#x", err, m.regs[RAX])
	}
	m = newMode("64")
	m.regs[RDX], m.regs[RDI], m.regs[RCX] = 0x1f0, 0x9000, 3
	m.ports[0x1f0], m.ports[0x1f1] = 0x34, 0x12
	if err := step(t, m, "f3666d"); err != nil || m.regs[RDI] != 0x9006 || string(m.ram[0x9000:0x9006]) != "\x34\x12\x34\x12\x34\x12" {
		t.Fatalf("rep insw: %v rdi %#x", err, m.regs[RDI])
	}
	m = newMode("64")
	m.regs[RDX], m.regs[RSI], m.regs[RCX] = 0x3f8, 0x9000, 2
	copy(m.ram[0x9000:], "hi")
	if err := step(t, m, "f36e"); err != nil || strings.Join(m.pioLog, ";") != "out 0x3f8 68;out 0x3f8 69" || m.regs[RCX] != 0 {
		t.Fatalf("rep outsb: %v %v", err, m.pioLog)
	}
	// CPL3 with IOPL 0: the TSS bitmap decides.
	m = newMode("64u")
	m.put64(ptPD0, 0|1|2|4|0x80)
	m.segs[TR].Limit = 0x2000
	m.ram[0x8066], m.ram[0x8067] = 0x00, 0x10 // bitmap at TSS+0x1000
	m.ram[0x9000+0x80/8] = 0x01               // port 0x80 denied, 0x81 allowed
	m.regs[RAX] = 1
	if err := step(t, m, "e681"); err != nil {
		t.Fatalf("out 0x81 allowed by bitmap: %v", err)
	}
	err := step(t, m, "e680")
	var f *Fault
	if !errors.As(err, &f) || f.Vector != VectorGP {
		t.Fatalf("out 0x80 denied by bitmap: %v", err)
	}
	m.rflags |= 3 << 12 // IOPL 3
	if err := step(t, m, "e680"); err != nil {
		t.Fatalf("out with IOPL 3: %v", err)
	}
}

func TestPortIO(t *testing.T) {
	m := newMode("64")
	m.regs[RAX] = 0x41
	e := New(m)
	if err := e.PortIO(IO{Port: 0x3f8, Size: 1, InsnLen: 2}); err != nil || m.rip != testRIP+2 || m.ports[0x3f8] != 0x41 {
		t.Fatalf("scalar out: %v rip %#x", err, m.rip)
	}
	m.rip = testRIP
	m.regs[RDI], m.regs[RCX], m.regs[RDX] = 0x9000, 4, 0x1234
	m.ports[0x1234] = 7
	if err := e.PortIO(IO{Port: 0x1234, Size: 1, In: true, String: true, Rep: true, InsnLen: 2}); err != nil || m.regs[RCX] != 0 || m.ram[0x9003] != 7 {
		t.Fatalf("rep insb: %v", err)
	}
	m.rip = testRIP
	copy(m.ram[testRIP:], mustHex("66ed"))
	m.regs[RDX] = 0x10
	if err := e.PortIO(IO{Port: 0x10, Size: 2, In: true, InsnLen: 2, Insn: mustHex("66ed")}); err != nil || m.rip != testRIP+2 {
		t.Fatalf("with bytes: %v", err)
	}
	m.rip = testRIP
	if err := e.PortIO(IO{Port: 0x10, Size: 2, In: false, InsnLen: 2, Insn: mustHex("66ed")}); err == nil {
		t.Fatal("mismatched direction accepted")
	}
	if err := e.PortIO(IO{Port: 0x10, Size: 3, InsnLen: 1}); err == nil {
		t.Fatal("size 3 accepted")
	}
}

func TestSSE(t *testing.T) {
	pattern := func(m *model) {
		for i := 0; i < 32; i++ {
			m.vec[1][i] = byte(0x10 + i)
			m.vec[2][i] = 0xee
		}
		for i := 0; i < 32; i++ {
			m.mmio[0x40+i] = byte(0xa0 + i)
		}
		m.regs[RBX] = modelMMIO + 0x40
	}
	type vc struct {
		code   string
		mmio   string // expected mmio at 0x40 (stores)
		vec2   string // expected xmm2/ymm2 bytes (loads), 32 bytes
		fault  int
		setup  func(m *model)
		noteUD bool
	}
	ee16 := strings.Repeat("ee", 16)
	load16 := "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
	load32 := load16 + "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
	x1 := "101112131415161718191a1b1c1d1e1f"
	y1 := x1 + "202122232425262728292a2b2c2d2e2f"
	zero16 := strings.Repeat("00", 16)
	cases := []vc{
		{code: "660f6f13", vec2: load16 + ee16},                                                    // movdqa xmm2,[rbx]
		{code: "f30f6f13", vec2: load16 + ee16},                                                    // movdqu
		{code: "0f2813", vec2: load16 + ee16},                                                      // movaps
		{code: "0f1013", vec2: load16 + ee16},                                                      // movups
		{code: "660f7f0b", mmio: x1},                                                               // movdqa [rbx],xmm1
		{code: "f30f7f0b", mmio: x1},                                                               // movdqu
		{code: "0f290b", mmio: x1},                                                                 // movaps
		{code: "0f110b", mmio: x1},                                                                 // movups
		{code: "660fe70b", mmio: x1},                                                               // movntdq
		{code: "0f2b0b", mmio: x1},                                                                 // movntps
		{code: "660f6e13", vec2: "a0a1a2a3" + strings.Repeat("00", 12) + ee16},                     // movd xmm2,[rbx]
		{code: "66480f6e13", vec2: "a0a1a2a3a4a5a6a7" + strings.Repeat("00", 8) + ee16},            // movq xmm2,[rbx]
		{code: "660f7e0b", mmio: "10111213a4"},                                                     // movd [rbx],xmm1
		{code: "66480f7e0b", mmio: "1011121314151617a8"},                                           // movq [rbx],xmm1
		{code: "f30f7e13", vec2: "a0a1a2a3a4a5a6a7" + strings.Repeat("00", 8) + ee16},              // movq xmm2,[rbx]
		{code: "660fd60b", mmio: "1011121314151617a8"},                                             // movq [rbx],xmm1
		{code: "c5fa6f13", vec2: load16 + zero16},                                                  // vmovdqu xmm2,[rbx]
		{code: "c5fe6f13", vec2: load32},                                                           // vmovdqu ymm2,[rbx]
		{code: "c5fd6f13", vec2: load32, setup: func(m *model) { m.regs[RBX] = modelMMIO + 0x40 }}, // vmovdqa ymm2 (aligned 0x40)
		{code: "c5fe7f0b", mmio: y1},                                                               // vmovdqu [rbx],ymm1
		{code: "c5f97f0b", mmio: x1 + "b0"},                                                        // vmovdqa [rbx],xmm1
		{code: "c4e17e6f13", vec2: load32},                                                         // vmovdqu ymm2 (VEX3)
		{code: "c5f96e13", vec2: "a0a1a2a3" + strings.Repeat("00", 28)},                            // vmovd xmm2,[rbx]
		{code: "660f6f5301", fault: VectorGP + 1},                                                  // movdqa misaligned
		{code: "c5fd6f5310", fault: VectorGP + 1},                                                  // vmovdqa ymm misaligned (16)
		{code: "c5f16f13", fault: VectorUD + 1},                                                    // vvvv != 1111
		{code: "0f6f13", noteUD: true},                                                             // MMX movq: refused
		{code: "62f17e486f13", noteUD: true},                                                       // EVEX vmovdqu32 zmm: refused
		{code: "660f6f13", fault: VectorNM + 1, setup: func(m *model) { m.ctl[CR0] |= cr0TS }},
		{code: "660fd6ca", vec2: x1[:16] + strings.Repeat("00", 8) + ee16}, // movq xmm2,xmm1 (reg form)
		{code: "c5fd6fd1", vec2: y1},                                       // vmovdqa ymm2,ymm1
	}
	for _, c := range cases {
		m := newMode("64")
		pattern(m)
		if c.setup != nil {
			c.setup(m)
		}
		err := step(t, m, c.code)
		switch {
		case c.fault != 0:
			var f *Fault
			if !errors.As(err, &f) || int(f.Vector) != c.fault-1 {
				t.Errorf("%s: %v, want vector %d", c.code, err, c.fault-1)
			}
			continue
		case c.noteUD:
			var u *UnsupportedError
			if !errors.As(err, &u) {
				t.Errorf("%s: %v, want unsupported", c.code, err)
			} else {
				t.Logf("%s: %v", c.code, err)
			}
			continue
		case err != nil:
			t.Errorf("%s: %v", c.code, err)
			continue
		}
		if c.mmio != "" {
			want := mustHex(c.mmio)
			if got := m.mmio[0x40 : 0x40+len(want)]; string(got) != string(want) {
				t.Errorf("%s: mmio % x, want % x", c.code, got, want)
			}
		}
		if c.vec2 != "" {
			want := mustHex(c.vec2)
			if string(m.vec[2][:]) != string(want) {
				t.Errorf("%s: xmm2 % x, want % x", c.code, m.vec[2][:], want)
			}
		}
	}
}

func TestPaging(t *testing.T) {
	pf := func(err error) (uint32, uint64, bool) {
		var f *Fault
		if errors.As(err, &f) && f.Vector == VectorPF {
			return f.ErrorCode, f.CR2, true
		}
		return 0, 0, false
	}
	// Not present.
	m := newMode("64")
	m.put64(ptPT+0x3*8, 0)
	m.regs[RBX] = 0x203010
	if code, cr2, ok := pf(step(t, m, "8b03")); !ok || code != 0 || cr2 != 0x203010 {
		t.Errorf("not present: %#x %#x %v", code, cr2, ok)
	}
	// Read-only page: supervisor write with WP faults; without WP it works.
	m = newMode("64")
	m.put64(ptPT+0x3*8, 0x203000|1|4)
	m.regs[RBX] = 0x203010
	if code, _, ok := pf(step(t, m, "8903")); !ok || code != PFPresent|PFWrite {
		t.Errorf("wp write: %#x %v", code, ok)
	}
	m.ctl[CR0] &^= cr0WP
	if err := step(t, m, "8903"); err != nil {
		t.Errorf("write without WP: %v", err)
	}
	if m.get64(ptPT+0x3*8)&0x60 != 0x60 {
		t.Errorf("A/D not set: %#x", m.get64(ptPT+0x3*8))
	}
	// Accessed but not dirty on read.
	m = newMode("64")
	m.regs[RBX] = 0x204000
	if err := step(t, m, "8b03"); err != nil {
		t.Fatal(err)
	}
	if e := m.get64(ptPT + 4*8); e&0x60 != 0x20 {
		t.Errorf("read: pte %#x", e)
	}
	// User access to supervisor page.
	m = newMode("64u")
	m.put64(ptPD0, 0|1|2|4|0x80) // code page stays user
	m.put64(ptPT+0x5*8, 0x205000|1|2)
	m.regs[RBX] = 0x205000
	if code, _, ok := pf(step(t, m, "8b03")); !ok || code != PFPresent|PFUser {
		t.Errorf("user->supervisor: %#x %v", code, ok)
	}
	// SMAP: supervisor access to a user page faults unless RFLAGS.AC.
	m = newMode("64")
	m.ctl[CR4] |= cr4SMAP
	m.regs[RBX] = 0x205000
	if code, _, ok := pf(step(t, m, "8b03")); !ok || code != PFPresent {
		t.Errorf("smap: %#x %v", code, ok)
	}
	m.rflags |= flagAC
	if err := step(t, m, "8b03"); err != nil {
		t.Errorf("smap with AC: %v", err)
	}
	// Reserved bit.
	m = newMode("64")
	m.put64(ptPD0+8*1, ptPT|1|2|4|1<<51) // bit 51 is below 52 bits: fine
	m.put64(ptPD0, 0|1|2|4|0x80|1<<13)   // reserved bit in a 2 MiB page
	m.regs[RBX] = 0x1000
	if code, _, ok := pf(step(t, m, "8b03")); !ok || code&PFReserved == 0 {
		// The fetch of the code is not needed (bytes given), the data
		// access goes through the bad PDE.
		t.Errorf("reserved: %#x %v", code, ok)
	}
	// Non-canonical address: #GP, or #SS for a stack reference.
	m = newMode("64")
	m.regs[RBX] = 0x0000800000000000
	var f *Fault
	if err := step(t, m, "8b03"); !errors.As(err, &f) || f.Vector != VectorGP {
		t.Errorf("non-canonical: %v", err)
	}
	m.regs[RBP] = 0x0000800000000000
	if err := step(t, m, "8b4500"); !errors.As(err, &f) || f.Vector != VectorSS {
		t.Errorf("non-canonical stack: %v", err)
	}
	// #AC at CPL3 with CR0.AM and RFLAGS.AC.
	m = newMode("64u")
	m.put64(ptPD0, 0|1|2|4|0x80)
	m.ctl[CR0] |= cr0AM
	m.rflags |= flagAC
	m.regs[RBX] = 0x9001
	if err := step(t, m, "8b03"); !errors.As(err, &f) || f.Vector != VectorAC {
		t.Errorf("#AC: %v", err)
	}
	// A hint skips the walk.
	m = newMode("64")
	m.put64(ptPML4, 0) // nothing mapped
	m.regs[RBX] = 0x7000_0000_0010
	e := New(m)
	e.Hint(0x7000_0000_0000, modelMMIO)
	copy(m.ram[testRIP:], mustHex("8903"))
	m.regs[RAX] = 0x42
	if err := e.Step(mustHex("8903")); err != nil || m.mmio[0x10] != 0x42 {
		t.Errorf("hint: %v", err)
	}
	if err := e.Step(mustHex("8903")); err == nil {
		t.Errorf("hint used twice")
	}
}

func TestPagingModes(t *testing.T) {
	// 32-bit paging with a 4 MiB page and a 4 KiB page, and PAE.
	m := newMode("32")
	m.ctl[CR0] |= cr0PG
	m.ctl[CR3] = 0x1000
	m.ctl[CR4] |= cr4PSE
	put32 := func(a uint64, v uint32) {
		m.ram[a], m.ram[a+1], m.ram[a+2], m.ram[a+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	put32(0x1000, 0|0x83)                   // 0-4 MiB: large page
	put32(0x1000+0x300*4, 0xC000_0000|0x83) // 3 GiB: large page to MMIO
	put32(0x1000+0x100*4, 0x2000|3)         // 1 GiB: page table
	put32(0x2000+5*4, 0x9000|3)             // 0x40005000 -> 0x9000
	m.regs[RBX], m.regs[RAX] = 0xC000_0010, 0x77
	if err := step(t, m, "8903"); err != nil || m.mmio[0x10] != 0x77 {
		t.Fatalf("32-bit paging 4M: %v", err)
	}
	m.regs[RBX] = 0x4000_5008
	if err := step(t, m, "8903"); err != nil || m.ram[0x9008] != 0x77 {
		t.Fatalf("32-bit paging 4K: %v", err)
	}
	if m.ram[0x2000+5*4]&0x60 != 0x60 {
		t.Errorf("32-bit PTE A/D: %#x", m.ram[0x2000+5*4])
	}
	// PAE.
	m = newMode("32")
	m.ctl[CR0] |= cr0PG
	m.ctl[CR4] |= cr4PAE
	m.ctl[CR3] = 0x1000
	m.put64(0x1000, 0x2000|1)     // PDPTE 0
	m.put64(0x1000+3*8, 0x3000|1) // PDPTE 3
	m.put64(0x2000, 0|0x83)       // 0-2 MiB
	m.put64(0x3000, 0xC000_0000|0x83|1<<63)
	m.regs[RBX], m.regs[RAX] = 0xC000_0020, 0x99
	if err := step(t, m, "8903"); err == nil {
		t.Fatalf("PAE: NX bit without EFER.NXE accepted")
	}
	m.ctl[EFER] |= eferNXE
	if err := step(t, m, "8903"); err != nil || m.mmio[0x20] != 0x99 {
		t.Fatalf("PAE: %v", err)
	}
	// 5-level paging.
	m = newMode("64")
	m.ctl[CR4] |= cr4LA57
	m.put64(0x6000, ptPML4|7)
	m.ctl[CR3] = 0x6000
	m.regs[RBX], m.regs[RAX] = modelMMIO+0x30, 0x55
	if err := step(t, m, "8903"); err != nil || m.mmio[0x30] != 0x55 {
		t.Fatalf("LA57: %v", err)
	}
}

// TestPagingModeSwitch runs one Emulator first with 4-level paging (an NX
// leaf) and then with 32-bit paging and EFER.NXE set: the 4-byte entries
// of 32-bit paging must not pick up bits of earlier 8-byte entries.
func TestPagingModeSwitch(t *testing.T) {
	m := newMode("64")
	m.put64(ptPD0+8, ptPT|7)
	m.put64(ptPT+8*8, (0x208000)|3|1<<63)
	m.regs[RBX] = 0x208000
	e := New(m)
	code := mustHex("8b03")
	copy(m.ram[testRIP:], code)
	if err := e.Step(code); err != nil {
		t.Fatal(err)
	}
	// Now 32-bit paging, EFER.NXE still set.
	m.setProt32()
	m.ctl[CR0] |= cr0PG
	m.ctl[CR3] = 0x7000
	m.ctl[EFER] = eferNXE
	for i := uint64(0); i < 4; i++ {
		v := uint32(i<<22 | 0x83)
		m.ram[0x7000+i*4], m.ram[0x7001+i*4], m.ram[0x7002+i*4], m.ram[0x7003+i*4] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	m.rip = testRIP
	m.ctl[CR4] &^= cr4PAE
	m.ctl[CR4] |= cr4PSE
	if err := e.Step(code); err != nil {
		t.Fatalf("32-bit paging after 4-level: %v", err)
	}
	// An instruction fetch from that page must not see NX either.
	m.rip = testRIP
	if err := e.Step(code[:1]); err != nil {
		t.Fatalf("fetch under 32-bit paging: %v", err)
	}
}

func TestCrossing(t *testing.T) {
	// A dword store that crosses from RAM (last 2 bytes of RAM page
	// 0x3ffffe) into... use the 4 KiB area: 0x200ffe..0x201001 is RAM,
	// and map linear 0x201000 to MMIO instead.
	m := newMode("64")
	m.put64(ptPT+1*8, modelMMIO|3)
	m.regs[RBX], m.regs[RAX] = 0x200ffe, 0x44332211
	if err := step(t, m, "8903"); err != nil {
		t.Fatal(err)
	}
	if m.ram[0x200ffe] != 0x11 || m.ram[0x200fff] != 0x22 || m.mmio[0] != 0x33 || m.mmio[1] != 0x44 {
		t.Errorf("page-crossing store: ram % x mmio % x", m.ram[0x200ffe:0x201000], m.mmio[:2])
	}
	if strings.Join(m.accesses, ";") != "w 0xc0000000 33 44" {
		t.Errorf("device saw %v", m.accesses)
	}
	// Crossing into a not-present page faults before anything is written.
	m = newMode("64")
	m.put64(ptPT+1*8, 0)
	m.regs[RBX], m.regs[RAX] = 0x200ffe, 0x44332211
	var f *Fault
	if err := step(t, m, "8903"); !errors.As(err, &f) || f.CR2 != 0x201000 {
		t.Fatalf("crossing into not-present: %v", err)
	}
	if m.ram[0x200ffe] != 0 {
		t.Errorf("partial write before fault")
	}
	// Physical RAM->MMIO boundary inside one access (no paging, 32-bit):
	// RAM ends at a page boundary (accelerators map memory in whole
	// pages) and the store straddles it.
	m = newMode("32")
	m.ram = m.ram[:0x12000]
	m.mmioBase = 0x12000
	m.regs[RBX], m.regs[RAX] = 0x11ffe, 0xddccbbaa
	if err := step(t, m, "8903"); err != nil {
		t.Fatal(err)
	}
	if m.ram[0x11ffe] != 0xaa || m.ram[0x11fff] != 0xbb || m.mmio[0] != 0xcc || m.mmio[1] != 0xdd {
		t.Errorf("ram->mmio: ram % x mmio % x", m.ram[0x11ffe:0x12000], m.mmio[:2])
	}
}

func TestFetchAndErrors(t *testing.T) {
	// Only the first byte given: the rest is fetched from RAM at CS:RIP.
	m := newMode("64")
	code := mustHex("48c70310203040")
	copy(m.ram[testRIP:], code)
	m.regs[RBX] = modelMMIO
	if err := New(m).Step(code[:1]); err != nil || m.mmio64(0) != 0x40302010 || m.rip != testRIP+7 {
		t.Fatalf("fetch: %v rip %#x", err, m.rip)
	}
	// An instruction crossing into a page that is not RAM: ErrTruncated.
	m = newMode("64")
	m.put64(ptPT+1*8, modelMMIO|3)
	m.rip = 0x200ffe
	copy(m.ram[0x200ffe:], mustHex("48c7"))
	if err := New(m).Step(nil); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
	// Crossing into a not-present page: #PF for the fetch.
	m.put64(ptPT+1*8, 0)
	var f *Fault
	if err := New(m).Step(nil); !errors.As(err, &f) || f.Vector != VectorPF || f.ErrorCode&PFFetch == 0 {
		t.Fatalf("fetch fault: %v", err)
	}
	// Unsupported instructions are named.
	for _, c := range []struct{ code, name string }{
		{"0fa2", "cpuid"},
		{"f7 33", "div"},
		{"0f 01 d9", "vmmcall"},
		{"62 f1 7c 48 10 03", "vmovups"},
	} {
		m = newMode("64")
		err := step(t, m, c.code)
		var u *UnsupportedError
		if !errors.As(err, &u) || !strings.Contains(u.Error(), c.name) {
			t.Errorf("%s: %v, want unsupported %s", c.code, err, c.name)
		}
	}
	// Invalid encodings are #UD, too long is #GP.
	m = newMode("64")
	if err := step(t, m, "06"); !errors.As(err, &f) || f.Vector != VectorUD {
		t.Errorf("push es in 64-bit: %v", err)
	}
	if err := New(m).Step(mustHex("6666666666666666666666666666 8903")); !errors.As(err, &f) || f.Vector != VectorGP {
		t.Errorf("16-byte instruction: %v", err)
	}
	if m.setRegs != 0 {
		t.Errorf("registers written on failures")
	}

}
