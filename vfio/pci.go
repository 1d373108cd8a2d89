package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/irq/routes"
	"govmm/pci"
	"govmm/vfio/abi"
)

// Order is the sequence in which a VFIO device's MSI vectors are wired to
// the accelerator when the guest enables them.
type Order int

const (
	// OrderRouteFirst is QEMU's: the MSI route, commit the routing table,
	// the irqfd, then VFIO_DEVICE_SET_IRQS with the eventfds.
	OrderRouteFirst Order = iota + 1
	// OrderIRQsFirst is Cloud Hypervisor's: VFIO_DEVICE_SET_IRQS first, so
	// the device may signal the eventfds before they are irqfds; then the
	// route, commit and the irqfd, which injects what is already pending.
	OrderIRQsFirst
)

func (o Order) String() string {
	switch o {
	case OrderRouteFirst:
		return "route-first"
	case OrderIRQsFirst:
		return "irqs-first"
	}
	return fmt.Sprintf("order(%d)", int(o))
}

// ParseOrder parses "route-first" (QEMU's, alias "qemu") and "irqs-first"
// (Cloud Hypervisor's, alias "cloud-hypervisor").
func ParseOrder(s string) (Order, error) {
	switch s {
	case "route-first", "qemu":
		return OrderRouteFirst, nil
	case "irqs-first", "cloud-hypervisor":
		return OrderIRQsFirst, nil
	}
	return 0, fmt.Errorf("vfio order %q: want route-first (qemu) or irqs-first (cloud-hypervisor)", s)
}

// DefaultOrder is the order govmm uses on an accelerator: QEMU's on KVM,
// Cloud Hypervisor's on MSHV (the orders the two VMMs use on each).
func DefaultOrder(accelName string) Order {
	if accelName == "mshv" {
		return OrderIRQsFirst
	}
	return OrderRouteFirst
}

// Router is what the passthrough function needs of the VM's GSI routing
// table (*routes.Table).
type Router interface {
	Allocate() (uint32, error)
	SetMSI(gsi uint32, msi accel.MSI) error
	Commit() error
	AssignIRQFD(ev *routes.EventFD, gsi uint32, resample *routes.EventFD) (*routes.IRQFD, error)
}

// Mapper maps host memory into the guest's physical address space (the
// accelerator VM); nil traps every BAR access.
type Mapper interface {
	MapMemory(r accel.MemoryRegion) error
	UnmapMemory(gpa uint64) error
}

// PCIConfig is how a passed-through function is wired into the VM.
type PCIConfig struct {
	Router Router
	Mapper Mapper
	Order  Order
	Log    *slog.Logger
	// INTxGSI gives the IOAPIC GSI of interrupt pin 1-4 (INTA-INTD) at the
	// function's slot; nil: the guest gets no INTx.
	INTxGSI func(pin int) uint32
}

// PCI capability IDs govmm looks at.
const (
	capPM     = 0x01
	capMSI    = 0x05
	capVendor = 0x09
	capPCIe   = 0x10
	capMSIX   = 0x11

	msiCtlEnable = 1 << 0
	msiCtl64     = 1 << 7
	msiCtlPVM    = 1 << 8

	// cmdPassed are the command bits the device itself must see.
	cmdPassed = pci.CmdIO | pci.CmdMemory | pci.CmdBusMaster
)

type barInfo struct {
	kind pci.BARKind
	size uint64
	host []byte // the BAR mmap'ed (nil: trapped)
	gpa  uint64 // where host is mapped in the guest (0: not mapped)
	// pieces are the guest addresses of the regions mapped for the BAR
	// (one, or several around trapped MSI-X pages).
	pieces []uint64
}

// PCI is a VFIO device as a function on govmm's PCI bus. Its configuration
// space is govmm's (pci.Function): the identity, class and BAR types come
// from the device, BARs are placed and moved by govmm and the guest, the
// command register's decode and bus-master bits are forwarded, MSI is
// emulated and wired to the device's VFIO MSI eventfds through irqfds,
// and power management and PCI Express capabilities are shown read-only.
// BARs the kernel lets userspace mmap are mapped into the guest; the rest
// are trapped and forwarded with pread/pwrite.
type PCI struct {
	dev device
	fn  *pci.Function
	cfg PCIConfig
	log *slog.Logger

	mu     sync.Mutex
	bars   [pci.NumBARs]barInfo
	msi    *msiState
	msix   *msixState
	intx   *intxState
	closed bool
	// preCopied counts the device data PreCopyData gave since
	// StartPreCopy, which SaveMigration reports (MigrationState.PreCopy).
	preCopied uint64
}

// intxState is the device's INTx line: VFIO signals trigger when the line
// asserts (and masks it), govmm's IOAPIC takes it as a level input on
// the pin's GSI, and the guest's EOI signals unmask, with which VFIO
// unmasks the line (and signals again if it is still asserted).
type intxState struct {
	gsi             uint32
	trigger, unmask *routes.EventFD
	irqfd           *routes.IRQFD
	// served: govmm reads unmask itself and unmasks the line with an
	// ioctl, for a driver that takes no unmask eventfd (mdev.go).
	served bool
}

// device is what PCI needs of a VFIO device (*Device; a fake in tests).
type device interface {
	Name() string
	CanReset() bool
	Reset() error
	Region(i int) abi.Region
	ReadRegion(i int, off uint64, b []byte) error
	WriteRegion(i int, off uint64, b []byte) error
	Mmap(i int, off, size uint64) ([]byte, error)
	SetIRQEventFDs(index uint32, fds []int32) error
	SetIRQUnmaskEventFD(index uint32, fd int32) error
	DisableIRQs(index uint32) error
	Close() error
}

// NewPCI builds the guest-visible function for d. The device is reset
// first (when the kernel can reset it), so the guest finds it as after
// power-on.
func NewPCI(d *Device, c PCIConfig) (*PCI, error) { return newPCI(d, c) }

func newPCI(d device, c PCIConfig) (*PCI, error) {
	if c.Router == nil {
		return nil, errors.New("vfio: no MSI router")
	}
	if c.Order == 0 {
		c.Order = OrderRouteFirst
	}
	p := &PCI{dev: d, cfg: c, log: c.Log}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("vfio", d.Name())
	if d.CanReset() {
		if err := d.Reset(); err != nil {
			return nil, err
		}
	} else {
		p.log.Warn("vfio: the device has no reset method; the guest finds it as the last user left it")
	}
	var cfg [pci.ConfigSize]byte
	// A mediated device's configuration region may be shorter than 256
	// bytes (mtty's is 255); what it lacks reads as zero.
	if err := d.ReadRegion(abi.PCIConfigRegion, 0, cfg[:min(uint64(len(cfg)), d.Region(abi.PCIConfigRegion).Size)]); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if ht := cfg[pci.RegHeaderType] & 0x7f; ht != 0 {
		return nil, fmt.Errorf("vfio device %s: header type %d (a bridge?); only endpoints (type 0) can be passed through", d.Name(), ht)
	}
	pin := cfg[pci.RegInterruptPin]
	if pin > 4 || c.INTxGSI == nil {
		pin = 0
	}
	p.fn = pci.NewFunction(pci.Identity{
		Vendor: le.Uint16(cfg[pci.RegVendorID:]), Device: le.Uint16(cfg[pci.RegDeviceID:]),
		Revision: cfg[pci.RegRevision], ProgIF: cfg[pci.RegClass], Subclass: cfg[pci.RegClass+1], Class: cfg[pci.RegClass+2],
		SubsystemVendor: le.Uint16(cfg[pci.RegSubsysVendor:]), SubsystemID: le.Uint16(cfg[pci.RegSubsysID:]),
		InterruptPin: pin,
	})
	if pin != 0 {
		p.intx = &intxState{gsi: c.INTxGSI(int(pin))}
		var err error
		if p.intx.trigger, err = routes.NewEventFD(); err == nil {
			p.intx.unmask, err = routes.NewEventFD()
		}
		if err != nil {
			p.closeINTxFDs()
			return nil, fmt.Errorf("vfio device %s: INTx eventfds: %w", d.Name(), err)
		}
		p.fn.WriteConfig(pci.RegInterruptLine, []byte{byte(p.intx.gsi)})
	}
	if err := p.addBARs(cfg[:]); err != nil {
		p.unmapHost()
		return nil, err
	}
	if err := p.addROM(); err != nil {
		p.unmapHost()
		return nil, err
	}
	if err := p.addCaps(cfg[:]); err != nil {
		p.unmapHost()
		return nil, err
	}
	p.fn.OnWrite = p.onWrite
	if p.msi != nil && p.msi.pvm {
		p.fn.OnRead = p.onRead
	}
	return p, nil
}

// Function is the function to add to the bus (pci.Root.Add); call Start
// after adding it.
func (p *PCI) Function() *pci.Function { return p.fn }

// Name is the device's PCI address on the host.
func (p *PCI) Name() string { return p.dev.Name() }

func (p *PCI) addBARs(cfg []byte) error {
	le := binary.LittleEndian
	for i := 0; i < pci.NumBARs; i++ {
		r := p.dev.Region(abi.PCIBAR0Region + i)
		if r.Size == 0 {
			continue
		}
		reg := le.Uint32(cfg[pci.RegBAR0+4*i:])
		b := pci.BAR{Size: r.Size, Dev: barDev{p, i}}
		switch {
		case reg&1 != 0:
			b.Kind = pci.BARIO
		case reg&6 == 4:
			b.Kind = pci.BARMem64
		default:
			b.Kind = pci.BARMem32
		}
		b.Prefetchable = b.Kind != pci.BARIO && reg&8 != 0
		if b.Size&(b.Size-1) != 0 {
			return fmt.Errorf("vfio device %s: BAR %d is %#x bytes, not a power of two", p.dev.Name(), i, b.Size)
		}
		if b.Kind != pci.BARIO && b.Size < 16 {
			b.Size = 16
		}
		if err := p.fn.SetBAR(i, b); err != nil {
			return fmt.Errorf("vfio device %s: %w", p.dev.Name(), err)
		}
		p.bars[i] = barInfo{kind: b.Kind, size: r.Size}
		if b.Kind != pci.BARIO && r.Flags&abi.RegionFlagMmap != 0 && r.Size >= uint64(unix.Getpagesize()) && r.Sparse == nil {
			if host, err := p.dev.Mmap(abi.PCIBAR0Region+i, 0, r.Size); err == nil {
				p.bars[i].host = host
			} else {
				p.log.Info("vfio: BAR is trapped, not mapped", "bar", i, "err", err)
			}
		}
		if b.Kind == pci.BARMem64 {
			i++
		}
	}
	return nil
}

// addROM gives the guest the device's expansion ROM, when VFIO offers
// one (region 6), as an expansion ROM BAR whose reads are forwarded to the
// region with pread: a ROM is read a few times (a driver fetching its
// firmware tables, the guest's sysfs rom file), never in a hot path.
func (p *PCI) addROM() error {
	r := p.dev.Region(abi.PCIROMRegion)
	if r.Size == 0 || r.Flags&abi.RegionFlagRead == 0 {
		return nil
	}
	size := uint64(2 << 10)
	for size < r.Size {
		size <<= 1
	}
	if err := p.fn.SetROM(size, romDev{p, r.Size}); err != nil {
		return fmt.Errorf("vfio device %s: expansion ROM of %#x bytes: %w", p.dev.Name(), r.Size, err)
	}
	return nil
}

// romDev answers the guest's reads of the expansion ROM; what lies past
// the region (a ROM BAR rounded up) reads as all ones, and writes are
// ignored (a ROM).
type romDev struct {
	p    *PCI
	size uint64
}

func (d romDev) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if off >= d.size {
		return
	}
	n := min(uint64(len(data)), d.size-off)
	if err := d.p.dev.ReadRegion(abi.PCIROMRegion, off, data[:n]); err != nil {
		d.p.log.Warn("vfio: guest read of the expansion ROM failed", "offset", fmt.Sprintf("%#x", off), "len", n, "err", err)
	}
}

func (romDev) Write(uint64, []byte) {}

// capLen is how much of a capability govmm copies: the power management
// capability, the PCI Express capability structure (v1 or v2), and a
// vendor-specific capability as long as its length byte says (a virtio
// 1.x device finds its configuration structures through them).
func capLen(cfg []byte, off int) int {
	switch cfg[off] {
	case capPM:
		return 8
	case capVendor:
		if n := int(cfg[off+2]); n >= 3 {
			return n
		}
		return 0
	case capPCIe:
		if cfg[off+2]&0xf >= 2 {
			return 0x3c
		}
		return 0x24
	}
	return 0
}

func (p *PCI) addCaps(cfg []byte) error {
	le := binary.LittleEndian
	if le.Uint16(cfg[pci.RegStatus:])&pci.StatusCapList == 0 {
		return nil
	}
	seen := map[int]bool{}
	for off := int(cfg[pci.RegCapPtr]) &^ 3; off >= 0x40 && off < pci.ConfigSize-1 && !seen[off]; off = int(cfg[off+1]) &^ 3 {
		seen[off] = true
		switch id := cfg[off]; id {
		case capMSI:
			if err := p.addMSI(cfg, off); err != nil {
				return err
			}
		case capMSIX:
			if err := p.addMSIX(cfg, off); err != nil {
				return err
			}
		default:
			n := capLen(cfg, off)
			if n == 0 || off+n > pci.ConfigSize {
				p.log.Debug("vfio: capability hidden from the guest", "id", fmt.Sprintf("%#x", id), "offset", fmt.Sprintf("%#x", off))
				continue
			}
			if _, err := p.fn.AddCapability(id, append([]byte(nil), cfg[off+2:off+n]...), nil); err != nil {
				if id == capVendor {
					p.log.Warn("vfio: a vendor-specific capability is hidden from the guest: no room left for it", "offset", fmt.Sprintf("%#x", off), "err", err)
					continue
				}
				return fmt.Errorf("vfio device %s: capability %#x: %w", p.dev.Name(), id, err)
			}
		}
	}
	return nil
}

// Start forwards the command register govmm set when it placed the BARs
// and maps the BARs into the guest. Call it after the function is on the
// bus.
func (p *PCI) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.syncCommand(); err != nil {
		return err
	}
	p.remapBARs()
	// A restored function may have MSI or MSI-X on already
	// (LoadMigration), and VFIO takes one interrupt type at a time.
	if p.intx != nil && (p.msi == nil || !p.msi.on) && (p.msix == nil || !p.msix.on) {
		if err := p.intxEnable(); err != nil {
			return err
		}
	}
	return nil
}

// intxEnable wires the INTx line: the resample irqfd on the pin, then
// VFIO's trigger and unmask eventfds. Called with mu held.
func (p *PCI) intxEnable() error {
	x := p.intx
	if x.irqfd != nil {
		return nil
	}
	f, err := p.cfg.Router.AssignIRQFD(x.trigger, x.gsi, x.unmask)
	if err != nil {
		return fmt.Errorf("vfio device %s: INTx on GSI %d: %w", p.dev.Name(), x.gsi, err)
	}
	x.irqfd = f
	if err := p.dev.SetIRQEventFDs(abi.PCIINTxIRQ, []int32{int32(x.trigger.FD())}); err != nil {
		p.intxDisable()
		return err
	}
	if err := p.dev.SetIRQUnmaskEventFD(abi.PCIINTxIRQ, int32(x.unmask.FD())); err != nil {
		if u, ok := p.dev.(irqUnmasker); ok && errors.Is(err, unix.ENOTTY) {
			p.serveINTxUnmask(u)
			return nil
		}
		p.intxDisable()
		return err
	}
	return nil
}

// intxDisable turns the device's INTx off (VFIO allows one interrupt
// type at a time) and unbinds the irqfd. Called with mu held.
func (p *PCI) intxDisable() {
	x := p.intx
	if x == nil || x.irqfd == nil {
		return
	}
	if err := p.dev.DisableIRQs(abi.PCIINTxIRQ); err != nil {
		p.log.Error("vfio: disable INTx", "err", err)
	}
	if err := x.irqfd.Close(); err != nil {
		p.log.Error("vfio: deassign INTx irqfd", "err", err)
	}
	x.irqfd = nil
	x.trigger.TryRead()
}

func (p *PCI) closeINTxFDs() {
	if x := p.intx; x != nil {
		if x.trigger != nil {
			x.trigger.Close()
		}
		if x.unmask != nil {
			x.unmask.Close()
		}
	}
}

func overlaps(off, size, start, n int) bool { return off < start+n && off+size > start }

// onWrite runs after every guest configuration write.
func (p *PCI) onWrite(off, size int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if overlaps(off, size, pci.RegCommand, 2) || overlaps(off, size, pci.RegBAR0, 4*pci.NumBARs) {
		if err := p.syncCommand(); err != nil {
			p.log.Error("vfio: the guest wrote the command register; forwarding it failed", "err", err)
		}
		p.remapBARs()
	}
	if p.msi != nil && overlaps(off, size, p.msi.cap, p.msi.size()) {
		p.msiUpdate()
	}
	if p.msix != nil && overlaps(off, size, p.msix.cap+2, 2) {
		p.msixControl()
	}
}

// syncCommand forwards the guest's I/O, memory and bus-master enables to
// the device. Called with mu held.
func (p *PCI) syncCommand() error {
	var b [2]byte
	if err := p.dev.ReadRegion(abi.PCIConfigRegion, pci.RegCommand, b[:]); err != nil {
		return err
	}
	le := binary.LittleEndian
	cur := le.Uint16(b[:])
	want := cur&^cmdPassed | p.fn.Command()&cmdPassed
	if want == cur {
		return nil
	}
	le.PutUint16(b[:], want)
	return p.dev.WriteRegion(abi.PCIConfigRegion, pci.RegCommand, b[:])
}

// remapBARs puts the mmap'ed BARs where the guest decodes them now and
// takes them out of the guest where it does not. Called with mu held.
func (p *PCI) remapBARs() {
	if p.cfg.Mapper == nil {
		return
	}
	where := map[int]uint64{}
	for _, r := range p.fn.Regions() {
		if r.Space == pci.SpaceMemory {
			where[r.BAR] = r.Base
		}
	}
	page := uint64(unix.Getpagesize())
	for i := range p.bars {
		b := &p.bars[i]
		if b.host == nil {
			continue
		}
		gpa := where[i]
		if gpa%page != 0 {
			gpa = 0 // unaligned: trapped
		}
		if gpa == b.gpa {
			continue
		}
		p.unmapBAR(i)
		if gpa != 0 {
			if err := p.mapBAR(i, gpa); err != nil {
				p.unmapBAR(i)
				p.log.Warn("vfio: the guest placed a BAR where it cannot be mapped; its accesses are trapped", "bar", i, "gpa", fmt.Sprintf("%#x", gpa), "err", err)
				continue
			}
			p.log.Info("vfio: BAR mapped into the guest", "bar", i, "gpa", fmt.Sprintf("%#x", gpa), "size", b.size, "pieces", len(b.pieces))
		}
	}
}

// mapBAR maps BAR i at gpa, leaving out the trapped MSI-X pages. Called
// with mu held.
func (p *PCI) mapBAR(i int, gpa uint64) error {
	b := &p.bars[i]
	b.gpa = gpa
	start := uint64(0)
	for _, t := range append(p.msixTrapped(i), [2]uint64{b.size, b.size}) {
		if t[0] > start {
			if err := p.cfg.Mapper.MapMemory(accel.MemoryRegion{GPA: gpa + start, Host: b.host[start:t[0]]}); err != nil {
				return err
			}
			b.pieces = append(b.pieces, gpa+start)
		}
		start = max(start, t[1])
	}
	return nil
}

// unmapBAR takes BAR i out of the guest. Called with mu held.
func (p *PCI) unmapBAR(i int) {
	b := &p.bars[i]
	for _, g := range b.pieces {
		if err := p.cfg.Mapper.UnmapMemory(g); err != nil {
			p.log.Error("vfio: unmap BAR from the guest", "bar", i, "gpa", fmt.Sprintf("%#x", g), "err", err)
		}
	}
	b.pieces, b.gpa = nil, 0
}

// MappedBARs returns the BARs mapped into the guest now (BAR number to
// guest address), for tests and diagnostics.
func (p *PCI) MappedBARs() map[int]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int]uint64{}
	for i, b := range p.bars {
		if b.gpa != 0 {
			out[i] = b.gpa
		}
	}
	return out
}

func (p *PCI) unmapHost() {
	for i := range p.bars {
		if p.bars[i].host != nil {
			unix.Munmap(p.bars[i].host)
			p.bars[i].host = nil
		}
	}
}

// Close turns the device's interrupts off, takes its BARs out of the
// guest, resets it (so it stops DMA before the guest's memory goes) and
// closes it.
func (p *PCI) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	if p.msi != nil {
		if p.msi.on {
			p.msiDisable()
		}
		p.msi.close()
	}
	p.intxDisable()
	p.closeINTxFDs()
	p.msixClose()
	for i := range p.bars {
		if p.cfg.Mapper != nil {
			p.unmapBAR(i)
		}
	}
	p.unmapHost()
	if p.dev.CanReset() {
		if err := p.dev.Reset(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, p.dev.Close())
	return errors.Join(errs...)
}

// barDev answers the guest's trapped accesses to BAR i by reading and
// writing the device's region.
type barDev struct {
	p *PCI
	i int
}

func (d barDev) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if !d.inRange(off, len(data)) || d.p.msixAccess(d.i, off, data, false) {
		return
	}
	if err := d.p.dev.ReadRegion(abi.PCIBAR0Region+d.i, off, data); err != nil {
		d.p.log.Warn("vfio: guest read of a BAR failed", "bar", d.i, "offset", fmt.Sprintf("%#x", off), "len", len(data), "err", err)
	}
}

func (d barDev) Write(off uint64, data []byte) {
	if !d.inRange(off, len(data)) || d.p.msixAccess(d.i, off, data, true) {
		return
	}
	if err := d.p.dev.WriteRegion(abi.PCIBAR0Region+d.i, off, data); err != nil {
		d.p.log.Warn("vfio: guest write to a BAR failed", "bar", d.i, "offset", fmt.Sprintf("%#x", off), "len", len(data), "err", err)
	}
}

func (d barDev) inRange(off uint64, n int) bool {
	size := d.p.bars[d.i].size
	return off < size && uint64(n) <= size-off
}
