//go:build linux && arm64

package arm64

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"govmm/accel"
	"govmm/accel/kvmarm"
	"govmm/boot/arm64image"
	"govmm/devices/bus"
	"govmm/devices/pl011"
	"govmm/internal/schedpolicy"
	"govmm/irq/routes"
	"govmm/memory"
	"govmm/pci"
	"govmm/virtio/devices"
)

// Config is what a machine is built from.
type Config struct {
	Device     string // the KVM device (default /dev/kvm)
	MemSize    uint64
	NumCPUs    int
	Kernel     []byte // arm64 Image or Image.gz
	KernelName string
	Initrd     []byte
	Cmdline    string
	Serial     io.Writer // the PL011's output, and the virtio console's
	// Input, when set, feeds the console until EOF: the virtio console
	// when Virtio.Console is set, else the PL011's receive side.
	Input io.Reader
	Log   *slog.Logger
	// Epoch, when set, is when the VMM started: the time from it to the
	// guest's first instruction is logged.
	Epoch time.Time
	// Virtio is the virtio-pci devices on the PCI bus.
	Virtio VirtioConfig
	// BeforeGuest, if set, runs once in Run when the machine is
	// complete (memory mapped, devices open, every vCPU created with
	// its state) and before any vCPU enters the guest: the moment to
	// confine the process (package confine). An error ends Run before
	// the guest runs, as a crash.
	BeforeGuest func() error
	// VCPUThread, if set, runs on each vCPU's thread with the vCPU's
	// index after BeforeGuest, just before that vCPU first enters the
	// guest: the moment for the thread to confine itself further
	// (confine.VCPUThread). With it set, each vCPU goroutine ends
	// locked to its thread, so the runtime ends the thread with it and
	// no other goroutine inherits the thread's filter. An error stops
	// the machine.
	VCPUThread func(index int) error
}

// Stop says how a machine ended.
type Stop int

const (
	StopPowerOff  Stop = iota + 1 // PSCI SYSTEM_OFF
	StopReset                     // PSCI SYSTEM_RESET
	StopCrash                     // a fatal exit (the error says which)
	StopRequested                 // Stop: the VMM ended it (a snapshot with --stop)
)

// Result is how the machine ended.
type Result struct {
	Stop Stop
	// Err describes a crash: what the guest did and where.
	Err error
}

// Machine is a built arm64 VM.
type Machine struct {
	cfg Config
	kvm *kvmarm.KVM
	vm  *kvmarm.VM
	// mem is guest RAM (one region at RAMBase), with the VMM's dirty
	// log of the devices' writes; ram is its bytes.
	mem   *memory.Memory
	ram   []byte
	vcpus []*kvmarm.VCPU
	bus   *bus.Bus
	uart  *pl011.UART
	place Placement
	// routes is the GSI routing table of the PCI functions' MSIs and
	// INTx SPIs.
	routes *routes.Table
	pci    *pci.Root
	virtio *devices.Set

	once   sync.Once
	result Result
	done   chan struct{}

	// mpidrs are the vCPUs' MPIDR_EL1 values (the device tree's CPU ids,
	// and the vGIC's addressing of redistributors).
	mpidrs []uint64
	// pause parks the vCPUs (Pause, Resume).
	pause pauser
	// restored: the machine came from a snapshot, and its virtio queues
	// are looked at once the vCPUs run (startVirtio).
	restored bool
}

// spiLine is an irq.Line that drives one SPI of the in-kernel vGIC.
type spiLine struct {
	vm    *kvmarm.VM
	intid uint32
	log   *slog.Logger
}

func (l spiLine) Set(high bool) {
	if err := l.vm.SetSPI(l.intid, high); err != nil {
		l.log.Error("interrupt line", "err", err)
	}
}

func (l spiLine) Pulse() { l.Set(true); l.Set(false) }

// New builds the machine: RAM, vGICv3 and its ITS, vCPUs, the PL011, the
// PCI host bridge with the virtio devices, the kernel, initrd and device
// tree in memory, and vCPU 0 at the kernel's entry.
func New(cfg Config) (m *Machine, err error) {
	if cfg.Device == "" {
		cfg.Device = "/dev/kvm"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Serial == nil {
		cfg.Serial = io.Discard
	}
	if cfg.Virtio.Console {
		cfg.Serial = devices.SharedOutput(cfg.Serial)
	}
	if cfg.NumCPUs < 1 || cfg.NumCPUs > MaxCPUs {
		return nil, &InputError{fmt.Errorf("%d vCPUs: the arm64 machine has 1 to %d", cfg.NumCPUs, MaxCPUs)}
	}
	k, err := arm64image.Load(cfg.Kernel)
	if err != nil {
		return nil, &InputError{fmt.Errorf("kernel %s: %w", cfg.KernelName, err)}
	}
	place, err := Place(k.Header, uint64(len(cfg.Initrd)), cfg.MemSize)
	if err != nil {
		return nil, &InputError{err}
	}
	m, err = build(cfg, place, nil, nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			m.Close()
			m = nil
		}
	}()

	tree := TreeConfig{MemSize: cfg.MemSize, MPIDRs: m.mpidrs, Cmdline: cfg.Cmdline}
	if len(cfg.Initrd) > 0 {
		tree.Initrd, tree.InitrdEnd = place.Initrd, place.InitrdEnd
	}
	dtb, err := DeviceTree(tree)
	if err != nil {
		return nil, err
	}
	copy(m.ram[place.Kernel-RAMBase:], k.Image)
	if len(cfg.Initrd) > 0 {
		copy(m.ram[place.Initrd-RAMBase:], cfg.Initrd)
	}
	copy(m.ram[place.DTB-RAMBase:], dtb)

	// The boot protocol's entry state: x0 the DTB, x1-x3 zero, the MMU
	// and caches off and interrupts masked at EL1 (what
	// KVM_ARM_VCPU_INIT's reset leaves; PSTATE is set anyway).
	bsp := m.vcpus[0]
	const pstateEL1hDAIF = 0x3c5
	for _, r := range []struct{ id, val uint64 }{
		{kvmarm.XReg(0), place.DTB}, {kvmarm.XReg(1), 0}, {kvmarm.XReg(2), 0}, {kvmarm.XReg(3), 0},
		{kvmarm.RegPState, pstateEL1hDAIF}, {kvmarm.RegPC, place.Kernel},
	} {
		if err := bsp.SetReg(r.id, r.val); err != nil {
			return nil, err
		}
	}
	cfg.Log.Info("arm64 machine", "cpus", cfg.NumCPUs, "memory_mib", cfg.MemSize>>20,
		"kernel", fmt.Sprintf("%#x-%#x", place.Kernel, place.KernelEnd), "gzip", k.Compressed,
		"initrd", fmt.Sprintf("%#x-%#x", place.Initrd, place.InitrdEnd), "dtb", fmt.Sprintf("%#x (%d bytes)", place.DTB, len(dtb)))
	return m, nil
}

// build makes the machine without its guest: KVM, RAM (mem, which the
// machine then owns, closed on error too; or anonymous; or mapped private
// from memFile, a snapshot's memory), the vGICv3 and its ITS, the vCPUs,
// the PL011 and the PCI bus with the virtio devices.
func build(cfg Config, place Placement, memFile *os.File, mem *memory.Memory) (m *Machine, err error) {
	built := &Machine{cfg: cfg, place: place, done: make(chan struct{}), mem: mem}
	built.pause.init()
	m = built
	defer func() {
		// Every failure below returns a nil Machine: close the one
		// being built, whatever m now holds.
		if err != nil {
			built.Close()
		}
	}()
	if m.kvm, err = kvmarm.Open(cfg.Device); err != nil {
		return nil, err
	}
	if max := m.kvm.MaxVCPUs(); max > 0 && cfg.NumCPUs > max {
		return nil, &InputError{fmt.Errorf("%d vCPUs: this host's KVM allows %d", cfg.NumCPUs, max)}
	}
	if m.vm, err = m.kvm.CreateVM(); err != nil {
		return nil, err
	}
	switch {
	case m.mem != nil:
	case memFile != nil:
		m.mem, err = memory.NewAtFromFile(memFile, RAMBase, cfg.MemSize)
	default:
		m.mem, err = memory.NewAt(RAMBase, cfg.MemSize, memory.Options{})
	}
	if err != nil {
		return nil, fmt.Errorf("allocate %d MiB of guest RAM: %w", cfg.MemSize>>20, err)
	}
	if rs := m.mem.Regions(); len(rs) != 1 || rs[0].GPA != RAMBase || uint64(len(rs[0].Host)) != cfg.MemSize {
		return nil, fmt.Errorf("guest RAM: want %d MiB in one region at %#x", cfg.MemSize>>20, uint64(RAMBase))
	}
	m.ram = m.mem.Regions()[0].Host
	if err := m.vm.MapMemory(accel.MemoryRegion{GPA: RAMBase, Host: m.ram}); err != nil {
		return nil, err
	}
	if err := m.vm.CreateGICv3(GICDistBase, GICRedistBase, NumIRQs); err != nil {
		return nil, err
	}
	mpidrs := make([]uint64, cfg.NumCPUs)
	for i := range cfg.NumCPUs {
		v, err := m.vm.CreateVCPU(i, i != 0)
		if err != nil {
			return nil, err
		}
		m.vcpus = append(m.vcpus, v)
		if mpidrs[i], err = v.Reg(kvmarm.RegMPIDR); err != nil {
			return nil, err
		}
	}
	// The ITS exists before the vGIC is initialised, so that the
	// redistributors offer LPIs (GICR_TYPER.PLPIS).
	if err := m.vm.CreateITS(GICITSBase); err != nil {
		return nil, err
	}
	if err := m.vm.InitGIC(); err != nil {
		return nil, err
	}

	m.uart = pl011.New(cfg.Serial, spiLine{m.vm, 32 + UARTSPI, cfg.Log})
	m.bus = bus.New("mmio", cfg.Log)
	if err := m.bus.Register(UARTBase, UARTSize, "pl011", m.uart); err != nil {
		return nil, err
	}
	m.routes = routes.New(m.vm, cfg.Log)
	if err := routeINTx(m.routes); err != nil {
		return nil, err
	}
	m.pci = pci.NewRoot(PCIWindows())
	if err := m.bus.Register(PCIECAMBase, PCIECAMSize, "pci-ecam", m.pci.ECAM()); err != nil {
		return nil, err
	}
	// BARs answer what no fixed device claims.
	m.bus.SetFallback(m.pci.MemSpace())
	m.virtio, err = addVirtio(cfg.Virtio, m.pci, m.routes, m.vm, guestRAM{RAMBase, m.ram, m.mem}, cfg.Log, cfg.Serial)
	if err != nil {
		return nil, err
	}

	m.mpidrs = mpidrs
	return m, nil
}

// Placement is where the kernel, initrd and DTB went.
func (m *Machine) Placement() Placement { return m.place }

// ioHandler sends a vCPU's MMIO to the bus; arm64 has no port I/O.
type ioHandler struct{ b *bus.Bus }

func (h ioHandler) PIORead(port uint16, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}
func (h ioHandler) PIOWrite(port uint16, data []byte)  {}
func (h ioHandler) MMIORead(addr uint64, data []byte)  { h.b.Read(addr, data) }
func (h ioHandler) MMIOWrite(addr uint64, data []byte) { h.b.Write(addr, data) }

// stop records the first way the machine ended and stops every vCPU.
func (m *Machine) stop(r Result) {
	m.once.Do(func() {
		m.result = r
		close(m.done)
		m.pause.wake()
		for _, v := range m.vcpus {
			v.Kick()
		}
	})
}

// Run runs the vCPUs until the guest powers off, resets or crashes.
func (m *Machine) Run() Result {
	if m.cfg.Input != nil {
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := m.cfg.Input.Read(buf)
				if n > 0 {
					if c := m.virtio.Console; c != nil {
						c.Input(buf[:n])
					} else {
						m.uart.Receive(buf[:n])
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	var wg sync.WaitGroup
	h := ioHandler{m.bus}
	if !m.cfg.Epoch.IsZero() {
		m.cfg.Log.Info("guest start", "since_main", time.Since(m.cfg.Epoch))
	}
	// Each vCPU's thread is locked and takes the normal scheduling policy
	// back before BeforeGuest, whose seccomp filter does not allow
	// sched_setattr; the vCPUs enter the guest once it has run.
	start := make(chan struct{})
	var locked sync.WaitGroup
	for _, v := range m.vcpus {
		wg.Add(1)
		locked.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			if m.cfg.VCPUThread == nil {
				defer runtime.UnlockOSThread()
			}
			if err := schedpolicy.Interactive(); err != nil {
				m.cfg.Log.Warn("vCPU thread keeps the batch scheduling policy", "err", err)
			}
			locked.Done()
			<-start
			select {
			case <-m.done: // BeforeGuest failed
				return
			default:
			}
			if m.cfg.VCPUThread != nil {
				if err := m.cfg.VCPUThread(v.Index()); err != nil {
					m.stop(Result{Stop: StopCrash, Err: fmt.Errorf("vCPU %d: %w", v.Index(), err)})
					return
				}
			}
			for {
				exit, err := v.Run(h)
				if err != nil {
					m.stop(Result{Stop: StopCrash, Err: err})
					return
				}
				switch exit.Reason {
				case accel.ExitInterrupted:
					select {
					case <-m.done:
						return
					default:
					}
					if !m.pause.park(m.done) {
						return
					}
					continue
				case accel.ExitPowerOff:
					m.stop(Result{Stop: StopPowerOff})
				case accel.ExitReset:
					m.stop(Result{Stop: StopReset})
				default:
					m.stop(Result{Stop: StopCrash, Err: fmt.Errorf("vCPU %d: %s at pc %#x: %s", v.Index(), exit.Reason, exit.RIP, exit.Detail)})
				}
				return
			}
		}()
	}
	locked.Wait()
	if m.cfg.BeforeGuest != nil {
		if err := m.cfg.BeforeGuest(); err != nil {
			m.stop(Result{Stop: StopCrash, Err: err})
		}
	}
	if m.restored && !closed(m.done) {
		go m.startVirtio()
	}
	close(start)
	wg.Wait()
	if err := m.uart.OutputError(); err != nil && m.result.Err == nil && m.result.Stop != StopCrash {
		m.cfg.Log.Warn("console output failed", "err", err)
	}
	return m.result
}

// Close releases the devices, the VM and its memory. Call it after Run
// returned.
func (m *Machine) Close() error {
	var errs []error
	if m.virtio != nil {
		errs = append(errs, m.virtio.Close())
		m.virtio = nil
	}
	if m.routes != nil {
		errs = append(errs, m.routes.Close())
		m.routes = nil
	}
	if m.vm != nil {
		errs = append(errs, m.vm.Close())
		m.vm = nil
	}
	if m.mem != nil {
		errs = append(errs, m.mem.Close())
		m.mem, m.ram = nil, nil
	}
	if m.kvm != nil {
		errs = append(errs, m.kvm.Close())
		m.kvm = nil
	}
	return errors.Join(errs...)
}
