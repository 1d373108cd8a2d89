package kvmarm

// The saved state of a KVM/arm64 VM's vCPUs, vGICv3 and ITS, in a form
// that needs no KVM to read or check (the snapshot's JSON sections, and
// the tests on any host). The capture and the restore are in
// state_arm64.go.

import (
	"fmt"
)

// RegValue is one ONE_REG register: its id and its bytes, little endian,
// as many as the id's size field says.
type RegValue struct {
	ID    uint64 `json:"id"`
	Value []byte `json:"value"`
}

// VCPUState is one vCPU: every register KVM_GET_REG_LIST names, in the
// list's order, and the MP state (runnable, or stopped by PSCI).
type VCPUState struct {
	Regs    []RegValue `json:"regs"`
	MPState uint32     `json:"mp_state"`
}

// Reg32 is a 32-bit vGIC register at an offset (distributor,
// redistributor) or a CPU interface register by its encoding.
type Reg32 struct {
	Off uint32 `json:"off"`
	Val uint32 `json:"val"`
}

// Reg64 is a 64-bit register: an ITS register at its offset, or a CPU
// interface system register by its instruction encoding.
type Reg64 struct {
	Off uint64 `json:"off"`
	Val uint64 `json:"val"`
}

// GICState is the in-kernel vGICv3 and its ITS. The LPI pending tables and
// the ITS's device, collection and translation tables are in guest RAM
// (written there by the capture), not here.
type GICState struct {
	NumIRQs uint32  `json:"num_irqs"`
	Dist    []Reg32 `json:"dist"`
	// Redist and CPU are per vCPU, in vCPU order.
	Redist [][]Reg32 `json:"redist"`
	CPU    [][]Reg64 `json:"cpu_sysregs"`
	// SPILevels are the SPIs' input line levels, 32 per word from INTID 32.
	SPILevels []uint32 `json:"spi_levels"`
	ITS       []Reg64  `json:"its"`
}

// Distributor register offsets (GICv3 architecture, GICD_*).
const (
	gicdCTLR       = 0x0000
	gicdIIDR       = 0x0008
	gicdSTATUSR    = 0x0010
	gicdIGROUPR    = 0x0080
	gicdISENABLER  = 0x0100
	gicdISPENDR    = 0x0200
	gicdISACTIVER  = 0x0300
	gicdIPRIORITYR = 0x0400
	gicdICFGR      = 0x0c00
	gicdIGRPMODR   = 0x0d00
	gicdIROUTER    = 0x6000
)

// distRestoreOrder lists the distributor registers a snapshot holds, in
// the order they are restored: GICD_IIDR first (the kernel asks for it
// before any other), the per-SPI registers (the banked SGI/PPI parts live
// in the redistributors), GICD_CTLR last, once the SPIs are configured.
// 64-bit GICD_IROUTER<n> are two 32-bit words.
func distRestoreOrder(nrIRQs uint32) []uint32 {
	offs := []uint32{gicdIIDR, gicdSTATUSR}
	words := nrIRQs / 32
	for _, base := range []uint32{gicdIGROUPR, gicdIGRPMODR, gicdICFGR} {
		n := words
		if base == gicdICFGR {
			n = nrIRQs / 16 // two bits per interrupt
		}
		first := uint32(1)
		if base == gicdICFGR {
			first = 2
		}
		for i := first; i < n; i++ {
			offs = append(offs, base+4*i)
		}
	}
	for i := uint32(32); i < nrIRQs; i += 4 {
		offs = append(offs, gicdIPRIORITYR+i)
	}
	for i := uint32(32); i < nrIRQs; i++ {
		offs = append(offs, gicdIROUTER+8*i, gicdIROUTER+8*i+4)
	}
	for _, base := range []uint32{gicdISPENDR, gicdISACTIVER, gicdISENABLER} {
		for i := uint32(1); i < words; i++ {
			offs = append(offs, base+4*i)
		}
	}
	return append(offs, gicdCTLR)
}

// Redistributor register offsets: RD_base, and SGI_base 64 KiB above it.
const (
	gicrCTLR       = 0x0000
	gicrSTATUSR    = 0x0010
	gicrWAKER      = 0x0014
	gicrPROPBASER  = 0x0070
	gicrPENDBASER  = 0x0078
	gicrSGI        = 0x10000
	gicrIGROUPR0   = gicrSGI + 0x0080
	gicrISENABLER0 = gicrSGI + 0x0100
	gicrISPENDR0   = gicrSGI + 0x0200
	gicrISACTIVER0 = gicrSGI + 0x0300
	gicrIPRIORITYR = gicrSGI + 0x0400
	gicrICFGR0     = gicrSGI + 0x0c00
	gicrIGRPMODR0  = gicrSGI + 0x0d00
)

// redistRestoreOrder lists one redistributor's registers in restore
// order: the LPI property and pending table bases (two 32-bit halves
// each) before GICR_CTLR, whose EnableLPIs makes KVM read the pending
// table and ignore later writes to the bases; the SGI and PPI
// configuration before their enables and pending state.
func redistRestoreOrder() []uint32 {
	offs := []uint32{gicrSTATUSR, gicrWAKER, gicrPROPBASER, gicrPROPBASER + 4, gicrPENDBASER, gicrPENDBASER + 4,
		gicrIGROUPR0, gicrIGRPMODR0, gicrICFGR0, gicrICFGR0 + 4}
	for i := uint32(0); i < 32; i += 4 {
		offs = append(offs, gicrIPRIORITYR+i)
	}
	return append(offs, gicrISPENDR0, gicrISACTIVER0, gicrISENABLER0, gicrCTLR)
}

// sysregEnc is a system register's A64 instruction encoding as
// KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS names it (op0:op1:CRn:CRm:op2).
func sysregEnc(op0, op1, crn, crm, op2 uint64) uint64 {
	return op0<<14 | op1<<11 | crn<<7 | crm<<3 | op2
}

// The GICv3 CPU interface registers (ICC_*_EL1), in restore order: SRE
// and CTLR first (the priority and preemption bits the others are checked
// against), the group enables last.
var (
	iccSRE     = sysregEnc(3, 0, 12, 12, 5)
	iccCTLR    = sysregEnc(3, 0, 12, 12, 4)
	iccPMR     = sysregEnc(3, 0, 4, 6, 0)
	iccBPR0    = sysregEnc(3, 0, 12, 8, 3)
	iccBPR1    = sysregEnc(3, 0, 12, 12, 3)
	iccIGRPEN0 = sysregEnc(3, 0, 12, 12, 6)
	iccIGRPEN1 = sysregEnc(3, 0, 12, 12, 7)
)

// iccAP0R and iccAP1R are the active priority registers n (0..3); how
// many exist depends on the CPU interface's preemption bits, so a capture
// keeps those KVM answers for.
func iccAP0R(n uint64) uint64 { return sysregEnc(3, 0, 12, 8, 4+n) }
func iccAP1R(n uint64) uint64 { return sysregEnc(3, 0, 12, 9, n) }

// cpuRestoreOrder is the CPU interface's registers in restore order:
// first, the active priority registers that exist (apr), then last.
func cpuRestoreOrder() (first, apr, last []uint64) {
	for n := range uint64(4) {
		apr = append(apr, iccAP0R(n))
	}
	for n := range uint64(4) {
		apr = append(apr, iccAP1R(n))
	}
	return []uint64{iccSRE, iccCTLR, iccPMR, iccBPR0, iccBPR1}, apr, []uint64{iccIGRPEN0, iccIGRPEN1}
}

// ITS register offsets (GITS_*), in restore order: GITS_CBASER first (a
// write resets GITS_CREADR), GITS_IIDR before the tables are loaded (its
// revision is the tables' ABI), the table bases, CREADR before CWRITER,
// and GITS_CTLR only after KVM_DEV_ARM_ITS_RESTORE_TABLES.
const (
	gitsCTLR    = 0x0000
	gitsIIDR    = 0x0004
	gitsCBASER  = 0x0080
	gitsCWRITER = 0x0088
	gitsCREADR  = 0x0090
	gitsBASER   = 0x0100
)

func itsRestoreOrder() []uint64 {
	offs := []uint64{gitsCBASER, gitsIIDR}
	for n := range uint64(8) {
		offs = append(offs, gitsBASER+8*n)
	}
	return append(offs, gitsCREADR, gitsCWRITER)
}

// Check says whether s is a vGIC state this code can restore into a
// machine with numCPUs vCPUs and nrIRQs interrupts: every register the
// restore writes is there once, nothing else is.
func (s *GICState) Check(numCPUs int, nrIRQs uint32) error {
	if s.NumIRQs != nrIRQs {
		return fmt.Errorf("vGIC state: %d interrupts, this machine has %d", s.NumIRQs, nrIRQs)
	}
	if err := same32("distributor", s.Dist, distRestoreOrder(nrIRQs)); err != nil {
		return err
	}
	if len(s.Redist) != numCPUs || len(s.CPU) != numCPUs {
		return fmt.Errorf("vGIC state: %d redistributors and %d CPU interfaces for %d vCPUs", len(s.Redist), len(s.CPU), numCPUs)
	}
	for i := range numCPUs {
		if err := same32(fmt.Sprintf("redistributor %d", i), s.Redist[i], redistRestoreOrder()); err != nil {
			return err
		}
		first, apr, last := cpuRestoreOrder()
		have := map[uint64]bool{}
		for _, r := range s.CPU[i] {
			if have[r.Off] {
				return fmt.Errorf("vGIC state: CPU interface %d: register %#x twice", i, r.Off)
			}
			have[r.Off] = true
		}
		known := map[uint64]bool{}
		for _, o := range append(first, last...) {
			if !have[o] {
				return fmt.Errorf("vGIC state: CPU interface %d lacks register %#x", i, o)
			}
			known[o] = true
		}
		for _, o := range apr {
			known[o] = true
		}
		for o := range have {
			if !known[o] {
				return fmt.Errorf("vGIC state: CPU interface %d: unknown register %#x", i, o)
			}
		}
	}
	if want := int(nrIRQs/32) - 1; len(s.SPILevels) != want {
		return fmt.Errorf("vGIC state: %d words of SPI levels, want %d", len(s.SPILevels), want)
	}
	want := append(itsRestoreOrder(), gitsCTLR)
	if len(s.ITS) != len(want) {
		return fmt.Errorf("vGIC state: %d ITS registers, want %d", len(s.ITS), len(want))
	}
	have := map[uint64]bool{}
	for _, r := range s.ITS {
		have[r.Off] = true
	}
	for _, o := range want {
		if !have[o] {
			return fmt.Errorf("vGIC state: ITS register %#x missing", o)
		}
	}
	return nil
}

// same32 checks that regs holds exactly the offsets of want, once each.
func same32(what string, regs []Reg32, want []uint32) error {
	if len(regs) != len(want) {
		return fmt.Errorf("vGIC state: %s has %d registers, want %d", what, len(regs), len(want))
	}
	have := map[uint32]bool{}
	for _, r := range regs {
		if have[r.Off] {
			return fmt.Errorf("vGIC state: %s: register %#x twice", what, r.Off)
		}
		have[r.Off] = true
	}
	for _, o := range want {
		if !have[o] {
			return fmt.Errorf("vGIC state: %s lacks register %#x", what, o)
		}
	}
	return nil
}

// Check says whether s is a vCPU state a restore can apply: registers
// whose values have the size their ids say, none twice, and an MP state
// an arm64 vCPU can be in.
func (s *VCPUState) Check() error {
	switch s.MPState {
	case MPRunnable, MPStopped, MPSuspended:
	default:
		return fmt.Errorf("vCPU state: MP state %d (want runnable 0, stopped 5 or suspended 10)", s.MPState)
	}
	if len(s.Regs) == 0 {
		return fmt.Errorf("vCPU state: no registers")
	}
	seen := map[uint64]bool{}
	for _, r := range s.Regs {
		n, err := RegBytes(r.ID)
		if err != nil {
			return fmt.Errorf("vCPU state: %w", err)
		}
		if len(r.Value) != n {
			return fmt.Errorf("vCPU state: register %#x has %d bytes, its id says %d", r.ID, len(r.Value), n)
		}
		if seen[r.ID] {
			return fmt.Errorf("vCPU state: register %#x twice", r.ID)
		}
		seen[r.ID] = true
	}
	return nil
}

// Counter is a saved state's virtual counter (KVM_REG_ARM_TIMER_CNT).
func (s *VCPUState) Counter() (uint64, bool) {
	for _, r := range s.Regs {
		if r.ID == RegTimerCnt && len(r.Value) == 8 {
			var c uint64
			for i := 7; i >= 0; i-- {
				c = c<<8 | uint64(r.Value[i])
			}
			return c, true
		}
	}
	return 0, false
}
