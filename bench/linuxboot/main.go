// Command linuxboot measures the time to a usable Linux (issue #12, item
// 6), govmm against QEMU. The other benchmarks run bare-metal guests that
// exit at once; a sandbox's user waits for Linux, whose boot goes through
// everything a VMM offers (the loader, PIT and TSC calibration, ACPI, the
// UART, SMP bring-up, power-off), so this is the number a user sees.
//
// Debian's cloud kernel (the one .ci/run caches) boots with a tiny
// initramfs, a static busybox and an /init that prints one marker line and
// powers off, under four VMMs: govmm on KVM, govmm on mshvsim, and
// qemu-system-x86_64 -accel kvm with -M pc (SeaBIOS) and -M microvm
// (qboot), all with the same kernel, initrd, command line, memory and
// vCPUs, interleaved per repetition. For each boot it takes the time from
// process start to the marker line on the serial console (streamed, not
// read at exit) and to the process's exit after the guest's poweroff, and
// reports medians, minima, failures, and govmm's ratios to QEMU against
// the targets (at most 0.5x QEMU pc, at most 1.0x QEMU microvm).
// A fifth column, govmm-vmlinux, boots the kernel ELF taken out of the
// same bzImage through its PVH entry, and every govmm boot is split at
// govmm's "entering the guest" log line into the VMM's start and the
// guest's own time. The guest's own time under govmm-vmlinux (nothing to
// decompress, no firmware, no VMM start) is a boot no VMM presenting the
// same machine can beat; its ratio to QEMU pc is the floor the report
// prints under the targets.
//
// It also times the restore of a booted Linux guest to its next userspace
// line: a guest whose init waits reading its console is snapshotted
// through its control socket (the VM stops), then `govmm restore` runs and
// gets a line on its stdin as soon as vCPU 0 enters the guest; the time
// runs from exec to the guest's echo of it.
//
// Linux reaches init only where KVM has hardware semantics, so where there
// is no such /dev/kvm (or with -nested) the benchmark builds here and runs
// itself inside a nested-KVM VM (L1), QEMU included. A boot that fails
// (about 1 in 8 fail on that substrate, see the README) is recorded and
// counted, and the run goes on; an L1 that dies is replaced by a fresh one
// that goes on from the repetition it was in.
//
// With -stats it also reads, when each boot reaches init, where the boot's
// time went outside the guest: the VMM's threads, KVM's counters, L1's
// other work and the host's (procstat.go), and lists them per boot
// beside its time, so that a slow boot can be told from a fast one by
// more than its time.
//
//	go run ./bench/linuxboot [-runs 5] [-cpus 1,2] [-no-restore] [-thp] [-nested] [-stats] [-vmms govmm,qemu-pc]
package main

import (
	"flag"
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

	"govmm/bench/internal/host"
	"govmm/internal/linuxguest"
	"govmm/internal/nested"
	"govmm/internal/vmlinux"
)

// config is what every boot shares.
type config struct {
	govmm, qemu     string
	kernel, initrd  string
	vmlinux         string // the ELF kernel taken out of kernel, for govmm-vmlinux ("" if it could not be)
	tmp             string
	pcOpts, microvm string // options for QEMU's -M pc and -M microvm
	runs, from      int
	cpus            []int
	timeout         time.Duration
	restore, noQEMU bool
	thp             bool     // add the column govmm-thp: govmm on KVM with --hugepages
	stats           bool     // -stats: read what each boot's VMM and machine spent (procstat.go)
	only            []string // -vmms: the columns to boot (all when empty)
	emitStat        func(bootStat)
	trace           string   // -trace: where the trace lines go ("-": stdout, in L1)
	traceCols       []string // -trace-vmms
	l1THP           string   // -l1-thp
	l1InitOnFree    bool     // -l1-init-on-free
	emit            func(result)
}

// The guest's command line (the same for every VMM). quiet: the kernel's
// log would otherwise cost one exit per character, which measures the
// UART more than the boot. Words with "=" the kernel does not know
// become init's environment: linuxboot=wait selects the restore guest.
const cmdline = "console=ttyS0 panic=-1 quiet"

// initScript is the guest's /init: the marker first, before anything
// else runs.
const initScript = `#!/bin/busybox sh
echo "linuxboot: init"
if [ "$linuxboot" = wait ]; then
	/bin/busybox stty -echo
	echo "linuxboot: waiting"
	while read l; do echo "linuxboot: read $l"; done
fi
if [ "$linuxboot" = trace ]; then
	/bin/busybox mkdir -p /proc /sys
	/bin/busybox mount -t proc proc /proc
	/bin/busybox mount -t sysfs sys /sys
	echo "linuxboot: clocksource $(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
	/bin/busybox cat /proc/interrupts
	/bin/busybox grep -m1 ^flags /proc/cpuinfo
	# The kernel's log, less what the analysis does not need and would
	# take long to print: initcalls' start lines and initcalls under 0.1 ms.
	/bin/busybox dmesg -r | /bin/busybox grep -v -E 'calling  |after [0-9]{1,2} usecs'
fi
/bin/busybox poweroff -f
`

const memory = "512" // MiB, every VMM

func main() {
	runs := flag.Int("runs", 5, "repetitions (medians are reported)")
	cpuList := flag.String("cpus", "1,2", "vCPU counts")
	kernel := flag.String("kernel", os.Getenv("GOVMM_LINUX_KERNEL"), "Linux bzImage (default: the one .ci/run caches)")
	timeout := flag.Duration("timeout", 2*time.Minute, "bound on one boot (a boot on nested KVM takes 5-15 s; one that fails hangs)")
	noRestore := flag.Bool("no-restore", false, "leave out the restore of a booted guest")
	noQEMU := flag.Bool("no-qemu", false, "leave QEMU out")
	thp := flag.Bool("thp", false, "add govmm on KVM with --hugepages (guest RAM madvised for transparent huge pages, as QEMU does by default)")
	pcOpts := flag.String("pc", "", "options for QEMU's -M pc, e.g. kernel-irqchip=split")
	microvm := flag.String("microvm", "", "options for QEMU's -M microvm, e.g. pit=off,pic=off,rtc=off")
	forceNested := flag.Bool("nested", false, "run inside a nested-KVM VM even where /dev/kvm exists")
	l1THP := flag.String("l1-thp", "", "always, madvise or never: set the nested VM's transparent huge pages policy (/sys/kernel/mm/transparent_hugepage/enabled) before the boots, to see what --hugepages does on a host whose policy is not L1's default (always); only in the nested VM, which is thrown away after")
	l1InitOnFree := flag.Bool("l1-init-on-free", true, "boot the nested VM's kernel with init_on_free=1: it zeroes pages as they are freed, so that a VMM's guest RAM does not reuse pages whose writes the TCG under L1 has to check for translated code of an earlier guest (a cost of 1-3 s per boot that varies with the pages a boot gets; see the README); the time to exit then includes zeroing the guest RAM the VMM freed")
	prebuilt := flag.String("prebuilt", "", "use govmm and the initrd in DIR and print result lines (how the run inside L1 is started)")
	trace := flag.String("trace", "", "instead of timing, boot each of -trace-vmms once per run with initcall_debug, write every console line with its arrival time to FILE, and compare where the boots' time goes")
	traceVMMs := flag.String("trace-vmms", "govmm,qemu-pc", "what -trace boots: columns (govmm, govmm-thp, govmm-mshvsim, qemu-pc, qemu-microvm), each optionally followed by \":ARGS\", arguments added to the VMM's command line (space-separated); entries are separated by \";\" if there is one, else by \",\"")
	from := flag.Int("from", 0, "first repetition of the boots (a fresh L1 goes on from there; -from N -runs N: only the restores)")
	analyze := flag.String("analyze", "", "compare the boots of a trace FILE written by -trace, and exit")
	stats := flag.Bool("stats", false, "also read, when each boot reaches init, the VMM's per-thread CPU and wait time, page faults, KVM's exit and page counters, the machine's other CPU use and memory events, and govmm's collections, and list them per boot")
	only := flag.String("vmms", "", "boot only these columns, in this order (comma-separated; default all); a column with the suffix "+pinSuffix+" boots with every thread of the VMM pinned to CPU 0")
	flag.Parse()
	if *archFlag != "" {
		mainARM64() // arm64.go
		return
	}
	if *analyze != "" {
		lines, err := readTrace(*analyze)
		if err != nil {
			fail("%v", err)
		}
		analyzeTrace(os.Stdout, lines)
		return
	}

	cfg := &config{pcOpts: *pcOpts, microvm: *microvm, runs: *runs, from: *from, timeout: *timeout, restore: !*noRestore, noQEMU: *noQEMU, thp: *thp, kernel: *kernel, trace: *trace, l1THP: *l1THP, stats: *stats, l1InitOnFree: *l1InitOnFree}
	if *only != "" {
		cfg.only = strings.Split(*only, ",")
		for _, v := range cfg.only {
			if c, _ := column(v); !slices.Contains(append(slices.Clip(vmms), "govmm-thp"), c) {
				fail("-vmms: no column %q", v)
			}
		}
	}
	if !slices.Contains([]string{"", "always", "madvise", "never"}, cfg.l1THP) {
		fail("bad -l1-thp %q", cfg.l1THP)
	}
	if *trace != "" {
		var err error
		if cfg.traceCols, err = parseTraceVMMs(*traceVMMs); err != nil {
			fail("-trace-vmms: %v", err)
		}
	}
	for _, f := range strings.Split(*cpuList, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			fail("bad -cpus %q", *cpuList)
		}
		cfg.cpus = append(cfg.cpus, n)
	}
	if cfg.kernel == "" {
		cfg.kernel = nested.LinuxKernel()
	}
	if cfg.kernel == "" {
		fail("no kernel: run .ci/run once, or pass -kernel")
	}
	if !*noQEMU {
		q, err := host.EnsureQEMU()
		if err != nil {
			fail("%v", err)
		}
		cfg.qemu = q
	}

	if *prebuilt != "" {
		// Inside L1: print result lines for the benchmark outside.
		cfg.tmp = *prebuilt
		cfg.govmm, cfg.initrd = filepath.Join(cfg.tmp, "govmm"), filepath.Join(cfg.tmp, "initrd.cpio")
		if _, err := os.Stat(filepath.Join(cfg.tmp, "vmlinux")); err == nil {
			cfg.vmlinux = filepath.Join(cfg.tmp, "vmlinux")
		}
		cfg.emit = func(r result) { fmt.Println(r) }
		cfg.emitStat = func(s bootStat) { fmt.Println(s) }
		cfg.emit(result{Kind: "substrate", Note: host.Substrate() + l1Memory()})
		if cfg.l1THP != "" {
			if os.Getenv(nested.InL1Env) != "1" {
				fail("-l1-thp changes the machine's memory policy: only in the nested VM")
			}
			if err := os.WriteFile("/sys/kernel/mm/transparent_hugepage/enabled", []byte(cfg.l1THP), 0o644); err != nil {
				fail("-l1-thp: %v", err)
			}
		}
		if cfg.trace != "" {
			cfg.traceBoots(os.Stdout)
			return
		}
		measure(cfg)
		return
	}

	tmp, err := os.MkdirTemp("", "govmm-linuxboot-")
	if err != nil {
		fail("%v", err)
	}
	defer os.RemoveAll(tmp)
	cfg.tmp = tmp
	if err := build(cfg); err != nil {
		fail("%v", err)
	}
	command := strings.TrimSpace("go run ./bench/linuxboot " + strings.Join(os.Args[1:], " "))
	begin := time.Now()
	c := newCollector()
	c.lastDone = cfg.from - 1
	deaths := 0
	if os.Getenv(nested.InL1Env) != "1" && (*forceNested || !nested.HardwareKVM()) {
		deaths, err = inL1(cfg, c)
	} else if cfg.l1THP != "" {
		fail("-l1-thp changes the machine's memory policy: only in the nested VM")
	} else {
		cfg.emit = c.add
		cfg.emitStat = c.addStat
		c.add(result{Kind: "substrate", Note: host.Substrate()})
		if cfg.trace != "" {
			cfg.traceBoots(&host.LineWriter{Line: c.line})
		} else {
			measure(cfg)
		}
	}
	if cfg.trace != "" {
		if werr := writeTrace(cfg.trace, c.trace); werr != nil {
			fail("%v", werr)
		}
		analyzeTrace(os.Stdout, c.trace)
		if err != nil {
			fail("%v", err)
		}
		return
	}
	report(c, cfg, command, time.Since(begin), deaths)
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "linuxboot: "+format+"\n", a...)
	os.Exit(1)
}

// build writes a static govmm and the guest's initramfs into cfg.tmp.
func build(cfg *config) error {
	_, file, _, _ := runtime.Caller(0)
	cfg.govmm = filepath.Join(cfg.tmp, "govmm")
	c := exec.Command("go", "build", "-o", cfg.govmm, "./cmd/govmm")
	c.Dir = filepath.Dir(filepath.Dir(filepath.Dir(file)))
	c.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the README builds it
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("build govmm: %v\n%s", err, out)
	}
	cfg.initrd = filepath.Join(cfg.tmp, "initrd.cpio")
	if err := linuxguest.WriteInitramfsWith(cfg.initrd, initScript); err != nil {
		return err
	}
	// govmm-vmlinux boots the kernel ELF inside the bzImage; a kernel
	// whose payload cannot be decompressed here leaves the column out.
	img, err := os.ReadFile(cfg.kernel)
	if err != nil {
		return err
	}
	elf, _, err := vmlinux.Extract(img)
	if err != nil {
		fmt.Fprintf(os.Stderr, "linuxboot: no govmm-vmlinux column: %s: %v\n", cfg.kernel, err)
		return nil
	}
	cfg.vmlinux = filepath.Join(cfg.tmp, "vmlinux")
	return os.WriteFile(cfg.vmlinux, elf, 0o644)
}

// inL1 runs the benchmark in nested-KVM VMs and collects its result
// lines: when L1 dies, a fresh one goes on from the repetition that was
// running (at most three times). It returns how many L1s died.
func inL1(cfg *config, c *collector) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	var programs []string
	if !cfg.noQEMU {
		programs = []string{"qemu-system-x86_64"}
	}
	args := func() []string {
		a := []string{self, "-prebuilt", cfg.tmp, "-kernel", cfg.kernel, "-runs", strconv.Itoa(cfg.runs),
			"-from", strconv.Itoa(c.nextRep()), "-cpus", joinInts(cfg.cpus), "-timeout", cfg.timeout.String()}
		if !cfg.restore {
			a = append(a, "-no-restore")
		}
		if cfg.noQEMU {
			a = append(a, "-no-qemu")
		}
		if cfg.thp {
			a = append(a, "-thp")
		}
		if cfg.stats {
			a = append(a, "-stats")
		}
		if len(cfg.only) > 0 {
			a = append(a, "-vmms", strings.Join(cfg.only, ","))
		}
		if cfg.l1THP != "" {
			a = append(a, "-l1-thp", cfg.l1THP)
		}
		if cfg.trace != "" {
			a = append(a, "-trace", "-", "-trace-vmms", strings.Join(cfg.traceCols, ";"))
		}
		return append(a, "-pc="+cfg.pcOpts, "-microvm="+cfg.microvm)
	}
	var l1Append string
	if cfg.l1InitOnFree {
		l1Append = "init_on_free=1"
	}
	return host.ResumeInL1("linuxboot", 3, args, nested.Config{
		Append:   l1Append,
		Dir:      "/tmp",
		Files:    []string{self, cfg.tmp, cfg.kernel},
		Programs: programs,
		MemoryMB: 3072,
		Timeout:  3 * time.Hour,
		// Every boot prints a line within its timeout: longer silence
		// is an L1 that froze.
		IdleTimeout: cfg.timeout + 2*time.Minute,
		Output:      &host.LineWriter{Line: c.line},
	})
}

// l1Memory says, for the substrate note, whether this kernel zeroes
// pages as they are freed (-l1-init-on-free).
func l1Memory() string {
	b, _ := os.ReadFile("/proc/cmdline")
	if slices.Contains(strings.Fields(string(b)), "init_on_free=1") {
		return "; L1 zeroes freed pages (init_on_free=1: the time to exit includes zeroing the freed guest RAM)"
	}
	return ""
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// collector keeps the results, the first of each measurement, and passes
// every other line of L1's output on to stderr as progress.
type collector struct {
	results   []result
	seen      map[string]bool
	substrate string
	lastDone  int                 // the last repetition that finished, -1 before any
	trace     []traceLine         // -trace's lines
	bootStats []bootStat          // -stats' lines, the first of each boot
	hostAt    map[string]hostLoad // the host at each boot's start (-stats)
}

func newCollector() *collector {
	return &collector{seen: map[string]bool{}, lastDone: -1, hostAt: map[string]hostLoad{}}
}

// addStat keeps a boot's stats. A boot's start mark (Text "at" =
// "start") only reads the host; its stats at init then get what the host
// did in between (in L1 both lines arrive as they are printed).
func (c *collector) addStat(s bootStat) {
	k := fmt.Sprintf("stat/%s/%d/%d", s.VMM, s.CPUs, s.Rep)
	if s.Text["at"] == "start" {
		if _, ok := c.hostAt[k]; !ok {
			c.hostAt[k] = readHostLoad()
		}
		return
	}
	if c.seen[k] {
		return
	}
	if a, ok := c.hostAt[k]; ok {
		hostDelta(s, a, readHostLoad())
	}
	c.seen[k] = true
	c.bootStats = append(c.bootStats, s)
	fmt.Fprintln(os.Stderr, s) // everything read, for a closer look than the report's

}

func (c *collector) nextRep() int { return c.lastDone + 1 }

func (c *collector) add(r result) {
	switch {
	case r.Kind == "substrate":
		c.substrate = r.Note
	case r.Kind == "done":
		c.lastDone = max(c.lastDone, r.Rep)
	case !c.seen[r.key()]:
		c.seen[r.key()] = true
		c.results = append(c.results, r)
		status := fmt.Sprintf("init %.0f ms, exit %.0f ms", r.InitMS, r.ExitMS)
		if r.Kind == "restore" {
			status = fmt.Sprintf("next line %.0f ms", r.InitMS)
		}
		if r.failed() {
			status = "FAILED: " + r.Note
		}
		fmt.Fprintf(os.Stderr, "linuxboot: %s %s, %d vCPU, run %d: %s\n", r.Kind, r.VMM, r.CPUs, r.Rep+1, status)
	}
}

// line takes one line of L1's output.
func (c *collector) line(line string) {
	if t, ok := parseTraceLine(line); ok {
		c.trace = append(c.trace, t)
	} else if s, ok := parseStat(line); ok {
		c.addStat(s)
	} else if r, ok := parseResult(line); ok {
		c.add(r)
	} else {
		io.WriteString(os.Stderr, line)
	}
}
