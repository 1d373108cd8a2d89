package mshvsim

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/kvm"
)

type memRegion struct {
	gpa, size, uaddr uint64
	writable         bool
	host             []byte
}

type irqfd struct {
	fd  int
	gsi uint32
	// resample is the simulator's own duplicate of the resample eventfd
	// (-1: none), held as the kernel holds its eventfd context.
	resample int
}

type ioev struct {
	addr      uint64
	len       uint32
	fd        int
	datamatch bool
	data      uint64
}

type partition struct {
	sim   *Sim
	fd    int
	id    uint64
	kvm   *kvm.VM
	flags uint64
	// disabled are the processor banks 0 and 1 and the XSAVE bank the
	// partition was created with (bit set = off), fixed for its life.
	disabled [3]uint64
	// xl is the partition's XSAVE layout: the components its banks leave
	// on (XSAVE_STATES, MAX_XSAVE_DATA_SIZE and the VP state image follow
	// it), fixed with the banks.
	xl xlayout

	mu          sync.Mutex
	initialized bool
	props       map[uint32]uint64
	regions     []memRegion
	routes      map[uint32][3]uint32 // gsi -> address_lo, address_hi, data (as given)
	shadows     map[uint32][3]uint32 // KVM-only copies of high level routes (see shadowRoutes)
	irqfds      map[int]irqfd
	ioevs       []ioev
	vps         map[uint32]*vp
	tracking    bool
	dirty       map[uint64][]byte // region gpa -> one byte per page (bit0 accessed, bit1 dirty)
	fdClosed    bool
}

// release runs when the partition fd is closed; the KVM VM goes away with
// the last VP.
func (p *partition) release() {
	p.mu.Lock()
	p.fdClosed = true
	for fd, f := range p.irqfds {
		p.kvm.DeassignIRQFD(accel.IRQFD{FD: fd, GSI: f.gsi, ResampleFD: -1})
		if f.resample >= 0 {
			unix.Close(f.resample)
		}
	}
	clear(p.irqfds)
	n := len(p.vps)
	p.mu.Unlock()
	if n == 0 {
		p.kvm.Close()
	}
}

func (p *partition) vpClosed(idx uint32) {
	p.mu.Lock()
	delete(p.vps, idx)
	last := p.fdClosed && len(p.vps) == 0
	p.mu.Unlock()
	if last {
		p.kvm.Close()
	}
}

func (p *partition) ioctl(req uint32, a []byte) (int, error) {
	switch req {
	case reqInitialize:
		p.mu.Lock()
		p.initialized = true
		p.mu.Unlock()
		return 0, nil
	case reqCreateVP:
		return p.createVP(binary.LittleEndian.Uint32(a))
	case reqSetGuestMemory:
		return 0, p.setGuestMemory(a)
	case reqIRQFD:
		return 0, p.irqfd(a)
	case reqIOEventFD:
		return 0, p.ioeventfd(a)
	case reqSetMSIRouting:
		return 0, p.setMSIRouting(a)
	case reqGPAPBitmap:
		return 0, p.gpapBitmap(a)
	case reqRootHvcall:
		return 0, p.sim.hvcall(p, nil, a)
	}
	return -1, unix.ENOTTY
}

const maxVPs = 256

func (p *partition) createVP(idx uint32) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.initialized {
		// hv_call_create_vp fails with INVALID_PARTITION_STATE, which
		// hv_result_to_errno makes EIO.
		return -1, unix.EIO
	}
	if idx >= maxVPs {
		return -1, unix.EINVAL
	}
	if _, ok := p.vps[idx]; ok {
		return -1, unix.EEXIST
	}
	k, err := p.kvm.NewVCPU(int(idx))
	if err != nil {
		return -1, unix.ENOMEM
	}
	v := &vp{p: p, idx: idx, k: k, cpuid: map[[2]uint32]cpuidOverride{}, hvregs: map[uint32][2]uint64{}}
	// The partition's features hold from the VP's creation: KVM derives
	// what it lets the guest (and the VMM's register writes) enable, such
	// as XCR0 bits and CR4.FSGSBASE/SMEP/LA57, from the vCPU's CPUID.
	if err := k.SetCPUID(v.effectiveCPUIDLocked()); err != nil {
		k.Close()
		return -1, unix.ENOMEM
	}
	v.pendingExt.Store(-1)
	v.fd = p.sim.newFD(v)
	p.vps[idx] = v
	return v.fd, nil
}

func (p *partition) findRegion(gpa uint64) *memRegion {
	for i := range p.regions {
		r := &p.regions[i]
		if gpa >= r.gpa && gpa < r.gpa+r.size {
			return r
		}
	}
	return nil
}

// setGuestMemory parses mshv_user_mem_region (size@0 guest_pfn@8
// userspace_addr@16 flags@24 rsvd[7]@25).
func (p *partition) setGuestMemory(a []byte) error {
	size := binary.LittleEndian.Uint64(a[umSize:])
	gpa := binary.LittleEndian.Uint64(a[umGuestPFN:]) << 12
	ua := binary.LittleEndian.Uint64(a[umUserAddr:])
	flags := a[umFlags]
	for _, b := range a[umRsvd:umStructSize] {
		if b != 0 {
			return unix.EINVAL
		}
	}
	if flags&^7 != 0 {
		return unix.EINVAL
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if flags&4 != 0 { // UNMAP: exact match required
		for i, r := range p.regions {
			if r.gpa == gpa && r.size == size && r.uaddr == ua {
				if err := p.kvm.UnmapMemory(gpa); err != nil {
					return unix.EINVAL
				}
				p.regions = append(p.regions[:i], p.regions[i+1:]...)
				delete(p.dirty, gpa)
				return nil
			}
		}
		return unix.EINVAL
	}
	if size == 0 || size%4096 != 0 || ua%4096 != 0 || ua == 0 {
		return unix.EINVAL
	}
	for _, r := range p.regions {
		if gpa < r.gpa+r.size && r.gpa < gpa+size {
			return unix.EEXIST
		}
		if ua < r.uaddr+r.size && r.uaddr < ua+size {
			return unix.EEXIST
		}
	}
	host := user(ua, int(size))
	ro := flags&1 == 0
	if err := p.kvm.MapMemory(accel.MemoryRegion{GPA: gpa, Host: host, ReadOnly: ro, DirtyLog: true}); err != nil {
		return unix.EFAULT
	}
	p.regions = append(p.regions, memRegion{gpa: gpa, size: size, uaddr: ua, writable: !ro, host: host})
	sort.Slice(p.regions, func(i, j int) bool { return p.regions[i].gpa < p.regions[j].gpa })
	return nil
}

// decodeMSI turns a route into what the kernel extracts from it
// (mshv_copy_girq_info: vector, 8-bit APIC ID, delivery type, level,
// logical mode) and back into a canonical MSI for KVM.
func decodeMSI(lo, data uint32) (vector, dest, typ uint32, level, logical bool) {
	return data & 0xff, lo >> 12 & 0xff, data >> 8 & 7, data>>15&1 != 0, lo>>2&1 != 0
}

func canonicalMSI(vector, dest, typ uint32, level, logical bool) accel.MSI {
	lo := uint32(0xfee00000) | dest<<12
	if logical {
		lo |= 1 << 2
	}
	data := vector | typ<<8
	if level {
		data |= 1<<15 | 1<<14
	}
	return accel.MSI{AddressLo: lo, Data: data}
}

// setMSIRouting parses mshv_user_irq_table (nr@0 rsvd@4, then nr entries
// of gsi@0 address_lo@4 address_hi@8 data@12). A refused table leaves the
// previous one in place, with the reason in LastError(partition fd).
func (p *partition) setMSIRouting(a []byte) error {
	nr := binary.LittleEndian.Uint32(a[itNr:])
	if binary.LittleEndian.Uint32(a[itRsvd:]) != 0 || nr > 4096 {
		return unix.EINVAL
	}
	all := unsafe.Slice(&a[0], itEntries+irqEntrySize*int(nr))
	routes := map[uint32][3]uint32{}
	var kr []accel.Route
	for i := 0; i < int(nr); i++ {
		e := all[itEntries+irqEntrySize*i:]
		gsi := binary.LittleEndian.Uint32(e[irqGSI:])
		lo, hi, data := binary.LittleEndian.Uint32(e[irqAddrLo:]), binary.LittleEndian.Uint32(e[irqAddrHi:]), binary.LittleEndian.Uint32(e[irqData:])
		// As upstream mshv_update_routing_table (mshv_irq.c): one bad
		// entry refuses the whole table.
		if gsi >= 4096 {
			return p.einval("MSHV_SET_MSI_ROUTING: entry %d: GSI %d is not below MSHV_MAX_GUEST_IRQS (4096)", i, gsi)
		}
		if hi != 0 {
			return p.einval("MSHV_SET_MSI_ROUTING: entry %d (GSI %d): address_hi %#x is not zero", i, gsi, hi)
		}
		if _, dup := routes[gsi]; dup {
			return p.einval("MSHV_SET_MSI_ROUTING: entry %d: GSI %d is routed twice", i, gsi)
		}
		routes[gsi] = [3]uint32{lo, hi, data}
		vec, dest, typ, level, logical := decodeMSI(lo, data)
		kr = append(kr, accel.Route{GSI: gsi, Kind: accel.RouteMSI, MSI: canonicalMSI(vec, dest, typ, level, logical)})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	shadows, err := p.shadowRoutes(routes)
	if err != nil {
		return err
	}
	for g, r := range shadows {
		vec, dest, typ, level, logical := decodeMSI(r[0], r[2])
		kr = append(kr, accel.Route{GSI: g, Kind: accel.RouteMSI, MSI: canonicalMSI(vec, dest, typ, level, logical)})
	}
	if err := p.kvm.SetGSIRouting(kr); err != nil {
		return unix.EINVAL
	}
	p.routes, p.shadows = routes, shadows
	return nil
}

// shadowRoutes gives each level-triggered route on a GSI at or above
// kvm.MaxEOIRoutes a copy on a free GSI below it (counting down from the
// top, skipping GSIs with a route or an irqfd). The hypervisor sends
// HVMSG_X64_APIC_EOI for the EOI of every level-triggered interrupt; KVM
// under the simulator reports an EOI only for the vectors of level MSI
// routes below kvm.MaxEOIRoutes (its split irqchip's IOAPIC routes), so
// the copy, which no irqfd uses, makes KVM report it. Called with mu held.
func (p *partition) shadowRoutes(routes map[uint32][3]uint32) (map[uint32][3]uint32, error) {
	var high []uint32
	for g, r := range routes {
		if g >= kvm.MaxEOIRoutes && r[2]>>15&1 != 0 {
			high = append(high, g)
		}
	}
	if len(high) == 0 {
		return nil, nil
	}
	sort.Slice(high, func(i, j int) bool { return high[i] < high[j] })
	used := map[uint32]bool{}
	for _, f := range p.irqfds {
		used[f.gsi] = true
	}
	out := map[uint32][3]uint32{}
	next := uint32(kvm.MaxEOIRoutes - 1)
	for _, g := range high {
		for {
			_, routed := routes[next]
			if !routed && !used[next] {
				break
			}
			if next == 0 {
				return nil, p.einval("MSHV_SET_MSI_ROUTING: level-triggered route on GSI %d: the simulator needs a free GSI below %d to have KVM report its EOIs, and none is left", g, kvm.MaxEOIRoutes)
			}
			next--
		}
		out[next] = routes[g]
		used[next] = true
	}
	return out, nil
}

// irqfd parses mshv_user_irqfd (fd@0 resamplefd@4 gsi@8 flags@12).
//
// RESAMPLE follows upstream mshv_irqfd_assign (mshv_eventfd.c): it is
// accepted only while the GSI's current route is a level-triggered MSI
// (data bit 15; EINVAL otherwise, with the reason in LastError(partition
// fd)), and the irqfd joins the GSI's resampler, which fires when an EOI'd
// vector equals the GSI number (see notifyAckedGSI), not the route's
// vector. The trigger eventfd becomes a plain KVM irqfd underneath.
func (p *partition) irqfd(a []byte) error {
	fd := int(int32(binary.LittleEndian.Uint32(a[ifFD:])))
	rfd := int(int32(binary.LittleEndian.Uint32(a[ifResampleFD:])))
	gsi := binary.LittleEndian.Uint32(a[ifGSI:])
	flags := binary.LittleEndian.Uint32(a[ifFlags:])
	if flags&^3 != 0 {
		return p.einval("MSHV_IRQFD: unknown flags %#x", flags)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if flags&1 != 0 { // DEASSIGN
		f, ok := p.irqfds[fd]
		if !ok || f.gsi != gsi {
			return nil // the kernel ignores unknown deassigns
		}
		delete(p.irqfds, fd)
		p.kvm.DeassignIRQFD(accel.IRQFD{FD: fd, GSI: gsi, ResampleFD: -1})
		if f.resample >= 0 {
			unix.Close(f.resample)
		}
		return nil
	}
	if _, dup := p.irqfds[fd]; dup {
		return unix.EBUSY
	}
	if _, ok := p.shadows[gsi]; ok {
		return p.einval("MSHV_IRQFD: irqfd %d on GSI %d: the simulator lends that GSI, which has no route, to KVM to report a level-triggered route's EOIs (see shadowRoutes); route it first", fd, gsi)
	}
	res := -1
	if flags&2 != 0 {
		r, ok := p.routes[gsi]
		if !ok {
			return p.einval("MSHV_IRQFD: resample irqfd %d on GSI %d: the GSI has no MSI route (set the level-triggered route first)", fd, gsi)
		}
		if r[2]>>15&1 == 0 {
			return p.einval("MSHV_IRQFD: resample irqfd %d on GSI %d: the route (data %#x) is not level-triggered (data bit 15 clear)", fd, gsi, r[2])
		}
		d, err := unix.FcntlInt(uintptr(rfd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return p.einval("MSHV_IRQFD: resample fd %d: %v", rfd, err)
		}
		res = d
	}
	if err := p.kvm.AssignIRQFD(accel.IRQFD{FD: fd, GSI: gsi, ResampleFD: -1}); err != nil {
		if res >= 0 {
			unix.Close(res)
		}
		return p.einval("MSHV_IRQFD: irqfd %d on GSI %d: KVM under the simulator refused it: %v", fd, gsi, err)
	}
	p.irqfds[fd] = irqfd{fd: fd, resample: res, gsi: gsi}
	return nil
}

// einval records why a partition ioctl failed (LastError on the partition
// fd) and returns EINVAL.
func (p *partition) einval(format string, args ...any) error {
	p.sim.lastErr.Store(p.fd, fmt.Sprintf(format, args...))
	return unix.EINVAL
}

// notifyAckedGSI is upstream mshv_notify_acked_gsi (mshv_eventfd.c) as
// mshv_intercept_isr (mshv_synic.c) calls it for an HVMSG_X64_APIC_EOI:
// the EOI'd vector is compared with the GSI number of each resampler, and
// every resample irqfd on a matching GSI has its resample eventfd
// signalled (mshv_irqfd_resampler_ack). It reports whether one matched; the
// kernel then consumes the EOI, which does not reach the VMM. The route's
// vector plays no part: a resample irqfd on GSI 40 whose route carries
// vector 0x52 is resampled by an EOI of vector 40, not of 0x52.
func (p *partition) notifyAckedGSI(vector uint8) bool {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	acked := false
	for _, f := range p.irqfds {
		if f.resample < 0 || f.gsi != uint32(vector) {
			continue
		}
		unix.Write(f.resample, one[:])
		acked = true
	}
	return acked
}

// ioeventfd parses mshv_user_ioeventfd (datamatch@0 addr@8 len@16 fd@20
// flags@24 rsvd[4]@28).
func (p *partition) ioeventfd(a []byte) error {
	e := ioev{data: binary.LittleEndian.Uint64(a[ieDatamatch:]), addr: binary.LittleEndian.Uint64(a[ieAddr:]),
		len: binary.LittleEndian.Uint32(a[ieLen:]), fd: int(int32(binary.LittleEndian.Uint32(a[ieFD:])))}
	flags := binary.LittleEndian.Uint32(a[ieFlags:])
	for _, b := range a[ieRsvd : ieRsvd+4] {
		if b != 0 {
			return unix.EINVAL
		}
	}
	if flags&^7 != 0 {
		return unix.EINVAL
	}
	if flags&2 != 0 {
		return unix.EOPNOTSUPP // MSHV has no PIO ioeventfd
	}
	switch e.len {
	case 0, 1, 2, 4, 8:
	default:
		return unix.EINVAL
	}
	e.datamatch = flags&1 != 0
	if !e.datamatch {
		e.data = 0
	}
	ka := accel.IOEventFD{FD: e.fd, Addr: e.addr, Len: int(e.len), DataMatch: e.datamatch, Data: e.data}
	p.mu.Lock()
	defer p.mu.Unlock()
	if flags&4 != 0 {
		for i, o := range p.ioevs {
			if o == e {
				p.ioevs = append(p.ioevs[:i], p.ioevs[i+1:]...)
				p.kvm.DeassignIOEventFD(ka)
				return nil
			}
		}
		return unix.ENOENT
	}
	for _, o := range p.ioevs {
		if o.addr == e.addr && o.len == e.len && (!o.datamatch || !e.datamatch || o.data == e.data) {
			return unix.EEXIST
		}
	}
	if err := p.kvm.AssignIOEventFD(ka); err != nil {
		return unix.EINVAL
	}
	p.ioevs = append(p.ioevs, e)
	return nil
}

// pullDirty folds KVM's dirty log into the per-page states (caller holds mu).
func (p *partition) pullDirty() error {
	if p.dirty == nil {
		p.dirty = map[uint64][]byte{}
	}
	for _, r := range p.regions {
		st := p.dirty[r.gpa]
		if st == nil {
			st = make([]byte, r.size/4096)
			p.dirty[r.gpa] = st
		}
		if !p.tracking {
			continue
		}
		bm, err := p.kvm.DirtyLog(r.gpa)
		if err != nil {
			return err
		}
		for i := range st {
			if bm[i/64]>>(i%64)&1 != 0 {
				st[i] |= 3
			}
		}
	}
	return nil
}

// pageStates reads (and applies flags to) count pages from gfn (caller
// holds mu). op: 0 none, 1 clear, 2 set; typ 0 accessed, 1 dirty.
func (p *partition) pageStates(gfn, count uint64, typ, op uint8) ([]byte, error) {
	if err := p.pullDirty(); err != nil {
		return nil, err
	}
	out := make([]byte, count)
	for i := uint64(0); i < count; i++ {
		gpa := (gfn + i) << 12
		r := p.findRegion(gpa)
		if r == nil {
			return nil, unix.EINVAL
		}
		st := p.dirty[r.gpa]
		j := (gpa - r.gpa) / 4096
		out[i] = st[j]
		switch {
		case op == 1 && typ == 0:
			st[j] = 0 // clearing accessed also clears dirty
		case op == 1:
			st[j] &^= 2
		case op == 2 && typ == 1:
			st[j] |= 3 // setting dirty also sets accessed
		case op == 2:
			st[j] |= 1
		}
	}
	return out, nil
}

// gpapBitmap parses mshv_gpap_access_bitmap (access_type@0 access_op@1
// rsvd[6]@2 page_count@8 gpap_base@16 bitmap_ptr@24), with the checks of
// upstream mshv_partition_ioctl_get_gpap_access_bitmap (mshv_root_main.c)
// and no others: a NOOP op is treated as SET, as its flag selection does
// (everything that is not CLEAR sets), and reading the dirty states while
// tracking is off is not refused (the states are then not updated).
func (p *partition) gpapBitmap(a []byte) error {
	typ, op := a[gpType], a[gpOp]
	for _, b := range a[gpRsvd:gpCount] {
		if b != 0 {
			return unix.EINVAL
		}
	}
	count := binary.LittleEndian.Uint64(a[gpCount:])
	base := binary.LittleEndian.Uint64(a[gpBase:])
	ptr := binary.LittleEndian.Uint64(a[gpBitmap:])
	if typ > 1 || op > 2 || count == 0 || ptr == 0 {
		return unix.EINVAL
	}
	if count > 1<<32 {
		return unix.ENOMEM // the kernel's vzalloc of one byte per page fails
	}
	if op == 0 {
		op = 2
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := p.pageStates(base, count, typ, op)
	if err != nil {
		return unix.EINVAL
	}
	bm := user(ptr, int((count+7)/8))
	clear(bm)
	bit := byte(1) << typ
	for i, s := range st {
		if s&bit != 0 {
			bm[i/8] |= 1 << (i % 8)
		}
	}
	return nil
}
