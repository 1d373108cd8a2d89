package main

// `govmm caps`: the report and its printing, shared by the x86 and arm64
// builds (each has its own cmdCaps that fills the report).

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"govmm/accel"
)

// capsReport is what `govmm caps` prints.
type capsReport struct {
	Accelerators []accelReport `json:"accelerators"`
}

type accelReport struct {
	Name      string             `json:"name"`
	Device    string             `json:"device"`
	Available bool               `json:"available"`
	Error     string             `json:"error,omitempty"`
	Caps      *accel.Caps        `json:"caps,omitempty"`
	CPUID     []accel.CPUIDEntry `json:"supported_cpuid,omitempty"`
	Features  []string           `json:"cpu_features,omitempty"`
}

// parseCapsFlags parses `govmm caps` flags: --json.
func parseCapsFlags(args []string) (asJSON bool, err error) {
	fs := flag.NewFlagSet("govmm caps", flag.ContinueOnError)
	j := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return false, &exitError{exitUsage, fmt.Errorf("caps: %v", err)}
	}
	return *j, nil
}

// emitCaps prints rep as indented JSON or as text.
func emitCaps(stdout io.Writer, rep capsReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printCaps(stdout, rep)
	return nil
}

func printCaps(w io.Writer, rep capsReport) {
	for _, a := range rep.Accelerators {
		if !a.Available {
			fmt.Fprintf(w, "%s: not available (%s)\n\n", a.name(), a.Error)
			continue
		}
		fmt.Fprintf(w, "%s: available (%s)\n", a.name(), a.Device)
		if c := a.Caps; c != nil {
			if c.APIVersion != 0 {
				fmt.Fprintf(w, "  API version: %d\n", c.APIVersion)
			}
			if c.MaxVCPUs != 0 {
				fmt.Fprintf(w, "  max vCPUs:   %d\n", c.MaxVCPUs)
			}
			keys := make([]string, 0, len(c.Info))
			for k := range c.Info {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(w, "  %s: %s\n", k, c.Info[k])
			}
			fmt.Fprintln(w, "  capabilities (* = used by govmm):")
			for _, f := range c.Features {
				mark := " "
				if f.Used {
					mark = "*"
				}
				fmt.Fprintf(w, "   %s %-32s %d\n", mark, f.Name, f.Value)
			}
		}
		if len(a.CPUID) > 0 {
			fmt.Fprintf(w, "  supported CPUID: %d leaves\n", len(a.CPUID))
			for _, e := range a.CPUID {
				fmt.Fprintf(w, "    %08x.%02x  eax=%08x ebx=%08x ecx=%08x edx=%08x\n", e.Function, e.Index, e.EAX, e.EBX, e.ECX, e.EDX)
			}
			fmt.Fprintf(w, "  CPU features: %s\n", wrap(strings.Join(a.Features, " "), 72, "    "))
		}
		fmt.Fprintln(w)
	}
}

func (a accelReport) name() string { return a.Name }

// wrap breaks s into lines of at most width characters after the first.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		if i > 0 {
			if line+1+len(word) > width {
				b.WriteString("\n" + indent)
				line = 0
			} else {
				b.WriteByte(' ')
				line++
			}
		}
		b.WriteString(word)
		line += len(word)
	}
	return b.String()
}
