// Package devices builds a machine's virtio-pci functions from its virtio
// configuration: which devices, in which order, at which PCI slots, with
// which class codes, and how they are closed. It exists so that the x86
// machine (package vm) and the arm64 machine (platform/arm64) build the
// same devices the same way from one piece of code; the one difference
// between them, how a function's MSIs are routed (arm64 tags each GSI
// with the function's requester ID for the ITS), is the Router hook.
//
// The order is fixed, so that a restore allocates the same slots and
// GSIs: the disks (vda, vdb, ... from slot 1 up), the entropy device,
// the vsock device, the network devices, the console, the balloon.
package devices

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"

	"govmm/memory"
	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/balloon"
	"govmm/virtio/blk"
	"govmm/virtio/console"
	virtionet "govmm/virtio/net"
	"govmm/virtio/rng"
	"govmm/virtio/vhost"
	"govmm/virtio/vsock"
)

// FirstSlot is the PCI slot of the first virtio device (slot 0 is the
// host bridge).
const FirstSlot = 1

// MaxDisks is how many disks get names (vda-vdz).
const MaxDisks = 26

// Config is a machine's virtio devices.
type Config struct {
	// Disks are the virtio-blk devices, vda, vdb, ... in this order.
	Disks []blk.Config
	// RNG adds a virtio-rng device.
	RNG bool
	// Vsock is the virtio-vsock device, or nil.
	Vsock *vsock.Config
	// Nets are the virtio-net devices.
	Nets []virtionet.Config
	// Console adds a virtio-console device (the guest's hvc0).
	Console bool
	// Balloon adds a virtio-balloon device, last, offering the features
	// BalloonOptions sets (free page reporting, deflate on OOM,
	// statistics).
	Balloon        bool
	BalloonOptions balloon.Options
	// DiskWorkerThread, if set, confines each virtio-blk worker's thread
	// (blk.Device.SetWorkerThread).
	DiskWorkerThread func(name string)
	// NetQueueThread, if set, confines the threads of each virtio-net
	// device's data path: its transport's queue servers ("net0-rxq0",
	// "net0-tx0", "net0-ctrl") and its TAP readers ("net0-rx0"), for
	// the Nth device netN. tapFDs are the device's TAP descriptors. It
	// returns false while the VMM is not confined yet, and is asked
	// again at the thread's next work (virtio.PCIConfig.QueueThread,
	// net.Device.SetReaderThread).
	NetQueueThread func(name string, tapFDs []int) bool
	// VsockQueueThread, likewise, confines the virtio-vsock transport's
	// three queue servers ("vsock-rxq", "vsock-txq", "vsock-evq").
	VsockQueueThread func(name string) bool
	// BalloonKeep, when set, says why the balloon must not give inflated
	// pages back to the host (guest RAM that the hypervisor or an IOMMU
	// pins): it then follows the driver without releasing anything.
	BalloonKeep string
}

// Empty reports whether no virtio device is asked for.
func (c Config) Empty() bool {
	return len(c.Disks) == 0 && !c.RNG && c.Vsock == nil && len(c.Nets) == 0 && !c.Console && !c.Balloon
}

// Host is what the devices are wired to.
type Host struct {
	Root *pci.Root
	Mem  virtio.Memory
	// Router returns the MSI router of the function at slot.
	Router func(slot int) virtio.Router
	// INTxGSI, if set, gives the GSI of INTA at slot: each function
	// then has INTA there, for drivers without MSI-X (x86: the IOAPIC
	// pin the _PRT names; arm64: the GIC SPI the device tree's
	// interrupt-map names, which has an irqchip route of that number).
	INTxGSI func(slot int) uint32
	Log     *slog.Logger
	// ConsoleOut receives the virtio console's output (nil: discarded).
	ConsoleOut io.Writer
}

// InputError is a device the configuration asks for that cannot be
// built from what the user gave (an image that does not open, a TAP that
// cannot be attached, too many disks): a usage error, not a host failure.
// Each machine turns it into its own InputError.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// Device is one virtio-pci function and what backs it.
type Device struct {
	Transport *virtio.PCI
	Slot      int
	// HotAdded says the device was added while the guest ran (HotAddDisk,
	// HotAddNet) rather than built from the configuration.
	HotAdded bool
	close    func() error // the backend (an image file, a socket), or nil
}

// Set is the virtio devices of a machine, in slot order.
type Set struct {
	// mu guards Devices against a hot-add or an eject while the VM's
	// owner pauses, resumes or closes the set. Readers outside the Set
	// take List.
	mu      sync.Mutex
	Devices []*Device
	// Console is the virtio console, when there is one.
	Console *console.Device
	// Balloon is the virtio balloon, when there is one.
	Balloon *balloon.Device
}

// Build builds the devices of c and adds them to h.Root from FirstSlot
// up. On error what was built is closed.
func Build(c Config, h Host) (s *Set, err error) {
	s = &Set{}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	slot := FirstSlot
	add := func(dev virtio.Device, class virtio.PCIClass, closer func() error, queueThread func(q int) bool) error {
		tr, err := newTransport(dev, class, closer, queueThread, slot, h)
		if err != nil {
			return err
		}
		s.Devices = append(s.Devices, &Device{Transport: tr, Slot: slot, close: closer})
		if err := h.Root.Add(slot, tr.Function()); err != nil {
			return fmt.Errorf("%s at PCI slot %d: %w", dev.Name(), slot, err)
		}
		slot++
		return nil
	}
	if len(c.Disks) > MaxDisks {
		return s, &InputError{fmt.Errorf("%d disks: govmm names at most %d (vda-vdz)", len(c.Disks), MaxDisks)}
	}
	for i, dc := range c.Disks {
		d, err := blk.Open(dc, diskName(i))
		if err != nil {
			return s, &InputError{err}
		}
		d.SetWorkerThread(c.DiskWorkerThread)
		if err := add(d, virtio.PCIClass{Class: 0x01, Subclass: 0x80}, d.Close, nil); err != nil {
			return s, err
		}
	}
	if c.RNG {
		if err := add(rng.New(), virtio.PCIClass{Class: 0xff}, nil, nil); err != nil {
			return s, err
		}
	}
	if c.Vsock != nil && c.Vsock.Vhost {
		d, err := openVhostVsock(*c.Vsock, h)
		if err != nil {
			return s, err
		}
		// The kernel serves the receive and transmit queues; the
		// event queue's server is the only queue thread.
		if err := add(d, virtio.PCIClass{Class: 0xff}, d.Close, vsockThreads(c.VsockQueueThread)); err != nil {
			return s, err
		}
	} else if c.Vsock != nil {
		d, err := vsock.New(*c.Vsock, h.Log)
		if err != nil {
			return s, &InputError{err}
		}
		if err := add(d, virtio.PCIClass{Class: 0xff}, d.Close, vsockThreads(c.VsockQueueThread)); err != nil {
			return s, err
		}
	}
	for i, nc := range c.Nets {
		if nc.Vhost {
			d, err := openVhostNet(nc, h)
			if err != nil {
				return s, err
			}
			// The kernel serves the receive and transmit queues: the
			// control queue's server is the only queue thread.
			qt, err := netThreads(d.Device, i, c.NetQueueThread)
			if err != nil {
				d.Close()
				return s, err
			}
			if err := add(d, virtio.PCIClass{Class: 0x02}, d.Close, qt); err != nil {
				return s, err
			}
			continue
		}
		d, err := virtionet.Open(nc, h.Log)
		if err != nil {
			return s, &InputError{err}
		}
		qt, err := netThreads(d, i, c.NetQueueThread)
		if err != nil {
			d.Close()
			return s, err
		}
		if err := add(d, virtio.PCIClass{Class: 0x02}, d.Close, qt); err != nil {
			return s, err
		}
	}
	if c.Console {
		// Class 07 80: a communication controller, "other" (what QEMU
		// gives virtio-serial).
		d := console.New(h.ConsoleOut, h.Log)
		if err := add(d, virtio.PCIClass{Class: 0x07, Subclass: 0x80}, d.Close, nil); err != nil {
			return s, err
		}
		s.Console = d
	}
	if c.Balloon {
		bc := balloon.Config{KeepReason: c.BalloonKeep, Options: c.BalloonOptions, Log: h.Log}
		if r, ok := h.Mem.(balloon.Releaser); ok && c.BalloonKeep == "" {
			bc.Release = r
		}
		// Class ff: what QEMU gives virtio-balloon.
		d := balloon.New(h.Mem, bc)
		if err := add(d, virtio.PCIClass{Class: 0xff}, nil, nil); err != nil {
			return s, err
		}
		d.SetNotify(s.Devices[len(s.Devices)-1].Transport.ConfigChanged)
		s.Balloon = d
	}
	return s, nil
}

// netThreads wires virtio-net device d (the index'th) to fn: its TAP
// readers through the device, and returns its transport's queue servers'
// hook. nil fn: none.
func netThreads(d *virtionet.Device, index int, fn func(name string, tapFDs []int) bool) (func(q int) bool, error) {
	if fn == nil {
		return nil, nil
	}
	fds, err := d.TapFDs()
	if err != nil {
		return nil, err
	}
	pairs := len(fds)
	d.SetReaderThread(func(pair int) bool { return fn(fmt.Sprintf("net%d-rx%d", index, pair), fds) })
	return func(q int) bool {
		var name string
		switch {
		case q >= 2*pairs:
			name = fmt.Sprintf("net%d-ctrl", index)
		case q%2 == 0:
			name = fmt.Sprintf("net%d-rxq%d", index, q/2)
		default:
			name = fmt.Sprintf("net%d-tx%d", index, q/2)
		}
		return fn(name, fds)
	}, nil
}

// vsockThreads is the virtio-vsock transport's queue servers' hook for
// fn (nil: none).
func vsockThreads(fn func(name string) bool) func(q int) bool {
	if fn == nil {
		return nil
	}
	names := []string{"vsock-rxq", "vsock-txq", "vsock-evq"}
	return func(q int) bool {
		name := fmt.Sprintf("vsock-q%d", q)
		if q < len(names) {
			name = names[q]
		}
		return fn(name)
	}
}

// kernelRAM is guest RAM as a kernel vhost backend's memory table takes
// it, or an error naming what asked for it.
func kernelRAM(what string, h Host) ([]vhost.Region, error) {
	rl, ok := h.Mem.(interface{ Regions() []memory.Region })
	if !ok {
		return nil, fmt.Errorf("%s: this machine's guest memory cannot be handed to the kernel", what)
	}
	var ram []vhost.Region
	for _, r := range rl.Regions() {
		ram = append(ram, vhost.Region{GPA: r.GPA, Host: r.Host})
	}
	return ram, nil
}

// openVhostNet opens the TAP and the kernel's vhost-net for c. A host
// without vhost-net, or a combination it cannot serve (packed=on), is
// the user's to fix (exit 64): vhost=on never falls back to govmm's own
// queues.
func openVhostNet(c virtionet.Config, h Host) (*virtionet.Vhost, error) {
	ram, err := kernelRAM("virtio-net vhost=on", h)
	if err != nil {
		return nil, err
	}
	d, err := virtionet.OpenVhost(c, c.VhostPath, ram, h.Log)
	if err != nil {
		return nil, &InputError{err}
	}
	return d, nil
}

// openVhostVsock opens the kernel's vhost-vsock for c over the guest RAM
// of h.Mem. A host without it, or a CID in use, is the user's to fix
// (exit 64), naming the module or the CID.
func openVhostVsock(c vsock.Config, h Host) (*vsock.Vhost, error) {
	ram, err := kernelRAM("virtio-vsock backend=vhost", h)
	if err != nil {
		return nil, err
	}
	path := c.VhostPath
	if path == "" {
		path = vsock.VhostDevice
	}
	d, err := vsock.NewVhost(c, path, ram, h.Log)
	if err != nil {
		return nil, &InputError{err}
	}
	return d, nil
}

// List returns the devices in slot order (a copy: a hot-add or an eject
// does not change it under the caller).
func (s *Set) List() []*Device {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Device(nil), s.Devices...)
}

// Close stops the transports and closes their backends; safe on a nil
// Set and more than once.
func (s *Set) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	for _, d := range s.List() {
		errs = append(errs, d.stop())
	}
	return errors.Join(errs...)
}

// stop stops d's transport (its queue threads end) and closes its
// backend, once.
func (d *Device) stop() error {
	var errs []error
	if err := d.Transport.Close(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", d.Transport.Device().Name(), err))
	}
	if d.close != nil {
		if err := d.close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.Transport.Device().Name(), err))
		}
		d.close = nil
	}
	return errors.Join(errs...)
}

// newTransport builds dev's virtio-pci transport for slot; on error the
// backend is closed (closer may be nil).
func newTransport(dev virtio.Device, class virtio.PCIClass, closer func() error, queueThread func(q int) bool, slot int, h Host) (*virtio.PCI, error) {
	pc := virtio.PCIConfig{Class: class, Mem: h.Mem, Router: h.Router(slot), Log: h.Log, QueueThread: queueThread}
	if h.INTxGSI != nil {
		pc.INTx = &virtio.INTxConfig{GSI: h.INTxGSI(slot)}
	}
	tr, err := virtio.NewPCI(dev, pc)
	if err != nil && closer != nil {
		closer()
	}
	return tr, err
}

// diskName is the i'th disk's name in log lines and thread names.
func diskName(i int) string { return "vd" + string(rune('a'+i)) }

// RefuseLiveMigration returns why a device of the set cannot be
// live-migrated (virtio.LiveMigrationRefuser), or nil; nil on a nil Set.
func (s *Set) RefuseLiveMigration() error {
	if s == nil {
		return nil
	}
	devs := s.List()
	for _, d := range devs {
		if err := d.Transport.RefuseLiveMigration(); err != nil {
			return fmt.Errorf("live migration: %w", err)
		}
	}
	return nil
}

// StartDirtyLog has every device whose backend writes guest memory
// outside the VMM (virtio.DirtyLogger: vhost-net) log those writes, which
// SyncDirtyLog hands to mark. On error the ones started are stopped.
// Nothing on a nil Set.
func (s *Set) StartDirtyLog(mark func(gpa, n uint64)) error {
	if s == nil {
		return nil
	}
	devs := s.List()
	for i, d := range devs {
		if err := d.Transport.StartDirtyLog(mark); err != nil {
			for _, e := range devs[:i] {
				e.Transport.StopDirtyLog()
			}
			return fmt.Errorf("live migration: %s: %w", d.Transport.Device().Name(), err)
		}
	}
	return nil
}

// SyncDirtyLog hands the devices' logged writes to StartDirtyLog's mark.
func (s *Set) SyncDirtyLog() {
	if s == nil {
		return
	}
	devs := s.List()
	for _, d := range devs {
		d.Transport.SyncDirtyLog()
	}
}

// StopDirtyLog stops the devices' logging.
func (s *Set) StopDirtyLog() error {
	if s == nil {
		return nil
	}
	devs := s.List()
	var errs []error
	for _, d := range devs {
		if err := d.Transport.StopDirtyLog(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.Transport.Device().Name(), err))
		}
	}
	return errors.Join(errs...)
}

// Pause stops every device serving its queues and waits for the requests
// in flight. Pause and Resume do nothing on a nil Set.
func (s *Set) Pause() {
	if s == nil {
		return
	}
	devs := s.List()
	for _, d := range devs {
		d.Transport.Pause()
	}
}

// Resume serves the queues again.
func (s *Set) Resume() {
	if s == nil {
		return
	}
	devs := s.List()
	for _, d := range devs {
		d.Transport.Resume()
	}
}

// SharedOutput wraps the machine's console output, which the UART (from
// a vCPU thread) and the virtio console (from its queue's goroutine)
// both write, so that their writes do not interleave inside one another.
func SharedOutput(w io.Writer) io.Writer { return &lockedWriter{w: w} }

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// count is how many devices of the set d's device type satisfies.
func (s *Set) count(is func(virtio.Device) bool) int {
	n := 0
	for _, d := range s.List() {
		if is(d.Transport.Device()) {
			n++
		}
	}
	return n
}

// HotAddDisk builds a virtio-blk device on fd, an image the control
// socket's client opened (blk.OpenFD), and hot-adds it at slot of
// h.Root, its worker threads confined as c.DiskWorkerThread says. The
// Set owns fd from then on, also on error.
func (s *Set) HotAddDisk(c Config, dc blk.Config, fd, slot int, h Host) (*Device, error) {
	n := s.count(func(d virtio.Device) bool { _, ok := d.(*blk.Device); return ok })
	if n >= MaxDisks {
		unix.Close(fd)
		return nil, &InputError{fmt.Errorf("the VM has %d disks: govmm names at most %d (vda-vdz)", n, MaxDisks)}
	}
	d, err := blk.OpenFD(dc, diskName(n), fd)
	if err != nil {
		return nil, &InputError{err}
	}
	d.SetWorkerThread(c.DiskWorkerThread)
	return s.hotAdd(d, virtio.PCIClass{Class: 0x01, Subclass: 0x80}, d.Close, nil, slot, h)
}

// HotAddNet builds a virtio-net device on fd, a TAP queue the control
// socket's client opened (virtionet.OpenFD), and hot-adds it at slot,
// its queue servers and TAP reader confined as c.NetQueueThread says
// (named netN-... after the N network devices before it). The Set owns
// fd from then on, also on error.
func (s *Set) HotAddNet(c Config, nc virtionet.Config, fd, slot int, h Host) (*Device, error) {
	n := s.count(func(d virtio.Device) bool {
		switch d.(type) {
		case *virtionet.Device, *virtionet.Vhost:
			return true
		}
		return false
	})
	d, err := virtionet.OpenFD(nc, fd, h.Log)
	if err != nil {
		return nil, &InputError{err}
	}
	qt, err := netThreads(d, n, c.NetQueueThread)
	if err != nil {
		d.Close()
		return nil, err
	}
	return s.hotAdd(d, virtio.PCIClass{Class: 0x02}, d.Close, qt, slot, h)
}

// hotAdd puts dev's transport at slot while the guest runs: BARs unplaced
// (pci.Root.HotAdd), for the guest's hotplug code to place.
func (s *Set) hotAdd(dev virtio.Device, class virtio.PCIClass, closer func() error, queueThread func(q int) bool, slot int, h Host) (*Device, error) {
	tr, err := newTransport(dev, class, closer, queueThread, slot, h)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dev.Name(), err)
	}
	d := &Device{Transport: tr, Slot: slot, HotAdded: true, close: closer}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := h.Root.HotAdd(slot, tr.Function()); err != nil {
		tr.Close()
		closer()
		return nil, fmt.Errorf("%s at PCI slot %d: %w", dev.Name(), slot, err)
	}
	i := len(s.Devices)
	for i > 0 && s.Devices[i-1].Slot > slot {
		i--
	}
	s.Devices = append(s.Devices[:i], append([]*Device{d}, s.Devices[i:]...)...)
	return d, nil
}

// Remove takes the device at slot off root and out of the set, stops its
// transport (its queue threads end) and closes its backend. It returns
// the device (nil: none at slot).
func (s *Set) Remove(root *pci.Root, slot int) (*Device, error) {
	if s == nil {
		return nil, nil
	}
	s.mu.Lock()
	var d *Device
	for i, x := range s.Devices {
		if x.Slot == slot {
			d = x
			s.Devices = append(s.Devices[:i:i], s.Devices[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if d == nil {
		return nil, nil
	}
	root.Remove(slot)
	return d, d.stop()
}
