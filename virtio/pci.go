package virtio

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"

	"govmm/irq/routes"
	"govmm/pci"
)

// PCI identity of modern virtio devices (virtio 1.2 §4.1.2).
const (
	PCIVendor     = 0x1af4
	pciDeviceBase = 0x1040
)

// Layout of BAR 0, a 64-bit memory BAR holding every structure.
const (
	barSize      = 0x8000
	commonOff    = 0x0000
	commonLen    = 0x38
	isrOff       = 0x1000
	isrLen       = 4
	deviceOff    = 0x2000
	deviceLen    = 0x1000
	notifyOff    = 0x3000
	notifyMult   = 4
	notifyLen    = 0x1000
	msixTableOff = 0x4000
	msixPBAOff   = 0x6000
	maxQueues    = notifyLen / notifyMult
	capVendor    = 0x09
)

// Capability cfg_type values.
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
)

// Common configuration registers.
const (
	ccDevFeatSel   = 0x00
	ccDevFeat      = 0x04
	ccDrvFeatSel   = 0x08
	ccDrvFeat      = 0x0c
	ccConfigVector = 0x10
	ccNumQueues    = 0x12
	ccStatus       = 0x14
	ccConfigGen    = 0x15
	ccQueueSel     = 0x16
	ccQueueSize    = 0x18
	ccQueueVector  = 0x1a
	ccQueueEnable  = 0x1c
	ccQueueNotify  = 0x1e
	ccQueueDesc    = 0x20
	ccQueueDriver  = 0x28
	ccQueueDevice  = 0x30
)

// PCIClass is the class a device's function reports.
type PCIClass struct{ Class, Subclass, ProgIF uint8 }

// Router is what the transport needs of the VM's routing table
// (*routes.Table): MSI routes for MSI-X and MMIO doorbells.
type Router interface {
	pci.MSIRouter
	NewIOEventFD(addr uint64, length int, pio bool, match *uint64) (*routes.IOEventFD, error)
	AssignIOEventFD(ev *routes.EventFD, addr uint64, length int, pio bool, match *uint64) (*routes.IOEventFD, error)
}

// PCIConfig is one virtio-pci function's wiring.
type PCIConfig struct {
	Class  PCIClass
	Mem    Memory
	Router Router
	Log    *slog.Logger
	// Packed offers VIRTIO_F_RING_PACKED: a driver that accepts it lays
	// the device's queues out as packed rings. It is part of the
	// device's description (Describe), so a snapshot or a migration
	// restores only where the device offers the same.
	Packed bool
	// INTx, if set, gives the function INTA on this GSI (an IOAPIC pin
	// on x86, a GIC SPI on arm64), raised through a resample irqfd on
	// Router while MSI-X is disabled.
	// Without it the Interrupt Pin register is 0 and the function
	// interrupts through MSI-X only.
	INTx *INTxConfig
	// QueueThread, if set, confines queue q's server goroutine: at each
	// notification, until it returns true, the goroutine is locked to
	// its thread and calls QueueThread(q) there; on false (the VMM is
	// not confined yet) it is unlocked again. Once it returned true the
	// goroutine keeps its thread, which the runtime ends with it when
	// the transport closes, so that whatever QueueThread did to the
	// thread (a seccomp filter of its own) holds for that queue's work
	// alone.
	QueueThread func(q int) bool
}

// PCI is the virtio 1.x modern PCI transport of one device (virtio 1.2
// §4.1). It is safe for concurrent use: the vCPUs access its registers,
// one goroutine per queue serves notifications, and devices complete
// requests from their own goroutines.
type PCI struct {
	dev    Device
	fn     *pci.Function
	msix   *pci.MSIX
	mem    Memory
	router Router
	log    *slog.Logger
	qmax   []uint16
	packed bool

	mu   sync.Mutex
	cond *sync.Cond
	s    pciRegs
	// queues are the live queues (non-nil from the driver's queue_enable
	// until reset).
	queues []*Queue
	isr    uint8
	// intx is the function's INTA (nil: none).
	intx *intxLine
	// active: DRIVER_OK was accepted and the device activated.
	active bool
	// broken: the device asked for a reset; nothing is served.
	broken bool
	paused bool
	// busy counts notification handlers running and chains in flight,
	// serving the handlers alone.
	busy, serving int
	// kicks wake each queue's server goroutine.
	kicks  []chan struct{}
	ioevs  []*routes.IOEventFD
	ioBase uint64 // where the doorbells are bound (0: none)
	done   chan struct{}
	closed bool
	// queueThread is PCIConfig.QueueThread.
	queueThread func(q int) bool
	// cfgCap is the VIRTIO_PCI_CAP_PCI_CFG capability's offset.
	cfgCap int
	// off is an Offloader device's backend state (nil: none).
	off *offloadState
}

// pciRegs are the transport's guest-visible registers.
type pciRegs struct {
	DevFeatSel   uint32        `json:"dev_feature_select"`
	DrvFeatSel   uint32        `json:"drv_feature_select"`
	DrvFeatures  uint64        `json:"driver_features"`
	Status       uint8         `json:"status"`
	ConfigGen    uint8         `json:"config_generation"`
	ConfigVector uint16        `json:"config_msix_vector"`
	QueueSel     uint16        `json:"queue_select"`
	Queues       []QueueConfig `json:"queues"`
}

// NewPCI builds the function of dev: identity, BAR 0 with the virtio
// structures and the MSI-X table (one vector per queue and one for
// configuration changes), and the capabilities that point at them.
func NewPCI(dev Device, c PCIConfig) (*PCI, error) {
	qmax := dev.QueueMax()
	if len(qmax) == 0 || len(qmax) > maxQueues {
		return nil, fmt.Errorf("%s: %d queues, want 1..%d", dev.Name(), len(qmax), maxQueues)
	}
	for i, m := range qmax {
		if m == 0 || m&(m-1) != 0 {
			return nil, fmt.Errorf("%s: queue %d maximum size %d is not a power of two", dev.Name(), i, m)
		}
	}
	po, _ := dev.(PackedOfferer)
	packed := c.Packed || po != nil && po.OfferPacked()
	t := &PCI{dev: dev, mem: c.Mem, router: c.Router, log: c.Log, qmax: qmax, packed: packed, done: make(chan struct{}),
		queueThread: c.QueueThread}
	if t.log == nil {
		t.log = slog.Default()
	}
	t.cond = sync.NewCond(&t.mu)
	t.resetRegs()
	var pin uint8
	if c.INTx != nil {
		pin = 1
	}
	t.fn = pci.NewFunction(pci.Identity{
		Vendor: PCIVendor, Device: pciDeviceBase + dev.Type(), Revision: 1,
		Class: c.Class.Class, Subclass: c.Class.Subclass, ProgIF: c.Class.ProgIF,
		SubsystemVendor: PCIVendor, SubsystemID: 0x1100, InterruptPin: pin,
	})
	if c.INTx != nil {
		// The Interrupt Line firmware would write: the GSI.
		t.fn.WriteConfig(pci.RegInterruptLine, []byte{byte(c.INTx.GSI)})
	}
	if err := t.fn.SetBAR(0, pci.BAR{Kind: pci.BARMem64, Size: barSize, Dev: barDev{t}}); err != nil {
		return nil, fmt.Errorf("%s: %w", dev.Name(), err)
	}
	for _, cp := range []struct {
		typ      byte
		off, len uint32
	}{{capCommon, commonOff, 0x1000}, {capISR, isrOff, isrLen}, {capDevice, deviceOff, deviceLen}} {
		if _, err := t.fn.AddCapability(capVendor, vendorCap(cp.typ, cp.off, cp.len, 16), nil); err != nil {
			return nil, fmt.Errorf("%s: %w", dev.Name(), err)
		}
	}
	nc := vendorCap(capNotify, notifyOff, notifyLen, 20)
	nc = binary.LittleEndian.AppendUint32(nc, notifyMult)
	if _, err := t.fn.AddCapability(capVendor, nc, nil); err != nil {
		return nil, fmt.Errorf("%s: %w", dev.Name(), err)
	}
	t.fn.OnWrite = t.configWritten
	t.fn.OnRead = t.configRead
	var err error
	t.msix, err = pci.NewMSIX(t.fn, pci.MSIXConfig{Vectors: len(qmax) + 1, BAR: 0,
		TableOffset: msixTableOff, PBAOffset: msixPBAOff, Router: c.Router, Log: t.log})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dev.Name(), err)
	}
	if err := t.addPCICfgCap(); err != nil {
		t.msix.Close()
		return nil, err
	}
	if c.INTx != nil {
		if t.intx, err = newINTx(c.INTx); err != nil {
			t.msix.Close()
			return nil, fmt.Errorf("%s: INTx: %w", dev.Name(), err)
		}
		t.intx.resample.Serve(func(uint64) { t.intxResampled() })
	}
	if od, ok := dev.(Offloader); ok {
		if packed {
			t.msix.Close()
			return nil, fmt.Errorf("%s: packed=on: the kernel backend serves split rings only", dev.Name())
		}
		if err := t.newOffload(od); err != nil {
			t.closeOffload()
			t.msix.Close()
			return nil, fmt.Errorf("%s: %w", dev.Name(), err)
		}
	}
	t.queues = make([]*Queue, len(qmax))
	for range qmax {
		t.kicks = append(t.kicks, make(chan struct{}, 1))
	}
	for i := range qmax {
		go t.serve(i)
	}
	return t, nil
}

// vendorCap is a virtio_pci_cap body (after the ID and next bytes).
func vendorCap(typ byte, off, length uint32, capLen byte) []byte {
	b := []byte{capLen, typ, 0, 0, 0, 0}
	b = binary.LittleEndian.AppendUint32(b, off)
	return binary.LittleEndian.AppendUint32(b, length)
}

// Function is the PCI function to add to the bus.
func (t *PCI) Function() *pci.Function { return t.fn }

// Device is the device behind the transport.
func (t *PCI) Device() Device { return t.dev }

func (t *PCI) resetRegs() {
	t.s = pciRegs{ConfigVector: NoVector, ConfigGen: t.s.ConfigGen, Queues: make([]QueueConfig, len(t.qmax))}
	for i, m := range t.qmax {
		t.s.Queues[i] = QueueConfig{Size: m, MSIXVector: NoVector}
	}
}

func (t *PCI) features() uint64 {
	f := t.dev.Features() | FVersion1 | FEventIdx | FIndirectDesc
	if t.packed {
		f |= FRingPacked
	}
	return f
}

// DriverOK reports whether the driver has set DRIVER_OK and the device
// serves its queues (the guest found the function and bound its driver).
func (t *PCI) DriverOK() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.active
}

// QueueStates describes the device's live queues for govmm info and hang
// reports, a line each: the queue's position (Queue.String) and its
// MSI-X vector (pci.MSIX.VectorState), or its INTx line; then the
// device's status, and the handlers and chains in flight.
func (t *PCI) QueueStates() []string {
	t.mu.Lock()
	qs := append([]*Queue(nil), t.queues...)
	vecs := make([]uint16, len(qs))
	for i := range qs {
		vecs[i] = t.s.Queues[i].MSIXVector
	}
	head := fmt.Sprintf("status %#x, %d handlers and chains in flight", t.s.Status, t.busy)
	switch {
	case t.broken:
		head += ", needs reset"
	case t.paused:
		head += ", paused"
	}
	if !t.msix.Enabled() {
		head += fmt.Sprintf(", INTx (ISR %#x)", t.isr)
	}
	t.mu.Unlock()
	out := []string{head}
	for i, q := range qs {
		if q == nil {
			continue
		}
		v := "no vector"
		if vecs[i] != NoVector {
			v = t.msix.VectorState(int(vecs[i]))
		}
		out = append(out, fmt.Sprintf("q%d %s; %s", i, q, v))
	}
	return out
}

// Describe is the device's description with the transport's options
// (" packed=on"): what a restore or migration must find again, and what
// govmm info shows.
func (t *PCI) Describe() string {
	if t.packed {
		return t.dev.Describe() + " packed=on"
	}
	return t.dev.Describe()
}

// newQueue maps queue i as the negotiated features lay it out.
func (t *PCI) newQueue(i int, qc QueueConfig) (*Queue, error) {
	f := t.s.DrvFeatures
	if f&FRingPacked != 0 {
		return NewPackedQueue(t.mem, i, qc, t.qmax[i], f&FEventIdx != 0, f&FIndirectDesc != 0)
	}
	return NewQueue(t.mem, i, qc, t.qmax[i], f&FEventIdx != 0, f&FIndirectDesc != 0)
}

// barDev dispatches BAR 0.
type barDev struct{ t *PCI }

func (b barDev) Read(off uint64, data []byte) {
	t := b.t
	switch {
	case off >= commonOff && off < commonOff+0x1000:
		t.readCommon(off-commonOff, data)
	case off >= isrOff && off < isrOff+0x1000:
		clear(data)
		if off == isrOff && len(data) > 0 {
			t.mu.Lock()
			data[0], t.isr = t.isr, 0 // reading clears it
			t.updateINTx()
			t.mu.Unlock()
		}
	case off >= deviceOff && off < deviceOff+deviceLen:
		t.dev.ReadConfig(off-deviceOff, data)
	case off >= msixTableOff && off < msixPBAOff:
		t.msix.Table().Read(off-msixTableOff, data)
	case off >= msixPBAOff && off < barSize:
		t.msix.PBA().Read(off-msixPBAOff, data)
	default:
		clear(data) // notify region and gaps
	}
}

func (b barDev) Write(off uint64, data []byte) {
	t := b.t
	switch {
	case off >= commonOff && off < commonOff+0x1000:
		t.writeCommon(off-commonOff, data)
	case off >= deviceOff && off < deviceOff+deviceLen:
		t.dev.WriteConfig(off-deviceOff, data)
	case off >= notifyOff && off < notifyOff+notifyLen:
		// A doorbell that exited (no ioeventfd bound, or another
		// width than the one bound): the queue is the slot written.
		if q := int((off - notifyOff) / notifyMult); q < len(t.kicks) {
			t.kick(q)
		}
	case off >= msixTableOff && off < msixPBAOff:
		t.msix.Table().Write(off-msixTableOff, data)
	case off >= msixPBAOff && off < barSize:
		t.msix.PBA().Write(off-msixPBAOff, data)
	}
}

func getN(data []byte) uint64 {
	var b [8]byte
	copy(b[:], data)
	return binary.LittleEndian.Uint64(b[:])
}

func putN(data []byte, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	copy(data, b[:])
}

// readCommon reads the common configuration structure. Registers are
// read whole at their natural width; other accesses read bytewise from
// the register image.
func (t *PCI) readCommon(off uint64, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var img [commonLen]byte
	s := &t.s
	le.PutUint32(img[ccDevFeatSel:], s.DevFeatSel)
	if s.DevFeatSel < 2 {
		le.PutUint32(img[ccDevFeat:], uint32(t.features()>>(32*s.DevFeatSel)))
	}
	le.PutUint32(img[ccDrvFeatSel:], s.DrvFeatSel)
	if s.DrvFeatSel < 2 {
		le.PutUint32(img[ccDrvFeat:], uint32(s.DrvFeatures>>(32*s.DrvFeatSel)))
	}
	le.PutUint16(img[ccConfigVector:], s.ConfigVector)
	le.PutUint16(img[ccNumQueues:], uint16(len(t.qmax)))
	img[ccStatus] = s.Status
	img[ccConfigGen] = s.ConfigGen
	le.PutUint16(img[ccQueueSel:], s.QueueSel)
	if q := int(s.QueueSel); q < len(s.Queues) {
		qc := s.Queues[q]
		le.PutUint16(img[ccQueueSize:], qc.Size)
		le.PutUint16(img[ccQueueVector:], qc.MSIXVector)
		if qc.Ready {
			le.PutUint16(img[ccQueueEnable:], 1)
		}
		le.PutUint16(img[ccQueueNotify:], uint16(q))
		le.PutUint64(img[ccQueueDesc:], qc.Desc)
		le.PutUint64(img[ccQueueDriver:], qc.Avail)
		le.PutUint64(img[ccQueueDevice:], qc.Used)
	}
	for i := range data {
		o := off + uint64(i)
		if o < off || o >= commonLen {
			data[i] = 0
			continue
		}
		data[i] = img[o]
	}
}

// writeCommon writes a common configuration register. The driver writes
// each at its natural width; a write that does not start at a register
// or is not of its width is dropped (and logged at debug level).
func (t *PCI) writeCommon(off uint64, data []byte) {
	v := getN(data)
	n := len(data)
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.s
	var qc *QueueConfig
	if q := int(s.QueueSel); q < len(s.Queues) {
		qc = &s.Queues[q]
	}
	// The queue's registers are read-only while it is enabled (the
	// driver sets them up before queue_enable).
	qWritable := qc != nil && !qc.Ready && s.Status&StatusDriverOK == 0
	switch {
	case off == ccDevFeatSel && n == 4:
		s.DevFeatSel = uint32(v)
	case off == ccDrvFeatSel && n == 4:
		s.DrvFeatSel = uint32(v)
	case off == ccDrvFeat && n == 4:
		if s.Status&StatusFeaturesOK == 0 && s.DrvFeatSel < 2 {
			sh := 32 * s.DrvFeatSel
			s.DrvFeatures = s.DrvFeatures&^(0xffffffff<<sh) | v<<sh
		}
	case off == ccConfigVector && n == 2:
		s.ConfigVector = t.vector(uint16(v))
	case off == ccStatus && n == 1:
		t.setStatus(uint8(v))
	case off == ccQueueSel && n == 2:
		s.QueueSel = uint16(v)
	case off == ccQueueSize && n == 2:
		if qWritable {
			qc.Size = uint16(v)
		}
	case off == ccQueueVector && n == 2:
		if qc != nil {
			qc.MSIXVector = t.vector(uint16(v))
			t.updateCalls()
		}
	case off == ccQueueEnable && n == 2:
		if qWritable && v == 1 {
			t.enableQueue(int(s.QueueSel))
		}
	case (off == ccQueueDesc || off == ccQueueDriver || off == ccQueueDevice) && (n == 4 || n == 8),
		(off == ccQueueDesc+4 || off == ccQueueDriver+4 || off == ccQueueDevice+4) && n == 4:
		if !qWritable {
			break
		}
		base := off &^ 7
		p := map[uint64]*uint64{ccQueueDesc: &qc.Desc, ccQueueDriver: &qc.Avail, ccQueueDevice: &qc.Used}[base]
		if n == 8 {
			*p = v
		} else if off == base {
			*p = *p&^0xffffffff | v&0xffffffff
		} else {
			*p = *p&0xffffffff | v<<32
		}
	default:
		t.log.Debug("virtio: common configuration write ignored", "device", t.dev.Name(), "offset", off, "size", n)
	}
}

// vector is the value a vector register takes: the vector if the table
// has it, else NoVector (the driver reads back and sees the refusal).
func (t *PCI) vector(v uint16) uint16 {
	if int(v) < t.msix.Vectors() {
		return v
	}
	return NoVector
}

// setStatus is the device-status state machine. Called with mu held.
func (t *PCI) setStatus(v uint8) {
	s := &t.s
	if v == 0 {
		t.reset()
		return
	}
	old := s.Status
	v &= StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK | StatusFailed
	if v&^old&StatusFeaturesOK != 0 {
		// FEATURES_OK stays only if the driver accepted a subset of
		// what was offered, VERSION_1 included.
		if s.DrvFeatures&^t.features() != 0 || s.DrvFeatures&FVersion1 == 0 {
			t.log.Warn("virtio: driver features refused", "device", t.dev.Name(),
				"driver", fmt.Sprintf("%#x", s.DrvFeatures), "offered", fmt.Sprintf("%#x", t.features()))
			v &^= StatusFeaturesOK
		}
	}
	// The driver cannot clear bits other than by reset, nor set
	// NEEDS_RESET itself.
	v = v | old
	v = v&^StatusNeedsReset | old&StatusNeedsReset
	s.Status = v
	if v&^old&StatusDriverOK != 0 && !t.broken {
		if v&StatusFeaturesOK == 0 {
			t.fail(errors.New("the driver set DRIVER_OK without FEATURES_OK"))
			return
		}
		if err := t.dev.Activate(s.DrvFeatures); err != nil {
			t.fail(fmt.Errorf("activate: %w", err))
			return
		}
		t.active = true
		t.bindDoorbells()
		if err := t.startOffload(); err != nil {
			t.fail(err)
			return
		}
		// Buffers made available before DRIVER_OK are served now.
		for i := range t.kicks {
			t.kick(i)
		}
	}
}

// enableQueue maps queue i's rings. Called with mu held.
func (t *PCI) enableQueue(i int) {
	qc := &t.s.Queues[i]
	q, err := t.newQueue(i, *qc)
	if err != nil {
		t.fail(err)
		return
	}
	qc.Ready = true
	t.queues[i] = q
}

// reset returns the transport and device to their initial state once no
// chain is in flight. Called with mu held.
func (t *PCI) reset() {
	if err := t.stopOffload(false); err != nil {
		t.log.Error("virtio: reset", "device", t.dev.Name(), "err", err)
	}
	t.active = false
	t.unkeep(false)
	for t.busy > 0 {
		t.cond.Wait()
	}
	t.dev.Reset()
	t.unbindDoorbells()
	t.broken = false
	t.isr = 0
	t.updateINTx()
	t.resetRegs()
	clear(t.queues)
}

// fail puts the device into DEVICE_NEEDS_RESET: it serves nothing more
// until the driver resets it, and the driver hears of it through the
// configuration-change interrupt. Called with mu held.
func (t *PCI) fail(err error) { t.failFrom(err, false) }

// failServing is fail for a fault a queue's server goroutine found. That
// goroutine's thread may be confined to its device's own calls
// (PCIConfig.QueueThread), which stopping a kernel backend (vhost's
// requests) is not: the backend is then stopped by a goroutine of its
// own, just after. Called with mu held.
func (t *PCI) failServing(err error) { t.failFrom(err, t.queueThread != nil) }

func (t *PCI) failFrom(err error, confined bool) {
	if t.broken {
		return
	}
	t.log.Error("virtio: the driver broke the device's rules; the device needs a reset", "device", t.dev.Name(), "err", err)
	t.broken = true
	if confined && t.off != nil && t.off.running {
		go t.stopBroken()
	} else if err := t.stopOffload(true); err != nil {
		t.log.Error("virtio: stop the backend of a device that needs a reset", "device", t.dev.Name(), "err", err)
	}
	t.s.Status |= StatusNeedsReset
	t.s.ConfigGen++
	t.isr |= 2
	t.updateINTx()
	if v := t.s.ConfigVector; v != NoVector {
		if err := t.msix.Trigger(int(v)); err != nil {
			t.log.Error("virtio: configuration interrupt", "device", t.dev.Name(), "err", err)
		}
	}
}

// stopBroken stops the backend of a device that needs a reset, unless a
// reset came first (a pause or Close stops it themselves).
func (t *PCI) stopBroken() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.broken {
		return
	}
	if err := t.stopOffload(true); err != nil {
		t.log.Error("virtio: stop the backend of a device that needs a reset", "device", t.dev.Name(), "err", err)
	}
}

func (t *PCI) kick(q int) {
	if t.offloaded(q) {
		// The backend polls the doorbell's eventfd.
		if err := t.off.kick[q].Signal(); err != nil {
			t.log.Error("virtio: kick the backend", "device", t.dev.Name(), "queue", q, "err", err)
		}
		return
	}
	select {
	case t.kicks[q] <- struct{}{}:
	default:
	}
}

// serve is queue q's server goroutine.
func (t *PCI) serve(q int) {
	confined := t.queueThread == nil
	for {
		select {
		case <-t.done:
			return
		case <-t.kicks[q]:
		}
		if !confined {
			runtime.LockOSThread()
			if confined = t.queueThread(q); !confined {
				runtime.UnlockOSThread()
			}
		}
		t.service(q)
	}
}

// service pops and hands to the device every chain queue q has.
func (t *PCI) service(qi int) {
	t.mu.Lock()
	for t.paused {
		t.cond.Wait()
	}
	if !t.active || t.broken || t.queues == nil || t.queues[qi] == nil || t.offloaded(qi) {
		t.mu.Unlock()
		return
	}
	q := t.queues[qi]
	t.busy++
	t.serving++
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.serving--
		t.mu.Unlock()
		t.release()
	}()
	for {
		c, err := q.Pop(t.mem)
		if err != nil {
			t.mu.Lock()
			t.failServing(err)
			t.mu.Unlock()
			return
		}
		if c == nil {
			return
		}
		t.mu.Lock()
		if !t.active || t.broken {
			t.mu.Unlock()
			return
		}
		t.busy++
		t.mu.Unlock()
		var once sync.Once
		head, writable := c.Head, c.Writable
		done := func(written uint32) {
			once.Do(func() {
				t.markWritten(writable)
				t.complete(q, head, written)
			})
		}
		if err := t.dev.Handle(qi, c, done); err != nil {
			// The device may have written part of the chain before it
			// found the fault.
			t.markWritten(writable)
			t.mu.Lock()
			t.failServing(&QueueError{qi, err})
			t.mu.Unlock()
			t.release()
			return
		}
	}
}

// unkeep takes back the chains a Keeper device keeps, once no handler
// runs (the caller stopped new ones: paused, inactive or closed), and
// with rewind gives them back to their queues. Called with mu held; the
// device is called without it, since it completes chains with its own
// lock held no more than the transport calls it with mu held.
func (t *PCI) unkeep(rewind bool) {
	k, ok := t.dev.(Keeper)
	if !ok {
		return
	}
	for t.serving > 0 {
		t.cond.Wait()
	}
	t.mu.Unlock()
	ns := make([]int, len(t.qmax))
	for i := range ns {
		ns[i] = k.Unkeep(i)
	}
	t.mu.Lock()
	for i, n := range ns {
		if n == 0 {
			continue
		}
		t.busy -= n
		if rewind && t.queues[i] != nil {
			t.queues[i].Unpop(n)
		}
	}
	t.cond.Broadcast()
}

func (t *PCI) release() {
	t.mu.Lock()
	t.busy--
	t.cond.Broadcast()
	t.mu.Unlock()
}

// markWritten marks a chain's device-writable buffers dirty for the
// VMM's dirty log (live migration), all of them: a device may write more
// than the length it reports. Devices write guest memory only through
// the chains the transport hands them, so this and the queue's own
// used-ring writes are every write the VMM makes on a device's behalf.
// It runs before the chain is pushed, after the device's writes.
func (t *PCI) markWritten(bs []Buffer) {
	for _, b := range bs {
		t.mem.MarkDirty(b.GPA, uint64(len(b.Bytes)))
	}
}

// complete returns a chain to the driver and interrupts it if it asked.
func (t *PCI) complete(q *Queue, head uint16, written uint32) {
	defer t.release()
	if written&More != 0 {
		// One of a batch (More): the driver sees it with the last.
		q.PushHeld(head, written&^More)
		return
	}
	q.Push(head, written)
	if !q.NeedInterrupt() {
		return
	}
	t.mu.Lock()
	v := t.s.Queues[q.Index()].MSIXVector
	if !t.msix.Enabled() {
		t.isr |= 1
		t.updateINTx()
	}
	t.mu.Unlock()
	if v != NoVector {
		if err := t.msix.Trigger(int(v)); err != nil {
			t.log.Error("virtio: queue interrupt", "device", t.dev.Name(), "queue", q.Index(), "err", err)
		}
	}
}

// configWritten follows the guest's configuration-space writes: a moved
// or disabled BAR 0 moves or drops the doorbells; MSI-X Enable and
// Interrupt Disable move the INTx line.
func (t *PCI) configWritten(off, size int) {
	t.cfgWindowWritten(off, size)
	if t.intx != nil {
		t.mu.Lock()
		t.intxConfigWritten()
		t.mu.Unlock()
	}
	if off < pci.RegBAR0+8 && off+size > pci.RegCommand {
		t.mu.Lock()
		if t.active {
			t.bindDoorbells()
		}
		t.mu.Unlock()
	}
}

// bindDoorbells binds one MMIO ioeventfd per queue at its notify address
// (2-byte writes, as drivers ring them) where BAR 0 decodes now. A
// doorbell that cannot be bound still works through the MMIO exit.
// Called with mu held.
func (t *PCI) bindDoorbells() {
	base, ok := t.fn.BARAddress(0)
	if !ok || t.fn.Command()&pci.CmdMemory == 0 {
		base = 0
	}
	if base == t.ioBase && len(t.ioevs) > 0 {
		return
	}
	t.unbindDoorbells()
	if base == 0 {
		return
	}
	for i := range t.qmax {
		addr := base + notifyOff + uint64(i)*notifyMult
		if t.offloaded(i) {
			// The backend's kick: the same eventfd wherever the
			// doorbell moves, and never served here.
			e, err := t.router.AssignIOEventFD(t.off.kick[i], addr, 2, false, nil)
			if err != nil {
				t.log.Warn("virtio: doorbell through MMIO exits (the transport signals the backend's kick)", "device", t.dev.Name(), "queue", i, "err", err)
				continue
			}
			t.ioevs = append(t.ioevs, e)
			continue
		}
		e, err := t.router.NewIOEventFD(addr, 2, false, nil)
		if err != nil {
			t.log.Warn("virtio: doorbell through MMIO exits", "device", t.dev.Name(), "queue", i, "err", err)
			continue
		}
		t.ioevs = append(t.ioevs, e)
		ev, q := e.EventFD(), i
		ev.Serve(func(uint64) { t.kick(q) })
	}
	t.ioBase = base
}

// unbindDoorbells drops the ioeventfds. Called with mu held.
func (t *PCI) unbindDoorbells() {
	for _, e := range t.ioevs {
		if err := e.Close(); err != nil {
			t.log.Warn("virtio: unbind doorbell", "device", t.dev.Name(), "err", err)
		}
	}
	t.ioevs, t.ioBase = nil, 0
}

// Pause stops serving queues and waits until no chain is in flight, so
// guest memory and the queues' positions are consistent for a snapshot.
func (t *PCI) Pause() {
	t.mu.Lock()
	t.paused = true
	if err := t.stopOffload(true); err != nil {
		t.fail(err)
	}
	t.unkeep(true)
	for t.busy > 0 {
		t.cond.Wait()
	}
	t.mu.Unlock()
}

// Resume serves queues again, and looks at each for buffers that arrived
// while paused.
func (t *PCI) Resume() {
	t.mu.Lock()
	t.paused = false
	t.cond.Broadcast()
	if err := t.startOffload(); err != nil {
		t.fail(err)
	}
	active := t.active
	t.mu.Unlock()
	if active {
		for i := range t.kicks {
			t.kick(i)
		}
	}
}

// PCIState is the transport's state for snapshots (the function's
// configuration space is saved with the bus).
type PCIState struct {
	Device string        `json:"device"`
	Regs   pciRegs       `json:"regs"`
	Queues []QueueState  `json:"queues"`
	ISR    uint8         `json:"isr"`
	Broken bool          `json:"needs_reset"`
	MSIX   pci.MSIXState `json:"msix"`
	// INTx is whether the function's INTx line was asserted (it is
	// asserted again once the restored vCPUs run).
	INTx bool `json:"intx_asserted,omitempty"`
	// DeviceState is a StateSaver device's own state.
	DeviceState json.RawMessage `json:"device_state,omitempty"`
}

// Save returns the state; the transport must be paused.
func (t *PCI) Save() PCIState {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := PCIState{Device: t.Describe(), Regs: t.s, ISR: t.isr, Broken: t.broken, MSIX: t.msix.Save()}
	if t.intx != nil {
		s.INTx = t.intx.asserted
	}
	if ss, ok := t.dev.(StateSaver); ok {
		s.DeviceState = ss.SaveState()
	}
	s.Regs.Queues = append([]QueueConfig(nil), t.s.Queues...)
	for _, q := range t.queues {
		var qs QueueState
		if q != nil {
			qs = q.Save()
		}
		s.Queues = append(s.Queues, qs)
	}
	return s
}

// Restore loads a saved state into a transport that has not run, after
// the PCI bus's configuration space was restored: the device must be
// configured as it was when saved. Queues are served from Start on.
func (t *PCI) Restore(s PCIState) error {
	if s.Device != t.Describe() {
		return fmt.Errorf("%s: the snapshot's device is %q, this machine's %q", t.dev.Name(), s.Device, t.Describe())
	}
	if s.Regs.DrvFeatures&FRingPacked != 0 && !t.packed {
		return fmt.Errorf("%s: the snapshot's driver uses packed rings, which this device does not offer", t.dev.Name())
	}
	if len(s.Regs.Queues) != len(t.qmax) || len(s.Queues) != len(t.qmax) {
		return fmt.Errorf("%s: the snapshot has %d queues, the device %d", t.dev.Name(), len(s.Regs.Queues), len(t.qmax))
	}
	if err := t.msix.Restore(s.MSIX); err != nil {
		return fmt.Errorf("%s: %w", t.dev.Name(), err)
	}
	if ss, ok := t.dev.(StateSaver); ok {
		if err := ss.RestoreState(s.DeviceState); err != nil {
			return fmt.Errorf("%s: %w", t.dev.Name(), err)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s = s.Regs
	t.s.Queues = append([]QueueConfig(nil), s.Regs.Queues...)
	t.isr, t.broken = s.ISR, s.Broken
	if x := t.intx; x != nil {
		x.msix, x.asserted, x.live = t.msix.Enabled(), false, false
		t.fn.SetINTxStatus(!x.msix && t.isr != 0)
		if s.INTx && !t.intxWanted() {
			return fmt.Errorf("%s: the snapshot has the INTx line asserted, but its ISR (%#x), MSI-X Enable (%v) and Interrupt Disable (%v) say it cannot be",
				t.dev.Name(), t.isr, x.msix, t.fn.Command()&pci.CmdINTxDisable != 0)
		}
	} else if s.INTx {
		return fmt.Errorf("%s: the snapshot has the INTx line asserted; this machine's function has no INTx", t.dev.Name())
	}
	for i, qc := range t.s.Queues {
		if qc.MSIXVector != NoVector && int(qc.MSIXVector) >= t.msix.Vectors() {
			return fmt.Errorf("%s: queue %d uses MSI-X vector %d, past the table", t.dev.Name(), i, qc.MSIXVector)
		}
		if !qc.Ready {
			continue
		}
		q, err := t.newQueue(i, qc)
		if err != nil {
			return fmt.Errorf("%s: %w", t.dev.Name(), err)
		}
		if err := q.Restore(s.Queues[i]); err != nil {
			return fmt.Errorf("%s: %w", t.dev.Name(), err)
		}
		t.queues[i] = q
	}
	if t.s.Status&StatusDriverOK != 0 && !t.broken {
		if err := t.dev.Activate(t.s.DrvFeatures); err != nil {
			return fmt.Errorf("%s: activate: %w", t.dev.Name(), err)
		}
		t.active = true
		t.bindDoorbells()
		if r, ok := t.dev.(Restorer); ok {
			r.Restored()
		}
	}
	return nil
}

// Start looks at every queue for buffers the driver made available
// before a snapshot and that the device had not taken yet. Call it once
// the vCPUs run with their restored state: a request completed earlier
// would interrupt a vCPU whose LAPIC is not restored yet, and the
// interrupt would be lost.
func (t *PCI) Start() {
	t.mu.Lock()
	active := t.active
	if x := t.intx; x != nil && !x.live {
		// A line saved asserted (or an ISR that wants it) is raised
		// again.
		x.live = true
		t.updateINTx()
	}
	if err := t.startOffload(); err != nil {
		t.fail(err)
	}
	t.mu.Unlock()
	if active {
		for i := range t.kicks {
			t.kick(i)
		}
	}
}

// Close stops the transport: the server goroutines end, the doorbells and
// MSI-X vectors are released. Requests in flight finish first.
func (t *PCI) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.active = false
	t.paused = false
	t.cond.Broadcast()
	t.unkeep(false)
	for t.busy > 0 {
		t.cond.Wait()
	}
	offErr := t.stopOffload(false)
	t.unbindDoorbells()
	t.closeOffload()
	close(t.done)
	t.mu.Unlock()
	return errors.Join(offErr, t.closeINTx(), t.msix.Close())
}

// BAR is BAR 0's handler (offsets from the BAR's base), for tests and
// tools that drive the transport without a bus.
func (t *PCI) BAR() interface {
	Read(uint64, []byte)
	Write(uint64, []byte)
} {
	return barDev{t}
}
