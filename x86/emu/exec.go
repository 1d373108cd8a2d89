package emu

import "govmm/x86/decode"

// setFlags replaces the flags in mask with those in f.
func (s *state) setFlags(mask, f uint64) {
	s.rflags = s.rflags&^mask | f&mask
}

func (s *state) lock() {
	if l, ok := s.cpu.(BusLocker); ok {
		l.LockBus()
	}
}

func (s *state) unlock() {
	if l, ok := s.cpu.(BusLocker); ok {
		l.UnlockBus()
	}
}

// rmRead reads the ModRM r/m operand (register or memory).
func (s *state) rmRead(size int) (uint64, error) {
	in := &s.inst
	if !in.Mem {
		return s.gpr(int(in.RM), size), nil
	}
	var p pa
	if err := s.resolve(s.memSeg(), s.ea(), size, accRead, &p); err != nil {
		return 0, err
	}
	b := s.buf[:size]
	s.rd(&p, b)
	return getLE(b, size), nil
}

// rmWrite writes the ModRM r/m operand.
func (s *state) rmWrite(size int, v uint64) error {
	in := &s.inst
	if !in.Mem {
		s.setGPR(int(in.RM), size, v)
		return nil
	}
	var p pa
	if err := s.resolve(s.memSeg(), s.ea(), size, accWrite, &p); err != nil {
		return err
	}
	b := s.buf[:size]
	putLE(b, v, size)
	s.wr(&p, b)
	return nil
}

// rmModify is a read-modify-write of the r/m operand: f gets the old value
// and returns the new one and whether to write it. Memory forms are one
// read and one write of size bytes, under the bus lock when locked.
// write says whether the instruction may write (CMP and BT only read, so
// their page-fault error code and segment checks are those of a read).
func (s *state) rmModify(size int, locked, write bool, f func(old uint64) (uint64, bool)) error {
	in := &s.inst
	if !in.Mem {
		v, w := f(s.gpr(int(in.RM), size))
		if w {
			s.setGPR(int(in.RM), size, v)
		}
		return nil
	}
	var p pa
	acc := accRead
	if write {
		acc |= accWrite
	}
	if err := s.resolve(s.memSeg(), s.ea(), size, acc, &p); err != nil {
		return err
	}
	b := s.buf[:size]
	if locked {
		s.lock()
	}
	s.rd(&p, b)
	v, w := f(getLE(b, size))
	if w {
		putLE(b, v, size)
		s.wr(&p, b)
	}
	if locked {
		s.unlock()
	}
	return nil
}

// immOp is the instruction's immediate sign-extended to size.
func (s *state) immOp(size int) uint64 {
	in := &s.inst
	return signExtend(in.Imm, in.ImmLen) & sizeMask(size)
}

func (s *state) exec() error {
	in := &s.inst
	switch in.Enc {
	case decode.VEX:
		return s.execVEX()
	case decode.EVEX:
		return s.unsupported("EVEX (AVX-512) encodings are not emulated")
	case decode.XOP:
		return s.unsupported("AMD XOP encodings are not emulated")
	}
	switch in.Map {
	case decode.MapOne:
		return s.exec1()
	case decode.Map0F:
		return s.exec0F()
	case decode.Map0F38:
		switch {
		case (in.Opcode == 0xf0 || in.Opcode == 0xf1) && in.LastRep == 0:
			return s.movbe()
		case in.Opcode == 0xf9 && in.LastRep == 0 && !in.OpPfx: // MOVDIRI
			size := 4
			if in.W {
				size = 8
			}
			return s.rmWrite(size, s.gpr(int(in.Reg), size))
		case in.Opcode == 0xf8 && in.LastRep == 0 && in.OpPfx:
			return s.movdir64b()
		}
	}
	return s.unsupported("")
}

func (s *state) exec1() error {
	in := &s.inst
	op := in.Opcode
	osz := in.OpSize
	switch {
	case op < 0x40 && op&7 < 6:
		a := int(op >> 3)
		size := osz
		if op&1 == 0 {
			size = 1
		}
		switch op & 7 {
		case 0, 1:
			src := s.gpr(int(in.Reg), size)
			return s.aluRM(a, size, src)
		case 2, 3:
			v, err := s.rmRead(size)
			if err != nil {
				return err
			}
			s.aluReg(a, int(in.Reg), size, v)
			return nil
		default:
			s.aluReg(a, RAX, size, s.immOp(size))
			return nil
		}
	case op >= 0x80 && op <= 0x83:
		if op == 0x82 && s.mode == 64 {
			return s.fault(VectorUD, false, 0, 0)
		}
		size := osz
		if op&1 == 0 {
			size = 1
		}
		return s.aluRM(int(in.RegRaw), size, s.immOp(size))
	case op == 0x84 || op == 0x85 || op == 0xa8 || op == 0xa9:
		size := osz
		if op&1 == 0 {
			size = 1
		}
		var a, b uint64
		if op < 0xa8 {
			v, err := s.rmRead(size)
			if err != nil {
				return err
			}
			a, b = v, s.gpr(int(in.Reg), size)
		} else {
			a, b = s.gpr(RAX, size), s.immOp(size)
		}
		_, f := alu(aluAND, a, b, size, 0)
		s.setFlags(flagsArith, f)
		return nil
	case op == 0x86 || op == 0x87:
		size := osz
		if op == 0x86 {
			size = 1
		}
		r := int(in.Reg)
		src := s.gpr(r, size)
		var old uint64
		err := s.rmModify(size, true, true, func(v uint64) (uint64, bool) {
			old = v
			return src, true
		})
		if err != nil {
			return err
		}
		s.setGPR(r, size, old)
		return nil
	case op >= 0x88 && op <= 0x8b:
		size := osz
		if op&1 == 0 {
			size = 1
		}
		if op <= 0x89 {
			return s.rmWrite(size, s.gpr(int(in.Reg), size))
		}
		v, err := s.rmRead(size)
		if err != nil {
			return err
		}
		s.setGPR(int(in.Reg), size, v)
		return nil
	case op == 0x8f:
		return s.popRM()
	case op == 0x63 && s.mode == 64: // MOVSXD
		src := 4
		if osz == 2 {
			src = 2
		}
		v, err := s.rmRead(src)
		if err != nil {
			return err
		}
		s.setGPR(int(in.Reg), osz, signExtend(v, src))
		return nil
	case op >= 0x90 && op <= 0x97:
		r := int(op&7) | int(in.REX&1)<<3
		if r == RAX {
			return nil // NOP, PAUSE
		}
		a, b := s.gpr(RAX, osz), s.gpr(r, osz)
		s.setGPR(RAX, osz, b)
		s.setGPR(r, osz, a)
		return nil
	case op >= 0xa0 && op <= 0xa3:
		size := osz
		if op&1 == 0 {
			size = 1
		}
		if op <= 0xa1 {
			v, err := s.rmRead(size)
			if err != nil {
				return err
			}
			s.setGPR(RAX, size, v)
			return nil
		}
		return s.rmWrite(size, s.gpr(RAX, size))
	case op >= 0xb0 && op <= 0xbf:
		r := int(op&7) | int(in.REX&1)<<3
		size := osz
		if op < 0xb8 {
			size = 1
		}
		s.setGPR(r, size, in.Imm)
		return nil
	case op == 0xc6 || op == 0xc7:
		if in.RegRaw != 0 {
			return s.unsupported("")
		}
		size := osz
		if op == 0xc6 {
			size = 1
		}
		return s.rmWrite(size, s.immOp(size))
	case op == 0xf6 || op == 0xf7:
		size := osz
		if op == 0xf6 {
			size = 1
		}
		switch in.RegRaw {
		case 0, 1: // TEST
			v, err := s.rmRead(size)
			if err != nil {
				return err
			}
			_, f := alu(aluAND, v, s.immOp(size), size, 0)
			s.setFlags(flagsArith, f)
			return nil
		case 2: // NOT
			return s.rmModify(size, in.Lock, true, func(v uint64) (uint64, bool) { return ^v, true })
		case 3: // NEG
			var fl uint64
			err := s.rmModify(size, in.Lock, true, func(v uint64) (uint64, bool) {
				r, f := sub(0, v, 0, size)
				fl = f
				return r, true
			})
			if err != nil {
				return err
			}
			s.setFlags(flagsArith, fl)
			return nil
		}
		return s.unsupported("")
	case op == 0xfe || op == 0xff:
		size := osz
		if op == 0xfe {
			size = 1
		}
		switch in.RegRaw {
		case 0, 1:
			var fl uint64
			dec := in.RegRaw == 1
			err := s.rmModify(size, in.Lock, true, func(v uint64) (uint64, bool) {
				var r, f uint64
				if dec {
					r, f = sub(v, 1, 0, size)
				} else {
					r, f = add(v, 1, 0, size)
				}
				fl = f
				return r, true
			})
			if err != nil {
				return err
			}
			s.setFlags(flagsArith&^flagCF, fl)
			return nil
		case 6:
			if op == 0xff {
				return s.pushRM()
			}
		}
		return s.unsupported("")
	case isString(in):
		return s.execString()
	case op >= 0xe4 && op <= 0xe7 || op >= 0xec && op <= 0xef:
		return s.inOut()
	}
	return s.unsupported("")
}

// aluRM is op r/m, src.
func (s *state) aluRM(a int, size int, src uint64) error {
	var fl uint64
	err := s.rmModify(size, s.inst.Lock, a != aluCMP, func(v uint64) (uint64, bool) {
		r, f := alu(a, v, src, size, s.rflags)
		fl = f
		return r, a != aluCMP
	})
	if err != nil {
		return err
	}
	s.setFlags(flagsArith, fl)
	return nil
}

// aluReg is op reg, src.
func (s *state) aluReg(a int, r int, size int, src uint64) {
	v, f := alu(a, s.gpr(r, size), src, size, s.rflags)
	if a != aluCMP {
		s.setGPR(r, size, v)
	}
	s.setFlags(flagsArith, f)
}

// stackSize is the stack address size in bytes.
func (s *state) stackSize() int {
	if s.mode == 64 {
		return 8
	}
	if s.segment(SS).DB {
		return 4
	}
	return 2
}

// pushPopSize is the operand size of PUSH/POP r/m.
func (s *state) pushPopSize() int {
	if s.mode == 64 {
		if s.inst.OpPfx {
			return 2
		}
		return 8
	}
	return s.inst.OpSize
}

func (s *state) pushRM() error {
	size := s.pushPopSize()
	v, err := s.rmRead(size)
	if err != nil {
		return err
	}
	ssz := s.stackSize()
	sp := (s.reg(RSP) - uint64(size)) & sizeMask(ssz)
	var p pa
	if err := s.resolve(SS, sp, size, accWrite, &p); err != nil {
		return err
	}
	b := s.buf[:size]
	putLE(b, v, size)
	s.wr(&p, b)
	s.setGPR(RSP, ssz, sp)
	return nil
}

func (s *state) popRM() error {
	size := s.pushPopSize()
	ssz := s.stackSize()
	sp := s.reg(RSP) & sizeMask(ssz)
	var p pa
	if err := s.resolve(SS, sp, size, accRead, &p); err != nil {
		return err
	}
	// The destination address is computed with the incremented RSP; a
	// fault leaves RSP unchanged because nothing is committed.
	var q pa
	in := &s.inst
	oldSP := s.reg(RSP)
	s.setGPR(RSP, ssz, sp+uint64(size))
	if in.Mem {
		if err := s.resolve(s.memSeg(), s.ea(), size, accWrite, &q); err != nil {
			s.setReg(RSP, oldSP)
			return err
		}
	}
	b := s.buf[:size]
	s.rd(&p, b)
	v := getLE(b, size)
	if !in.Mem {
		s.setGPR(int(in.RM), size, v)
		return nil
	}
	s.wr(&q, b)
	return nil
}

func (s *state) exec0F() error {
	in := &s.inst
	op := in.Opcode
	osz := in.OpSize
	switch {
	case op == 0xb6 || op == 0xb7 || op == 0xbe || op == 0xbf:
		src := 1
		if op&1 != 0 {
			src = 2
		}
		v, err := s.rmRead(src)
		if err != nil {
			return err
		}
		if op >= 0xbe {
			v = signExtend(v, src)
		}
		s.setGPR(int(in.Reg), osz, v&sizeMask(osz))
		return nil
	case op >= 0x40 && op <= 0x4f: // CMOVcc: the source is always read
		v, err := s.rmRead(osz)
		if err != nil {
			return err
		}
		r := int(in.Reg)
		if !cond(op&15, s.rflags) {
			v = s.gpr(r, osz) // a 32-bit CMOV zero-extends even when false
		}
		s.setGPR(r, osz, v)
		return nil
	case op >= 0x90 && op <= 0x9f:
		var v uint64
		if cond(op&15, s.rflags) {
			v = 1
		}
		return s.rmWrite(1, v)
	case op == 0xc3:
		if !in.Mem || in.OpPfx || in.LastRep != 0 {
			return s.fault(VectorUD, false, 0, 0)
		}
		return s.rmWrite(osz, s.gpr(int(in.Reg), osz))
	case op == 0xa3 || op == 0xab || op == 0xb3 || op == 0xbb || op == 0xba:
		return s.bitTest()
	case op == 0xb0 || op == 0xb1:
		return s.cmpxchg()
	case op == 0xc0 || op == 0xc1:
		size := osz
		if op == 0xc0 {
			size = 1
		}
		r := int(in.Reg)
		src := s.gpr(r, size)
		var old, fl uint64
		err := s.rmModify(size, in.Lock, true, func(v uint64) (uint64, bool) {
			old = v
			sum, f := add(v, src, 0, size)
			fl = f
			return sum, true
		})
		if err != nil {
			return err
		}
		if in.Mem || r != int(in.RM) {
			s.setGPR(r, size, old)
		}
		s.setFlags(flagsArith, fl)
		return nil
	case op == 0xc7 && in.RegRaw == 1:
		return s.cmpxchg8b()
	}
	return s.execSSE()
}

// bitTest is BT/BTS/BTR/BTC.
func (s *state) bitTest() error {
	in := &s.inst
	size := in.OpSize
	bitsN := uint64(8 * size)
	var kind int // 0 BT, 1 BTS, 2 BTR, 3 BTC
	var off uint64
	if in.Opcode == 0xba {
		if in.RegRaw < 4 {
			return s.fault(VectorUD, false, 0, 0)
		}
		kind = int(in.RegRaw - 4)
		off = in.Imm & (bitsN - 1)
	} else {
		kind = int(in.Opcode >> 3 & 3) // a3:0 ab:1 b3:2 bb:3 -> 0,1,2,3
		switch in.Opcode {
		case 0xa3:
			kind = 0
		case 0xab:
			kind = 1
		case 0xb3:
			kind = 2
		case 0xbb:
			kind = 3
		}
		off = s.gpr(int(in.Reg), size)
	}
	if kind == 0 && in.Lock {
		return s.fault(VectorUD, false, 0, 0)
	}
	var cf bool
	apply := func(v uint64, bit uint64) (uint64, bool) {
		m := uint64(1) << bit
		cf = v&m != 0
		switch kind {
		case 1:
			return v | m, true
		case 2:
			return v &^ m, true
		case 3:
			return v ^ m, true
		}
		return v, false
	}
	if !in.Mem || in.Opcode == 0xba {
		bit := off & (bitsN - 1)
		if err := s.rmModify(size, in.Lock, kind != 0, func(v uint64) (uint64, bool) { return apply(v, bit) }); err != nil {
			return err
		}
	} else {
		// Register bit offset with a memory operand: the offset is
		// signed and selects the operand-size unit containing the bit.
		soff := int64(signExtend(off, size))
		unit := soff >> (3 + uint(trailingZeros16(uint16(size))))
		addr := (s.ea() + uint64(unit*int64(size))) & s.addrMask()
		bit := uint64(soff) & (bitsN - 1)
		acc := accRead
		if kind != 0 {
			acc |= accWrite
		}
		var p pa
		if err := s.resolve(s.memSeg(), addr, size, acc, &p); err != nil {
			return err
		}
		b := s.buf[:size]
		if in.Lock {
			s.lock()
		}
		s.rd(&p, b)
		v, w := apply(getLE(b, size), bit)
		if w {
			putLE(b, v, size)
			s.wr(&p, b)
		}
		if in.Lock {
			s.unlock()
		}
	}
	var f uint64
	if cf {
		f = flagCF
	}
	s.setFlags(flagCF, f)
	return nil
}

func (s *state) cmpxchg() error {
	in := &s.inst
	size := in.OpSize
	if in.Opcode == 0xb0 {
		size = 1
	}
	acc := s.gpr(RAX, size)
	src := s.gpr(int(in.Reg), size)
	var old, fl uint64
	var equal bool
	err := s.rmModify(size, in.Lock, true, func(v uint64) (uint64, bool) {
		old = v
		_, fl = sub(acc, v, 0, size)
		equal = acc == v
		if equal {
			return src, true
		}
		// Memory is written back unchanged (the CPU always writes);
		// a register destination is left alone.
		return v, in.Mem
	})
	if err != nil {
		return err
	}
	s.setFlags(flagsArith, fl)
	if !equal {
		s.setGPR(RAX, size, old)
	}
	return nil
}

func (s *state) cmpxchg8b() error {
	in := &s.inst
	if !in.Mem {
		return s.fault(VectorUD, false, 0, 0)
	}
	half := 4
	if in.W {
		half = 8
	}
	size := 2 * half
	addr := s.ea()
	if size == 16 && addr&15 != 0 {
		return s.gp0()
	}
	var p pa
	if err := s.resolve(s.memSeg(), addr, size, accRead|accWrite, &p); err != nil {
		return err
	}
	b := s.buf[:size]
	s.lock()
	s.rd(&p, b)
	lo, hi := getLE(b, half), getLE(b[half:], half)
	eq := lo == s.gpr(RAX, half) && hi == s.gpr(RDX, half)
	if eq {
		putLE(b, s.gpr(RBX, half), half)
		putLE(b[half:], s.gpr(RCX, half), half)
	}
	s.wr(&p, b)
	s.unlock()
	if eq {
		s.setFlags(flagZF, flagZF)
	} else {
		s.setFlags(flagZF, 0)
		s.setGPR(RAX, half, lo)
		s.setGPR(RDX, half, hi)
	}
	return nil
}

func (s *state) movbe() error {
	in := &s.inst
	if !in.Mem {
		return s.fault(VectorUD, false, 0, 0)
	}
	size := in.OpSize
	if in.Opcode == 0xf0 {
		v, err := s.rmRead(size)
		if err != nil {
			return err
		}
		s.setGPR(int(in.Reg), size, bswap(v, size))
		return nil
	}
	return s.rmWrite(size, bswap(s.gpr(int(in.Reg), size), size))
}

func bswap(v uint64, size int) uint64 {
	var r uint64
	for i := 0; i < size; i++ {
		r = r<<8 | v&0xff
		v >>= 8
	}
	return r
}

// movdir64b copies 64 bytes from the memory operand to ES:[reg] (64-byte
// aligned) as one 64-byte write.
func (s *state) movdir64b() error {
	in := &s.inst
	dst := s.gpr(int(in.Reg), in.AddrSize) & s.addrMask()
	if dst&63 != 0 {
		return s.gp0()
	}
	var p, q pa
	if err := s.resolve(s.memSeg(), s.ea(), 64, accRead, &p); err != nil {
		return err
	}
	if err := s.resolve(ES, dst, 64, accWrite, &q); err != nil {
		return err
	}
	b := s.buf[:64]
	s.rd(&p, b)
	s.wr(&q, b)
	return nil
}
