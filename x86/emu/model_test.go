package emu

import (
	"encoding/binary"
	"fmt"
)

// model is a CPU with a small RAM and an MMIO window, for tests.
type model struct {
	regs   [16]uint64
	rip    uint64
	rflags uint64
	segs   [7]Segment
	ctl    [4]uint64
	vec    [16][32]byte
	// zmmHi records whether a VEX write cleared bits above 255.
	zmmCleared [16]bool

	ram      []byte // GPA 0 .. len(ram)
	romStart uint64 // [romStart, romEnd) is read-only RAM
	romEnd   uint64
	mmioBase uint64
	mmio     [8192]byte // device registers at mmioBase
	log      bool
	accesses []string // "r gpa size" / "w gpa data" when log is set
	mmioR    int
	mmioW    int

	ports  [65536]byte
	pioLog []string
	locked int
	// lockCalls counts LockBus calls.
	lockCalls int
	oob       []string // accesses outside the model (must stay empty)
	// lax accepts MMIO accesses outside the device window (unassigned
	// physical addresses read as all ones), for fuzzing.
	lax      bool
	setRegs  int
	setFlags int
}

const (
	modelRAM  = 4 << 20
	modelMMIO = 0xC000_0000
)

func newModel() *model {
	m := &model{ram: make([]byte, modelRAM), mmioBase: modelMMIO, rflags: 2}
	return m
}

func (m *model) Reg(i int) uint64 {
	if i < 0 || i > 15 {
		m.oob = append(m.oob, fmt.Sprintf("Reg(%d)", i))
		return 0
	}
	return m.regs[i]
}
func (m *model) SetReg(i int, v uint64) {
	if i < 0 || i > 15 {
		m.oob = append(m.oob, fmt.Sprintf("SetReg(%d)", i))
		return
	}
	m.setRegs++
	m.regs[i] = v
}
func (m *model) RIP() uint64        { return m.rip }
func (m *model) SetRIP(v uint64)    { m.rip = v }
func (m *model) RFLAGS() uint64     { return m.rflags }
func (m *model) SetRFLAGS(v uint64) { m.setFlags++; m.rflags = v }
func (m *model) Segment(s SegReg) Segment {
	if s < 0 || int(s) >= len(m.segs) {
		m.oob = append(m.oob, fmt.Sprintf("Segment(%d)", s))
		return Segment{}
	}
	return m.segs[s]
}
func (m *model) Control(r ControlReg) uint64 {
	if r < 0 || int(r) >= len(m.ctl) {
		m.oob = append(m.oob, fmt.Sprintf("Control(%d)", r))
		return 0
	}
	return m.ctl[r]
}
func (m *model) ReadVector(i int, v *[32]byte) {
	if i < 0 || i > 15 {
		m.oob = append(m.oob, fmt.Sprintf("ReadVector(%d)", i))
		return
	}
	*v = m.vec[i]
}
func (m *model) WriteVector(i int, v *[32]byte, vex bool) {
	if i < 0 || i > 15 {
		m.oob = append(m.oob, fmt.Sprintf("WriteVector(%d)", i))
		return
	}
	if vex {
		m.vec[i] = *v
		m.zmmCleared[i] = true
	} else {
		copy(m.vec[i][:16], v[:16])
	}
}

func (m *model) isRAM(gpa uint64, n int) bool {
	return gpa < uint64(len(m.ram)) && gpa+uint64(n) <= uint64(len(m.ram)) && gpa+uint64(n) >= gpa
}

func (m *model) inMMIO(gpa uint64, n int) bool {
	return gpa >= m.mmioBase && gpa+uint64(n) <= m.mmioBase+uint64(len(m.mmio))
}

func (m *model) ReadPhys(gpa uint64, data []byte) bool {
	if !m.isRAM(gpa, len(data)) {
		return false
	}
	if (gpa&^0xfff)+0x1000 < gpa+uint64(len(data)) {
		m.oob = append(m.oob, fmt.Sprintf("ReadPhys(%#x, %d) crosses a page", gpa, len(data)))
	}
	copy(data, m.ram[gpa:])
	return true
}

func (m *model) WritePhys(gpa uint64, data []byte) bool {
	if !m.isRAM(gpa, len(data)) {
		return false
	}
	if gpa < m.romEnd && gpa+uint64(len(data)) > m.romStart {
		return false
	}
	copy(m.ram[gpa:], data)
	return true
}

func (m *model) MMIORead(gpa uint64, data []byte) {
	m.mmioR++
	if len(data) == 0 || len(data) > 64 {
		m.oob = append(m.oob, fmt.Sprintf("MMIORead of %d bytes", len(data)))
	}
	if !m.inMMIO(gpa, len(data)) {
		if m.isRAM(gpa, 1) && gpa >= m.romStart && gpa < m.romEnd {
			copy(data, m.ram[gpa:]) // ROM reads never come here, but be safe
			return
		}
		if !m.lax {
			m.oob = append(m.oob, fmt.Sprintf("MMIORead(%#x, %d)", gpa, len(data)))
		}
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	copy(data, m.mmio[gpa-m.mmioBase:])
	if m.log {
		m.accesses = append(m.accesses, fmt.Sprintf("r %#x %d", gpa, len(data)))
	}
}

func (m *model) MMIOWrite(gpa uint64, data []byte) {
	m.mmioW++
	if len(data) == 0 || len(data) > 64 {
		m.oob = append(m.oob, fmt.Sprintf("MMIOWrite of %d bytes", len(data)))
	}
	if !m.inMMIO(gpa, len(data)) {
		if gpa >= m.romStart && gpa+uint64(len(data)) <= m.romEnd {
			if m.log {
				m.accesses = append(m.accesses, fmt.Sprintf("rom %#x % x", gpa, data))
			}
			return
		}
		if !m.lax {
			m.oob = append(m.oob, fmt.Sprintf("MMIOWrite(%#x, %d)", gpa, len(data)))
		}
		return
	}
	copy(m.mmio[gpa-m.mmioBase:], data)
	if m.log {
		m.accesses = append(m.accesses, fmt.Sprintf("w %#x % x", gpa, data))
	}
}

func (m *model) PIORead(port uint16, data []byte) {
	for i := range data {
		data[i] = m.ports[(int(port)+i)&0xffff]
	}
	if m.log {
		m.pioLog = append(m.pioLog, fmt.Sprintf("in %#x %d", port, len(data)))
	}
}

func (m *model) PIOWrite(port uint16, data []byte) {
	for i := range data {
		m.ports[(int(port)+i)&0xffff] = data[i]
	}
	if m.log {
		m.pioLog = append(m.pioLog, fmt.Sprintf("out %#x % x", port, data))
	}
}

func (m *model) LockBus() {
	m.locked++
	m.lockCalls++
}
func (m *model) UnlockBus() { m.locked-- }

func (m *model) put64(gpa uint64, v uint64) { binary.LittleEndian.PutUint64(m.ram[gpa:], v) }
func (m *model) get64(gpa uint64) uint64    { return binary.LittleEndian.Uint64(m.ram[gpa:]) }

// Page-table layout of the 64-bit setup (all in the first 64 KiB):
//
//	0x1000 PML4, 0x2000 PDPT, 0x3000 PD for 0-1 GiB, 0x4000 PD for
//	3-4 GiB (MMIO window, 2 MiB pages), 0x5000 PT for 2-4 MiB (4 KiB
//	pages, identity, so tests can change single pages).
const (
	ptPML4 = 0x1000
	ptPDPT = 0x2000
	ptPD0  = 0x3000
	ptPD3  = 0x4000
	ptPT   = 0x5000
)

// setLong64 puts the model in 64-bit mode with 4-level paging at the
// given CPL. RAM 0-2 MiB is one large page, 2-4 MiB uses 4 KiB pages,
// 3-4 GiB maps the MMIO window.
func (m *model) setLong64(cpl uint8) {
	const p, w, u = 1, 2, 4
	m.put64(ptPML4, ptPDPT|p|w|u)
	m.put64(ptPDPT, ptPD0|p|w|u)
	m.put64(ptPDPT+3*8, ptPD3|p|w|u)
	m.put64(ptPD0, 0|p|w|u|0x80)
	m.put64(ptPD0+8, ptPT|p|w|u)
	for i := uint64(0); i < 512; i++ {
		m.put64(ptPT+i*8, (0x200000+i*0x1000)|p|w|u)
		m.put64(ptPD3+i*8, (0xC000_0000+i*0x200000)|p|w|u|0x80)
	}
	m.ctl[CR0] = cr0PE | cr0PG | cr0WP | 1<<1 // MP
	m.ctl[CR3] = ptPML4
	m.ctl[CR4] = cr4PAE | cr4OSFXSR
	m.ctl[EFER] = eferLMA | 1<<8 | eferNXE
	code := Segment{Type: 11, S: true, DPL: cpl, Present: true, L: true, G: true, Limit: 0xffffffff, Selector: 8 | uint16(cpl)}
	data := Segment{Type: 3, S: true, DPL: cpl, Present: true, DB: true, G: true, Limit: 0xffffffff, Selector: 16 | uint16(cpl)}
	m.segs[CS] = code
	for _, r := range []SegReg{DS, ES, SS, FS, GS} {
		m.segs[r] = data
	}
	m.segs[TR] = Segment{Type: 11, Present: true, Limit: 0x67, Base: 0x8000}
}

// setProt32 puts the model in flat 32-bit protected mode without paging.
func (m *model) setProt32() {
	m.ctl[CR0] = cr0PE | 1<<1
	m.ctl[CR4] = cr4OSFXSR
	m.ctl[EFER] = 0
	code := Segment{Type: 11, S: true, Present: true, DB: true, G: true, Limit: 0xffffffff, Selector: 8}
	data := Segment{Type: 3, S: true, Present: true, DB: true, G: true, Limit: 0xffffffff, Selector: 16}
	m.segs[CS] = code
	for _, r := range []SegReg{DS, ES, SS, FS, GS} {
		m.segs[r] = data
	}
	m.segs[TR] = Segment{Type: 11, Present: true, Limit: 0x67, Base: 0x8000}
}

// setReal puts the model in real mode with CS=DS=ES=SS=0.
func (m *model) setReal() {
	m.ctl = [4]uint64{}
	m.ctl[CR4] = cr4OSFXSR
	for r := ES; r <= GS; r++ {
		m.segs[r] = Segment{Type: 3, S: true, Present: true, Limit: 0xffff}
	}
	m.segs[CS].Type = 11
}
