package vfio

import (
	"fmt"

	"govmm/pci"
)

// migrator is a device with VFIO migration (*Device; a fake in tests).
type migrator interface {
	Migratable() bool
	MigrationFlags() uint64
	SaveMigration() ([]byte, error)
	LoadMigration(data []byte) error
	Run() error
}

// MigrationState is a passed-through function's device state in a
// snapshot or a live migration: the device's identity, so that a restore
// refuses another kind of device, the opaque data its driver gave, and
// the interrupt state govmm emulates for the function and keeps outside
// its configuration space (the MSI-X table and pending bits, MSI's
// pending bits). The rest of govmm's side of the function (its
// configuration space: BARs, command register, the MSI and MSI-X
// capabilities' registers, the interrupt line) travels in the PCI bus's
// state.
type MigrationState struct {
	Name     string `json:"name"` // the source's device (informational)
	Vendor   uint16 `json:"vendor"`
	Device   uint16 `json:"device"`
	SubVen   uint16 `json:"subsystem_vendor"`
	SubID    uint16 `json:"subsystem_id"`
	MigFlags uint64 `json:"migration_flags"`
	Data     []byte `json:"data"`
	// PreCopy is how many bytes of the device's data a live migration
	// sent while the guest ran (PRE_COPY), ahead of Data: the receiver
	// writes those first, then Data.
	PreCopy uint64 `json:"pre_copy_bytes,omitempty"`
	// MSIX is govmm's MSI-X of the function (nil: it has none).
	MSIX *MSIXState `json:"msix,omitempty"`
	// MSI is the pending bits of a function whose MSI has per-vector
	// masking (nil: it has none, or nothing was pending).
	MSI *MSIState `json:"msi,omitempty"`
}

// MSIXState is the MSI-X table govmm emulates, as the guest programmed
// it (16 bytes a vector: address, data, vector control with its mask
// bit), and the pending bits of the vectors that could not fire when the
// device stopped (bit v of word v/64). The function mask and the enable
// are in the capability's message control, in the bus's state.
type MSIXState struct {
	Vectors int      `json:"vectors"`
	Table   []byte   `json:"table"`
	Pending []uint64 `json:"pending"`
}

// MSIState is the pending bits of MSI with per-vector masking (the mask
// bits are in the capability, in the bus's state).
type MSIState struct {
	Pending uint32 `json:"pending"`
}

func (p *PCI) identity() (vendor, device, subVen, subID uint16) {
	var b [4]byte
	p.fn.ReadConfig(pci.RegVendorID, b[:])
	vendor, device = uint16(b[0])|uint16(b[1])<<8, uint16(b[2])|uint16(b[3])<<8
	p.fn.ReadConfig(pci.RegSubsysVendor, b[:])
	subVen, subID = uint16(b[0])|uint16(b[1])<<8, uint16(b[2])|uint16(b[3])<<8
	return
}

// Migratable says why the function cannot be snapshotted or migrated, or
// nil when it can: its device must have VFIO migration (STOP_COPY).
func (p *PCI) Migratable() error {
	m, ok := p.dev.(migrator)
	if !ok || !m.Migratable() {
		return fmt.Errorf("vfio device %s has no VFIO migration support (its driver offers no STOP_COPY): its state lives in the hardware", p.Name())
	}
	return nil
}

// SaveMigration stops the device and returns its state with govmm's
// interrupt state of the function. The VM must be paused; Run returns
// the device to RUNNING when it resumes. A device a live migration put
// in PRE_COPY (StartPreCopy) gives here only what it did not give to
// PreCopyData, and PreCopy counts what it gave there.
func (p *PCI) SaveMigration() (MigrationState, error) {
	if err := p.Migratable(); err != nil {
		return MigrationState{}, err
	}
	m := p.dev.(migrator)
	v, d, sv, si := p.identity()
	data, err := m.SaveMigration()
	if err != nil {
		return MigrationState{}, err
	}
	ms := MigrationState{Name: p.Name(), Vendor: v, Device: d, SubVen: sv, SubID: si, MigFlags: m.MigrationFlags(), Data: data}
	p.mu.Lock()
	ms.PreCopy, p.preCopied = p.preCopied, 0
	// The device is stopped: what its eventfds hold now is all it sent.
	p.saveIRQs(&ms)
	p.mu.Unlock()
	return ms, nil
}

// saveIRQs adds the MSI-X table and the MSI and MSI-X pending bits to
// ms. A vector that cannot fire (masked, or MSI-X function masked) is
// pending when its eventfd holds a message or an earlier read of the
// pending bits drained one; a vector that can fire has its irqfd, which
// took every message. Called with mu held.
func (p *PCI) saveIRQs(ms *MigrationState) {
	if x := p.msix; x != nil {
		s := &MSIXState{Vectors: x.n, Table: append([]byte(nil), x.table...), Pending: make([]uint64, (x.n+63)/64)}
		for v := 0; v < x.n && x.on && !p.closed; v++ {
			if v < len(x.evs) && !x.bound(v) && x.pendingBit(v) {
				s.Pending[v/64] |= 1 << (v % 64)
			}
		}
		ms.MSIX = s
	}
	if m := p.msi; m != nil && m.pvm && m.on && !p.closed {
		var bits uint32
		for v := 0; v < m.n; v++ {
			if !m.bound(v) && m.pendingBit(v) {
				bits |= 1 << v
			}
		}
		if bits != 0 {
			ms.MSI = &MSIState{Pending: bits}
		}
	}
}

// checkIRQs refuses saved interrupt state that does not fit the
// function: MSI-X saved for a function without it or with another table
// size, a table or pending bits of the wrong length (a truncated or
// edited section), pending bits of vectors the function does not have,
// and no MSI-X state for a function with MSI-X (a section from a govmm
// that did not carry it: it refused such devices, so the state is not
// one it wrote).
func (p *PCI) checkIRQs(s MigrationState) error {
	name := p.Name()
	switch x := p.msix; {
	case x == nil && s.MSIX != nil:
		return fmt.Errorf("vfio device %s has no MSI-X, the saved device %s had %d vectors", name, s.Name, s.MSIX.Vectors)
	case x != nil && s.MSIX == nil:
		return fmt.Errorf("vfio device %s has MSI-X, and the saved state of %s carries no MSI-X table: it was not saved by a govmm that carries MSI-X", name, s.Name)
	case x != nil:
		t := s.MSIX
		if t.Vectors != x.n {
			return fmt.Errorf("vfio device %s has %d MSI-X vectors, the saved device %s had %d", name, x.n, s.Name, t.Vectors)
		}
		if len(t.Table) != x.n*msixEntrySize {
			return fmt.Errorf("vfio device %s: the saved MSI-X table is %d bytes, %d vectors need %d: the state is truncated or damaged", name, len(t.Table), x.n, x.n*msixEntrySize)
		}
		if len(t.Pending) != (x.n+63)/64 {
			return fmt.Errorf("vfio device %s: the saved MSI-X pending bits are %d words, %d vectors need %d: the state is truncated or damaged", name, len(t.Pending), x.n, (x.n+63)/64)
		}
		if r := x.n % 64; r != 0 && t.Pending[len(t.Pending)-1]>>r != 0 {
			return fmt.Errorf("vfio device %s: the saved MSI-X pending bits %#x name vectors past its %d", name, t.Pending[len(t.Pending)-1], x.n)
		}
	}
	if s.MSI != nil && s.MSI.Pending != 0 {
		m := p.msi
		if m == nil || !m.pvm {
			return fmt.Errorf("vfio device %s has no MSI with per-vector masking, the saved device %s had MSI vectors pending (%#x)", name, s.Name, s.MSI.Pending)
		}
		if s.MSI.Pending>>(1<<m.maxLog2) != 0 {
			return fmt.Errorf("vfio device %s: the saved MSI pending bits %#x name vectors past its %d", name, s.MSI.Pending, 1<<m.maxLog2)
		}
	}
	return nil
}

// CheckMigration refuses saved state that is not this function's kind
// of device, before anything is loaded.
func (p *PCI) CheckMigration(s MigrationState) error {
	if err := p.Migratable(); err != nil {
		return err
	}
	v, d, sv, si := p.identity()
	if s.Vendor != v || s.Device != d || s.SubVen != sv || s.SubID != si {
		return fmt.Errorf("vfio device %s is %04x:%04x (subsystem %04x:%04x), the saved device %s was %04x:%04x (subsystem %04x:%04x): give a device of the same kind",
			p.Name(), v, d, sv, si, s.Name, s.Vendor, s.Device, s.SubVen, s.SubID)
	}
	if f := p.dev.(migrator).MigrationFlags(); f&s.MigFlags != s.MigFlags {
		return fmt.Errorf("vfio device %s has migration flags %#x, the saved device %s had %#x: its driver cannot take that state", p.Name(), f, s.Name, s.MigFlags)
	}
	if len(s.Data) == 0 {
		return fmt.Errorf("vfio device %s: the saved device %s has no migration data", p.Name(), s.Name)
	}
	if s.PreCopy != 0 {
		return fmt.Errorf("vfio device %s: %d bytes of the saved device %s's data were sent in pre-copy, apart from its state, and are not in it (a live migration's receiver puts them in; a snapshot has none)", p.Name(), s.PreCopy, s.Name)
	}
	return p.checkIRQs(s)
}

// LoadMigration loads saved state into the device (which stays stopped
// until Run) and brings govmm's side of the function in line with the
// configuration space the PCI bus restored: the command register's
// enables, the BAR mappings, and the interrupts. The MSI-X table and the
// pending bits are govmm's again first, so that the enabled vectors are
// wired as the guest left them, in the configured order (routes, commit,
// irqfds, VFIO_DEVICE_SET_IRQS; or VFIO_DEVICE_SET_IRQS first), masked
// vectors without an irqfd and with their pending bits, all before the
// device runs. Call it after the bus's Restore. s.Data is the device's
// whole data: a live migration's receiver puts what came in pre-copy
// first.
func (p *PCI) LoadMigration(s MigrationState) error {
	if err := p.CheckMigration(s); err != nil {
		return err
	}
	if err := p.dev.(migrator).LoadMigration(s.Data); err != nil {
		return err
	}
	p.mu.Lock()
	if x := p.msix; x != nil {
		copy(x.table, s.MSIX.Table)
		for o := range x.table {
			x.table[o] = msixSanitize(o, x.table[o])
		}
		for v := 0; v < x.n; v++ {
			x.pending[v] = s.MSIX.Pending[v/64]>>(v%64)&1 != 0
		}
	}
	if m := p.msi; m != nil && s.MSI != nil {
		for v := range m.pending {
			m.pending[v] = s.MSI.Pending>>v&1 != 0
		}
	}
	p.mu.Unlock()
	p.onWrite(0, pci.ConfigSize)
	return nil
}

// Run returns a stopped device to RUNNING; a device never stopped, or
// without migration, is left alone.
func (p *PCI) Run() error {
	m, ok := p.dev.(migrator)
	if !ok {
		return nil
	}
	return m.Run()
}

// preCopier is a device with PRE_COPY (*Device).
type preCopier interface {
	PreCopyCapable() bool
	StartPreCopy() error
	ReadPreCopy() ([]byte, error)
	EndPreCopy() error
}

// StartPreCopy puts a device that offers PRE_COPY in it, at the start of
// a live migration's copy of guest RAM; it reports whether it did (a
// device without PRE_COPY is copied stopped only, in SaveMigration).
func (p *PCI) StartPreCopy() (bool, error) {
	c, ok := p.dev.(preCopier)
	if !ok || !c.PreCopyCapable() {
		return false, nil
	}
	p.mu.Lock()
	p.preCopied = 0
	p.mu.Unlock()
	if err := c.StartPreCopy(); err != nil {
		return false, err
	}
	return true, nil
}

// PreCopyData returns the device data that can be read while it runs,
// since the last call; SaveMigration counts it in MigrationState.PreCopy.
func (p *PCI) PreCopyData() ([]byte, error) {
	c, ok := p.dev.(preCopier)
	if !ok {
		return nil, nil
	}
	b, err := c.ReadPreCopy()
	p.mu.Lock()
	p.preCopied += uint64(len(b))
	p.mu.Unlock()
	return b, err
}

// EndPreCopy returns a device in PRE_COPY to RUNNING: the live migration
// failed before it stopped. What was read is forgotten.
func (p *PCI) EndPreCopy() error {
	c, ok := p.dev.(preCopier)
	if !ok {
		return nil
	}
	p.mu.Lock()
	p.preCopied = 0
	p.mu.Unlock()
	return c.EndPreCopy()
}

// dmaLogger is a device with DMA logging (*Device).
type dmaLogger interface {
	StartDMALogging(ranges []DirtyRange) (fallback error)
	DMADirty(mark func(gpa, size uint64)) error
	StopDMALogging() error
}

// StartDMALogging has the device log its DMA writes to guest RAM for a
// live migration. A device that cannot (or a kernel that cannot report
// the log) has all of ranges sent again once it is stopped, and the
// migration's downtime grows by that copy: the reason is logged.
func (p *PCI) StartDMALogging(ranges []DirtyRange) error {
	l, ok := p.dev.(dmaLogger)
	if !ok {
		return fmt.Errorf("vfio device %s tracks no DMA writes", p.Name())
	}
	if why := l.StartDMALogging(ranges); why != nil {
		p.log.Warn("vfio: no usable DMA log; all guest RAM is sent again after the device stops, in the migration's downtime", "why", why)
	}
	return nil
}

// DMADirty reports the pages the device wrote since the last call.
func (p *PCI) DMADirty(mark func(gpa, size uint64)) error {
	if l, ok := p.dev.(dmaLogger); ok {
		return l.DMADirty(mark)
	}
	return nil
}

// StopDMALogging ends DMA logging.
func (p *PCI) StopDMALogging() error {
	if l, ok := p.dev.(dmaLogger); ok {
		return l.StopDMALogging()
	}
	return nil
}
