package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procSnap is what the VMM's process had spent when a phase started or
// ended (/proc/PID): the CPU time of all its threads, of it the time
// they spent in the guest (KVM_RUN; Linux counts guest time in utime
// too), the read and write system calls, and the context switches of
// the threads alive then. Set side by side per MB, it shows how much of
// L1's two CPUs each VMM took outside its guest (which the guest's
// vCPU, the host's TCP end and the VMM's own threads share) and how
// many system calls and thread switches it made for the same data.
type procSnap struct {
	ok                   bool
	cpuTicks, guestTicks int64
	syscr, syscw         int64
	vcsw, nvcsw          int64
	// vcswBy are the voluntary switches by thread name (the main
	// thread's name, which the Go runtime's unnamed threads share,
	// counted as runtimeThreads), to tell whose they are.
	vcswBy map[string]int64
	// rt are the runtimeThreads' voluntary switches and CPU ticks by
	// thread id, to tell one busy sleeper (the runtime's monitor,
	// sysmon, wakes without running) from many threads woken in turn.
	rt map[string][2]int64
}

// runtimeThreads names the threads that bear the process's own name.
const runtimeThreads = "main and runtime"

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times.
const clockTicks = 100

func readProc(pid int) procSnap {
	var s procSnap
	if pid <= 0 {
		return s
	}
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return s
	}
	// The fields after the command's closing parenthesis: state is
	// field 3, utime 14, stime 15, guest_time 43.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return s
	}
	f := strings.Fields(string(b[i+1:]))
	field := func(n int) int64 {
		if n-3 >= len(f) {
			return 0
		}
		v, _ := strconv.ParseInt(f[n-3], 10, 64)
		return v
	}
	s.cpuTicks = field(14) + field(15)
	s.guestTicks = field(43)
	if b, err := os.ReadFile(dir + "/io"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ": ")
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "syscr":
				s.syscr = n
			case "syscw":
				s.syscw = n
			}
		}
	}
	main := ""
	if b, err := os.ReadFile(dir + "/comm"); err == nil {
		main = strings.TrimSpace(string(b))
	}
	s.vcswBy, s.rt = map[string]int64{}, map[string][2]int64{}
	tasks, _ := filepath.Glob(dir + "/task/*/status")
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		name := ""
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ":")
			if k == "Name" {
				name = strings.TrimSpace(v)
				if name == main {
					name = runtimeThreads
				}
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "voluntary_ctxt_switches":
				s.vcsw += n
				s.vcswBy[name] += n
				if name == runtimeThreads {
					tid := filepath.Base(filepath.Dir(t))
					s.rt[tid] = [2]int64{n, taskTicks(filepath.Dir(t))}
				}
			case "nonvoluntary_ctxt_switches":
				s.nvcsw += n
			}
		}
	}
	s.ok = true
	return s
}

// taskTicks is a thread's CPU time (utime + stime) from its stat.
func taskTicks(dir string) int64 {
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// procDelta turns the process's growth from a to b into results keyed
// "proc PHASE WHAT", divided by per. Context switches of threads that
// ended during the phase are not counted (the VMMs keep theirs).
func procDelta(vmm, phase string, a, b procSnap, per float64) []result {
	if !a.ok || !b.ok || per <= 0 {
		return nil
	}
	ms := func(ticks int64) float64 { return float64(ticks) * 1000 / clockTicks / per }
	n := func(v int64) float64 { return float64(v) / per }
	cpu, guest := b.cpuTicks-a.cpuTicks, b.guestTicks-a.guestTicks
	var byThread []result
	for name, v := range b.vcswBy {
		byThread = append(byThread, result{VMM: vmm, Key: "proc " + phase + " voluntary switches, threads " + name, Value: n(v - a.vcswBy[name])})
	}
	// The runtime thread that switched most in the phase, and how many
	// switched at all.
	var top, topTicks, woke int64
	for tid, v := range b.rt {
		d := v[0] - a.rt[tid][0]
		if d > 0 {
			woke++
		}
		if d > top {
			top, topTicks = d, v[1]-a.rt[tid][1]
		}
	}
	if len(b.rt) > 0 {
		byThread = append(byThread,
			result{VMM: vmm, Key: "proc " + phase + " voluntary switches, the runtime thread that switched most", Value: n(top)},
			result{VMM: vmm, Key: "proc " + phase + " cpu-ms of the runtime thread that switched most", Value: ms(topTicks)},
			result{VMM: vmm, Key: "proc " + phase + " runtime threads that switched (count, not per unit)", Value: float64(woke)})
	}
	return append([]result{
		{VMM: vmm, Key: "proc " + phase + " cpu-ms outside the guest", Value: ms(cpu - guest)},
		{VMM: vmm, Key: "proc " + phase + " cpu-ms in the guest", Value: ms(guest)},
		{VMM: vmm, Key: "proc " + phase + " read syscalls", Value: n(b.syscr - a.syscr)},
		{VMM: vmm, Key: "proc " + phase + " write syscalls", Value: n(b.syscw - a.syscw)},
		{VMM: vmm, Key: "proc " + phase + " voluntary switches", Value: n(b.vcsw - a.vcsw)},
		{VMM: vmm, Key: "proc " + phase + " involuntary switches", Value: n(b.nvcsw - a.nvcsw)},
	}, byThread...)
}
