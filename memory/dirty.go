package memory

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"
	"sync/atomic"
)

// The VMM's own dirty log. The accelerator logs the pages the guest's
// vCPUs write; it does not see the VMM's writes into guest RAM (virtio
// devices filling receive buffers, disk reads landing in guest buffers,
// used rings). Live migration needs both, so the code that writes guest
// memory on a device's behalf calls MarkDirty, and the migration loop ORs
// this log into the accelerator's in every round.
//
// The log costs one atomic pointer load per MarkDirty while it is off
// (always, outside a migration), and while it is on one atomic OR per 64
// pages marked (none for pages marked already).

// dirtyLog is one bitmap per region, bit p%64 of word p/64 for page p.
type dirtyLog struct {
	words [][]atomic.Uint64
}

// ErrDirtyLogOn is returned by StartDirtyLog when the log is already on.
var ErrDirtyLogOn = errors.New("the VMM's dirty page log is already on")

// StartDirtyLog starts recording the pages MarkDirty names, from a clean
// log. Only one migration logs at a time.
func (m *Memory) StartDirtyLog() error {
	d := &dirtyLog{words: make([][]atomic.Uint64, len(m.regions))}
	for i, r := range m.regions {
		d.words[i] = make([]atomic.Uint64, (len(r.Host)/PageSize+63)/64)
	}
	if !m.dirty.CompareAndSwap(nil, d) {
		return ErrDirtyLogOn
	}
	return nil
}

// StopDirtyLog stops recording and drops the log.
func (m *Memory) StopDirtyLog() { m.dirty.Store(nil) }

// DirtyLogging reports whether the VMM's dirty log is on.
func (m *Memory) DirtyLogging() bool { return m.dirty.Load() != nil }

// MarkDirty records that the VMM wrote guest RAM in [gpa, gpa+n). The
// caller marks after it wrote (a migration round that takes the mark
// then reads the data). Bytes outside RAM are ignored: writes there
// never happened, Slice refuses them. Safe for concurrent use.
func (m *Memory) MarkDirty(gpa, n uint64) {
	d := m.dirty.Load()
	if d == nil || n == 0 {
		return
	}
	end := gpa + n
	if end < gpa { // wraps: clamp to the top of the address space
		end = ^uint64(0)
	}
	for gpa < end {
		i, ok := m.regionIndex(gpa)
		if !ok {
			return
		}
		r := &m.regions[i]
		w := d.words[i]
		last := (min(end, r.End()) - 1 - r.GPA) / PageSize
		for p := (gpa - r.GPA) / PageSize; p <= last; {
			// The pages of [p, last] in p's word, in one OR; none when
			// they are marked already (a used ring, marked per request).
			hi := min(last, p|63)
			mask := (^uint64(0) >> (63 - hi%64)) &^ (1<<(p%64) - 1)
			if word := &w[p/64]; word.Load()&mask != mask {
				word.Or(mask)
			}
			p = hi + 1
		}
		gpa = r.End()
	}
}

// TakeDirty ORs the pages of region i (of Regions) that the VMM marked
// since the log started or since the last TakeDirty of that region into
// bm, one bit per page as the accelerators' dirty logs have them, and
// clears them. bm is grown to cover the region if it is shorter; the
// result is returned. With the log off, bm is returned as it is.
func (m *Memory) TakeDirty(i int, bm []uint64) []uint64 {
	d := m.dirty.Load()
	if d == nil {
		return bm
	}
	w := d.words[i]
	if len(bm) < len(w) {
		bm = append(bm, make([]uint64, len(w)-len(bm))...)
	}
	for k := range w {
		// Load first: most words of a large guest are clean, and a
		// swap would write every one of them each round.
		if w[k].Load() != 0 {
			bm[k] |= w[k].Swap(0)
		}
	}
	return bm
}

// regionIndex returns the index of the region holding gpa.
func (m *Memory) regionIndex(gpa uint64) (int, bool) {
	i := sort.Search(len(m.regions), func(i int) bool { return m.regions[i].End() > gpa })
	return i, i < len(m.regions) && m.regions[i].GPA <= gpa
}

// CollectDirty returns the GPAs of the pages written since the last call:
// for each region, the accelerator's dirty bitmap (accelLog, given the
// region's GPA; it returns and clears KVM_GET_DIRTY_LOG's bitmap) ORed
// with the pages the VMM marked (TakeDirty). Both architectures' live
// migration use it, so the VMM's device writes are in the list on both.
func (m *Memory) CollectDirty(accelLog func(gpa uint64) ([]uint64, error)) ([]uint64, error) {
	var out []uint64
	for i, r := range m.regions {
		bm, err := accelLog(r.GPA)
		if err != nil {
			return nil, fmt.Errorf("dirty log of region %#x: %w", r.GPA, err)
		}
		bm = m.TakeDirty(i, bm)
		pages := uint64(len(r.Host)) / PageSize
		for w, word := range bm {
			for word != 0 {
				b := uint64(bits.TrailingZeros64(word))
				word &= word - 1
				if p := uint64(w)*64 + b; p < pages {
					out = append(out, r.GPA+p*PageSize)
				}
			}
		}
	}
	return out, nil
}
