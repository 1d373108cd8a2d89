package vm

import (
	"fmt"
	"math/bits"

	"govmm/memory"
)

// StartDirtyLog starts tracking guest writes to RAM (for live migration).
func (v *VM) StartDirtyLog() error { return v.avm.EnableDirtyLog() }

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
