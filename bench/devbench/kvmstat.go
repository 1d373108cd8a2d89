package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"govmm/internal/stats"
)

// KVM's per-VM counters in debugfs (/sys/kernel/debug/kvm/PID-FD/: exits,
// io_exits, mmio_exits, halt_exits, irq_injections, hypercalls, ...),
// read around each measured phase so that the report can set the exits
// each VMM's guest costs per MB or per round trip side by side (the
// packets take the same kernel path under both VMMs with vhost, so a
// gap shows here or in the guest's CPU time).
const kvmDebugfs = "/sys/kernel/debug/kvm"

// kvmStatKeys are the counters the report shows, in its order.
var kvmStatKeys = []string{
	"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits",
	"request_irq_exits", "signal_exits", "irq_injections", "hypercalls", "halt_wakeup",
	"halt_successful_poll", "halt_attempted_poll", "insn_emulation", "nmi_injections", "tlb_flush", "host_state_reload",
}

// mountDebugfs mounts debugfs where KVM's counters are not visible yet.
func mountDebugfs() {
	if _, err := os.Stat(kvmDebugfs); err == nil {
		return
	}
	unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "")
}

// kvmSnap is the counters of every VM in debugfs, summed (devbench runs
// one VM at a time), and when they were read.
type kvmSnap struct {
	at time.Time
	n  map[string]int64
	// proc is the VMM process's (procstat.go), read with the counters.
	proc procSnap
}

func readKVMStats() kvmSnap {
	s := kvmSnap{at: time.Now(), n: map[string]int64{}}
	vms, _ := filepath.Glob(filepath.Join(kvmDebugfs, "*-*"))
	for _, vm := range vms {
		for _, k := range kvmStatKeys {
			b, err := os.ReadFile(filepath.Join(vm, k))
			if err != nil {
				continue
			}
			if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
				s.n[k] += v
			}
		}
	}
	return s
}

// kvmDelta turns the counters' growth from a to b into results keyed
// "kvm PHASE COUNTER", divided by per (MB moved, round trips), and adds
// the phase's exits per second.
func kvmDelta(vmm, phase string, a, b kvmSnap, per float64) []result {
	if len(a.n) == 0 || len(b.n) == 0 {
		return nil
	}
	var out []result
	for _, k := range kvmStatKeys {
		if _, ok := b.n[k]; !ok {
			continue
		}
		out = append(out, result{VMM: vmm, Key: "kvm " + phase + " " + k, Value: float64(b.n[k]-a.n[k]) / per})
	}
	if d := b.at.Sub(a.at).Seconds(); d > 0 {
		out = append(out, result{VMM: vmm, Key: "kvm " + phase + " exits/s", Value: float64(b.n["exits"]-a.n["exits"]) / d})
	}
	return out
}

// guestIRQs turns a guest's "irq PHASE NAME=COUNT ..." line into results
// keyed "irq PHASE NAME", divided by per.
func guestIRQs(vmm, line string, per map[string]float64) []result {
	f := strings.Fields(line)
	if len(f) < 1 {
		return nil
	}
	phase := f[0]
	d := per[phase]
	if d == 0 {
		d = 1
	}
	var out []result
	for _, kv := range f[1:] {
		name, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			continue
		}
		out = append(out, result{VMM: vmm, Key: "irq " + phase + " " + name, Value: n / d})
	}
	return out
}

// phaseUnits are what each phase's counters are divided by: MB moved for
// the TCP transfers, round trips for vsock, seconds for the idle stretch.
func phaseUnits() map[string]float64 {
	return map[string]float64{"net-g2h": netBytes / 1e6, "net-h2g": netBytes / 1e6, "vsock": rtts, "idle": 2}
}

// diagnostics prints the counters' medians per VMM (rows where some VMM
// counted), and the guest's "info" lines per VMM (once each).
func diagnostics(w io.Writer, vals map[string]map[string][]float64, infos map[string][]string, vmms []string) {
	var keys []string
	for _, v := range vmms {
		for k := range vals[v] {
			if (strings.HasPrefix(k, "kvm ") || strings.HasPrefix(k, "irq ") || strings.HasPrefix(k, "proc ")) && !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	if len(keys) > 0 {
		fmt.Fprintf(w, "\nKVM's exit counters (debugfs, per MB for TCP, per round trip for vsock, per second idle) the guest's interrupts (/proc/interrupts) and the VMM process's CPU time, read and write system calls and context switches (/proc/PID; per MB, per round trip, per second idle, per 1000 random reads), medians:\n\n| counter |")
		for _, v := range vmms {
			fmt.Fprintf(w, " %s |", v)
		}
		fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(vmms)))
		for _, k := range keys {
			row := "| " + k + " |"
			any := false
			for _, v := range vmms {
				if xs := vals[v][k]; len(xs) > 0 {
					m := stats.Median(xs)
					any = any || m != 0
					row += fmt.Sprintf(" %.2f |", m)
				} else {
					row += " - |"
				}
			}
			if any {
				fmt.Fprintln(w, row)
			}
		}
	}
	for _, v := range vmms {
		if len(infos[v]) > 0 {
			fmt.Fprintf(w, "\nWhat the guest saw under %s:\n", v)
			for _, l := range infos[v] {
				fmt.Fprintf(w, "  %s\n", l)
			}
		}
	}
}
