package mshv

import (
	"encoding/binary"
	"fmt"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
	"govmm/x86/emu"
)

// emuCPU is the emulator's view of a VP during one intercept. Registers
// are fetched lazily (the register page when valid, else one
// GET_VP_REGISTERS per class) and only what the instruction changed is
// written back (the register page with dirty bits, else SET_VP_REGISTERS).
// The emulator interface has no error returns, so the first hypercall
// failure is kept in err and reported after the instruction.
type emuCPU struct {
	v *VCPU
	h accel.IOHandler

	gpr      [16]uint64
	gprHave  uint32
	gprDirty uint32
	rip      uint64
	rflags   uint64
	ripDirty bool
	flDirty  bool

	seg     [7]emu.Segment
	segHave uint8
	cr      [4]uint64
	crHave  bool

	vals [16]mshvabi.RegisterValue
	err  error
}

var (
	_ emu.CPU       = (*emuCPU)(nil)
	_ emu.BusLocker = (*emuCPU)(nil)
)

// reset starts a new intercept from its message header.
func (c *emuCPU) reset(h *mshvabi.InterceptMessageHeader) {
	c.gprHave, c.gprDirty, c.segHave = 0, 0, 0
	c.crHave, c.ripDirty, c.flDirty = false, false, false
	c.err = nil
	c.rip, c.rflags = h.RIP, h.RFLAGS
	c.seedSeg(emu.CS, h.CS)
}

// seed provides GPR i from the message.
func (c *emuCPU) seed(i int, v uint64) {
	c.gpr[i] = v
	c.gprHave |= 1 << i
}

func (c *emuCPU) seedSeg(s emu.SegReg, r mshvabi.SegmentRegister) {
	c.seg[s] = emuSegment(r)
	c.segHave |= 1 << s
}

func emuSegment(r mshvabi.SegmentRegister) emu.Segment {
	a := toSegment(r)
	return emu.Segment{Base: a.Base, Limit: a.Limit, Selector: a.Selector, Type: a.Type, S: a.S, DPL: a.DPL,
		Present: a.Present, DB: a.DB, L: a.L, G: a.G, Unusable: a.Unusable}
}

func (c *emuCPU) pageValid() bool { return c.v.page != nil && c.v.page.IsValid != 0 }

func (c *emuCPU) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

func (c *emuCPU) loadGPRs() {
	if c.pageValid() {
		for i := 0; i < 16; i++ {
			if c.gprHave&(1<<i) == 0 {
				c.gpr[i] = c.v.page.GPRs[i]
			}
		}
		c.gprHave = 0xffff
		return
	}
	var names [16]uint32
	for i := range names {
		names[i] = mshvabi.RegRAX + uint32(i)
	}
	if err := c.v.hv.getRegs(c.v.bufs, uint32(c.v.index), names[:], c.vals[:]); err != nil {
		c.fail(fmt.Errorf("read general registers: %w", err))
		return
	}
	for i := 0; i < 16; i++ {
		if c.gprHave&(1<<i) == 0 {
			c.gpr[i] = c.vals[i].Low
		}
	}
	c.gprHave = 0xffff
}

func (c *emuCPU) Reg(i int) uint64 {
	if c.gprHave&(1<<i) == 0 {
		c.loadGPRs()
	}
	return c.gpr[i]
}

func (c *emuCPU) SetReg(i int, v uint64) {
	c.gpr[i] = v
	c.gprHave |= 1 << i
	c.gprDirty |= 1 << i
}

func (c *emuCPU) RIP() uint64        { return c.rip }
func (c *emuCPU) SetRIP(v uint64)    { c.rip, c.ripDirty = v, true }
func (c *emuCPU) RFLAGS() uint64     { return c.rflags }
func (c *emuCPU) SetRFLAGS(v uint64) { c.rflags, c.flDirty = v, true }

var segNames = [7]uint32{mshvabi.RegES, mshvabi.RegCS, mshvabi.RegSS, mshvabi.RegDS, mshvabi.RegFS, mshvabi.RegGS, mshvabi.RegTR}

func (c *emuCPU) Segment(s emu.SegReg) emu.Segment {
	if s < 0 || int(s) >= len(c.seg) {
		return emu.Segment{Unusable: true}
	}
	if c.segHave&(1<<s) != 0 {
		return c.seg[s]
	}
	if s != emu.TR && c.pageValid() {
		for i := 0; i < 6; i++ {
			if c.segHave&(1<<i) == 0 {
				c.seg[i] = emuSegment(c.v.page.Segments[i])
				c.segHave |= 1 << i
			}
		}
		return c.seg[s]
	}
	if err := c.v.hv.getRegs(c.v.bufs, uint32(c.v.index), segNames[:], c.vals[:7]); err != nil {
		c.fail(fmt.Errorf("read segment registers: %w", err))
		return emu.Segment{Unusable: true}
	}
	for i := 0; i < 7; i++ {
		if c.segHave&(1<<i) == 0 {
			c.seg[i] = emuSegment(segFromValue(c.vals[i]))
			c.segHave |= 1 << i
		}
	}
	return c.seg[s]
}

func (c *emuCPU) Control(r emu.ControlReg) uint64 {
	if r < 0 || int(r) >= len(c.cr) {
		return 0
	}
	if !c.crHave {
		if c.pageValid() {
			p := c.v.page
			c.cr = [4]uint64{p.CR0, p.CR3, p.CR4, p.EFER}
		} else {
			names := []uint32{mshvabi.RegCR0, mshvabi.RegCR3, mshvabi.RegCR4, mshvabi.RegEFER}
			if err := c.v.hv.getRegs(c.v.bufs, uint32(c.v.index), names, c.vals[:4]); err != nil {
				c.fail(fmt.Errorf("read control registers: %w", err))
				return 0
			}
			for i := range c.cr {
				c.cr[i] = c.vals[i].Low
			}
		}
		c.crHave = true
	}
	return c.cr[r]
}

// ReadVector reads XMMi through its register and the upper YMM half from
// the XSAVE state (MSHV has no register for it).
func (c *emuCPU) ReadVector(i int, v *[32]byte) {
	*v = [32]byte{}
	if err := c.v.hv.getRegs(c.v.bufs, uint32(c.v.index), []uint32{mshvabi.RegXMM0 + uint32(i)}, c.vals[:1]); err != nil {
		c.fail(fmt.Errorf("read xmm%d: %w", i, err))
		return
	}
	put64(v[0:], c.vals[0].Low)
	put64(v[8:], c.vals[0].High)
	std, l, err := c.xsave()
	if err != nil {
		c.fail(fmt.Errorf("read the upper half of ymm%d: %w", i, err))
		return
	}
	if avx := l.comps[2]; avx.stdOff != 0 && binary.LittleEndian.Uint64(std[512:])&(1<<2) != 0 {
		copy(v[16:], std[avx.stdOff+16*uint32(i):])
	}
}

func (c *emuCPU) xsave() ([]byte, *xsaveLayout, error) {
	l, err := c.v.vm.xsaveLayout(c.v)
	if err != nil {
		return nil, nil, err
	}
	x, err := c.v.XSave()
	if err != nil {
		return nil, nil, err
	}
	return x.Data, l, nil
}

// WriteVector writes XMMi through its register (legacy SSE: the upper
// half is preserved) or, for VEX writes, the whole YMMi and the zeroed
// bits above it through the XSAVE state.
func (c *emuCPU) WriteVector(i int, v *[32]byte, vex bool) {
	if !vex {
		r := reg128(mshvabi.RegXMM0+uint32(i), get64(v[0:]), get64(v[8:]))
		if err := c.v.hv.setRegs(c.v.bufs, uint32(c.v.index), []mshvabi.RegisterAssoc{r}); err != nil {
			c.fail(fmt.Errorf("write xmm%d: %w", i, err))
		}
		return
	}
	std, l, err := c.xsave()
	if err != nil {
		c.fail(fmt.Errorf("write ymm%d: %w", i, err))
		return
	}
	avx := l.comps[2]
	if avx.stdOff == 0 || int(avx.stdOff+avx.size) > len(std) {
		c.fail(fmt.Errorf("write ymm%d: %w (the partition has no AVX state)", i, accel.ErrNotSupported))
		return
	}
	copy(std[160+16*i:160+16*i+16], v[:16])
	copy(std[avx.stdOff+16*uint32(i):avx.stdOff+16*uint32(i)+16], v[16:])
	bv := binary.LittleEndian.Uint64(std[512:]) | 1<<1 | 1<<2
	if z := l.comps[6]; z.stdOff != 0 && i < 16 && bv&(1<<6) != 0 && int(z.stdOff+z.size) <= len(std) {
		clear(std[z.stdOff+32*uint32(i) : z.stdOff+32*uint32(i)+32]) // ZMM_Hi256
	}
	binary.LittleEndian.PutUint64(std[512:], bv)
	if err := c.v.SetXSave(&accel.XSave{Data: std}); err != nil {
		c.fail(fmt.Errorf("write ymm%d: %w", i, err))
	}
}

func (c *emuCPU) ReadPhys(gpa uint64, data []byte) bool {
	b := c.v.vm.ram(gpa, len(data), false)
	if b == nil {
		return false
	}
	copy(data, b)
	return true
}

func (c *emuCPU) WritePhys(gpa uint64, data []byte) bool {
	b := c.v.vm.ram(gpa, len(data), true)
	if b == nil {
		return false
	}
	copy(b, data)
	if mark := c.v.vm.cfg.MarkDirty; mark != nil {
		// The hypervisor's dirty bitmap sees only the guest's writes.
		mark(gpa, uint64(len(data)))
	}
	return true
}

func (c *emuCPU) MMIORead(gpa uint64, data []byte)  { c.h.MMIORead(gpa, data) }
func (c *emuCPU) MMIOWrite(gpa uint64, data []byte) { c.h.MMIOWrite(gpa, data) }
func (c *emuCPU) PIORead(port uint16, data []byte)  { c.h.PIORead(port, data) }
func (c *emuCPU) PIOWrite(port uint16, data []byte) { c.h.PIOWrite(port, data) }

func (c *emuCPU) LockBus()   { c.v.vm.busMu.Lock() }
func (c *emuCPU) UnlockBus() { c.v.vm.busMu.Unlock() }

// commit writes back what the instruction changed, and extra (registers
// the register page has no place for) with them.
func (c *emuCPU) commit(extra []mshvabi.RegisterAssoc) error {
	if c.err != nil {
		return c.err
	}
	if c.pageValid() {
		if len(extra) > 0 {
			if err := c.v.hv.setRegs(c.v.bufs, uint32(c.v.index), extra); err != nil {
				return fmt.Errorf("write back registers: %w", err)
			}
		}
		p := c.v.page
		for i := 0; i < 16; i++ {
			if c.gprDirty&(1<<i) != 0 {
				p.GPRs[i] = c.gpr[i]
			}
		}
		if c.gprDirty != 0 {
			p.Dirty |= mshvabi.RegPageDirtyGeneral
		}
		if c.ripDirty {
			p.RIP = c.rip
			p.Dirty |= mshvabi.RegPageDirtyIP
		}
		if c.flDirty {
			p.RFLAGS = c.rflags
			p.Dirty |= mshvabi.RegPageDirtyFlags
		}
		c.v.pagePending = c.v.pagePending || p.Dirty != 0
		return nil
	}
	regs := extra
	for i := 0; i < 16; i++ {
		if c.gprDirty&(1<<i) != 0 {
			regs = append(regs, reg(mshvabi.RegRAX+uint32(i), c.gpr[i]))
		}
	}
	if c.ripDirty {
		regs = append(regs, reg(mshvabi.RegRIP, c.rip))
	}
	if c.flDirty {
		regs = append(regs, reg(mshvabi.RegRFLAGS, c.rflags))
	}
	if len(regs) == 0 {
		return nil
	}
	if err := c.v.hv.setRegs(c.v.bufs, uint32(c.v.index), regs); err != nil {
		return fmt.Errorf("write back registers: %w", err)
	}
	return nil
}

func put64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

func get64(b []byte) uint64 {
	var v uint64
	for i := 0; i < 8; i++ {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}
