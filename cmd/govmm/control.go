//go:build !arm64

package main

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"govmm/api"
	"govmm/confine"
	"govmm/devices/bus"
	"govmm/snapshot"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
	"govmm/vm"
)

// controlTarget serves the control socket for one VM.
type controlTarget struct {
	vm    *vm.VM
	accel string
	start time.Time
	log   *slog.Logger
	// snapshotDir, when set, is the only directory snapshots may be
	// written to (Landlock grants the process nothing else).
	snapshotDir string
}

func (t *controlTarget) Info() api.Info {
	state := "running"
	if t.vm.Paused() {
		state = "paused"
	}
	exits, eois := exitCounts(t.vm.Exits())
	return api.Info{
		State: state, Accel: t.accel, CPUs: t.vm.NumCPUs(), Memory: t.vm.Memory().Size(),
		Uptime: time.Since(t.start).Round(time.Millisecond).String(), Kernel: t.vm.KernelName(),
		PID: os.Getpid(), Version: version, Exits: exits, EOIs: eois, Devices: pciDevices(t.vm.PCIDevices()),
		Balloon: balloonInfo(t.vm),
	}
}

// pciDevices converts the VM's PCI devices for the control socket.
func pciDevices(devs []vm.PCIDevice) []api.PCIDevice {
	var out []api.PCIDevice
	for _, d := range devs {
		out = append(out, api.PCIDevice{Address: fmt.Sprintf("0000:00:%02x.0", d.Slot), ID: fmt.Sprintf("%04x:%04x", d.Vendor, d.Device), What: d.What, Queues: d.Queues})
	}
	return out
}

// exitCounts lists the devices the guest made exit, most first.
func exitCounts(e vm.Exits) ([]api.ExitCount, uint64) {
	var out []api.ExitCount
	for _, b := range []struct {
		name   string
		counts []bus.Count
	}{{"pio", e.PIO}, {"mmio", e.MMIO}} {
		for _, c := range b.counts {
			if c.Reads+c.Writes > 0 {
				out = append(out, api.ExitCount{Bus: b.name, Device: c.Device, Base: c.Base, Reads: c.Reads, Writes: c.Writes})
			}
		}
	}
	slices.SortStableFunc(out, func(a, b api.ExitCount) int { return cmp.Compare(b.Reads+b.Writes, a.Reads+a.Writes) })
	return out, e.EOIs
}

func (t *controlTarget) Pause() error  { return t.vm.Pause() }
func (t *controlTarget) Resume() error { return t.vm.Resume() }

// Snapshot pauses the VM only while its state and memory are copied out;
// the VM runs again (unless it was paused or is to stop) while the files
// are made durable.
func (t *controlTarget) Snapshot(req api.SnapshotRequest, progress func(done, total uint64)) (api.SnapshotResult, error) {
	if t.snapshotDir != "" && !confine.Within(req.Dir, t.snapshotDir) {
		return api.SnapshotResult{}, fmt.Errorf("snapshot to %s: this VM may write only under %s (Landlock); start it with --snapshot-dir naming a directory above %s, or --landlock=off", req.Dir, t.snapshotDir, req.Dir)
	}
	begin := time.Now()
	wasPaused := t.vm.Paused()
	if err := t.vm.Pause(); err != nil {
		return api.SnapshotResult{}, err
	}
	st, err := t.vm.SaveState()
	var pending *snapshot.Pending
	if err == nil {
		pending, err = snapshot.Write(req.Dir, st, t.vm.Memory(), progress)
	}
	if err != nil {
		if !wasPaused {
			t.vm.Resume()
		}
		return api.SnapshotResult{}, fmt.Errorf("snapshot to %s: %w", req.Dir, err)
	}
	pause := time.Since(begin)
	var resumeErr error
	if !wasPaused && !req.Stop {
		resumeErr = t.vm.Resume()
	}
	if err := pending.Commit(); err != nil {
		if !wasPaused && req.Stop {
			t.vm.Resume()
		}
		return api.SnapshotResult{}, fmt.Errorf("snapshot to %s: %w", req.Dir, err)
	}
	b, _ := st.Marshal()
	res := api.SnapshotResult{Dir: req.Dir, MemoryBytes: t.vm.Memory().Size(), StateBytes: len(b),
		PauseMS: ms(pause), TotalMS: ms(time.Since(begin))}
	if resumeErr != nil {
		return res, fmt.Errorf("snapshot written, but resuming failed: %w", resumeErr)
	}
	if req.Stop {
		t.vm.Stop(vm.Result{Kind: vm.StopRequested, Status: 0})
	}
	t.log.Info("snapshot written", "dir", req.Dir, "pause_ms", res.PauseMS, "total_ms", res.TotalMS)
	return res, nil
}

func (t *controlTarget) Migrate(req api.MigrateRequest, progress func(done, total uint64)) (api.MigrateResult, error) {
	res, err := migrateVM(t.vm, req, progress, t.log)
	if err == nil {
		// The guest runs on the destination now: this copy ends.
		go t.vm.Stop(vm.Result{Kind: vm.StopRequested, Status: 0})
	}
	return res, err
}

// AddDisk hot-adds the disk req describes (--disk's syntax) on fd, the
// image the client opened.
func (t *controlTarget) AddDisk(req api.AddDeviceRequest, fd int) (api.PCIDevice, error) {
	c, err := blk.ParseFlag(req.Spec)
	if err != nil {
		unix.Close(fd)
		return api.PCIDevice{}, err
	}
	d, err := t.vm.HotAddDisk(c, fd, time.Duration(req.WaitMS)*time.Millisecond)
	return hotAdded(d, err)
}

// AddNet hot-adds the network device req describes (--net's syntax) on
// fd, the TAP queue the client opened.
func (t *controlTarget) AddNet(req api.AddDeviceRequest, fd int) (api.PCIDevice, error) {
	c, err := virtionet.ParseFlag(req.Spec)
	if err != nil {
		unix.Close(fd)
		return api.PCIDevice{}, err
	}
	d, err := t.vm.HotAddNet(c, fd, time.Duration(req.WaitMS)*time.Millisecond)
	return hotAdded(d, err)
}

func hotAdded(d vm.PCIDevice, err error) (api.PCIDevice, error) {
	var out api.PCIDevice
	if d.Slot > 0 {
		out = pciDevices([]vm.PCIDevice{d})[0]
	}
	return out, err
}
