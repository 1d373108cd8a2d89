//go:build !arm64

package main

// govmm jail: `govmm run` in a jail modelled on Firecracker's jailer
// (package jail). The run flags are parsed and checked here, the files
// they name are placed in the jail under fixed names, the flags are
// rewritten to those names, and the jailed govmm run does the rest as it
// would outside (its seccomp filter and Landlock included).

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"govmm/boot"
	"govmm/internal/optlist"
	"govmm/jail"
	virtionet "govmm/virtio/net"
	"govmm/virtio/vsock"
)

// Where the jailed govmm finds what the run flags named, inside the jail.
const (
	jailKernel  = "/kernel"
	jailInitrd  = "/initrd"
	jailDisk    = "/disk" // + its index: /disk0, /disk1, ...
	jailSerial  = "/serial.log"
	jailAPI     = "/api.sock"
	jailVsock   = "/vsock.sock"
	jailTunPath = "/dev/net/tun"
)

type jailFlags struct {
	id                string
	uid, gid          int
	allowRoot         bool
	chrootBase        string
	netns             string
	newNetNS          bool
	newPIDNS          bool
	newUserNS         bool
	cgroup            string
	cpuMax, memoryMax string
	rlimits           []jail.Rlimit
	files             []jail.File
}

func (f *jailFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "the jail's unique id: 1 to 64 letters, digits and hyphens (required); the jail is built in <chroot-base>/govmm/<id>/root")
	fs.IntVar(&f.uid, "uid", -1, "the uid govmm runs as in the jail (required; 0 only with --allow-root)")
	fs.IntVar(&f.gid, "gid", -1, "the gid govmm runs as in the jail (required; 0 only with --allow-root)")
	fs.BoolVar(&f.allowRoot, "allow-root", false, "allow --uid 0 or --gid 0 (the jailed VMM then keeps root's identity)")
	fs.StringVar(&f.chrootBase, "chroot-base", jail.DefaultChrootBase, "the directory jails are built under")
	fs.StringVar(&f.netns, "netns", "", "join this network namespace (e.g. /var/run/netns/NAME)")
	fs.BoolVar(&f.newNetNS, "new-netns", false, "start in a new, empty network namespace")
	fs.BoolVar(&f.newPIDNS, "new-pid-ns", false, "start as PID 1 of a new PID namespace")
	fs.BoolVar(&f.newUserNS, "new-user-ns", false, "start in a new user namespace mapping only root (for the jail's set-up) and --uid/--gid")
	fs.StringVar(&f.cgroup, "cgroup", "", "cgroup v2 to run in, relative to the cgroup2 mount (created if missing, removed at the end if created)")
	fs.StringVar(&f.cpuMax, "cpu-max", "", "with --cgroup: cpu.max as QUOTA[/PERIOD] in microseconds, e.g. 50000/100000 for half a CPU")
	fs.StringVar(&f.memoryMax, "memory-max", "", "with --cgroup: memory.max in bytes, with an optional K, M, G or T suffix")
	fs.Func("rlimit", "resource limits: nofile=N,fsize=N (repeatable; default nofile=2048)", func(s string) error {
		r, err := jail.ParseRlimits(s)
		f.rlimits = append(f.rlimits, r...)
		return err
	})
	fs.Func("file", "one more file to place in the jail: HOST[:JAILPATH] (default JAILPATH: /<base name>; repeatable)", func(s string) error {
		host, in, ok := strings.Cut(s, ":")
		if !ok {
			in = "/" + filepath.Base(host)
		}
		if host == "" {
			return errors.New("want HOST[:JAILPATH]")
		}
		f.files = append(f.files, jail.File{Host: host, Jail: in})
		return nil
	})
}

func cmdJail(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("govmm jail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: govmm jail --id ID --uid U --gid G [flags] -- run [govmm run flags]")
		fs.PrintDefaults()
	}
	var f jailFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{exitUsage, errors.New("")}
	}
	rest := fs.Args()
	if len(rest) == 0 || rest[0] != "run" {
		return fail(exitUsage, "jail: want \"-- run [run flags]\" after the jail's flags (run is the only command a jail starts)")
	}
	switch {
	case f.id == "":
		return fail(exitUsage, "jail: --id is required")
	case f.uid < 0 || f.gid < 0:
		return fail(exitUsage, "jail: --uid and --gid are required")
	}
	cfg, err := jailConfig(f, rest[1:], stderr)
	if err != nil {
		return err
	}
	j, err := jail.Start(cfg, stdin, stdout, stderr)
	if err != nil {
		var ce *jail.ConfigError
		if errors.As(err, &ce) {
			return fail(exitUsage, "jail: %v", err)
		}
		return fail(exitInternal, "jail: %v", err)
	}
	// The jailed govmm stops its VM on these as it would outside; a
	// terminal's Ctrl-C reaches it directly too.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			j.Signal(s)
		}
	}()
	status, err := j.Wait()
	if err != nil {
		return fail(exitInternal, "jail: wait for govmm: %v", err)
	}
	if status != 0 {
		return &exitError{status, errors.New("")}
	}
	return nil
}

// jailConfig checks the run flags as run would, before the jail is built,
// and makes the jail's configuration: the files and devices they need and
// the flags rewritten to their places in the jail.
func jailConfig(f jailFlags, runArgs []string, stderr io.Writer) (jail.Config, error) {
	rfs := flag.NewFlagSet("govmm run", flag.ContinueOnError)
	rfs.SetOutput(stderr)
	var rf runFlags
	rf.register(rfs)
	if err := rfs.Parse(runArgs); err != nil {
		return jail.Config{}, &exitError{exitUsage, errors.New("")}
	}
	if rfs.NArg() > 0 {
		return jail.Config{}, fail(exitUsage, "run: unexpected argument %q (flags start with --)", rfs.Arg(0))
	}
	if err := checkRunFlags(&rf); err != nil {
		return jail.Config{}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return jail.Config{}, fail(exitInternal, "jail: find govmm's own binary: %v", err)
	}
	cfg := jail.Config{
		ID: f.id, UID: f.uid, GID: f.gid, AllowRoot: f.allowRoot, ChrootBase: f.chrootBase,
		Exec:  exe,
		NetNS: f.netns, NewNetNS: f.newNetNS, NewPIDNS: f.newPIDNS, NewUserNS: f.newUserNS,
		Cgroup: f.cgroup, CPUMax: f.cpuMax, MemoryMax: f.memoryMax, Rlimits: f.rlimits,
	}
	if t := os.Getenv("TERM"); t != "" {
		cfg.Env = []string{"TERM=" + t}
	}
	devs, err := accelDevices(rf.accel, rf.mshvDev)
	if err != nil {
		return jail.Config{}, err
	}
	cfg.Devices = devs
	if len(rf.virtio.nets) > 0 {
		cfg.Devices = append(cfg.Devices, jailTunPath)
	}
	for _, n := range rf.virtio.nets {
		if !n.Vhost {
			continue
		}
		// The kernel's vhost-net, at the same path inside.
		if _, err := os.Stat(virtionet.VhostDevice); err != nil {
			return jail.Config{}, fail(exitUsage, "--net tap=%s,vhost=on needs %s on this host (modprobe vhost_net): %v", n.Tap, virtionet.VhostDevice, err)
		}
		cfg.Devices = append(cfg.Devices, virtionet.VhostDevice)
		break
	}
	if c := rf.virtio.vsock.c; c != nil && c.Vhost {
		// The kernel's vhost-vsock, at the same path inside.
		if _, err := os.Stat(vsock.VhostDevice); err != nil {
			return jail.Config{}, fail(exitUsage, "--vsock %s: backend=vhost needs %s on this host (modprobe vhost_vsock): %v", rf.virtio.vsock.String(), vsock.VhostDevice, err)
		}
		cfg.Devices = append(cfg.Devices, vsock.VhostDevice)
	}
	if rf.kernel != "" {
		cfg.Files = append(cfg.Files, jail.File{Host: rf.kernel, Jail: jailKernel})
	}
	if rf.initrd != "" {
		cfg.Files = append(cfg.Files, jail.File{Host: rf.initrd, Jail: jailInitrd})
	}
	for i, d := range rf.virtio.disks {
		cfg.Files = append(cfg.Files, jail.File{Host: d.Path, Jail: jailDisk + strconv.Itoa(i), Write: !d.ReadOnly})
	}
	cfg.Files = append(cfg.Files, f.files...)

	disk := 0
	cfg.Args = append([]string{"run"}, rewriteFlags(runArgs, rfs, func(name, v string) string {
		switch name {
		case "kernel":
			return jailKernel
		case "initrd":
			return jailInitrd
		case "disk":
			v = replaceOption(v, "path", jailDisk+strconv.Itoa(disk))
			disk++
		case "serial":
			if strings.HasPrefix(v, "file:") {
				return "file:" + jailSerial
			}
		case "api-socket":
			return jailAPI
		case "vsock":
			// backend=vhost has no socket: the option is not there to
			// replace.
			return replaceOption(v, "socket", jailVsock)
		case "mshv-device":
			if v != "sim" {
				abs, _ := filepath.Abs(v) // made absolute by accelDevices too
				return abs
			}
		}
		return v
	})...)
	return cfg, nil
}

// checkRunFlags checks what run checks before it opens anything, and
// refuses what a jail cannot offer yet, so that a bad flag is reported
// before the jail is built.
func checkRunFlags(rf *runFlags) error {
	if rf.snapshotDir != "" {
		return fail(exitUsage, "jail: --snapshot-dir: a jailed VM writes snapshots only inside its jail; leave it out and give govmm snapshot --dir a path inside the jail (e.g. /snap1, which is <jail root>/snap1 on the host)")
	}
	if len(rf.devices.vfio) > 0 {
		return fail(exitUsage, "jail: --device vfio is not supported in a jail yet (VFIO needs the device's sysfs directory and IOMMU group inside the jail)")
	}
	if _, err := rf.check(io.Discard); err != nil {
		return err
	}
	if err := checkAccel(rf.accel); err != nil {
		return err
	}
	if rf.serial != "stdio" && rf.serial != "none" && (!strings.HasPrefix(rf.serial, "file:") || rf.serial == "file:") {
		return fail(exitUsage, "--serial %q: want stdio, file:PATH or none", rf.serial)
	}
	if err := rf.checkConfine(); err != nil {
		return err
	}
	if rf.kernel != "" {
		img, err := os.ReadFile(rf.kernel)
		if err != nil {
			return fail(exitUsage, "--kernel: %v", err)
		}
		if _, err := boot.Detect(img); err != nil {
			return fail(exitUsage, "--kernel %s: %v", rf.kernel, err)
		}
	}
	return nil
}

// accelDevices returns the device nodes the jailed govmm needs for
// --accel (and --mshv-device): those it would open, which must exist here.
func accelDevices(name, mshvDev string) ([]string, error) {
	has := func(p string) bool { _, err := os.Stat(p); return err == nil }
	switch name {
	case "kvm":
		if !has(kvmDevice) {
			return nil, fail(exitNoAccel, "--accel kvm: %s does not exist on this host", kvmDevice)
		}
		return []string{kvmDevice}, nil
	case "mshv":
		if mshvDev == "sim" {
			if !has(kvmDevice) {
				return nil, fail(exitNoAccel, "--accel mshv --mshv-device sim: mshvsim runs on KVM, and %s does not exist on this host", kvmDevice)
			}
			return []string{kvmDevice}, nil
		}
		abs, err := filepath.Abs(mshvDev)
		if err != nil || !has(abs) {
			return nil, fail(exitNoAccel, "--accel mshv: %s does not exist on this host", mshvDev)
		}
		return []string{abs}, nil
	default: // auto: what run would choose inside, where the same devices exist
		var out []string
		for _, d := range []string{mshvDevice, kvmDevice} {
			if has(d) {
				out = append(out, d)
			}
		}
		if len(out) == 0 {
			return nil, fail(exitNoAccel, "--accel auto: neither %s nor %s exists on this host", kvmDevice, mshvDevice)
		}
		return out, nil
	}
}

// rewriteFlags returns args (which fs parsed without error) with the value
// of every flag that takes one replaced by rw(name, value), written as
// --name=value; boolean flags and anything after the flags are kept.
func rewriteFlags(args []string, fs *flag.FlagSet, rw func(name, value string) string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || a == "-" || !strings.HasPrefix(a, "-") {
			return append(out, args[i:]...)
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		fl := fs.Lookup(name)
		if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			out = append(out, a)
			continue
		}
		if !hasValue && i+1 < len(args) {
			i++
			value = args[i]
		}
		out = append(out, "--"+name+"="+rw(name, value))
	}
	return out
}

// replaceOption replaces the value of key in a "k=v,k=v" option list
// (optlist's syntax: the other options' commas stay escaped). A list that
// does not parse is returned as it is: run's flags have parsed it before.
func replaceOption(spec, key, value string) string {
	opts, err := optlist.Parse(spec)
	if err != nil {
		return spec
	}
	for i, o := range opts {
		if o.Key == key {
			opts[i].Value = value
		}
	}
	return optlist.Join(opts...)
}
