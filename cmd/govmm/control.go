//go:build !arm64

package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/term"

	"govmm/api"
	"govmm/confine"
	"govmm/devices/bus"
	"govmm/migrate"
	"govmm/snapshot"
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
		out = append(out, api.PCIDevice{Address: fmt.Sprintf("0000:00:%02x.0", d.Slot), ID: fmt.Sprintf("%04x:%04x", d.Vendor, d.Device), What: d.What})
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
	conn, err := migrate.Dial(req.To)
	if err != nil {
		return api.MigrateResult{}, fmt.Errorf("live migration not started, the VM keeps running here: %w", err)
	}
	defer conn.Close()
	st, err := migrate.Send(conn, t.vm, progress)
	if err != nil {
		return api.MigrateResult{}, fmt.Errorf("live migration to %s failed, the VM keeps running here: %w", req.To, err)
	}
	res := api.MigrateResult{TotalMS: ms(st.Total), DowntimeMS: ms(st.Downtime), Bytes: st.Bytes, Pages: st.Pages, Iterations: st.Rounds}
	t.log.Info("migrated", "to", req.To, "total_ms", res.TotalMS, "downtime_ms", res.DowntimeMS)
	// The guest runs on the destination now: this copy ends.
	go t.vm.Stop(vm.Result{Kind: vm.StopRequested, Status: 0})
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// progressBar draws progress on a terminal, or prints plain lines otherwise.
type progressBar struct {
	w     io.Writer
	what  string
	tty   bool
	lastP int
}

func newProgressBar(w io.Writer, what string) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, what: what, tty: tty, lastP: -1}
}

func (p *progressBar) update(done, total uint64) {
	if total == 0 {
		return
	}
	pct := int(done * 100 / total)
	if pct == p.lastP {
		return
	}
	p.lastP = pct
	if p.tty {
		const width = 30
		n := pct * width / 100
		fmt.Fprintf(p.w, "\r%s [%-*s] %3d%% %d/%d MiB", p.what, width, bar(n), pct, done>>20, total>>20)
		return
	}
	if pct%10 == 0 {
		fmt.Fprintf(p.w, "%s: %d%% (%d/%d MiB)\n", p.what, pct, done>>20, total>>20)
	}
}

func (p *progressBar) finish() {
	if p.tty && p.lastP >= 0 {
		fmt.Fprintln(p.w)
	}
}

func bar(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '#'
	}
	return string(b)
}

func dialFlag(fs *flag.FlagSet) *string {
	return fs.String("api-socket", "", "the VM's control socket (govmm run --api-socket PATH)")
}

func parseControl(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*api.Client, *flag.FlagSet, error) {
	fs := flag.NewFlagSet("govmm "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := dialFlag(fs)
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, &exitError{exitUsage, errors.New("")}
	}
	if *sock == "" {
		return nil, nil, fail(exitUsage, "%s: --api-socket is required", name)
	}
	c, err := api.Dial(*sock)
	if err != nil {
		// A path that leads to no VM is bad input, not a missing
		// accelerator.
		return nil, nil, fail(exitUsage, "%v", err)
	}
	return c, fs, nil
}

func cmdSimple(name string, args []string, stdout, stderr io.Writer) error {
	var extra func(*flag.FlagSet)
	var vcpus, asJSON bool
	if name == "info" {
		extra = func(fs *flag.FlagSet) {
			fs.BoolVar(&vcpus, "vcpus", false, "show each vCPU's registers, events and LAPIC (the VM pauses briefly for the capture)")
			fs.BoolVar(&asJSON, "json", false, "print the control socket's reply as JSON")
		}
	}
	c, _, err := parseControl(name, args, stderr, extra)
	if err != nil {
		return err
	}
	switch {
	case name == "pause":
		err = c.Pause()
	case name == "resume":
		err = c.Resume()
	case vcpus:
		var res api.VCPUsResult
		if res, err = c.VCPUs(); err == nil {
			err = printReply(stdout, asJSON, res, func() { printVCPUs(stdout, res) })
		}
	case asJSON:
		var i api.Info
		if i, err = c.Info(); err == nil {
			err = printReply(stdout, true, i, nil)
		}
	case name == "info":
		var i api.Info
		if i, err = c.Info(); err == nil {
			fmt.Fprintf(stdout, "state:   %s\naccel:   %s\ncpus:    %d\nmemory:  %d MiB\nuptime:  %s\nkernel:  %s\npid:     %d\n",
				i.State, i.Accel, i.CPUs, i.Memory>>20, i.Uptime, i.Kernel, i.PID)
			fmt.Fprintf(stdout, "pci:     %d devices\n", len(i.Devices))
			for _, d := range i.Devices {
				fmt.Fprintf(stdout, "  %s %s %s\n", d.Address, d.ID, d.What)
			}
			printBalloon(stdout, i.Balloon)
			printExits(stdout, i.Exits, i.EOIs)
		}
	}
	if err != nil {
		return controlError(name, err)
	}
	return nil
}

// printExits prints the exit counts as `govmm info` shows them.
func printExits(w io.Writer, exits []api.ExitCount, eois uint64) {
	var total uint64
	for _, e := range exits {
		total += e.Reads + e.Writes
	}
	fmt.Fprintf(w, "exits:   %d device accesses, %d IOAPIC EOIs\n", total, eois)
	for _, e := range exits {
		fmt.Fprintf(w, "  %-4s %-16s %#-10x %10d reads %10d writes\n", e.Bus, e.Device, e.Base, e.Reads, e.Writes)
	}
}

// controlError is the exit status of a failed control request: a socket no
// VM serves any more (connection refused) is bad input, like a missing
// one; anything else is the operation failing (70).
func controlError(name string, err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return fail(exitUsage, "%s: %v (no VM serves this socket)", name, err)
	}
	return fail(exitInternal, "%s: %v", name, err)
}

func cmdSnapshot(args []string, stdout, stderr io.Writer) error {
	var dir string
	var stop bool
	c, _, err := parseControl("snapshot", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&dir, "dir", "", "snapshot directory to write (state + sparse memory file)")
		fs.BoolVar(&stop, "stop", false, "end the VM once the snapshot is written")
	})
	if err != nil {
		return err
	}
	if dir == "" {
		return fail(exitUsage, "snapshot: --dir is required")
	}
	// The VM writes the snapshot, from its own working directory: a
	// relative path means the client's.
	if dir, err = filepath.Abs(dir); err != nil {
		return fail(exitUsage, "snapshot: --dir: %v", err)
	}
	pb := newProgressBar(stdout, "snapshot")
	res, err := c.Snapshot(api.SnapshotRequest{Dir: dir, Stop: stop}, pb.update)
	pb.finish()
	if err != nil {
		return controlError("snapshot", err)
	}
	fmt.Fprintf(stdout, "snapshot written to %s: %d MiB of memory, %d bytes of state, VM paused %.1f ms, %.1f ms in all\n",
		res.Dir, res.MemoryBytes>>20, res.StateBytes, res.PauseMS, res.TotalMS)
	return nil
}
