package virtio

import (
	"errors"
	"fmt"

	"govmm/irq/routes"
)

// Offloader is a Device some of whose queues a backend outside the VMM
// serves (a kernel vhost device): the transport never pops those queues.
// Instead, once the driver set DRIVER_OK, it hands the backend each such
// queue's rings and position, the eventfd of its doorbell's ioeventfd as
// the kick (the accelerator signals it on the guest's write and the
// backend polls it, so no VMM thread wakes), and as the call an eventfd
// the accelerator injects from: the queue's MSI-X vector's own irqfd
// eventfd while that vector may fire. While the vector is masked, MSI-X
// is off (INTx) or the queue has no vector, the call is an eventfd the
// transport serves instead, which sets the vector's pending bit, or the
// ISR and the INTx line, as for a queue it serves itself; the transport
// moves the call between the two as the guest masks and unmasks (as
// QEMU's vhost does with its masked notifiers).
//
// The transport stops the backend on a driver reset, a pause (snapshot,
// migration) and Close, and takes each queue's position back from it
// (StopOffload), so that a snapshot holds consistent ring indices; it
// starts the backend again, from those positions, on resume and on the
// restored VM's Start. Offloaded queues are split rings only: NewPCI
// refuses packed=on for such a device.
type Offloader interface {
	// Offloaded reports whether the backend serves queue q.
	Offloaded(q int) bool
	// StartOffload programs and starts the backend with the negotiated
	// features and the offloaded queues, after Activate.
	StartOffload(features uint64, qs []OffloadQueue) error
	// StopOffload stops the backend and returns the next available
	// index of each queue it served, by queue index.
	StopOffload() (map[int]uint16, error)
	// SetCall moves a running backend's call for queue q to eventfd fd.
	SetCall(q, fd int) error
}

// OffloadQueue is one queue as the transport hands it to a backend.
type OffloadQueue struct {
	Index  int
	Config QueueConfig
	// Base is the next available index the backend reads.
	Base uint16
	// Kick and Call are the doorbell's and the interrupt's eventfds.
	Kick, Call int
}

// LiveMigrationRefuser is a Device that cannot be live-migrated: its
// backend writes guest memory that the VMM's dirty log does not see.
type LiveMigrationRefuser interface {
	RefuseLiveMigration() error
}

// RefuseLiveMigration returns why the device cannot be live-migrated, or
// nil when it can.
func (t *PCI) RefuseLiveMigration() error {
	if r, ok := t.dev.(LiveMigrationRefuser); ok {
		return r.RefuseLiveMigration()
	}
	return nil
}

// offloadState is the transport's side of an Offloader.
type offloadState struct {
	dev Offloader
	// kick and call are per queue (nil for a queue the VMM serves): the
	// doorbell eventfd bound as the queue's ioeventfd, and the call
	// eventfd the transport serves while the vector cannot take the
	// backend's signals directly.
	kick, call []*routes.EventFD
	// cur is the call eventfd each queue's backend signals now.
	cur     []int
	running bool
}

// newOffload sets up the eventfds of dev's offloaded queues.
func (t *PCI) newOffload(dev Offloader) error {
	o := &offloadState{dev: dev, kick: make([]*routes.EventFD, len(t.qmax)),
		call: make([]*routes.EventFD, len(t.qmax)), cur: make([]int, len(t.qmax))}
	t.off = o
	for q := range t.qmax {
		if !dev.Offloaded(q) {
			continue
		}
		var err error
		if o.kick[q], err = routes.NewEventFD(); err != nil {
			return err
		}
		if o.call[q], err = routes.NewEventFD(); err != nil {
			return err
		}
		qi := q
		o.call[q].Serve(func(uint64) { t.offloadInterrupt(qi) })
	}
	t.msix.SetNotify(t.msixChanged)
	return nil
}

// offloaded reports whether queue q is the backend's.
func (t *PCI) offloaded(q int) bool { return t.off != nil && t.off.kick[q] != nil }

// offloadInterrupt interrupts the driver for queue q as complete does:
// the backend signalled the call eventfd the transport serves.
func (t *PCI) offloadInterrupt(q int) {
	t.mu.Lock()
	v := t.s.Queues[q].MSIXVector
	if !t.msix.Enabled() {
		t.isr |= 1
		t.updateINTx()
	}
	t.mu.Unlock()
	if v != NoVector {
		if err := t.msix.Trigger(int(v)); err != nil {
			t.log.Error("virtio: queue interrupt", "device", t.dev.Name(), "queue", q, "err", err)
		}
	}
}

// msixChanged follows the guest's MSI-X programming: each running
// offloaded queue's call goes to its vector's irqfd eventfd if the
// vector may fire, else to the transport's.
func (t *PCI) msixChanged() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.updateCalls()
}

// callFD is the eventfd queue q's backend should signal now. Called with
// mu held.
func (t *PCI) callFD(q int) int {
	if v := t.s.Queues[q].MSIXVector; v != NoVector {
		if ev := t.msix.DirectEventFD(int(v)); ev != nil {
			return ev.FD()
		}
	}
	return t.off.call[q].FD()
}

// updateCalls moves the running backend's calls where callFD says.
// Called with mu held.
func (t *PCI) updateCalls() {
	o := t.off
	if o == nil || !o.running {
		return
	}
	for q := range t.qmax {
		if !t.offloaded(q) {
			continue
		}
		if fd := t.callFD(q); fd != o.cur[q] {
			if err := o.dev.SetCall(q, fd); err != nil {
				t.log.Error("virtio: move the backend's interrupt", "device", t.dev.Name(), "queue", q, "err", err)
				continue
			}
			o.cur[q] = fd
		}
	}
}

// startOffload hands the offloaded queues to the backend. Called with mu
// held, while the device is active.
func (t *PCI) startOffload() error {
	o := t.off
	if o == nil || o.running || !t.active || t.broken {
		return nil
	}
	var qs []OffloadQueue
	for q := range t.qmax {
		if !t.offloaded(q) {
			continue
		}
		qu := t.queues[q]
		if qu == nil {
			return fmt.Errorf("queue %d was not enabled by the driver; the kernel backend serves it and needs its rings", q)
		}
		if qu.Packed() {
			return &QueueError{q, errors.New("a packed queue cannot be handed to the kernel backend")}
		}
		fd := t.callFD(q)
		o.cur[q] = fd
		qs = append(qs, OffloadQueue{Index: q, Config: t.s.Queues[q], Base: qu.Save().LastAvail, Kick: o.kick[q].FD(), Call: fd})
	}
	if err := o.dev.StartOffload(t.s.DrvFeatures, qs); err != nil {
		return fmt.Errorf("start the backend: %w", err)
	}
	o.running = true
	// Buffers the driver made available before the backend ran.
	for _, q := range qs {
		o.kick[q.Index].Signal()
	}
	return nil
}

// stopOffload stops the backend and, with keep, takes the queues'
// positions back from it. Called with mu held.
func (t *PCI) stopOffload(keep bool) error {
	o := t.off
	if o == nil || !o.running {
		return nil
	}
	o.running = false
	bases, err := o.dev.StopOffload()
	if err != nil {
		return fmt.Errorf("stop the backend: %w", err)
	}
	if !keep {
		return nil
	}
	for q, b := range bases {
		if q < len(t.queues) && t.queues[q] != nil {
			if err := t.queues[q].SetBackendPosition(b); err != nil {
				return err
			}
		}
	}
	return nil
}

// closeOffload closes the eventfds (the backend is stopped).
func (t *PCI) closeOffload() {
	if t.off == nil {
		return
	}
	for q := range t.qmax {
		if t.off.kick[q] != nil {
			t.off.kick[q].Close()
			t.off.call[q].Close()
		}
	}
}
