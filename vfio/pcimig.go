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
// refuses another kind of device, and the opaque data its driver gave.
// govmm's own part of the function (its configuration space: BARs,
// command register, MSI, the interrupt line) travels in the PCI bus's
// state.
type MigrationState struct {
	Name     string `json:"name"` // the source's device (informational)
	Vendor   uint16 `json:"vendor"`
	Device   uint16 `json:"device"`
	SubVen   uint16 `json:"subsystem_vendor"`
	SubID    uint16 `json:"subsystem_id"`
	MigFlags uint64 `json:"migration_flags"`
	Data     []byte `json:"data"`
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
// nil when it can: its device must have VFIO migration (STOP_COPY), and
// the MSI-X table govmm emulates for it is not carried yet.
func (p *PCI) Migratable() error {
	m, ok := p.dev.(migrator)
	if !ok || !m.Migratable() {
		return fmt.Errorf("vfio device %s has no VFIO migration support (its driver offers no STOP_COPY): its state lives in the hardware", p.Name())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.msix != nil {
		return fmt.Errorf("vfio device %s has MSI-X, whose table govmm emulates and does not carry across a migration yet", p.Name())
	}
	return nil
}

// SaveMigration stops the device and returns its state. The VM must be
// paused; Run returns the device to RUNNING when it resumes.
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
	return MigrationState{Name: p.Name(), Vendor: v, Device: d, SubVen: sv, SubID: si, MigFlags: m.MigrationFlags(), Data: data}, nil
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
	return nil
}

// LoadMigration loads saved state into the device (which stays stopped
// until Run) and brings govmm's side of the function in line with the
// configuration space the PCI bus restored: the command register's
// enables, the BAR mappings, MSI. Call it after the bus's Restore.
func (p *PCI) LoadMigration(s MigrationState) error {
	if err := p.CheckMigration(s); err != nil {
		return err
	}
	if err := p.dev.(migrator).LoadMigration(s.Data); err != nil {
		return err
	}
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
