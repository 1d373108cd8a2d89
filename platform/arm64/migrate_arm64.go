//go:build linux && arm64

package arm64

// What live migration (package migrate) needs of the machine: its guest
// RAM, the dirty logs (KVM's of the vCPUs' and the vGIC's writes, the
// VMM's of the virtio devices'), the state file, the virtio devices and
// the hello's machine description. The destination side is Prepare and
// Apply (state_arm64.go).

import (
	"errors"
	"slices"

	"govmm/memory"
	"govmm/snapshot"
	"govmm/virtio/devices"
)

// Memory is the machine's guest RAM.
func (m *Machine) Memory() *memory.Memory { return m.mem }

// StartDirtyLog starts tracking writes to guest RAM: the VMM's log of
// the virtio devices' writes (with what kernel vhost-net backends log of
// theirs) and KVM's (KVM_MEM_LOG_DIRTY_PAGES).
func (m *Machine) StartDirtyLog() error {
	if err := m.virtio.RefuseLiveMigration(); err != nil {
		return err
	}
	if err := m.mem.StartDirtyLog(); err != nil {
		return err
	}
	if err := m.virtio.StartDirtyLog(m.mem.MarkDirty); err != nil {
		m.mem.StopDirtyLog()
		return err
	}
	if err := m.vm.EnableDirtyLog(); err != nil {
		m.virtio.StopDirtyLog()
		m.mem.StopDirtyLog()
		return err
	}
	return nil
}

// StopDirtyLog stops tracking writes.
func (m *Machine) StopDirtyLog() error {
	verr := m.virtio.StopDirtyLog()
	m.mem.StopDirtyLog()
	return errors.Join(verr, m.vm.DisableDirtyLog())
}

// DirtyPages returns (and clears) the GPAs of the pages the guest, the
// vGIC or the VMM's devices wrote since tracking started or since the
// last call (KVM_GET_DIRTY_LOG ORed with the VMM's log, as on x86).
func (m *Machine) DirtyPages() ([]uint64, error) {
	m.virtio.SyncDirtyLog()
	return m.mem.CollectDirty(m.vm.DirtyLog)
}

// SaveState captures the paused machine as an arm64 state file. KVM
// writes the ITS tables and LPI pending bits to guest RAM meanwhile;
// they are in the dirty log.
func (m *Machine) SaveState() (*snapshot.State, error) {
	s, err := m.Save()
	if err != nil {
		return nil, err
	}
	return s.State()
}

// VirtioDevices describes the virtio devices in slot order, as a
// migration's destination must have them.
func (m *Machine) VirtioDevices() []string { return m.virtio.Describe() }

// CheckVirtioDevices compares the devices a migration's source announced
// with this machine's, before any guest memory moves.
func (m *Machine) CheckVirtioDevices(source []string) error {
	if err := devices.Compare(source, m.VirtioDevices()); err != nil {
		return &InputError{err}
	}
	return nil
}

// MigrationMachine is what a live migration's hello announces: arm64 and
// the machine Prepare rebuilds.
func (m *Machine) MigrationMachine() (string, any) {
	return snapshot.ArchARM64, m.machineState()
}

// machineState describes the machine as a snapshot and a migration's
// hello have it.
func (m *Machine) machineState() MachineState {
	return MachineState{MemSize: m.MemSize(), NumCPUs: len(m.vcpus), Cmdline: m.cfg.Cmdline,
		Kernel: m.cfg.KernelName, MPIDRs: slices.Clone(m.mpidrs)}
}

// WarmStateCodec is the package's WarmStateCodec, as migrate.VM has it.
func (m *Machine) WarmStateCodec() { WarmStateCodec() }

// KernelName is what the machine runs (the kernel's path, or where it
// came from: a snapshot, a migration).
func (m *Machine) KernelName() string { return m.cfg.KernelName }
