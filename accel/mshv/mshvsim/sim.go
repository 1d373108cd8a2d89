// Package mshvsim is a TEST AND DEVELOPMENT TOOL: an in-process stand-in
// for the Linux /dev/mshv root-partition driver, built on the KVM backend,
// so that govmm's MSHV path (accel/mshv) runs end to end on any machine
// with /dev/kvm (`govmm run --accel mshv --mshv-device sim`). It is not a
// hypervisor and not a way to run production guests.
//
// It implements the mshvabi.Device seam and parses raw request numbers and
// argument bytes exactly as the kernel would, from its own reading of the
// ABI reference (it deliberately shares no Go struct types with accel/mshv
// or mshvabi, so that a layout mistake on either side shows up as a test
// failure). It answers as MSHV does: partition ids, the hypercall
// allow-list, ENOTTY/EINVAL/EOPNOTSUPP where the kernel gives them, EAGAIN
// from every Nth hypercall so that callers' retry paths run, and messages
// laid out as struct hv_message.
//
// Intercepts follow MSHV semantics, not KVM's: when KVM exits for port I/O
// or MMIO, the simulator completes KVM's pending access at once (re-entering
// with immediate_exit, feeding zeros to reads, discarding writes), puts the
// vCPU registers back to their state before the instruction (finding the
// start of an instruction KVM already retired by checking candidates with
// the x86 emulator), and hands the VMM an intercept message with RIP at the
// instruction: a memory intercept with the instruction's bytes (up to the
// page end), its length and the access's linear address (gva_valid,
// gva_gpa_valid), a port-I/O intercept with no bytes; the execution state
// carries the interrupt shadow and a pending interruption. Whatever the VMM
// then writes back is what the guest sees. KVM's in-kernel LAPIC (split irqchip) stands in for the
// hypervisor's.
package mshvsim

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/accel/kvm"
	"govmm/cpu"
)

// Options tune the simulator. The zero value (with EAGAINEvery) is the
// mainline kernel: torvalds/linux drivers/hv/mshv_root_main.c and
// include/uapi/linux/mshv.h, where mshv_dev_ioctl knows only
// MSHV_CREATE_PARTITION, MSHV_PT_BIT_COUNT is 3 and the pass-through
// allow-list (mshv_passthru_hvcalls) has neither
// GET_PARTITION_PROPERTY_EX nor SCRUB_PARTITION. Behaviour of later or
// patched kernels is opt-in, one field each.
type Options struct {
	// EAGAINEvery makes every Nth MSHV_ROOT_HVCALL fail with EAGAIN (as the
	// kernel does after depositing memory), 0 for never.
	EAGAINEvery int
	// NoRegisterPage makes mmap of the register page fail with ENODEV, as
	// on partitions without one, so callers use hypercalls only.
	NoRegisterPage bool

	// V2 accepts MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES (pt_flags bit 3) and
	// the 64-byte struct mshv_create_partition_v2 behind it (the
	// "mshv_create_partition_v2" patch series, adopted by QEMU in 2026);
	// mainline refuses bit 3 with EINVAL. The payload's disabled feature
	// banks are then enforced (see enforceBanks), and a partition created
	// without the payload gets that kernel's default whitelist
	// (mshvabi.V1DefaultEnabled); mainline's zeroed creation properties
	// disable nothing.
	V2 bool
	// SelfHvcall serves MSHV_ROOT_HVCALL on /dev/mshv itself for
	// GET_PARTITION_PROPERTY of the root partition (Anirudh Rayabharam's
	// patch for reading the host's processor features); mainline answers
	// ENOTTY. The processor and XSAVE feature banks it returns are
	// derived from KVM's supported CPUID (Sim.hostOffered).
	SelfHvcall bool
	// PropertyEx adds HVCALL_GET_PARTITION_PROPERTY_EX to the pass-through
	// list (and, with SelfHvcall, to the /dev/mshv call), as the same
	// patch does; mainline refuses it with EINVAL.
	PropertyEx bool
	// Scrub adds HVCALL_SCRUB_PARTITION to the pass-through list (Magnus
	// Kulke's soft-reboot patch); mainline refuses it with EINVAL. The
	// simulator then answers it OPERATION_DENIED.
	Scrub bool
}

// DefaultEAGAINEvery is the EAGAIN period New uses.
const DefaultEAGAINEvery = 7

// Sim is the simulated /dev/mshv. It implements mshvabi.Device.
type Sim struct {
	opts Options
	kvm  *kvm.Accelerator

	mu      sync.Mutex
	fds     map[int]any // *partition or *vp
	nextFD  int
	nextPID uint64
	sysFD   int
	closed  bool

	hvcalls atomic.Uint64
	lastErr sync.Map // vp fd -> string

	base  []accel.CPUIDEntry // KVM's supported CPUID
	synic bool               // KVM can back the SynIC and synthetic timers
}

// EnvOptions names the environment variable New reads to vary the
// simulated kernel: a comma-separated list of noregpage, eagain=N and the
// later-kernel features v2, self, propex, scrub, or next for all four
// (e.g. GOVMM_MSHVSIM=next,eagain=2). Without them it is mainline.
const EnvOptions = "GOVMM_MSHVSIM"

// ParseOptions parses the EnvOptions syntax.
func ParseOptions(spec string) (Options, error) {
	o := Options{EAGAINEvery: DefaultEAGAINEvery}
	for _, f := range strings.Split(spec, ",") {
		switch f = strings.TrimSpace(f); {
		case f == "":
		case f == "noregpage":
			o.NoRegisterPage = true
		case f == "v2":
			o.V2 = true
		case f == "self":
			o.SelfHvcall = true
		case f == "propex":
			o.PropertyEx = true
		case f == "scrub":
			o.Scrub = true
		case f == "next":
			o.V2, o.SelfHvcall, o.PropertyEx, o.Scrub = true, true, true, true
		case f == "nov2" || f == "noself":
			return o, fmt.Errorf("mshvsim option %q: the mainline kernel the simulator now models by default has neither; drop it (add v2 or self for the later kernels)", f)
		case strings.HasPrefix(f, "eagain="):
			n, err := strconv.Atoi(f[len("eagain="):])
			if err != nil || n < 0 {
				return o, fmt.Errorf("mshvsim option %q: want eagain=N with N >= 0", f)
			}
			o.EAGAINEvery = n
		default:
			return o, fmt.Errorf("unknown mshvsim option %q (want noregpage, eagain=N, v2, self, propex, scrub or next)", f)
		}
	}
	return o, nil
}

// New opens /dev/kvm and returns a simulator with the default options, as
// modified by the EnvOptions environment variable.
func New() (*Sim, error) {
	o, err := ParseOptions(os.Getenv(EnvOptions))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvOptions, err)
	}
	return NewWithOptions(o)
}

// NewWithOptions opens /dev/kvm and returns a simulator.
func NewWithOptions(o Options) (*Sim, error) {
	a, err := kvm.Open()
	if err != nil {
		return nil, fmt.Errorf("mshvsim needs KVM: %w", err)
	}
	base, err := a.SupportedCPUID()
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("mshvsim: %w", err)
	}
	// KVM's paravirtual leaves (kvmclock, PV EOI, ...) are KVM's, not the
	// Microsoft Hypervisor's: a guest on mshvsim must not find them. The
	// real hypervisor presents its own leaves there (Hyper-V's), which
	// the simulator does not model yet, so the range reads as empty.
	base = slices.DeleteFunc(base, func(e accel.CPUIDEntry) bool { return cpu.HypervisorLeaf(e.Function) })
	return &Sim{opts: o, kvm: a, fds: map[int]any{}, nextFD: 1 << 20, nextPID: 0x1000, sysFD: 1<<20 - 1,
		base: base, synic: a.SynICSupported()}, nil
}

// Name describes the device in messages and `govmm caps`.
func (s *Sim) Name() string { return "mshvsim (in-process /dev/mshv simulator on /dev/kvm; test tool)" }

// SystemFD is the simulated /dev/mshv fd.
func (s *Sim) SystemFD() int { return s.sysFD }

func (s *Sim) lookup(fd int) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fds[fd]
}

func (s *Sim) newFD(o any) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd := s.nextFD
	s.nextFD++
	s.fds[fd] = o
	return fd
}

// Close closes a simulated fd.
func (s *Sim) Close(fd int) error {
	s.mu.Lock()
	o, ok := s.fds[fd]
	if fd == s.sysFD {
		s.closed = true
		s.mu.Unlock()
		return s.kvm.Close()
	}
	delete(s.fds, fd)
	s.mu.Unlock()
	if !ok {
		return unix.EBADF
	}
	switch o := o.(type) {
	case *partition:
		o.release()
	case *vp:
		o.close()
	}
	return nil
}

// user returns n bytes of this process's memory at addr (a "user
// pointer" from an ioctl argument), or nil for a null pointer.
func user(addr uint64, n int) []byte {
	if addr == 0 || n <= 0 {
		return nil
	}
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	return unsafe.Slice((*byte)(p), n)
}

// ioc decoding.
func iocDir(req uint32) uint32  { return req >> 30 }
func iocSize(req uint32) int    { return int(req >> 16 & 0x3fff) }
func iocType(req uint32) uint32 { return req >> 8 & 0xff }
func iocNr(req uint32) uint32   { return req & 0xff }

// Request numbers, from the reference's table (mshv-abi.md §1.1).
const (
	reqCreatePartition = 0x4010B800
	reqRootHvcall      = 0xC020B807
	reqInitialize      = 0x0000B800
	reqCreateVP        = 0x4004B801
	reqSetGuestMemory  = 0x4020B802
	reqIRQFD           = 0x4010B803
	reqIOEventFD       = 0x4020B804
	reqSetMSIRouting   = 0x4008B805
	reqGPAPBitmap      = 0xC020B806
	reqRunVP           = 0x8100B800
	reqGetVPState      = 0xC010B801
	reqSetVPState      = 0xC010B802
)

// Ioctl serves one ioctl on a simulated fd.
func (s *Sim) Ioctl(fd int, req uint32, arg unsafe.Pointer) (int, error) {
	if iocType(req) != 0xB8 {
		return -1, unix.ENOTTY
	}
	obj := s.lookup(fd)
	if fd != s.sysFD && obj == nil {
		return -1, unix.EBADF
	}
	if !known(fd == s.sysFD, obj, req) {
		return -1, unix.ENOTTY
	}
	var a []byte
	if sz := iocSize(req); sz > 0 && iocDir(req) != 0 {
		if arg == nil {
			return -1, unix.EFAULT
		}
		a = unsafe.Slice((*byte)(arg), sz)
	}
	if fd == s.sysFD {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return -1, unix.EBADF
		}
		switch req {
		case reqCreatePartition:
			return s.createPartition(a)
		case reqRootHvcall:
			if !s.opts.SelfHvcall {
				return -1, unix.ENOTTY // mainline mshv_dev_ioctl
			}
			return 0, s.selfHvcall(a)
		}
		return -1, unix.ENOTTY
	}
	switch o := obj.(type) {
	case *partition:
		return o.ioctl(req, a)
	case *vp:
		return o.ioctl(req, a)
	}
	return -1, unix.EBADF
}

// known reports whether req is an ioctl of that kind of fd.
func known(sys bool, obj any, req uint32) bool {
	switch {
	case sys:
		return req == reqCreatePartition || req == reqRootHvcall
	}
	switch obj.(type) {
	case *partition:
		switch req {
		case reqInitialize, reqCreateVP, reqSetGuestMemory, reqIRQFD, reqIOEventFD, reqSetMSIRouting, reqGPAPBitmap, reqRootHvcall:
			return true
		}
	case *vp:
		switch req {
		case reqRunVP, reqGetVPState, reqSetVPState, reqRootHvcall:
			return true
		}
	}
	return false
}

// Mmap maps a VP page: offset 0 is the register page, 1 the intercept
// message page.
func (s *Sim) Mmap(fd int, pgoff int64, length int) ([]byte, error) {
	v, ok := s.lookup(fd).(*vp)
	if !ok {
		return nil, unix.ENODEV
	}
	if length <= 0 || length > 4096 {
		return nil, unix.EINVAL
	}
	switch pgoff {
	case 0:
		if s.opts.NoRegisterPage {
			return nil, unix.ENODEV
		}
		return v.regPage[:length:length], nil
	case 1:
		return v.msgPage[:length:length], nil
	case 2:
		return nil, unix.ENODEV // GHCB: SNP partitions only
	}
	return nil, unix.EINVAL
}

// Munmap releases a page from Mmap (nothing to do in-process).
func (s *Sim) Munmap(b []byte) error { return nil }

// Kick interrupts the VP's MSHV_RUN_VP (it returns EINTR).
func (s *Sim) Kick(vpFD int, tid int) error {
	v, ok := s.lookup(vpFD).(*vp)
	if !ok {
		return unix.EBADF
	}
	v.k.Kick()
	return nil
}

// LastError describes (once) why the last MSHV_RUN_VP on a VP fd failed
// with EIO: KVM under the simulator could not run the guest (for example
// an instruction KVM's emulator lacks). The backend reports it as a fatal
// exit. On a partition fd it says why the last MSHV_IRQFD failed with
// EINVAL.
func (s *Sim) LastError(vpFD int) string {
	if v, ok := s.lastErr.LoadAndDelete(vpFD); ok {
		return v.(string)
	}
	return ""
}

// createPartition parses mshv_create_partition (16 bytes; with Options.V2,
// 64 when pt_flags bit 3 says a v2 payload follows) and fixes the
// partition's disabled feature banks: the payload's, or the kernel's
// default without one (defaultDisabled).
func (s *Sim) createPartition(a []byte) (int, error) {
	flags := binary.LittleEndian.Uint64(a[cpFlags:])
	iso := binary.LittleEndian.Uint64(a[cpIsolation:])
	// MSHV_PT_FLAGS_MASK: MSHV_PT_BIT_COUNT is 3 in mainline, 4 with v2.
	mask := uint64(1<<3 - 1)
	if s.opts.V2 {
		mask = 1<<4 - 1
	}
	if flags&^mask != 0 || iso != 0 {
		return -1, unix.EINVAL
	}
	disabled := s.defaultDisabled()
	if flags&(1<<3) != 0 {
		full := unsafe.Slice(&a[0], cpSizeV2)
		nbanks := int(binary.LittleEndian.Uint16(full[cpNumFBanks:]))
		if nbanks > 2 {
			return -1, unix.EINVAL
		}
		for _, b := range full[cpRsvd:cpFBanks] {
			if b != 0 {
				return -1, unix.EINVAL
			}
		}
		for _, b := range full[cpRsvd1:cpDisabledXSave] {
			if b != 0 {
				return -1, unix.EINVAL
			}
		}
		// pt_num_cpu_fbanks banks replace the defaults; the XSAVE bank
		// is always taken.
		for i := 0; i < nbanks; i++ {
			disabled[i] = binary.LittleEndian.Uint64(full[cpFBanks+8*i:])
		}
		disabled[2] = binary.LittleEndian.Uint64(full[cpDisabledXSave:])
	}
	// GSIs below kvm.MaxEOIRoutes count as IOAPIC routes, so KVM reports
	// the EOI of their level-triggered MSI routes' vectors, which the
	// simulator turns into HVMSG_X64_APIC_EOI as the hypervisor does for
	// every level-triggered interrupt (see partition.shadowRoutes).
	vm, err := s.kvm.NewVMWithEOIRoutes(accel.VMConfig{}, kvm.MaxEOIRoutes)
	if err != nil {
		return -1, unix.ENOMEM
	}
	s.mu.Lock()
	s.nextPID++
	id := s.nextPID
	s.mu.Unlock()
	p := &partition{sim: s, id: id, kvm: vm, flags: flags, disabled: disabled, props: map[uint32]uint64{},
		vps: map[uint32]*vp{}, irqfds: map[int]irqfd{}, xl: newLayout(enforceBanks(s.baseCPUID(), disabled))}
	p.props[propTimeFreeze] = 0
	p.fd = s.newFD(p)
	return p.fd, nil
}
