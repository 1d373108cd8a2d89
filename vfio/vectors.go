package vfio

import (
	"log/slog"

	"govmm/irq/routes"
)

// vectors are the interrupt vectors of a passed-through MSI or MSI-X
// capability as govmm wires them: each has a GSI, an eventfd VFIO
// signals and, while the vector may fire, an irqfd on the GSI's
// committed MSI route. MSI (with per-vector masking) and MSI-X share
// them, so a masked vector behaves the same under both.
//
// A vector that may not fire (masked) has no irqfd, so the device's
// signals wait in its eventfd. Its pending bit is that count: a read of
// the pending bits drains the eventfd of every such vector into pending,
// and the bit reads 1 while either holds something. The device's own
// vector stays unmasked, so the device never sees the mask and its
// messages keep coming to the eventfd.
//
// Unmasking delivers what was pending exactly once (bind). Both kernels,
// when an irqfd is assigned, inject a count they find in the eventfd but
// leave it there (kvm_irqfd_assign and mshv_irqfd_assign poll the
// eventfd and inject; only the wakeup of a later signal drains it), so a
// count left behind by a bare unbind/bind would be injected a second
// time at the next bind. bind therefore drains the eventfd before
// binding and again right after, and signals the bound eventfd itself
// when something was pending and the kernel did not already inject it.
//
// The methods are called with the PCI's mu held.
type vectors struct {
	what   string // "MSI" or "MSI-X", for the log
	router Router
	log    *slog.Logger
	// gsis and evs grow to the number of vectors the guest enabled;
	// irqfds and pending have one entry for every vector the
	// capability can have.
	gsis   []uint32
	evs    []*routes.EventFD
	irqfds []*routes.IRQFD
	// pending is, per vector, a message the device sent while the vector
	// could not fire, drained from its eventfd (the pending bit).
	pending []bool
}

func newVectors(what string, n int, r Router, log *slog.Logger) vectors {
	return vectors{what: what, router: r, log: log, irqfds: make([]*routes.IRQFD, n), pending: make([]bool, n)}
}

// alloc gives the first n vectors a GSI and an eventfd each (those they
// had before are kept: their routes and eventfds are reused).
func (vs *vectors) alloc(n int) error {
	for len(vs.gsis) < n {
		gsi, err := vs.router.Allocate()
		if err != nil {
			return err
		}
		ev, err := routes.NewEventFD()
		if err != nil {
			return err
		}
		vs.gsis, vs.evs = append(vs.gsis, gsi), append(vs.evs, ev)
	}
	return nil
}

// fds are the eventfds of the first n vectors, for VFIO_DEVICE_SET_IRQS.
func (vs *vectors) fds(n int) []int32 {
	fds := make([]int32, n)
	for i := range fds {
		fds[i] = int32(vs.evs[i].FD())
	}
	return fds
}

// bind assigns vector v's irqfd (its route is committed) and delivers its
// pending message, if any, exactly once.
func (vs *vectors) bind(v int) error {
	ev := vs.evs[v]
	// What the device sent while the vector could not fire is one pending
	// message, however many signals it was.
	if n, err := ev.TryRead(); err != nil {
		vs.log.Error("vfio: the guest unmasked an "+vs.what+" vector; reading its eventfd failed", "vector", v, "err", err)
	} else if n > 0 {
		vs.pending[v] = true
	}
	f, err := vs.router.AssignIRQFD(ev, vs.gsis[v], nil)
	if err != nil {
		return err
	}
	vs.irqfds[v] = f
	// A count here came between the drain and the assignment: the kernel
	// injected it when it assigned the irqfd and left it in the eventfd
	// (a later signal's wakeup would drain it, but a mask first would
	// carry it to the next bind and inject it again). That injection
	// also delivers the pending message: the two are one under the mask.
	stale, err := ev.TryRead()
	if err != nil {
		vs.log.Error("vfio: the guest unmasked an "+vs.what+" vector; reading its eventfd failed", "vector", v, "err", err)
	}
	if vs.pending[v] && stale == 0 {
		// The bound irqfd's wakeup drains this signal and injects once.
		if err := ev.Signal(); err != nil {
			vs.log.Error("vfio: the guest unmasked an "+vs.what+" vector; delivering its pending message failed", "vector", v, "err", err)
			return nil
		}
	}
	vs.pending[v] = false
	return nil
}

// bound reports whether vector v has its irqfd.
func (vs *vectors) bound(v int) bool { return v < len(vs.irqfds) && vs.irqfds[v] != nil }

// unbind deassigns vector v's irqfd, if it has one: the device's messages
// wait in the eventfd from now on.
func (vs *vectors) unbind(v int) {
	if f := vs.irqfds[v]; f != nil {
		if err := f.Close(); err != nil {
			vs.log.Error("vfio: deassigning an "+vs.what+" vector's irqfd failed", "vector", v, "err", err)
		}
		vs.irqfds[v] = nil
	}
}

func (vs *vectors) unbindAll() {
	for v := range vs.irqfds {
		vs.unbind(v)
	}
}

// pendingBit is the pending bit of vector v, which has an eventfd and
// cannot fire: what its eventfd holds is drained into pending.
func (vs *vectors) pendingBit(v int) bool {
	if n, err := vs.evs[v].TryRead(); err != nil {
		vs.log.Error("vfio: the guest read the "+vs.what+" pending bits; reading a vector's eventfd failed", "vector", v, "err", err)
	} else if n > 0 {
		vs.pending[v] = true
	}
	return vs.pending[v]
}

// drop forgets every message that waited: they belong to an interrupt
// setting that ended.
func (vs *vectors) drop() {
	for _, ev := range vs.evs {
		ev.TryRead()
	}
	clear(vs.pending)
}

func (vs *vectors) close() {
	for _, ev := range vs.evs {
		ev.Close()
	}
}
