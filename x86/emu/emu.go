package emu

import (
	"errors"
	"fmt"

	"govmm/x86/decode"
)

// state is the Emulator's implementation state. Everything a Step needs
// lives here so that nothing escapes to the heap per instruction.
type state struct {
	cpu  CPU
	inst decode.Inst

	// Per-step snapshot of the CPU.
	mode             int // 16, 32 or 64 (code size)
	vm86             bool
	cpl              int
	cr0, cr3, cr4    uint64
	cr3Valid         bool
	cr4Valid         bool
	efer             uint64
	rflags, rflags0  uint64
	rip              uint64
	regs             [16]uint64
	have, dirty      uint16
	segs             [7]Segment
	segHave          uint8
	hintValid        bool
	hintGVA, hintGPA uint64
	maxRep           int

	pte   [8]byte
	probe [1]byte
	vtmp  [32]byte
	buf   [64]byte
	buf2  [64]byte
	vec   [32]byte
	fetch [decode.MaxLen]byte
}

func (s *state) setHint(gva, gpa uint64) {
	s.hintValid, s.hintGVA, s.hintGPA = true, gva, gpa
}

func (s *state) protected() bool { return s.cr0&cr0PE != 0 }

// getCR4 reads CR4 on first use in a step.
func (s *state) getCR4() uint64 {
	if !s.cr4Valid {
		s.cr4, s.cr4Valid = s.cpu.Control(CR4), true
	}
	return s.cr4
}

func (s *state) segment(r SegReg) *Segment {
	if s.segHave&(1<<r) == 0 {
		s.segs[r] = s.cpu.Segment(r)
		s.segHave |= 1 << r
	}
	return &s.segs[r]
}

func (s *state) reg(i int) uint64 {
	if s.have&(1<<i) == 0 {
		s.regs[i] = s.cpu.Reg(i)
		s.have |= 1 << i
	}
	return s.regs[i]
}

func (s *state) setReg(i int, v uint64) {
	s.regs[i] = v
	s.have |= 1 << i
	s.dirty |= 1 << i
}

// gpr reads general register r (encoding index) with size bytes,
// honouring AH/CH/DH/BH for byte registers 4-7 without REX.
func (s *state) gpr(r int, size int) uint64 {
	if size == 1 && r >= 4 && r < 8 && s.inst.REX == 0 && s.inst.Enc == decode.Legacy {
		return s.reg(r-4) >> 8 & 0xff
	}
	return s.reg(r) & sizeMask(size)
}

func (s *state) setGPR(r int, size int, v uint64) {
	switch size {
	case 1:
		if r >= 4 && r < 8 && s.inst.REX == 0 && s.inst.Enc == decode.Legacy {
			old := s.reg(r - 4)
			s.setReg(r-4, old&^0xff00|(v&0xff)<<8)
			return
		}
		s.setReg(r, s.reg(r)&^0xff|v&0xff)
	case 2:
		s.setReg(r, s.reg(r)&^0xffff|v&0xffff)
	case 4:
		if s.mode == 64 {
			s.setReg(r, v&0xffffffff)
		} else {
			s.setReg(r, s.reg(r)&^0xffffffff|v&0xffffffff)
		}
	default:
		s.setReg(r, v)
	}
}

func sizeMask(size int) uint64 {
	if size >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*uint(size)) - 1
}

func (s *state) addrMask() uint64 { return sizeMask(s.inst.AddrSize) }

// nextRIP is the address of the next instruction.
func (s *state) nextRIP() uint64 {
	r := s.rip + uint64(s.inst.Len)
	switch s.mode {
	case 16:
		return r & 0xffff
	case 32:
		return r & 0xffffffff
	}
	return r
}

// memSeg is the segment of the instruction's ModRM memory operand.
func (s *state) memSeg() SegReg {
	if s.inst.Seg >= 0 {
		return SegReg(s.inst.Seg)
	}
	if s.inst.SSBased {
		return SS
	}
	return DS
}

// ea is the effective address (offset) of the memory operand.
func (s *state) ea() uint64 {
	in := &s.inst
	if in.Moffs {
		return uint64(in.Disp) & s.addrMask()
	}
	if in.RIPRel {
		return (s.rip + uint64(in.Len) + uint64(in.Disp)) & s.addrMask()
	}
	a := uint64(in.Disp)
	if in.Base != decode.NoReg {
		a += s.reg(int(in.Base))
	}
	if in.Index != decode.NoReg {
		a += s.reg(int(in.Index)) * uint64(in.Scale)
	}
	return a & s.addrMask()
}

// begin snapshots the CPU state a step needs and derives the mode.
func (s *state) begin() {
	c := s.cpu
	s.have, s.dirty, s.segHave = 0, 0, 0
	s.cr0 = c.Control(CR0)
	s.efer = c.Control(EFER)
	s.cr4Valid = false
	s.cr3Valid = false
	s.rflags = c.RFLAGS()
	s.rflags0 = s.rflags
	s.rip = c.RIP()
	// Only a few fields of CS are needed here; the descriptor is cached
	// on demand by segment() (copying the whole struct out of the
	// interface call's result costs more than the call).
	cs := c.Segment(CS)
	s.vm86 = false
	switch {
	case s.cr0&cr0PE == 0:
		s.mode, s.cpl = 16, 0
		if cs.DB {
			s.mode = 32
		}
	case s.rflags&flagVM != 0 && s.efer&eferLMA == 0:
		s.mode, s.cpl, s.vm86 = 16, 3, true
	default:
		// CPL is the RPL of CS (and equals SS.DPL).
		s.cpl = int(cs.Selector & 3)
		switch {
		case s.efer&eferLMA != 0 && cs.L:
			s.mode = 64
		case cs.DB:
			s.mode = 32
		default:
			s.mode = 16
		}
	}
	if s.mode != 64 {
		s.rip &= 0xffffffff
	}
}

// commit writes back the registers and flags that changed.
func (s *state) commit() {
	for d := s.dirty; d != 0; d &= d - 1 {
		i := trailingZeros16(d)
		s.cpu.SetReg(i, s.regs[i])
	}
	s.dirty = 0
	if s.rflags != s.rflags0 {
		s.cpu.SetRFLAGS(s.rflags)
		s.rflags0 = s.rflags
	}
}

func trailingZeros16(x uint16) int {
	n := 0
	for x&1 == 0 {
		x >>= 1
		n++
	}
	return n
}

// errRepYield is returned internally when a REP instruction used up its
// iteration budget: commit, but leave RIP.
var errRepYield = errors.New("rep yield")

func (e *Emulator) step(insn []byte) error {
	s := &e.st
	s.maxRep = e.MaxRepeat
	if s.maxRep < 1 {
		s.maxRep = 1
	}
	err := s.run(insn)
	s.hintValid = false
	return err
}

func (s *state) run(insn []byte) error {
	s.begin()
	if err := s.decode(insn); err != nil {
		return err
	}
	return s.finish(s.exec())
}

// finish commits the result of an instruction.
func (s *state) finish(err error) error {
	switch err {
	case nil:
		s.rflags &^= flagRF
		s.commit()
		s.cpu.SetRIP(s.nextRIP())
		return nil
	case errRepYield:
		s.restoreCmpFlags()
		s.commit()
		return nil
	}
	if _, ok := err.(*Fault); ok && (s.inst.Rep || s.inst.Repne) && isString(&s.inst) {
		// REP string progress of the completed iterations stays.
		s.restoreCmpFlags()
		s.commit()
	}
	return err
}

// decode decodes the instruction at CS:RIP, fetching more bytes from guest
// RAM when insn is short.
func (s *state) decode(insn []byte) error {
	if len(insn) > decode.MaxLen {
		insn = insn[:decode.MaxLen]
	}
	err := decode.Decode(insn, s.mode, &s.inst)
	if err == decode.ErrTruncated {
		have := copy(s.fetch[:], insn)
		for err == decode.ErrTruncated && have < decode.MaxLen {
			off := (s.rip + uint64(have)) & sizeMaskMode(s.mode)
			la, ferr := s.linear(CS, off, 1, accFetch)
			if ferr != nil {
				return ferr
			}
			chunk := 4096 - int(la&0xfff)
			if chunk > decode.MaxLen-have {
				chunk = decode.MaxLen - have
			}
			if s.mode != 64 {
				// Check the code segment limit for the whole chunk.
				for chunk > 1 {
					if _, lerr := s.linear(CS, off, chunk, accFetch); lerr == nil {
						break
					}
					chunk--
				}
			}
			gpa, terr := s.translate(la, accFetch)
			if terr != nil {
				return terr
			}
			if !s.cpu.ReadPhys(gpa, s.fetch[have:have+chunk]) {
				return fmt.Errorf("instruction at rip %#x (% x) continues at gpa %#x, which is not RAM: %w",
					s.rip, s.fetch[:have], gpa, ErrTruncated)
			}
			have += chunk
			err = decode.Decode(s.fetch[:have], s.mode, &s.inst)
		}
	}
	switch err {
	case nil:
		return nil
	case decode.ErrInvalid:
		return s.fault(VectorUD, false, 0, 0)
	case decode.ErrTooLong:
		return s.gp0()
	}
	return fmt.Errorf("instruction at rip %#x (% x): %w", s.rip, insn, ErrTruncated)
}

func sizeMaskMode(mode int) uint64 {
	if mode == 64 {
		return ^uint64(0)
	}
	return 0xffffffff
}

func (s *state) unsupported(reason string) error {
	in := &s.inst
	b := make([]byte, in.Len)
	copy(b, in.Bytes[:in.Len])
	return &UnsupportedError{Name: in.Name(), Bytes: b, RIP: s.rip, Reason: reason}
}

func isString(in *decode.Inst) bool {
	if in.Enc != decode.Legacy || in.Map != decode.MapOne {
		return false
	}
	switch in.Opcode {
	case 0x6c, 0x6d, 0x6e, 0x6f, 0xa4, 0xa5, 0xa6, 0xa7, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf:
		return true
	}
	return false
}

// restoreCmpFlags puts back the flags a REPE/REPNE CMPS or SCAS had when it
// started: the CPU restores them when such an instruction is interrupted
// by a fault (it does not use them as input, so it can resume), which the
// differential test confirms.
func (s *state) restoreCmpFlags() {
	switch s.inst.Opcode {
	case 0xa6, 0xa7, 0xae, 0xaf:
		s.rflags = s.rflags0
	}
}
