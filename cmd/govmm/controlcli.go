package main

// The control socket's client side (`govmm pause|resume|info|snapshot`),
// shared by the x86 and arm64 builds: each build's controlTarget serves
// the socket for its own machine.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"govmm/api"
)

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
				for _, q := range d.Queues {
					fmt.Fprintf(stdout, "    %s\n", q)
				}
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

// printBalloon prints the balloon line of `govmm info`.
func printBalloon(w io.Writer, b *api.BalloonInfo) {
	if b == nil {
		return
	}
	fmt.Fprintf(w, "balloon: target %d MiB, actual %d MiB (inflated %d MiB, deflated %d MiB, released to the host %d MiB)\n",
		b.TargetBytes>>20, b.ActualBytes>>20, b.InflatedBytes>>20, b.DeflatedBytes>>20, b.ReleasedBytes>>20)
	if b.FreePageReporting {
		fmt.Fprintf(w, "  free page reporting: the guest reported %d MiB free, %d MiB of it released to the host\n", b.ReportedBytes>>20, b.ReportReleasedBytes>>20)
	}
	if b.DeflateOnOOM {
		fmt.Fprintf(w, "  deflate on OOM: the guest may take pages back under memory pressure\n")
	}
	if b.Statistics {
		if len(b.Stats) == 0 {
			fmt.Fprintf(w, "  statistics: none from the guest yet\n")
		} else {
			names := make([]string, 0, len(b.Stats))
			for k := range b.Stats {
				names = append(names, k)
			}
			sort.Strings(names)
			var kv []string
			for _, k := range names {
				v := b.Stats[k]
				if strings.HasSuffix(k, "_memory") || k == "disk_caches" {
					kv = append(kv, fmt.Sprintf("%s %d MiB", k, v>>20))
				} else {
					kv = append(kv, fmt.Sprintf("%s %d", k, v))
				}
			}
			fmt.Fprintf(w, "  statistics (%.0f ms old): %s\n", b.StatsAgeMS, strings.Join(kv, ", "))
		}
	}
	if b.Kept != "" {
		fmt.Fprintf(w, "  inflated pages stay with the guest: %s\n", b.Kept)
	}
}

// checkSocketPath validates a path a socket will be created at: its
// directory must exist.
func checkSocketPath(flagName, path string) error {
	if path == "" {
		return nil
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil {
		return fail(exitUsage, "%s %s: %v", flagName, path, err)
	} else if !fi.IsDir() {
		return fail(exitUsage, "%s %s: %s is not a directory", flagName, path, filepath.Dir(path))
	}
	return nil
}
