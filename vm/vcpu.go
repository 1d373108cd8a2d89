package vm

import (
	"encoding/binary"
	"fmt"

	"govmm/accel"
)

// setupVCPU creates vCPU index on the calling (locked) thread and gives it
// its CPUID and, for the BSP, the loader's entry state. APs stay in the
// wait-for-SIPI state the accelerator puts them in.
func (v *VM) setupVCPU(index int) (accel.VCPU, error) {
	c, err := v.avm.CreateVCPU(index)
	if err != nil {
		return nil, fmt.Errorf("create vCPU %d: %w", index, err)
	}
	v.pauseMu.Lock()
	v.vcpus = append(v.vcpus, c)
	v.pauseMu.Unlock()
	// The backend gave the vCPU its CPUID table (the VM's, specialised
	// with cpu.ForVCPU) when it created it.
	if index == 0 {
		if r, ok := c.(accel.ExtINTReceiver); ok && v.plat.extint != nil {
			r.SetExtINTSource(v.plat.extint)
		}
	}
	if v.restore != nil {
		var bsp *VCPUState
		if index != 0 {
			bsp = &v.restore.VCPUs[0]
		}
		if err := restoreVCPU(c, &v.restore.VCPUs[index], bsp); err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", index, err)
		}
		return c, nil
	}
	if index != 0 {
		return c, nil
	}
	e := v.plat.entry
	if err := c.SetSregs(&e.Sregs); err != nil {
		return nil, fmt.Errorf("vCPU 0: set %s entry segment registers: %w", e.Format, err)
	}
	if err := c.SetRegs(&e.Regs); err != nil {
		return nil, fmt.Errorf("vCPU 0: set %s entry registers: %w", e.Format, err)
	}
	return c, nil
}

// instructionBytes reads up to 15 bytes at the vCPU's CS:RIP, translating
// through the guest's page tables, for error messages. It returns what it
// could read (possibly nothing).
func (v *VM) instructionBytes(c accel.VCPU, rip uint64) []byte {
	s, err := c.Sregs()
	if err != nil {
		return nil
	}
	lin := rip
	if s.EFER&efeLMA == 0 {
		lin = (s.CS.Base + rip) & 0xffffffff
	}
	var out []byte
	for len(out) < 15 {
		gpa, ok := v.translate(&s, lin)
		if !ok {
			break
		}
		n := min(15-len(out), int(0x1000-lin&0xfff))
		buf := make([]byte, n)
		if v.mem.Read(gpa, buf) != nil {
			break
		}
		out = append(out, buf...)
		lin += uint64(n)
	}
	return out
}

const (
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	cr4PSE  = 1 << 4
	cr4LA57 = 1 << 12
	efeLMA  = 1 << 10
)

// translate walks the guest page tables (read-only, no A/D updates) for a
// diagnostic read. Guest instruction emulation has its own, complete walker
// in x86/emu; this one only has to find bytes to show in an error.
func (v *VM) translate(s *accel.Sregs, lin uint64) (uint64, bool) {
	if s.CR0&cr0PG == 0 {
		return lin, true
	}
	read := func(a uint64, size int) (uint64, bool) {
		var b [8]byte
		if v.mem.Read(a, b[:size]) != nil {
			return 0, false
		}
		return binary.LittleEndian.Uint64(b[:]), true
	}
	const addrMask = 0x000f_ffff_ffff_f000
	switch {
	case s.EFER&efeLMA != 0:
		levels := 4
		if s.CR4&cr4LA57 != 0 {
			levels = 5
		}
		table := s.CR3 & addrMask
		for l := levels; l >= 1; l-- {
			shift := 12 + 9*uint(l-1)
			e, ok := read(table+((lin>>shift)&0x1ff)*8, 8)
			if !ok || e&1 == 0 {
				return 0, false
			}
			if l > 1 && l <= 3 && e&0x80 != 0 { // 1 GiB or 2 MiB page
				mask := uint64(1)<<shift - 1
				return (e & addrMask &^ mask) | lin&mask, true
			}
			table = e & addrMask
		}
		return table | lin&0xfff, true
	case s.CR4&cr4PAE != 0:
		e, ok := read((s.CR3&0xffffffe0)+((lin>>30)&3)*8, 8)
		if !ok || e&1 == 0 {
			return 0, false
		}
		e, ok = read(e&addrMask+((lin>>21)&0x1ff)*8, 8)
		if !ok || e&1 == 0 {
			return 0, false
		}
		if e&0x80 != 0 {
			return e&addrMask&^0x1fffff | lin&0x1fffff, true
		}
		e, ok = read(e&addrMask+((lin>>12)&0x1ff)*8, 8)
		if !ok || e&1 == 0 {
			return 0, false
		}
		return e&addrMask | lin&0xfff, true
	default:
		e, ok := read(s.CR3&0xfffff000+((lin>>22)&0x3ff)*4, 4)
		if !ok || e&1 == 0 {
			return 0, false
		}
		if e&0x80 != 0 && s.CR4&cr4PSE != 0 {
			return e&0xffc00000 | lin&0x3fffff, true
		}
		e, ok = read(e&0xfffff000+((lin>>12)&0x3ff)*4, 4)
		if !ok || e&1 == 0 {
			return 0, false
		}
		return e&0xfffff000 | lin&0xfff, true
	}
}
