package vhost

import (
	"fmt"

	"govmm/virtio/vhost/abi"
)

// DirtyLog is the log a vhost backend marks the guest pages it writes in
// (receive buffers, used rings) while the VMM live-migrates the guest:
// the kernel's writes are in neither the accelerator's dirty log nor the
// VMM's own. One log may serve several backends (the kernel sets its
// bits atomically).
type DirtyLog struct {
	l     *abi.Log
	pages uint64
}

// NewDirtyLog maps a log for every page of ram (from GPA 0 to the end of
// the highest region: the kernel indexes the log by GPA).
func NewDirtyLog(ram []Region) (*DirtyLog, error) {
	var end uint64
	for _, r := range ram {
		end = max(end, r.GPA+uint64(len(r.Host)))
	}
	pages := (end + abi.LogPageSize - 1) / abi.LogPageSize
	l, err := abi.MapLog(pages)
	if err != nil {
		return nil, err
	}
	return &DirtyLog{l: l, pages: pages}, nil
}

// Collect clears the log and calls mark for each run of pages that was
// set, in ascending order (gpa and length in bytes). A page the kernel
// sets during Collect is either in this call's runs or the next's.
func (d *DirtyLog) Collect(mark func(gpa, n uint64)) {
	var start, n uint64 // the run being built, in pages
	flush := func() {
		if n > 0 {
			mark(start*abi.LogPageSize, n*abi.LogPageSize)
		}
		n = 0
	}
	for w := range d.l.Words {
		word := &d.l.Words[w]
		if word.Load() == 0 {
			continue
		}
		v := word.Swap(0)
		for b := uint64(0); b < 64; b++ {
			if v&(1<<b) == 0 {
				continue
			}
			p := uint64(w)*64 + b
			if n > 0 && start+n == p {
				n++
				continue
			}
			flush()
			start, n = p, 1
		}
	}
	flush()
}

// Close unmaps the log; no backend may log into it any more.
func (d *DirtyLog) Close() error { return d.l.Unmap() }

// SetLogBase points the backend's dirty log at l (VHOST_SET_LOG_BASE).
// The kernel logs into it once VHOST_F_LOG_ALL is acked (buffers) and a
// ring is set with Vring.Log (its used ring).
func (b *Backend) SetLogBase(l *DirtyLog) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.io.SetU64(abi.SetLogBase, l.l.Addr()); err != nil {
		return fmt.Errorf("%s: VHOST_SET_LOG_BASE: %w", b.name, err)
	}
	return nil
}

// SetVringAddr sets ring i's addresses again, as SetVring does, to turn
// the logging of its used ring on or off (v.Log) while it runs.
func (b *Backend) SetVringAddr(i int, v Vring) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, err := b.vringAddr(i, v)
	if err != nil {
		return fmt.Errorf("%s: %w", b.name, err)
	}
	if err := b.io.SetAddr(a); err != nil {
		return fmt.Errorf("%s: VHOST_SET_VRING_ADDR for ring %d: %w", b.name, i, err)
	}
	return nil
}

// Mark sets page gpa's bit as the kernel does when it writes there: for
// fakes and tests of what reads the log.
func (d *DirtyLog) Mark(gpa uint64) {
	p := gpa / abi.LogPageSize
	if p < d.pages {
		d.l.Words[p/64].Or(1 << (p % 64))
	}
}

// Addr is the log's address in the VMM, as VHOST_SET_LOG_BASE gives it.
func (d *DirtyLog) Addr() uint64 { return d.l.Addr() }
