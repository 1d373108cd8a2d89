package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"govmm/internal/stats"
)

// metric is one row of the report.
type metric struct {
	key, name, unit string
	lowerIsBetter   bool
	// diagnostic rows explain another row and have no target.
	diagnostic bool
}

var metrics = []metric{
	{"blk-randread-iops", "virtio-blk 4 KiB random read, 8 in flight", "IOPS", false, false},
	{"blk-randread-irqs-per-op", "of it, the guest's virtio interrupts per read", "", true, true},
	{"blk-seqread-mbs", "virtio-blk 1 MiB sequential read", "MB/s", false, false},
	{"blk-seqwrite-mbs", "virtio-blk 1 MiB sequential write (+ flush)", "MB/s", false, false},
	{"net-g2h-mbs", "virtio-net TCP guest to host", "MB/s", false, false},
	{"net-h2g-mbs", "virtio-net TCP host to guest", "MB/s", false, false},
	{"net-h2g-rx-length-errors", "of it, packets the guest dropped for missing buffers", "", true, true},
	{"vsock-rtt-us", "vsock round trip, 64 bytes", "µs", true, false},
	{"boot-root-ms", "boot to init on a disk root (ext4 on virtio-blk)", "ms", true, false},
}

// report prints the medians per VMM, govmm's ratio to each QEMU column
// against the targets (at least QEMU's throughput, at most its
// latency), and every failed run.
func report(w io.Writer, results []result, cfg *config, command string, took time.Duration) {
	vals := map[string]map[string][]float64{} // vmm -> key -> values
	var failures []result
	infos := map[string][]string{} // vmm -> the guest's info lines, once each
	for _, r := range latestPerRep(results) {
		if info, ok := strings.CutPrefix(r.Key, "info "); ok {
			if !slices.Contains(infos[r.VMM], info) {
				infos[r.VMM] = append(infos[r.VMM], info)
			}
			continue
		}
		switch r.Key {
		case "done":
			continue
		case "failed":
			failures = append(failures, r)
			continue
		}
		if vals[r.VMM] == nil {
			vals[r.VMM] = map[string][]float64{}
		}
		vals[r.VMM][r.Key] = append(vals[r.VMM][r.Key], r.Value)
	}
	vmms := cfg.vmms()
	// The ratios are of the first column, govmm's or (-vmms
	// govmm-vhost,qemu-vhost) another govmm column.
	if len(vmms) == 0 || !strings.HasPrefix(vmms[0], "govmm") {
		vmms = append([]string{"govmm"}, slices.DeleteFunc(slices.Clone(vmms), func(v string) bool { return v == "govmm" })...)
	}
	fmt.Fprintf(w, "\n%s (%v; %d vCPU, %d MiB, medians of %d runs; n = runs that measured it)\n\n", command, took.Round(time.Second), cfg.cpus, memoryMiB, cfg.runs)
	head := "| metric |"
	sep := "|---|"
	for _, v := range vmms {
		head += " " + v + " |"
		sep += "---|"
	}
	for _, v := range vmms[1:] {
		head += " " + vmms[0] + "/" + v + " |"
		sep += "---|"
	}
	fmt.Fprintln(w, head+" target met |")
	fmt.Fprintln(w, sep+"---|")
	for _, m := range metrics {
		row := fmt.Sprintf("| %s (%s) |", m.name, m.unit)
		if m.unit == "" {
			row = fmt.Sprintf("| %s |", m.name)
		}
		for _, v := range vmms {
			if xs := vals[v][m.key]; len(xs) > 0 {
				row += fmt.Sprintf(" %s (n=%d) |", num(stats.Median(xs)), len(xs))
			} else {
				row += " - |"
			}
		}
		met := []string{}
		g := vals[vmms[0]][m.key]
		for _, v := range vmms[1:] {
			q := vals[v][m.key]
			if len(g) == 0 || len(q) == 0 || stats.Median(q) == 0 {
				row += " - |"
				continue
			}
			ratio := stats.Median(g) / stats.Median(q)
			row += fmt.Sprintf(" %.2fx |", ratio)
			ok := ratio >= 1
			if m.lowerIsBetter {
				ok = ratio <= 1
			}
			if !m.diagnostic && strings.HasPrefix(v, "qemu") {
				met = append(met, fmt.Sprintf("%s: %s", v, map[bool]string{true: "yes", false: "no"}[ok]))
			}
		}
		fmt.Fprintf(w, "%s %s |\n", row, strings.Join(met, ", "))
	}
	fmt.Fprintln(w, "\nTargets (issue #13): at least QEMU's throughput, at most its latency.")
	diagnostics(w, vals, infos, cfg.vmms())
	for _, f := range failures {
		fmt.Fprintf(w, "failed: %s run %d: %s\n", f.VMM, f.Rep+1, f.Note)
	}
}

// latestPerRep keeps, of the figures a repetition reported more than
// once (it ran again in a fresh L1 after one died part way through it),
// the last, so that each repetition counts once.
func latestPerRep(results []result) []result {
	type id struct {
		vmm, key string
		rep      int
	}
	last := map[id]int{}
	for i, r := range results {
		if r.Key != "failed" {
			last[id{r.VMM, r.Key, r.Rep}] = i
		}
	}
	var out []result
	for i, r := range results {
		if r.Key == "failed" || last[id{r.VMM, r.Key, r.Rep}] == i {
			out = append(out, r)
		}
	}
	return out
}

func num(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
