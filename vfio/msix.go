package vfio

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"govmm/accel"
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
// which VFIO programs), and each vector is one of vectors: a GSI, an
// eventfd VFIO signals and, while the vector may fire (enabled, function
// and vector unmasked), an MSI route and an irqfd. The PBA is the
// vectors' pending bits; see vectors for how a masked vector's messages
// wait and are delivered once.
type msixState struct {
	cap              int
	n                int
	tableBAR, pbaBAR int
	tableOff, pbaOff uint64
	table            []byte
	on, fmask        bool
	vectors
	routed []accel.MSI
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
	m.vectors = newVectors("MSI-X", m.n, p.cfg.Router, p.log)
	m.routed = make([]accel.MSI, m.n)
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
	p.fn.PeekConfig(m.cap+2, b[:])
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
	if err := m.alloc(m.n); err != nil {
		p.log.Error("vfio: the guest enabled MSI-X; no GSI or eventfd for it", "vectors", m.n, "err", err)
		return
	}
	p.intxDisable()
	fds := m.fds(m.n)
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
			m.unbindAll()
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
	m.unbindAll()
	m.on = false
	// Messages that waited belong to the MSI-X setting that ended.
	m.drop()
	if p.intx != nil && !p.closed {
		if err := p.intxEnable(); err != nil {
			p.log.Error("vfio: the guest disabled MSI-X; INTx could not be turned back on", "err", err)
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
		m.unbind(v)
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
		if err := m.bind(v); err != nil {
			p.log.Error("vfio: the guest unmasked an MSI-X vector; assigning its irqfd failed", "vector", v, "err", err)
		}
	}
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
			if m.pendingBit(v) {
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
		m.table[o] = msixSanitize(int(o), data[i])
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

// msixSanitize is byte b as the table keeps it at offset o: the
// message address is dword-aligned, and of the vector control only the
// mask bit is writable.
func msixSanitize(o int, b byte) byte {
	switch o % msixEntrySize {
	case msixEntryCtl:
		b &= msixMasked
	case msixEntryCtl + 1, msixEntryCtl + 2, msixEntryCtl + 3:
		b = 0
	case 0:
		b &^= 3
	}
	return b
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
		m.unbindAll()
		m.on = false
	}
	m.close()
}
