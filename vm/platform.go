package vm

import (
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"

	"govmm/accel"
	"govmm/acpi"
	"govmm/boot"
	"govmm/devices/acpipm"
	"govmm/devices/debugexit"
	"govmm/devices/i8042"
	"govmm/devices/irqtestdev"
	"govmm/devices/pcihp"
	"govmm/devices/pcitestdev"
	"govmm/devices/pctestdev"
	"govmm/devices/pit"
	"govmm/devices/post"
	"govmm/devices/rtc"
	"govmm/devices/serial"
	"govmm/devices/testdev"
	"govmm/irq/chipset"
	"govmm/memory"
	"govmm/mptable"
	"govmm/pci"
	"govmm/platform"
	"govmm/virtio"
	"govmm/virtio/console"
	"govmm/virtio/devices"
)

// platformDevices is the PC govmm presents: legacy devices, interrupt
// controllers, firmware tables and the loaded kernel's entry state.
type platformDevices struct {
	chips   *chipset.Chipset
	extint  accel.ExtINTSource
	uart    *serial.UART
	rtc     *rtc.RTC
	pit     *pit.PIT
	pm      *acpipm.PM
	testdev *testdev.Device
	irqdev  *irqtestdev.Device
	pctest  *pctestdev.Device
	pci     *pci.Root
	pcitest *pcitestdev.Device
	virtio  []*devices.Device
	// console is the virtio console (--console virtio), or nil.
	console   *console.Device
	virtioSet *devices.Set
	vfio      *vfioDevices
	// hotplug is the PCI hotplug controller, hotSlots the slots a
	// device may be hot-added to (those free at boot, which the DSDT
	// lists), hotDevs the devices hot-added and still there, by slot
	// (vm/hotplug.go, vm/hotstate.go); hotDevs is guarded by VM.hotMu.
	hotplug  *pcihp.Controller
	hotSlots []int
	hotDevs  map[int]hotDevice
	entry    *boot.Entry
	// running and stopped are the VM's: closed once every vCPU runs
	// with its state, and when the VM stops.
	running, stopped <-chan struct{}
}

// VirtioConfig is the VM's virtio devices, in the fixed order and at
// the PCI slots package virtio/devices gives them (the same as on arm64).
type VirtioConfig = devices.Config

// addVirtio builds the virtio devices and puts them on the bus in a fixed
// order, so a restore allocates the same slots and GSIs.
func (v *VM) addVirtio(p *platformDevices, consoleOut io.Writer) error {
	router := p.chips.Routes()
	vc := v.cfg.Virtio
	if vc.Balloon && vc.BalloonKeep == "" && len(v.cfg.VFIO.Devices) > 0 {
		// A released page would leave the IOMMU mapping the old one.
		vc.BalloonKeep = "VFIO passthrough pins guest RAM for device DMA"
	}
	set, err := devices.Build(vc, devices.Host{
		Root: p.pci, Mem: v.mem, Log: v.log, ConsoleOut: consoleOut,
		Router: func(int) virtio.Router { return router },
		// INTA of each function, by the _PRT's rule.
		INTxGSI: func(slot int) uint32 { return uint32(platform.PCIGSI(slot, 0)) },
	})
	if err != nil {
		var ie *devices.InputError
		if errors.As(err, &ie) {
			return &InputError{Err: err}
		}
		return err
	}
	p.virtio = set.Devices
	p.console = set.Console
	p.virtioSet = set
	return nil
}

// pauseDevices stops the virtio devices serving their queues and waits for
// their requests in flight, so that guest memory and device state agree
// while the VM is paused.
func (p *platformDevices) pauseDevices() {
	p.virtioSet.Pause()
}

func (p *platformDevices) resumeDevices() {
	p.vfio.run() // devices a snapshot or a failed migration stopped
	p.virtioSet.Resume()
}

// pciWindows are the host bridge's windows for this much RAM: 32-bit BARs
// in the hole below 4 GiB, 64-bit BARs from the first 1 GiB boundary above
// RAM (and above 4 GiB).
func pciWindows(memSize uint64) pci.Windows {
	top := uint64(memory.MMIOHoleEnd)
	if memSize > memory.MMIOHoleStart {
		top += memSize - memory.MMIOHoleStart
	}
	base64 := (top + platform.PCIMMIO64Align - 1) &^ (platform.PCIMMIO64Align - 1)
	return pci.Windows{
		IOBase: platform.PortPCIIOWindow, IOEnd: platform.PortPCIIOEnd,
		Mem32Base: platform.PCIMMIO32Base, Mem32End: platform.PCIMMIO32End,
		Mem64Base: base64, Mem64End: base64 + platform.PCIMMIO64Size,
	}
}

func (v *VM) buildPlatform(mode buildMode) error {
	p := &platformDevices{running: v.running, stopped: v.stopped}
	v.plat = p
	var err error
	p.chips, err = chipset.New(v.avm, v.kickBSP)
	if err != nil {
		return fmt.Errorf("interrupt controllers: %w", err)
	}
	p.extint = p.chips.ExtINT()
	stop := func(r Result) func() { return func() { v.Stop(r) } }

	serialOut := v.cfg.Serial
	if v.cfg.Virtio.Console && serialOut != nil {
		// The UART and the virtio console write to the same place
		// from different goroutines.
		serialOut = devices.SharedOutput(serialOut)
	}
	p.uart = serial.New(serialOut, p.chips.Line(platform.IRQCOM1))
	p.rtc = rtc.New(p.chips.Line(platform.IRQRTC), time.Now)
	low := min(v.mem.Size(), uint64(memory.MMIOHoleStart))
	p.rtc.SetMemorySize(low, v.mem.Size()-low)
	p.pit = pit.New(p.chips.Line(platform.IRQPIT))
	p.pm = acpipm.New(p.chips.Line(platform.IRQSCI), stop(Result{Kind: StopPowerOff, Status: StatusOK}),
		stop(Result{Kind: StopReset, Status: StatusOK}))
	dbg := debugexit.New(func(status int) {
		v.Stop(Result{Kind: StopDebugExit, Status: status})
	})
	p.pci = pci.NewRoot(pciWindows(v.mem.Size()))
	kbd := i8042.New(stop(Result{Kind: StopReset, Status: StatusOK}))

	type dev struct {
		base, size uint64
		name       string
		d          interface {
			Read(uint64, []byte)
			Write(uint64, []byte)
		}
	}
	pio := []dev{
		{platform.PortCOM1, 8, "uart0", p.uart},
		{platform.PortCMOS, 2, "rtc", p.rtc},
		{platform.PortPIT, 4, "pit", p.pit},
		{platform.PortSpeaker, 1, "pit-port61", p.pit.Port61()},
		{platform.PortPOST, 1, "post", post.New(v.log)},
		{platform.PortDebugExit, 4, "debug-exit", dbg},
		{platform.PortACPIPM, platform.PortACPIPMSize, "acpi-pm", p.pm},
		{platform.PortACPIReset, 1, "acpi-reset", p.pm.ResetPort()},
	}
	for _, d := range pio {
		if err := v.pio.Register(d.base, d.size, d.name, d.d); err != nil {
			return err
		}
	}
	// The PCI configuration ports leave 0xCF9 (reset control) free.
	if err := p.pci.RegisterPorts(v.pio); err != nil {
		return err
	}
	if err := v.mmio.Register(platform.PCIECAMBase, platform.PCIECAMSize, "pci-ecam", p.pci.ECAM()); err != nil {
		return err
	}
	// BARs answer what no fixed device claims.
	v.pio.SetFallback(p.pci.IOSpace())
	v.mmio.SetFallback(p.pci.MemSpace())
	if err := kbd.Register(v.pio); err != nil {
		return err
	}
	if err := p.chips.Register(v.pio, v.mmio); err != nil {
		return err
	}
	if v.cfg.TestDevices {
		p.testdev = testdev.New()
		if err := v.mmio.Register(platform.TestDeviceBase, platform.TestDeviceSize, "testdev", p.testdev); err != nil {
			return err
		}
		p.irqdev = irqtestdev.New(irqtestdev.Config{
			Level: p.chips.Line(16), Routes: p.chips.Routes(), SignalMSI: v.avm.SignalMSI, Log: v.log,
		})
		if err := v.mmio.Register(irqtestdev.Base, irqtestdev.Size, "irqtestdev", p.irqdev); err != nil {
			return err
		}
		p.pctest = pctestdev.New(pctestdev.Config{Line: p.chips.Line, Flush: v.flushPage,
			Log: func(msg string, args ...any) { v.log.Warn(msg, args...) }})
		if err := p.pctest.Register(v.pio, v.mmio); err != nil {
			return err
		}
		if p.pcitest, err = pcitestdev.New(); err != nil {
			return err
		}
		if err := p.pci.Add(pcitestdev.Slot, p.pcitest.Function()); err != nil {
			return fmt.Errorf("pci-testdev: %w", err)
		}
	}

	if err := v.addVirtio(p, serialOut); err != nil {
		return err
	}
	if err := v.addVFIO(p, mode); err != nil {
		return err
	}
	if err := v.hotplugSetup(p); err != nil {
		return err
	}

	if mode == buildIncoming {
		// The saved VM's hot-added devices, after the boot-time ones
		// (whose slots decide hotSlots, as at the saved VM's boot).
		return v.rebuildHotAdded(p, v.cfg.hotAdded)
	}
	w := p.pci.Windows()
	rsdp, err := acpi.Build(v.mem, acpi.Config{NumCPUs: v.cfg.NumCPUs, PCI: &acpi.PCIHost{
		ECAMBase: platform.PCIECAMBase, BusEnd: platform.PCIECAMBusEnd,
		Mem32Base: w.Mem32Base, Mem32End: w.Mem32End, Mem64Base: w.Mem64Base, Mem64End: w.Mem64End,
		GSI: platform.PCIGSI, Hotplug: p.hotSlots,
	}})
	if err != nil {
		return fmt.Errorf("build ACPI tables: %w", err)
	}
	if err := mptable.Write(v.mem, v.cfg.NumCPUs); err != nil {
		// The MP table only serves guests that predate ACPI; a machine
		// too large for it still has the MADT.
		v.log.Info("no MP table", "reason", err)
	}
	p.entry, err = boot.Load(v.mem, v.cfg.Kernel, boot.Options{Cmdline: v.cfg.Cmdline, KernelName: v.cfg.KernelName, Initrd: v.cfg.Initrd, RSDP: rsdp, GuestInfo: v.cfg.GuestInfo})
	if err != nil {
		return &InputError{Err: fmt.Errorf("load kernel %s: %w", v.cfg.KernelName, err)}
	}
	v.log.Debug("kernel loaded", "format", p.entry.Format, "rip", fmt.Sprintf("%#x", p.entry.Regs.RIP))
	return nil
}

func (p *platformDevices) restoreDevices(d *DeviceState) error {
	for _, r := range []struct {
		name string
		fn   func() error
	}{
		{"interrupt controllers", func() error { return p.chips.Restore(d.Chipset) }},
		{"UART", func() error { return p.uart.Restore(d.UART) }},
		{"RTC", func() error { return p.rtc.Restore(d.RTC) }},
		{"PIT", func() error { return p.pit.Restore(d.PIT) }},
		{"ACPI PM", func() error { return p.pm.Restore(d.PM) }},
	} {
		if err := r.fn(); err != nil {
			return &InputError{Err: fmt.Errorf("restore %s: %w", r.name, err)}
		}
	}
	if (d.TestDev != nil) != (p.testdev != nil) || (d.IRQTest != nil) != (p.irqdev != nil) || d.PCTest != nil && p.pctest == nil || d.PCITest != nil && p.pcitest == nil {
		return &InputError{Err: errors.New("restore: the snapshot's test devices do not match the machine")}
	}
	if p.testdev != nil {
		if err := p.testdev.Restore(*d.TestDev); err != nil {
			return &InputError{Err: fmt.Errorf("restore test device: %w", err)}
		}
		if err := p.irqdev.Restore(*d.IRQTest); err != nil {
			return &InputError{Err: fmt.Errorf("restore interrupt test device: %w", err)}
		}
		if d.PCTest != nil { // snapshots from before pc-testdev have none: it stays in its reset state
			if err := p.pctest.Restore(*d.PCTest); err != nil {
				return &InputError{Err: fmt.Errorf("restore pc-testdev: %w", err)}
			}
		}
		if d.PCITest != nil { // likewise for pci-testdev
			if err := p.pcitest.Restore(*d.PCITest); err != nil {
				return &InputError{Err: fmt.Errorf("restore pci-testdev: %w", err)}
			}
		}
	}
	// A different set of virtio devices is named as such, before the PCI
	// bus would refuse its different functions.
	if len(d.Virtio) != len(p.virtio) {
		var have []string
		for _, x := range p.virtio {
			have = append(have, x.Transport.Device().Describe())
		}
		var want []string
		for _, x := range d.Virtio {
			want = append(want, x.Device)
		}
		return &InputError{Err: fmt.Errorf("restore: the snapshot has virtio devices %q, this machine %q (give the same --disk, --rng, --vsock, --net, --console and --balloon flags; the saved VM's hot-added devices are rebuilt from its record)", want, have)}
	}
	// Snapshots from before hot-add, or whose PCIU was clear, leave the
	// hotplug controller in its reset state.
	if d.Hotplug != nil && p.hotplug != nil {
		if err := p.hotplug.Restore(*d.Hotplug); err != nil {
			return &InputError{Err: fmt.Errorf("restore PCI hotplug controller: %w", err)}
		}
	}
	// Snapshots from before the PCI host bridge have no PCI state: the
	// bus stays as built, with the VMM's BAR placement.
	if d.PCI != nil {
		if err := p.pci.Restore(*d.PCI); err != nil {
			return &InputError{Err: fmt.Errorf("restore PCI bus: %w", err)}
		}
	}
	if p.console != nil && d.VirtioConsole != nil {
		if err := p.console.Restore(*d.VirtioConsole); err != nil {
			return &InputError{Err: fmt.Errorf("restore: %w", err)}
		}
	}
	if b := p.virtioSet.Balloon; b != nil && d.VirtioBalloon != nil {
		b.Restore(*d.VirtioBalloon)
	}
	// Virtio devices after the bus: their MSI-X control bits and BARs
	// are in its configuration space.
	for i, x := range p.virtio {
		if err := x.Transport.Restore(d.Virtio[i]); err != nil {
			return &InputError{Err: fmt.Errorf("restore virtio device: %w (give the same --disk, --rng, --vsock, --net, --console and --balloon flags as the saved VM had)", err)}
		}
	}
	if len(p.virtio) > 0 {
		// Requests the driver posted before the snapshot are served
		// once the vCPUs run with their restored LAPICs.
		go func() {
			select {
			case <-p.running:
				for _, x := range p.virtio {
					x.Transport.Start()
				}
			case <-p.stopped:
			}
		}()
	}
	return nil
}

// InputError marks failures caused by what the user handed in (a bad
// kernel image, an impossible configuration) rather than by govmm or the host.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// SerialInput feeds host input to the guest's console: the virtio
// console when the VM has one (--console virtio), else the serial port.
// Input that arrives before the guest runs (a restore, a migration's
// destination) waits until every vCPU exists with its state: the UART's
// interrupt would otherwise reach no LAPIC and be lost. Input after the VM
// stopped is dropped.
func (v *VM) SerialInput(p []byte) {
	select {
	case <-v.running:
	case <-v.stopped:
		return
	}
	if c := v.plat.console; c != nil {
		c.Input(p) // waits while the guest is slow to read
		return
	}
	v.plat.uart.Input(p)
}

// CopySerialInput copies r to the guest's serial port until r ends.
func (v *VM) CopySerialInput(r io.Reader) {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			v.SerialInput(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// kickBSP makes the BSP notice a change of the PIC's output: a vCPU that
// can re-check its ExtINT source in place is woken, any other is kicked.
func (v *VM) kickBSP() {
	if cs := v.vcpuList(); len(cs) > 0 {
		if w, ok := cs[0].(accel.ExtINTWaker); ok {
			w.Wake()
			return
		}
		cs[0].Kick()
	}
}

func (p *platformDevices) eoi(vector uint8) { p.chips.EOI(vector) }

func (p *platformDevices) flush() {
	if p.uart != nil {
		p.uart.Flush()
	}
}

func (p *platformDevices) close() {
	p.flush()
	p.vfio.close()
	p.virtioSet.Close()
	if p.rtc != nil {
		p.rtc.Close()
	}
	if p.pit != nil {
		p.pit.Close()
	}
	if p.irqdev != nil {
		p.irqdev.Close()
	}
	if p.pm != nil {
		p.pm.Close()
	}
	if p.chips != nil {
		p.chips.Close()
	}
}

// flushPage drops the host's mapping of the guest page at gpa and maps it
// again, as QEMU's pc-testdev does: the accelerator must fault the page
// back in (through its MMU notifier), which is what the guest's test
// exercises. The contents do not change.
func (v *VM) flushPage(gpa uint64) error {
	page, err := v.mem.Slice(gpa, 4096)
	if err != nil {
		return err
	}
	if err := unix.Mprotect(page, unix.PROT_NONE); err != nil {
		return fmt.Errorf("mprotect guest page %#x: %w", gpa, err)
	}
	return unix.Mprotect(page, unix.PROT_READ|unix.PROT_WRITE)
}
