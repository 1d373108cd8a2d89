// Package rng is virtio-rng (virtio 1.2 §5.4): one queue whose writable
// buffers the device fills with the host's randomness (getrandom), so a
// guest has entropy at boot without trusting its own timing jitter.
package rng

import (
	"fmt"

	"golang.org/x/sys/unix"

	"govmm/virtio"
)

// QueueSize is the request queue's maximum size.
const QueueSize = 256

// maxRequest bounds the bytes one request gets: a driver asking for more
// gets this many (it asks again), so a guest cannot make the VMM fill
// gigabytes in one go.
const maxRequest = 64 << 10

// Device is one virtio-rng device.
type Device struct{}

// New returns a virtio-rng device.
func New() *Device { return &Device{} }

func (*Device) Type() uint16                   { return virtio.IDEntropy }
func (*Device) Name() string                   { return "virtio-rng" }
func (*Device) Features() uint64               { return 0 }
func (*Device) QueueMax() []uint16             { return []uint16{QueueSize} }
func (*Device) ReadConfig(_ uint64, d []byte)  { clear(d) }
func (*Device) WriteConfig(_ uint64, _ []byte) {}
func (*Device) Activate(uint64) error          { return nil }
func (*Device) Reset()                         {}
func (*Device) Describe() string               { return "virtio-rng" }

// Handle fills the chain's writable buffers with random bytes. A chain
// with readable buffers breaks the protocol (the device reads nothing).
func (*Device) Handle(_ int, c *virtio.Chain, done func(uint32)) error {
	if len(c.Readable) > 0 {
		return fmt.Errorf("request %d has %d device-readable buffers; virtio-rng reads none", c.Head, len(c.Readable))
	}
	left, n := maxRequest, 0
	for _, b := range c.Writable {
		p := b.Bytes[:min(len(b.Bytes), left)]
		for len(p) > 0 {
			k, err := unix.Getrandom(p, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				// getrandom does not fail once the pool is
				// initialised; hand back what was filled.
				done(uint32(n))
				return nil
			}
			p, n, left = p[k:], n+k, left-k
		}
		if left == 0 {
			break
		}
	}
	done(uint32(n))
	return nil
}
