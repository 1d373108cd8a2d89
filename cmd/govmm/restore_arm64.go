package main

// `govmm restore` on arm64: a snapshot of an arm64 VM (govmm snapshot)
// comes back on KVM/arm64 with the devices the command line gives again.

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"govmm/platform/arm64"
	"govmm/snapshot"
)

func cmdRestore(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("govmm restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dir, memory, serial, logLevel, apiSocket, accelName string
	var cpus int
	fs.StringVar(&dir, "snapshot", "", "snapshot directory (govmm snapshot --dir)")
	fs.StringVar(&accelName, "accel", "auto", "accelerator: kvm or auto")
	fs.StringVar(&memory, "memory", "", "expected guest memory size: a saved VM of another size is refused (not a resize)")
	fs.IntVar(&cpus, "cpus", 0, "expected vCPU count (refused if the saved VM differs)")
	fs.StringVar(&serial, "serial", "stdio", "PL011 console: stdio, file:PATH or none")
	fs.StringVar(&logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	fs.StringVar(&apiSocket, "api-socket", "", "serve the control socket at this path")
	var vf virtioFlags
	vf.register(fs)
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
	switch accelName {
	case "kvm", "auto":
	default:
		return fail(exitUsage, "restore: --accel %q: arm64 restores on kvm", accelName)
	}
	if vf.balloon.on {
		return notOnARM64("--balloon")
	}
	log, err := newLogger(logLevel, stderr)
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	out, input, err := serialFlag(serial, stdin, stdout)
	if err != nil {
		return err
	}
	if err := checkSocketPath("--api-socket", apiSocket); err != nil {
		return err
	}
	st, memFile, err := snapshot.ReadDir(dir)
	if err != nil {
		return fail(exitUsage, "restore: %v", err)
	}
	defer memFile.Close()
	saved, err := arm64.ParseState(st)
	if err != nil {
		return fail(exitUsage, "restore %s: %v", dir, err)
	}
	if memory != "" {
		want, err := parseSize(memory)
		if err != nil {
			return fail(exitUsage, "--memory: %v", err)
		}
		if want != saved.Machine.MemSize {
			return fail(exitUsage, "restore %s: the saved VM has %d MiB of memory, --memory says %d MiB", dir, saved.Machine.MemSize>>20, want>>20)
		}
	}
	if cpus != 0 && cpus != saved.Machine.NumCPUs {
		return fail(exitUsage, "restore %s: the saved VM has %d vCPUs, --cpus says %d", dir, saved.Machine.NumCPUs, cpus)
	}
	kernel := "snapshot " + dir
	m, err := arm64.Restore(arm64.Config{
		KernelName: kernel, Serial: &lateWriter{w: &out}, Input: input, Log: log, Epoch: mainStart,
		Virtio: arm64.VirtioConfig{Disks: vf.disks, RNG: vf.rng, Vsock: vf.vsock.c, Nets: vf.nets, Console: vf.console.virtio},
	}, saved, memFile)
	if err != nil {
		return machineError(fmt.Errorf("restore %s: %w", dir, err))
	}
	defer m.Close()
	log.Info("restored", "dir", dir)
	return runARM64(m, kernel, serial, &out, apiSocket, stderr, log)
}
