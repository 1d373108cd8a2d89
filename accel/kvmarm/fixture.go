package kvmarm

// FixtureGIC is a complete vGIC state for numCPUs vCPUs and nrIRQs
// interrupts, every register zero but GICD_CTLR's enables: what tests of
// the snapshot format build states from.
func FixtureGIC(numCPUs int, nrIRQs uint32) GICState {
	s := GICState{NumIRQs: nrIRQs}
	for _, off := range distRestoreOrder(nrIRQs) {
		r := Reg32{Off: off}
		if off == gicdCTLR {
			r.Val = 0x12 // ARE_NS, EnableGrp1A
		}
		s.Dist = append(s.Dist, r)
	}
	first, apr, last := cpuRestoreOrder()
	for range numCPUs {
		var rd []Reg32
		for _, off := range redistRestoreOrder() {
			rd = append(rd, Reg32{Off: off})
		}
		s.Redist = append(s.Redist, rd)
		var cpu []Reg64
		for _, enc := range append(append(append([]uint64(nil), first...), apr[:1]...), last...) {
			cpu = append(cpu, Reg64{Off: enc})
		}
		s.CPU = append(s.CPU, cpu)
	}
	s.SPILevels = make([]uint32, nrIRQs/32-1)
	for _, off := range append(itsRestoreOrder(), gitsCTLR) {
		s.ITS = append(s.ITS, Reg64{Off: off})
	}
	return s
}
