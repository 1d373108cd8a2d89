package vm

import (
	"fmt"
	"math/bits"
	"strings"

	"govmm/memory"
)

// StartDirtyLog starts tracking writes to guest RAM (for live migration):
// the vCPUs' writes in the accelerator's dirty log, and the VMM's own
// (virtio devices filling guest buffers and used rings) in guest
// memory's log, which DirtyPages merges. A VM with passed-through VFIO
// devices is refused: their DMA is in neither log.
func (v *VM) StartDirtyLog() error {
	if err := v.plat.vfio.refuse("live migration"); err != nil {
		return err
	}
	if err := v.mem.StartDirtyLog(); err != nil {
		return err
	}
	if err := v.avm.EnableDirtyLog(); err != nil {
		v.mem.StopDirtyLog()
		return err
	}
	return nil
}

// StopDirtyLog stops tracking guest writes.
func (v *VM) StopDirtyLog() error {
	v.mem.StopDirtyLog()
	return v.avm.DisableDirtyLog()
}

// DirtyPages returns (and clears) the GPAs of the pages the guest or the
// VMM's devices wrote since tracking started or since the last call.
// Devices mark a buffer after they wrote it, so a page marked after this
// call was written after it too, and is in the next call's list; once
// the VM is paused (its devices quiesced) the list is complete.
func (v *VM) DirtyPages() ([]uint64, error) {
	var out []uint64
	for i, r := range v.mem.Regions() {
		bm, err := v.avm.DirtyLog(r.GPA)
		if err != nil {
			return nil, fmt.Errorf("dirty log of region %#x: %w", r.GPA, err)
		}
		bm = v.mem.TakeDirty(i, bm)
		pages := uint64(len(r.Host)) / memory.PageSize
		for w, word := range bm {
			for word != 0 {
				b := uint64(bits.TrailingZeros64(word))
				word &= word - 1
				if p := uint64(w)*64 + b; p < pages {
					out = append(out, r.GPA+p*memory.PageSize)
				}
			}
		}
	}
	return out, nil
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

// compareVirtio is CheckVirtioDevices on the two lists.
func compareVirtio(source, here []string) error {
	var diffs []string
	for i := range max(len(source), len(here)) {
		slot := i + 1 // virtio devices start at PCI slot 1
		switch {
		case i >= len(here):
			diffs = append(diffs, fmt.Sprintf("slot %d: the source's %q is missing here", slot, source[i]))
		case i >= len(source):
			diffs = append(diffs, fmt.Sprintf("slot %d: %q here is not on the source", slot, here[i]))
		case source[i] != here[i]:
			diffs = append(diffs, fmt.Sprintf("slot %d: the source has %q, this destination %q", slot, source[i], here[i]))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	return &InputError{Err: fmt.Errorf("the incoming VM's virtio devices differ from this destination's: %s (give migrate receive the source's --disk, --rng, --vsock, --net, --console and --balloon flags: the same image paths, as on shared storage, the same TAP names and vsock CIDs)",
		strings.Join(diffs, "; "))}
}
