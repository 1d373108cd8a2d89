package vsock

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"

	"govmm/virtio"
	"govmm/virtio/vhost"
	"govmm/virtio/vhost/abi"
)

// fSeqpacket is VIRTIO_VSOCK_F_SEQPACKET, offered when the kernel's
// vhost-vsock has it.
const fSeqpacket = 1 << 1

// Vhost is a virtio-vsock device whose receive and transmit queues the
// kernel's vhost-vsock serves (the guest's CID is then an AF_VSOCK
// address on the host, as with QEMU's vhost-vsock-pci). The event queue
// stays in the VMM, since the kernel does not serve it: the device keeps
// its buffers and sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on it after a
// restore. It implements virtio.Offloader for the transport.
type Vhost struct {
	cfg Config
	log *slog.Logger
	be  *vhost.Backend

	mu       sync.Mutex
	active   bool
	features uint64
	// ev is the event queue, the one the VMM serves.
	ev eventQueue
}

// NewVhost opens vhost-vsock at dev (VhostDevice), gives it guest RAM
// and the guest's CID. A CID another VM (or another vhost-vsock user)
// holds is refused by the kernel, and the error says so.
func NewVhost(c Config, dev string, ram []vhost.Region, log *slog.Logger) (*Vhost, error) {
	be, err := vhost.Open(dev)
	if err != nil {
		return nil, fmt.Errorf("vsock: %w", err)
	}
	return newVhost(c, be, ram, log)
}

// newVhost sets up a backend that is open (the real one, or a test's).
func newVhost(c Config, be *vhost.Backend, ram []vhost.Region, log *slog.Logger) (*Vhost, error) {
	if log == nil {
		log = slog.Default()
	}
	want := uint64(virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc)
	if be.Features()&want != want {
		be.Close()
		return nil, fmt.Errorf("vsock: %s offers features %#x, without all of VERSION_1, EVENT_IDX and INDIRECT_DESC (%#x)", be.Name(), be.Features(), want)
	}
	if err := be.SetMemTable(ram); err != nil {
		be.Close()
		return nil, fmt.Errorf("vsock: %w", err)
	}
	if err := be.IO().SetU64(abi.VsockSetCID, c.CID); err != nil {
		be.Close()
		hint := ""
		if errors.Is(err, errAddrInUse) {
			hint = " (another VM on this host has that CID)"
		}
		return nil, fmt.Errorf("vsock: %s: VHOST_VSOCK_SET_GUEST_CID %d: %w%s", be.Name(), c.CID, err, hint)
	}
	return &Vhost{cfg: c, log: log, be: be}, nil
}

func (d *Vhost) Type() uint16       { return virtio.IDVsock }
func (d *Vhost) Name() string       { return "virtio-vsock" }
func (d *Vhost) QueueMax() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// Features offers SEQPACKET where the kernel serves it.
func (d *Vhost) Features() uint64 { return d.be.Features() & fSeqpacket }

// Describe names the CID and the kernel backend: a restore must give the
// same (a snapshot of the hybrid device restores as the hybrid device).
func (d *Vhost) Describe() string { return fmt.Sprintf("virtio-vsock cid=%d backend=vhost", d.cfg.CID) }

// ReadConfig reads struct virtio_vsock_config (the guest CID).
func (d *Vhost) ReadConfig(off uint64, data []byte) {
	var c [cfgLen]byte
	le.PutUint64(c[:], d.cfg.CID)
	virtio.ReadConfigImage(c[:], off, data)
}

// WriteConfig drops the write: the CID is read-only.
func (d *Vhost) WriteConfig(uint64, []byte) {}

// Activate records the negotiated features; the transport starts the
// kernel's queues next (StartOffload).
func (d *Vhost) Activate(features uint64) error {
	d.mu.Lock()
	d.active, d.features = true, features
	d.unlock()
	return nil
}

// Reset forgets the event buffers; the transport stopped the kernel's
// queues first. The kernel resets the guest's connections itself when
// the driver's transport goes away.
func (d *Vhost) Reset() {
	d.mu.Lock()
	d.active, d.features, d.ev = false, 0, eventQueue{}
	d.mu.Unlock()
}

// Restored asks for TRANSPORT_RESET on the event queue: the kernel that
// knew the guest's connections was the saved VM's host's.
func (d *Vhost) Restored() {
	d.mu.Lock()
	d.ev.resetPending = true
	d.unlock()
}

// Unkeep gives back the event buffers the device keeps.
func (d *Vhost) Unkeep(q int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q != evQ {
		return 0
	}
	return d.ev.unkeep()
}

// Handle keeps the event queue's buffers (the only queue the VMM serves).
func (d *Vhost) Handle(q int, c *virtio.Chain, done func(uint32)) error {
	if q != evQ {
		return fmt.Errorf("queue %d is the kernel's", q)
	}
	if len(c.Readable) > 0 || c.WritableLen() < 4 {
		return fmt.Errorf("event buffer %d has %d device-readable and %d device-writable bytes, want none and at least 4",
			c.Head, c.ReadableLen(), c.WritableLen())
	}
	d.mu.Lock()
	d.ev.bufs = append(d.ev.bufs, kept{c, done})
	d.unlock()
	return nil
}

// unlock sends a pending transport reset if there is an event buffer,
// unlocks mu, then completes the buffer (the transport's lock is never
// taken with mu held).
func (d *Vhost) unlock() {
	comp := d.ev.deliver(d.active)
	d.mu.Unlock()
	if comp != nil {
		comp()
	}
}

// Offloaded: the kernel serves the receive and transmit queues.
func (d *Vhost) Offloaded(q int) bool { return q == rxQ || q == txQ }

// StartOffload programs the kernel's queues and sets it running.
func (d *Vhost) StartOffload(features uint64, qs []virtio.OffloadQueue) error {
	if len(qs) != 2 {
		return fmt.Errorf("vhost-vsock needs the receive and transmit queues, got %d queues", len(qs))
	}
	if err := d.be.SetFeatures(features); err != nil {
		return err
	}
	for _, q := range qs {
		v := vhost.Vring{Size: q.Config.Size, Desc: q.Config.Desc, Avail: q.Config.Avail, Used: q.Config.Used, Base: q.Base}
		if err := d.be.SetRing(q.Index, v, q.Kick, q.Call); err != nil {
			return err
		}
	}
	if err := d.be.IO().SetInt(abi.VsockSetRunning, 1); err != nil {
		return fmt.Errorf("%s: VHOST_VSOCK_SET_RUNNING 1: %w", d.be.Name(), err)
	}
	return nil
}

// StopOffload stops the kernel's queues and reads where they stopped.
func (d *Vhost) StopOffload() (map[int]uint16, error) {
	if err := d.be.IO().SetInt(abi.VsockSetRunning, 0); err != nil {
		return nil, fmt.Errorf("%s: VHOST_VSOCK_SET_RUNNING 0: %w", d.be.Name(), err)
	}
	out := map[int]uint16{}
	for _, q := range []int{rxQ, txQ} {
		b, err := d.be.VringBase(q)
		if err != nil {
			return nil, err
		}
		out[q] = b
	}
	return out, nil
}

// SetCall moves queue q's interrupt eventfd.
func (d *Vhost) SetCall(q, fd int) error { return d.be.SetCall(q, fd) }

// RefuseLiveMigration: the kernel writes the receive buffers and used
// rings, and govmm does not collect its dirty log (VHOST_F_LOG_ALL).
func (d *Vhost) RefuseLiveMigration() error {
	return errors.New("virtio-vsock backend=vhost: the kernel's vhost-vsock writes guest memory outside govmm's dirty log; live migration needs the hybrid backend (socket=PATH); snapshot and restore work")
}

// Close closes the kernel device (its connections to the guest end).
func (d *Vhost) Close() error { return d.be.Close() }

// errAddrInUse is what the kernel answers for a CID in use.
var errAddrInUse error = syscall.EADDRINUSE

var (
	_ virtio.Offloader            = (*Vhost)(nil)
	_ virtio.Keeper               = (*Vhost)(nil)
	_ virtio.Restorer             = (*Vhost)(nil)
	_ virtio.LiveMigrationRefuser = (*Vhost)(nil)
)
