package emu

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

const testRIP = 0x10000

// newMode returns a model in the named mode: "64" (CPL0), "64u" (CPL3),
// "32" (flat protected, no paging), "16" (real mode).
func newMode(mode string) *model {
	m := newModel()
	switch mode {
	case "64":
		m.setLong64(0)
	case "64u":
		m.setLong64(3)
	case "32":
		m.setProt32()
	case "16":
		m.setReal()
	default:
		panic(mode)
	}
	m.rip = testRIP
	m.log = true
	return m
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// step runs code (hex) at testRIP, giving the emulator all its bytes.
func step(t *testing.T, m *model, code string) error {
	t.Helper()
	b := mustHex(code)
	m.rip = testRIP
	copy(m.ram[testRIP:], b)
	err := New(m).Step(b)
	if len(m.oob) != 0 {
		t.Fatalf("%s: accesses outside the model: %v", code, m.oob)
	}
	if err == nil && m.rip != testRIP+uint64(len(b)) && m.ctl[CR0]&cr0PE != 0 {
		t.Errorf("%s: rip %#x, want %#x", code, m.rip, testRIP+uint64(len(b)))
	}
	return err
}

func (m *model) mmio64(off int) uint64 { return binary.LittleEndian.Uint64(m.mmio[off:]) }

func arith(f uint64) uint64 { return f & flagsArith }

type regCase struct {
	name  string
	mode  string
	code  string
	setup func(m *model)
	// want: registers, MMIO bytes, flags (when flagMask != 0).
	regs     map[int]uint64
	mmio     map[int]string // offset -> hex bytes
	flags    uint64
	flagMask uint64
	fault    int // expected vector + 1 (0: no fault)
}

func runCases(t *testing.T, cases []regCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mode := c.mode
			if mode == "" {
				mode = "64"
			}
			m := newMode(mode)
			if c.setup != nil {
				c.setup(m)
			}
			err := step(t, m, c.code)
			if c.fault != 0 {
				var f *Fault
				if !errors.As(err, &f) || int(f.Vector) != c.fault-1 {
					t.Fatalf("%s: err %v, want vector %d", c.code, err, c.fault-1)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v", c.code, err)
			}
			for r, v := range c.regs {
				if m.regs[r] != v {
					t.Errorf("%s: reg %d = %#x, want %#x", c.code, r, m.regs[r], v)
				}
			}
			for off, h := range c.mmio {
				want := mustHex(h)
				if got := m.mmio[off : off+len(want)]; string(got) != string(want) {
					t.Errorf("%s: mmio[%#x] = % x, want % x", c.code, off, got, want)
				}
			}
			if c.flagMask != 0 && m.rflags&c.flagMask != c.flags&c.flagMask {
				t.Errorf("%s: flags %#x, want %#x (mask %#x)", c.code, m.rflags&c.flagMask, c.flags&c.flagMask, c.flagMask)
			}
		})
	}
}

// rbxMMIO points RBX at the MMIO window plus off.
func rbxMMIO(off uint64) func(m *model) {
	return func(m *model) { m.regs[RBX] = modelMMIO + off }
}

func with(fs ...func(m *model)) func(m *model) {
	return func(m *model) {
		for _, f := range fs {
			f(m)
		}
	}
}

func reg(r int, v uint64) func(m *model) { return func(m *model) { m.regs[r] = v } }
func mmioBytes(off int, h string) func(m *model) {
	return func(m *model) { copy(m.mmio[off:], mustHex(h)) }
}
func flags(f uint64) func(m *model) { return func(m *model) { m.rflags = f | 2 } }

func TestMov(t *testing.T) {
	runCases(t, []regCase{
		{name: "mov [rbx],al", code: "8803", setup: with(rbxMMIO(0), reg(RAX, 0x1122334455667788)), mmio: map[int]string{0: "88 00"}},
		{name: "mov [rbx],ah", code: "8823", setup: with(rbxMMIO(0), reg(RAX, 0x1122334455667788)), mmio: map[int]string{0: "77 00"}},
		{name: "mov [rbx],spl", code: "408823", setup: with(rbxMMIO(0), reg(RSP, 0xabcd)), mmio: map[int]string{0: "cd 00"}},
		{name: "mov [rbx],ax", code: "668903", setup: with(rbxMMIO(0), reg(RAX, 0x1122334455667788)), mmio: map[int]string{0: "88 77 00"}},
		{name: "mov [rbx],eax", code: "8903", setup: with(rbxMMIO(0), reg(RAX, 0x1122334455667788)), mmio: map[int]string{0: "88 77 66 55 00"}},
		{name: "mov [rbx],rax", code: "488903", setup: with(rbxMMIO(0), reg(RAX, 0x1122334455667788)), mmio: map[int]string{0: "88 77 66 55 44 33 22 11"}},
		{name: "mov [r8+r9*4+0x10],r15d", code: "47897c8810", setup: with(reg(R8, modelMMIO), reg(R9, 2), reg(R15, 0xdeadbeef)), mmio: map[int]string{0x18: "ef be ad de"}},
		{name: "mov al,[rbx]", code: "8a03", setup: with(rbxMMIO(0), reg(RAX, 0xffffffffffffffff), mmioBytes(0, "5a")), regs: map[int]uint64{RAX: 0xffffffffffffff5a}},
		{name: "mov bh,[rbx]", code: "8a3b", setup: with(rbxMMIO(0), mmioBytes(0, "5a")), regs: map[int]uint64{RBX: modelMMIO | 0x5a00}},
		{name: "mov ax,[rbx]", code: "668b03", setup: with(rbxMMIO(0), reg(RAX, 0xffffffffffffffff), mmioBytes(0, "3412")), regs: map[int]uint64{RAX: 0xffffffffffff1234}},
		{name: "mov eax,[rbx] zero-extends", code: "8b03", setup: with(rbxMMIO(0), reg(RAX, 0xffffffffffffffff), mmioBytes(0, "78563412")), regs: map[int]uint64{RAX: 0x12345678}},
		{name: "mov rax,[rbx]", code: "488b03", setup: with(rbxMMIO(0), mmioBytes(0, "0102030405060708")), regs: map[int]uint64{RAX: 0x0807060504030201}},
		{name: "mov r12,[rip+disp]", code: "4c8b25f0ffffff", setup: func(m *model) {
			// rip-relative into RAM: next rip 0x10007 - 0x10 = 0xfff7
			binary.LittleEndian.PutUint64(m.ram[0xfff7:], 0xcafe)
		}, regs: map[int]uint64{R12: 0xcafe}},
		{name: "mov byte [rbx],imm8", code: "c60381", setup: rbxMMIO(4), mmio: map[int]string{4: "81"}},
		{name: "mov word [rbx],imm16", code: "66c7033412", setup: rbxMMIO(4), mmio: map[int]string{4: "3412"}},
		{name: "mov dword [rbx],imm32", code: "c70378563412", setup: rbxMMIO(4), mmio: map[int]string{4: "78563412"}},
		{name: "mov qword [rbx],simm32", code: "48c703feffffff", setup: rbxMMIO(8), mmio: map[int]string{8: "feffffffffffffff"}},
		{name: "mov al,moffs64", code: "a0000000c000000000", setup: mmioBytes(0, "99"), regs: map[int]uint64{RAX: 0x99}},
		{name: "mov moffs64,rax", code: "48a31000" + "00c000000000", setup: reg(RAX, 0x0102030405060708), mmio: map[int]string{0x10: "0807060504030201"}},
		{name: "mov eax,moffs32 (67)", code: "67a1000000c0", setup: mmioBytes(0, "44332211"), regs: map[int]uint64{RAX: 0x11223344}},
		{name: "mov ax,moffs64", code: "66a10000" + "00c000000000", setup: mmioBytes(0, "4433"), regs: map[int]uint64{RAX: 0x3344}},
		{name: "mov r9,imm64", code: "49b90807060504030201", regs: map[int]uint64{R9: 0x0102030405060708}},
		{name: "mov cl,imm8", code: "b1ff", setup: reg(RCX, 0x1200), regs: map[int]uint64{RCX: 0x12ff}},
		{name: "movzx eax,byte [rbx]", code: "0fb603", setup: with(rbxMMIO(0), reg(RAX, ^uint64(0)), mmioBytes(0, "f0")), regs: map[int]uint64{RAX: 0xf0}},
		{name: "movzx ax,byte [rbx]", code: "660fb603", setup: with(rbxMMIO(0), reg(RAX, ^uint64(0)), mmioBytes(0, "f0")), regs: map[int]uint64{RAX: 0xffffffffffff00f0}},
		{name: "movzx rax,word [rbx]", code: "480fb703", setup: with(rbxMMIO(0), reg(RAX, ^uint64(0)), mmioBytes(0, "f0ff")), regs: map[int]uint64{RAX: 0xfff0}},
		{name: "movsx eax,byte [rbx]", code: "0fbe03", setup: with(rbxMMIO(0), mmioBytes(0, "f0")), regs: map[int]uint64{RAX: 0xfffffff0}},
		{name: "movsx rax,word [rbx]", code: "480fbf03", setup: with(rbxMMIO(0), mmioBytes(0, "00f0")), regs: map[int]uint64{RAX: 0xfffffffffffff000}},
		{name: "movsx ax,byte [rbx]", code: "660fbe03", setup: with(rbxMMIO(0), reg(RAX, 0x1111111111111111), mmioBytes(0, "80")), regs: map[int]uint64{RAX: 0x111111111111ff80}},
		{name: "movsxd rax,[rbx]", code: "486303", setup: with(rbxMMIO(0), mmioBytes(0, "00000080")), regs: map[int]uint64{RAX: 0xffffffff80000000}},
		{name: "movbe eax,[rbx]", code: "0f38f003", setup: with(rbxMMIO(0), mmioBytes(0, "11223344")), regs: map[int]uint64{RAX: 0x11223344}},
		{name: "movbe [rbx],rcx", code: "480f38f10b", setup: with(rbxMMIO(0), reg(RCX, 0x0102030405060708)), mmio: map[int]string{0: "0102030405060708"}},
		{name: "movbe [rbx],cx", code: "660f38f10b", setup: with(rbxMMIO(0), reg(RCX, 0x0102)), mmio: map[int]string{0: "0102"}},
		{name: "movbe reg form is #UD", code: "0f38f0c3", fault: VectorUD + 1},
		{name: "movnti [rbx],eax", code: "0fc303", setup: with(rbxMMIO(0), reg(RAX, 0xaabbccdd)), mmio: map[int]string{0: "ddccbbaa"}},
		{name: "movnti [rbx],rax", code: "480fc303", setup: with(rbxMMIO(0), reg(RAX, 0x1122334455667788)), mmio: map[int]string{0: "8877665544332211"}},
		{name: "fs override", code: "64890425" + "10000000", setup: func(m *model) {
			m.segs[FS].Base = modelMMIO
			m.regs[RAX] = 0x55
		}, mmio: map[int]string{0x10: "55000000"}},
		{name: "ds override ignored in 64-bit", code: "3e8903", setup: with(rbxMMIO(0), reg(RAX, 7), func(m *model) { m.segs[DS].Base = 0x1000 }), mmio: map[int]string{0: "07"}},
		{name: "32-bit flat mov", mode: "32", code: "8903", setup: with(rbxMMIO(0), reg(RAX, 0x12345678)), mmio: map[int]string{0: "78563412"}},
		{name: "32-bit 66 mov", mode: "32", code: "668903", setup: with(rbxMMIO(0), reg(RAX, 0x12345678)), mmio: map[int]string{0: "7856 00"}},
		{name: "32-bit moffs", mode: "32", code: "a3100000c0", setup: reg(RAX, 0xa1b2c3d4), mmio: map[int]string{0x10: "d4c3b2a1"}},
		{name: "32-bit write keeps high half", mode: "32", code: "8b03", setup: with(rbxMMIO(0), reg(RAX, 0xffffffff00000000), mmioBytes(0, "01000000")), regs: map[int]uint64{RAX: 0xffffffff00000001}},
		{name: "16-bit real mode [bx+si]", mode: "16", code: "8900", setup: func(m *model) {
			m.segs[DS].Base = 0xC000_0000 // unreal-mode style base into MMIO
			m.regs[RBX], m.regs[RSI], m.regs[RAX] = 0x10, 0x2, 0xbeef
		}, mmio: map[int]string{0x12: "efbe"}},
		{name: "16-bit [bp+di+disp8] uses SS", mode: "16", code: "894304", setup: func(m *model) {
			m.segs[SS].Base = 0xC000_0000
			m.regs[RBP], m.regs[RDI], m.regs[RAX] = 0x100, 0x4, 0x1234
		}, mmio: map[int]string{0x108: "3412"}},
		{name: "16-bit 67 32-bit addressing", mode: "16", code: "67668903", setup: func(m *model) {
			m.segs[DS].Base = 0xC000_0000
			m.regs[RBX], m.regs[RAX] = 0x20, 0x11223344
		}, mmio: map[int]string{0x20: "44332211"}},
		{name: "16-bit limit exceeded is #GP", mode: "16", code: "8907", setup: reg(RBX, 0xffff), fault: VectorGP + 1},
		{name: "xchg r8,rax", code: "4990", setup: with(reg(RAX, 1), reg(R8, 2)), regs: map[int]uint64{RAX: 2, R8: 1}},
		{name: "cmove eax,[rbx] taken", code: "0f4403", setup: with(rbxMMIO(0), flags(flagZF), reg(RAX, ^uint64(0)), mmioBytes(0, "78563412")), regs: map[int]uint64{RAX: 0x12345678}},
		{name: "cmove eax,[rbx] not taken zero-extends", code: "0f4403", setup: with(rbxMMIO(0), reg(RAX, ^uint64(0)), mmioBytes(0, "78563412")), regs: map[int]uint64{RAX: 0xffffffff}},
		{name: "cmovne ax,[rbx] not taken", code: "660f4503", setup: with(rbxMMIO(0), flags(flagZF), reg(RAX, ^uint64(0))), regs: map[int]uint64{RAX: ^uint64(0)}},
		{name: "movdiri [rbx],rcx", code: "480f38f90b", setup: with(rbxMMIO(8), reg(RCX, 0x1122334455667788)), mmio: map[int]string{8: "8877665544332211"}},
		{name: "movdir64b rcx,[rsi]", code: "660f38f80e", setup: with(reg(RCX, modelMMIO+0x40), reg(RSI, 0x9000), func(m *model) {
			for i := 0; i < 64; i++ {
				m.ram[0x9000+i] = byte(i)
			}
		}), mmio: map[int]string{0x40: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"}},
		{name: "movdir64b misaligned #GP", code: "660f38f80e", setup: with(reg(RCX, modelMMIO+0x20), reg(RSI, 0x9000)), fault: VectorGP + 1},
	})
}

func TestALU(t *testing.T) {
	const all = flagsArith
	runCases(t, []regCase{
		{name: "add [rbx],al carry", code: "0003", setup: with(rbxMMIO(0), reg(RAX, 0x01), mmioBytes(0, "ff")), mmio: map[int]string{0: "00"}, flags: flagCF | flagZF | flagPF | flagAF, flagMask: all},
		{name: "add [rbx],eax overflow", code: "0103", setup: with(rbxMMIO(0), reg(RAX, 1), mmioBytes(0, "ffffff7f")), mmio: map[int]string{0: "00000080"}, flags: flagSF | flagOF | flagAF | flagPF, flagMask: all},
		{name: "add rax,[rbx]", code: "480303", setup: with(rbxMMIO(0), reg(RAX, 1), mmioBytes(0, "ffffffffffffffff")), regs: map[int]uint64{RAX: 0}, flags: flagCF | flagZF | flagPF | flagAF, flagMask: all},
		{name: "adc word [rbx],imm8", code: "66835310" + "01", setup: with(rbxMMIO(0), flags(flagCF), mmioBytes(0x10, "feff")), mmio: map[int]string{0x10: "0000"}, flags: flagCF | flagZF | flagPF | flagAF, flagMask: all},
		{name: "sub [rbx],cl borrow", code: "280b", setup: with(rbxMMIO(0), reg(RCX, 1), mmioBytes(0, "00")), mmio: map[int]string{0: "ff"}, flags: flagCF | flagSF | flagAF | flagPF, flagMask: all},
		{name: "sbb eax,[rbx]", code: "1b03", setup: with(rbxMMIO(0), reg(RAX, 0x80000000), flags(flagCF), mmioBytes(0, "00000000")), regs: map[int]uint64{RAX: 0x7fffffff}, flags: flagOF | flagAF | flagPF, flagMask: all},
		{name: "cmp [rbx],imm32 sets flags only", code: "813b78563412", setup: with(rbxMMIO(0), mmioBytes(0, "78563412")), mmio: map[int]string{0: "78563412"}, flags: flagZF | flagPF, flagMask: all},
		{name: "cmp qword [rbx],-1", code: "48833bff", setup: with(rbxMMIO(0), mmioBytes(0, "0000000000000000")), flags: flagCF | flagAF, flagMask: all},
		{name: "and [rbx],imm8 clears CF/OF", code: "802301", setup: with(rbxMMIO(0), flags(flagCF|flagOF), mmioBytes(0, "03")), mmio: map[int]string{0: "01"}, flags: 0, flagMask: flagCF | flagOF | flagZF | flagSF | flagPF},
		{name: "or [rbx],eax", code: "0903", setup: with(rbxMMIO(0), reg(RAX, 0x80000000), mmioBytes(0, "01000000")), mmio: map[int]string{0: "01000080"}, flags: flagSF, flagMask: flagCF | flagOF | flagZF | flagSF | flagPF},
		{name: "xor al,[rbx]", code: "3203", setup: with(rbxMMIO(0), reg(RAX, 0x0f), mmioBytes(0, "0f")), regs: map[int]uint64{RAX: 0}, flags: flagZF | flagPF, flagMask: flagCF | flagOF | flagZF | flagSF | flagPF},
		{name: "lock or [rbx],eax", code: "f00903", setup: with(rbxMMIO(0), reg(RAX, 0x10)), mmio: map[int]string{0: "10"}},
		{name: "lock on register is #UD", code: "f009c3", fault: VectorUD + 1},
		{name: "lock cmp is #UD", code: "f03903", setup: rbxMMIO(0), fault: VectorUD + 1},
		{name: "add al,imm8", code: "0480", setup: reg(RAX, 0x80), regs: map[int]uint64{RAX: 0}, flags: flagCF | flagZF | flagOF | flagPF, flagMask: all},
		{name: "sub rax,imm32", code: "482d01000000", setup: reg(RAX, 0), regs: map[int]uint64{RAX: ^uint64(0)}, flags: flagCF | flagSF | flagAF | flagPF, flagMask: all},
		{name: "test [rbx],eax", code: "8503", setup: with(rbxMMIO(0), reg(RAX, 0x80000000), mmioBytes(0, "00000080")), flags: flagSF | flagPF, flagMask: flagCF | flagOF | flagZF | flagSF | flagPF},
		{name: "test byte [rbx],imm8", code: "f60301", setup: with(rbxMMIO(0), mmioBytes(0, "02")), flags: flagZF | flagPF, flagMask: flagCF | flagOF | flagZF | flagSF | flagPF},
		{name: "test ax,imm16", code: "66a90080", setup: reg(RAX, 0x8000), flags: flagSF | flagPF, flagMask: flagCF | flagOF | flagZF | flagSF | flagPF},
		{name: "not dword [rbx]", code: "f713", setup: with(rbxMMIO(0), flags(flagCF), mmioBytes(0, "0f0f0f0f")), mmio: map[int]string{0: "f0f0f0f0"}, flags: flagCF, flagMask: all},
		{name: "neg byte [rbx]", code: "f61b", setup: with(rbxMMIO(0), mmioBytes(0, "01")), mmio: map[int]string{0: "ff"}, flags: flagCF | flagSF | flagAF | flagPF, flagMask: all},
		{name: "neg zero clears CF", code: "48f71b", setup: with(rbxMMIO(0), flags(flagCF)), mmio: map[int]string{0: "0000000000000000"}, flags: flagZF | flagPF, flagMask: all},
		{name: "inc word [rbx] keeps CF", code: "66ff03", setup: with(rbxMMIO(0), flags(flagCF), mmioBytes(0, "ff7f")), mmio: map[int]string{0: "0080"}, flags: flagCF | flagOF | flagSF | flagAF | flagPF, flagMask: all},
		{name: "dec byte [rbx]", code: "fe0b", setup: with(rbxMMIO(0), mmioBytes(0, "01")), mmio: map[int]string{0: "00"}, flags: flagZF | flagPF, flagMask: all},
		{name: "lock inc qword [rbx]", code: "f048ff03", setup: with(rbxMMIO(0), mmioBytes(0, "ffffffffffffffff")), mmio: map[int]string{0: "0000000000000000"}, flags: flagZF | flagPF | flagAF, flagMask: all &^ flagCF},
	})
}

func TestXchgCmpxchgXadd(t *testing.T) {
	runCases(t, []regCase{
		{name: "xchg [rbx],eax", code: "8703", setup: with(rbxMMIO(0), reg(RAX, 0x11), mmioBytes(0, "22000000")), mmio: map[int]string{0: "11000000"}, regs: map[int]uint64{RAX: 0x22}},
		{name: "xchg [rbx],cl", code: "860b", setup: with(rbxMMIO(0), reg(RCX, 0x11), mmioBytes(0, "22")), mmio: map[int]string{0: "11"}, regs: map[int]uint64{RCX: 0x22}},
		{name: "cmpxchg equal", code: "0fb10b", setup: with(rbxMMIO(0), reg(RAX, 5), reg(RCX, 9), mmioBytes(0, "05000000")), mmio: map[int]string{0: "09000000"}, regs: map[int]uint64{RAX: 5}, flags: flagZF | flagPF, flagMask: flagsArith},
		{name: "cmpxchg unequal loads rax", code: "480fb10b", setup: with(rbxMMIO(0), reg(RAX, 5), reg(RCX, 9), mmioBytes(0, "0600000000000000")), mmio: map[int]string{0: "0600000000000000"}, regs: map[int]uint64{RAX: 6}, flags: flagCF | flagSF | flagAF | flagPF, flagMask: flagsArith},
		{name: "lock cmpxchg byte", code: "f00fb00b", setup: with(rbxMMIO(0), reg(RAX, 1), reg(RCX, 2), mmioBytes(0, "01")), mmio: map[int]string{0: "02"}},
		{name: "cmpxchg8b equal", code: "0fc70b", setup: with(rbxMMIO(0), reg(RAX, 1), reg(RDX, 2), reg(RBX, modelMMIO), reg(RCX, 4), mmioBytes(0, "0100000002000000")), mmio: map[int]string{0: "000000c0 04000000"}, flags: flagZF, flagMask: flagZF},
		{name: "cmpxchg16b unequal", code: "480fc70f", setup: with(reg(RDI, modelMMIO+0x20), reg(RAX, 1), reg(RDX, 2), mmioBytes(0x20, "0300000000000000 0400000000000000")), regs: map[int]uint64{RAX: 3, RDX: 4}, flags: 0, flagMask: flagZF},
		{name: "cmpxchg16b misaligned #GP", code: "480fc70f", setup: reg(RDI, modelMMIO+0x28), fault: VectorGP + 1},
		{name: "xadd [rbx],ecx", code: "0fc10b", setup: with(rbxMMIO(0), reg(RCX, 1), mmioBytes(0, "ffffffff")), mmio: map[int]string{0: "00000000"}, regs: map[int]uint64{RCX: 0xffffffff}, flags: flagCF | flagZF | flagPF | flagAF, flagMask: flagsArith},
		{name: "lock xadd byte", code: "f00fc00b", setup: with(rbxMMIO(0), reg(RCX, 3), mmioBytes(0, "04")), mmio: map[int]string{0: "07"}, regs: map[int]uint64{RCX: 4}},
	})
}

func TestBitOps(t *testing.T) {
	runCases(t, []regCase{
		{name: "bt [rbx],ecx", code: "0fa30b", setup: with(rbxMMIO(0), reg(RCX, 33), mmioBytes(0, "0000000002000000")), flags: flagCF, flagMask: flagCF},
		{name: "bt [rbx],ecx negative offset", code: "0fa30b", setup: with(rbxMMIO(0x10), reg(RCX, 0xfffffff8), mmioBytes(0xc, "00000001")), flags: flagCF, flagMask: flagCF},
		{name: "bts [rbx],rcx", code: "480fab0b", setup: with(rbxMMIO(0), reg(RCX, 64+3)), mmio: map[int]string{8: "08"}, flags: 0, flagMask: flagCF},
		{name: "btr word [rbx],cx", code: "660fb30b", setup: with(rbxMMIO(0), reg(RCX, 17), mmioBytes(0, "0000ffff")), mmio: map[int]string{0: "0000fdff"}, flags: flagCF, flagMask: flagCF},
		{name: "btc [rbx],imm8 wraps", code: "0fba3b21", setup: with(rbxMMIO(0), mmioBytes(0, "00000000")), mmio: map[int]string{0: "02000000"}, flags: 0, flagMask: flagCF},
		{name: "lock bts [rbx],imm8", code: "f00fba2b00", setup: with(rbxMMIO(0), mmioBytes(0, "01")), mmio: map[int]string{0: "01"}, flags: flagCF, flagMask: flagCF},
		{name: "bt reg,reg", code: "480fa3c8", setup: with(reg(RAX, 1<<40), reg(RCX, 40+64)), flags: flagCF, flagMask: flagCF},
		{name: "sete [rbx]", code: "0f9403", setup: with(rbxMMIO(0), flags(flagZF)), mmio: map[int]string{0: "01"}},
		{name: "setl [rbx]", code: "0f9c03", setup: with(rbxMMIO(0), flags(flagSF), mmioBytes(0, "ff")), mmio: map[int]string{0: "01"}},
		{name: "setg [rbx]", code: "0f9f03", setup: with(rbxMMIO(0), flags(flagSF), mmioBytes(0, "ff")), mmio: map[int]string{0: "00"}},
	})
}

func TestPushPop(t *testing.T) {
	runCases(t, []regCase{
		{name: "push [rbx]", code: "ff33", setup: with(rbxMMIO(0), reg(RSP, 0x9000), mmioBytes(0, "0102030405060708")), regs: map[int]uint64{RSP: 0x8ff8}},
		{name: "pop [rbx]", code: "8f03", setup: with(rbxMMIO(0), reg(RSP, 0x9000), func(m *model) { m.put64(0x9000, 0x1122334455667788) }), regs: map[int]uint64{RSP: 0x9008}, mmio: map[int]string{0: "8877665544332211"}},
		{name: "pop word [rbx]", code: "668f03", setup: with(rbxMMIO(0), reg(RSP, 0x9000), func(m *model) { m.put64(0x9000, 0x1122334455667788) }), regs: map[int]uint64{RSP: 0x9002}, mmio: map[int]string{0: "8877 00"}},
		{name: "pop [rsp] uses incremented rsp", code: "8f0424", setup: with(reg(RSP, 0x9000), func(m *model) { m.put64(0x9000, 0x55) }), regs: map[int]uint64{RSP: 0x9008}},
	})
	m := newMode("64")
	m.regs[RBX] = modelMMIO
	m.regs[RSP] = 0x9000
	copy(m.mmio[:], mustHex("0102030405060708"))
	if err := step(t, m, "ff33"); err != nil {
		t.Fatal(err)
	}
	if got := m.get64(0x8ff8); got != 0x0807060504030201 {
		t.Errorf("push [rbx] stored %#x", got)
	}
	m = newMode("64")
	m.regs[RSP] = 0x9000
	m.put64(0x9000, 0x55)
	if err := step(t, m, "8f0424"); err != nil {
		t.Fatal(err)
	}
	if got := m.get64(0x9008); got != 0x55 {
		t.Errorf("pop [rsp] stored %#x at 0x9008", got)
	}
}
