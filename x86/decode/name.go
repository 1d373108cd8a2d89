package decode

import (
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Name returns the instruction's mnemonic for messages (for example
// "vmovdqu32" or "cpuid"). It is for the cold path only: it asks x86asm
// (which allocates) and falls back to a description of the opcode when
// x86asm does not know the encoding or decodes a different length (its
// legacy tables predate CLWB, MOVDIRI, SERIALIZE, ...).
func (inst *Inst) Name() string {
	if n := inst.ownName(); n != "" {
		return n
	}
	if inst.Len > 0 {
		x, err := x86asm.Decode(inst.Bytes[:inst.Len], inst.Mode)
		if err == nil && x.Op != 0 && x.Len == inst.Len {
			return strings.ToLower(x.Op.String())
		}
	}
	return inst.OpcodeString()
}

// OpcodeString describes the encoding: "0f 38 f9 /0", "vex.0f38 2d",
// "evex.map5 10".
func (inst *Inst) OpcodeString() string {
	var s string
	switch inst.Enc {
	case Legacy:
		switch inst.Map {
		case MapOne:
			s = fmt.Sprintf("%02x", inst.Opcode)
		case Map0F:
			s = fmt.Sprintf("0f %02x", inst.Opcode)
		case Map0F38:
			s = fmt.Sprintf("0f 38 %02x", inst.Opcode)
		case Map0F3A:
			s = fmt.Sprintf("0f 3a %02x", inst.Opcode)
		case Map3DNow:
			s = fmt.Sprintf("0f 0f 3dnow %02x", inst.Opcode)
		}
	case VEX:
		s = fmt.Sprintf("vex.map%d %02x", inst.Map, inst.Opcode)
	case EVEX:
		s = fmt.Sprintf("evex.map%d %02x", inst.Map, inst.Opcode)
	case XOP:
		s = fmt.Sprintf("xop.map%d %02x", inst.Map, inst.Opcode)
	}
	if inst.HasModRM {
		s += fmt.Sprintf(" /%d", inst.RegRaw)
	}
	return "opcode " + s
}

// group0F01 names the register forms of 0F 01 by ModRM byte, which x86asm
// mostly does not know.
var group0F01 = map[byte]string{
	0xc1: "vmcall", 0xc2: "vmlaunch", 0xc3: "vmresume", 0xc4: "vmxoff", 0xc5: "pconfig",
	0xc8: "monitor", 0xc9: "mwait", 0xca: "clac", 0xcb: "stac", 0xcf: "encls",
	0xd0: "xgetbv", 0xd1: "xsetbv", 0xd4: "vmfunc", 0xd5: "xend", 0xd6: "xtest", 0xd7: "enclu",
	0xd8: "vmrun", 0xd9: "vmmcall", 0xda: "vmload", 0xdb: "vmsave", 0xdc: "stgi", 0xdd: "clgi",
	0xde: "skinit", 0xdf: "invlpga", 0xe8: "serialize", 0xee: "rdpkru", 0xef: "wrpkru",
	0xf8: "swapgs", 0xf9: "rdtscp", 0xfa: "monitorx", 0xfb: "mwaitx", 0xfc: "clzero", 0xfd: "rdpru",
}

// ownName names legacy instructions newer than x86asm's tables (or that
// it misnames).
func (inst *Inst) ownName() string {
	if inst.Enc != Legacy {
		return ""
	}
	pfx := inst.LastRep
	if pfx == 0 && inst.OpPfx {
		pfx = 0x66
	}
	switch inst.Map {
	case Map0F:
		switch inst.Opcode {
		case 0x01:
			if inst.Mod == 3 {
				return group0F01[inst.ModRM]
			}
		case 0x1e:
			if pfx == 0xf3 && inst.ModRM == 0xfa {
				return "endbr64"
			}
			if pfx == 0xf3 && inst.ModRM == 0xfb {
				return "endbr32"
			}
		case 0xae:
			if pfx == 0x66 && inst.Mod != 3 && inst.RegRaw == 6 {
				return "clwb"
			}
			if pfx == 0x66 && inst.Mod != 3 && inst.RegRaw == 7 {
				return "clflushopt"
			}
			if pfx == 0xf3 && inst.Mod == 3 && inst.RegRaw == 6 {
				return "umonitor"
			}
			if pfx == 0xf2 && inst.Mod == 3 && inst.RegRaw == 6 {
				return "umwait"
			}
			if pfx == 0x66 && inst.Mod == 3 && inst.RegRaw == 6 {
				return "tpause"
			}
		case 0xc7:
			if inst.Mod == 3 && inst.RegRaw == 7 {
				if pfx == 0xf3 {
					return "rdpid"
				}
				return "rdseed"
			}
			if inst.Mod != 3 && inst.RegRaw == 6 && pfx == 0 {
				return "vmptrld"
			}
		}
	case Map0F38:
		switch {
		case inst.Opcode == 0xf9 && pfx == 0:
			return "movdiri"
		case inst.Opcode == 0xf8 && pfx == 0x66:
			return "movdir64b"
		case inst.Opcode == 0xf8 && pfx == 0xf2:
			return "enqcmd"
		case inst.Opcode == 0xf8 && pfx == 0xf3:
			return "enqcmds"
		case inst.Opcode == 0xf6 && pfx == 0x66:
			return "adcx"
		case inst.Opcode == 0xf6 && pfx == 0xf3:
			return "adox"
		}
	}
	return ""
}
