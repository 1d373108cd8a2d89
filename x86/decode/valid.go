package decode

// Validity of the legacy-encoded SSE-era opcodes, whose meaning depends on
// the mandatory prefix (none, 66, F3 or F2) and sometimes on whether the
// ModRM operand is a register or memory. The CPU raises #UD for the
// combinations the Intel SDM opcode maps (Vol. 2, Appendix A, tables A-3 to
// A-5) leave empty; Decode reports them as ErrInvalid. Opcodes not listed
// for the 0F map are not SSE instructions and accept any prefix. Where the
// vendors differ, an encoding valid on either is accepted (AMD's SSE4a
// MOVNTSS/MOVNTSD, EXTRQ/INSERTQ, 3DNow!, SYSCALL outside 64-bit mode);
// VIA PadLock (0F A6/A7) is not.

// Mandatory-prefix bits.
const (
	mpNone = 1 << iota
	mp66
	mpF3
	mpF2
	mpAll = mpNone | mp66 | mpF3 | mpF2

	// ModRM restrictions (applied to every prefix of the entry).
	mpRegOnly = 1 << 6
	mpMemOnly = 1 << 7
)

// sse0F is the 0F map (0 = any prefix).
var sse0F = [256]uint8{
	0x10: mpAll, 0x11: mpAll, 0x12: mpAll, 0x13: mpNone | mp66 | mpMemOnly,
	0x14: mpNone | mp66, 0x15: mpNone | mp66, 0x16: mpNone | mp66 | mpF3, 0x17: mpNone | mp66 | mpMemOnly,
	0x28: mpNone | mp66, 0x29: mpNone | mp66, 0x2a: mpAll, 0x2b: mpAll | mpMemOnly, // F3/F2: AMD SSE4a MOVNTSS/MOVNTSD
	0x2c: mpAll, 0x2d: mpAll, 0x2e: mpNone | mp66, 0x2f: mpNone | mp66,
	0x50: mpNone | mp66 | mpRegOnly, 0x51: mpAll, 0x52: mpNone | mpF3, 0x53: mpNone | mpF3,
	0x54: mpNone | mp66, 0x55: mpNone | mp66, 0x56: mpNone | mp66, 0x57: mpNone | mp66,
	0x58: mpAll, 0x59: mpAll, 0x5a: mpAll, 0x5b: mpNone | mp66 | mpF3,
	0x5c: mpAll, 0x5d: mpAll, 0x5e: mpAll, 0x5f: mpAll,
	0x60: mpNone | mp66, 0x61: mpNone | mp66, 0x62: mpNone | mp66, 0x63: mpNone | mp66,
	0x64: mpNone | mp66, 0x65: mpNone | mp66, 0x66: mpNone | mp66, 0x67: mpNone | mp66,
	0x68: mpNone | mp66, 0x69: mpNone | mp66, 0x6a: mpNone | mp66, 0x6b: mpNone | mp66,
	0x6c: mp66, 0x6d: mp66, 0x6e: mpNone | mp66, 0x6f: mpNone | mp66 | mpF3,
	0x70: mpAll, 0x71: mpNone | mp66 | mpRegOnly, 0x72: mpNone | mp66 | mpRegOnly, 0x73: mpNone | mp66 | mpRegOnly,
	0x74: mpNone | mp66, 0x75: mpNone | mp66, 0x76: mpNone | mp66,
	0x7c: mp66 | mpF2, 0x7d: mp66 | mpF2, 0x7e: mpNone | mp66 | mpF3, 0x7f: mpNone | mp66 | mpF3,
	0xb8: mpF3, // POPCNT (JMPE without F3)
	0xc2: mpAll, 0xc3: mpNone | mpMemOnly, 0xc4: mpNone | mp66, 0xc5: mpNone | mp66 | mpRegOnly, 0xc6: mpNone | mp66,
	0xd0: mp66 | mpF2, 0xd1: mpNone | mp66, 0xd2: mpNone | mp66, 0xd3: mpNone | mp66,
	0xd4: mpNone | mp66, 0xd5: mpNone | mp66, 0xd6: mp66 | mpF3 | mpF2, 0xd7: mpNone | mp66 | mpRegOnly,
	0xd8: mpNone | mp66, 0xd9: mpNone | mp66, 0xda: mpNone | mp66, 0xdb: mpNone | mp66,
	0xdc: mpNone | mp66, 0xdd: mpNone | mp66, 0xde: mpNone | mp66, 0xdf: mpNone | mp66,
	0xe0: mpNone | mp66, 0xe1: mpNone | mp66, 0xe2: mpNone | mp66, 0xe3: mpNone | mp66,
	0xe4: mpNone | mp66, 0xe5: mpNone | mp66, 0xe6: mp66 | mpF3 | mpF2, 0xe7: mpNone | mp66 | mpMemOnly,
	0xe8: mpNone | mp66, 0xe9: mpNone | mp66, 0xea: mpNone | mp66, 0xeb: mpNone | mp66,
	0xec: mpNone | mp66, 0xed: mpNone | mp66, 0xee: mpNone | mp66, 0xef: mpNone | mp66,
	0xf0: mpF2 | mpMemOnly, 0xf1: mpNone | mp66, 0xf2: mpNone | mp66, 0xf3: mpNone | mp66,
	0xf4: mpNone | mp66, 0xf5: mpNone | mp66, 0xf6: mpNone | mp66, 0xf7: mpNone | mp66 | mpRegOnly,
	0xf8: mpNone | mp66, 0xf9: mpNone | mp66, 0xfa: mpNone | mp66, 0xfb: mpNone | mp66,
	0xfc: mpNone | mp66, 0xfd: mpNone | mp66, 0xfe: mpNone | mp66,
}

// sse0F38 is the legacy 0F38 map (0 = undefined opcode).
var sse0F38 = [256]uint8{
	0x00: mpNone | mp66, 0x01: mpNone | mp66, 0x02: mpNone | mp66, 0x03: mpNone | mp66,
	0x04: mpNone | mp66, 0x05: mpNone | mp66, 0x06: mpNone | mp66, 0x07: mpNone | mp66,
	0x08: mpNone | mp66, 0x09: mpNone | mp66, 0x0a: mpNone | mp66, 0x0b: mpNone | mp66,
	0x10: mp66, 0x14: mp66, 0x15: mp66, 0x17: mp66,
	0x1c: mpNone | mp66, 0x1d: mpNone | mp66, 0x1e: mpNone | mp66,
	0x20: mp66, 0x21: mp66, 0x22: mp66, 0x23: mp66, 0x24: mp66, 0x25: mp66,
	0x28: mp66, 0x29: mp66, 0x2a: mp66 | mpMemOnly, 0x2b: mp66,
	0x30: mp66, 0x31: mp66, 0x32: mp66, 0x33: mp66, 0x34: mp66, 0x35: mp66,
	0x37: mp66, 0x38: mp66, 0x39: mp66, 0x3a: mp66, 0x3b: mp66, 0x3c: mp66, 0x3d: mp66, 0x3e: mp66, 0x3f: mp66,
	0x40: mp66, 0x41: mp66,
	0x80: mp66 | mpMemOnly, 0x81: mp66 | mpMemOnly, 0x82: mp66 | mpMemOnly, // INVEPT, INVVPID, INVPCID
	0xc8: mpNone, 0xc9: mpNone, 0xca: mpNone, 0xcb: mpNone, 0xcc: mpNone, 0xcd: mpNone, // SHA
	0xcf: mp66,                                                                             // GF2P8MULB
	0xdb: mp66, 0xdc: mp66 | mpF3, 0xdd: mp66 | mpF3, 0xde: mp66 | mpF3, 0xdf: mp66 | mpF3, // AES (F3: Key Locker)
	0xf0: mpNone | mp66 | mpF2, 0xf1: mpNone | mp66 | mpF2, // MOVBE (memory), CRC32
	0xf5: mp66 | mpMemOnly,               // WRUSS
	0xf6: mpNone | mp66 | mpF3,           // WRSS (memory), ADCX, ADOX
	0xf8: mp66 | mpF3 | mpF2 | mpMemOnly, // MOVDIR64B, ENQCMDS, ENQCMD
	0xf9: mpNone | mpMemOnly,             // MOVDIRI
	0xfa: mpF3, 0xfb: mpF3,               // ENCODEKEY128/256
	0xd8: mpF3 | mpMemOnly, // AESENCWIDE/AESDECWIDE (Key Locker)
}

// sse0F3A is the legacy 0F3A map (0 = undefined opcode).
var sse0F3A = [256]uint8{
	0x08: mp66, 0x09: mp66, 0x0a: mp66, 0x0b: mp66, 0x0c: mp66, 0x0d: mp66, 0x0e: mp66, 0x0f: mpNone | mp66,
	0x14: mp66, 0x15: mp66, 0x16: mp66, 0x17: mp66,
	0x20: mp66, 0x21: mp66, 0x22: mp66,
	0x40: mp66, 0x41: mp66, 0x42: mp66, 0x44: mp66,
	0x60: mp66, 0x61: mp66, 0x62: mp66, 0x63: mp66,
	0xcc: mpNone,           // SHA1RNDS4
	0xce: mp66, 0xcf: mp66, // GF2P8AFFINE(INV)QB
	0xdf: mp66, // AESKEYGENASSIST
}

// legacyValid reports whether a legacy 0F/0F38/0F3A instruction exists with
// its mandatory prefix and ModRM form.
func legacyValid(inst *Inst) bool {
	var spec uint8
	switch inst.Map {
	case Map0F:
		spec = sse0F[inst.Opcode]
		if spec == 0 {
			return group0FValid(inst)
		}
	case Map0F38:
		spec = sse0F38[inst.Opcode]
	case Map0F3A:
		spec = sse0F3A[inst.Opcode]
	default:
		return true
	}
	if spec == 0 {
		return false
	}
	var p uint8 = mpNone
	switch {
	case inst.LastRep == 0xf3:
		p = mpF3
	case inst.LastRep == 0xf2:
		p = mpF2
	case inst.OpPfx:
		p = mp66
	}
	if spec&p == 0 {
		return false
	}
	if spec&mpRegOnly != 0 && inst.Mod != 3 || spec&mpMemOnly != 0 && inst.Mod == 3 {
		return false
	}
	// Per-opcode details.
	switch inst.Map {
	case Map0F:
		switch inst.Opcode {
		case 0x71, 0x72: // PSRL/PSRA/PSLL by immediate: /2, /4, /6
			return inst.RegRaw == 2 || inst.RegRaw == 4 || inst.RegRaw == 6
		case 0x73: // PSRLQ /2, PSRLDQ /3 (66), PSLLQ /6, PSLLDQ /7 (66)
			switch inst.RegRaw {
			case 2, 6:
				return true
			case 3, 7:
				return p == mp66
			}
			return false
		case 0x12, 0x16: // the 66 forms (MOVLPD/MOVHPD) are memory only
			return p != mp66 || inst.Mod != 3
		case 0xd6: // MOVQ2DQ/MOVDQ2Q are register only
			return p == mp66 || inst.Mod == 3
		}
	case Map0F38:
		switch inst.Opcode {
		case 0xf0, 0xf1:
			return p == mpF2 || inst.Mod != 3 // MOVBE is memory only
		case 0xf6:
			return p != mpNone || inst.Mod != 3 // WRSS is memory only
		case 0xd8: // Key Locker AESENCWIDE128KL.. /0-/3
			return inst.RegRaw < 4
		case 0xdc, 0xdd, 0xde, 0xdf:
			return p != mpF3 || inst.Mod != 3 // Key Locker forms are memory only
		case 0xfa, 0xfb:
			return inst.Mod == 3 // ENCODEKEY128/256
		}
	}
	return true
}

// group0FValid checks the ModRM.reg (and mod) of the non-SSE 0F groups.
func group0FValid(inst *Inst) bool {
	r := inst.RegRaw
	switch inst.Opcode {
	case 0x00: // SLDT STR LLDT LTR VERR VERW (/6 /7 undefined)
		return r < 6
	case 0x01:
		if inst.Mod != 3 {
			return r != 5 || inst.LastRep == 0xf3 // /5 with memory: RSTORSSP (F3) only
		}
		return true // register forms: many individual instructions
	case 0xba: // BT BTS BTR BTC
		return r >= 4
	case 0xc7:
		switch r {
		case 1: // CMPXCHG8B/16B
			return inst.Mod != 3
		case 3, 4, 5: // XRSTORS, XSAVEC, XSAVES
			return inst.Mod != 3
		case 6: // VMPTRLD/VMCLEAR/VMXON (memory), RDRAND (register)
			return true
		case 7: // VMPTRST (memory), RDSEED/RDPID (register)
			return true
		}
		return false
	case 0xb2, 0xb4, 0xb5: // LSS, LFS, LGS: memory only
		return inst.Mod != 3
	case 0xae:
		if inst.Mod == 3 {
			switch r {
			case 0, 1, 2, 3: // RD/WR FS/GS BASE
				return inst.LastRep == 0xf3
			case 4: // PTWRITE
				return inst.LastRep == 0xf3
			}
		}
		return true
	case 0xb9, 0xff, 0x0b: // UD1, UD0, UD2: defined to raise #UD
		return true
	}
	return true
}
