package emu

import "math/bits"

// ALU operation numbers: the reg field of group 1 and bits 5:3 of the
// one-byte ALU opcodes.
const (
	aluADD = iota
	aluOR
	aluADC
	aluSBB
	aluAND
	aluSUB
	aluXOR
	aluCMP
)

// szp computes ZF, SF and PF of a result of size bytes.
func szp(r uint64, size int) uint64 {
	var f uint64
	r &= sizeMask(size)
	if r == 0 {
		f |= flagZF
	}
	if r>>(8*uint(size)-1)&1 != 0 {
		f |= flagSF
	}
	if bits.OnesCount8(uint8(r))&1 == 0 {
		f |= flagPF
	}
	return f
}

// add computes a+b+carry with flags.
func add(a, b, carry uint64, size int) (uint64, uint64) {
	m := sizeMask(size)
	a, b = a&m, b&m
	var r, cf uint64
	if size == 8 {
		r, cf = bits.Add64(a, b, carry)
	} else {
		full := a + b + carry
		r = full & m
		cf = full >> (8 * uint(size)) & 1
	}
	f := szp(r, size)
	if cf != 0 {
		f |= flagCF
	}
	sign := uint64(1) << (8*uint(size) - 1)
	if (a^r)&(b^r)&sign != 0 {
		f |= flagOF
	}
	if (a^b^r)&0x10 != 0 {
		f |= flagAF
	}
	return r, f
}

// sub computes a-b-borrow with flags.
func sub(a, b, borrow uint64, size int) (uint64, uint64) {
	m := sizeMask(size)
	a, b = a&m, b&m
	var r, cf uint64
	if size == 8 {
		r, cf = bits.Sub64(a, b, borrow)
	} else {
		r = (a - b - borrow) & m
		if a < b+borrow {
			cf = 1
		}
	}
	f := szp(r, size)
	if cf != 0 {
		f |= flagCF
	}
	sign := uint64(1) << (8*uint(size) - 1)
	if (a^b)&(a^r)&sign != 0 {
		f |= flagOF
	}
	if (a^b^r)&0x10 != 0 {
		f |= flagAF
	}
	return r, f
}

// alu performs one of the eight group-1 operations. It returns the result
// and the new arithmetic flags (all six).
func alu(op int, a, b uint64, size int, rflags uint64) (uint64, uint64) {
	cf := rflags & flagCF
	switch op {
	case aluADD:
		return add(a, b, 0, size)
	case aluADC:
		return add(a, b, cf, size)
	case aluSUB, aluCMP:
		return sub(a, b, 0, size)
	case aluSBB:
		return sub(a, b, cf, size)
	case aluOR:
		r := (a | b) & sizeMask(size)
		return r, szp(r, size)
	case aluAND:
		r := (a & b) & sizeMask(size)
		return r, szp(r, size)
	default: // XOR
		r := (a ^ b) & sizeMask(size)
		return r, szp(r, size)
	}
}

// cond evaluates condition code cc (the low nibble of Jcc/SETcc).
func cond(cc byte, f uint64) bool {
	var r bool
	switch cc >> 1 {
	case 0: // O
		r = f&flagOF != 0
	case 1: // B
		r = f&flagCF != 0
	case 2: // Z
		r = f&flagZF != 0
	case 3: // BE
		r = f&(flagCF|flagZF) != 0
	case 4: // S
		r = f&flagSF != 0
	case 5: // P
		r = f&flagPF != 0
	case 6: // L
		r = (f&flagSF != 0) != (f&flagOF != 0)
	case 7: // LE
		r = f&flagZF != 0 || (f&flagSF != 0) != (f&flagOF != 0)
	}
	if cc&1 != 0 {
		return !r
	}
	return r
}

// signExtend sign-extends the low size bytes of v.
func signExtend(v uint64, size int) uint64 {
	shift := 64 - 8*uint(size)
	return uint64(int64(v<<shift) >> shift)
}
