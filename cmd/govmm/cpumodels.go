//go:build !arm64

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"govmm/accel"
	"govmm/cpu"
	"govmm/vm"
)

// cpuModelsReport is what `govmm cpu-models --json` prints.
type cpuModelsReport struct {
	// CheckedAgainst says what "runs" was decided from: an
	// accelerator's supported CPUID, or /proc/cpuinfo as a best effort.
	CheckedAgainst string          `json:"checked_against"`
	Note           string          `json:"note,omitempty"`
	Models         []cpuModelEntry `json:"models"`
}

type cpuModelEntry struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Vendor      string   `json:"vendor,omitempty"`
	Features    []string `json:"features,omitempty"`
	Runs        bool     `json:"runs"`
	Why         string   `json:"why_not,omitempty"`
}

// cpuinfoAliases are the /proc/cpuinfo names Linux shows for features
// whose CPUID bit it hides under another name.
var cpuinfoAliases = map[string]string{
	"amd_ibpb": "ibpb", "amd_ibrs": "ibrs", "amd_stibp": "stibp", "amd_ssbd": "ssbd", "spec_ctrl": "ibrs",
}

// cmdCPUModels lists the named CPU models and whether this host can run
// each. The answer comes from the accelerator's supported CPUID (what a
// guest can really be given). Without an accelerator (no /dev/kvm or
// /dev/mshv, or it fails to open) it falls back to /proc/cpuinfo's flags
// as a best effort and says so: the CPU may have features the accelerator
// does not pass on, so "runs" there is a likelihood, not a promise.
func cmdCPUModels(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("govmm cpu-models", flag.ContinueOnError)
	fs.SetOutput(stderr)
	accelName := fs.String("accel", "auto", "accelerator whose supported CPUID decides: kvm, mshv or auto")
	mshvDev := fs.String("mshv-device", mshvDevice, "with --accel mshv: the MSHV device, or \"sim\" for mshvsim")
	cpuinfo := fs.String("cpuinfo", "", "decide from this /proc/cpuinfo file (e.g. another host's) instead of an accelerator")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{exitUsage, errors.New("")}
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "cpu-models: unexpected argument %q", fs.Arg(0))
	}
	if err := checkAccel(*accelName); err != nil {
		return err
	}
	var rep cpuModelsReport
	var vendor string
	var has func(string) bool
	// msrs checks a model's feature MSRs against the accelerator (nil
	// when deciding from /proc/cpuinfo, which does not show them).
	var msrs func(m cpu.Model) error
	fromCPUInfo := func(path, why string) error {
		v, flags, err := readCPUInfo(path)
		if err != nil {
			return fail(exitNoAccel, "cpu-models: %s, and %v", why, err)
		}
		vendor, has = v, cpuinfoHas(flags)
		rep.CheckedAgainst = path + " (best effort)"
		rep.Note = why + ": decided from the CPU's flags in " + path + "; the accelerator may offer less than the CPU has, so a model marked as running may still be refused"
		return nil
	}
	switch {
	case *cpuinfo != "":
		v, flags, err := readCPUInfo(*cpuinfo)
		if err != nil {
			return fail(exitUsage, "cpu-models: --cpuinfo: %v", err)
		}
		vendor, has = v, cpuinfoHas(flags)
		rep.CheckedAgainst = *cpuinfo
		rep.Note = "decided from the CPU's flags in " + *cpuinfo + ", not from an accelerator: the accelerator there may offer less"
	default:
		acc, err := openAccel(*accelName, *mshvDev)
		if err != nil {
			if err := fromCPUInfo("/proc/cpuinfo", "no accelerator ("+err.Error()+")"); err != nil {
				return err
			}
			break
		}
		sup, err := acc.SupportedCPUID()
		name := acc.Name()
		defer acc.Close()
		if err != nil {
			return fail(exitNoAccel, "cpu-models: %s: read supported CPUID: %v", name, err)
		}
		vendor = cpu.Vendor(sup)
		has = func(n string) bool { f, ok := cpu.Lookup(n); return ok && f.Has(sup) }
		msrs = func(m cpu.Model) error { return vm.CheckFeatureMSRs(acc, m.FeatureMSRs(), m.Name) }
		rep.CheckedAgainst = name + " supported CPUID"
	}
	for _, d := range cpu.Definitions() {
		e := cpuModelEntry{Name: d.Name, Description: d.Description, Vendor: d.Vendor, Features: d.Features, Runs: true}
		if !d.IsHost() {
			e.Why = d.Unavailable(vendor, has)
			if e.Why == "" && msrs != nil {
				if err := msrs(cpu.Model{Name: d.Name}); err != nil {
					e.Why = err.Error()
				}
			}
			e.Runs = e.Why == ""
		}
		rep.Models = append(rep.Models, e)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "CPU models (--cpu MODEL[,+feat,-feat]); checked against %s:\n", rep.CheckedAgainst)
	if rep.Note != "" {
		fmt.Fprintf(stdout, "  note: %s\n", wrap(rep.Note, 72, "        "))
	}
	for _, e := range rep.Models {
		mark := "runs here"
		if !e.Runs {
			mark = "cannot run"
		}
		fmt.Fprintf(stdout, "  %-15s %-10s  %s\n", e.Name, mark, e.Description)
		if e.Why != "" {
			fmt.Fprintf(stdout, "  %-15s %-10s  %s\n", "", "", wrap(e.Why, 72, strings.Repeat(" ", 30)))
		}
	}
	return nil
}

// cpuinfoHas answers "does the CPU have this feature" from cpuinfo flags.
// The accelerator emulates the x2APIC and the LAPIC timer's TSC-deadline
// mode whatever the CPU has (AMD's CPUs have no TSC-deadline mode, and
// KVM and the Microsoft Hypervisor offer it on them all the same).
func cpuinfoHas(flags map[string]bool) func(string) bool {
	return func(n string) bool {
		return flags[n] || flags[cpuinfoAliases[n]] || n == "x2apic" || n == "tsc_deadline_timer"
	}
}

// readCPUInfo returns the vendor and the flags of the first processor in
// a /proc/cpuinfo file.
func readCPUInfo(path string) (string, map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	var vendor string
	var flags map[string]bool
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() && flags == nil {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "vendor_id":
			vendor = strings.TrimSpace(v)
		case "flags":
			flags = map[string]bool{}
			for _, fl := range strings.Fields(v) {
				flags[fl] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", nil, fmt.Errorf("read %s: %w", path, err)
	}
	if flags == nil {
		return "", nil, fmt.Errorf("%s has no x86 flags line", path)
	}
	return vendor, flags, nil
}

// envHideCPUID is for tests only: the CPU features (/proc/cpuinfo names,
// comma-separated) that restore and migrate receive pretend this host's
// accelerator lacks, so that a test can show a restore refused without
// hardware that lacks them. Run and cpu-models ignore it.
const envHideCPUID = "GOVMM_TEST_HIDE_CPUID"

// checkSavedCPU refuses a saved or incoming machine whose CPUID acc cannot
// present (vm.MachineState.CheckCPU), before anything is built.
func checkSavedCPU(acc accel.Accelerator, m vm.MachineState) error {
	sup, err := acc.SupportedCPUID()
	if err != nil {
		return fmt.Errorf("%s: read supported CPUID: %w", acc.Name(), err)
	}
	if hide := os.Getenv(envHideCPUID); hide != "" {
		if sup, err = cpu.Hide(sup, strings.Split(hide, ",")); err != nil {
			return fmt.Errorf("%s: %w", envHideCPUID, err)
		}
	}
	if err := m.CheckCPU(sup, acc.Name()); err != nil {
		return err
	}
	return vm.CheckFeatureMSRs(acc, m.FeatureMSRs, m.CPUModel)
}

// cpuGuestInfo tells govmm's own guests (the probe shows it) which CPU
// model they run on and what it changes against what the accelerator
// offers: "govmm.cpu=x86-64-v2 govmm.cpu.hidden=avx,avx2
// govmm.cpu.added=". Feature names are /proc/cpuinfo's.
func cpuGuestInfo(model cpu.Model, supported, guest []accel.CPUIDEntry) string {
	name := model.String()
	if name == "" {
		name = "host"
	}
	word := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, " ", "_"), ",", "_") }
	var hidden, added []string
	for _, f := range cpu.MissingOn(supported, guest) {
		hidden = append(hidden, word(f))
	}
	for _, f := range cpu.MissingOn(guest, supported) {
		added = append(added, word(f))
	}
	return fmt.Sprintf("govmm.cpu=%s govmm.cpu.hidden=%s govmm.cpu.added=%s",
		strings.ReplaceAll(name, " ", "_"), strings.Join(hidden, ","), strings.Join(added, ","))
}
