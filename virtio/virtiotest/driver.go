// Package virtiotest is a virtio driver written the way Linux's virtio_pci
// and virtio_ring drive a device, over fake guest memory and a fake
// accelerator, so the transport and the devices are tested without a
// guest. It is used by tests only.
package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/irq/routes"
	"govmm/memory"
	"govmm/pci"
	"govmm/virtio"
)

// Mem is guest RAM at GPA 0. With RAM set (NewMem), B is RAM's first
// region and the device's writes are marked in RAM's dirty log.
type Mem struct {
	B   []byte
	RAM *memory.Memory
}

// NewMem is size bytes of guest RAM (below the MMIO hole) that a
// memory.Memory backs, for tests of the VMM's dirty log.
func NewMem(size uint64) (*Mem, error) {
	m, err := memory.New(size)
	if err != nil {
		return nil, err
	}
	return &Mem{B: m.Regions()[0].Host, RAM: m}, nil
}

// RAM is size bytes of guest RAM mapped as the VMM maps it (outside the Go
// heap), released when the test ends. Use it rather than a Go slice: the
// device reads rings the test driver writes from another goroutine, as a
// device reads what a guest writes, and the race detector, which does not
// watch memory outside the Go heap, then sees what it sees in the VMM.
func RAM(tb testing.TB, size uint64) *Mem {
	tb.Helper()
	m, err := NewMem(size)
	if err != nil {
		tb.Fatalf("guest RAM: %v", err)
	}
	tb.Cleanup(func() { m.RAM.Close() })
	return m
}

// MarkDirty implements virtio.Memory.
func (m *Mem) MarkDirty(gpa, n uint64) {
	if m.RAM != nil {
		m.RAM.MarkDirty(gpa, n)
	}
}

// Slice implements virtio.Memory.
func (m *Mem) Slice(gpa, n uint64) ([]byte, error) {
	if gpa > uint64(len(m.B)) || n > uint64(len(m.B))-gpa {
		return nil, fmt.Errorf("[%#x, +%#x) is not RAM", gpa, n)
	}
	return m.B[gpa : gpa+n : gpa+n], nil
}

// VM is the accelerator as the routing table sees it.
type VM struct {
	accel.VM
	mu       sync.Mutex
	Routes   map[uint32]accel.Route
	IRQFDs   map[int]accel.IRQFD
	IOEvents map[int]accel.IOEventFD
	// NoIOEventFD makes doorbells fall back to MMIO exits.
	NoIOEventFD bool
}

func (v *VM) SetGSIRouting(rs []accel.Route) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.Routes = map[uint32]accel.Route{}
	for _, r := range rs {
		v.Routes[r.GSI] = r
	}
	return nil
}
func (v *VM) AssignIRQFD(f accel.IRQFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.IRQFDs[f.FD] = f
	return nil
}
func (v *VM) DeassignIRQFD(f accel.IRQFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.IRQFDs, f.FD)
	return nil
}
func (v *VM) AssignIOEventFD(e accel.IOEventFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.NoIOEventFD {
		return accel.ErrNotSupported
	}
	v.IOEvents[e.FD] = e
	return nil
}
func (v *VM) DeassignIOEventFD(e accel.IOEventFD) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.IOEvents, e.FD)
	return nil
}

// NewVM returns a fake accelerator and a routing table over it.
func NewVM() (*VM, *routes.Table) {
	v := &VM{Routes: map[uint32]accel.Route{}, IRQFDs: map[int]accel.IRQFD{}, IOEvents: map[int]accel.IOEventFD{}}
	return v, routes.New(v, nil)
}

// Layout of the driver's rings in Mem.
const (
	ringBase  = 0x10000
	ringSpan  = 0x10000 // per queue
	BufBase   = 0x100000
	BARBase   = 0xc0000000
	MSIXData0 = 0x40
)

// Driver drives one transport.
type Driver struct {
	T     *virtio.PCI
	Mem   *Mem
	VM    *VM
	Size  uint16
	Feats uint64
	bar   interface {
		Read(uint64, []byte)
		Write(uint64, []byte)
	}
	caps     map[byte]uint32 // cfg_type -> offset in BAR
	notifyM  uint32
	msixCap  int
	q        []drvQueue
	NumQueue int
}

type drvQueue struct {
	desc, avail, used uint64
	size              uint16
	nextDesc          uint16
	availIdx          uint16
	usedSeen          uint16
	free              []uint16

	// A packed ring's driver side (packed.go): the next position to
	// fill and to look for a used element at, their wrap counters, the
	// free ring slots, and each buffer ID's descriptor count.
	packed    bool
	eventIdx  bool
	nextAvail uint16
	availWrap bool
	lastUsed  uint16
	usedWrap  bool
	freeSlots int
	idDescs   map[uint16]uint16
	// Kicks and Skipped count doorbells rung and not rung because the
	// device's event suppression said so.
	kicks, skipped int
}

// New finds the transport's structures the way Linux does: by walking the
// vendor capabilities.
func New(t *virtio.PCI, mem *Mem, vm *VM) (*Driver, error) {
	d := &Driver{T: t, Mem: mem, VM: vm, bar: t.BAR(), caps: map[byte]uint32{}}
	f := t.Function()
	for _, off := range f.Capabilities(0x09) {
		var b [20]byte
		f.ReadConfig(off, b[:])
		if b[4] != 0 {
			return nil, fmt.Errorf("capability at %#x points at BAR %d", off, b[4])
		}
		d.caps[b[3]] = binary.LittleEndian.Uint32(b[8:])
		if b[3] == 2 {
			d.notifyM = binary.LittleEndian.Uint32(b[16:])
		}
	}
	for _, c := range []byte{1, 2, 3, 4} {
		if _, ok := d.caps[c]; !ok {
			return nil, fmt.Errorf("no virtio capability of type %d", c)
		}
	}
	m := f.Capabilities(pci.CapIDMSIX)
	if len(m) != 1 {
		return nil, errors.New("no MSI-X capability")
	}
	d.msixCap = m[0]
	return d, nil
}

func (d *Driver) r(off uint64, n int) uint64 {
	b := make([]byte, 8)
	d.bar.Read(off, b[:n])
	return binary.LittleEndian.Uint64(b)
}

func (d *Driver) w(off uint64, n int, v uint64) {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	d.bar.Write(off, b[:n])
}

// Common reads and writes a common configuration register.
func (d *Driver) Common(off uint64, n int) uint64 { return d.r(uint64(d.caps[1])+off, n) }

// SetCommon writes a common configuration register.
func (d *Driver) SetCommon(off uint64, n int, v uint64) { d.w(uint64(d.caps[1])+off, n, v) }

// Status returns the device status.
func (d *Driver) Status() uint8 { return uint8(d.Common(0x14, 1)) }

// DeviceConfig reads n bytes of device configuration at off.
func (d *Driver) DeviceConfig(off uint64, b []byte) { d.bar.Read(uint64(d.caps[4])+off, b) }

// Init resets the device, negotiates want & offered (plus VERSION_1),
// enables MSI-X with vector i for queue i and the last vector for
// configuration changes, sets up every queue with size (0: the device's
// maximum) and sets DRIVER_OK.
func (d *Driver) Init(want uint64, size uint16) error {
	d.SetCommon(0x14, 1, 0)
	d.SetCommon(0x14, 1, 1)
	d.SetCommon(0x14, 1, 3)
	var offered uint64
	for sel := range 2 {
		d.SetCommon(0x00, 4, uint64(sel))
		offered |= d.Common(0x04, 4) << (32 * sel)
	}
	if offered&virtio.FVersion1 == 0 {
		return errors.New("device does not offer VERSION_1")
	}
	d.Feats = offered & (want | virtio.FVersion1)
	for sel := range 2 {
		d.SetCommon(0x08, 4, uint64(sel))
		d.SetCommon(0x0c, 4, d.Feats>>(32*sel)&0xffffffff)
	}
	d.SetCommon(0x14, 1, 0xb)
	if d.Status()&virtio.StatusFeaturesOK == 0 {
		return fmt.Errorf("FEATURES_OK refused for %#x", d.Feats)
	}
	// MSI-X: enable, program and unmask every vector.
	f := d.T.Function()
	var ctl [2]byte
	f.ReadConfig(d.msixCap+2, ctl[:])
	nvec := int(binary.LittleEndian.Uint16(ctl[:])&0x7ff) + 1
	var tb [4]byte
	f.ReadConfig(d.msixCap+4, tb[:])
	table := uint64(binary.LittleEndian.Uint32(tb[:]) &^ 7)
	binary.LittleEndian.PutUint16(ctl[:], 1<<15)
	f.WriteConfig(d.msixCap+2, ctl[:])
	for v := range nvec {
		d.w(table+uint64(v)*16, 4, 0xfee00000)
		d.w(table+uint64(v)*16+4, 4, 0)
		d.w(table+uint64(v)*16+8, 4, uint64(MSIXData0+v))
		d.w(table+uint64(v)*16+12, 4, 0)
	}
	d.SetCommon(0x10, 2, uint64(nvec-1))
	if d.Common(0x10, 2) != uint64(nvec-1) {
		return errors.New("configuration vector refused")
	}
	d.NumQueue = int(d.Common(0x12, 2))
	d.q = make([]drvQueue, d.NumQueue)
	for i := range d.NumQueue {
		d.SetCommon(0x16, 2, uint64(i))
		max := uint16(d.Common(0x18, 2))
		s := size
		if s == 0 || s > max {
			s = max
		}
		base := uint64(ringBase + i*ringSpan)
		q := drvQueue{desc: base, avail: base + 16*uint64(s), size: s}
		q.used = (q.avail + 6 + 2*uint64(s) + 3) &^ 3
		clear(d.Mem.B[base : base+ringSpan])
		if d.Feats&virtio.FRingPacked != 0 {
			// Descriptor ring, then the driver and device event
			// suppression areas.
			q.packed, q.eventIdx = true, d.Feats&virtio.FEventIdx != 0
			q.used = q.avail + 4
			q.availWrap, q.usedWrap = true, true
			q.freeSlots = int(s)
			q.idDescs = map[uint16]uint16{}
			if q.eventIdx {
				// As Linux: interrupts at the next used element.
				binary.LittleEndian.PutUint16(d.Mem.B[q.avail:], 1<<15)
				binary.LittleEndian.PutUint16(d.Mem.B[q.avail+2:], 2)
			}
		}
		for k := range s {
			q.free = append(q.free, k)
		}
		d.q[i] = q
		d.SetCommon(0x18, 2, uint64(s))
		d.SetCommon(0x1a, 2, uint64(i))
		d.SetCommon(0x20, 8, q.desc)
		d.SetCommon(0x28, 8, q.avail)
		d.SetCommon(0x30, 8, q.used)
		d.SetCommon(0x1c, 2, 1)
	}
	d.SetCommon(0x14, 1, 0xf)
	if d.Status()&virtio.StatusNeedsReset != 0 {
		return errors.New("device needs reset after DRIVER_OK")
	}
	return nil
}

// Seg is one buffer of a chain.
type Seg struct {
	GPA   uint64
	Len   uint32
	Write bool
}

// Put writes the chain's descriptors (direct, or in an indirect table at
// indirectAt when non-zero), makes it available and rings the doorbell.
// It returns the head.
func (d *Driver) Put(qi int, segs []Seg, indirectAt uint64) uint16 {
	q := &d.q[qi]
	if q.packed {
		return d.putPacked(qi, segs, indirectAt)
	}
	le := binary.LittleEndian
	putDesc := func(table uint64, i uint16, s Seg, next uint16, more bool) {
		b := d.Mem.B[table+16*uint64(i):]
		le.PutUint64(b, s.GPA)
		le.PutUint32(b[8:], s.Len)
		var fl uint16
		if more {
			fl |= 1
		}
		if s.Write {
			fl |= 2
		}
		le.PutUint16(b[12:], fl)
		le.PutUint16(b[14:], next)
	}
	var head uint16
	if indirectAt != 0 {
		for i, s := range segs {
			putDesc(indirectAt, uint16(i), s, uint16(i+1), i < len(segs)-1)
		}
		head = q.alloc()
		b := d.Mem.B[q.desc+16*uint64(head):]
		le.PutUint64(b, indirectAt)
		le.PutUint32(b[8:], uint32(16*len(segs)))
		le.PutUint16(b[12:], 4)
	} else {
		ids := make([]uint16, len(segs))
		for i := range segs {
			ids[i] = q.alloc()
		}
		for i, s := range segs {
			var next uint16
			if i < len(segs)-1 {
				next = ids[i+1]
			}
			putDesc(q.desc, ids[i], s, next, i < len(segs)-1)
		}
		head = ids[0]
	}
	d.Publish(qi, head)
	return head
}

func (q *drvQueue) alloc() uint16 {
	id := q.free[0]
	q.free = q.free[1:]
	return id
}

// Publish puts head into the available ring and rings the doorbell (a
// split ring's).
func (d *Driver) Publish(qi int, head uint16) {
	q := &d.q[qi]
	le := binary.LittleEndian
	le.PutUint16(d.Mem.B[q.avail+4+2*uint64(q.availIdx%q.size):], head)
	q.availIdx++
	le.PutUint16(d.Mem.B[q.avail+2:], q.availIdx)
	d.Notify(qi)
}

// Notify rings queue qi's doorbell through the BAR.
func (d *Driver) Notify(qi int) {
	d.w(uint64(d.caps[2])+uint64(qi)*uint64(d.notifyM), 2, uint64(qi))
}

// Desc returns raw descriptor table bytes of queue qi, for tests that
// write malformed chains.
func (d *Driver) Desc(qi int) []byte {
	q := d.q[qi]
	return d.Mem.B[q.desc : q.desc+16*uint64(q.size)]
}

// Rings returns the GPAs of queue qi's descriptor table, available and
// used rings (a packed ring's descriptor ring and driver and device
// event suppression areas).
func (d *Driver) Rings(qi int) (desc, avail, used uint64) {
	q := d.q[qi]
	return q.desc, q.avail, q.used
}

// Used is one used-ring element.
type Used struct {
	ID  uint32
	Len uint32
}

// Wait waits up to timeout for the next used element of queue qi and
// returns it, freeing its descriptors.
func (d *Driver) Wait(qi int, timeout time.Duration) (Used, error) {
	q := &d.q[qi]
	if q.packed {
		return d.waitPacked(qi, timeout)
	}
	le := binary.LittleEndian
	end := time.Now().Add(timeout)
	for le.Uint16(d.Mem.B[q.used+2:]) == q.usedSeen {
		if time.Now().After(end) {
			return Used{}, fmt.Errorf("queue %d: nothing used within %v (status %#x)", qi, timeout, d.Status())
		}
		time.Sleep(100 * time.Microsecond)
	}
	e := d.Mem.B[q.used+4+8*uint64(q.usedSeen%q.size):]
	u := Used{ID: le.Uint32(e), Len: le.Uint32(e[4:])}
	q.usedSeen++
	// Free the chain.
	i := uint16(u.ID)
	for {
		q.free = append(q.free, i)
		b := d.Mem.B[q.desc+16*uint64(i):]
		if le.Uint16(b[12:])&1 == 0 {
			break
		}
		i = le.Uint16(b[14:])
	}
	return u, nil
}

// WaitInterrupts is Interrupts, waiting up to timeout for the first
// signal: a device makes its used-ring entry visible before it signals
// the vector, so a driver that has just seen the entry may be early.
func (d *Driver) WaitInterrupts(v int, timeout time.Duration) uint64 {
	end := time.Now().Add(timeout)
	for {
		if n := d.Interrupts(v); n > 0 || time.Now().After(end) {
			return n
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Interrupts returns how many times MSI-X vector data MSIXData0+v was
// signalled through its irqfd since the last call.
func (d *Driver) Interrupts(v int) uint64 {
	d.VM.mu.Lock()
	defer d.VM.mu.Unlock()
	var total uint64
	for fd, f := range d.VM.IRQFDs {
		if r, ok := d.VM.Routes[f.GSI]; ok && r.MSI.Data == uint32(MSIXData0+v) {
			var b [8]byte
			if n, err := unix.Read(fd, b[:]); err == nil && n == 8 {
				total += binary.LittleEndian.Uint64(b[:])
			}
		}
	}
	return total
}
