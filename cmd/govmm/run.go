//go:build !arm64

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"govmm/accel"
	"govmm/api"
	"govmm/boot"
	"govmm/cpu"
	"govmm/guests"
	"govmm/vm"
)

// defaultGuest is the built-in guest `govmm run` boots without --kernel.
const defaultGuest = "probe.elf"

type runFlags struct {
	accel, mshvDev          string
	kernel, initrd, cmdline string
	memory                  string
	cpus                    int
	topology                string
	cpuModel                string
	serial                  string
	logLevel                string
	apiSocket               string
	testDevices             bool
	hugePages               bool
	virtio                  virtioFlags
	devices                 deviceFlags
	confineFlags            // --seccomp, --landlock, --snapshot-dir (package confine)
}

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.accel, "accel", "auto", "accelerator: kvm, mshv or auto (mshv if /dev/mshv exists, else kvm)")
	fs.StringVar(&f.mshvDev, "mshv-device", mshvDevice, "with --accel mshv: the MSHV device, or \"sim\" for mshvsim, the in-process MSHV simulator on top of KVM (a test and development tool, not a hypervisor)")
	fs.StringVar(&f.kernel, "kernel", "", "guest kernel: ELF64, Multiboot v1, Linux bzImage, PVH vmlinux or a raw flat binary (default: the built-in probe guest)")
	fs.StringVar(&f.initrd, "initrd", "", "initial ramdisk (Linux initrd, Multiboot module 0)")
	fs.StringVar(&f.cmdline, "cmdline", "", "kernel command line")
	fs.StringVar(&f.memory, "memory", "256M", "guest memory size (e.g. 256M, 2G)")
	fs.IntVar(&f.cpus, "cpus", 1, "number of vCPUs")
	fs.StringVar(&f.topology, "topology", "", "arrange the vCPUs as sockets=S,cores=C,threads=T (cores per socket, threads per core; the product is --cpus; default one socket of --cpus cores)")
	fs.StringVar(&f.cpuModel, "cpu", "host", "CPU model and feature changes, e.g. host, host,-cx16 or x86-64-v3,-avx2 (govmm cpu-models lists the models)")
	fs.StringVar(&f.serial, "serial", "stdio", "serial console: stdio, file:PATH or none")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	fs.StringVar(&f.apiSocket, "api-socket", "", "serve the control socket (pause, resume, info, snapshot, migrate) at this path")
	fs.BoolVar(&f.hugePages, "hugepages", false, "back guest RAM with transparent huge pages (fewer TLB misses for large guests; larger resident size, slower first touch)")
	f.registerConfine(fs)
	f.virtio.register(fs)
	f.devices.register(fs)
	fs.BoolVar(&f.testDevices, "test-devices", false, "add the test devices: the MMIO ones the project's test guests use (at 0xfeb00000 and 0xfeb01000), QEMU's pc-testdev and pci-testdev (PCI 00:1f.0)")
}

// checkedRun is what run's flags parse to.
type checkedRun struct {
	log     *slog.Logger
	memSize uint64
	model   cpu.Model
	topo    accel.Topology
}

// check parses and checks the flags whose values stand alone (log level,
// memory, vCPUs, CPU model, topology), for run and for jail, which must
// refuse what run would before it builds anything. The logger writes to
// stderr.
func (f *runFlags) check(stderr io.Writer) (checkedRun, error) {
	var c checkedRun
	var err error
	if c.log, err = newLogger(f.logLevel, stderr); err != nil {
		return c, fail(exitUsage, "%v", err)
	}
	if c.memSize, err = parseSize(f.memory); err != nil {
		return c, fail(exitUsage, "--memory: %v", err)
	}
	if f.cpus < 1 || f.cpus > 255 {
		return c, fail(exitUsage, "--cpus %d: want 1 to 255", f.cpus)
	}
	if c.model, err = cpu.Parse(f.cpuModel); err != nil {
		return c, fail(exitUsage, "--cpu: %v", err)
	}
	if f.topology != "" {
		if c.topo, err = cpu.ParseTopology(f.topology); err == nil {
			c.topo, err = cpu.ResolveTopology(c.topo, f.cpus)
		}
		if err != nil {
			return c, fail(exitUsage, "--topology: %v", err)
		}
	}
	return c, nil
}

func cmdRun(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("govmm run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{exitUsage, errors.New("")}
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "run: unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	c, err := f.check(stderr)
	if err != nil {
		return err
	}
	log, memSize, model, topo := c.log, c.memSize, c.model, c.topo

	if f.kernel == "" && f.cmdline == "" && f.serial == "stdio" && isTerminal(stdin) {
		// A person at a terminal gets the probe's interactive TUI;
		// pipes and scripts get its one-screen summary.
		f.cmdline = "probe.mode=tui"
	}
	// Every input is checked before anything is opened, and nothing is
	// opened destructively (the serial file is truncated) before the
	// accelerator works: a bad file is 64 on any host, and a host without
	// the accelerator loses nothing.
	if err := checkAccel(f.accel); err != nil {
		return err
	}
	if err := checkSerial(f.serial); err != nil {
		return err
	}
	if err := checkSocketPath("--api-socket", f.apiSocket); err != nil {
		return err
	}
	if err := f.checkConfine(); err != nil {
		return err
	}
	kernel, kernelName, err := readKernel(f.kernel)
	if err != nil {
		return err
	}
	if _, err := boot.Detect(kernel); err != nil {
		return fail(exitUsage, "--kernel %s: %v", kernelName, err)
	}
	var initrd []byte
	if f.initrd != "" {
		if initrd, err = os.ReadFile(f.initrd); err != nil {
			return fail(exitUsage, "--initrd: %v", err)
		}
	}

	acc, err := openAccel(f.accel, f.mshvDev)
	if err != nil {
		return err
	}
	defer acc.Close()
	serialOut, closeSerial, err := openSerial(f.serial, stdout)
	if err != nil {
		return err
	}
	defer closeSerial()
	supported, err := acc.SupportedCPUID()
	if err != nil {
		return fail(exitNoAccel, "%s: read supported CPUID: %v", acc.Name(), err)
	}
	cpuid, err := model.Apply(supported)
	if err != nil {
		return fail(exitUsage, "--cpu %s on %s: %v", f.cpuModel, acc.Name(), err)
	}
	// The built-in probe is told the CPU model (it shows it); a kernel the
	// user gives gets exactly the command line asked for, as under QEMU.
	guestInfo := ""
	if f.kernel == "" {
		guestInfo = cpuGuestInfo(model, supported, cpuid)
	}
	featureMSRs := model.FeatureMSRs()
	if err := vm.CheckFeatureMSRs(acc, featureMSRs, f.cpuModel); err != nil {
		return fail(exitUsage, "%s: %v", acc.Name(), err)
	}
	if !topo.IsZero() {
		if err := cpu.CheckTopologyCPUID(cpuid, topo); err != nil {
			return fail(exitUsage, "--topology on %s: %v", acc.Name(), err)
		}
	}

	machine, err := vm.New(vm.Config{
		Accel: acc, MemSize: memSize, NumCPUs: f.cpus, CPUID: cpuid, NoPMU: model.NoPMU(), CPUModel: model.String(), Topology: topo, FeatureMSRs: featureMSRs,
		Kernel: kernel, KernelName: kernelName, Initrd: initrd, Cmdline: f.cmdline, GuestInfo: guestInfo,
		Serial: serialOut, Log: log, TestDevices: f.testDevices, HugePages: f.hugePages, Epoch: mainStart,
		Virtio: f.virtioConfig(acc.Name(), log), VFIO: f.devices.config(),
	})
	if err != nil {
		var ie *vm.InputError
		if errors.As(err, &ie) {
			return fail(exitUsage, "%v", err)
		}
		return fail(exitInternal, "%v", err)
	}
	defer machine.Close()

	return runMachine(machine, acc.Name(), f, stdin, stderr, log)
}

// runMachine runs a built VM to its end with the console, signals and the
// control socket attached, and turns its result into an exit status.
func runMachine(machine *vm.VM, accelName string, f runFlags, stdin io.Reader, stderr io.Writer, log *slog.Logger) error {
	console := newConsole(stdin, f.serial == "stdio", stderr)
	defer console.restore()
	if f.serial == "stdio" {
		// Host input reaches the guest only when its console is on stdio
		// (a file: console is output only, as in QEMU).
		go machine.CopySerialInput(console.input(func() { machine.Stop(vm.Result{Kind: vm.StopRequested, Status: 0}) }))
	}

	if f.apiSocket != "" {
		srv, err := api.Listen(f.apiSocket, &controlTarget{vm: machine, accel: accelName, start: time.Now(), log: log, snapshotDir: f.landlockWriteDir()})
		if err != nil {
			// The path was checked up front; what remains is a socket in
			// use by another govmm or a directory that changed: the input.
			machine.Stop(vm.Result{Kind: vm.StopError, Status: exitUsage})
			return fail(exitUsage, "--api-socket: %v", err)
		}
		defer srv.Close()
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		if s, ok := <-sigs; ok {
			n := int(s.(syscall.Signal))
			machine.Stop(vm.Result{Kind: vm.StopRequested, Status: 128 + n, Err: fmt.Errorf("stopped by signal %v", s)})
		}
	}()

	// Confine the process once the VM is complete and before the guest
	// runs: everything it opens is open by then.
	machine.SetBeforeGuest(func() error { return f.confine(log) })
	machine.SetVCPUThread(f.vcpuThreadHook())
	res := machine.Run()
	console.restore()
	log.Info("VM ended", "kind", res.Kind, "status", res.Status)
	if log.Enabled(context.Background(), slog.LevelDebug) {
		exits, eois := exitCounts(machine.Exits())
		for _, e := range exits {
			log.Debug("exits", "bus", e.Bus, "device", e.Device, "base", fmt.Sprintf("%#x", e.Base), "reads", e.Reads, "writes", e.Writes)
		}
		log.Debug("exits", "ioapic_eois", eois)
	}
	switch {
	case res.Err != nil:
		return &exitError{res.Status, res.Err}
	case res.Status != 0:
		return &exitError{res.Status, errors.New("")}
	}
	return nil
}

func readKernel(path string) ([]byte, string, error) {
	if path == "" {
		img, err := guests.Image(defaultGuest)
		if err != nil {
			return nil, "", fail(exitInternal, "built-in guest: %v", err)
		}
		// One word: a Multiboot guest gets the name as the first word
		// of its command line.
		return img, "built-in:" + defaultGuest, nil
	}
	img, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fail(exitUsage, "--kernel: %v", err)
	}
	return img, path, nil
}

// checkSerial validates a --serial spec without opening anything: file:PATH
// must name a file that can be created in an existing directory.
func checkSerial(spec string) error {
	switch {
	case spec == "stdio", spec == "none":
		return nil
	case strings.HasPrefix(spec, "file:"):
		path := strings.TrimPrefix(spec, "file:")
		if path == "" {
			return fail(exitUsage, "--serial file:PATH: the path is empty")
		}
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			return fail(exitUsage, "--serial %s: is a directory", spec)
		}
		if fi, err := os.Stat(filepath.Dir(path)); err != nil {
			return fail(exitUsage, "--serial %s: %v", spec, err)
		} else if !fi.IsDir() {
			return fail(exitUsage, "--serial %s: %s is not a directory", spec, filepath.Dir(path))
		}
		return nil
	}
	return fail(exitUsage, "--serial %q: want stdio, file:PATH or none", spec)
}

// openSerial opens the console's output; file:PATH is created or truncated,
// so callers open it only once the accelerator works.
func openSerial(spec string, stdout io.Writer) (io.Writer, func(), error) {
	switch {
	case spec == "stdio":
		return stdout, func() {}, nil
	case spec == "none":
		return io.Discard, func() {}, nil
	case strings.HasPrefix(spec, "file:"):
		f, err := os.Create(strings.TrimPrefix(spec, "file:"))
		if err != nil {
			return nil, nil, fail(exitUsage, "--serial: %v", err)
		}
		return f, func() { f.Close() }, nil
	}
	return nil, nil, fail(exitUsage, "--serial %q: want stdio, file:PATH or none", spec)
}
