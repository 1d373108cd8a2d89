// Package routes owns a VM's GSI routing table and the irqfds and
// ioeventfds bound to it.
//
// Both accelerators keep the routing table in the kernel but only accept it
// whole (KVM_SET_GSI_ROUTING, MSHV_SET_MSI_ROUTING), so govmm keeps the
// authoritative copy here: devices allocate GSIs, add, update and remove
// MSI routes as the guest programs them, and Commit hands the whole table
// to the accelerator in one call when something changed. GSIs 0-23 are
// reserved for the IOAPIC pins (as QEMU does), with placeholder routes
// until the chipset mirrors the redirection entries into them.
//
// irqfds and ioeventfds are owned: each assignment is recorded, Close on
// an IRQFD/IOEventFD deassigns it, and Table.Close deassigns everything
// still assigned, so closing a device or the VM leaves nothing behind in
// the kernel.
//
// Ordering rule: an irqfd is only assigned to a GSI whose route has been
// committed. Signals that reach an irqfd before its route exists are lost
// by the kernel, so AssignIRQFD refuses such a GSI instead. Both VFIO
// orderings (QEMU: route, commit, irqfd, set_irqs; Cloud Hypervisor:
// eventfd, set_irqs, route, commit, irqfd) satisfy it; in the second the
// eventfd may already hold signals when the irqfd is assigned, and the
// kernel injects them at assignment.
//
// Resample irqfds (level-triggered sources such as a VFIO INTx line or a
// virtio device's level interrupt) take two paths. On an IOAPIC pin (GSI
// 0-23) govmm serves them itself, because its IOAPIC is in userspace (the
// split irqchip; KVM resamples only with its in-kernel IOAPIC): a goroutine
// waits on the trigger eventfd and asserts the pin's resample input, and
// the IOAPIC's EOI path (KVM_EXIT_IOAPIC_EOI, MSHV's APIC-EOI message)
// deasserts it and signals the resample eventfd, which is what KVM's
// in-kernel resampler does and what QEMU does with a split irqchip. This
// needs the IOAPIC (SetPinController; the chipset does it) and works the
// same on every accelerator. As with KVM's resampler, the guest must
// program the pin level-triggered (an edge pin has no EOI to resample on),
// and only the IOAPIC sees the input (a guest on the PIC does not). On an
// MSI GSI the irqfd goes to the
// accelerator with its resample eventfd: the MSHV backend serves
// level-triggered MSI routes (data bit 15) from the hypervisor's EOI
// message, in userspace as for the pins (the kernel's own resampler
// matches the EOI'd vector against the GSI number and cannot be used);
// KVM cannot, and says so. On a GSI with an irqchip route (SetIrqchip:
// arm64, where a reserved GSI routes to a vGIC SPI and there is no
// IOAPIC) the irqfd goes to the accelerator with its resample eventfd,
// and KVM's own resampler serves it.
package routes

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"govmm/accel"
)

// NumReserved is the number of GSIs reserved for IOAPIC pins.
const NumReserved = 24

// MaxGSI bounds the table (KVM's KVM_MAX_IRQ_ROUTES is 4096).
const MaxGSI = 4096

// Accel is what the table needs of the VM's accelerator. Every accel.VM
// has it; so does the arm64 KVM backend (accel/kvmarm), which is not an
// accel.VM.
type Accel interface {
	SetGSIRouting(routes []accel.Route) error
	AssignIRQFD(f accel.IRQFD) error
	DeassignIRQFD(f accel.IRQFD) error
	AssignIOEventFD(e accel.IOEventFD) error
	DeassignIOEventFD(e accel.IOEventFD) error
}

// Table is one VM's GSI routing table.
type Table struct {
	vm  Accel
	log *slog.Logger

	mu        sync.Mutex
	routes    map[uint32]accel.Route // the table as govmm wants it
	committed map[uint32]accel.Route // the table the accelerator has
	allocated map[uint32]bool        // GSIs handed out by Allocate
	dirty     bool
	irqfds    map[*IRQFD]struct{}
	ioevents  map[*IOEventFD]struct{}
	closed    bool

	// pins serves resample irqfds on GSIs 0-23 (nil: refused).
	pins PinController
	// pinFDs are the userspace resample irqfds of each pin (under mu).
	pinFDs map[uint32][]*IRQFD
}

// PinController is the userspace IOAPIC as the table sees it: the
// controller resample irqfds on GSIs 0-23 drive (ioapic.IOAPIC implements
// it).
type PinController interface {
	// SetResampleInput drives pin's resample input, shared by every
	// resample irqfd on the pin and OR'ed with the pin's device lines.
	SetResampleInput(pin int, high bool)
	// SetResampler sets fn (nil removes it), called after the guest EOIs
	// pin's level interrupt, once the resample input was deasserted.
	SetResampler(pin int, fn func())
}

// SetPinController makes the table serve resample irqfds on IOAPIC pins
// (GSIs 0-23) in userspace through c. Without one they are refused.
func (t *Table) SetPinController(c PinController) {
	t.mu.Lock()
	t.pins = c
	t.mu.Unlock()
}

// New returns a table for vm with GSIs 0-23 reserved (placeholder MSI
// routes with address and data 0). Nothing is sent to the accelerator
// until Commit.
func New(vm Accel, log *slog.Logger) *Table {
	if log == nil {
		log = slog.Default()
	}
	t := &Table{
		vm: vm, log: log,
		routes:    map[uint32]accel.Route{},
		committed: map[uint32]accel.Route{},
		allocated: map[uint32]bool{},
		irqfds:    map[*IRQFD]struct{}{},
		ioevents:  map[*IOEventFD]struct{}{},
		pinFDs:    map[uint32][]*IRQFD{},
		dirty:     true,
	}
	for gsi := uint32(0); gsi < NumReserved; gsi++ {
		t.routes[gsi] = accel.Route{GSI: gsi, Kind: accel.RouteMSI}
	}
	return t
}

var errClosed = errors.New("GSI routing table is closed")

// Allocate reserves a free GSI above the IOAPIC range for a device's MSI.
func (t *Table) Allocate() (uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, errClosed
	}
	for gsi := uint32(NumReserved); gsi < MaxGSI; gsi++ {
		if !t.allocated[gsi] {
			t.allocated[gsi] = true
			return gsi, nil
		}
	}
	return 0, fmt.Errorf("allocate GSI: all %d GSIs in use", MaxGSI-NumReserved)
}

// Free releases an allocated GSI and drops its route (committed on the next
// Commit). A GSI with an irqfd still assigned cannot be freed.
func (t *Table) Free(gsi uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.allocated[gsi] {
		return fmt.Errorf("free GSI %d: not allocated", gsi)
	}
	for f := range t.irqfds {
		if f.gsi == gsi {
			return fmt.Errorf("free GSI %d: irqfd %d is still assigned to it", gsi, f.ev.FD())
		}
	}
	delete(t.allocated, gsi)
	if _, ok := t.routes[gsi]; ok {
		delete(t.routes, gsi)
		t.dirty = true
	}
	return nil
}

func (t *Table) checkGSI(gsi uint32) error {
	if gsi >= MaxGSI {
		return fmt.Errorf("GSI %d out of range (max %d)", gsi, MaxGSI-1)
	}
	if gsi >= NumReserved && !t.allocated[gsi] {
		return fmt.Errorf("GSI %d was not allocated", gsi)
	}
	return nil
}

// SetMSI adds or updates the MSI route of gsi (an allocated GSI, or an
// IOAPIC pin 0-23) with the address and data the guest programmed.
func (t *Table) SetMSI(gsi uint32, msi accel.MSI) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errClosed
	}
	if err := t.checkGSI(gsi); err != nil {
		return fmt.Errorf("set MSI route: %w", err)
	}
	r := accel.Route{GSI: gsi, Kind: accel.RouteMSI, MSI: msi}
	if old, ok := t.routes[gsi]; !ok || old != r {
		t.routes[gsi] = r
		t.dirty = true
	}
	return nil
}

// SetIrqchip routes gsi, one of the reserved GSIs 0-23, to pin of the
// accelerator's in-kernel irqchip instead of a placeholder: on arm64 (no
// IOAPIC) pin p of the vGIC is the SPI with INTID 32+p, the level line of
// a PCI function's INTx. A resample irqfd on such a GSI goes to the
// accelerator, which resamples it at the guest's EOI (KVM's irqfd
// resampler), not to the userspace pin controller.
func (t *Table) SetIrqchip(gsi, chip, pin uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errClosed
	}
	if gsi >= NumReserved {
		return fmt.Errorf("set irqchip route: GSI %d is not one of the reserved GSIs 0-%d", gsi, NumReserved-1)
	}
	r := accel.Route{GSI: gsi, Kind: accel.RouteIrqchip, Chip: chip, Pin: pin}
	if old := t.routes[gsi]; old != r {
		t.routes[gsi] = r
		t.dirty = true
	}
	return nil
}

// Remove drops gsi's route (a reserved GSI goes back to its placeholder).
func (t *Table) Remove(gsi uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errClosed
	}
	if err := t.checkGSI(gsi); err != nil {
		return fmt.Errorf("remove route: %w", err)
	}
	if gsi < NumReserved {
		t.routes[gsi] = accel.Route{GSI: gsi, Kind: accel.RouteMSI}
		t.dirty = true
		return nil
	}
	if _, ok := t.routes[gsi]; ok {
		delete(t.routes, gsi)
		t.dirty = true
	}
	return nil
}

// Routes returns the table as govmm wants it, sorted by GSI.
func (t *Table) Routes() []accel.Route {
	t.mu.Lock()
	defer t.mu.Unlock()
	return sorted(t.routes)
}

func sorted(m map[uint32]accel.Route) []accel.Route {
	out := make([]accel.Route, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GSI < out[j].GSI })
	return out
}

// Commit sends the whole table to the accelerator in one call, if it
// changed since the last Commit.
func (t *Table) Commit() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errClosed
	}
	if !t.dirty {
		return nil
	}
	rs := sorted(t.routes)
	if err := t.vm.SetGSIRouting(rs); err != nil {
		return fmt.Errorf("commit %d GSI routes: %w", len(rs), err)
	}
	t.committed = make(map[uint32]accel.Route, len(t.routes))
	for k, v := range t.routes {
		t.committed[k] = v
	}
	t.dirty = false
	return nil
}

// IRQFD is an eventfd assigned to a GSI.
type IRQFD struct {
	t        *Table
	ev       *EventFD
	resample *EventFD
	gsi      uint32
	owned    bool // the eventfds were created by NewIRQFD and are closed with it
	once     sync.Once
	// Userspace resample irqfds (IOAPIC pins): wait is a duplicate of
	// ev the server goroutine reads (closing it stops the goroutine
	// without touching the caller's eventfd); done closes when it ended.
	wait *EventFD
	done chan struct{}
}

// InUserspace reports whether govmm serves the irqfd itself (a resample
// irqfd on an IOAPIC pin) rather than the accelerator.
func (f *IRQFD) InUserspace() bool { return f.wait != nil }

// GSI is the GSI the irqfd injects.
func (f *IRQFD) GSI() uint32 { return f.gsi }

// EventFD is the eventfd that injects when signalled.
func (f *IRQFD) EventFD() *EventFD { return f.ev }

// Resample is the resample eventfd (nil for edge irqfds): the accelerator
// (MSI GSIs) or govmm's IOAPIC (pins 0-23) signals it when the guest EOIs
// the level-triggered interrupt; the owner then signals the irqfd again if
// its line is still asserted.
func (f *IRQFD) Resample() *EventFD { return f.resample }

// Signal injects the GSI's route once.
func (f *IRQFD) Signal() error { return f.ev.Signal() }

func (f *IRQFD) accelIRQFD() accel.IRQFD {
	a := accel.IRQFD{FD: f.ev.FD(), GSI: f.gsi, ResampleFD: -1}
	if f.resample != nil {
		a.ResampleFD = f.resample.FD()
	}
	return a
}

// AssignIRQFD binds ev to gsi, whose route must already be committed (see
// the package comment). With resample non-nil the irqfd is level-triggered:
// a signal on ev asserts the interrupt, the guest's EOI deasserts it and
// signals resample, and the owner signals ev again if it still needs
// service. On an IOAPIC pin (GSI 0-23) govmm serves it (see the package
// comment) whatever the guest programmed; on a GSI with an irqchip route
// (SetIrqchip) the accelerator does; on an MSI GSI the committed route
// must be a level-triggered MSI (data bit 15) and the accelerator must
// resample (the MSHV backend does, from the EOI exit; KVM refuses with an
// error wrapping accel.ErrNotSupported). The caller keeps ownership of the eventfds;
// IRQFD.Close (or Table.Close) deassigns.
func (t *Table) AssignIRQFD(ev *EventFD, gsi uint32, resample *EventFD) (*IRQFD, error) {
	f := &IRQFD{t: t, ev: ev, resample: resample, gsi: gsi}
	if err := t.assign(f); err != nil {
		return nil, err
	}
	return f, nil
}

// NewIRQFD creates the eventfd (and, with resample, the resample eventfd)
// and assigns it to gsi; IRQFD.Close also closes the eventfds.
func (t *Table) NewIRQFD(gsi uint32, resample bool) (*IRQFD, error) {
	ev, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	f := &IRQFD{t: t, ev: ev, gsi: gsi, owned: true}
	if resample {
		if f.resample, err = NewEventFD(); err != nil {
			ev.Close()
			return nil, err
		}
	}
	if err := t.assign(f); err != nil {
		f.closeFDs()
		return nil, err
	}
	return f, nil
}

func (t *Table) assign(f *IRQFD) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errClosed
	}
	for g := range t.irqfds {
		if g.ev == f.ev {
			return fmt.Errorf("assign irqfd %d to GSI %d: the eventfd is already assigned (to GSI %d)", f.ev.FD(), f.gsi, g.gsi)
		}
	}
	r, ok := t.committed[f.gsi]
	chip := t.routes[f.gsi].Kind == accel.RouteIrqchip
	if f.resample != nil && f.gsi < NumReserved && !chip {
		return t.assignPin(f)
	}
	if chip && (!ok || r != t.routes[f.gsi]) {
		w := t.routes[f.gsi]
		return fmt.Errorf("assign irqfd %d to GSI %d: its route to irqchip %d pin %d is not committed (commit the route first: signals before it would be lost)", f.ev.FD(), f.gsi, w.Chip, w.Pin)
	}
	if !ok {
		return fmt.Errorf("assign irqfd %d to GSI %d: the GSI has no committed route (commit the route first: signals before it would be lost)", f.ev.FD(), f.gsi)
	}
	// A committed irqchip route is a level line the accelerator
	// resamples itself.
	if f.resample != nil && !chip && (r.Kind != accel.RouteMSI || r.MSI.Data&(1<<15) == 0) {
		return fmt.Errorf("assign resample irqfd %d to GSI %d: the committed route (data %#x) is not level-triggered", f.ev.FD(), f.gsi, r.MSI.Data)
	}
	if err := t.vm.AssignIRQFD(f.accelIRQFD()); err != nil {
		return fmt.Errorf("assign irqfd %d to GSI %d: %w", f.ev.FD(), f.gsi, err)
	}
	t.irqfds[f] = struct{}{}
	return nil
}

// assignPin serves a resample irqfd on IOAPIC pin f.gsi in userspace.
// Called with t.mu held.
func (t *Table) assignPin(f *IRQFD) error {
	if t.pins == nil {
		return fmt.Errorf("assign resample irqfd %d to IOAPIC pin %d: the table has no userspace IOAPIC to serve it (SetPinController)", f.ev.FD(), f.gsi)
	}
	w, err := f.ev.dup()
	if err != nil {
		return fmt.Errorf("assign resample irqfd %d to IOAPIC pin %d: %w", f.ev.FD(), f.gsi, err)
	}
	f.wait, f.done = w, make(chan struct{})
	pin, ctl := int(f.gsi), t.pins
	if len(t.pinFDs[f.gsi]) == 0 {
		ctl.SetResampler(pin, func() { t.resampled(f.gsi) })
	}
	t.pinFDs[f.gsi] = append(t.pinFDs[f.gsi], f)
	t.irqfds[f] = struct{}{}
	go func() {
		defer close(f.done)
		for {
			n, err := w.Wait()
			if err != nil {
				return
			}
			if n > 0 {
				ctl.SetResampleInput(pin, true)
			}
		}
	}()
	return nil
}

// resampled signals the resample eventfd of every irqfd on pin after the
// guest's EOI (the IOAPIC already deasserted the pin's resample input).
func (t *Table) resampled(pin uint32) {
	t.mu.Lock()
	fs := append([]*IRQFD(nil), t.pinFDs[pin]...)
	t.mu.Unlock()
	for _, f := range fs {
		if err := f.resample.Signal(); err != nil {
			t.log.Error("routes: signal resample eventfd", "pin", pin, "err", err)
		}
	}
}

// unassignPin stops serving f. Called with t.mu held.
func (t *Table) unassignPin(f *IRQFD) {
	f.wait.Close()
	<-f.done
	fs := t.pinFDs[f.gsi]
	for i, g := range fs {
		if g == f {
			fs = append(fs[:i:i], fs[i+1:]...)
			break
		}
	}
	if len(fs) == 0 {
		delete(t.pinFDs, f.gsi)
		// As KVM when the last resampler of a GSI goes: the input
		// drops.
		t.pins.SetResampler(int(f.gsi), nil)
		t.pins.SetResampleInput(int(f.gsi), false)
	} else {
		t.pinFDs[f.gsi] = fs
	}
}

func (f *IRQFD) closeFDs() {
	if f.owned {
		f.ev.Close()
		if f.resample != nil {
			f.resample.Close()
		}
	}
}

// Close deassigns the irqfd (and closes its eventfds if NewIRQFD made
// them). It is idempotent.
func (f *IRQFD) Close() error {
	var err error
	f.once.Do(func() {
		t := f.t
		t.mu.Lock()
		if _, ok := t.irqfds[f]; ok {
			delete(t.irqfds, f)
			if f.wait != nil {
				t.unassignPin(f)
			} else if e := t.vm.DeassignIRQFD(f.accelIRQFD()); e != nil {
				err = fmt.Errorf("deassign irqfd %d from GSI %d: %w", f.ev.FD(), f.gsi, e)
			}
		}
		t.mu.Unlock()
		f.closeFDs()
	})
	return err
}

// IOEventFD is an eventfd the accelerator signals on a guest write.
type IOEventFD struct {
	t     *Table
	ev    *EventFD
	e     accel.IOEventFD
	owned bool
	once  sync.Once
}

// EventFD is the eventfd signalled on each matching write.
func (e *IOEventFD) EventFD() *EventFD { return e.ev }

// Spec is what was assigned.
func (e *IOEventFD) Spec() accel.IOEventFD { return e.e }

// AssignIOEventFD makes a write of length bytes (0: any length) to addr
// (an MMIO GPA, or a port when pio) signal ev instead of exiting to
// userspace; with match non-nil only writes of *match do. Port-I/O
// ioeventfds do not exist on MSHV: the error then wraps
// accel.ErrNotSupported and says to use an MMIO doorbell.
func (t *Table) AssignIOEventFD(ev *EventFD, addr uint64, length int, pio bool, match *uint64) (*IOEventFD, error) {
	switch length {
	case 0, 1, 2, 4, 8:
	default:
		return nil, fmt.Errorf("assign ioeventfd at %#x: length %d is not 0, 1, 2, 4 or 8", addr, length)
	}
	if pio && addr > 0xffff {
		return nil, fmt.Errorf("assign ioeventfd: port %#x out of range", addr)
	}
	spec := accel.IOEventFD{FD: ev.FD(), Addr: addr, Len: length, PIO: pio}
	if match != nil {
		spec.DataMatch, spec.Data = true, *match
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errClosed
	}
	if err := t.vm.AssignIOEventFD(spec); err != nil {
		if pio && errors.Is(err, accel.ErrNotSupported) {
			return nil, fmt.Errorf("assign ioeventfd at port %#x: this accelerator has no port-I/O ioeventfds (MSHV doorbells are MMIO only); use an MMIO doorbell: %w", addr, err)
		}
		what := "MMIO address"
		if pio {
			what = "port"
		}
		return nil, fmt.Errorf("assign ioeventfd at %s %#x (len %d): %w", what, addr, length, err)
	}
	e := &IOEventFD{t: t, ev: ev, e: spec}
	t.ioevents[e] = struct{}{}
	return e, nil
}

// NewIOEventFD creates the eventfd and assigns it; Close closes it too.
func (t *Table) NewIOEventFD(addr uint64, length int, pio bool, match *uint64) (*IOEventFD, error) {
	ev, err := NewEventFD()
	if err != nil {
		return nil, err
	}
	e, err := t.AssignIOEventFD(ev, addr, length, pio, match)
	if err != nil {
		ev.Close()
		return nil, err
	}
	e.owned = true
	return e, nil
}

// Close deassigns the ioeventfd (idempotent).
func (e *IOEventFD) Close() error {
	var err error
	e.once.Do(func() {
		t := e.t
		t.mu.Lock()
		if _, ok := t.ioevents[e]; ok {
			delete(t.ioevents, e)
			if x := t.vm.DeassignIOEventFD(e.e); x != nil {
				err = fmt.Errorf("deassign ioeventfd at %#x: %w", e.e.Addr, x)
			}
		}
		t.mu.Unlock()
		if e.owned {
			e.ev.Close()
		}
	})
	return err
}

// Assigned reports how many irqfds and ioeventfds are currently assigned.
func (t *Table) Assigned() (irqfds, ioeventfds int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.irqfds), len(t.ioevents)
}

// Close deassigns every irqfd and ioeventfd still assigned and refuses
// further use. It does not reset the accelerator's routing table (the VM is
// going away or the device's routes were already removed).
func (t *Table) Close() error {
	t.mu.Lock()
	fs := make([]*IRQFD, 0, len(t.irqfds))
	for f := range t.irqfds {
		fs = append(fs, f)
	}
	es := make([]*IOEventFD, 0, len(t.ioevents))
	for e := range t.ioevents {
		es = append(es, e)
	}
	t.mu.Unlock()
	var errs []error
	for _, f := range fs {
		errs = append(errs, f.Close())
	}
	for _, e := range es {
		errs = append(errs, e.Close())
	}
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return errors.Join(errs...)
}

// State is the table's saved state: the routes and the allocated GSIs.
// irqfds and ioeventfds are not part of it; the devices that own them
// assign them again after restore.
type State struct {
	Routes    []accel.Route `json:"routes"`
	Allocated []uint32      `json:"allocated"`
}

// Save returns the table's state.
func (t *Table) Save() State {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := State{Routes: sorted(t.routes)}
	for g := range t.allocated {
		s.Allocated = append(s.Allocated, g)
	}
	sort.Slice(s.Allocated, func(i, j int) bool { return s.Allocated[i] < s.Allocated[j] })
	return s
}

// Restore replaces the table with a saved one; the next Commit sends it.
func (t *Table) Restore(s State) error {
	alloc := map[uint32]bool{}
	for _, g := range s.Allocated {
		if g < NumReserved || g >= MaxGSI {
			return fmt.Errorf("routes restore: allocated GSI %d out of range", g)
		}
		alloc[g] = true
	}
	routes := map[uint32]accel.Route{}
	for _, r := range s.Routes {
		if r.GSI >= MaxGSI || (r.GSI >= NumReserved && !alloc[r.GSI]) {
			return fmt.Errorf("routes restore: route for GSI %d, which is not allocated", r.GSI)
		}
		if r.Kind != accel.RouteMSI {
			return fmt.Errorf("routes restore: GSI %d: only MSI routes are supported", r.GSI)
		}
		if _, dup := routes[r.GSI]; dup {
			return fmt.Errorf("routes restore: GSI %d routed twice", r.GSI)
		}
		routes[r.GSI] = r
	}
	for g := uint32(0); g < NumReserved; g++ {
		if _, ok := routes[g]; !ok {
			routes[g] = accel.Route{GSI: g, Kind: accel.RouteMSI}
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.irqfds) > 0 {
		return fmt.Errorf("routes restore: %d irqfds still assigned", len(t.irqfds))
	}
	t.routes, t.allocated, t.dirty = routes, alloc, true
	return nil
}
