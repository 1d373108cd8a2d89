// Command bench measures govmm side by side with its baselines in one run:
// a minimal C program driving /dev/kvm directly (the floor, built here with
// gcc), the same program in Go (bench/gomin: what the Go runtime alone
// adds), the Go floor (bench/gofloor: govmm's KVM backend and loader with no
// device model), govmm on mshvsim, and QEMU
// (qemu-system-x86_64 -accel kvm, installed through apt when missing). All
// run the same Multiboot guests (bench/guest), pair by pair in alternating
// order, and the report gives medians and ratios:
//
//   - port-I/O exit round trip (a guest loop of `out`)
//   - MMIO exit round trip (a guest loop of stores to an unmapped GPA)
//   - wall time from process start to guest exit (a guest that exits at once)
//   - the VMM's resident memory, sampled while the port-I/O guest runs
//     (the guest itself touches < 64 KiB)
//
// Usage: go run ./bench [-runs 11] [-iter 300000] [-no-qemu]
package main

import (
	"flag"
	"fmt"
	"govmm/bench/internal/host"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type vmm struct {
	name string
	cmd  func(kernel string) []string
}

type sample struct {
	wall time.Duration
	// Resident memory sampled mid-run (the port-I/O guest), split into
	// anonymous (the VMM's heap, stacks and the guest RAM it touched) and
	// file-backed (the program's text, shared with every other copy).
	anonKB, fileKB int64
}

func main() {
	runs := flag.Int("runs", 11, "runs of each measurement (medians are reported)")
	iter := flag.Int("iter", 300000, "exits per loop guest")
	skipQEMU := flag.Bool("no-qemu", false, "leave QEMU out")
	nestedFlag := flag.Bool("nested", false, "run inside a nested-KVM VM even where /dev/kvm exists")
	prebuilt := flag.String("prebuilt", "", "use the programs and guests built in DIR (how the run inside the nested VM gets them)")
	flag.Parse()
	if *prebuilt == "" && host.Nested(*nestedFlag) {
		// Exits cost about 50 us on TCG: fewer of them keep a run short.
		if !flagSet("iter") {
			*iter = 20000
		}
	}
	if err := run(*runs, *iter, *skipQEMU, *nestedFlag, *prebuilt); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func run(runs, iter int, skipQEMU, forceNested bool, prebuilt string) error {
	_, file, _, _ := runtime.Caller(0)
	here := filepath.Dir(file)
	root := filepath.Dir(here)
	tmp := prebuilt
	if tmp == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "govmm-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if err := build(here, root, tmp, iter); err != nil {
			return err
		}
		if host.Nested(forceNested) {
			args := []string{"-runs", fmt.Sprint(runs), "-iter", fmt.Sprint(iter), "-prebuilt", tmp}
			if skipQEMU {
				args = append(args, "-no-qemu")
			}
			return host.RunInL1(args, []string{tmp}, !skipQEMU, 3072)
		}
	}
	floor := filepath.Join(tmp, "floor")
	govmm := filepath.Join(tmp, "govmm")
	gomin := filepath.Join(tmp, "gomin")
	gofloor := filepath.Join(tmp, "gofloor")
	vmms := []vmm{
		{"floor", func(k string) []string { return []string{floor, k, "64"} }},
		{"go-min", func(k string) []string { return []string{gomin, k, "64"} }},
		{"go-floor", func(k string) []string { return []string{gofloor, k, "64"} }},
		{"govmm", func(k string) []string {
			return []string{govmm, "run", "--accel=kvm", "--memory=64M", "--serial=none", "--kernel", k}
		}},
		// The MSHV backend on mshvsim: each exit also crosses the
		// simulator (the instruction recovered, an intercept message, the
		// VMM's own emulation).
		{"mshvsim", func(k string) []string {
			return []string{govmm, "run", "--accel=mshv", "--mshv-device=sim", "--memory=64M", "--serial=none", "--kernel", k}
		}},
	}
	if !skipQEMU {
		qemu, err := host.EnsureQEMU()
		if err != nil {
			return err
		}
		vmms = append(vmms, vmm{"qemu", func(k string) []string {
			return []string{qemu, "-accel", "kvm", "-M", "pc", "-m", "64", "-nodefaults", "-display", "none",
				"-serial", "none", "-monitor", "none", "-no-reboot", "-kernel", k,
				"-device", "isa-debug-exit,iobase=0xf4,iosize=4"}
		}})
	}
	return measureAll(tmp, vmms, runs, iter, skipQEMU)
}

// build compiles the guests, the C floor and the Go programs into tmp.
func build(here, root, tmp string, iter int) error {

	step := func(name string, args []string, env ...string) error {
		c := exec.Command(args[0], args[1:]...)
		c.Dir = root
		c.Env = append(os.Environ(), env...)
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", name, err, out)
		}
		return nil
	}
	if err := step("build guests", []string{filepath.Join(here, "guest", "build.sh"), tmp}, fmt.Sprintf("ITER=%d", iter)); err != nil {
		return err
	}
	floor := filepath.Join(tmp, "floor")
	if err := step("build floor", []string{"gcc", "-O2", "-o", floor, filepath.Join(here, "floor", "floor.c")}); err != nil {
		return err
	}
	govmm := filepath.Join(tmp, "govmm")
	// Both Go programs are built static, as the README builds govmm: a cgo
	// build (the default when gcc is installed, because package net has a
	// cgo DNS resolver) adds the dynamic loader and libc to every start.
	if err := step("build govmm", []string{"go", "build", "-o", govmm, "./cmd/govmm"}, "CGO_ENABLED=0"); err != nil {
		return err
	}
	gomin := filepath.Join(tmp, "gomin")
	if err := step("build gomin", []string{"go", "build", "-o", gomin, "./bench/gomin"}, "CGO_ENABLED=0"); err != nil {
		return err
	}
	gofloor := filepath.Join(tmp, "gofloor")
	return step("build gofloor", []string{"go", "build", "-o", gofloor, "./bench/gofloor"}, "CGO_ENABLED=0")
}

// measureAll runs every VMM on every guest, pair by pair, and prints the
// report.
func measureAll(tmp string, vmms []vmm, runs, iter int, skipQEMU bool) error {
	guests := []string{"exit", "pio", "mmio"}
	res := map[string]map[string][]sample{}
	for _, g := range guests {
		res[g] = map[string][]sample{}
	}
	fmt.Printf("govmm benchmark: %d runs each, %d exits per loop guest, on %s\n", runs, iter, host.Substrate())
	for r := 0; r < runs; r++ {
		for _, g := range guests {
			// Alternate the order so drift on a noisy machine hits everyone.
			order := vmms
			if r%2 == 1 {
				order = reverse(vmms)
			}
			for _, v := range order {
				s, err := measure(v.cmd(filepath.Join(tmp, g+".elf")))
				if err != nil {
					return fmt.Errorf("%s on the %s guest: %w", v.name, g, err)
				}
				res[g][v.name] = append(res[g][v.name], s)
			}
		}
		fmt.Fprintf(os.Stderr, "run %d/%d done\n", r+1, runs)
	}

	med := func(g, v string) time.Duration { return medianWall(res[g][v]) }
	perExit := func(g, v string) float64 {
		return float64(med(g, v)-med("exit", v)) / float64(iter) / 1e3 // µs
	}
	fmt.Println()
	fmt.Printf("%-34s", "metric (median)")
	for _, v := range vmms {
		fmt.Printf("%12s", v.name)
	}
	fmt.Printf("%14s", "govmm/floor")
	if !skipQEMU {
		fmt.Printf("%14s", "govmm/qemu")
	}
	fmt.Println()
	row := func(name string, val func(v string) float64, unit string) {
		fmt.Printf("%-34s", name)
		for _, v := range vmms {
			fmt.Printf("%10.2f%-2s", val(v.name), unit)
		}
		fmt.Printf("%13.2fx", val("govmm")/val("floor"))
		if !skipQEMU {
			fmt.Printf("%13.2fx", val("govmm")/val("qemu"))
		}
		fmt.Println()
	}
	row("port-I/O exit round trip", func(v string) float64 { return perExit("pio", v) }, "us")
	row("MMIO exit round trip", func(v string) float64 { return perExit("mmio", v) }, "us")
	row("start to guest exit", func(v string) float64 { return float64(med("exit", v)) / 1e6 }, "ms")
	// Resident memory is sampled from /proc while the port-I/O guest runs:
	// the children's ru_maxrss is not usable here, because a child forked
	// with CLONE_VM is charged the benchmark's own pages until it execs.
	row("resident memory, mid-run", func(v string) float64 {
		return float64(medianOf(res["pio"][v], func(s sample) int64 { return s.anonKB + s.fileKB })) / 1024
	}, "Mi")
	row("  of it anonymous (heap, guest RAM)", func(v string) float64 {
		return float64(medianOf(res["pio"][v], func(s sample) int64 { return s.anonKB })) / 1024
	}, "Mi")
	row("  of it file-backed (shared text)", func(v string) float64 {
		return float64(medianOf(res["pio"][v], func(s sample) int64 { return s.fileKB })) / 1024
	}, "Mi")
	startup := func(v string) float64 { return float64(med("exit", v)) / float64(med("exit", "floor")) }
	fmt.Printf("\nstart-to-exit against the C floor: go-min %.2fx (the Go runtime), go-floor %.2fx (+ govmm's KVM backend and loader), govmm %.2fx (+ the machine)\n",
		startup("go-min"), startup("go-floor"), startup("govmm"))
	fmt.Printf("start-to-exit against go-min (what any Go VMM pays): govmm %.2fx (target <= 1.25x)\n", startup("govmm")/startup("go-min"))
	fmt.Println("targets: exit round trips <= 1.10x floor (on nested KVM: <= QEMU's ratio); start-to-exit <= 1.25x go-min and <= 0.25x qemu; VMM overhead <= 8 MiB")
	return nil
}

func measure(argv []string) (sample, error) {
	start := time.Now()
	c := exec.Command(argv[0], argv[1:]...)
	var outb strings.Builder
	c.Stdout, c.Stderr = &outb, &outb
	if err := c.Start(); err != nil {
		return sample{}, err
	}
	var anon, file int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(150 * time.Millisecond)
		anon, file = statusKB(c.Process.Pid)
	}()
	err := c.Wait()
	wall := time.Since(start)
	<-done
	out := outb.String()
	// Every guest leaves through debug-exit with value 0: status 1.
	if c.ProcessState == nil || c.ProcessState.ExitCode() != 1 {
		return sample{}, fmt.Errorf("%s: exit %v (want status 1 from debug-exit)\n%s", strings.Join(argv, " "), err, out)
	}
	return sample{wall: wall, anonKB: anon, fileKB: file}, nil
}

// statusKB reads RssAnon and RssFile of a running process (0 if it ended).
func statusKB(pid int) (anon, file int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		var v int64
		if n, _ := fmt.Sscanf(l, "RssAnon: %d kB", &v); n == 1 {
			anon = v
		}
		if n, _ := fmt.Sscanf(l, "RssFile: %d kB", &v); n == 1 {
			file = v
		}
	}
	return anon, file
}

func medianOf(s []sample, f func(sample) int64) int64 {
	d := make([]int64, 0, len(s))
	for _, x := range s {
		if v := f(x); v > 0 {
			d = append(d, v)
		}
	}
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func medianWall(s []sample) time.Duration {
	d := make([]time.Duration, len(s))
	for i := range s {
		d[i] = s[i].wall
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func reverse(v []vmm) []vmm {
	out := make([]vmm, len(v))
	for i := range v {
		out[len(v)-1-i] = v[i]
	}
	return out
}
