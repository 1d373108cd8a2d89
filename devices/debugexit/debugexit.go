// Package debugexit is QEMU's isa-debug-exit device (iobase 0xf4, iosize
// 4). Test guests end a run by writing a value V to it; the VMM then exits
// with status (V<<1)|1, exactly as QEMU does, so the same guest images and
// test harnesses work under both. It exists as its own device so that the
// exit path is explicit and testable instead of a special case in the vCPU
// loop.
package debugexit

import "sync"

// Size is the port range the device claims (QEMU's iosize=4).
const Size = 4

// Device is the debug-exit port. It is safe for concurrent use.
type Device struct {
	onExit func(status int)

	mu    sync.Mutex
	state State
}

// State is the device's snapshot state: only diagnostics, since an exit
// request ends the VM.
type State struct {
	// Exited is true once the guest has written to the port.
	Exited bool `json:"exited"`
	// LastStatus is the last status passed to onExit ((V<<1)|1).
	LastStatus int64 `json:"last_status"`
}

// New returns a debug-exit device that calls onExit with (V<<1)|1 when the
// guest writes V. onExit runs on the vCPU thread that did the write; it must
// not block for long (typically it records the status and stops the VM).
// A nil onExit ignores writes.
func New(onExit func(status int)) *Device {
	return &Device{onExit: onExit}
}

// Read returns zeroes, as QEMU's device does (a guest can use this to tell
// that the port is backed, since unclaimed ports read as all ones).
func (d *Device) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write requests the exit. V is the written value, little endian, of
// whatever width the guest used (1, 2 or 4 bytes; longer accesses use
// their first 4 bytes, the widest port access x86 has). The offset inside
// the 4-port range does not matter, as in QEMU.
func (d *Device) Write(offset uint64, data []byte) {
	var v uint64
	n := len(data)
	if n > 4 {
		n = 4
	}
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	status := int64(v<<1 | 1)
	d.mu.Lock()
	d.state.Exited = true
	d.state.LastStatus = status
	d.mu.Unlock()
	if d.onExit != nil {
		d.onExit(int(status))
	}
}

// Save returns the device state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Restore sets the device state. It does not call onExit: a restored
// exit request is history, not a new request.
func (d *Device) Restore(s State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state = s
	return nil
}
