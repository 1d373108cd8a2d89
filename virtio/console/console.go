// Package console is virtio-console (virtio 1.2 §5.3) with a single port
// and no optional features: the guest's hvc0. Its receive queue carries
// host input to the guest, its transmit queue the guest's output to a
// host writer. It exists as a faster console than the 16550 UART, which
// moves one byte per port access and exit: a transmit chain carries up to
// a page or more per notification.
//
// Host input waits in a bounded buffer until the driver posts receive
// buffers; that buffer is the device's State, which snapshots carry, so
// input typed before a snapshot reaches the restored guest.
package console

import (
	"fmt"
	"io"
	"log/slog"
	"sync"

	"govmm/virtio"
)

// Queues (virtio 1.2 §5.3.2: port 0's receiveq and transmitq; without
// VIRTIO_CONSOLE_F_MULTIPORT there are no others).
const (
	rxQ = 0
	txQ = 1
)

// QueueSize is each queue's maximum size.
const QueueSize = 128

// MaxPending bounds the host input that waits for the guest's receive
// buffers: Input blocks beyond it until the guest reads (or the device
// closes), so a host that types faster than the guest reads is slowed,
// not cut off, and the VMM's memory does not grow with it.
const MaxPending = 64 << 10

// maxChain bounds what one transmit chain may carry. Linux sends at most
// a few pages per chain; a guest claiming more breaks the protocol.
const maxChain = 1 << 20

// ID is the virtio device ID of a console.
const ID = 3

// Device is one virtio-console device.
type Device struct {
	out io.Writer
	log *slog.Logger

	// deliver serialises deliveries to the guest, so receive buffers
	// complete in the order the bytes were taken. It is never held by
	// the transport's calls into the device (Activate, Reset), which
	// run with the transport's lock held; completions take that lock.
	deliver sync.Mutex

	mu     sync.Mutex
	cond   *sync.Cond
	active bool
	closed bool
	// rx are the receive buffers the driver posted, in order.
	rx []kept
	// pending is host input not yet in a receive buffer.
	pending []byte
	// outErr is the first output error; later output is dropped.
	outErr error
}

type kept struct {
	c    *virtio.Chain
	done func(uint32)
}

// State is the device's part of a snapshot: host input the guest has not
// received yet.
type State struct {
	Pending []byte `json:"pending,omitempty"`
}

// New returns a console whose guest output goes to out.
func New(out io.Writer, log *slog.Logger) *Device {
	if out == nil {
		out = io.Discard
	}
	if log == nil {
		log = slog.Default()
	}
	d := &Device{out: out, log: log}
	d.cond = sync.NewCond(&d.mu)
	return d
}

func (d *Device) Type() uint16       { return ID }
func (d *Device) Name() string       { return "virtio-console" }
func (d *Device) QueueMax() []uint16 { return []uint16{QueueSize, QueueSize} }
func (d *Device) Describe() string   { return "virtio-console" }

// Features offers nothing device-specific: no console size (F_SIZE: the
// guest's terminal keeps its default), no multiport, no emergency write.
func (d *Device) Features() uint64 { return 0 }

// ReadConfig: with none of the features that give its fields meaning,
// the configuration reads as zeros.
func (d *Device) ReadConfig(_ uint64, data []byte) { clear(data) }
func (d *Device) WriteConfig(uint64, []byte)       {}

// Activate starts delivering input.
func (d *Device) Activate(uint64) error {
	d.mu.Lock()
	d.active = true
	d.mu.Unlock()
	return nil
}

// Reset forgets the receive buffers (the transport took them back);
// host input not yet delivered waits for the next driver.
func (d *Device) Reset() {
	d.mu.Lock()
	d.active = false
	d.rx = nil
	d.mu.Unlock()
}

// Unkeep gives back the receive buffers the device keeps.
func (d *Device) Unkeep(q int) int {
	if q != rxQ {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.rx)
	d.rx = nil
	return n
}

// Handle keeps receive buffers until there is input for them, and writes
// transmitted bytes to the output.
func (d *Device) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	switch q {
	case rxQ:
		if len(c.Readable) > 0 || c.WritableLen() == 0 {
			return fmt.Errorf("receive buffer %d has %d device-readable and %d device-writable bytes, want none and some",
				c.Head, c.ReadableLen(), c.WritableLen())
		}
		d.mu.Lock()
		d.rx = append(d.rx, kept{c, done})
		d.mu.Unlock()
		d.flush()
		return nil
	case txQ:
		if len(c.Writable) > 0 {
			return fmt.Errorf("transmit buffer %d has %d device-writable bytes; the device writes none", c.Head, c.WritableLen())
		}
		if n := c.ReadableLen(); n > maxChain {
			return fmt.Errorf("transmit buffer %d carries %d bytes, more than %d", c.Head, n, maxChain)
		}
		for _, b := range c.Readable {
			d.write(b.Bytes)
		}
		done(0)
		return nil
	}
	return fmt.Errorf("no queue %d", q)
}

// write sends guest output to the host writer. A writer that fails is
// logged once and the guest's output dropped from then on: the guest's
// console must not stall because the host stopped reading.
func (d *Device) write(p []byte) {
	d.mu.Lock()
	failed := d.outErr != nil
	d.mu.Unlock()
	if failed || len(p) == 0 {
		return
	}
	if _, err := d.out.Write(p); err != nil {
		d.mu.Lock()
		d.outErr = err
		d.mu.Unlock()
		d.log.Warn("virtio-console: output failed; the guest's further output is dropped", "err", err)
	}
}

// OutputError is the error that stopped the output, if any.
func (d *Device) OutputError() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.outErr
}

// Input queues host input for the guest. It blocks while MaxPending bytes
// wait already, until the guest takes some or the device is closed (then
// the rest is dropped).
func (d *Device) Input(p []byte) {
	for len(p) > 0 {
		d.mu.Lock()
		for !d.closed && len(d.pending) >= MaxPending {
			d.cond.Wait()
		}
		if d.closed {
			d.mu.Unlock()
			return
		}
		n := min(len(p), MaxPending-len(d.pending))
		d.pending = append(d.pending, p[:n]...)
		p = p[n:]
		d.mu.Unlock()
		d.flush()
	}
}

// flush moves pending input into the receive buffers the driver posted,
// in order, and completes them.
func (d *Device) flush() {
	d.deliver.Lock()
	defer d.deliver.Unlock()
	for {
		d.mu.Lock()
		if !d.active || len(d.rx) == 0 || len(d.pending) == 0 {
			d.mu.Unlock()
			return
		}
		k := d.rx[0]
		d.rx = d.rx[1:]
		n := k.c.Write(0, d.pending)
		d.pending = d.pending[n:]
		if len(d.pending) == 0 {
			d.pending = nil
		}
		d.cond.Broadcast()
		d.mu.Unlock()
		// Completion takes the transport's lock: not with mu held.
		k.done(uint32(n))
	}
}

// Save returns the input not yet delivered. The transport must be paused.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return State{Pending: append([]byte(nil), d.pending...)}
}

// Restore loads a saved state into a device that has not run.
func (d *Device) Restore(s State) error {
	if len(s.Pending) > MaxPending {
		return fmt.Errorf("virtio-console: %d bytes of pending input, more than %d", len(s.Pending), MaxPending)
	}
	d.mu.Lock()
	d.pending = append([]byte(nil), s.Pending...)
	d.mu.Unlock()
	return nil
}

// Close releases an Input that waits for room; later input is dropped.
func (d *Device) Close() error {
	d.mu.Lock()
	d.closed = true
	d.cond.Broadcast()
	d.mu.Unlock()
	return nil
}
