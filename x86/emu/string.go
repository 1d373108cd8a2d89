package emu

import "fmt"

// String instructions (MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS), with
// REP/REPE/REPNE, DF and the address size.

func (s *state) execString() error {
	in := &s.inst
	op := in.Opcode
	size := in.OpSize
	if op&1 == 0 {
		size = 1
	}
	if size == 8 && (op == 0x6d || op == 0x6f) {
		size = 4 // INS/OUTS have no 64-bit form
	}
	asz := in.AddrSize
	am := sizeMask(asz)
	rep := in.LastRep != 0
	step := uint64(size)
	if s.rflags&flagDF != 0 {
		step = -step
	}
	srcSeg := DS
	if in.Seg >= 0 {
		srcSeg = SegReg(in.Seg)
	}
	isIO := op >= 0x6c && op <= 0x6f
	var port uint16
	if isIO {
		port = uint16(s.reg(RDX))
		if err := s.ioAllowed(port, size); err != nil {
			return err
		}
	}
	count := s.reg(RCX) & am
	for iter := 0; ; iter++ {
		if rep {
			if count == 0 {
				return nil
			}
			if iter >= s.maxRep {
				return errRepYield
			}
		}
		si := s.reg(RSI) & am
		di := s.reg(RDI) & am
		b := s.buf[:size]
		var p, q pa
		zf := false
		switch op {
		case 0xa4, 0xa5: // MOVS
			if err := s.resolve(srcSeg, si, size, accRead, &p); err != nil {
				return err
			}
			if err := s.resolve(ES, di, size, accWrite, &q); err != nil {
				return err
			}
			s.rd(&p, b)
			s.wr(&q, b)
			s.setGPR(RSI, asz, si+step)
			s.setGPR(RDI, asz, di+step)
		case 0xa6, 0xa7: // CMPS: flags of [rSI] - [rDI]
			// The CPU checks ES:rDI first (the differential test shows
			// CR2 = rDI when both operands fault).
			if err := s.resolve(ES, di, size, accRead, &q); err != nil {
				return err
			}
			if err := s.resolve(srcSeg, si, size, accRead, &p); err != nil {
				return err
			}
			b2 := s.buf2[:size]
			s.rd(&p, b)
			s.rd(&q, b2)
			_, f := sub(getLE(b, size), getLE(b2, size), 0, size)
			s.setFlags(flagsArith, f)
			zf = f&flagZF != 0
			s.setGPR(RSI, asz, si+step)
			s.setGPR(RDI, asz, di+step)
		case 0xaa, 0xab: // STOS
			if err := s.resolve(ES, di, size, accWrite, &q); err != nil {
				return err
			}
			putLE(b, s.gpr(RAX, size), size)
			s.wr(&q, b)
			s.setGPR(RDI, asz, di+step)
		case 0xac, 0xad: // LODS
			if err := s.resolve(srcSeg, si, size, accRead, &p); err != nil {
				return err
			}
			s.rd(&p, b)
			s.setGPR(RAX, size, getLE(b, size))
			s.setGPR(RSI, asz, si+step)
		case 0xae, 0xaf: // SCAS: flags of rAX - [rDI]
			if err := s.resolve(ES, di, size, accRead, &q); err != nil {
				return err
			}
			s.rd(&q, b)
			_, f := sub(s.gpr(RAX, size), getLE(b, size), 0, size)
			s.setFlags(flagsArith, f)
			zf = f&flagZF != 0
			s.setGPR(RDI, asz, di+step)
		case 0x6c, 0x6d: // INS
			if err := s.resolve(ES, di, size, accWrite, &q); err != nil {
				return err
			}
			s.cpu.PIORead(port, b)
			s.wr(&q, b)
			s.setGPR(RDI, asz, di+step)
		case 0x6e, 0x6f: // OUTS
			if err := s.resolve(srcSeg, si, size, accRead, &p); err != nil {
				return err
			}
			s.rd(&p, b)
			s.cpu.PIOWrite(port, b)
			s.setGPR(RSI, asz, si+step)
		default:
			return fmt.Errorf("x86/emu: opcode %#x is not a string instruction", op)
		}
		if !rep {
			return nil
		}
		count = (count - 1) & am
		s.setGPR(RCX, asz, count)
		if op >= 0xa6 && op <= 0xa7 || op >= 0xae {
			if in.LastRep == 0xf3 && !zf || in.LastRep == 0xf2 && zf {
				return nil
			}
		}
	}
}

// ioAllowed checks the I/O privilege level and, when CPL > IOPL (or in
// virtual-8086 mode), the TSS I/O permission bitmap.
func (s *state) ioAllowed(port uint16, size int) error {
	if !s.protected() {
		return nil
	}
	iopl := int(s.rflags&flagIOPL) >> 12
	if !s.vm86 && s.cpl <= iopl {
		return nil
	}
	tr := s.segment(TR)
	if tr.Unusable || !tr.Present || (tr.Type != 9 && tr.Type != 11) || tr.Limit < 0x67 {
		return s.gp0()
	}
	b := s.pte[:2]
	var p pa
	if err := s.resolveLinear(s.trLinear(0x66), 2, accRead|accImplicit, &p); err != nil {
		return err
	}
	s.rd(&p, b)
	base := uint64(b[0]) | uint64(b[1])<<8
	off := base + uint64(port>>3)
	if off+1 > uint64(tr.Limit) {
		return s.gp0()
	}
	if err := s.resolveLinear(s.trLinear(off), 2, accRead|accImplicit, &p); err != nil {
		return err
	}
	s.rd(&p, b)
	mask := uint16(1)<<uint(size) - 1
	if (uint16(b[0])|uint16(b[1])<<8)>>(port&7)&mask != 0 {
		return s.gp0()
	}
	return nil
}

func (s *state) trLinear(off uint64) uint64 {
	la := s.segment(TR).Base + off
	if s.mode != 64 {
		la &= 0xffffffff
	}
	return la
}

// inOut is IN/OUT with an immediate or DX port.
func (s *state) inOut() error {
	in := &s.inst
	op := in.Opcode
	size := in.OpSize
	if op&1 == 0 {
		size = 1
	} else if size == 8 {
		size = 4
	}
	var port uint16
	if op < 0xe8 {
		port = uint16(in.Imm)
	} else {
		port = uint16(s.reg(RDX))
	}
	if err := s.ioAllowed(port, size); err != nil {
		return err
	}
	b := s.buf[:size]
	if op&2 == 0 { // E4/E5/EC/ED: IN
		s.cpu.PIORead(port, b)
		s.setGPR(RAX, size, getLE(b, size))
		return nil
	}
	putLE(b, s.gpr(RAX, size), size)
	s.cpu.PIOWrite(port, b)
	return nil
}
