package vm

import (
	"errors"
	"fmt"

	"govmm/snapshot"
	"govmm/vfio"
	"govmm/virtio/devices"
)

// StartDirtyLog starts tracking writes to guest RAM (for live migration):
// the vCPUs' writes in the accelerator's dirty log, and the VMM's own
// (virtio devices filling guest buffers and used rings) in guest
// memory's log, which DirtyPages merges, and passed-through VFIO
// devices' DMA writes in their drivers' DMA logs, which DirtyPages merges
// too: a VFIO device without VFIO migration or DMA logging is refused,
// naming it (vfiomig.go); so is one with a
// virtio device a kernel backend serves without a dirty log of its own
// (vhost-vsock). A kernel backend that logs (vhost-net) logs its writes
// from now on, and DirtyPages merges them into the VMM's log.
// Hot-added devices travel in the hello's machine record; one whose
// options the record cannot carry is refused, naming it, and a hot-add
// is refused from here until StopDirtyLog.
func (v *VM) StartDirtyLog() error {
	if err := v.plat.vfio.refuseUnmigratable("live migration"); err != nil {
		return err
	}
	v.hotMu.Lock()
	defer v.hotMu.Unlock()
	if err := v.refuseUncarriedLocked("live migration"); err != nil {
		return err
	}
	for _, d := range v.plat.virtio {
		if err := d.Transport.RefuseLiveMigration(); err != nil {
			return fmt.Errorf("live migration: %w", err)
		}
	}
	var ram []vfio.DirtyRange
	for _, r := range v.mem.Regions() {
		ram = append(ram, vfio.DirtyRange{GPA: r.GPA, Size: uint64(len(r.Host))})
	}
	// Each step that succeeds adds its undo; a later failure runs them,
	// the last first.
	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return err
	}
	if err := v.plat.vfio.startDMALogging(ram); err != nil {
		return err
	}
	undo = append(undo, func() { v.plat.vfio.stopDMALogging() })
	if err := v.mem.StartDirtyLog(); err != nil {
		return fail(err)
	}
	undo = append(undo, v.mem.StopDirtyLog)
	if err := v.plat.virtioSet.StartDirtyLog(v.mem.MarkDirty); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { v.plat.virtioSet.StopDirtyLog() })
	if err := v.avm.EnableDirtyLog(); err != nil {
		return fail(err)
	}
	undo = append(undo, func() { v.avm.DisableDirtyLog() })
	// Devices with PRE_COPY are read from now on, as guest RAM is.
	if err := v.plat.vfio.startPreCopy(); err != nil {
		return fail(err)
	}
	v.migrating = true
	return nil
}

// DevicePreCopy returns the state passed-through devices in PRE_COPY
// offer now, by state section name (migrate.DevicePreCopier): a live
// migration sends it during its rounds.
func (v *VM) DevicePreCopy() (map[string][]byte, error) {
	return v.plat.vfio.preCopyData()
}

// StopDirtyLog stops tracking guest writes. Devices still in PRE_COPY
// (a migration that failed before the pause) return to RUNNING.
func (v *VM) StopDirtyLog() error {
	v.hotMu.Lock()
	v.migrating = false
	v.hotMu.Unlock()
	v.plat.vfio.endPreCopy()
	verr := v.plat.virtioSet.StopDirtyLog()
	v.mem.StopDirtyLog()
	return errors.Join(verr, v.plat.vfio.stopDMALogging(), v.avm.DisableDirtyLog())
}

// DirtyPages returns (and clears) the GPAs of the pages the guest or the
// VMM's devices wrote since tracking started or since the last call.
// Devices mark a buffer after they wrote it, so a page marked after this
// call was written after it too, and is in the next call's list; once
// the VM is paused (its devices quiesced) the list is complete.
func (v *VM) DirtyPages() ([]uint64, error) {
	// The kernel backends' logs first: what they logged goes into the
	// VMM's log, which CollectDirty takes.
	v.plat.virtioSet.SyncDirtyLog()
	// Passed-through devices' DMA writes likewise (VFIO DMA logging).
	if err := v.plat.vfio.dmaDirty(v.mem.MarkDirty); err != nil {
		return nil, err
	}
	return v.mem.CollectDirty(v.avm.DirtyLog)
}

// VirtioDevices describes the VM's virtio devices in PCI slot order, as
// a destination must have them (virtio.Device.Describe: the disk's path,
// size, read-only flag and serial; the TAP and MAC; the vsock CID).
func (v *VM) VirtioDevices() []string {
	out := []string{}
	for _, d := range v.plat.virtio {
		out = append(out, d.Transport.Device().Describe())
	}
	return out
}

// CheckVirtioDevices compares the virtio devices a migration's source
// announced with this VM's, before any guest memory moves, and names
// every difference by PCI slot: a device missing here, one extra here,
// or one configured differently (another image, size, TAP or CID).
func (v *VM) CheckVirtioDevices(source []string) error {
	return compareVirtio(source, v.VirtioDevices())
}

// compareVirtio is CheckVirtioDevices on the two lists
// (devices.Compare, shared with the arm64 machine), as an InputError.
func compareVirtio(source, here []string) error {
	if err := devices.Compare(source, here); err != nil {
		return &InputError{Err: err}
	}
	return nil
}

// MigrationMachine is what a live migration's hello announces about this
// VM (migrate.VM): x86_64 and the machine a destination rebuilds.
func (v *VM) MigrationMachine() (string, any) { return snapshot.ArchX86_64, v.Machine() }

// WarmStateCodec is the package's WarmStateCodec, as migrate.VM has it.
func (v *VM) WarmStateCodec() { WarmStateCodec() }
