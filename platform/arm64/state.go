package arm64

// The arm64 machine's snapshot: which sections a state file holds and
// how they are checked. The capture and the restore, which need KVM, are
// in state_arm64.go; this part builds on any host, so that the format and
// its refusals are tested everywhere.

import (
	"encoding/json"
	"fmt"

	"govmm/accel/kvmarm"
	"govmm/devices/pl011"
	"govmm/pci"
	"govmm/snapshot"
	"govmm/virtio"
	"govmm/virtio/console"
)

// Section versions of an arm64 state file.
const (
	machineVersion = 1
	vcpuVersion    = 1
	gicVersion     = 1
	devicesVersion = 1
)

// MachineState describes the machine a snapshot belongs to: a restore
// builds the same one (memory size and vCPU count are checked, not
// adapted: the guest knows them).
type MachineState struct {
	MemSize uint64 `json:"mem_size"`
	NumCPUs int    `json:"num_cpus"`
	Cmdline string `json:"cmdline,omitempty"`
	Kernel  string `json:"kernel,omitempty"`
	// MPIDRs are the vCPUs' MPIDR_EL1 values: the vGIC's saved state is
	// addressed by them, so the restored vCPUs must have the same.
	MPIDRs []uint64 `json:"mpidrs"`
}

// DeviceState is the userspace devices' state.
type DeviceState struct {
	UART pl011.State `json:"pl011"`
	PCI  pci.State   `json:"pci"`
	// Virtio is each virtio device's transport and queues, in slot order.
	Virtio        []virtio.PCIState `json:"virtio,omitempty"`
	VirtioConsole *console.State    `json:"virtio_console,omitempty"`
}

// Check refuses a machine the arm64 machine cannot be (a snapshot's, or
// the one a live migration's hello announces): its vCPU count, memory
// size and MPIDRs.
func (m *MachineState) Check() error {
	if m.NumCPUs < 1 || m.NumCPUs > MaxCPUs {
		return fmt.Errorf("machine has %d vCPUs (the arm64 machine has 1 to %d)", m.NumCPUs, MaxCPUs)
	}
	if m.MemSize < MinRAM || m.MemSize > MaxRAM || m.MemSize%4096 != 0 {
		return fmt.Errorf("machine memory size %d: want a multiple of 4 KiB from %d MiB to %d GiB", m.MemSize, MinRAM>>20, MaxRAM>>30)
	}
	if len(m.MPIDRs) != m.NumCPUs {
		return fmt.Errorf("machine has %d MPIDRs for %d vCPUs", len(m.MPIDRs), m.NumCPUs)
	}
	return nil
}

// WarmStateCodec runs the state encoder and decoder once on empty
// values, so that encoding/json's first use of these types happens
// before a live migration's pause, not inside it.
func WarmStateCodec() {
	for _, v := range []any{&MachineState{}, &kvmarm.VCPUState{}, &kvmarm.GICState{}, &DeviceState{}} {
		if b, err := json.Marshal(v); err == nil {
			_ = json.Unmarshal(b, v)
		}
	}
}

// Saved is a parsed, checked arm64 snapshot.
type Saved struct {
	Machine MachineState
	VCPUs   []kvmarm.VCPUState
	GIC     kvmarm.GICState
	Devices DeviceState
}

// State encodes s as a state file tagged arm64.
func (s *Saved) State() (*snapshot.State, error) {
	st := &snapshot.State{}
	if err := st.SetArch(snapshot.ArchARM64); err != nil {
		return nil, err
	}
	if err := st.Add("machine", machineVersion, s.Machine); err != nil {
		return nil, err
	}
	for i := range s.VCPUs {
		if err := st.Add(fmt.Sprintf("vcpu/%d", i), vcpuVersion, &s.VCPUs[i]); err != nil {
			return nil, err
		}
	}
	if err := st.Add("gic", gicVersion, &s.GIC); err != nil {
		return nil, err
	}
	if err := st.Add("devices", devicesVersion, &s.Devices); err != nil {
		return nil, err
	}
	return st, nil
}

// ParseState checks a state file whole before anything is built: its
// architecture (an x86 snapshot is refused by name), the machine, every
// vCPU's registers and MP state, and the vGIC's registers.
func ParseState(st *snapshot.State) (*Saved, error) {
	if err := st.CheckArch(snapshot.ArchARM64); err != nil {
		return nil, err
	}
	s := &Saved{}
	if _, err := st.Get("machine", 1, machineVersion, &s.Machine); err != nil {
		return nil, err
	}
	m := s.Machine
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("snapshot %w", err)
	}
	s.VCPUs = make([]kvmarm.VCPUState, m.NumCPUs)
	for i := range s.VCPUs {
		if _, err := st.Get(fmt.Sprintf("vcpu/%d", i), 1, vcpuVersion, &s.VCPUs[i]); err != nil {
			return nil, err
		}
		if err := s.VCPUs[i].Check(); err != nil {
			return nil, fmt.Errorf("snapshot vCPU %d: %w", i, err)
		}
		if _, ok := s.VCPUs[i].Counter(); !ok {
			return nil, fmt.Errorf("snapshot vCPU %d has no virtual counter (KVM_REG_ARM_TIMER_CNT)", i)
		}
	}
	if _, err := st.Get("gic", 1, gicVersion, &s.GIC); err != nil {
		return nil, err
	}
	if err := s.GIC.Check(m.NumCPUs, NumIRQs); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if _, err := st.Get("devices", 1, devicesVersion, &s.Devices); err != nil {
		return nil, err
	}
	return s, nil
}

// Counter is the value the restored VM's virtual counter starts from: the
// largest any vCPU saved, so the guest never reads its clock lower than
// it did before the snapshot (KVM keeps one counter offset per VM).
func (s *Saved) Counter() uint64 {
	var c uint64
	for i := range s.VCPUs {
		if v, ok := s.VCPUs[i].Counter(); ok && v > c {
			c = v
		}
	}
	return c
}
