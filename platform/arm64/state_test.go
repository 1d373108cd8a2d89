package arm64

import (
	"errors"
	"strings"
	"testing"

	"govmm/accel/kvmarm"
	"govmm/snapshot"
)

// savedFixture is a two-vCPU arm64 state as Machine.Save would produce
// it, with every vGIC register the restore writes.
func savedFixture(t *testing.T) *Saved {
	t.Helper()
	cnt := func(v uint64) kvmarm.RegValue {
		b := make([]byte, 8)
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		return kvmarm.RegValue{ID: kvmarm.RegTimerCnt, Value: b}
	}
	s := &Saved{Machine: MachineState{MemSize: 512 << 20, NumCPUs: 2, MPIDRs: []uint64{0x80000000, 0x80000001}}}
	s.VCPUs = []kvmarm.VCPUState{
		{Regs: []kvmarm.RegValue{{ID: kvmarm.RegPC, Value: make([]byte, 8)}, cnt(1000)}, MPState: kvmarm.MPRunnable},
		{Regs: []kvmarm.RegValue{{ID: kvmarm.RegPC, Value: make([]byte, 8)}, cnt(1005)}, MPState: kvmarm.MPStopped},
	}
	s.GIC = kvmarm.FixtureGIC(2, NumIRQs)
	return s
}

func roundTrip(t *testing.T, s *Saved) (*snapshot.State, error) {
	t.Helper()
	st, err := s.State()
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// What snapshot.ReadDir does on an arm64 host: Unmarshal, whose
	// architecture check is the host's, then ParseState's own.
	got, err := snapshot.Unmarshal(b)
	if snapshot.HostArch() != snapshot.ArchARM64 {
		if !errors.Is(err, snapshot.ErrWrongArch) {
			t.Fatalf("an arm64 state file read on %s: %v, want ErrWrongArch", snapshot.HostArch(), err)
		}
		return st, nil
	}
	return got, err
}

// TestStateRoundTrip: an arm64 state file is tagged arm64 and parses
// back whole; the restored counter is the largest saved one.
func TestStateRoundTrip(t *testing.T) {
	s := savedFixture(t)
	st, err := roundTrip(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := st.Arch(); err != nil || a != snapshot.ArchARM64 {
		t.Fatalf("Arch() = %q, %v", a, err)
	}
	got, err := ParseState(st)
	if err != nil {
		t.Fatal(err)
	}
	if got.Machine.NumCPUs != 2 || len(got.VCPUs) != 2 || got.VCPUs[1].MPState != kvmarm.MPStopped {
		t.Fatalf("parsed %+v", got.Machine)
	}
	if c := got.Counter(); c != 1005 {
		t.Fatalf("Counter() = %d, want the largest saved (1005)", c)
	}
}

// TestStateRefusesX86: an x86 snapshot (no architecture tag, x86
// sections) is refused by name, before its sections are read.
func TestStateRefusesX86(t *testing.T) {
	st := &snapshot.State{}
	st.Add("machine", 1, map[string]any{"mem_size": 512 << 20, "num_cpus": 2, "cpuid": []any{}})
	_, err := ParseState(st)
	if !errors.Is(err, snapshot.ErrWrongArch) || !strings.Contains(err.Error(), "x86_64 VM") {
		t.Fatalf("x86 state: %v, want a refusal naming x86_64", err)
	}
}

// TestStateRefusesBad: damaged sections are refused whole.
func TestStateRefusesBad(t *testing.T) {
	for name, spoil := range map[string]func(s *Saved){
		"no counter":     func(s *Saved) { s.VCPUs[0].Regs = s.VCPUs[0].Regs[:1] },
		"short register": func(s *Saved) { s.VCPUs[0].Regs[0].Value = []byte{1} },
		"MP state":       func(s *Saved) { s.VCPUs[1].MPState = 3 },
		"MPIDRs":         func(s *Saved) { s.Machine.MPIDRs = s.Machine.MPIDRs[:1] },
		"vCPU count":     func(s *Saved) { s.Machine.NumCPUs = MaxCPUs + 1 },
		"memory":         func(s *Saved) { s.Machine.MemSize = 4095 },
		"redistributors": func(s *Saved) { s.GIC.Redist = s.GIC.Redist[:1] },
		"distributor":    func(s *Saved) { s.GIC.Dist = s.GIC.Dist[1:] },
		"dist duplicate": func(s *Saved) { s.GIC.Dist[1] = s.GIC.Dist[0] },
		"ITS":            func(s *Saved) { s.GIC.ITS = s.GIC.ITS[:3] },
		"interrupts":     func(s *Saved) { s.GIC.NumIRQs = 256 },
		"SPI levels":     func(s *Saved) { s.GIC.SPILevels = nil },
		"CPU interface":  func(s *Saved) { s.GIC.CPU[1] = s.GIC.CPU[1][1:] },
		"unknown sysreg": func(s *Saved) { s.GIC.CPU[0] = append(s.GIC.CPU[0], kvmarm.Reg64{Off: 0x1234}) },
	} {
		s := savedFixture(t)
		spoil(s)
		st, err := s.State()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseState(st); err == nil {
			t.Errorf("%s: a damaged state parsed", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// MachineState.Check is what a migration receiver applies to the hello's
// machine before anything is built.
func TestMachineStateCheck(t *testing.T) {
	ok := MachineState{MemSize: 512 << 20, NumCPUs: 2, MPIDRs: []uint64{0, 1}}
	if err := ok.Check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []MachineState{
		{MemSize: 512 << 20, NumCPUs: 0},
		{MemSize: 512 << 20, NumCPUs: MaxCPUs + 1},
		{MemSize: 512<<20 + 1, NumCPUs: 1, MPIDRs: []uint64{0}},
		{MemSize: MaxRAM + 4096, NumCPUs: 1, MPIDRs: []uint64{0}},
		{MemSize: 512 << 20, NumCPUs: 2, MPIDRs: []uint64{0}},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("%+v passed", bad)
		}
	}
}
