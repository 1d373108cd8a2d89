package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"
)

// stats are the successful samples of one row.
type stats struct {
	init, exit, enter []float64
	// guest is, for a govmm boot, the time from vCPU 0 entering the guest
	// to the marker: the guest's own part of the boot.
	guest  []float64
	failed int
}

func (c *collector) stats(kind, vmm string, cpus int) stats {
	var s stats
	for _, r := range c.results {
		if r.Kind != kind || r.VMM != vmm || r.CPUs != cpus {
			continue
		}
		if r.failed() {
			s.failed++
			continue
		}
		s.init = append(s.init, r.InitMS)
		if r.ExitMS > 0 {
			s.exit = append(s.exit, r.ExitMS)
		}
		if r.EnterMS > 0 {
			s.enter = append(s.enter, r.EnterMS)
			if r.Kind == "boot" {
				s.guest = append(s.guest, r.InitMS-r.EnterMS)
			}
		}
	}
	return s
}

// median and minimum of v; 0 when empty.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func minimum(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func report(c *collector, cfg *config, command string, took time.Duration, deaths int) {
	fmt.Printf("\nLinux to init: %s, initramfs with busybox, %q, %s MiB; %d runs interleaved\n",
		filepath.Base(cfg.kernel), cmdline, memory, cfg.runs)
	fmt.Printf("qemu: -accel kvm -cpu host, -M %s (SeaBIOS) and -M %s (qboot); govmm: --accel=kvm, and on mshvsim\n",
		cfg.machine("qemu-pc"), cfg.machine("qemu-microvm"))
	fmt.Printf("on %s\n", c.substrate)
	if cfg.from < cfg.runs {
		c.bootTable(cfg)
	}
	if cfg.stats {
		c.statTable(os.Stdout)
	}
	if cfg.restore {
		c.restoreTable(cfg)
	}
	for _, r := range c.results {
		if r.failed() {
			note := r.Note
			if len(note) > 600 {
				note = note[:600] + "..."
			}
			fmt.Printf("\nfailed: %s %s, %d vCPU, run %d: %s\n", r.Kind, r.VMM, r.CPUs, r.Rep+1, note)
		}
	}
	if deaths > 0 {
		fmt.Printf("\nL1 died %d times (a fresh L1 went on from the repetition it was in)\n", deaths)
	}
	fmt.Printf("\ncommand: %s   (took %s)\n", command, took.Round(time.Second))
}

func (c *collector) bootTable(cfg *config) {
	fmt.Printf("\n%-14s %5s %12s %10s %12s %10s %13s %8s\n", "VMM", "vCPUs", "init median", "init min", "exit median", "exit min", "guest median", "failed")
	cols := cfg.columns()
	for _, cpus := range cfg.cpus {
		for _, vmm := range cols {
			s := c.stats("boot", vmm, cpus)
			fmt.Printf("%-14s %5d %12s %10s %12s %10s %13s %4d/%d\n", vmm, cpus, msec(median(s.init)), msec(minimum(s.init)),
				msec(median(s.exit)), msec(minimum(s.exit)), msec(median(s.guest)), s.failed, s.failed+len(s.init))
		}
	}
	fmt.Println("guest: from vCPU 0 entering the guest (govmm's log) to init's line, the part of the boot that is the guest's own")
	if cfg.noQEMU {
		return
	}
	fmt.Println("\nratios of medians, time to init (time to exit); targets for govmm: <= 0.5x QEMU pc, <= 1.0x QEMU microvm")
	for _, cpus := range cfg.cpus {
		for _, vmm := range slices.DeleteFunc(slices.Clone(cfg.columns()), func(v string) bool { return !isGovmm(v) }) {
			g := c.stats("boot", vmm, cpus)
			fmt.Printf("  %d vCPU %-14s", cpus, vmm)
			for _, q := range []struct {
				col    string
				target float64
			}{{"qemu-pc", 0.5}, {"qemu-microvm", 1.0}} {
				s := c.stats("boot", q.col, cpus)
				ri, re := ratio(g.init, s.init), ratio(g.exit, s.exit)
				verdict := ""
				if vmm != "govmm-mshvsim" {
					verdict = ": " + met(ri, q.target)
				}
				fmt.Printf("  /%s %s (%s)%s", q.col, times(ri), times(re), verdict)
			}
			fmt.Println()
		}
	}
	c.floor(os.Stdout, cfg)
}

// floor says how far below QEMU pc a VMM could get at all: the guest's own
// time under govmm-vmlinux (no decompression, no firmware, no VMM start)
// is a boot that a VMM presenting govmm's machine cannot beat, so its
// ratio to QEMU pc's whole boot bounds every VMM's ratio from below.
func (c *collector) floor(w io.Writer, cfg *config) {
	if !slices.Contains(cfg.columns(), "govmm-vmlinux") || !slices.Contains(cfg.columns(), "qemu-pc") {
		return
	}
	fmt.Fprintln(w, "\nthe floor: the guest's own time under govmm-vmlinux (nothing to decompress), against QEMU pc's whole boot")
	for _, cpus := range cfg.cpus {
		g, q := c.stats("boot", "govmm-vmlinux", cpus), c.stats("boot", "qemu-pc", cpus)
		r := ratio(g.guest, q.init)
		verdict := "below the 0.5x target: a VMM could meet it"
		switch {
		case r == 0:
			verdict = "no data"
		case r > 0.5:
			verdict = "above the 0.5x target: no VMM presenting this machine can meet it here"
		}
		fmt.Fprintf(w, "  %d vCPU: %s / %s = %s: %s\n", cpus, msec(median(g.guest)), msec(median(q.init)), times(r), verdict)
	}
}

func (c *collector) restoreTable(cfg *config) {
	fmt.Println("\nrestore of a booted Linux guest (its init waiting in read on the console), from exec of govmm restore:")
	fmt.Printf("%-14s %5s %12s %10s %12s %10s %8s\n", "VMM", "vCPUs", "line median", "line min", "insn median", "insn min", "failed")
	for _, cpus := range cfg.cpus {
		for _, vmm := range vmms[:2] {
			s := c.stats("restore", vmm, cpus)
			fmt.Printf("%-14s %5d %12s %10s %12s %10s %4d/%d\n", vmm, cpus, msec(median(s.init)), msec(minimum(s.init)),
				msec(median(s.enter)), msec(minimum(s.enter)), s.failed, s.failed+len(s.init))
		}
	}
	fmt.Println("line: to the guest's echo of a line written to stdin when vCPU 0 enters the guest; insn: to vCPU 0 entering the guest")
}

// msec formats a time in milliseconds, "-" for none.
func msec(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 1000:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

func ratio(a, b []float64) float64 {
	if len(a) == 0 || len(b) == 0 {
		return 0
	}
	return median(a) / median(b)
}

func times(r float64) string {
	if r == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", r)
}

func met(r, target float64) string {
	switch {
	case r == 0:
		return "no data"
	case r <= target:
		return "met"
	}
	return "missed"
}
