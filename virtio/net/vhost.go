package net

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"govmm/virtio"
	"govmm/virtio/vhost"
	"govmm/virtio/vhost/abi"
)

// VhostDevice is where the kernel's vhost-net device is.
const VhostDevice = "/dev/vhost-net"

// Feature bits the kernel's vhost-net implements itself, so that the
// device offers them only where /dev/vhost-net does: merged receive
// buffers (it fills them) and packed rings (it would walk them). The
// offloads (CSUM, TSO, the guest's) are the TAP's, which vhost-net
// passes the virtio-net header to untouched; MAC, STATUS and the
// control queue stay the VMM's.
const (
	fRingPacked   = 1 << 34
	vhostNetOwned = fMrgRxbuf
)

// Vhost is a virtio-net device whose receive and transmit queues the
// kernel's vhost-net serves (vhost=on, as QEMU's and Cloud Hypervisor's
// vhost=on): one /dev/vhost-net file per queue pair, whose backend is the
// pair's TAP queue (VHOST_NET_SET_BACKEND), so a packet moves between the
// TAP and guest memory in the kernel's vhost worker, with no VMM thread.
// The VMM keeps the control queue, the config space, the TAP's offload
// settings (TUNSETOFFLOAD as the driver negotiates them) and the queue
// pairs' attachment (TUNSETQUEUE). It implements virtio.Offloader and
// virtio.DirtyLogger: during a live migration the kernel logs its writes
// into guest memory (VHOST_F_LOG_ALL) and the VMM merges that log into
// its own.
type Vhost struct {
	*Device
	bes []*vhost.Backend
	ram []vhost.Region
	// tapFDs are the pairs' TAP queue descriptors, the backends.
	tapFDs []int

	mu sync.Mutex
	// running: the backends serve the queues; features and rings are
	// what they were started with (to set the rings' logging again).
	running  bool
	features uint64
	rings    []virtio.OffloadQueue
	// dlog is the kernel's dirty log while live migration tracks
	// writes, and mark where its pages go (nil: off).
	dlog *vhost.DirtyLog
	mark func(gpa, n uint64)
}

// OpenVhost attaches to (or creates) the TAP as Open does, without
// reading it, and opens one vhost-net file per queue pair at path
// (VhostDevice when empty), giving each guest RAM. A host without
// vhost-net, or a kernel that cannot serve what the device needs, is an
// error that says so: govmm never falls back to serving the queues
// itself.
func OpenVhost(c Config, path string, ram []vhost.Region, log *slog.Logger) (*Vhost, error) {
	if path == "" {
		path = VhostDevice
	}
	mac, err := checkConfig(&c)
	if err != nil {
		return nil, err
	}
	var bes []*vhost.Backend
	for range c.Queues {
		be, err := vhost.Open(path)
		if err != nil {
			for _, b := range bes {
				b.Close()
			}
			return nil, fmt.Errorf("virtio-net %s: vhost=on: %w", c.Tap, err)
		}
		bes = append(bes, be)
	}
	// vhost-net moves the packets: the TAP stays out of Go's poller.
	t, err := openTapFor(c.Tap, c.Queues, false, mac)
	if err != nil {
		for _, b := range bes {
			b.Close()
		}
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	d, err := newVhost(c, mac, t, bes, ram, log)
	if err != nil {
		t.close()
		return nil, err
	}
	return d, nil
}

// newVhost builds the device on an open TAP (or a test's fake) and open
// backends, one per pair; on error the backends are closed.
func newVhost(c Config, mac []byte, be backend, bes []*vhost.Backend, ram []vhost.Region, log *slog.Logger) (d *Vhost, err error) {
	defer func() {
		if err != nil {
			for _, b := range bes {
				b.Close()
			}
		}
	}()
	if len(bes) != len(be.queues()) {
		return nil, fmt.Errorf("virtio-net %s: %d vhost-net files for %d queue pairs", c.Tap, len(bes), len(be.queues()))
	}
	k := bes[0]
	want := uint64(virtio.FVersion1 | virtio.FEventIdx | virtio.FIndirectDesc)
	if k.Features()&want != want {
		return nil, fmt.Errorf("virtio-net %s: vhost=on: %s offers features %#x, without all of VERSION_1, EVENT_IDX and INDIRECT_DESC (%#x)",
			c.Tap, k.Name(), k.Features(), want)
	}
	if c.Packed {
		if k.Features()&fRingPacked == 0 {
			return nil, fmt.Errorf("virtio-net %s: packed=on with vhost=on: %s does not offer VIRTIO_F_RING_PACKED (its features are %#x); use packed=off, or vhost=off for govmm's own packed rings",
				c.Tap, k.Name(), k.Features())
		}
		return nil, fmt.Errorf("virtio-net %s: packed=on with vhost=on: govmm hands only split rings to a kernel backend; use packed=off, or vhost=off", c.Tap)
	}
	d = &Vhost{bes: bes, ram: ram}
	for _, b := range bes {
		if err := b.SetMemTable(ram); err != nil {
			return nil, fmt.Errorf("virtio-net %s: %w", c.Tap, err)
		}
	}
	d.Device = newDevice(c, mac, be, log, false)
	fds, err := d.Device.TapFDs()
	if err != nil {
		return nil, err
	}
	d.tapFDs = fds
	return d, nil
}

// Features offers what the VMM's device offers, less the bits vhost-net
// implements and this kernel's does not offer.
func (d *Vhost) Features() uint64 {
	f := d.Device.Features()
	return f&^vhostNetOwned | f&vhostNetOwned&d.bes[0].Features()
}

// Offloaded: the kernel serves every receive and transmit queue; the
// control queue is the VMM's.
func (d *Vhost) Offloaded(q int) bool { return q >= 0 && q < 2*len(d.bes) }

// kernelFeatures is what the backends are acked: the negotiated features
// the kernel knows (VERSION_1, EVENT_IDX, INDIRECT_DESC, MRG_RXBUF; with
// VERSION_1 the header is 12 bytes, which the TAP was given with
// TUNSETVNETHDRSZ), and VHOST_F_LOG_ALL while logging. The TAP adds and
// removes the header itself (VHOST_NET_F_VIRTIO_NET_HDR is not acked).
// Called with mu held.
func (d *Vhost) kernelFeatures() uint64 {
	f := d.features & d.bes[0].Features() &^ abi.FLogAll
	if d.dlog != nil {
		f |= abi.FLogAll
	}
	return f
}

func vring(q virtio.OffloadQueue, log bool) vhost.Vring {
	return vhost.Vring{Size: q.Config.Size, Desc: q.Config.Desc, Avail: q.Config.Avail, Used: q.Config.Used, Base: q.Base, Log: log}
}

// StartOffload programs each pair's vhost-net file with its two rings
// (vhost-net's ring 0 receives, ring 1 transmits) and makes the pair's
// TAP queue its backend, which starts it.
func (d *Vhost) StartOffload(features uint64, qs []virtio.OffloadQueue) error {
	if len(qs) != 2*len(d.bes) {
		return fmt.Errorf("vhost-net needs the %d receive and transmit queues, got %d", 2*len(d.bes), len(qs))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.features, d.rings = features, append([]virtio.OffloadQueue(nil), qs...)
	kf := d.kernelFeatures()
	for _, b := range d.bes {
		if d.dlog != nil {
			if err := b.SetLogBase(d.dlog); err != nil {
				return err
			}
		}
		if err := b.SetFeatures(kf); err != nil {
			return err
		}
	}
	for _, q := range qs {
		if q.Index < 0 || q.Index >= 2*len(d.bes) {
			return fmt.Errorf("vhost-net: queue %d is not a receive or transmit queue", q.Index)
		}
		if err := d.bes[q.Index/2].SetRing(q.Index%2, vring(q, d.dlog != nil), q.Kick, q.Call); err != nil {
			return err
		}
	}
	for _, q := range qs {
		p := q.Index / 2
		if err := d.setBackend(p, q.Index%2, d.tapFDs[p]); err != nil {
			return err
		}
	}
	d.running = true
	return nil
}

// setBackend sets ring r of pair p's file to serve TAP queue fd (-1:
// stop serving it).
func (d *Vhost) setBackend(p, r, fd int) error {
	if err := d.bes[p].IO().SetFile(abi.NetSetBackend, abi.VringFile{Index: uint32(r), Fd: int32(fd)}); err != nil {
		return fmt.Errorf("%s (queue pair %d): VHOST_NET_SET_BACKEND ring %d fd %d: %w", d.bes[p].Name(), p, r, fd, err)
	}
	return nil
}

// StopOffload takes every ring's TAP queue away (the kernel finishes
// the packet it is on and marks what it used), then reads where each
// ring stopped.
func (d *Vhost) StopOffload() (map[int]uint16, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.running = false
	var errs []error
	for p := range d.bes {
		for r := range 2 {
			if err := d.setBackend(p, r, -1); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := map[int]uint16{}
	for p, b := range d.bes {
		for r := range 2 {
			n, err := b.VringBase(r)
			if err != nil {
				return nil, err
			}
			out[2*p+r] = n
		}
	}
	return out, nil
}

// SetCall moves queue q's interrupt eventfd.
func (d *Vhost) SetCall(q, fd int) error { return d.bes[q/2].SetCall(q%2, fd) }

// StartDirtyLog has the kernel log the guest pages it writes: a log
// over guest RAM, VHOST_F_LOG_ALL acked (receive buffers) and each
// used ring logged (VHOST_VRING_F_LOG). SyncDirtyLog hands the logged
// pages to mark. While the backends are stopped, they start logging.
func (d *Vhost) StartDirtyLog(mark func(gpa, n uint64)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dlog != nil {
		return errors.New("vhost-net: the dirty log is on already")
	}
	l, err := vhost.NewDirtyLog(d.ram)
	if err != nil {
		return fmt.Errorf("vhost-net: %w", err)
	}
	d.dlog, d.mark = l, mark
	if !d.running {
		return nil
	}
	if err := d.applyLog(); err != nil {
		d.dlog, d.mark = nil, nil
		if rerr := d.applyLog(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		l.Close()
		return err
	}
	return nil
}

// applyLog makes the running backends log as dlog says: the log base
// before the feature, the feature before the rings' used-ring logging
// (off: the reverse). Called with mu held.
func (d *Vhost) applyLog() error {
	on := d.dlog != nil
	kf := d.kernelFeatures()
	if on {
		for _, b := range d.bes {
			if err := b.SetLogBase(d.dlog); err != nil {
				return err
			}
			if err := b.SetFeatures(kf); err != nil {
				return err
			}
		}
	}
	for _, q := range d.rings {
		if err := d.bes[q.Index/2].SetVringAddr(q.Index%2, vring(q, on)); err != nil {
			return err
		}
	}
	if !on {
		for _, b := range d.bes {
			if err := b.SetFeatures(kf); err != nil {
				return err
			}
		}
	}
	return nil
}

// SyncDirtyLog hands the pages the kernel logged since the last call to
// the mark StartDirtyLog was given, and clears them.
func (d *Vhost) SyncDirtyLog() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dlog != nil {
		d.dlog.Collect(d.mark)
	}
}

// StopDirtyLog stops the kernel's logging and unmaps the log.
func (d *Vhost) StopDirtyLog() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.dlog
	if l == nil {
		return nil
	}
	d.dlog, d.mark = nil, nil
	var err error
	if d.running {
		err = d.applyLog()
	}
	if err != nil {
		// The kernel may still log: keep the mapping alive for it.
		return fmt.Errorf("vhost-net: stop the kernel's dirty log: %w", err)
	}
	return l.Close()
}

// Close closes the vhost-net files (the kernel lets go of the TAP
// queues) and then the TAP.
func (d *Vhost) Close() error {
	var errs []error
	for _, b := range d.bes {
		if err := b.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, d.Device.Close())
	d.mu.Lock()
	if d.dlog != nil {
		errs = append(errs, d.dlog.Close())
		d.dlog = nil
	}
	d.mu.Unlock()
	return errors.Join(errs...)
}

var (
	_ virtio.Offloader   = (*Vhost)(nil)
	_ virtio.DirtyLogger = (*Vhost)(nil)
	_ virtio.Keeper      = (*Vhost)(nil)
	_ virtio.StateSaver  = (*Vhost)(nil)
)
