package vfio

import (
	"encoding/binary"
	"fmt"

	"govmm/accel"
	"govmm/vfio/abi"
)

// msiState is the device's MSI capability as govmm presents it: address,
// data, 1-32 vectors as the device offers, and, when the device has
// per-vector masking, the mask bits and pending bits registers. Each
// enabled vector is one of vectors (a GSI with an MSI route, an eventfd
// VFIO signals, and an irqfd while the vector is unmasked), so a masked
// MSI vector behaves as a masked MSI-X vector does: the device's messages
// wait in its eventfd, a read of the pending bits drains them into the
// vector's pending bit, and the unmask delivers what was pending once.
//
// The device's own mask bits are left alone (see msiUpdate).
type msiState struct {
	cap     int // offset in the function's configuration space
	is64    bool
	pvm     bool // per-vector masking: mask and pending bits registers
	maxLog2 int  // multiple message capable
	on      bool
	n       int
	msg     accel.MSI
	mask    uint32 // the guest's mask bits
	vectors
}

// Register offsets in the MSI capability (PCI Local Bus 3.0, 6.8.1): the
// data register, and the mask and pending bits follow the address, which
// is 4 or 8 bytes.
func (m *msiState) dataOff() int {
	if m.is64 {
		return 0x0c
	}
	return 0x08
}
func (m *msiState) maskOff() int    { return m.dataOff() + 4 }
func (m *msiState) pendingOff() int { return m.dataOff() + 8 }

// size is the capability's length, its header included.
func (m *msiState) size() int {
	if m.pvm {
		return m.pendingOff() + 4
	}
	return m.dataOff() + 2
}

// masked reports whether the guest masked vector v.
func (m *msiState) masked(v int) bool { return m.pvm && m.mask>>v&1 != 0 }

// addMSI adds an emulated MSI capability with the device's multiple
// message capability, address width and per-vector masking.
func (p *PCI) addMSI(cfg []byte, off int) error {
	le := binary.LittleEndian
	ctl := le.Uint16(cfg[off+2:])
	m := &msiState{is64: ctl&msiCtl64 != 0, pvm: ctl&msiCtlPVM != 0, maxLog2: int(ctl>>1) & 7}
	if m.maxLog2 > 5 {
		m.maxLog2 = 5
	}
	n := m.size() - 2
	body := make([]byte, n)
	wm := make([]byte, n)
	le.PutUint16(body, uint16(m.maxLog2)<<1|ctl&(msiCtl64|msiCtlPVM))
	le.PutUint16(wm, msiCtlEnable|7<<4)
	le.PutUint32(wm[2:], 0xfffffffc)
	if m.is64 {
		le.PutUint32(wm[6:], 0xffffffff)
	}
	le.PutUint16(wm[m.dataOff()-2:], 0xffff)
	if m.pvm {
		// A mask bit for each vector the function is capable of; the
		// pending bits are read-only (onRead fills them in).
		le.PutUint32(wm[m.maskOff()-2:], uint32(uint64(1)<<(1<<m.maxLog2)-1))
	}
	at, err := p.fn.AddCapability(capMSI, body, wm)
	if err != nil {
		return fmt.Errorf("vfio device %s: MSI capability: %w", p.dev.Name(), err)
	}
	m.cap = at
	m.vectors = newVectors("MSI", 1<<m.maxLog2, p.cfg.Router, p.log)
	p.msi = m
	return nil
}

// msiUpdate acts on the guest's MSI capability. Called with mu held.
//
// The guest's mask bits never reach the device. VFIO would pass them
// (vfio_pci_config.c's init_pci_cap_msi_perm gives the mask and pending
// registers NO_VIRT, ALL_WRITE: reads and writes go to the device), but
// they are the host kernel's: the MSI core caches the mask
// (desc->pci.msi_mask) and rewrites the whole register from that cache
// whenever it masks or unmasks a vector (pci_msi_update_mask), which
// vfio_msi_set_vector_signal causes on every VFIO_DEVICE_SET_IRQS
// (free_irq, request_irq), so a mask written behind it would be undone
// or would leave the host's IRQ masked while its kernel thinks it is
// not. VFIO itself offers no mask action for MSI (vfio_pci_set_irqs_ioctl
// accepts only TRIGGER for the MSI and MSI-X indexes). So the device's
// vectors stay unmasked and a masked vector is unbound from its irqfd,
// as for MSI-X.
func (p *PCI) msiUpdate() {
	m := p.msi
	var b [24]byte
	p.fn.PeekConfig(m.cap, b[:m.size()])
	le := binary.LittleEndian
	ctl := le.Uint16(b[2:])
	on := ctl&msiCtlEnable != 0
	mme := int(ctl>>4) & 7
	if mme > m.maxLog2 {
		mme = m.maxLog2
	}
	msg := accel.MSI{AddressLo: le.Uint32(b[4:]), Data: uint32(le.Uint16(b[m.dataOff():]))}
	if m.is64 {
		msg.AddressHi = le.Uint32(b[8:])
	}
	if m.pvm {
		m.mask = le.Uint32(b[m.maskOff():])
	}
	n := 1 << mme
	switch {
	case !on && m.on:
		p.msiDisable()
	case on && m.on && n != m.n:
		p.msiDisable()
		p.msiEnable(n, msg)
	case on && !m.on:
		p.msiEnable(n, msg)
	case on && msg != m.msg:
		m.msg = msg
		if err := p.msiRoute(); err != nil {
			p.log.Error("vfio: the guest changed its MSI address or data; rerouting failed", "err", err)
		}
	}
	if m.on {
		for v := 0; v < m.n; v++ {
			p.msiVector(v)
		}
	}
}

// msiVector binds vector v when it may fire and unbinds it when the
// guest masked it. Called with mu held.
func (p *PCI) msiVector(v int) {
	m := p.msi
	if m.masked(v) {
		m.unbind(v)
		return
	}
	if !m.bound(v) {
		if err := m.bind(v); err != nil {
			p.log.Error("vfio: the guest unmasked an MSI vector; assigning its irqfd failed", "vector", v, "err", err)
		}
	}
}

// vectorMSI is vector i's message: multiple-message MSI puts the vector
// number in the low bits of the data.
func (m *msiState) vectorMSI(i int) accel.MSI {
	msg := m.msg
	msg.Data = msg.Data&^uint32(m.n-1) | uint32(i)
	return msg
}

// msiRoute sets the route of every enabled vector, masked or not, and
// commits.
func (p *PCI) msiRoute() error {
	m := p.msi
	for i := 0; i < m.n; i++ {
		if err := p.cfg.Router.SetMSI(m.gsis[i], m.vectorMSI(i)); err != nil {
			return err
		}
	}
	return p.cfg.Router.Commit()
}

// msiEnable wires n vectors in the configured order; a vector the guest
// masked gets its route but no irqfd. Called with mu held.
func (p *PCI) msiEnable(n int, msg accel.MSI) {
	m := p.msi
	if p.msix != nil && p.msix.on {
		p.log.Error("vfio: the guest enabled MSI while MSI-X is on; MSI stays off", "vectors", n)
		return
	}
	if err := m.alloc(n); err != nil {
		p.log.Error("vfio: the guest enabled MSI; no GSI or eventfd for it", "vectors", n, "err", err)
		return
	}
	m.n, m.msg = n, msg
	// VFIO has one interrupt type on at a time: INTx goes off first.
	p.intxDisable()
	fds := m.fds(n)
	fail := func(what string, err error) {
		p.log.Error("vfio: the guest enabled MSI; "+what+" failed", "vectors", n, "order", p.cfg.Order.String(), "err", err)
		p.msiTeardown()
	}
	if p.cfg.Order == OrderIRQsFirst {
		if err := p.dev.SetIRQEventFDs(abi.PCIMSIIRQ, fds); err != nil {
			fail("VFIO_DEVICE_SET_IRQS", err)
			return
		}
	}
	if err := p.msiRoute(); err != nil {
		fail("routing", err)
		return
	}
	for i := 0; i < n; i++ {
		if m.masked(i) {
			continue
		}
		if err := m.bind(i); err != nil {
			fail("assigning the irqfd", err)
			return
		}
	}
	if p.cfg.Order == OrderRouteFirst {
		if err := p.dev.SetIRQEventFDs(abi.PCIMSIIRQ, fds); err != nil {
			fail("VFIO_DEVICE_SET_IRQS", err)
			return
		}
	}
	m.on = true
	p.log.Debug("vfio: MSI enabled", "vectors", n, "order", p.cfg.Order.String(), "gsi0", m.gsis[0], "mask", m.mask)
}

// msiDisable turns the device's MSI off and unbinds the irqfds. Called
// with mu held.
func (p *PCI) msiDisable() {
	if err := p.dev.DisableIRQs(abi.PCIMSIIRQ); err != nil {
		p.log.Error("vfio: the guest disabled MSI; VFIO refused", "err", err)
	}
	p.msiTeardown()
	if p.intx != nil && !p.closed {
		if err := p.intxEnable(); err != nil {
			p.log.Error("vfio: the guest disabled MSI; INTx could not be turned back on", "err", err)
		}
	}
}

func (p *PCI) msiTeardown() {
	m := p.msi
	m.unbindAll()
	m.on = false
	// Signals left in the eventfds, and what was pending, belong to the
	// old setting.
	m.drop()
}

// onRead runs before every guest configuration read: a read of the MSI
// pending bits gets them as they are now. A vector is pending when it is
// enabled, cannot fire (masked) and the device sent a message since it
// could last fire; the read drains its eventfd into the bit.
func (p *PCI) onRead(off, size int) {
	m := p.msi
	if m == nil || !m.pvm || !overlaps(off, size, m.cap+m.pendingOff(), 4) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var bits uint32
	if m.on && !p.closed {
		for v := 0; v < m.n; v++ {
			if !m.bound(v) && m.pendingBit(v) {
				bits |= 1 << v
			}
		}
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], bits)
	p.fn.StoreConfig(m.cap+m.pendingOff(), b[:])
}
