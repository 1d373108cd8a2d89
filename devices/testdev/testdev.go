// Package testdev is an MMIO test device for the project's own test guests.
// It gives instruction-emulation tests (KVM, and the MSHV backend's x86
// emulator) something to read and write through MMIO exits whose effect
// the host can check: a scratch area that behaves like memory at any
// access width, and counters that show how many accesses the VMM actually
// saw, of what size and direction.
//
// Register map (offsets from platform.TestDeviceBase, Size bytes):
//
//	0x000-0x7FF  scratch storage, read/write, any width 1..32 bytes that
//	             stays inside it (an access that does not reads as all
//	             ones and its write is dropped)
//	0x800        u64 RO  number of accesses served before this one
//	0x808        u64 RO  number of writes served before this one
//	0x810        u64 RO  last access: offset | size<<16 | write<<24
//	0x818        u64 WO  write anything: zero the three registers above
//	                     (this write is not counted)
//
// Every other byte reads as all ones and ignores writes. Registers may be
// read at any width and alignment; each byte comes from the register it
// falls in. Counters are updated after an access is served, so a read of
// 0x800 reports the accesses before it.
package testdev

import (
	"fmt"
	"sync"
)

// Layout.
const (
	Size        = 0x1000
	ScratchSize = 0x800
	RegAccesses = 0x800
	RegWrites   = 0x808
	RegLast     = 0x810
	RegReset    = 0x818
	// MaxAccess is the widest access the scratch area serves.
	MaxAccess = 32
)

// Device is the test device. It is safe for concurrent use.
type Device struct {
	mu       sync.Mutex
	scratch  [ScratchSize]byte
	accesses uint64
	writes   uint64
	last     uint64
}

// State is the device's snapshot state.
type State struct {
	Scratch  []byte `json:"scratch"` // ScratchSize bytes
	Accesses uint64 `json:"accesses"`
	Writes   uint64 `json:"writes"`
	Last     uint64 `json:"last"`
}

// New returns a test device with zeroed scratch and counters.
func New() *Device { return &Device{} }

func inScratch(offset uint64, n int) bool {
	return n >= 1 && n <= MaxAccess && offset < ScratchSize && offset+uint64(n) <= ScratchSize
}

// regByte returns the register byte at off (0x800-0x817) and whether
// that offset belongs to a readable register.
func (d *Device) regByte(off uint64) (byte, bool) {
	if off < RegAccesses || off >= RegReset {
		return 0, false
	}
	var v uint64
	switch (off - RegAccesses) / 8 {
	case 0:
		v = d.accesses
	case 1:
		v = d.writes
	case 2:
		v = d.last
	}
	return byte(v >> (8 * ((off - RegAccesses) % 8))), true
}

// Read serves a read of len(data) bytes at offset.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if inScratch(offset, len(data)) {
		copy(data, d.scratch[offset:])
	} else {
		for i := range data {
			b, ok := d.regByte(offset + uint64(i))
			if !ok {
				b = 0xff
			}
			data[i] = b
		}
	}
	d.count(offset, len(data), false)
}

// Write serves a write of len(data) bytes at offset.
func (d *Device) Write(offset uint64, data []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if inScratch(offset, len(data)) {
		copy(d.scratch[offset:], data)
	} else if offset == RegReset && len(data) > 0 {
		d.accesses, d.writes, d.last = 0, 0, 0
		return
	}
	d.count(offset, len(data), true)
}

func (d *Device) count(offset uint64, n int, write bool) {
	d.accesses++
	if write {
		d.writes++
	}
	if n > 0xff {
		n = 0xff
	}
	d.last = offset&0xffff | uint64(n)<<16
	if write {
		d.last |= 1 << 24
	}
}

// Snapshot returns a copy of the scratch area.
func (d *Device) Snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.scratch[:]...)
}

// Counters returns the access count, write count and last-access register.
func (d *Device) Counters() (accesses, writes, last uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.accesses, d.writes, d.last
}

// Save returns the device state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{
		Scratch:  append([]byte(nil), d.scratch[:]...),
		Accesses: d.accesses,
		Writes:   d.writes,
		Last:     d.last,
	}
}

// Restore sets the device state; the scratch area must be exactly
// ScratchSize bytes.
func (d *Device) Restore(s State) error {
	if len(s.Scratch) != ScratchSize {
		return fmt.Errorf("testdev: restore: scratch is %d bytes, want %d", len(s.Scratch), ScratchSize)
	}
	if s.Writes > s.Accesses {
		return fmt.Errorf("testdev: restore: %d writes exceed %d accesses", s.Writes, s.Accesses)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.scratch[:], s.Scratch)
	d.accesses, d.writes, d.last = s.Accesses, s.Writes, s.Last
	return nil
}
