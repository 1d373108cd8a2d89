// Package vm assembles one virtual machine from the parts govmm is made of
// (guest memory, an accelerator VM and its vCPUs, the port and MMIO buses,
// the interrupt controllers and legacy devices, firmware tables and the
// kernel loader) and runs it: one locked OS thread per vCPU, until the
// guest powers off, resets, exits through the debug-exit device or fails.
//
// It is the only layer that knows how the parts connect; it never knows
// which accelerator it runs on.
package vm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"govmm/accel"
	"govmm/cpu"
	"govmm/devices/bus"
	"govmm/internal/schedpolicy"
	"govmm/memory"
	"govmm/snapshot"
)

// Config describes a VM to build.
type Config struct {
	Accel    accel.Accelerator
	MemSize  uint64
	NumCPUs  int
	CPUID    []accel.CPUIDEntry // filtered by the CPU model, not yet per-vCPU
	NoPMU    bool               // the CPU model removes the PMU
	CPUModel string             // the --cpu model CPUID came from ("" is host), kept in snapshots
	// Topology arranges the vCPUs in sockets, cores and threads (zero:
	// one socket of NumCPUs cores); kept in snapshots.
	Topology accel.Topology
	Kernel   []byte
	Initrd   []byte
	Cmdline  string
	// FeatureMSRs are the CPU model's feature MSRs (IA32_ARCH_CAPABILITIES);
	// kept in snapshots.
	FeatureMSRs []accel.MSR
	// GuestInfo is what govmm tells its built-in probe on its command
	// line: the CPU model and what it hides (boot.Options.GuestInfo).
	GuestInfo  string
	Serial     io.Writer // guest serial output (nil: discarded)
	Log        *slog.Logger
	KernelName string // the kernel's name, for messages
	// TestDevices adds the MMIO test devices the project's test guests
	// use (devices/testdev, devices/irqtestdev). Off by default: a
	// sandbox exposes no device it does not need.
	TestDevices bool
	// Epoch, when set, is when the process began its work (the start of
	// main). vCPU 0 then logs, at info level, the time from Epoch to the
	// moment just before it first enters the guest ("entering the
	// guest"): for a restore, restore-to-first-instruction time.
	Epoch time.Time
	// HugePages asks for transparent huge pages for guest RAM.
	HugePages bool
	// Virtio lists the virtio devices (--disk, --rng, --vsock, --net).
	Virtio VirtioConfig
	// VFIO lists the host devices passed through (--device vfio=...).
	VFIO VFIOConfig

	// hotAdded are the saved VM's hot-added devices, which Prepare
	// rebuilds after the boot-time ones.
	hotAdded []HotAddedDevice
}

// StopKind says how a VM ended.
type StopKind int

const (
	StopPowerOff StopKind = iota + 1
	StopReset
	StopDebugExit
	StopCrash
	StopRequested // the host asked (Ctrl-A x, signal, API)
	StopError     // govmm itself failed
)

// Result is how a VM ended.
type Result struct {
	Kind StopKind
	// Status is the process exit status govmm should return.
	Status int
	// Err describes a crash or failure in one line a person can act on.
	Err error
}

// Exit statuses a VM ends with (README documents them; the command line
// adds its own for bad usage and a missing accelerator).
const (
	StatusOK       = 0
	StatusCrash    = 2
	StatusInternal = 70
)

// VM is one running (or runnable) virtual machine.
type VM struct {
	cfg   Config
	log   *slog.Logger
	mem   *memory.Memory
	avm   accel.VM
	pio   *bus.Bus
	mmio  *bus.Bus
	vcpus []accel.VCPU
	plat  *platformDevices

	stopOnce sync.Once
	stopped  chan struct{}
	// running is closed once every vCPU exists with its state, just
	// before the guest runs: input that raises an interrupt waits for it,
	// because an MSI sent before the LAPICs exist is lost.
	running chan struct{}
	result  Result

	restore *Restored  // non-nil when the VM starts from a snapshot
	pauseMu sync.Mutex // guards vcpus
	ctl     control
	paused  atomic.Bool
	eois    atomic.Uint64 // IOAPIC EOI exits
	// hotMu orders hot-adds and ejects (vm/hotplug.go) with each other
	// and with what lists the devices or saves them (SaveState).
	hotMu sync.Mutex
	// migrating is set while a live migration's dirty logs are on: the
	// destination was built with the devices of the hello, so a hot-add
	// is refused meanwhile. Guarded by hotMu.
	migrating bool

	// beforeGuest runs once every vCPU exists, before any enters the
	// guest (SetBeforeGuest).
	beforeGuest func() error
	// vcpuThread runs on each vCPU's thread after beforeGuest, before
	// the vCPU first enters the guest (SetVCPUThread).
	vcpuThread func(index int) error
}

// ioHandler routes a vCPU's accesses to the buses.
// New builds a VM: memory, accelerator VM, devices, firmware tables and the
// loaded kernel. vCPUs are created when Run starts them.
func New(cfg Config) (*VM, error) {
	mem, err := memory.NewWithOptions(cfg.MemSize, memory.Options{HugePages: cfg.HugePages})
	if err != nil {
		return nil, err
	}
	return build(cfg, mem, buildBoot)
}

// Restore builds a VM from a parsed snapshot whose guest memory is memFile
// (mapped private and copy-on-write, so nothing is copied up front). The
// machine must match the snapshot: cfg.MemSize and cfg.NumCPUs, when set,
// must equal the saved ones. The vCPUs get their saved state when Run
// creates them.
func Restore(cfg Config, r *Restored, memFile *os.File) (*VM, error) {
	m := r.Machine
	if cfg.MemSize != 0 && cfg.MemSize != m.MemSize {
		return nil, &InputError{Err: fmt.Errorf("the snapshot has %d MiB of guest memory, not %d MiB: a restore cannot change the memory size", m.MemSize>>20, cfg.MemSize>>20)}
	}
	if cfg.NumCPUs != 0 && cfg.NumCPUs != m.NumCPUs {
		return nil, &InputError{Err: fmt.Errorf("the snapshot has %d vCPUs, not %d: a restore cannot change the vCPU count", m.NumCPUs, cfg.NumCPUs)}
	}
	if err := snapshot.CheckMemoryFile(memFile, m.MemSize); err != nil {
		return nil, &InputError{Err: err}
	}
	mem, err := memory.NewFromFile(memFile, m.MemSize)
	if err != nil {
		return nil, err
	}
	return RestoreMemory(cfg, r, mem)
}

// RestoreMemory is Restore with guest memory already in place. The VM owns
// mem from here on.
func RestoreMemory(cfg Config, r *Restored, mem *memory.Memory) (*VM, error) {
	v, err := Prepare(cfg, r.Machine, mem)
	if err != nil {
		return nil, err
	}
	if err := v.Apply(r); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// Prepare builds the VM that saved state will be loaded into: the
// accelerator VM with mem mapped and the devices in their reset state,
// writing nothing into guest memory. Live migration prepares the
// destination while pre-copy still fills mem, so the pause only has to
// carry the final pages and Apply. The VM owns mem from here on.
func Prepare(cfg Config, m MachineState, mem *memory.Memory) (*VM, error) {
	if mem.Size() != m.MemSize {
		mem.Close()
		return nil, &InputError{Err: fmt.Errorf("guest memory is %d bytes, the saved machine had %d", mem.Size(), m.MemSize)}
	}
	if cfg.MemSize != 0 && cfg.MemSize != m.MemSize {
		mem.Close()
		return nil, &InputError{Err: fmt.Errorf("the saved VM has %d MiB of guest memory, not %d MiB: a restore cannot change the memory size", m.MemSize>>20, cfg.MemSize>>20)}
	}
	if cfg.NumCPUs != 0 && cfg.NumCPUs != m.NumCPUs {
		mem.Close()
		return nil, &InputError{Err: fmt.Errorf("the saved VM has %d vCPUs, not %d: a restore cannot change the vCPU count", m.NumCPUs, cfg.NumCPUs)}
	}
	cfg.MemSize, cfg.NumCPUs, cfg.CPUID, cfg.Cmdline = m.MemSize, m.NumCPUs, m.CPUID, m.Cmdline
	cfg.TestDevices, cfg.NoPMU, cfg.CPUModel, cfg.Topology = m.TestDevices, m.NoPMU, m.CPUModel, m.Topology
	cfg.FeatureMSRs = m.FeatureMSRs
	if err := checkHotAdded(m.HotAdded); err != nil {
		mem.Close()
		return nil, &InputError{Err: fmt.Errorf("the saved machine: %w", err)}
	}
	cfg.hotAdded = m.HotAdded
	return build(cfg, mem, buildIncoming)
}

// Apply loads saved device state into a prepared VM; the vCPUs get theirs
// when Run creates them. The saved machine must be the prepared one.
func (v *VM) Apply(r *Restored) error {
	m := r.Machine
	if m.MemSize != v.cfg.MemSize || m.NumCPUs != v.cfg.NumCPUs || m.TestDevices != v.cfg.TestDevices {
		return &InputError{Err: fmt.Errorf("the saved machine (%d MiB, %d vCPUs) is not the one prepared (%d MiB, %d vCPUs)",
			m.MemSize>>20, m.NumCPUs, v.cfg.MemSize>>20, v.cfg.NumCPUs)}
	}
	if !slices.Equal(m.HotAdded, v.cfg.hotAdded) {
		// A migration's hello announced other hot-added devices than
		// its final state has: the guest ejected one, or one was
		// hot-added, while memory moved.
		return &InputError{Err: fmt.Errorf("the saved machine's hot-added devices %v are not those this VM was built with %v (a device was ejected or hot-added after the migration began): nothing was started, migrate again", m.HotAdded, v.cfg.hotAdded)}
	}
	if err := v.plat.vfio.checkLoad(r.VFIO); err != nil {
		return &InputError{Err: err}
	}
	if err := v.plat.restoreDevices(&r.Devices); err != nil {
		return err
	}
	if err := v.plat.vfio.load(r.VFIO); err != nil {
		return &InputError{Err: err}
	}
	v.restore = r
	return nil
}

// buildMode says what build puts into guest memory.
type buildMode int

const (
	buildBoot     buildMode = iota // firmware tables and the kernel
	buildIncoming                  // nothing: saved memory arrives or is mapped
)

func build(cfg Config, mem *memory.Memory, mode buildMode) (*VM, error) {
	if cfg.NumCPUs < 1 || cfg.NumCPUs > 255 {
		mem.Close()
		return nil, fmt.Errorf("%d vCPUs requested: govmm supports 1 to 255", cfg.NumCPUs)
	}
	if !cfg.Topology.IsZero() {
		t, err := cpu.ResolveTopology(cfg.Topology, cfg.NumCPUs)
		if err == nil {
			err = cpu.CheckTopologyCPUID(cfg.CPUID, t)
		}
		if err != nil {
			mem.Close()
			return nil, &InputError{Err: err}
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Serial == nil {
		cfg.Serial = io.Discard
	}
	v := &VM{cfg: cfg, log: cfg.Log, mem: mem, stopped: make(chan struct{}), running: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	avm, err := cfg.Accel.CreateVM(accel.VMConfig{NumVCPUs: cfg.NumCPUs, CPUID: cfg.CPUID, NoPMU: cfg.NoPMU, Topology: cfg.Topology,
		FeatureMSRs: cfg.FeatureMSRs, MarkDirty: mem.MarkDirty})
	if err != nil {
		return nil, fmt.Errorf("create %s VM: %w", cfg.Accel.Name(), err)
	}
	v.avm = avm
	for _, r := range mem.Regions() {
		if err := avm.MapMemory(accel.MemoryRegion{GPA: r.GPA, Host: r.Host}); err != nil {
			return nil, fmt.Errorf("map guest memory at %#x (%d MiB): %w", r.GPA, len(r.Host)>>20, err)
		}
	}
	v.initControl()
	v.pio = bus.New("pio", v.log)
	v.mmio = bus.New("mmio", v.log)
	if err := v.buildPlatform(mode); err != nil {
		return nil, err
	}
	ok = true
	return v, nil
}

// NumCPUs is the VM's vCPU count.
func (v *VM) NumCPUs() int { return v.cfg.NumCPUs }

// AccelName names the accelerator the VM runs on.
func (v *VM) AccelName() string { return v.cfg.Accel.Name() }

// KernelName names the kernel the VM booted (or "snapshot").
func (v *VM) KernelName() string { return v.cfg.KernelName }

// Exits counts what made the vCPUs leave the guest for the VMM: each
// device's port and MMIO accesses (bus "pio" or "mmio"), and the IOAPIC
// EOIs of level-triggered interrupts. Exits the accelerator serves
// itself (the in-kernel LAPIC, HLT on KVM) are not here.
type Exits struct {
	PIO, MMIO []bus.Count
	EOIs      uint64
}

// Exits returns the exits so far.
func (v *VM) Exits() Exits {
	return Exits{PIO: v.pio.Counts(), MMIO: v.mmio.Counts(), EOIs: v.eois.Load()}
}

// Memory is the VM's guest RAM.
func (v *VM) Memory() *memory.Memory { return v.mem }

// Stop ends the VM with the given result (the first stop wins) and kicks
// every vCPU out of the guest.
func (v *VM) Stop(r Result) {
	v.stopOnce.Do(func() {
		v.result = r
		close(v.stopped)
	})
	for _, c := range v.vcpuList() {
		c.Kick()
	}
}

func (v *VM) vcpuList() []accel.VCPU {
	v.pauseMu.Lock()
	defer v.pauseMu.Unlock()
	return append([]accel.VCPU(nil), v.vcpus...)
}

func (v *VM) isStopped() bool {
	select {
	case <-v.stopped:
		return true
	default:
		return false
	}
}

// Run starts every vCPU and blocks until the VM ends. The BSP runs on the
// calling goroutine, locked to its OS thread for the duration: a VM that
// starts and ends quickly pays for no extra thread, and the APs each get a
// goroutine locked to a thread of its own. With SetVCPUThread, the BSP
// gets a thread of its own too.
func (v *VM) Run() Result {
	if v.vcpuThread != nil {
		// Every vCPU thread, the BSP's too, ends with its vCPU (see
		// SetVCPUThread), so the BSP runs on a goroutine of its own
		// rather than on the caller's.
		res := make(chan Result, 1)
		go func() {
			runtime.LockOSThread()
			res <- v.run()
		}()
		return <-res
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return v.run()
}

// run is Run on the BSP's locked thread.
func (v *VM) run() Result {
	v.interactive()
	bsp, err := v.setupVCPU(0)
	if err != nil {
		v.Stop(Result{Kind: StopError, Status: StatusInternal, Err: err})
		return v.result
	}
	ready := make(chan error, v.cfg.NumCPUs)
	start := make(chan struct{})
	var wg sync.WaitGroup
	created := 1
	for i := 1; i < v.cfg.NumCPUs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			if v.vcpuThread == nil {
				defer runtime.UnlockOSThread()
			}
			v.interactive()
			c, err := v.setupVCPU(i)
			ready <- err
			if err != nil {
				return
			}
			<-start
			if !v.enterVCPUThread(i) {
				return
			}
			v.runVCPU(i, c)
		}()
		// Create vCPUs in order: the BSP first, then the APs.
		if err := <-ready; err != nil {
			v.Stop(Result{Kind: StopError, Status: StatusInternal, Err: err})
			break
		}
		created++
	}
	if created == v.cfg.NumCPUs && v.restore != nil {
		// The guest clock goes back after every vCPU has its state, just
		// before anything runs, so guest time does not jump.
		if err := v.avm.SetClock(v.restore.Clock.NS); err != nil && !errors.Is(err, accel.ErrNotSupported) {
			v.Stop(Result{Kind: StopError, Status: StatusInternal, Err: fmt.Errorf("restore guest clock: %w", err)})
		}
	}
	if created == v.cfg.NumCPUs && v.beforeGuest != nil && !v.isStopped() {
		if err := v.beforeGuest(); err != nil {
			v.Stop(Result{Kind: StopError, Status: StatusInternal, Err: err})
		}
	}
	close(start)
	close(v.running)
	if v.enterVCPUThread(0) {
		if !v.cfg.Epoch.IsZero() {
			v.log.Info("entering the guest", "since_main_ms", ms(time.Since(v.cfg.Epoch)), "restored", v.restore != nil)
		}
		v.runVCPU(0, bsp)
	}
	<-v.stopped
	wg.Wait()
	v.plat.flush()
	return v.result
}

// SetBeforeGuest has Run call fn once the VM is complete (memory mapped,
// devices open, every vCPU created with its state) and before any vCPU
// enters the guest: the moment to confine the process (package confine).
// An error stops the VM before the guest runs.
func (v *VM) SetBeforeGuest(fn func() error) { v.beforeGuest = fn }

// SetVCPUThread has each vCPU's thread call fn with the vCPU's index once
// the VM is complete and beforeGuest has run, just before that vCPU first
// enters the guest: the moment for a vCPU thread to confine itself
// further (confine.VCPUThread). With fn set, no vCPU thread goes back to
// the Go runtime's pool: each goroutine ends locked to its thread, so the
// runtime ends the thread with it, and the BSP, too, runs on a thread of
// its own rather than on Run's caller's. An error stops the VM. Call it
// before Run.
func (v *VM) SetVCPUThread(fn func(index int) error) { v.vcpuThread = fn }

// interactive gives the calling vCPU thread, locked to its goroutine, the
// normal scheduling policy where the process's helper threads are batch
// ones (schedpolicy), before any seccomp filter.
func (v *VM) interactive() {
	if err := schedpolicy.Interactive(); err != nil {
		v.log.Warn("vCPU thread keeps the batch scheduling policy", "err", err)
	}
}

// enterVCPUThread calls the vcpuThread hook on vCPU index's thread and
// reports whether the vCPU may run.
func (v *VM) enterVCPUThread(index int) bool {
	if v.isStopped() {
		return false
	}
	if v.vcpuThread == nil {
		return true
	}
	if err := v.vcpuThread(index); err != nil {
		v.Stop(Result{Kind: StopError, Status: StatusInternal, Err: fmt.Errorf("vCPU %d: %w", index, err)})
		return false
	}
	return true
}

// runVCPU runs vCPU index on the calling (locked) thread until the VM
// stops.
func (v *VM) runVCPU(index int, c accel.VCPU) {
	act := &v.ctl.activity[index]
	h := ioHandler{v.pio, v.mmio, act}
	for !v.isStopped() {
		v.maybePark(index, c)
		if v.isStopped() {
			return
		}
		act.what.Store(actRun)
		exit, err := c.Run(h)
		act.set(actExit, uint64(exit.Reason))
		if err != nil {
			v.Stop(Result{Kind: StopError, Status: StatusInternal, Err: fmt.Errorf("vCPU %d: run: %w", index, err)})
			return
		}
		if r, done := v.handleExit(index, c, exit); done {
			v.Stop(r)
			return
		}
	}
}

// ms is d in milliseconds with microsecond precision, for logs.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// handleExit acts on one exit; done means the VM must stop with r.
func (v *VM) handleExit(index int, c accel.VCPU, exit accel.Exit) (Result, bool) {
	switch exit.Reason {
	case accel.ExitInterrupted, accel.ExitDebug:
		return Result{}, false
	case accel.ExitIOAPICEOI:
		v.eois.Add(1)
		v.plat.eoi(exit.Vector)
		return Result{}, false
	case accel.ExitPowerOff:
		return Result{Kind: StopPowerOff, Status: StatusOK}, true
	case accel.ExitReset:
		return Result{Kind: StopReset, Status: StatusOK}, true
	case accel.ExitHalt:
		// Only reached when the accelerator has no way to wait for an
		// interrupt (MSHV's terminal halt): the guest is done.
		return Result{Kind: StopPowerOff, Status: StatusOK}, true
	case accel.ExitShutdown:
		return Result{Kind: StopCrash, Status: StatusCrash,
			Err: v.fatal(index, c, exit, "triple fault (the guest took an exception it could not handle)")}, true
	default:
		what := exit.Detail
		if what == "" {
			what = exit.Reason.String()
		}
		return Result{Kind: StopCrash, Status: StatusCrash, Err: v.fatal(index, c, exit, what)}, true
	}
}

// fatal describes a fatal exit: vCPU, RIP and the instruction bytes there.
func (v *VM) fatal(index int, c accel.VCPU, exit accel.Exit, what string) error {
	rip := exit.RIP
	insn := exit.Insn
	if regs, err := c.Regs(); err == nil && rip == 0 {
		rip = regs.RIP
	}
	if len(insn) == 0 {
		insn = v.instructionBytes(c, rip)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "vCPU %d: %s at RIP %#x", index, what, rip)
	if exit.Reason == accel.ExitShutdown && atResetVector(c, rip) {
		// KVM on AMD reinitialises a vCPU that hits a shutdown intercept
		// (its VMCB is undefined afterwards), and the simulator reads
		// the state from KVM: what is left is the reset vector.
		b.WriteString(", the vCPU's reset state: the accelerator reinitialised the vCPU on the triple fault (KVM on AMD does), so the state that faulted is lost")
		return errors.New(b.String())
	}
	if len(insn) > 0 {
		fmt.Fprintf(&b, ", instruction bytes: % x", insn)
	} else {
		b.WriteString(", instruction bytes unavailable")
	}
	return errors.New(b.String())
}

// atResetVector reports whether the vCPU sits at the x86 reset vector
// (CS F000 with base FFFF0000, RIP FFF0, real mode).
func atResetVector(c accel.VCPU, rip uint64) bool {
	s, err := c.Sregs()
	return err == nil && rip == 0xfff0 && s.CS.Selector == 0xf000 && s.CS.Base == 0xffff0000 && s.CR0&1 == 0
}

// Close releases everything the VM holds.
func (v *VM) Close() error {
	var errs []error
	if v.plat != nil {
		v.plat.close()
	}
	for _, c := range v.vcpus {
		errs = append(errs, c.Close())
	}
	if v.avm != nil {
		errs = append(errs, v.avm.Close())
	}
	if v.mem != nil {
		errs = append(errs, v.mem.Close())
	}
	return errors.Join(errs...)
}
