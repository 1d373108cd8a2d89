package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"govmm/api"
)

// The columns, in the report's order; the first two are the ones whose
// restores are measured too. govmm-vmlinux is govmm on KVM booting the
// kernel ELF decompressed from the same bzImage beforehand (its PVH
// entry): what the guest takes by itself when nothing decompresses it,
// the floor under any VMM that presents govmm's machine.
var vmms = []string{"govmm", "govmm-mshvsim", "govmm-vmlinux", "qemu-pc", "qemu-microvm"}

// columns are the VMMs this run boots.
func (cfg *config) columns() []string {
	cols := vmms
	if cfg.noQEMU {
		cols = vmms[:3]
	}
	if cfg.thp {
		cols = append(append(slices.Clip(cols[:2]), "govmm-thp"), cols[2:]...)
	}
	if len(cfg.only) > 0 {
		return cfg.only
	}
	if cfg.vmlinux == "" {
		cols = slices.DeleteFunc(slices.Clone(cols), func(c string) bool { return c == "govmm-vmlinux" })
	}
	return cols
}

func isGovmm(vmm string) bool { return strings.HasPrefix(vmm, "govmm") }

// pinSuffix on a column (-vmms qemu-pc+pin0) boots that VMM with every
// thread pinned to CPU 0: a vCPU thread that the scheduler moves between
// CPUs, or that shares them with other work, is then told from one that
// does not.
const pinSuffix = "+pin0"

// column is vmm without pinSuffix, and whether it had it.
func column(vmm string) (string, bool) {
	c, pinned := strings.CutSuffix(vmm, pinSuffix)
	return c, pinned
}

func accelFlags(vmm string) []string {
	if vmm == "govmm-mshvsim" {
		return []string{"--accel=mshv", "--mshv-device=sim"}
	}
	return []string{"--accel=kvm"}
}

// argv is the command line that boots the guest under vmm; extra goes on
// the kernel command line.
func (cfg *config) argv(vmm string, cpus int, extra ...string) []string {
	vmm, _ = column(vmm)
	cl := strings.Join(append([]string{cmdline}, extra...), " ")
	if isGovmm(vmm) {
		args := append([]string{cfg.govmm, "run"}, accelFlags(vmm)...)
		if vmm == "govmm-thp" {
			args = append(args, "--hugepages")
		}
		kernel := cfg.kernel
		if vmm == "govmm-vmlinux" {
			kernel = cfg.vmlinux
		}
		// --log-level info: the line "entering the guest" splits the
		// boot into the VMM's start and the guest's own time.
		return append(args, "--kernel", kernel, "--initrd", cfg.initrd, "--cmdline", cl,
			"--cpus", strconv.Itoa(cpus), "--memory", memory+"M", "--serial", "stdio", "--log-level", "info")
	}
	// QEMU's defaults for each machine: SeaBIOS for pc, qboot
	// (bios-microvm.bin) for microvm, both loading the kernel through
	// fw_cfg. -cpu host, as govmm's default CPU model is the host's.
	machine := cfg.machine(vmm)
	return []string{cfg.qemu, "-accel", "kvm", "-cpu", "host", "-M", machine,
		"-smp", strconv.Itoa(cpus), "-m", memory, "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-kernel", cfg.kernel, "-initrd", cfg.initrd, "-append", cl}
}

// machine is QEMU's -M value for vmm.
func (cfg *config) machine(vmm string) string {
	vmm, _ = column(vmm)
	m, opts := strings.TrimPrefix(vmm, "qemu-"), cfg.pcOpts
	if m == "microvm" {
		opts = cfg.microvm
	}
	if opts != "" {
		m += "," + opts
	}
	return m
}

// measure runs every boot, then the restores, and emits the results.
func measure(cfg *config) {
	cols := cfg.columns()
	for rep := cfg.from; rep < cfg.runs; rep++ {
		for i, cpus := range cfg.cpus {
			// Alternate the order so that drift hits every VMM alike.
			for _, vmm := range alternate(cols, rep+i) {
				cfg.emit(cfg.boot(vmm, cpus, rep))
			}
		}
		cfg.emit(result{Kind: "done", Rep: rep})
	}
	if cfg.restore {
		cfg.restores()
	}
}

func alternate(v []string, i int) []string {
	if i%2 == 0 {
		return v
	}
	out := make([]string, len(v))
	for k := range v {
		out[len(v)-1-k] = v[k]
	}
	return out
}

// boot boots the guest once and times the marker line and the exit.
func (cfg *config) boot(vmm string, cpus, rep int) result {
	r := result{Kind: "boot", VMM: vmm, CPUs: cpus, Rep: rep}
	if !cfg.stats {
		return timeBoot(r, cfg.argv(vmm, cpus), cfg.timeout, launch{}, nil)
	}
	// -stats: what the VMM and the machine spent up to the marker (the
	// reading happens after it, so it adds to the time to exit only).
	var l launch
	argv := cfg.argv(vmm, cpus)
	_, l.pin = column(vmm)
	if isGovmm(vmm) {
		l.env = append(l.env, "GODEBUG=gctrace=1") // the runtime's collections, on stderr
	} else {
		argv = append(argv, "-name", "debug-threads=on") // names QEMU's vCPU threads
	}
	// The mark lets the benchmark outside L1 read the host at the start.
	cfg.emitStat(bootStat{VMM: vmm, CPUs: cpus, Rep: rep, Text: map[string]string{"at": "start"}})
	before := readMachine()
	var tl *timeline
	return timeBoot(r, argv, cfg.timeout, l, &bootHooks{
		started: func(p *proc) { tl = startTimeline(p.cmd.Process.Pid, timelineStep) },
		atInit: func(p *proc) {
			steps := tl.stop()
			s := probeBoot(p.cmd.Process.Pid, before, p.seen)
			s.VMM, s.CPUs, s.Rep = vmm, cpus, rep
			s.Text["timeline"] = steps
			cfg.emitStat(s)
		},
	})
}

// bootHooks run, if set, when the VMM has started and when the marker
// has arrived.
type bootHooks struct {
	started, atInit func(*proc)
}

// timeBoot runs argv, a VMM booting the guest, as l says, and sets r's
// times from exec to the marker line and to the exit (or its Note if that
// failed).
func timeBoot(r result, argv []string, timeout time.Duration, l launch, h *bootHooks) result {
	p, err := start(argv, l)
	if err != nil {
		r.Note = err.Error()
		return r
	}
	defer p.kill()
	if h != nil && h.started != nil {
		h.started(p)
	}
	deadline := time.Now().Add(timeout)
	t, err := p.waitLine("linuxboot: init", deadline)
	if err != nil {
		r.Note = p.failure(err)
		return r
	}
	r.InitMS = ms(t)
	r.EnterMS = ms(p.entered)
	if h != nil && h.atInit != nil {
		h.atInit(p)
	}
	t, code, err := p.wait(deadline)
	switch {
	case err != nil:
		r.Note = p.failure(err)
	case code != 0:
		r.Note = p.failure(fmt.Errorf("exit status %d after the guest's poweroff", code))
	default:
		r.ExitMS = ms(t)
	}
	return r
}

// restores boots a guest that waits reading its console on each
// accelerator and vCPU count, snapshots it (the VM stops), and restores
// it runs times, writing a line to the new process's stdin: the time to
// the guest's echo of it is the restore of a booted Linux to its next
// userspace line. After two failures in a row a snapshot is given up.
func (cfg *config) restores() {
	snaps := map[string]string{}
	fails := map[string]int{}
	for _, cpus := range cfg.cpus {
		for _, vmm := range vmms[:2] {
			dir := filepath.Join(cfg.tmp, fmt.Sprintf("snap-%s-%d", vmm, cpus))
			if err := cfg.snapshot(vmm, cpus, dir); err != nil {
				cfg.emit(result{Kind: "restore", VMM: vmm, CPUs: cpus, Note: "no snapshot: " + err.Error()})
				continue
			}
			snaps[fmt.Sprint(vmm, cpus)] = dir
			defer os.RemoveAll(dir)
		}
	}
	for rep := 0; rep < cfg.runs; rep++ {
		for i, cpus := range cfg.cpus {
			for _, vmm := range alternate(vmms[:2], rep+i) {
				k := fmt.Sprint(vmm, cpus)
				if snaps[k] == "" || fails[k] == 2 {
					continue
				}
				r := cfg.restoreOnce(vmm, cpus, rep, snaps[k])
				if fails[k]++; !r.failed() {
					fails[k] = 0
				}
				cfg.emit(r)
			}
		}
	}
}

// snapshot boots the waiting guest and snapshots it into dir.
func (cfg *config) snapshot(vmm string, cpus int, dir string) error {
	sock := dir + ".sock"
	p, err := start(append(cfg.argv(vmm, cpus, "linuxboot=wait"), "--api-socket", sock), launch{})
	if err != nil {
		return err
	}
	defer p.kill()
	deadline := time.Now().Add(cfg.timeout)
	if _, err := p.waitLine("linuxboot: waiting", deadline); err != nil {
		return fmt.Errorf("%s", p.failure(err))
	}
	time.Sleep(500 * time.Millisecond) // into read, the vCPUs idle
	c, err := api.Dial(sock)
	if err != nil {
		return err
	}
	if _, err := c.Snapshot(api.SnapshotRequest{Dir: dir, Stop: true}, nil); err != nil {
		return err
	}
	if _, code, err := p.wait(deadline); err != nil || code != 0 {
		return fmt.Errorf("%s", p.failure(fmt.Errorf("after the snapshot: exit status %d, %v", code, err)))
	}
	return nil
}

// restoreOnce restores dir and times vCPU 0's entry into the guest and
// the guest's echo of a line. The line is written when vCPU 0 enters the
// guest: govmm restore feeds stdin to the UART before it creates the
// vCPUs, and the UART's interrupt then reaches no LAPIC and is lost.
func (cfg *config) restoreOnce(vmm string, cpus, rep int, dir string) result {
	r := result{Kind: "restore", VMM: vmm, CPUs: cpus, Rep: rep}
	args := append([]string{cfg.govmm, "restore"}, accelFlags(vmm)...)
	p, err := start(append(args, "--snapshot", dir, "--serial", "stdio", "--log-level", "info"), launch{stdin: true})
	if err != nil {
		r.Note = err.Error()
		return r
	}
	defer p.kill()
	deadline := time.Now().Add(restoreTimeout)
	t, err := p.waitLine(enteringGuest, deadline)
	if err != nil {
		r.Note = p.failure(err)
		return r
	}
	r.EnterMS = ms(t)
	word := fmt.Sprintf("r%d", rep)
	if _, err := io.WriteString(p.stdin, word+"\n"); err != nil {
		r.Note = p.failure(err)
		return r
	}
	if t, err = p.waitLine("linuxboot: read "+word, deadline); err != nil {
		r.Note = p.failure(err)
		return r
	}
	r.InitMS = ms(t)
	return r
}

// restoreTimeout bounds one restore: it takes well under a second even
// on nested KVM.
const restoreTimeout = time.Minute

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// proc is a VMM process whose output lines (stdout, the guest's console,
// and stderr, the VMM's log, in one stream) are timestamped as they arrive.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	start time.Time
	lines chan line // closed when the output ends
	seen  []string
	// entered is when govmm's "entering the guest" line arrived (0 before
	// it, and for QEMU, which has no such line).
	entered time.Duration
	exited  chan struct{}
	end     time.Time
	err     error
}

type line struct {
	t time.Duration // since start
	s string
}

// launch is how start runs a VMM: with a pipe to its stdin, with env
// added to its environment, pinned to CPU 0.
type launch struct {
	stdin bool
	env   []string
	pin   bool
}

func start(argv []string, l launch) (*proc, error) {
	p := &proc{lines: make(chan line, 1024), exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	if len(l.env) > 0 {
		p.cmd.Env = append(os.Environ(), l.env...)
	}
	if l.pin {
		// The child inherits the affinity of the thread that forks it:
		// that thread is this goroutine's, locked and narrowed for the
		// fork and then given back its mask.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return nil, fmt.Errorf("pin: %w", err)
		}
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return nil, fmt.Errorf("pin: %w", err)
		}
		defer unix.SchedSetaffinity(0, &old)
	}
	var err error
	if l.stdin {
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.start = time.Now()
	err = p.cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.lines <- line{time.Since(p.start), sc.Text()}
		}
		r.Close()
		close(p.lines)
		p.err = p.cmd.Wait()
		p.end = time.Now()
		close(p.exited)
	}()
	return p, nil
}

// enteringGuest is in govmm's log line (at --log-level info) when vCPU 0
// first enters the guest.
const enteringGuest = `msg="entering the guest"`

// waitLine waits for the first line containing s and returns when it
// arrived.
func (p *proc) waitLine(s string, deadline time.Time) (time.Duration, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return 0, fmt.Errorf("the VMM ended before %q", s)
			}
			p.seen = append(p.seen, l.s)
			if p.entered == 0 && strings.Contains(l.s, enteringGuest) {
				p.entered = l.t
			}
			if strings.Contains(l.s, s) {
				return l.t, nil
			}
		case <-timer.C:
			return 0, fmt.Errorf("no %q within %v", s, time.Since(p.start).Round(time.Second))
		}
	}
}

// wait waits for the process to exit and returns when it did and its
// exit status.
func (p *proc) wait(deadline time.Time) (time.Duration, int, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for open := true; open; {
		select {
		case l, ok := <-p.lines:
			if open = ok; ok {
				p.seen = append(p.seen, l.s)
			}
		case <-timer.C:
			return 0, 0, fmt.Errorf("no exit within %v", time.Since(p.start).Round(time.Second))
		}
	}
	select {
	case <-p.exited:
	case <-timer.C:
		return 0, 0, fmt.Errorf("no exit within %v", time.Since(p.start).Round(time.Second))
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return p.end.Sub(p.start), ee.ExitCode(), nil
	}
	return p.end.Sub(p.start), 0, p.err
}

// kill ends the process (if it still runs) and keeps the rest of its
// output.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	for l := range p.lines {
		p.seen = append(p.seen, l.s)
	}
	<-p.exited
}

// failure ends the process and returns err with the end of its output
// on one line (a result line).
func (p *proc) failure(err error) string {
	p.kill()
	tail := p.seen[max(0, len(p.seen)-8):]
	return fmt.Sprintf("%v; output: %s", err, strings.ReplaceAll(strings.Join(tail, " | "), "\r", ""))
}
