// Package decode is an allocation-free x86 instruction decoder for
// instruction emulation in a VMM.
//
// It exists because a VMM on MSHV must decode every instruction that
// touches MMIO or port I/O itself, on the hot path, from the up to 16
// bytes an intercept reports. golang.org/x/arch/x86/x86asm is a complete
// disassembler but it is the wrong front end for that: it does not report
// truncated input (a short slice decodes to a one-byte "prefix"
// pseudo-instruction with a nil error, so an instruction cut at a page
// boundary would be misexecuted), its legacy tables date from about 2014
// (CLWB decodes as xsaveopt, MOVDIRI/SERIALIZE/... are unknown), it does
// not know which operand is written, and a decode costs about 160 ns and a
// heap allocation (BenchmarkX86asm) where this decoder needs about 20 ns and
// none (BenchmarkDecode). This package instead does the
// one thing an emulator needs exactly: it splits any byte string into
// prefixes, opcode map and opcode, ModRM/SIB/displacement/immediate with
// the correct length in 16-, 32- and 64-bit modes, including VEX, EVEX and
// AMD XOP encodings, without allocating. It reports input
// that ends inside an instruction as ErrTruncated, encodings the CPU
// rejects with #UD as ErrInvalid and instructions longer than 15 bytes as
// ErrTooLong. The executor (package x86/emu) identifies the instructions it
// implements from the opcode fields; for everything else Name gives a
// mnemonic (taken from x86asm, used only on that cold error path) so that
// refusals name the instruction.
//
// What is decoded: all legacy prefixes (segment overrides, 66, 67, F0, F2,
// F3) in any order and number, REX (the last one, only when directly
// before the opcode), VEX2, VEX3, EVEX (maps 1, 2, 3, 5, 6) and XOP (maps
// 8, 9, 10); the one-byte, 0F, 0F38 and 0F3A maps and 3DNow!; ModRM, SIB,
// 16-bit and 32/64-bit addressing forms, RIP-relative addressing, moffs
// and every immediate form (including ENTER, far pointers, the 66- and
// F2-prefixed SSE4a EXTRQ/INSERTQ immediates, XBEGIN and near branches,
// which keep a 32-bit displacement under 66 in 64-bit mode as on Intel
// CPUs).
//
// What is reported as ErrInvalid (the CPU raises #UD): one-byte opcodes
// that do not exist in the mode (PUSH ES, AAA, INTO, ... in 64-bit mode),
// undefined 0F opcodes, groups with an undefined ModRM.reg (C6/C7 other
// than /0 and XABORT/XBEGIN, FE /2-7, FF /7, 0F 00 /6-7, 0F BA /0-3,
// 0F C7, 0F 71-73 ...), the SSE-era 0F, 0F38 and 0F3A opcodes with a
// mandatory prefix or a register/memory form the SDM opcode maps leave
// empty (valid.go; where vendors differ, valid on either counts as valid),
// LOCK on an instruction that cannot be locked or with a register
// destination, VEX/EVEX after a 66/F2/F3/REX/LOCK prefix, VEX/EVEX/XOP
// with an undefined map, and SWAPGS outside 64-bit mode. Inside the
// VEX/EVEX/XOP maps every opcode is decoded by the map's generic rule:
// the length is right for every defined instruction, but an undefined
// opcode is not recognised as such (the emulator refuses it as
// unsupported, naming the opcode).
package decode

import "errors"

// Errors Decode returns. Inst.Len is set for ErrInvalid when the length is
// known; it is zero for ErrTruncated.
var (
	// ErrTruncated: the input ends inside the instruction; decode again
	// with more bytes.
	ErrTruncated = errors.New("truncated instruction")
	// ErrInvalid: the CPU raises #UD for this encoding.
	ErrInvalid = errors.New("invalid instruction encoding")
	// ErrTooLong: the instruction is longer than 15 bytes (#GP).
	ErrTooLong = errors.New("instruction longer than 15 bytes")
)

// MaxLen is the architectural maximum instruction length.
const MaxLen = 15

// Encoding is the instruction's encoding scheme.
type Encoding uint8

const (
	Legacy Encoding = iota
	VEX
	EVEX
	XOP
)

// Map is the opcode map. For VEX/EVEX/XOP it is the map number from the
// prefix (1=0F, 2=0F38, 3=0F3A, 5, 6; XOP 8, 9, 10).
type Map uint8

const (
	MapOne  Map = 0 // one-byte opcodes
	Map0F   Map = 1
	Map0F38 Map = 2
	Map0F3A Map = 3
	// Map3DNow is 0F 0F (the opcode is the trailing immediate byte).
	Map3DNow Map = 15
)

// Reg values for "no register" in Base and Index.
const NoReg = -1

// Inst is a decoded instruction. Register numbers are x86 encoding
// indices (0-15, extended by REX/VEX/EVEX).
type Inst struct {
	Len  int // total length in bytes, prefixes included
	Mode int // 16, 32 or 64

	Enc    Encoding
	Map    Map
	Opcode byte

	// Prefixes.
	Lock     bool
	Rep      bool // F3 present
	Repne    bool // F2 present
	LastRep  byte // the last of F2/F3 (0 if none): selects SSE forms
	OpPfx    bool // 66 present
	AddrPfx  bool // 67 present
	Seg      int8 // segment override (0 ES .. 5 GS) or -1
	REX      byte // REX byte in effect (0 if none)
	Prefixes int  // bytes before the opcode (legacy, REX, VEX/EVEX/XOP)

	// VEX/EVEX/XOP fields (W also reflects REX.W for legacy encodings).
	W    bool
	L    uint8 // vector length: 0 = 128, 1 = 256, 2 = 512
	VVVV uint8 // the extra register operand (already inverted), 0-31
	PP   uint8 // implied legacy prefix: 0 none, 1 66, 2 F3, 3 F2
	// EVEX only.
	Z        bool
	AAA      uint8
	Bcst     bool
	EVEXRBar bool // EVEX R' (the register operand is 16-31)

	// Effective sizes in bytes.
	OpSize   int // 2, 4 or 8 (before any opcode-specific default)
	AddrSize int // 2, 4 or 8

	HasModRM bool
	ModRM    byte
	Mod      byte // ModRM.mod
	Reg      byte // ModRM.reg extended by REX.R/VEX.R (0-15)
	RM       byte // ModRM.rm extended by REX.B/VEX.B (0-15; register form)
	RegRaw   byte // ModRM.reg, 3 bits (the group extension)

	// Memory operand (valid when HasModRM && Mod != 3, or Moffs).
	Mem     bool
	Base    int8 // base register or NoReg
	Index   int8 // index register or NoReg
	Scale   uint8
	Disp    int64
	RIPRel  bool // RIP-relative: the address is next RIP + Disp
	Moffs   bool // A0-A3: the address is Disp (an absolute offset)
	SSBased bool // the default segment is SS (base RSP/RBP/BP)

	Imm    uint64 // first immediate (zero-extended raw bytes)
	ImmLen int
	Imm2   uint64 // second immediate (ENTER, far pointer selector, EXTRQ)

	Bytes [MaxLen]byte // the instruction's bytes (first Len are valid)
}

// one-byte map properties.
const (
	fModRM = 1 << iota
	fIB    // imm8
	fIW    // imm16
	fIZ    // imm16/32 by operand size
	fIV    // imm16/32/64 by operand size (B8-BF)
	fJZ    // rel16/32 (rel32 in 64-bit mode)
	fMoffs // address-size offset
	fAP    // far pointer
	fEnter // imm16 + imm8
	fInv64 // invalid in 64-bit mode
	fGrp3  // F6/F7: imm for /0 and /1
	fPfx   // legacy prefix
	fInvalid
)

var oneByte [256]uint16
var twoByte [256]uint16

func init() {
	for op := 0; op < 0x40; op++ {
		switch op & 7 {
		case 0, 1, 2, 3:
			oneByte[op] = fModRM
		case 4:
			oneByte[op] = fIB
		case 5:
			oneByte[op] = fIZ
		case 6, 7:
			oneByte[op] = fInv64
		}
	}
	oneByte[0x0f] = 0
	for _, p := range []int{0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3} {
		oneByte[p] = fPfx
	}
	set := func(f uint16, ops ...int) {
		for _, o := range ops {
			oneByte[o] = f
		}
	}
	set(fInv64, 0x60, 0x61, 0xce, 0xd6)
	set(fModRM|fInv64, 0x62, 0xc4, 0xc5)
	set(fModRM, 0x63, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
		0xd0, 0xd1, 0xd2, 0xd3, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xfe, 0xff)
	set(fIZ, 0x68, 0xa9)
	set(fModRM|fIZ, 0x69, 0x81, 0xc7)
	set(fIB, 0x6a, 0xa8, 0xcd, 0xe4, 0xe5, 0xe6, 0xe7, 0xeb, 0xe0, 0xe1, 0xe2, 0xe3)
	set(fModRM|fIB, 0x6b, 0x80, 0x83, 0xc0, 0xc1, 0xc6)
	set(fModRM|fIB|fInv64, 0x82)
	for o := 0x70; o <= 0x7f; o++ {
		oneByte[o] = fIB
	}
	set(fAP|fInv64, 0x9a, 0xea)
	set(fMoffs, 0xa0, 0xa1, 0xa2, 0xa3)
	for o := 0xb0; o <= 0xb7; o++ {
		oneByte[o] = fIB
		oneByte[o+8] = fIV
	}
	set(fIW, 0xc2, 0xca)
	set(fEnter, 0xc8)
	set(fIB|fInv64, 0xd4, 0xd5)
	set(fJZ, 0xe8, 0xe9)
	set(fModRM|fGrp3, 0xf6, 0xf7)

	// 0F map: ModRM unless listed.
	for o := range twoByte {
		twoByte[o] = fModRM
	}
	tset := func(f uint16, ops ...int) {
		for _, o := range ops {
			twoByte[o] = f
		}
	}
	tset(0, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0b, 0x0e, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x37,
		0x77, 0xa0, 0xa1, 0xa2, 0xa8, 0xa9, 0xaa, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf)
	for o := 0x80; o <= 0x8f; o++ {
		twoByte[o] = fJZ
	}
	tset(fModRM|fIB, 0x70, 0x71, 0x72, 0x73, 0xa4, 0xac, 0xba, 0xc2, 0xc4, 0xc5, 0xc6)
	tset(fInvalid, 0x04, 0x0a, 0x0c, 0x36, 0x39, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0xa6, 0xa7, 0x7a, 0x7b)
	// MOV to/from test registers (386/486 only): #UD now, but keep the
	// ModRM so the length matches the old encoding.
	tset(fInvalid|fModRM, 0x24, 0x25, 0x26, 0x27)
}

// Decode decodes the instruction at the start of src in the given mode
// (16, 32 or 64) into inst. It never allocates and never reads beyond
// src[:MaxLen].
func Decode(src []byte, mode int, inst *Inst) error {
	*inst = Inst{Mode: mode, Seg: -1, Base: NoReg, Index: NoReg}
	if mode != 16 && mode != 32 && mode != 64 {
		return ErrInvalid
	}
	n := len(src)
	if n > MaxLen {
		n = MaxLen
	}
	// truncated reports ErrTruncated when the input was short, and
	// ErrTooLong when 15 bytes were not enough.
	short := func() error {
		if len(src) < MaxLen {
			return ErrTruncated
		}
		return ErrTooLong
	}
	p := 0
	// Legacy prefixes and REX.
	for {
		if p >= n {
			return short()
		}
		b := src[p]
		if mode == 64 && b&0xf0 == 0x40 {
			inst.REX = b
			p++
			continue
		}
		if oneByte[b]&fPfx == 0 {
			break
		}
		inst.REX = 0 // a REX followed by a legacy prefix is ignored
		switch b {
		case 0x26:
			inst.Seg = 0
		case 0x2e:
			inst.Seg = 1
		case 0x36:
			inst.Seg = 2
		case 0x3e:
			inst.Seg = 3
		case 0x64:
			inst.Seg = 4
		case 0x65:
			inst.Seg = 5
		case 0x66:
			inst.OpPfx = true
		case 0x67:
			inst.AddrPfx = true
		case 0xf0:
			inst.Lock = true
		case 0xf2:
			inst.Repne = true
			inst.LastRep = 0xf2
		case 0xf3:
			inst.Rep = true
			inst.LastRep = 0xf3
		}
		p++
	}
	if mode == 64 && inst.Seg >= 0 && inst.Seg < 4 {
		// ES/CS/SS/DS overrides are ignored in 64-bit mode.
		inst.Seg = -1
	}
	// Sizes.
	switch mode {
	case 16:
		inst.OpSize, inst.AddrSize = 2, 2
		if inst.OpPfx {
			inst.OpSize = 4
		}
		if inst.AddrPfx {
			inst.AddrSize = 4
		}
	case 32:
		inst.OpSize, inst.AddrSize = 4, 4
		if inst.OpPfx {
			inst.OpSize = 2
		}
		if inst.AddrPfx {
			inst.AddrSize = 2
		}
	case 64:
		inst.OpSize, inst.AddrSize = 4, 8
		if inst.OpPfx {
			inst.OpSize = 2
		}
		if inst.REX&8 != 0 {
			inst.OpSize = 8
			inst.W = true
		}
		if inst.AddrPfx {
			inst.AddrSize = 4
		}
	}
	var rexR, rexX, rexB byte
	if inst.REX != 0 {
		rexR = (inst.REX >> 2 & 1) << 3
		rexX = (inst.REX >> 1 & 1) << 3
		rexB = (inst.REX & 1) << 3
	}

	b := src[p]
	var flags uint16
	invalid := false
	imm8After := false // XOP map 8 / EVEX etc. immediate
	imm32After := false
	switch {
	case (b == 0xc4 || b == 0xc5 || b == 0x62 || b == 0x8f) && isVEXStart(src, p, n, mode, b):
		if p+1 >= n {
			return short()
		}
		if inst.OpPfx || inst.Rep || inst.Repne || inst.Lock || inst.REX != 0 {
			invalid = true
		}
		b1 := src[p+1]
		switch b {
		case 0xc5:
			inst.Enc = VEX
			if p+2 >= n {
				return short()
			}
			rexR = (^b1 >> 7 & 1) << 3
			rexX, rexB = 0, 0
			inst.VVVV = ^b1 >> 3 & 15
			inst.L = b1 >> 2 & 1
			inst.PP = b1 & 3
			inst.Map = Map0F
			p += 2
		case 0xc4, 0x8f:
			inst.Enc = VEX
			if b == 0x8f {
				inst.Enc = XOP
			}
			if p+3 >= n {
				return short()
			}
			b2 := src[p+2]
			rexR = (^b1 >> 7 & 1) << 3
			rexX = (^b1 >> 6 & 1) << 3
			rexB = (^b1 >> 5 & 1) << 3
			inst.Map = Map(b1 & 31)
			inst.W = b2&0x80 != 0
			inst.VVVV = ^b2 >> 3 & 15
			inst.L = b2 >> 2 & 1
			inst.PP = b2 & 3
			p += 3
		case 0x62:
			inst.Enc = EVEX
			if p+4 >= n {
				return short()
			}
			b2, b3 := src[p+2], src[p+3]
			rexR = (^b1 >> 7 & 1) << 3
			rexX = (^b1 >> 6 & 1) << 3
			rexB = (^b1 >> 5 & 1) << 3
			inst.EVEXRBar = b1&0x10 == 0
			inst.Map = Map(b1 & 7)
			if b1&0x08 != 0 || b2&0x04 == 0 {
				invalid = true
			}
			inst.W = b2&0x80 != 0
			inst.VVVV = ^b2>>3&15 | (^b3>>3&1)<<4
			inst.PP = b2 & 3
			inst.Z = b3&0x80 != 0
			inst.L = b3 >> 5 & 3
			inst.Bcst = b3&0x10 != 0
			inst.AAA = b3 & 7
			p += 4
		}
		if mode != 64 {
			rexR, rexX, rexB = 0, 0, 0
			inst.VVVV &= 7
		}
		if inst.W && mode == 64 && inst.Enc != Legacy {
			// VEX.W is an opcode extension, not an operand size, for
			// most instructions; keep OpSize for the few GPR forms.
			inst.OpSize = 8
		}
		inst.Prefixes = p
		inst.Opcode = src[p]
		p++
		switch inst.Enc {
		case XOP:
			switch inst.Map {
			case 8:
				flags, imm8After = fModRM, true
			case 9:
				flags = fModRM
			case 10:
				flags, imm32After = fModRM, true
			default:
				flags = fModRM
				invalid = true
			}
		default:
			switch inst.Map {
			case Map0F:
				flags = fModRM
				switch inst.Opcode {
				case 0x77:
					if inst.Enc == VEX {
						flags = 0
					}
				case 0x70, 0x71, 0x72, 0x73, 0xc2, 0xc4, 0xc5, 0xc6:
					flags |= fIB
				}
			case Map0F38:
				flags = fModRM
			case Map0F3A:
				flags = fModRM | fIB
			case 5, 6:
				flags = fModRM
				if inst.Enc != EVEX {
					invalid = true
				}
			default:
				flags = fModRM
				invalid = true
			}
		}
	case b == 0x0f:
		p++
		if p >= n {
			return short()
		}
		b = src[p]
		switch b {
		case 0x38:
			p++
			if p >= n {
				return short()
			}
			inst.Map = Map0F38
			flags = fModRM
		case 0x3a:
			p++
			if p >= n {
				return short()
			}
			inst.Map = Map0F3A
			flags = fModRM | fIB
		case 0x0f:
			inst.Map = Map3DNow
			flags = fModRM | fIB
		default:
			inst.Map = Map0F
			flags = twoByte[b]
		}
		inst.Prefixes = p - 1
		if inst.Map != Map0F {
			inst.Prefixes = p - 2
		}
		if inst.Map == Map3DNow {
			inst.Prefixes = p - 1
		}
		inst.Opcode = src[p]
		p++
		if inst.Map == Map0F && flags&fInvalid != 0 {
			invalid = true
			flags &= fModRM
		}
	default:
		inst.Prefixes = p
		inst.Opcode = b
		p++
		flags = oneByte[b]
		if mode == 64 && flags&fInv64 != 0 {
			invalid = true
		}
	}

	// ModRM, SIB, displacement.
	if flags&fModRM != 0 {
		if p >= n {
			return short()
		}
		m := src[p]
		p++
		inst.HasModRM = true
		inst.ModRM = m
		inst.Mod = m >> 6
		inst.RegRaw = m >> 3 & 7
		inst.Reg = inst.RegRaw | rexR
		rm := m & 7
		inst.RM = rm | rexB
		if inst.Enc == Legacy && inst.Map == Map0F && inst.Opcode >= 0x20 && inst.Opcode <= 0x27 {
			// MOV to/from CR/DR/TR: the mod field is ignored, the
			// operand is always a register.
			inst.Mod = 3
		}
		if inst.Mod != 3 {
			inst.Mem = true
			var dispLen int
			if inst.AddrSize == 2 {
				inst.Scale = 1
				switch rm {
				case 0:
					inst.Base, inst.Index = 3, 6 // bx+si
				case 1:
					inst.Base, inst.Index = 3, 7 // bx+di
				case 2:
					inst.Base, inst.Index, inst.SSBased = 5, 6, true // bp+si
				case 3:
					inst.Base, inst.Index, inst.SSBased = 5, 7, true // bp+di
				case 4:
					inst.Base = 6 // si
				case 5:
					inst.Base = 7 // di
				case 6:
					inst.Base, inst.SSBased = 5, true // bp
				case 7:
					inst.Base = 3 // bx
				}
				switch inst.Mod {
				case 0:
					if rm == 6 {
						inst.Base, inst.SSBased = NoReg, false
						dispLen = 2
					}
				case 1:
					dispLen = 1
				case 2:
					dispLen = 2
				}
			} else {
				base := rm
				if rm == 4 {
					if p >= n {
						return short()
					}
					sib := src[p]
					p++
					inst.Scale = 1 << (sib >> 6)
					idx := sib>>3&7 | rexX
					if idx != 4 {
						inst.Index = int8(idx)
					}
					base = sib & 7
					if base == 5 && inst.Mod == 0 {
						inst.Base = NoReg
						dispLen = 4
					} else {
						inst.Base = int8(base | rexB)
					}
				} else if rm == 5 && inst.Mod == 0 {
					dispLen = 4
					if mode == 64 {
						inst.RIPRel = true
					}
				} else {
					inst.Base = int8(rm | rexB)
				}
				if inst.Base == 4 || inst.Base == 5 {
					inst.SSBased = true
				}
				switch inst.Mod {
				case 1:
					dispLen = 1
				case 2:
					dispLen = 4
				}
			}
			if p+dispLen > n {
				return short()
			}
			switch dispLen {
			case 1:
				inst.Disp = int64(int8(src[p]))
			case 2:
				inst.Disp = int64(int16(uint16(src[p]) | uint16(src[p+1])<<8))
			case 4:
				inst.Disp = int64(int32(le32(src[p:])))
			}
			p += dispLen
		}
	}

	if inst.Enc == Legacy && !invalid && inst.Map != MapOne && inst.Map != Map3DNow && !legacyValid(inst) {
		invalid = true
	}
	if inst.Map == Map0F && inst.Opcode == 0x01 && inst.ModRM == 0xf8 && mode != 64 {
		invalid = true // SWAPGS exists only in 64-bit mode
	}

	// Group-specific validity and immediates.
	if inst.Enc == Legacy {
		switch inst.Map {
		case MapOne:
			switch inst.Opcode {
			case 0xf6, 0xf7:
				if inst.RegRaw <= 1 {
					if inst.Opcode == 0xf6 {
						flags |= fIB
					} else {
						flags |= fIZ
					}
				}
			case 0xc6, 0xc7:
				if inst.RegRaw != 0 {
					if inst.ModRM == 0xf8 {
						if inst.Opcode == 0xc7 {
							flags = fModRM | fIZ // XBEGIN rel16/32
						}
					} else {
						invalid = true
					}
				}
			case 0xfe:
				if inst.RegRaw > 1 {
					invalid = true
				}
			case 0xff:
				if inst.RegRaw == 7 || (inst.Mod == 3 && (inst.RegRaw == 3 || inst.RegRaw == 5)) {
					invalid = true
				}
			case 0x8f:
				if inst.RegRaw != 0 {
					invalid = true
				}
			case 0x62, 0xc4, 0xc5, 0x8d:
				if inst.Mod == 3 {
					invalid = true
				}
			case 0x8c:
				if inst.RegRaw > 5 {
					invalid = true
				}
			case 0x8e:
				if inst.RegRaw > 5 || inst.RegRaw == 1 {
					invalid = true
				}
			}
		case Map0F:
			if inst.Opcode == 0x78 && (inst.LastRep == 0xf2 || (inst.OpPfx && inst.LastRep == 0)) {
				// SSE4a INSERTQ / EXTRQ with two imm8.
				flags |= fIW
			}
		}
	}

	// Immediates.
	immLen := 0
	switch {
	case flags&fIB != 0:
		immLen = 1
	case flags&fIW != 0:
		immLen = 2
	case flags&fIZ != 0:
		immLen = 4
		if inst.OpSize == 2 {
			immLen = 2
		}
	case flags&fIV != 0:
		immLen = inst.OpSize
	case flags&fJZ != 0:
		immLen = 4
		if inst.OpSize == 2 && mode != 64 {
			immLen = 2
		}
	case flags&fMoffs != 0:
		immLen = inst.AddrSize
		inst.Moffs, inst.Mem = true, true
	case flags&fAP != 0:
		immLen = 6
		if inst.OpSize == 2 {
			immLen = 4
		}
	case flags&fEnter != 0:
		immLen = 3
	}
	if imm8After {
		immLen = 1
	}
	if imm32After {
		immLen = 4
	}
	if p+immLen > n {
		return short()
	}
	switch {
	case flags&fMoffs != 0:
		var v uint64
		for i := immLen - 1; i >= 0; i-- {
			v = v<<8 | uint64(src[p+i])
		}
		inst.Disp = int64(v)
	case flags&fAP != 0:
		if immLen == 4 {
			inst.Imm = uint64(src[p]) | uint64(src[p+1])<<8
		} else {
			inst.Imm = uint64(le32(src[p:]))
		}
		inst.Imm2 = uint64(src[p+immLen-2]) | uint64(src[p+immLen-1])<<8
	case flags&fEnter != 0:
		inst.Imm = uint64(src[p]) | uint64(src[p+1])<<8
		inst.Imm2 = uint64(src[p+2])
	case flags&fIW != 0 && inst.Map == Map0F:
		inst.Imm = uint64(src[p])
		inst.Imm2 = uint64(src[p+1])
	default:
		var v uint64
		for i := immLen - 1; i >= 0; i-- {
			v = v<<8 | uint64(src[p+i])
		}
		inst.Imm = v
	}
	inst.ImmLen = immLen
	p += immLen
	if p > MaxLen {
		return ErrTooLong
	}
	inst.Len = p
	copy(inst.Bytes[:], src[:p])
	if inst.Map == Map3DNow {
		inst.Opcode = byte(inst.Imm)
	}
	if inst.Lock && !invalid && !lockable(inst) {
		invalid = true
	}
	if invalid {
		return ErrInvalid
	}
	return nil
}

// isVEXStart reports whether C4/C5/62/8F at src[p] starts a VEX, EVEX or
// XOP prefix rather than LES/LDS/BOUND/POP.
func isVEXStart(src []byte, p, n, mode int, b byte) bool {
	if p+1 >= n {
		// Unknown yet: in 64-bit mode C4/C5/62 are always prefixes.
		return mode == 64 && b != 0x8f
	}
	next := src[p+1]
	if b == 0x8f {
		// XOP: ModRM.reg of POP would be non-zero, and map >= 8.
		return next>>3&3 != 0 && next&0x1f >= 8
	}
	if mode == 64 {
		return true
	}
	return next>>6 == 3
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// lockable reports whether LOCK is allowed on inst (memory destination
// read-modify-write instructions).
func lockable(inst *Inst) bool {
	if inst.Enc != Legacy || !inst.Mem || inst.Moffs {
		return false
	}
	op := inst.Opcode
	switch inst.Map {
	case MapOne:
		switch {
		case op < 0x40 && op&7 <= 1 && op&0x38 != 0x38: // ALU rm, r (not CMP)
			return true
		case op >= 0x80 && op <= 0x83:
			return inst.RegRaw != 7
		case op == 0x86 || op == 0x87:
			return true
		case op == 0xf6 || op == 0xf7:
			return inst.RegRaw == 2 || inst.RegRaw == 3
		case op == 0xfe || op == 0xff:
			return inst.RegRaw <= 1
		}
	case Map0F:
		switch op {
		case 0xab, 0xb3, 0xbb, 0xb0, 0xb1, 0xc0, 0xc1:
			return true
		case 0xba:
			return inst.RegRaw >= 5
		case 0xc7:
			return inst.RegRaw == 1
		}
	}
	return false
}
