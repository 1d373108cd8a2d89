// Package irqtestdev is an MMIO test device for the interrupt proofs of
// the irq test guest (guests/irq): it holds a level-triggered line until
// the guest acknowledges it, and it makes the host fire N MSIs through an
// irqfd, setting the route and irqfd up in either VFIO ordering (QEMU's:
// route, commit, irqfd, then the device starts signalling; Cloud
// Hypervisor's: eventfd, the device starts signalling, route, commit,
// irqfd), one signal at a time, each waiting for the guest's
// acknowledgement so the guest can count them exactly.
//
// Registers (32-bit, offsets from Base):
//
//	0x00 ID        R   0x54515249 ("IRQT")
//	0x04 LEVEL     RW  write 1 asserts the level line, 0 deasserts it
//	0x08 ASSERTS   R   number of deasserted->asserted transitions
//	0x10 MSI_ADDR  RW  MSI address low, as a PCI MSI capability
//	0x14 MSI_ADDRH RW  MSI address high
//	0x18 MSI_DATA  RW  MSI data
//	0x1C ORDER     RW  0: QEMU ordering, 1: Cloud Hypervisor ordering,
//	                   2: no irqfd, each MSI injected from userspace
//	                   (SignalMSI; the benchmark's baseline)
//	0x20 FIRE      W   start a run of N (1..MaxFire) irqfd signals; R: N
//	0x24 MSI_ACK   W   the guest took one MSI
//	0x28 SENT      R   signals sent in the current run
//	0x2C STATUS    R   bit0 busy, bit1 done, bit2 error
//	0x30 ACKS      R   acknowledgements received in the current run
//	0x34 GSI       R   the GSI the last run used
//	0x40 DOORBELL  W   a plain MMIO doorbell (every write exits to govmm)
//	0x44 DBCOUNT   R   writes seen on DOORBELL
//	0x80 FASTBELL  W   a doorbell backed by an ioeventfd (the kernel or
//	                   hypervisor consumes the write), when one could be
//	                   assigned; otherwise it behaves like DOORBELL
//	0x84 FASTCOUNT R   writes seen on FASTBELL (eventfd counts + exits)
//	0x88 FASTMODE  R   1 if FASTBELL is backed by an ioeventfd
//
// A level-triggered device behind a resample irqfd (what a VFIO INTx line
// or a vhost device is), played by a host goroutine that only has the two
// eventfds: for each of N assertions it marks itself pending, signals the
// trigger eventfd, and on each signal of the resample eventfd signals the
// trigger again while the guest has not acknowledged it.
//
//	0x90 RS_MODE      RW  0: resample irqfd on IOAPIC pin RSPin (GSI 17),
//	                      served by govmm's IOAPIC; 1: on an allocated GSI
//	                      with the MSI_ADDR/MSI_DATA route (level-triggered,
//	                      data bit 15; needs an accelerator that resamples
//	                      MSIs: MSHV, not KVM)
//	0x94 RS_FIRE      W   start a run of N (1..MaxFire) assertions; R: N
//	0x98 RS_PENDING   R   1 while the device needs service; W: the guest
//	                      acknowledges (clears it)
//	0x9C RS_STATUS    R   bit0 busy, bit1 done, bit2 error
//	0xA0 RS_ASSERTS   R   assertions made in the run
//	0xA4 RS_TRIGGERS  R   trigger eventfd signals in the run (assertions plus
//	                      re-triggers on a resample that found it pending)
//	0xA8 RS_RESAMPLES R   resample eventfd signals received in the run
//
// Wiring in the VM layer (after the chipset exists; Close it before the
// chipset, so its run and ioeventfd are released first):
//
//	td := irqtestdev.New(irqtestdev.Config{
//		Level:     cs.Line(16),        // GSI 16, IOAPIC only
//		Routes:    cs.Routes(),        // MSI route, irqfd, FASTBELL ioeventfd
//		SignalMSI: vm.SignalMSI,       // ORDER 2 (benchmark baseline)
//		Log:       log,
//	})
//	mmio.Register(irqtestdev.Base, irqtestdev.Size, "irqtestdev", td)
//	defer td.Close()
package irqtestdev

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"govmm/accel"
	"govmm/irq"
	"govmm/irq/routes"
)

// Base and Size place the device in the MMIO hole, next to devices/testdev.
const (
	Base = 0xFEB01000
	Size = 0x1000
)

// Register offsets.
const (
	RegID       = 0x00
	RegLevel    = 0x04
	RegAsserts  = 0x08
	RegMSIAddr  = 0x10
	RegMSIAddrH = 0x14
	RegMSIData  = 0x18
	RegOrder    = 0x1C
	RegFire     = 0x20
	RegMSIAck   = 0x24
	RegSent     = 0x28
	RegStatus   = 0x2C
	RegAcks     = 0x30
	RegGSI      = 0x34
	RegDoorbell = 0x40
	RegDBCount  = 0x44
	RegFastBell = 0x80
	RegFastCnt  = 0x84
	RegFastMode = 0x88

	RegRSMode      = 0x90
	RegRSFire      = 0x94
	RegRSPending   = 0x98
	RegRSStatus    = 0x9C
	RegRSAsserts   = 0xA0
	RegRSTriggers  = 0xA4
	RegRSResamples = 0xA8
)

// RSPin is the IOAPIC pin (GSI) of RS_MODE 0.
const RSPin = 17

// RS_MODE values.
const (
	RSModePin = 0
	RSModeMSI = 1
)

// ID is the value of the ID register.
const ID = 0x54515249

// Orders.
const (
	OrderQEMU      = 0
	OrderCH        = 1
	OrderUserspace = 2
)

// STATUS bits.
const (
	StatusBusy  = 1
	StatusDone  = 2
	StatusError = 4
)

// MaxFire bounds a run.
const MaxFire = 10000

// AckTimeout bounds how long the host waits for each acknowledgement.
const AckTimeout = 30 * time.Second

// State is the device's saved state (a run in flight is not saved; it
// ends with an error status on the restored side).
type State struct {
	Level    bool   `json:"level"`
	Asserts  uint32 `json:"asserts"`
	MSIAddr  uint32 `json:"msi_addr"`
	MSIAddrH uint32 `json:"msi_addr_hi"`
	MSIData  uint32 `json:"msi_data"`
	Order    uint32 `json:"order"`
	Fire     uint32 `json:"fire"`
	Sent     uint32 `json:"sent"`
	Acks     uint32 `json:"acks"`
	Status   uint32 `json:"status"`
	GSI      uint32 `json:"gsi"`
	// Doorbell counters (benchmark).
	Doorbells uint64 `json:"doorbells"`
	FastBells uint64 `json:"fast_bells"`
	// The resample block.
	RSMode      uint32 `json:"rs_mode,omitempty"`
	RSFire      uint32 `json:"rs_fire,omitempty"`
	RSPending   bool   `json:"rs_pending,omitempty"`
	RSStatus    uint32 `json:"rs_status,omitempty"`
	RSAsserts   uint32 `json:"rs_asserts,omitempty"`
	RSTriggers  uint32 `json:"rs_triggers,omitempty"`
	RSResamples uint32 `json:"rs_resamples,omitempty"`
}

// Config is what the device needs from the VM.
type Config struct {
	// Level is the level-triggered line (GSI 16 in the test guest).
	Level irq.Line
	// Routes is the VM's GSI routing table (MSI route, irqfd and the
	// FASTBELL ioeventfd).
	Routes *routes.Table
	// SignalMSI injects an MSI from userspace (accel.VM.SignalMSI), for
	// ORDER 2; optional.
	SignalMSI func(accel.MSI) error
	Log       *slog.Logger
}

// Device is the test device; it implements bus.Device.
type Device struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	s    State
	fast *routes.IOEventFD
	ack  chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns the device.
func New(cfg Config) *Device {
	if cfg.Level == nil {
		cfg.Level = irq.NoLine{}
	}
	d := &Device{cfg: cfg, log: cfg.Log, ack: make(chan struct{}, MaxFire), stop: make(chan struct{})}
	if d.log == nil {
		d.log = slog.Default()
	}
	if cfg.Routes != nil {
		e, err := cfg.Routes.NewIOEventFD(Base+RegFastBell, 4, false, nil)
		if err != nil {
			d.log.Warn("irqtestdev: no ioeventfd for FASTBELL; it will exit like DOORBELL", "err", err)
		} else {
			d.fast = e
			e.EventFD().Serve(func(n uint64) {
				d.mu.Lock()
				d.s.FastBells += n
				d.mu.Unlock()
			})
		}
	}
	return d
}

// Read implements bus.Device.
func (d *Device) Read(offset uint64, data []byte) {
	d.mu.Lock()
	var v uint32
	switch offset &^ 3 {
	case RegID:
		v = ID
	case RegLevel:
		if d.s.Level {
			v = 1
		}
	case RegAsserts:
		v = d.s.Asserts
	case RegMSIAddr:
		v = d.s.MSIAddr
	case RegMSIAddrH:
		v = d.s.MSIAddrH
	case RegMSIData:
		v = d.s.MSIData
	case RegOrder:
		v = d.s.Order
	case RegFire:
		v = d.s.Fire
	case RegSent:
		v = d.s.Sent
	case RegStatus:
		v = d.s.Status
	case RegAcks:
		v = d.s.Acks
	case RegGSI:
		v = d.s.GSI
	case RegDBCount:
		v = uint32(d.s.Doorbells)
	case RegFastCnt:
		v = uint32(d.s.FastBells)
	case RegFastMode:
		if d.fast != nil {
			v = 1
		}
	case RegRSMode:
		v = d.s.RSMode
	case RegRSFire:
		v = d.s.RSFire
	case RegRSPending:
		if d.s.RSPending {
			v = 1
		}
	case RegRSStatus:
		v = d.s.RSStatus
	case RegRSAsserts:
		v = d.s.RSAsserts
	case RegRSTriggers:
		v = d.s.RSTriggers
	case RegRSResamples:
		v = d.s.RSResamples
	}
	d.mu.Unlock()
	var b [8]byte
	binary.LittleEndian.PutUint32(b[:], v>>(8*(offset&3)))
	copy(data, b[:])
}

// Write implements bus.Device. Only the low 32 bits of a register are
// used; narrower writes write the low bytes.
func (d *Device) Write(offset uint64, data []byte) {
	var b [8]byte
	copy(b[:], data)
	v := binary.LittleEndian.Uint32(b[:])
	d.mu.Lock()
	defer d.mu.Unlock()
	switch offset {
	case RegLevel:
		high := v&1 != 0
		if high && !d.s.Level {
			d.s.Asserts++
		}
		d.s.Level = high
		// Under the lock, so level changes reach the line in order.
		d.cfg.Level.Set(high)
	case RegMSIAddr:
		d.s.MSIAddr = v
	case RegMSIAddrH:
		d.s.MSIAddrH = v
	case RegMSIData:
		d.s.MSIData = v
	case RegOrder:
		if v <= OrderUserspace {
			d.s.Order = v
		}
	case RegDoorbell:
		d.s.Doorbells++
	case RegFastBell:
		d.s.FastBells++
	case RegFire:
		d.fire(v)
	case RegRSMode:
		if v <= RSModeMSI {
			d.s.RSMode = v
		}
	case RegRSFire:
		d.fireResample(v)
	case RegRSPending:
		d.s.RSPending = false
	case RegMSIAck:
		if d.s.Status&StatusBusy != 0 {
			d.s.Acks++
			select {
			case d.ack <- struct{}{}:
			default:
			}
		}
	}
}

// fire starts a run. Called with mu held.
func (d *Device) fire(n uint32) {
	if d.s.Status&StatusBusy != 0 {
		d.log.Warn("irqtestdev: FIRE while a run is in progress; ignored")
		return
	}
	if n == 0 || n > MaxFire || d.cfg.Routes == nil || (d.s.Order == OrderUserspace && d.cfg.SignalMSI == nil) {
		d.s.Status = StatusError
		return
	}
	select {
	case <-d.stop:
		d.s.Status = StatusError
		return
	default:
	}
	for len(d.ack) > 0 {
		<-d.ack
	}
	d.s.Fire, d.s.Sent, d.s.Acks, d.s.Status = n, 0, 0, StatusBusy
	msi := accel.MSI{AddressLo: d.s.MSIAddr, AddressHi: d.s.MSIAddrH, Data: d.s.MSIData}
	order := d.s.Order
	d.goRun("MSI", &d.s.Status, func() error { return d.run(n, msi, order) }, nil)
}

// goRun runs a host-side run on a goroutine Close waits for, and records
// its outcome in *status (under d.mu) when it ends; done, if set, runs
// under d.mu too.
func (d *Device) goRun(what string, status *uint32, run func() error, done func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := run()
		d.mu.Lock()
		defer d.mu.Unlock()
		if err != nil {
			d.log.Error("irqtestdev: "+what+" run failed", "err", err)
			*status = StatusError | StatusDone
		} else {
			*status = StatusDone
		}
		if done != nil {
			done()
		}
	}()
}

// run performs one run in the chosen order and releases everything it set
// up before returning.
func (d *Device) run(n uint32, msi accel.MSI, order uint32) (err error) {
	t := d.cfg.Routes
	var (
		ev  *routes.EventFD
		gsi uint32
		fd  *routes.IRQFD
	)
	defer func() {
		if fd != nil {
			if e := fd.Close(); e != nil && err == nil {
				err = e
			}
		}
		if gsi != 0 {
			if e := t.Free(gsi); e != nil && err == nil {
				err = e
			}
			if e := t.Commit(); e != nil && err == nil {
				err = e
			}
		}
		if ev != nil {
			ev.Close()
		}
	}()
	route := func() error {
		g, err := t.Allocate()
		if err != nil {
			return err
		}
		gsi = g
		d.mu.Lock()
		d.s.GSI = g
		d.mu.Unlock()
		if err := t.SetMSI(g, msi); err != nil {
			return err
		}
		if err := t.Commit(); err != nil {
			return err
		}
		fd, err = t.AssignIRQFD(ev, g, nil)
		return err
	}
	if ev, err = routes.NewEventFD(); err != nil {
		return err
	}
	sent := uint32(0)
	signal := func() error {
		if err := ev.Signal(); err != nil {
			return err
		}
		sent++
		d.mu.Lock()
		d.s.Sent = sent
		d.mu.Unlock()
		return nil
	}
	if order == OrderUserspace {
		signal = func() error {
			if err := d.cfg.SignalMSI(msi); err != nil {
				return err
			}
			sent++
			d.mu.Lock()
			d.s.Sent = sent
			d.mu.Unlock()
			return nil
		}
		if err := signal(); err != nil {
			return err
		}
	} else if order == OrderCH {
		// set_irqs: the device is live and signals before the route
		// and the irqfd exist; the signal waits in the eventfd.
		if err := signal(); err != nil {
			return err
		}
		if err := route(); err != nil {
			return fmt.Errorf("cloud-hypervisor order: %w", err)
		}
	} else {
		if err := route(); err != nil {
			return fmt.Errorf("qemu order: %w", err)
		}
		if err := signal(); err != nil {
			return err
		}
	}
	for {
		select {
		case <-d.ack:
		case <-d.stop:
			return fmt.Errorf("device closed during a run (%d of %d sent)", sent, n)
		case <-time.After(AckTimeout):
			return fmt.Errorf("no acknowledgement for MSI %d of %d within %v", sent, n, AckTimeout)
		}
		if sent == n {
			return nil
		}
		if err := signal(); err != nil {
			return err
		}
	}
}

// fireResample starts a resample run. Called with mu held.
func (d *Device) fireResample(n uint32) {
	if d.s.RSStatus&StatusBusy != 0 {
		d.log.Warn("irqtestdev: RS_FIRE while a resample run is in progress; ignored")
		return
	}
	if n == 0 || n > MaxFire || d.cfg.Routes == nil {
		d.s.RSStatus = StatusError
		return
	}
	select {
	case <-d.stop:
		d.s.RSStatus = StatusError
		return
	default:
	}
	d.s.RSFire, d.s.RSStatus, d.s.RSPending = n, StatusBusy, false
	d.s.RSAsserts, d.s.RSTriggers, d.s.RSResamples = 0, 0, 0
	mode := d.s.RSMode
	msi := accel.MSI{AddressLo: d.s.MSIAddr, AddressHi: d.s.MSIAddrH, Data: d.s.MSIData}
	d.goRun("resample", &d.s.RSStatus, func() error { return d.runResample(n, mode, msi) },
		func() { d.s.RSPending = false })
}

// runResample plays a level-triggered device that has only a trigger and
// a resample eventfd, and releases its irqfd (and GSI) before returning.
func (d *Device) runResample(n, mode uint32, msi accel.MSI) (err error) {
	t := d.cfg.Routes
	var gsi uint32 = RSPin
	if mode == RSModeMSI {
		if gsi, err = t.Allocate(); err != nil {
			return err
		}
		defer func() {
			if e := t.Free(gsi); e != nil && err == nil {
				err = e
			}
			if e := t.Commit(); e != nil && err == nil {
				err = e
			}
		}()
		if err := t.SetMSI(gsi, msi); err != nil {
			return err
		}
		if err := t.Commit(); err != nil {
			return err
		}
	}
	fd, err := t.NewIRQFD(gsi, true)
	if err != nil {
		return fmt.Errorf("resample irqfd on GSI %d: %w", gsi, err)
	}
	defer func() {
		if e := fd.Close(); e != nil && err == nil {
			err = e
		}
	}()
	done := make(chan struct{})
	defer close(done)
	resampled := make(chan uint64, 1)
	fd.Resample().Serve(func(c uint64) {
		select {
		case resampled <- c:
		case <-done:
		}
	})
	trigger := func() error {
		d.mu.Lock()
		d.s.RSTriggers++
		d.mu.Unlock()
		return fd.Signal()
	}
	for i := uint32(0); i < n; i++ {
		d.mu.Lock()
		d.s.RSPending = true
		d.s.RSAsserts++
		d.mu.Unlock()
		if err := trigger(); err != nil {
			return err
		}
		for {
			select {
			case c := <-resampled:
				d.mu.Lock()
				d.s.RSResamples += uint32(c)
				d.mu.Unlock()
			case <-d.stop:
				return fmt.Errorf("device closed during a resample run (assertion %d of %d)", i+1, n)
			case <-time.After(AckTimeout):
				return fmt.Errorf("no resample for assertion %d of %d within %v", i+1, n, AckTimeout)
			}
			d.mu.Lock()
			pending := d.s.RSPending
			d.mu.Unlock()
			if !pending {
				break
			}
			// Still needs service after the EOI: assert again, as a
			// level device whose line is still high.
			if err := trigger(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close stops a run in progress and waits until it has released its GSI,
// route and irqfd.
func (d *Device) Close() error {
	d.mu.Lock()
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	d.mu.Unlock()
	d.wg.Wait()
	if d.fast != nil {
		return d.fast.Close()
	}
	return nil
}

// Save returns the device's state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.s
}

// Restore loads a saved state and drives the line to the saved level. A
// run that was in flight is reported as failed.
func (d *Device) Restore(s State) error {
	if s.Order > OrderUserspace || s.Fire > MaxFire || s.Status > 7 {
		return fmt.Errorf("irqtestdev restore: order %d, fire %d or status %#x out of range", s.Order, s.Fire, s.Status)
	}
	if s.RSMode > RSModeMSI || s.RSFire > MaxFire || s.RSStatus > 7 {
		return fmt.Errorf("irqtestdev restore: resample mode %d, fire %d or status %#x out of range", s.RSMode, s.RSFire, s.RSStatus)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.s.Status&StatusBusy != 0 || d.s.RSStatus&StatusBusy != 0 {
		return fmt.Errorf("irqtestdev restore: a run is in progress")
	}
	if s.Status&StatusBusy != 0 {
		s.Status = StatusDone | StatusError
	}
	if s.RSStatus&StatusBusy != 0 {
		s.RSStatus, s.RSPending = StatusDone|StatusError, false
	}
	d.s = s
	d.cfg.Level.Set(s.Level)
	return nil
}
