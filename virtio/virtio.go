// Package virtio is govmm's virtio 1.x core: split and packed virtqueues
// over guest memory (descriptor chains, indirect descriptors, event-idx;
// packed rings with their wrap counters and event suppression), feature
// negotiation, the device-status state machine with reset, and the modern
// PCI transport (common, notify, ISR and device configuration structures
// in a memory BAR; interrupts through MSI-X vectors; doorbells as MMIO
// ioeventfds, because MSHV has no port-I/O ioeventfd). Devices (virtio/rng,
// virtio/blk) implement Device and see only chains.
//
// It exists so that a guest's own virtio drivers (Linux's virtio_pci)
// drive govmm's devices unchanged. Everything the driver writes, the rings
// included, is untrusted: a malformed ring or chain puts the device into
// DEVICE_NEEDS_RESET with one log line that names the device, the queue
// and what was wrong, and the VMM and the other devices go on.
package virtio

import "encoding/json"

// Device status bits (virtio 1.2 §2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)

// Transport-level feature bits.
const (
	FIndirectDesc = 1 << 28
	FEventIdx     = 1 << 29
	FVersion1     = 1 << 32
)

// Device IDs (virtio 1.2 §5).
const (
	IDNet     = 1
	IDBlock   = 2
	IDEntropy = 4
	IDVsock   = 19
)

// NoVector is the MSI-X vector number meaning "none".
const NoVector = 0xffff

// Device is one virtio device behind a transport.
type Device interface {
	// Type is the virtio device ID.
	Type() uint16
	// Name names the device in log lines ("virtio-blk vda").
	Name() string
	// Features are the device-specific feature bits it offers; the
	// transport adds VERSION_1, EVENT_IDX and INDIRECT_DESC (and
	// RING_PACKED when configured with PCIConfig.Packed).
	Features() uint64
	// QueueMax is each queue's maximum size (a power of two).
	QueueMax() []uint16
	// ReadConfig and WriteConfig access the device-specific
	// configuration structure; offsets past it read as zero and drop
	// writes.
	ReadConfig(off uint64, data []byte)
	WriteConfig(off uint64, data []byte)
	// Activate is called when the driver sets DRIVER_OK, with the
	// negotiated features.
	Activate(features uint64) error
	// Handle serves one chain of queue q. It calls done exactly once,
	// with the bytes written into the chain, from any goroutine, now or
	// later. An error means the driver broke the device's protocol (the
	// device then needs a reset) and done must not be called.
	Handle(q int, c *Chain, done func(written uint32)) error
	// Reset returns the device to its state before Activate; no request
	// is in flight when the transport calls it.
	Reset()
	// Describe is the device's configuration as a restore must find it
	// again (a different disk is refused).
	Describe() string
}

// Keeper is a Device that keeps some queues' chains until it has
// something to put into them (a receive queue: the driver posts empty
// buffers, the device fills one when a packet arrives). Kept chains would
// count as in flight for ever, so the transport takes them back before a
// pause, a reset or a close, and a pause rewinds the queue over them: the
// driver's buffers are handed to the device again on resume, and a
// snapshot sees them as not yet taken.
type Keeper interface {
	// Unkeep gives up the chains of queue q that the device keeps and has
	// not started to fill, and returns how many. They must be the last
	// chains Handle received for q (a keeper fills them in the order it
	// got them), and their done functions are never called afterwards.
	Unkeep(q int) int
}

// More, or'ed into the length a device gives a chain's done function,
// holds the chain back from the driver until the device completes
// another chain of the same queue without it: the chains of one batch
// (a packet received into several buffers, VIRTIO_NET_F_MRG_RXBUF)
// reach the driver together, as it requires (Linux drops a packet whose
// num_buffers it cannot all find used). No other chain of the queue may
// complete in between, and only the batch's last completion may
// interrupt.
const More = 1 << 31

// Restorer is a Device that must learn that its transport was restored
// from a snapshot (virtio-vsock tells the driver its connections are
// gone). Restored is called once, after the device was activated with
// the snapshot's features.
type Restorer interface {
	Restored()
}

// StateSaver is a Device with state of its own that the driver set
// through its queues and that a snapshot or a migration must carry
// (virtio-net: how many queue pairs the driver enabled). The transport
// puts it into PCIState. SaveState is called while the transport is
// paused; RestoreState before the device is activated again with the
// snapshot's features, with nil when the snapshot holds no such state
// (one taken before the device had any).
type StateSaver interface {
	SaveState() json.RawMessage
	RestoreState(json.RawMessage) error
}

// ReadConfigImage copies the bytes of a device configuration image at
// off into data; bytes past the image read as zero.
func ReadConfigImage(img []byte, off uint64, data []byte) {
	for i := range data {
		o := off + uint64(i)
		if o < off || o >= uint64(len(img)) {
			data[i] = 0
			continue
		}
		data[i] = img[o]
	}
}
