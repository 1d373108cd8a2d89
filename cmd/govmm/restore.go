//go:build !arm64

package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"govmm/memory"
	"govmm/migrate"
	"govmm/snapshot"
	"govmm/vm"
)

// restoreFlags are the run flags that make sense for a VM that already
// exists (in a snapshot or on another host).
func restoreFlagSet(name string, stderr io.Writer, f *runFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("govmm "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.accel, "accel", "auto", "accelerator: kvm, mshv or auto (the snapshot may come from either)")
	fs.StringVar(&f.mshvDev, "mshv-device", mshvDevice, "with --accel mshv: the MSHV device, or \"sim\" for mshvsim (test and development tool)")
	fs.StringVar(&f.memory, "memory", "", "expected guest memory size: a saved or incoming VM of another size is refused (not a resize)")
	fs.IntVar(&f.cpus, "cpus", 0, "expected vCPU count (refused if the saved VM differs)")
	fs.StringVar(&f.serial, "serial", "stdio", "serial console: stdio, file:PATH or none")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	fs.StringVar(&f.apiSocket, "api-socket", "", "serve the control socket at this path")
	f.virtio.register(fs)
	// The saved VM's passed-through devices, each given again (a device
	// of the same kind, with VFIO migration): their state is loaded.
	f.devices.register(fs)
	f.registerConfine(fs)
	return fs
}

// checkRestore validates the flags of restore and migrate receive before
// anything is opened.
func (f *runFlags) checkRestore(stderr io.Writer) (*slog.Logger, uint64, error) {
	log, err := newLogger(f.logLevel, stderr)
	if err != nil {
		return nil, 0, fail(exitUsage, "%v", err)
	}
	var memSize uint64
	if f.memory != "" {
		if memSize, err = parseSize(f.memory); err != nil {
			return nil, 0, fail(exitUsage, "--memory: %v", err)
		}
	}
	if f.cpus < 0 || f.cpus > 255 {
		return nil, 0, fail(exitUsage, "--cpus %d: want 1 to 255", f.cpus)
	}
	if err := checkAccel(f.accel); err != nil {
		return nil, 0, err
	}
	if err := checkSerial(f.serial); err != nil {
		return nil, 0, err
	}
	if err := checkSocketPath("--api-socket", f.apiSocket); err != nil {
		return nil, 0, err
	}
	if err := f.checkConfine(); err != nil {
		return nil, 0, err
	}
	return log, memSize, nil
}

// restoreConfig opens the accelerator and then the serial console (a
// file: console is truncated only once the accelerator works).
func (f *runFlags) restoreConfig(stdout io.Writer, log *slog.Logger, memSize uint64) (vm.Config, func(), error) {
	acc, err := openAccel(f.accel, f.mshvDev)
	if err != nil {
		return vm.Config{}, nil, err
	}
	serialOut, closeSerial, err := openSerial(f.serial, stdout)
	if err != nil {
		acc.Close()
		return vm.Config{}, nil, err
	}
	cfg := vm.Config{Accel: acc, MemSize: memSize, NumCPUs: f.cpus, Serial: serialOut, Log: log, Epoch: mainStart,
		Virtio: f.virtioConfig(acc.Name(), log), VFIO: f.devices.config()}
	return cfg, func() { acc.Close(); closeSerial() }, nil
}

func buildError(err error) error {
	var ie *vm.InputError
	if errors.As(err, &ie) {
		return fail(exitUsage, "%v", err)
	}
	return fail(exitInternal, "%v", err)
}

func cmdRestore(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var f runFlags
	var dir string
	fs := restoreFlagSet("restore", stderr, &f)
	fs.StringVar(&dir, "snapshot", "", "snapshot directory (govmm snapshot --dir)")
	if err := fs.Parse(args); err != nil {
		return &exitError{exitUsage, errors.New("")}
	}
	if dir == "" {
		return fail(exitUsage, "restore: --snapshot DIR is required")
	}
	log, memSize, err := f.checkRestore(stderr)
	if err != nil {
		return err
	}
	st, memFile, err := snapshot.ReadDir(dir)
	if err != nil {
		return fail(exitUsage, "restore: %v", err)
	}
	defer memFile.Close()
	r, err := vm.ParseState(st)
	if err != nil {
		return fail(exitUsage, "restore %s: %v", dir, err)
	}
	cfg, cleanup, err := f.restoreConfig(stdout, log, memSize)
	if err != nil {
		return err
	}
	defer cleanup()
	cfg.KernelName = "snapshot " + dir
	if err := checkSavedCPU(cfg.Accel, r.Machine); err != nil {
		return buildError(fmt.Errorf("restore %s: %w", dir, err))
	}
	machine, err := vm.Restore(cfg, r, memFile)
	if err != nil {
		return buildError(fmt.Errorf("restore %s: %w", dir, err))
	}
	defer machine.Close()
	cfg.Log.Info("restored", "dir", dir, "saved_on", r.Machine.Accel, "accel", cfg.Accel.Name())
	return runMachine(machine, cfg.Accel.Name(), f, stdin, stderr, cfg.Log)
}

func cmdMigrate(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "send" && args[0] != "receive") {
		return fail(exitUsage, "migrate: want `govmm migrate send --api-socket PATH --to ADDR` or `govmm migrate receive --listen ADDR`")
	}
	if args[0] == "send" {
		return cmdMigrateSend(args[1:], stdout, stderr)
	}
	var f runFlags
	var listen string
	fs := restoreFlagSet("migrate receive", stderr, &f)
	fs.StringVar(&listen, "listen", "", "where to accept the incoming VM: unix:PATH or tcp:HOST:PORT")
	if err := fs.Parse(args[1:]); err != nil {
		return &exitError{exitUsage, errors.New("")}
	}
	if listen == "" {
		return fail(exitUsage, "migrate receive: --listen is required")
	}
	log, memSize, err := f.checkRestore(stderr)
	if err != nil {
		return err
	}
	if err := checkListen(listen); err != nil {
		return err
	}
	cfg, cleanup, err := f.restoreConfig(stdout, log, memSize)
	if err != nil {
		return err
	}
	defer cleanup()
	ln, err := migrate.Listen(listen)
	if err != nil {
		return fail(exitUsage, "migrate receive: --listen: %v", err)
	}
	defer ln.Close()
	opts := migrate.ReceiveOptions{MemSize: cfg.MemSize, CPUs: f.cpus, Arch: snapshot.ArchX86_64}
	// receiveVM keeps listening past the peers it refuses: a port
	// scanner, a connection closed at once, a silent peer, another
	// machine than --memory and --cpus say, a CPU this host cannot
	// present, other virtio devices.
	machine, in, conn, err := receiveVM(ln, listen, opts, func(h migrate.Hello) (*vm.VM, *memory.Memory, error) {
		hm, err := helloMachine(h.Machine)
		if err != nil {
			return nil, nil, &migrate.HelloError{Err: err}
		}
		if err := checkSavedCPU(cfg.Accel, hm); err != nil {
			return nil, nil, &migrate.HelloError{Err: err}
		}
		mem, err := memory.NewWithOptions(h.MemSize, memory.Options{HugePages: f.hugePages})
		if err != nil {
			return nil, nil, err
		}
		cfg.KernelName = "migrated from " + hm.Accel
		machine, err := vm.Prepare(cfg, hm, mem)
		if err != nil {
			var ie *vm.InputError
			if errors.As(err, &ie) {
				// A machine this host cannot build as the hello
				// describes it (a hot-added device's image it cannot
				// open): the source hears why and runs on.
				return nil, nil, &migrate.HelloError{Err: err}
			}
			return nil, nil, err
		}
		vm.WarmStateCodec()
		return machine, mem, nil
	}, cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ln.Close()
	defer machine.Close()
	var r *vm.Restored
	if err := confirmVM(in, func() (err error) {
		if r, err = vm.ParseState(in.State); err != nil {
			return err
		}
		// Device state sent before the source paused (VFIO PRE_COPY)
		// goes in front of what its state holds.
		if err := r.AddPreCopy(in.DeviceData); err != nil {
			return err
		}
		return machine.Apply(r)
	}); err != nil {
		return err
	}
	cfg.Log.Info("migration received", "saved_on", r.Machine.Accel, "accel", cfg.Accel.Name())
	return runMachine(machine, cfg.Accel.Name(), f, stdin, stderr, cfg.Log)
}

// helloMachine decodes the x86 machine a migration hello announces (its
// architecture was checked already).
func helloMachine(b json.RawMessage) (vm.MachineState, error) {
	var m vm.MachineState
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("migration hello: the machine: %w", err)
	}
	return m, nil
}
