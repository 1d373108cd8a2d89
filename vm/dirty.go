package vm

import (
	"fmt"
	"math/bits"

	"govmm/memory"
)

// StartDirtyLog starts tracking guest writes to RAM (for live migration).
// A VM with virtio devices is refused: their writes into guest memory
// come from the VMM, which the accelerator's dirty log does not see, so
// pre-copy would miss them.
func (v *VM) StartDirtyLog() error {
	if err := v.plat.vfio.refuse("live migration"); err != nil {
		return err
	}
	if n := len(v.plat.virtio); n > 0 {
		return fmt.Errorf("live migration of a VM with virtio devices is not supported yet (%d devices; their writes to guest memory are not dirty-tracked): snapshot and restore it instead", n)
	}
	return v.avm.EnableDirtyLog()
}

// StopDirtyLog stops tracking guest writes.
func (v *VM) StopDirtyLog() error { return v.avm.DisableDirtyLog() }

// DirtyPages returns (and clears) the GPAs of the pages the guest wrote
// since tracking started or since the last call.
func (v *VM) DirtyPages() ([]uint64, error) {
	var out []uint64
	for _, r := range v.mem.Regions() {
		bm, err := v.avm.DirtyLog(r.GPA)
		if err != nil {
			return nil, fmt.Errorf("dirty log of region %#x: %w", r.GPA, err)
		}
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
