package main

// `govmm restore` and `govmm migrate receive` on arm64: a snapshot of an
// arm64 VM (govmm snapshot), or one arriving by live migration from
// another arm64 govmm, comes back on KVM/arm64 with the devices the
// command line gives again.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"govmm/accel/kvmarm"
	"govmm/accel/mshv/mshvarm"
	"govmm/memory"
	"govmm/migrate"
	"govmm/platform/arm64"
	"govmm/snapshot"
)

// arm64RestoreFlags are the run flags that make sense for a VM that
// already exists (in a snapshot or on another host).
type arm64RestoreFlags struct {
	memory, serial, logLevel, apiSocket, accelName string
	cpus                                           int
	vf                                             virtioFlags
	confineFlags
	// x86Only lists the x86-only flags given (--mshv-device, --device).
	x86Only []string
}

func (f *arm64RestoreFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.accelName, "accel", "auto", "accelerator: kvm or auto (MSHV is not implemented on arm64)")
	for _, name := range []string{"mshv-device", "device"} {
		fs.Func(name, "not implemented on arm64", func(string) error { f.x86Only = append(f.x86Only, "--"+name); return nil })
	}
	fs.StringVar(&f.memory, "memory", "", "expected guest memory size: a saved or incoming VM of another size is refused (not a resize)")
	fs.IntVar(&f.cpus, "cpus", 0, "expected vCPU count (refused if the saved VM differs)")
	fs.StringVar(&f.serial, "serial", "stdio", "PL011 console: stdio, file:PATH or none")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	fs.StringVar(&f.apiSocket, "api-socket", "", "serve the control socket at this path")
	f.vf.register(fs)
	f.registerConfine(fs)
}

// check validates the flags before anything is opened: the logger, the
// console's writer and input, and the expected memory size (0: any).
func (f *arm64RestoreFlags) check(what string, stdin io.Reader, stdout, stderr io.Writer) (*slog.Logger, io.Writer, io.Reader, uint64, error) {
	switch f.accelName {
	case "kvm", "auto":
	case "mshv":
		return nil, nil, nil, 0, fail(exitUsage, "%s: --accel mshv: %v", what, mshvarm.NotImplemented())
	default:
		return nil, nil, nil, 0, fail(exitUsage, "%s: --accel %q: want kvm or auto", what, f.accelName)
	}
	if len(f.x86Only) > 0 {
		return nil, nil, nil, 0, notOnARM64(strings.Join(f.x86Only, ", "))
	}
	if f.vf.balloon.on {
		return nil, nil, nil, 0, notOnARM64("--balloon")
	}
	if err := f.checkConfine(); err != nil {
		return nil, nil, nil, 0, err
	}
	if f.cpus < 0 || f.cpus > arm64.MaxCPUs {
		return nil, nil, nil, 0, fail(exitUsage, "--cpus %d: want 1 to %d", f.cpus, arm64.MaxCPUs)
	}
	log, err := newLogger(f.logLevel, stderr)
	if err != nil {
		return nil, nil, nil, 0, fail(exitUsage, "%v", err)
	}
	out, input, err := serialFlag(f.serial, stdin, stdout)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	if err := checkSocketPath("--api-socket", f.apiSocket); err != nil {
		return nil, nil, nil, 0, err
	}
	var memSize uint64
	if f.memory != "" {
		if memSize, err = parseSize(f.memory); err != nil {
			return nil, nil, nil, 0, fail(exitUsage, "--memory: %v", err)
		}
	}
	return log, out, input, memSize, nil
}

func (f *arm64RestoreFlags) virtio() arm64.VirtioConfig {
	vf := &f.vf
	return arm64.VirtioConfig{Disks: vf.disks, RNG: vf.rng, Vsock: vf.vsock.c, Nets: vf.nets, Console: vf.console.virtio}
}

func cmdRestore(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("govmm restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f arm64RestoreFlags
	var dir string
	fs.StringVar(&dir, "snapshot", "", "snapshot directory (govmm snapshot --dir)")
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{exitUsage, errors.New("")}
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "restore: unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	if dir == "" {
		return fail(exitUsage, "restore: --snapshot DIR is required")
	}
	log, out, input, memSize, err := f.check("restore", stdin, stdout, stderr)
	if err != nil {
		return err
	}
	term := newTerminal(input, stderr)
	st, memFile, err := snapshot.ReadDir(dir)
	if err != nil {
		return fail(exitUsage, "restore: %v", err)
	}
	defer memFile.Close()
	saved, err := arm64.ParseState(st)
	if err != nil {
		return fail(exitUsage, "restore %s: %v", dir, err)
	}
	if memSize != 0 && memSize != saved.Machine.MemSize {
		return fail(exitUsage, "restore %s: the saved VM has %d MiB of memory, --memory says %d MiB", dir, saved.Machine.MemSize>>20, memSize>>20)
	}
	if f.cpus != 0 && f.cpus != saved.Machine.NumCPUs {
		return fail(exitUsage, "restore %s: the saved VM has %d vCPUs, --cpus says %d", dir, saved.Machine.NumCPUs, f.cpus)
	}
	kernel := "snapshot " + dir
	cfg := arm64.Config{
		KernelName: kernel, Serial: &lateWriter{w: &out}, Input: term.input(), Log: log, Epoch: mainStart,
		Virtio: f.virtio(),
	}
	f.setMachineHooks(&cfg, f.apiSocket)
	m, err := arm64.Restore(cfg, saved, memFile)
	if err != nil {
		return machineError(fmt.Errorf("restore %s: %w", dir, err))
	}
	defer m.Close()
	log.Info("restored", "dir", dir)
	return runARM64(m, term, kernel, f.serial, &out, f.apiSocket, f.writeDir(f.apiSocket), stderr, log)
}

// helloMachineARM64 decodes and checks the arm64 machine a migration
// hello announces (its architecture was checked already).
func helloMachineARM64(b json.RawMessage) (arm64.MachineState, error) {
	var m arm64.MachineState
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("migration hello: the machine: %w", err)
	}
	if err := m.Check(); err != nil {
		return m, fmt.Errorf("migration hello: the incoming %w", err)
	}
	return m, nil
}

func cmdMigrate(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "send" && args[0] != "receive") {
		return fail(exitUsage, "migrate: want `govmm migrate send --api-socket PATH --to ADDR` or `govmm migrate receive --listen ADDR`")
	}
	if args[0] == "send" {
		return cmdMigrateSend(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("govmm migrate receive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f arm64RestoreFlags
	var listen string
	f.register(fs)
	fs.StringVar(&listen, "listen", "", "where to accept the incoming VM: unix:PATH or tcp:HOST:PORT")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{exitUsage, errors.New("")}
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "migrate receive: unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	if listen == "" {
		return fail(exitUsage, "migrate receive: --listen is required")
	}
	log, out, input, memSize, err := f.check("migrate receive", stdin, stdout, stderr)
	if err != nil {
		return err
	}
	term := newTerminal(input, stderr)
	if err := checkListen(listen); err != nil {
		return err
	}
	// As on x86, a host without KVM is told before anything listens.
	k, err := kvmarm.Open("/dev/kvm")
	if err != nil {
		return machineError(fmt.Errorf("migrate receive: %w", err))
	}
	k.Close()
	ln, err := migrate.Listen(listen)
	if err != nil {
		return fail(exitUsage, "migrate receive: --listen: %v", err)
	}
	defer ln.Close()
	opts := migrate.ReceiveOptions{MemSize: memSize, CPUs: f.cpus, Arch: snapshot.ArchARM64}
	// As on x86 (receiveVM): peers whose hello this receiver refuses are
	// logged and it keeps waiting.
	var kernel string
	m, in, conn, err := receiveVM(ln, listen, opts, func(h migrate.Hello) (*arm64.Machine, *memory.Memory, error) {
		ms, err := helloMachineARM64(h.Machine)
		if err != nil {
			return nil, nil, &migrate.HelloError{Err: err}
		}
		mem, err := memory.NewAt(arm64.RAMBase, h.MemSize, memory.Options{})
		if err != nil {
			return nil, nil, err
		}
		// A VM migrated again keeps one prefix.
		kernel = "migrated: " + strings.TrimPrefix(ms.Kernel, "migrated: ")
		cfg := arm64.Config{
			KernelName: kernel, Serial: &lateWriter{w: &out}, Input: term.input(), Log: log, Epoch: mainStart,
			Virtio: f.virtio(),
		}
		f.setMachineHooks(&cfg, f.apiSocket)
		m, err := arm64.Prepare(cfg, ms, mem)
		if err != nil {
			return nil, nil, err
		}
		arm64.WarmStateCodec()
		return m, mem, nil
	}, log, stderr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ln.Close()
	defer m.Close()
	if err := confirmVM(in, func() error {
		saved, err := arm64.ParseState(in.State)
		if err != nil {
			return err
		}
		if len(in.DeviceData) > 0 {
			// The arm64 machine has no device that sends state before
			// the pause (no VFIO passthrough).
			return fmt.Errorf("the migration sent state of devices this arm64 machine does not have (%d)", len(in.DeviceData))
		}
		return m.Apply(saved)
	}); err != nil {
		return err
	}
	log.Info("migration received", "kernel", kernel)
	return runARM64(m, term, kernel, f.serial, &out, f.apiSocket, f.writeDir(f.apiSocket), stderr, log)
}
