package main

// The arm64 build of govmm: `run` boots a Linux arm64 Image on KVM/arm64
// (package platform/arm64) with the same flags as on x86; what arm64 does
// not have yet is refused by name. None of the x86 machine (package vm, the
// x86 instruction emulator, the MSHV backend) is linked into this binary;
// --accel mshv says what an arm64 MSHV backend lacks (package mshvarm).

import (
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

	"govmm/accel/mshv/mshvarm"
	"govmm/guests"
	"govmm/platform/arm64"
)

// notOnARM64 is the error for a feature the arm64 build lacks.
func notOnARM64(what string) error {
	return fail(exitUsage, "%s: not implemented on arm64", what)
}

// x86OnlyRunFlags are `govmm run` flags of the x86 build that arm64 does
// not implement yet; they parse, and fail with a clear error when given.
var x86OnlyRunFlags = []struct {
	name string
	bool bool
}{
	{"mshv-device", false}, {"topology", false}, {"cpu", false},
	{"hugepages", true}, {"test-devices", true}, {"device", false},
}

func cmdRun(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("govmm run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var accelName, kernelPath, initrdPath, cmdline, memory, serial, logLevel string
	var cpus int
	fs.StringVar(&accelName, "accel", "auto", "accelerator: kvm or auto (MSHV is not implemented on arm64)")
	fs.StringVar(&kernelPath, "kernel", "", "guest kernel: a Linux arm64 Image or Image.gz (default: the built-in arm64 probe guest, which reports what the guest sees and powers off)")
	fs.StringVar(&initrdPath, "initrd", "", "initial ramdisk")
	fs.StringVar(&cmdline, "cmdline", "", "kernel command line")
	fs.StringVar(&memory, "memory", "256M", "guest memory size (e.g. 256M, 2G)")
	fs.IntVar(&cpus, "cpus", 1, "number of vCPUs")
	fs.StringVar(&serial, "serial", "stdio", "PL011 console: stdio, file:PATH or none")
	fs.StringVar(&logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	var apiSocket string
	fs.StringVar(&apiSocket, "api-socket", "", "serve the control socket at this path (govmm pause|resume|info|snapshot)")
	var vf virtioFlags
	vf.register(fs)
	var cf confineFlags
	cf.registerConfine(fs)
	var unsupported []string
	for _, x := range x86OnlyRunFlags {
		note := func(string) error { unsupported = append(unsupported, "--"+x.name); return nil }
		if x.bool {
			fs.BoolFunc(x.name, "not implemented on arm64", note)
		} else {
			fs.Func(x.name, "not implemented on arm64", note)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{exitUsage, errors.New("")}
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "run: unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	if vf.balloon.on {
		unsupported = append(unsupported, "--balloon")
	}
	if len(unsupported) > 0 {
		return notOnARM64(strings.Join(unsupported, ", "))
	}
	if err := cf.checkConfine(); err != nil {
		return err
	}
	log, err := newLogger(logLevel, stderr)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	switch accelName {
	case "kvm", "auto":
	case "mshv":
		return fail(exitUsage, "--accel mshv: %v", mshvarm.NotImplemented())
	default:
		return fail(exitUsage, "--accel %q: want kvm or auto", accelName)
	}
	memSize, err := parseSize(memory)
	if err != nil {
		return fail(exitUsage, "--memory: %v", err)
	}
	var kernel []byte
	kernelName := kernelPath
	if kernelPath == "" {
		// The built-in guest: the arm64 probe, as the x86 build boots its
		// probe (guests/arm64probe).
		if kernel, err = guests.Image("arm64probe"); err != nil {
			return fail(exitInternal, "built-in guest: %v", err)
		}
		kernelName = "built-in:arm64probe.img"
	} else if kernel, err = os.ReadFile(kernelPath); err != nil {
		return fail(exitUsage, "--kernel: %v", err)
	}
	var initrd []byte
	if initrdPath != "" {
		if initrd, err = os.ReadFile(initrdPath); err != nil {
			return fail(exitUsage, "--initrd: %v", err)
		}
	}
	if kernelPath == "" && cmdline == "" && serial == "stdio" && isTerminal(stdin) {
		// As on x86: a person at a terminal gets the probe's
		// interactive TUI, pipes and scripts its summary.
		cmdline = "probe.mode=tui"
	}
	out, input, err := serialFlag(serial, stdin, stdout)
	if err != nil {
		return err
	}
	term := newTerminal(input, stderr)
	if apiSocket != "" {
		if err := checkSocketPath("--api-socket", apiSocket); err != nil {
			return err
		}
	}
	cfg := arm64.Config{
		MemSize: memSize, NumCPUs: cpus, Kernel: kernel, KernelName: kernelName, Initrd: initrd,
		Cmdline: cmdline, Serial: &lateWriter{w: &out}, Input: term.input(), Log: log, Epoch: mainStart,
		Virtio: arm64.VirtioConfig{Disks: vf.disks, RNG: vf.rng, Vsock: vf.vsock.c, Nets: vf.nets, Console: vf.console.virtio},
	}
	cf.setMachineHooks(&cfg, apiSocket)
	m, err := arm64.New(cfg)
	if err != nil {
		return machineError(err)
	}
	defer m.Close()
	return runARM64(m, term, kernelName, serial, &out, apiSocket, cf.writeDir(apiSocket), stderr, log)
}

// setMachineHooks has the machine confine the VMM (the process filter
// and Landlock) once it is built and before the guest runs, as the x86
// build does (vm.SetBeforeGuest), its vCPU threads and virtio device
// threads take their own filters, and every hook log to cfg.Log. arm64
// has no VFIO passthrough, so vCPU threads never reach a device by pread
// or pwrite.
func (f *confineFlags) setMachineHooks(cfg *arm64.Config, apiSocket string) {
	log := cfg.Log
	cfg.BeforeGuest = func() error { return f.apply(log, apiSocket, false) }
	cfg.VCPUThread = f.vcpuHook(false)
	f.setDeviceHooks(&cfg.Virtio, log)
}

// serialFlag is --serial: the console's output and input; a file's output
// is nil until runARM64 creates it, once the machine is built (as on x86).
func serialFlag(serial string, stdin io.Reader, stdout io.Writer) (io.Writer, io.Reader, error) {
	var out io.Writer
	var input io.Reader
	switch {
	case serial == "stdio":
		out, input = stdout, stdin
	case serial == "none":
		out = io.Discard
	case strings.HasPrefix(serial, "file:") && len(serial) > len("file:"):
		path := strings.TrimPrefix(serial, "file:")
		if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
			return nil, nil, fail(exitUsage, "--serial %s: no directory %s", serial, filepath.Dir(path))
		}
	default:
		return nil, nil, fail(exitUsage, "--serial %q: want stdio, file:PATH or none", serial)
	}
	return out, input, nil
}

// terminal is the console's input on arm64: stdin (serialFlag's input;
// nil for --serial file: and none) through console.go's escape reader, as
// on x86; runARM64 puts a terminal in raw mode once the machine is built,
// and Ctrl-A x then stops it.
type terminal struct {
	c  *console
	in io.Reader
	m  *arm64.Machine // set by runARM64 before the machine runs
}

func newTerminal(input io.Reader, stderr io.Writer) *terminal {
	return &terminal{c: newConsole(input, false, stderr), in: input}
}

// input is arm64.Config.Input.
func (t *terminal) input() io.Reader {
	if t.in == nil {
		return nil
	}
	return t.c.input(func() { t.m.Stop() })
}

// machineError is the exit status of a machine that could not be built.
func machineError(err error) error {
	var ie *arm64.InputError
	if errors.As(err, &ie) {
		return fail(exitUsage, "%v", err)
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) {
		return fail(exitNoAccel, "%v", err)
	}
	return fail(exitInternal, "%v", err)
}

// runARM64 runs a built (or restored) machine to its end: the console
// file, the control socket (snapshots only under snapshotDir, when set:
// Landlock's writable directory), the signals, and the exit status.
func runARM64(m *arm64.Machine, term *terminal, kernel, serial string, out *io.Writer, apiSocket, snapshotDir string, stderr io.Writer, log *slog.Logger) error {
	if *out == nil {
		f, err := os.Create(strings.TrimPrefix(serial, "file:"))
		if err != nil {
			return fail(exitUsage, "--serial: %v", err)
		}
		defer f.Close()
		*out = f
	}
	closeControl, err := serveControl(apiSocket, &controlTarget{m: m, kernel: kernel, start: time.Now(), log: log, stop: m.Stop, snapshotDir: snapshotDir})
	if err != nil {
		return err
	}
	defer closeControl()

	term.m = m
	if term.in != nil {
		term.c.makeRaw()
	}
	defer term.c.restore()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		if s, ok := <-sigs; ok {
			term.c.restore()
			fmt.Fprintf(stderr, "govmm: stopped by signal %v\n", s)
			os.Exit(128 + int(s.(syscall.Signal)))
		}
	}()
	res := m.Run()
	term.c.restore()
	log.Info("VM ended", "stop", res.Stop)
	switch res.Stop {
	case arm64.StopPowerOff, arm64.StopReset, arm64.StopRequested:
		return nil
	default:
		return &exitError{2, res.Err} // vm.StatusCrash on x86
	}
}

// lateWriter writes to *w, which is set once the console file exists.
type lateWriter struct{ w *io.Writer }

func (l *lateWriter) Write(p []byte) (int, error) { return (*l.w).Write(p) }

func cmdCPUModels(args []string, stdout, stderr io.Writer) error {
	return notOnARM64("cpu-models (x86 CPU models)")
}
