package emu

// SSE and AVX moves a driver may aim at MMIO.

// vecKind describes one supported vector move.
type vecKind struct {
	store   bool // r/m <- xmm (else xmm <- r/m)
	size    int  // memory access size: 4, 8, 16 or 32
	align   bool // #GP(0) unless aligned to the access size
	gpr     bool // the r/m register form is a general register (MOVD/MOVQ)
	zeroExt bool // loads zero the rest of the 128-bit register
}

func (s *state) sseUsable(vex bool) error {
	if s.cr0&cr0EM != 0 && !vex {
		return s.fault(VectorUD, false, 0, 0)
	}
	if s.getCR4()&cr4OSFXSR == 0 {
		return s.fault(VectorUD, false, 0, 0)
	}
	if s.cr0&cr0TS != 0 {
		return s.fault(VectorNM, false, 0, 0)
	}
	return nil
}

// sseKind maps a legacy 0F opcode and mandatory prefix to a move.
func (s *state) sseKind() (vecKind, bool, string) {
	in := &s.inst
	pfx := byte(0) // 0 none, 0x66, 0xf3, 0xf2
	switch {
	case in.LastRep != 0:
		pfx = in.LastRep
	case in.OpPfx:
		pfx = 0x66
	}
	q := 4
	if in.W {
		q = 8
	}
	switch in.Opcode {
	case 0x10, 0x11: // MOVUPS / MOVUPD
		if pfx == 0 || pfx == 0x66 {
			return vecKind{store: in.Opcode == 0x11, size: 16}, true, ""
		}
	case 0x28, 0x29: // MOVAPS / MOVAPD
		if pfx == 0 || pfx == 0x66 {
			return vecKind{store: in.Opcode == 0x29, size: 16, align: true}, true, ""
		}
	case 0x2b: // MOVNTPS / MOVNTPD
		if (pfx == 0 || pfx == 0x66) && in.Mem {
			return vecKind{store: true, size: 16, align: true}, true, ""
		}
	case 0x6e: // MOVD/MOVQ xmm, r/m
		if pfx == 0x66 {
			return vecKind{size: q, gpr: true, zeroExt: true}, true, ""
		}
		if pfx == 0 {
			return vecKind{}, false, "MMX register form"
		}
	case 0x7e:
		switch pfx {
		case 0x66: // MOVD/MOVQ r/m, xmm
			return vecKind{store: true, size: q, gpr: true}, true, ""
		case 0xf3: // MOVQ xmm, xmm/m64
			return vecKind{size: 8, zeroExt: true}, true, ""
		case 0:
			return vecKind{}, false, "MMX register form"
		}
	case 0xd6: // MOVQ xmm/m64, xmm
		if pfx == 0x66 {
			return vecKind{store: true, size: 8, zeroExt: true}, true, ""
		}
	case 0x6f, 0x7f:
		switch pfx {
		case 0x66: // MOVDQA
			return vecKind{store: in.Opcode == 0x7f, size: 16, align: true}, true, ""
		case 0xf3: // MOVDQU
			return vecKind{store: in.Opcode == 0x7f, size: 16}, true, ""
		case 0:
			return vecKind{}, false, "MMX register form"
		}
	case 0xe7: // MOVNTDQ
		if pfx == 0x66 && in.Mem {
			return vecKind{store: true, size: 16, align: true}, true, ""
		}
		if pfx == 0 {
			return vecKind{}, false, "MMX register form"
		}
	}
	return vecKind{}, false, ""
}

func (s *state) execSSE() error {
	k, ok, why := s.sseKind()
	if !ok {
		return s.unsupported(why)
	}
	if err := s.sseUsable(false); err != nil {
		return err
	}
	return s.vecMove(k, false)
}

func (s *state) execVEX() error {
	in := &s.inst
	if in.Map != 1 {
		return s.unsupported("")
	}
	var k vecKind
	ok := false
	vl := 16
	if in.L != 0 {
		vl = 32
	}
	switch in.Opcode {
	case 0x10, 0x11:
		if in.PP <= 1 {
			k, ok = vecKind{store: in.Opcode == 0x11, size: vl}, true
		}
	case 0x28, 0x29:
		if in.PP <= 1 {
			k, ok = vecKind{store: in.Opcode == 0x29, size: vl, align: true}, true
		}
	case 0x2b:
		if in.PP <= 1 && in.Mem {
			k, ok = vecKind{store: true, size: vl, align: true}, true
		}
	case 0x6f, 0x7f:
		switch in.PP {
		case 1:
			k, ok = vecKind{store: in.Opcode == 0x7f, size: vl, align: true}, true
		case 2:
			k, ok = vecKind{store: in.Opcode == 0x7f, size: vl}, true
		}
	case 0xe7:
		if in.PP == 1 && in.Mem {
			k, ok = vecKind{store: true, size: vl, align: true}, true
		}
	case 0x6e, 0x7e, 0xd6:
		if in.L != 0 {
			return s.fault(VectorUD, false, 0, 0)
		}
		q := 4
		if in.W && s.mode == 64 {
			q = 8
		}
		switch {
		case in.Opcode == 0x6e && in.PP == 1:
			k, ok = vecKind{size: q, gpr: true, zeroExt: true}, true
		case in.Opcode == 0x7e && in.PP == 1:
			k, ok = vecKind{store: true, size: q, gpr: true}, true
		case in.Opcode == 0x7e && in.PP == 2:
			k, ok = vecKind{size: 8, zeroExt: true}, true
		case in.Opcode == 0xd6 && in.PP == 1:
			k, ok = vecKind{store: true, size: 8, zeroExt: true}, true
		}
	}
	if !ok {
		return s.unsupported("")
	}
	if in.VVVV != 0 {
		return s.fault(VectorUD, false, 0, 0)
	}
	if err := s.sseUsable(true); err != nil {
		return err
	}
	return s.vecMove(k, true)
}

// vecMove performs a vector move; vex selects VEX semantics (zero the
// register above the written width).
func (s *state) vecMove(k vecKind, vex bool) error {
	in := &s.inst
	xr := int(in.Reg)
	v := &s.vec
	if k.store {
		s.cpu.ReadVector(xr, v)
		if !in.Mem {
			if k.gpr {
				s.setGPR(int(in.RM), k.size, getLE(v[:], k.size))
				return nil
			}
			// Register-to-register store form (e.g. MOVDQA xmm2, xmm1
			// encoded as 7F, MOVQ xmm/m64 D6).
			s.clearAbove(v, k, vex)
			s.cpu.WriteVector(int(in.RM), v, vex)
			return nil
		}
		addr := s.ea()
		if k.align && addr&uint64(k.size-1) != 0 {
			return s.gp0()
		}
		var p pa
		if err := s.resolve(s.memSeg(), addr, k.size, accWrite, &p); err != nil {
			return err
		}
		s.wr(&p, v[:k.size])
		return nil
	}
	// Loads.
	tmp := &s.vtmp
	if !in.Mem {
		if k.gpr {
			putLE(tmp[:], s.gpr(int(in.RM), k.size), k.size)
		} else {
			s.cpu.ReadVector(int(in.RM), tmp)
		}
	} else {
		addr := s.ea()
		if k.align && addr&uint64(k.size-1) != 0 {
			return s.gp0()
		}
		var p pa
		if err := s.resolve(s.memSeg(), addr, k.size, accRead, &p); err != nil {
			return err
		}
		s.rd(&p, tmp[:k.size])
	}
	if !vex {
		s.cpu.ReadVector(xr, v) // keep bytes 16-31 (legacy SSE preserves them)
	}
	copy(v[:k.size], tmp[:k.size])
	s.clearAbove(v, k, vex)
	s.cpu.WriteVector(xr, v, vex)
	return nil
}

// clearAbove zeroes the destination bytes an instruction clears: up to
// 128 bits for zero-extending MOVD/MOVQ, up to 256 bits for VEX.
func (s *state) clearAbove(v *[32]byte, k vecKind, vex bool) {
	end := 16
	if vex {
		end = 32
	}
	from := k.size
	if !k.zeroExt && !vex {
		from = 16
	}
	if !k.zeroExt && vex && k.size >= 16 {
		from = k.size
	}
	for i := from; i < end; i++ {
		v[i] = 0
	}
}
