package vfio

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/irq/routes"
	"govmm/pci"
	"govmm/vfio/abi"
)

// MSI-X message control bits and table entry layout (PCI 3.0 §6.8.2).
const (
	msixCtlEnable   = 1 << 15
	msixCtlFuncMask = 1 << 14
	msixEntrySize   = 16
	msixEntryCtl    = 12
	msixMasked      = 1
)

// msixState is the device's MSI-X capability as govmm presents it: the
// vector table lives here (the guest never reaches the device's own,
// which VFIO programs), and each vector has a GSI, an eventfd VFIO
// signals and, while the vector may fire, an MSI route and an irqfd.
//
// A vector that may not fire (masked, function masked) has no irqfd, so
// the device's signals wait in its eventfd. Its pending bit is that
// count: a read of the PBA drains the eventfd of every such vector into
// pending, and the bit reads 1 while either holds something. Unbinding
// keeps the device's own vector unmasked (VFIO owns its table), so the
// device never sees the mask and messages keep coming to the eventfd.
//
// Unmasking delivers what was pending exactly once (msixBind). Both
// kernels, when an irqfd is assigned, inject a count they find in the
// eventfd but leave it there (kvm_irqfd_assign and mshv_irqfd_assign
// poll the eventfd and inject; only the wakeup of a later signal drains
// it), so a count left behind by a bare unbind/bind would be injected a
// second time at the next bind. govmm therefore drains the eventfd
// before binding and again right after, and signals the bound eventfd
// itself when something was pending and the kernel did not already
// inject it.
type msixState struct {
	cap              int
	n                int
	tableBAR, pbaBAR int
	tableOff, pbaOff uint64
	table            []byte
	on, fmask        bool
	gsis             []uint32
	evs              []*routes.EventFD
	irqfds           []*routes.IRQFD
	routed           []accel.MSI
	// pending is, per vector, a message the device sent while the vector
	// could not fire, drained from its eventfd (the PBA bit).
	pending []bool
}

func (m *msixState) tableEnd() uint64 { return m.tableOff + uint64(m.n)*msixEntrySize }
func (m *msixState) pbaEnd() uint64   { return m.pbaOff + uint64((m.n+63)/64*8) }

// addMSIX adds the MSI-X capability with the device's table size and
// table and PBA locations.
func (p *PCI) addMSIX(cfg []byte, off int) error {
	le := binary.LittleEndian
	ctl, tbl, pba := le.Uint16(cfg[off+2:]), le.Uint32(cfg[off+4:]), le.Uint32(cfg[off+8:])
	m := &msixState{n: int(ctl&0x7ff) + 1, tableBAR: int(tbl & 7), tableOff: uint64(tbl &^ 7), pbaBAR: int(pba & 7), pbaOff: uint64(pba &^ 7)}
	for _, x := range []struct {
		bar      int
		from, to uint64
		what     string
	}{{m.tableBAR, m.tableOff, m.tableEnd(), "table"}, {m.pbaBAR, m.pbaOff, m.pbaEnd(), "PBA"}} {
		if x.bar >= pci.NumBARs || p.bars[x.bar].kind == pci.BARNone || p.bars[x.bar].kind == pci.BARIO || x.to > p.bars[x.bar].size {
			return fmt.Errorf("vfio device %s: MSI-X %s (BAR %d, %#x-%#x) is not inside a memory BAR", p.dev.Name(), x.what, x.bar, x.from, x.to)
		}
	}
	m.table = make([]byte, m.n*msixEntrySize)
	for v := 0; v < m.n; v++ {
		m.table[v*msixEntrySize+msixEntryCtl] = msixMasked
	}
	m.irqfds = make([]*routes.IRQFD, m.n)
	m.routed = make([]accel.MSI, m.n)
	m.pending = make([]bool, m.n)
	body := make([]byte, 10)
	le.PutUint16(body, ctl&0x7ff)
	le.PutUint32(body[2:], tbl)
	le.PutUint32(body[6:], pba)
	wm := make([]byte, 10)
	wm[1] = (msixCtlEnable | msixCtlFuncMask) >> 8
	at, err := p.fn.AddCapability(capMSIX, body, wm)
	if err != nil {
		return fmt.Errorf("vfio device %s: MSI-X capability: %w", p.dev.Name(), err)
	}
	m.cap = at
	p.msix = m
	return nil
}

// msixTrapped returns the page-aligned ranges of BAR i that must trap
// (the MSI-X table and PBA pages).
func (p *PCI) msixTrapped(i int) [][2]uint64 {
	m := p.msix
	if m == nil {
		return nil
	}
	pg := uint64(unix.Getpagesize())
	var out [][2]uint64
	if m.tableBAR == i {
		out = append(out, [2]uint64{m.tableOff &^ (pg - 1), (m.tableEnd() + pg - 1) &^ (pg - 1)})
	}
	if m.pbaBAR == i {
		out = append(out, [2]uint64{m.pbaOff &^ (pg - 1), (m.pbaEnd() + pg - 1) &^ (pg - 1)})
	}
	return out
}

// msixControl acts on the guest's message control. Called with mu held.
func (p *PCI) msixControl() {
	m := p.msix
	var b [2]byte
	p.fn.ReadConfig(m.cap+2, b[:])
	ctl := binary.LittleEndian.Uint16(b[:])
	on, fmask := ctl&msixCtlEnable != 0, ctl&msixCtlFuncMask != 0
	switch {
	case on && !m.on:
		m.fmask = fmask
		p.msixEnable()
	case !on && m.on:
		p.msixDisable()
	case on:
		m.fmask = fmask
		for v := 0; v < m.n; v++ {
			p.msixUpdate(v)
		}
	}
}

// msixEnable gives VFIO every vector's eventfd and wires the vectors that
// may fire, in the configured order. Called with mu held.
func (p *PCI) msixEnable() {
	m := p.msix
	if p.msi != nil && p.msi.on {
		p.log.Error("vfio: the guest enabled MSI-X while MSI is on; MSI-X stays off")
		return
	}
	for len(m.gsis) < m.n {
		gsi, err := p.cfg.Router.Allocate()
		if err != nil {
			p.log.Error("vfio: the guest enabled MSI-X; no GSI for it", "vectors", m.n, "err", err)
			return
		}
		ev, err := routes.NewEventFD()
		if err != nil {
			p.log.Error("vfio: the guest enabled MSI-X; no eventfd for it", "vectors", m.n, "err", err)
			return
		}
		m.gsis, m.evs = append(m.gsis, gsi), append(m.evs, ev)
	}
	p.intxDisable()
	fds := make([]int32, m.n)
	for i := range fds {
		fds[i] = int32(m.evs[i].FD())
	}
	m.on = true
	if p.cfg.Order == OrderIRQsFirst {
		if err := p.dev.SetIRQEventFDs(abi.PCIMSIXIRQ, fds); err != nil {
			p.log.Error("vfio: the guest enabled MSI-X; VFIO_DEVICE_SET_IRQS failed", "vectors", m.n, "err", err)
			m.on = false
			return
		}
	}
	for v := 0; v < m.n; v++ {
		p.msixUpdate(v)
	}
	if p.cfg.Order == OrderRouteFirst {
		if err := p.dev.SetIRQEventFDs(abi.PCIMSIXIRQ, fds); err != nil {
			p.log.Error("vfio: the guest enabled MSI-X; VFIO_DEVICE_SET_IRQS failed", "vectors", m.n, "err", err)
			p.msixUnbind()
			m.on = false
			return
		}
	}
	p.log.Debug("vfio: MSI-X enabled", "vectors", m.n, "order", p.cfg.Order.String())
}

// msixDisable turns the device's MSI-X off and INTx back on. Called with
// mu held.
func (p *PCI) msixDisable() {
	m := p.msix
	if err := p.dev.DisableIRQs(abi.PCIMSIXIRQ); err != nil {
		p.log.Error("vfio: the guest disabled MSI-X; VFIO refused", "err", err)
	}
	p.msixUnbind()
	m.on = false
	// Messages that waited belong to the MSI-X setting that ended.
	for _, ev := range m.evs {
		ev.TryRead()
	}
	clear(m.pending)
	if p.intx != nil && !p.closed {
		if err := p.intxEnable(); err != nil {
			p.log.Error("vfio: the guest disabled MSI-X; INTx could not be turned back on", "err", err)
		}
	}
}

func (p *PCI) msixUnbind() {
	m := p.msix
	for v, f := range m.irqfds {
		if f != nil {
			if err := f.Close(); err != nil {
				p.log.Error("vfio: deassign MSI-X irqfd", "vector", v, "err", err)
			}
			m.irqfds[v] = nil
		}
	}
}

func (m *msixState) entry(v int) (accel.MSI, bool) {
	e := m.table[v*msixEntrySize:]
	le := binary.LittleEndian
	return accel.MSI{AddressLo: le.Uint32(e), AddressHi: le.Uint32(e[4:]), Data: le.Uint32(e[8:])}, e[msixEntryCtl]&msixMasked != 0
}

// msixUpdate binds vector v (route, commit, irqfd) when it may fire and
// unbinds it when it may not. Called with mu held.
func (p *PCI) msixUpdate(v int) {
	m := p.msix
	if v >= len(m.gsis) {
		return
	}
	msg, masked := m.entry(v)
	if !m.on || m.fmask || masked {
		if f := m.irqfds[v]; f != nil {
			if err := f.Close(); err != nil {
				p.log.Error("vfio: the guest masked an MSI-X vector; deassigning its irqfd failed", "vector", v, "err", err)
			}
			m.irqfds[v] = nil
		}
		return
	}
	if m.irqfds[v] == nil || m.routed[v] != msg {
		err := p.cfg.Router.SetMSI(m.gsis[v], msg)
		if err == nil {
			err = p.cfg.Router.Commit()
		}
		if err != nil {
			p.log.Error("vfio: the guest programmed an MSI-X vector; routing it failed", "vector", v, "err", err)
			return
		}
		m.routed[v] = msg
	}
	if m.irqfds[v] == nil {
		p.msixBind(v)
	}
}

// msixBind assigns vector v's irqfd (its route is committed) and delivers
// its pending message, if any, exactly once. Called with mu held.
func (p *PCI) msixBind(v int) {
	m := p.msix
	ev := m.evs[v]
	// What the device sent while the vector could not fire is one pending
	// message, however many signals it was.
	if n, err := ev.TryRead(); err != nil {
		p.log.Error("vfio: the guest unmasked an MSI-X vector; reading its eventfd failed", "vector", v, "err", err)
	} else if n > 0 {
		m.pending[v] = true
	}
	f, err := p.cfg.Router.AssignIRQFD(ev, m.gsis[v], nil)
	if err != nil {
		p.log.Error("vfio: the guest unmasked an MSI-X vector; assigning its irqfd failed", "vector", v, "err", err)
		return
	}
	m.irqfds[v] = f
	// A count here came between the drain and the assignment: the kernel
	// injected it when it assigned the irqfd and left it in the eventfd
	// (a later signal's wakeup would drain it, but a mask first would
	// carry it to the next bind and inject it again). That injection
	// also delivers the pending message: the two are one under the mask.
	stale, err := ev.TryRead()
	if err != nil {
		p.log.Error("vfio: the guest unmasked an MSI-X vector; reading its eventfd failed", "vector", v, "err", err)
	}
	if m.pending[v] && stale == 0 {
		// The bound irqfd's wakeup drains this signal and injects once.
		if err := ev.Signal(); err != nil {
			p.log.Error("vfio: the guest unmasked an MSI-X vector; delivering its pending message failed", "vector", v, "err", err)
			return
		}
	}
	m.pending[v] = false
}

// msixPBA fills data, read at byte off of the PBA, with the pending bits:
// a vector that cannot fire is pending when its eventfd holds a signal or
// an earlier read drained one. Called with mu held.
func (p *PCI) msixPBA(off uint64, data []byte) {
	m := p.msix
	clear(data)
	if p.closed {
		return
	}
	for i := range data {
		for b := 0; b < 8; b++ {
			v := int(off+uint64(i))*8 + b
			if v >= m.n || v >= len(m.evs) || !m.on || m.irqfds[v] != nil {
				continue
			}
			if n, err := m.evs[v].TryRead(); err != nil {
				p.log.Error("vfio: the guest read the MSI-X PBA; reading a vector's eventfd failed", "vector", v, "err", err)
			} else if n > 0 {
				m.pending[v] = true
			}
			if m.pending[v] {
				data[i] |= 1 << b
			}
		}
	}
}

// msixAccess serves a BAR access that falls in the MSI-X table or PBA;
// it reports whether it did.
func (p *PCI) msixAccess(bar int, off uint64, data []byte, write bool) bool {
	m := p.msix
	if m == nil {
		return false
	}
	n := uint64(len(data))
	if bar == m.pbaBAR && off >= m.pbaOff && off < m.pbaEnd() {
		// The PBA is read-only: writes are ignored.
		if !write {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.msixPBA(off-m.pbaOff, data)
		}
		return true
	}
	if bar != m.tableBAR || off < m.tableOff || off >= m.tableEnd() {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rel := off - m.tableOff
	if !write {
		for i := range data {
			if rel+uint64(i) < uint64(len(m.table)) {
				data[i] = m.table[rel+uint64(i)]
			} else {
				data[i] = 0
			}
		}
		return true
	}
	first, last := -1, -1
	for i := uint64(0); i < n && rel+i < uint64(len(m.table)); i++ {
		o := rel + i
		b := data[i]
		switch o % msixEntrySize {
		case msixEntryCtl:
			b &= msixMasked
		case msixEntryCtl + 1, msixEntryCtl + 2, msixEntryCtl + 3:
			b = 0
		case 0:
			b &^= 3
		}
		m.table[o] = b
		if first < 0 {
			first = int(o / msixEntrySize)
		}
		last = int(o / msixEntrySize)
	}
	if !p.closed {
		for v := first; v >= 0 && v <= last; v++ {
			p.msixUpdate(v)
		}
	}
	return true
}

// msixClose turns MSI-X off and closes the eventfds. Called with mu held.
func (p *PCI) msixClose() {
	m := p.msix
	if m == nil {
		return
	}
	if m.on {
		if err := p.dev.DisableIRQs(abi.PCIMSIXIRQ); err != nil {
			p.log.Error("vfio: disable MSI-X", "err", err)
		}
		p.msixUnbind()
		m.on = false
	}
	for _, ev := range m.evs {
		ev.Close()
	}
}
