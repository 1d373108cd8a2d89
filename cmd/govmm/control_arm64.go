package main

// The control socket of an arm64 VM: pause, resume, info, snapshot and
// migrate through package api, served by the machine of platform/arm64. The
// client side (govmm pause|resume|info|snapshot) is controlcli.go, the
// same on both builds.

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"govmm/api"
	"govmm/confine"
	"govmm/platform/arm64"
)

// controlTarget serves the control socket for one arm64 machine.
type controlTarget struct {
	m      *arm64.Machine
	kernel string
	start  time.Time
	log    *slog.Logger
	// stop ends the VM once a snapshot asked to (--stop) is written.
	stop func()
	// snapshotDir, when set, is the one directory Landlock leaves
	// writable: a snapshot elsewhere is refused up front, with advice.
	snapshotDir string
}

func (t *controlTarget) Info() api.Info {
	state := "running"
	if t.m.Paused() {
		state = "paused"
	}
	var devs []api.PCIDevice
	for _, d := range t.m.PCIDevices() {
		devs = append(devs, api.PCIDevice{Address: fmt.Sprintf("0000:00:%02x.0", d.Slot), ID: fmt.Sprintf("%04x:%04x", d.Vendor, d.Device), What: d.What, Queues: d.Queues})
	}
	var exits []api.ExitCount
	for _, c := range t.m.Exits() {
		if c.Reads+c.Writes > 0 {
			exits = append(exits, api.ExitCount{Bus: "mmio", Device: c.Device, Base: c.Base, Reads: c.Reads, Writes: c.Writes})
		}
	}
	slices.SortStableFunc(exits, func(a, b api.ExitCount) int { return cmp.Compare(b.Reads+b.Writes, a.Reads+a.Writes) })
	return api.Info{
		State: state, Accel: "kvm", CPUs: t.m.NumCPUs(), Memory: t.m.MemSize(),
		Uptime: time.Since(t.start).Round(time.Millisecond).String(), Kernel: t.kernel,
		PID: os.Getpid(), Version: version, Exits: exits, Devices: devs,
	}
}

func (t *controlTarget) Pause() error  { return t.m.Pause() }
func (t *controlTarget) Resume() error { return t.m.Resume() }

// Snapshot pauses the machine while its state and memory are written and
// resumes it afterwards, unless it was paused already or is to stop.
func (t *controlTarget) Snapshot(req api.SnapshotRequest, progress func(done, total uint64)) (api.SnapshotResult, error) {
	if !filepath.IsAbs(req.Dir) {
		return api.SnapshotResult{}, fmt.Errorf("snapshot to %s: the directory must be an absolute path", req.Dir)
	}
	if t.snapshotDir != "" && !confine.Within(req.Dir, t.snapshotDir) {
		return api.SnapshotResult{}, fmt.Errorf("snapshot to %s: this VM may write only under %s (Landlock); start it with --snapshot-dir naming a directory above %s, or --landlock=off", req.Dir, t.snapshotDir, req.Dir)
	}
	begin := time.Now()
	wasPaused := t.m.Paused()
	if err := t.m.Pause(); err != nil {
		return api.SnapshotResult{}, fmt.Errorf("snapshot: pause: %w", err)
	}
	n, err := t.m.WriteSnapshot(req.Dir, progress)
	pause := time.Since(begin)
	if err != nil {
		if !wasPaused {
			t.m.Resume()
		}
		return api.SnapshotResult{}, fmt.Errorf("snapshot to %s: %w", req.Dir, err)
	}
	res := api.SnapshotResult{Dir: req.Dir, MemoryBytes: t.m.MemSize(), StateBytes: n, PauseMS: ms(pause), TotalMS: ms(time.Since(begin))}
	if req.Stop {
		t.log.Info("snapshot written, stopping", "dir", req.Dir)
		go t.stop()
		return res, nil
	}
	if !wasPaused {
		if err := t.m.Resume(); err != nil {
			return res, fmt.Errorf("snapshot written, but resuming failed: %w", err)
		}
	}
	t.log.Info("snapshot written", "dir", req.Dir, "pause_ms", res.PauseMS)
	return res, nil
}

// Migrate moves the running machine to a `govmm migrate receive` by
// pre-copy (package migrate, as on x86); once the destination confirmed,
// this copy ends with status 0.
func (t *controlTarget) Migrate(req api.MigrateRequest, progress func(done, total uint64)) (api.MigrateResult, error) {
	res, err := migrateVM(t.m, req, progress, t.log)
	if err == nil {
		// The guest runs on the destination now: this copy ends.
		go t.stop()
	}
	return res, err
}

// serveControl starts the control socket at path (none when empty); the
// returned function closes it.
func serveControl(path string, t *controlTarget) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	srv, err := api.Listen(path, t)
	if err != nil {
		return nil, fail(exitUsage, "--api-socket: %v", err)
	}
	return func() { srv.Close() }, nil
}

// VCPUs answers `govmm info --vcpus`, whose reply is x86's registers,
// events and LAPIC: refused on arm64 by name.
func (t *controlTarget) VCPUs() (api.VCPUsResult, error) {
	return api.VCPUsResult{}, errors.New("info --vcpus: not implemented on arm64 (its reply is x86's registers and LAPIC); govmm info works")
}

// errNoHotAddARM64 refuses add-disk and add-net: the arm64 machine
// describes its devices in a device tree, which has no hotplug
// notification the guest would act on (x86 uses ACPI PCI hotplug).
var errNoHotAddARM64 = errors.New("hot-add is not supported on arm64 (the machine's device tree has no PCI hotplug); give the device at start-up with --disk or --net")

// AddDisk refuses: errNoHotAddARM64. It closes the descriptor passed.
func (t *controlTarget) AddDisk(req api.AddDeviceRequest, fd int) (api.PCIDevice, error) {
	unix.Close(fd)
	return api.PCIDevice{}, errNoHotAddARM64
}

// AddNet refuses like AddDisk.
func (t *controlTarget) AddNet(req api.AddDeviceRequest, fd int) (api.PCIDevice, error) {
	unix.Close(fd)
	return api.PCIDevice{}, errNoHotAddARM64
}
