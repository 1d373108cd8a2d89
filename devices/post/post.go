// Package post is the port 0x80 POST-code sink. Firmware and kernels write
// progress codes there (Linux also uses it as an I/O delay), so it must be
// claimed and cheap; remembering the last code and counting writes makes
// a stuck guest's last checkpoint visible in logs and snapshots.
package post

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// Size is the port range the device claims.
const Size = 1

// Device is the POST-code port. It is safe for concurrent use.
type Device struct {
	log *slog.Logger

	mu    sync.Mutex
	state State
}

// State is the device's snapshot state.
type State struct {
	// LastCode is the last byte written.
	LastCode uint8 `json:"last_code"`
	// Writes counts writes since the VM started.
	Writes uint64 `json:"writes"`
}

// New returns a POST sink that logs each code at debug level on log (nil
// means slog.Default()).
func New(log *slog.Logger) *Device {
	if log == nil {
		log = slog.Default()
	}
	return &Device{log: log}
}

// Read returns the last code written. The port is one byte wide: in a
// wider read the bytes beyond it read as all ones, like unclaimed ports.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	c := d.state.LastCode
	d.mu.Unlock()
	for i := range data {
		data[i] = 0xff
	}
	if offset == 0 && len(data) > 0 {
		data[0] = c
	}
}

// Write records the low byte of the written value.
func (d *Device) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	d.mu.Lock()
	d.state.LastCode = data[0]
	d.state.Writes++
	d.mu.Unlock()
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		d.log.Debug("POST code", "code", fmt.Sprintf("%#02x", data[0]))
	}
}

// LastCode returns the last code written and the number of writes.
func (d *Device) LastCode() (code uint8, writes uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state.LastCode, d.state.Writes
}

// Save returns the device state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Restore sets the device state.
func (d *Device) Restore(s State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state = s
	return nil
}
