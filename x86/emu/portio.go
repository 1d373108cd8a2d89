package emu

import (
	"fmt"

	"govmm/x86/decode"
)

func (e *Emulator) portIO(io *IO) error {
	s := &e.st
	s.maxRep = e.MaxRepeat
	if s.maxRep < 1 {
		s.maxRep = 1
	}
	err := s.portIO(io)
	s.hintValid = false
	return err
}

func (s *state) portIO(io *IO) error {
	if io.Size != 1 && io.Size != 2 && io.Size != 4 {
		return fmt.Errorf("port I/O intercept at port %#x: access size %d is not 1, 2 or 4", io.Port, io.Size)
	}
	if io.Rep && !io.String {
		return fmt.Errorf("port I/O intercept at port %#x: REP without a string instruction", io.Port)
	}
	s.begin()
	if len(io.Insn) > 0 {
		if err := s.decode(io.Insn); err != nil {
			return err
		}
		in := &s.inst
		op := in.Opcode
		ok := in.Enc == decode.Legacy && in.Map == decode.MapOne
		str := op >= 0x6c && op <= 0x6f
		isIn := op == 0x6c || op == 0x6d || op == 0xe4 || op == 0xe5 || op == 0xec || op == 0xed
		ok = ok && (str || op >= 0xe4 && op <= 0xe7 || op >= 0xec && op <= 0xef)
		if !ok || str != io.String || isIn != io.In {
			return fmt.Errorf("port I/O intercept at rip %#x port %#x: instruction bytes % x are not the reported %s",
				s.rip, io.Port, in.Bytes[:in.Len], ioName(io))
		}
		if io.InsnLen != 0 && io.InsnLen != in.Len {
			return fmt.Errorf("port I/O intercept at rip %#x: decoded length %d, intercept reported %d", s.rip, in.Len, io.InsnLen)
		}
		return s.finish(s.exec())
	}
	// No bytes: execute from the description with the mode's defaults.
	if io.InsnLen < 1 || io.InsnLen > decode.MaxLen {
		return fmt.Errorf("port I/O intercept at rip %#x: instruction length %d", s.rip, io.InsnLen)
	}
	in := &s.inst
	*in = decode.Inst{Mode: s.mode, Seg: -1, Base: decode.NoReg, Index: decode.NoReg, Len: io.InsnLen}
	in.AddrSize = s.mode / 8
	in.OpSize = io.Size // ignored for the byte forms
	var op byte
	switch {
	case io.String && io.In:
		op = 0x6c
	case io.String:
		op = 0x6e
	case io.In:
		op = 0xec
	default:
		op = 0xee
	}
	if io.Size != 1 {
		op |= 1
	}
	in.Opcode = op
	if io.Rep {
		in.Rep, in.LastRep = true, 0xf3
	}
	if !io.String {
		// Use the reported port (the immediate form with a 16-bit
		// immediate, which inOut accepts), whether it came from DX or
		// from an imm8.
		in.Opcode -= 8 // EC/ED/EE/EF -> E4/E5/E6/E7
		in.Imm = uint64(io.Port)
	}
	return s.finish(s.exec())
}

func ioName(io *IO) string {
	dir := "out"
	if io.In {
		dir = "in"
	}
	if io.String {
		dir += "s"
	}
	if io.Rep {
		dir = "rep " + dir
	}
	return fmt.Sprintf("%s of %d bytes", dir, io.Size)
}
