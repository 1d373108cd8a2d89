package main

import (
	"fmt"
	"strconv"
	"strings"
)

// resultPrefix starts every result line. The run inside L1 prints one line
// per boot; the benchmark on the host reads them back, so that a run whose
// L1 died keeps what it measured and a fresh L1 goes on from there.
const resultPrefix = "@@linuxboot "

// result is one measurement, or a note about the run.
type result struct {
	Kind   string  // "boot", "restore", "done" (repetition Rep finished) or "substrate"
	VMM    string  // a column: govmm, govmm-mshvsim, qemu-pc, qemu-microvm
	CPUs   int     // vCPUs
	Rep    int     // repetition
	InitMS float64 // boot: start to the marker line; restore: start to the guest's next line
	ExitMS float64 // boot: start to the process's exit after the guest's poweroff
	// EnterMS is the time from start to vCPU 0 entering the guest
	// (govmm's log line; 0 for QEMU).
	EnterMS float64
	// Note is why the boot or restore failed (empty if it did not), or,
	// for kind "substrate", where the numbers come from. It runs to the
	// end of the line.
	Note string
}

func (r result) failed() bool { return r.Kind != "substrate" && r.Note != "" }

// key identifies a measurement: a fresh L1 may repeat one.
func (r result) key() string { return fmt.Sprintf("%s/%s/%d/%d", r.Kind, r.VMM, r.CPUs, r.Rep) }

func (r result) String() string {
	s := fmt.Sprintf("%skind=%s vmm=%s cpus=%d rep=%d init_ms=%.1f exit_ms=%.1f enter_ms=%.1f", resultPrefix,
		r.Kind, r.VMM, r.CPUs, r.Rep, r.InitMS, r.ExitMS, r.EnterMS)
	if r.Note != "" {
		s += " note=" + strings.ReplaceAll(r.Note, "\n", " ")
	}
	return s
}

// parseResult reads a line String wrote; other lines give ok == false.
func parseResult(line string) (r result, ok bool) {
	i := strings.Index(line, resultPrefix)
	if i < 0 {
		return result{}, false
	}
	line = strings.TrimRight(line[i+len(resultPrefix):], "\r\n")
	if j := strings.Index(line, " note="); j >= 0 {
		r.Note = line[j+len(" note="):]
		line = line[:j]
	}
	seen := 0
	for _, f := range strings.Fields(line) {
		k, v, found := strings.Cut(f, "=")
		if !found {
			return result{}, false
		}
		var err error
		switch k {
		case "kind":
			r.Kind = v
		case "vmm":
			r.VMM = v
		case "cpus":
			r.CPUs, err = strconv.Atoi(v)
		case "rep":
			r.Rep, err = strconv.Atoi(v)
		case "init_ms":
			r.InitMS, err = strconv.ParseFloat(v, 64)
		case "exit_ms":
			r.ExitMS, err = strconv.ParseFloat(v, 64)
		case "enter_ms":
			r.EnterMS, err = strconv.ParseFloat(v, 64)
		default:
			continue
		}
		if err != nil {
			return result{}, false
		}
		seen++
	}
	return r, seen == 7 && r.Kind != ""
}
