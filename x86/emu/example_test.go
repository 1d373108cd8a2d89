package emu_test

import (
	"errors"
	"fmt"

	"govmm/x86/emu"
)

// flatCPU is the smallest useful CPU: 32-bit flat protected mode without
// paging, 64 KiB of RAM at 0 and one device register at 0xfee00000.
type flatCPU struct {
	regs   [16]uint64
	rip    uint64
	rflags uint64
	ram    [64 << 10]byte
	dev    uint32
}

func (c *flatCPU) Reg(i int) uint64          { return c.regs[i] }
func (c *flatCPU) SetReg(i int, v uint64)    { c.regs[i] = v }
func (c *flatCPU) RIP() uint64               { return c.rip }
func (c *flatCPU) SetRIP(v uint64)           { c.rip = v }
func (c *flatCPU) RFLAGS() uint64            { return c.rflags }
func (c *flatCPU) SetRFLAGS(v uint64)        { c.rflags = v }
func (c *flatCPU) ReadVector(int, *[32]byte) {}
func (c *flatCPU) WriteVector(int, *[32]byte, bool) {
}
func (c *flatCPU) Segment(s emu.SegReg) emu.Segment {
	typ := uint8(3) // read/write data
	if s == emu.CS {
		typ = 11 // execute/read code
	}
	return emu.Segment{Limit: 0xffffffff, Type: typ, S: true, Present: true, DB: true, G: true}
}
func (c *flatCPU) Control(r emu.ControlReg) uint64 {
	if r == emu.CR0 {
		return 1 // PE
	}
	return 0
}
func (c *flatCPU) ReadPhys(gpa uint64, d []byte) bool {
	if gpa+uint64(len(d)) > uint64(len(c.ram)) {
		return false
	}
	copy(d, c.ram[gpa:])
	return true
}
func (c *flatCPU) WritePhys(gpa uint64, d []byte) bool {
	if gpa+uint64(len(d)) > uint64(len(c.ram)) {
		return false
	}
	copy(c.ram[gpa:], d)
	return true
}
func (c *flatCPU) MMIORead(gpa uint64, d []byte) {
	fmt.Printf("device read %d bytes at %#x\n", len(d), gpa)
	for i := range d {
		d[i] = byte(c.dev >> (8 * i))
	}
}
func (c *flatCPU) MMIOWrite(gpa uint64, d []byte) {
	fmt.Printf("device write % x at %#x\n", d, gpa)
	for i := range d {
		c.dev = c.dev&^(0xff<<(8*i)) | uint32(d[i])<<(8*i)
	}
}
func (c *flatCPU) PIORead(port uint16, d []byte)  {}
func (c *flatCPU) PIOWrite(port uint16, d []byte) {}

// A backend keeps one Emulator per vCPU and calls Step with the bytes the
// intercept reported.
func Example() {
	cpu := &flatCPU{rip: 0x1000, rflags: 2}
	cpu.regs[emu.RBX] = 0xfee00000
	cpu.regs[emu.RAX] = 0x12345678
	e := emu.New(cpu)

	// mov [ebx], eax
	if err := e.Step([]byte{0x89, 0x03}); err != nil {
		fmt.Println(err)
	}
	// lock or dword [ebx], 1 (one read and one write of 4 bytes)
	if err := e.Step([]byte{0xf0, 0x83, 0x0b, 0x01}); err != nil {
		fmt.Println(err)
	}
	// cpuid is not emulated: refused by name.
	err := e.Step([]byte{0x0f, 0xa2})
	var u *emu.UnsupportedError
	fmt.Println(errors.As(err, &u), u.Name)
	fmt.Printf("rip %#x\n", cpu.rip)
	// Output:
	// device write 78 56 34 12 at 0xfee00000
	// device read 4 bytes at 0xfee00000
	// device write 79 56 34 12 at 0xfee00000
	// true cpuid
	// rip 0x1006
}
