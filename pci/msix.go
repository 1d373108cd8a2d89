package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"govmm/accel"
	"govmm/irq/routes"
)

// MSI-X (PCI Local Bus 3.0 §6.8.2): a capability in configuration space,
// a vector table and a pending-bit array (PBA) in a memory BAR.
const (
	CapIDMSIX = 0x11

	// msixCapLen is the capability after its ID and next pointer:
	// message control (2), table offset/BIR (4), PBA offset/BIR (4).
	msixCapLen = 10

	msixCtlEnable   = 1 << 15
	msixCtlFuncMask = 1 << 14

	// MSIXEntrySize is one vector table entry: message address low and
	// high, message data, vector control.
	MSIXEntrySize = 16
	// MaxMSIXVectors is the architectural limit (table size field + 1).
	MaxMSIXVectors = 2048

	entryAddrLo = 0
	entryAddrHi = 4
	entryData   = 8
	entryCtl    = 12
	entryMasked = 1 << 0
)

// MSIRouter is what MSI-X needs of the VM's GSI routing table
// (*routes.Table): a GSI per vector, its MSI route, and an irqfd bound to
// it so a device raises the vector by writing an eventfd, with no VMM
// thread between the device and the accelerator.
type MSIRouter interface {
	Allocate() (uint32, error)
	SetMSI(gsi uint32, msi accel.MSI) error
	Commit() error
	AssignIRQFD(ev *routes.EventFD, gsi uint32, resample *routes.EventFD) (*routes.IRQFD, error)
}

// MSIXConfig places an MSI-X capability's structures.
type MSIXConfig struct {
	// Vectors is the table size, 1..2048.
	Vectors int
	// BAR is the memory BAR holding the table and the PBA; TableOffset
	// and PBAOffset are their offsets in it (8-byte aligned). The
	// device's BAR handler forwards accesses to Table and PBA.
	BAR                    int
	TableOffset, PBAOffset uint32
	Router                 MSIRouter
	Log                    *slog.Logger
}

type msixVector struct {
	gsi   uint32
	ev    *routes.EventFD
	irqfd *routes.IRQFD
	// routed is the MSI the committed route carries (valid when irqfd
	// is assigned).
	routed accel.MSI
}

// MSIX is one function's MSI-X state: the capability's control bits (in
// the function's configuration space), the vector table, the pending bits
// and one GSI with an irqfd per vector.
//
// A vector's route is committed and its irqfd assigned when the guest
// first lets it fire (MSI-X enabled, function and vector unmasked), and
// rerouted whenever the guest changes its address or data while it may
// fire. Masking is decided here: Trigger signals the vector's irqfd only
// when it may fire and otherwise sets its pending bit, which unmasking
// delivers. It is safe for concurrent use.
type MSIX struct {
	fn     *Function
	cap    int
	cfg    MSIXConfig
	router MSIRouter
	log    *slog.Logger

	mu      sync.Mutex
	table   []byte
	pending []uint64
	vec     []msixVector
	// enabled and funcMask mirror the message control register.
	enabled, funcMask bool
	closed            bool
	// notify is SetNotify's function.
	notify func()
}

// NewMSIX adds the MSI-X capability to f (before f is added to a Root),
// allocates a GSI and an eventfd per vector, and chains itself in front
// of f.OnWrite so that it sees the guest's writes to message control. A
// device that sets OnWrite itself must do so before calling NewMSIX.
// Every vector starts masked, as after reset.
func NewMSIX(f *Function, c MSIXConfig) (*MSIX, error) {
	if c.Vectors < 1 || c.Vectors > MaxMSIXVectors {
		return nil, fmt.Errorf("msi-x: %d vectors, want 1..%d", c.Vectors, MaxMSIXVectors)
	}
	if c.BAR < 0 || c.BAR >= NumBARs {
		return nil, fmt.Errorf("msi-x: BAR %d out of range", c.BAR)
	}
	if c.TableOffset%8 != 0 || c.PBAOffset%8 != 0 {
		return nil, fmt.Errorf("msi-x: table offset %#x and PBA offset %#x must be 8-byte aligned", c.TableOffset, c.PBAOffset)
	}
	f.mu.Lock()
	b := f.bars[c.BAR]
	f.mu.Unlock()
	if b.Kind != BARMem32 && b.Kind != BARMem64 {
		return nil, fmt.Errorf("msi-x: BAR %d is not a memory BAR (set it first)", c.BAR)
	}
	tableEnd := uint64(c.TableOffset) + uint64(c.Vectors)*MSIXEntrySize
	pbaEnd := uint64(c.PBAOffset) + uint64(pbaBytes(c.Vectors))
	if tableEnd > b.Size || pbaEnd > b.Size {
		return nil, fmt.Errorf("msi-x: table (..%#x) or PBA (..%#x) outside BAR %d (%#x bytes)", tableEnd, pbaEnd, c.BAR, b.Size)
	}
	if uint64(c.TableOffset) < pbaEnd && uint64(c.PBAOffset) < tableEnd {
		return nil, errors.New("msi-x: table and PBA overlap")
	}
	if c.Router == nil {
		return nil, errors.New("msi-x: no MSI router")
	}
	body := make([]byte, msixCapLen)
	le := binary.LittleEndian
	le.PutUint16(body[0:], uint16(c.Vectors-1))
	le.PutUint32(body[2:], c.TableOffset|uint32(c.BAR))
	le.PutUint32(body[6:], c.PBAOffset|uint32(c.BAR))
	wm := make([]byte, msixCapLen)
	wm[1] = (msixCtlEnable | msixCtlFuncMask) >> 8
	off, err := f.AddCapability(CapIDMSIX, body, wm)
	if err != nil {
		return nil, fmt.Errorf("msi-x: %w", err)
	}
	m := &MSIX{fn: f, cap: off, cfg: c, router: c.Router, log: c.Log,
		table:   make([]byte, c.Vectors*MSIXEntrySize),
		pending: make([]uint64, (c.Vectors+63)/64),
		vec:     make([]msixVector, c.Vectors),
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	for i := range m.vec {
		m.table[i*MSIXEntrySize+entryCtl] = entryMasked
		gsi, err := c.Router.Allocate()
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("msi-x vector %d: %w", i, err)
		}
		ev, err := routes.NewEventFD()
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("msi-x vector %d: %w", i, err)
		}
		m.vec[i] = msixVector{gsi: gsi, ev: ev}
	}
	prev := f.OnWrite
	f.OnWrite = func(o, size int) {
		if o < m.cap+4 && o+size > m.cap+2 {
			m.Sync()
		}
		if prev != nil {
			prev(o, size)
		}
	}
	return m, nil
}

func pbaBytes(n int) int { return (n + 63) / 64 * 8 }

// Vectors is the table size.
func (m *MSIX) Vectors() int { return len(m.vec) }

// CapOffset is the capability's offset in configuration space.
func (m *MSIX) CapOffset() int { return m.cap }

// TableRange and PBARange are where the structures sit in the BAR.
func (m *MSIX) TableRange() (off, size uint64) {
	return uint64(m.cfg.TableOffset), uint64(len(m.table))
}

// PBARange returns the PBA's offset and size in the BAR.
func (m *MSIX) PBARange() (off, size uint64) {
	return uint64(m.cfg.PBAOffset), uint64(pbaBytes(len(m.vec)))
}

// Enabled reports whether the guest enabled MSI-X.
func (m *MSIX) Enabled() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.enabled
}

// Sync reads message control from configuration space and acts on a
// change: enabling MSI-X or clearing the function mask commits the routes
// of the vectors that may now fire and delivers their pending messages.
// The capability's own write hook calls it; a device calls it after
// restoring the function's configuration space.
func (m *MSIX) Sync() {
	var b [2]byte
	m.fn.ReadConfig(m.cap+2, b[:])
	ctl := binary.LittleEndian.Uint16(b[:])
	m.mu.Lock()
	m.enabled, m.funcMask = ctl&msixCtlEnable != 0, ctl&msixCtlFuncMask != 0
	for i := range m.vec {
		m.update(i)
	}
	m.unlockNotify()
}

// SetNotify makes fn run after every change that may let a vector fire
// or stop it firing (message control, a table write, a restore), without
// the MSI-X lock held: a device whose interrupts a kernel backend raises
// directly through a vector's eventfd (DirectEventFD) moves that backend
// to another eventfd while the vector may not fire. Set it before the
// guest runs.
func (m *MSIX) SetNotify(fn func()) {
	m.mu.Lock()
	m.notify = fn
	m.mu.Unlock()
}

// unlockNotify unlocks mu and calls the notify function.
func (m *MSIX) unlockNotify() {
	fn := m.notify
	m.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// DirectEventFD returns vector v's eventfd while v may fire and its irqfd
// is assigned on its current route: a signal on it then reaches the guest
// with no VMM thread in between. Otherwise (MSI-X off, the function or
// the vector masked, no route) it returns nil, and the vector's messages
// must go through Trigger, which keeps them pending while masked.
func (m *MSIX) DirectEventFD(v int) *routes.EventFD {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.vec) || m.closed || !m.mayFire(v) || m.vec[v].irqfd == nil {
		return nil
	}
	msi, _ := m.entry(v)
	if m.vec[v].routed != msi {
		return nil
	}
	return m.vec[v].ev
}

func (m *MSIX) entry(v int) (msi accel.MSI, masked bool) {
	e := m.table[v*MSIXEntrySize:]
	le := binary.LittleEndian
	return accel.MSI{AddressLo: le.Uint32(e[entryAddrLo:]), AddressHi: le.Uint32(e[entryAddrHi:]), Data: le.Uint32(e[entryData:])},
		e[entryCtl]&entryMasked != 0
}

// mayFire reports whether vector v's message may be sent. Called with mu
// held.
func (m *MSIX) mayFire(v int) bool {
	_, masked := m.entry(v)
	return m.enabled && !m.funcMask && !masked
}

// update brings vector v's route and irqfd in line with its entry when it
// may fire, and sends its pending message. Called with mu held.
func (m *MSIX) update(v int) {
	if m.closed || !m.mayFire(v) {
		return
	}
	if err := m.route(v); err != nil {
		m.log.Error("msi-x: cannot route vector; its messages are held pending", "vector", v, "err", err)
		return
	}
	if m.pendingBit(v) {
		m.setPending(v, false)
		if err := m.vec[v].ev.Signal(); err != nil {
			m.log.Error("msi-x: deliver pending message", "vector", v, "err", err)
		}
	}
}

// route commits vector v's MSI route if it changed and assigns its irqfd.
// Called with mu held.
func (m *MSIX) route(v int) error {
	msi, _ := m.entry(v)
	x := &m.vec[v]
	if x.irqfd != nil && x.routed == msi {
		return nil
	}
	if err := m.router.SetMSI(x.gsi, msi); err != nil {
		return err
	}
	if err := m.router.Commit(); err != nil {
		return err
	}
	x.routed = msi
	if x.irqfd == nil {
		f, err := m.router.AssignIRQFD(x.ev, x.gsi, nil)
		if err != nil {
			return err
		}
		x.irqfd = f
	}
	return nil
}

func (m *MSIX) pendingBit(v int) bool { return m.pending[v/64]&(1<<(v%64)) != 0 }

func (m *MSIX) setPending(v int, on bool) {
	if on {
		m.pending[v/64] |= 1 << (v % 64)
	} else {
		m.pending[v/64] &^= 1 << (v % 64)
	}
}

// VectorState describes vector v for govmm info and hang reports: its
// message as the guest programmed it, whether it may fire (MSI-X
// enabled, neither the vector nor the function masked), and whether a
// message waits in its pending bit.
func (m *MSIX) VectorState(v int) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.vec) {
		return fmt.Sprintf("vector %d: none (the table has %d)", v, len(m.vec))
	}
	msi, masked := m.entry(v)
	s := fmt.Sprintf("vector %d: address %#x data %#x", v, uint64(msi.AddressHi)<<32|uint64(msi.AddressLo), msi.Data)
	switch {
	case !m.enabled:
		s += ", MSI-X off"
	case m.funcMask:
		s += ", function masked"
	case masked:
		s += ", masked"
	}
	if m.pendingBit(v) {
		s += ", pending"
	}
	return s
}

// Trigger sends vector v's message: through its irqfd when it may fire,
// else by setting its pending bit. With MSI-X disabled nothing is sent
// (the function would use INTx, which govmm's functions do not have).
func (m *MSIX) Trigger(v int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v < 0 || v >= len(m.vec) {
		return fmt.Errorf("msi-x: vector %d out of range (table has %d)", v, len(m.vec))
	}
	if m.closed || !m.enabled {
		return nil
	}
	if !m.mayFire(v) || m.vec[v].irqfd == nil {
		m.setPending(v, true)
		return nil
	}
	return m.vec[v].ev.Signal()
}

// Table is the vector table as the BAR handler sees it (offsets from the
// table's start).
func (m *MSIX) Table() TableDev { return TableDev{m} }

// PBA is the pending-bit array (offsets from its start).
func (m *MSIX) PBA() PBADev { return PBADev{m} }

// TableDev answers accesses to the vector table. The guest accesses it by
// aligned dwords and qwords; any other access works bytewise, and bytes
// outside the table read as zero and ignore writes.
type TableDev struct{ m *MSIX }

func (d TableDev) Read(off uint64, data []byte) {
	m := d.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range data {
		o := off + uint64(i)
		if o < off || o >= uint64(len(m.table)) {
			data[i] = 0
			continue
		}
		data[i] = m.table[o]
	}
}

func (d TableDev) Write(off uint64, data []byte) {
	m := d.m
	m.mu.Lock()
	defer m.unlockNotify()
	first, last := -1, -1
	for i, b := range data {
		o := off + uint64(i)
		if o < off || o >= uint64(len(m.table)) {
			continue
		}
		switch o % MSIXEntrySize {
		case entryCtl:
			b &= entryMasked // the rest of vector control is reserved
		case entryCtl + 1, entryCtl + 2, entryCtl + 3:
			b = 0
		case entryAddrLo:
			b &^= 3 // the address is dword aligned
		}
		m.table[o] = b
		v := int(o / MSIXEntrySize)
		if first < 0 {
			first = v
		}
		last = v
	}
	for v := first; v >= 0 && v <= last; v++ {
		m.update(v)
	}
}

// PBADev answers accesses to the pending-bit array: read-only, bytes
// outside it read as zero.
type PBADev struct{ m *MSIX }

func (d PBADev) Read(off uint64, data []byte) {
	m := d.m
	m.mu.Lock()
	defer m.mu.Unlock()
	n := uint64(len(m.vec)+7) / 8
	for i := range data {
		o := off + uint64(i)
		if o < off || o >= n {
			data[i] = 0
			continue
		}
		data[i] = byte(m.pending[o/8] >> (8 * (o % 8)))
	}
}

// Write ignores the write: the PBA is read-only.
func (d PBADev) Write(off uint64, data []byte) {}

// MSIXState is the table, the pending bits and each vector's GSI (message
// control lives in the function's configuration space).
type MSIXState struct {
	Table   []byte   `json:"table"`
	Pending []uint64 `json:"pending"`
	GSIs    []uint32 `json:"gsis"`
}

// Save returns the state.
func (m *MSIX) Save() MSIXState {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := MSIXState{Table: append([]byte(nil), m.table...), Pending: append([]uint64(nil), m.pending...)}
	for _, x := range m.vec {
		s.GSIs = append(s.GSIs, x.gsi)
	}
	return s
}

// Restore loads a saved state; the function's configuration space must
// already be restored. The routes of the vectors that may fire are
// committed and their irqfds assigned, and pending messages of such
// vectors are delivered.
func (m *MSIX) Restore(s MSIXState) error {
	if len(s.Table) != len(m.table) || len(s.Pending) != len(m.pending) || len(s.GSIs) != len(m.vec) {
		return fmt.Errorf("msi-x restore: the snapshot has a table of %d bytes, %d pending words and %d GSIs; this function has %d vectors",
			len(s.Table), len(s.Pending), len(s.GSIs), len(m.vec))
	}
	m.mu.Lock()
	for i, x := range m.vec {
		if s.GSIs[i] != x.gsi {
			m.mu.Unlock()
			return fmt.Errorf("msi-x restore: vector %d used GSI %d in the snapshot, %d here (the machine's devices differ)", i, s.GSIs[i], x.gsi)
		}
	}
	copy(m.table, s.Table)
	for i := range m.table {
		switch i % MSIXEntrySize {
		case entryCtl:
			m.table[i] &= entryMasked
		case entryCtl + 1, entryCtl + 2, entryCtl + 3:
			m.table[i] = 0
		}
	}
	copy(m.pending, s.Pending)
	if r := len(m.vec) % 64; r != 0 {
		m.pending[len(m.pending)-1] &= 1<<r - 1
	}
	m.mu.Unlock()
	m.Sync()
	return nil
}

// Close deassigns the irqfds and closes the eventfds. Trigger does
// nothing afterwards.
func (m *MSIX) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var errs []error
	for i := range m.vec {
		x := &m.vec[i]
		if x.irqfd != nil {
			errs = append(errs, x.irqfd.Close())
			x.irqfd = nil
		}
		if x.ev != nil {
			errs = append(errs, x.ev.Close())
		}
	}
	return errors.Join(errs...)
}
