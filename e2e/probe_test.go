package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
	"govmm/virtio/virtiotest"
)

// The probe guest (guests/probe, the built-in default guest): its summary
// mode, its report mode on every accelerator, the same report under QEMU,
// and its interactive TUI driven through tmux. guests/probe/README.md lists
// the report keys.

const (
	probeBegin = "--- probe report begin ---"
	probeEnd   = "--- probe report end ---"
)

// probeMeasured are report keys that are measured or time-dependent, so
// they differ between any two runs (never between the reports of one run
// taken before and after a snapshot, except the tick/uptime/IRQ counts).
var probeMeasured = map[string]string{
	"timer.lapic_hz":          "LAPIC timer frequency measured against the PM timer",
	"timer.tsc_hz_measured":   "TSC frequency measured against the PM timer",
	"lapic.timer_initial":     "derived from the measured LAPIC frequency",
	"timer.ticks":             "timer interrupts taken so far",
	"timer.uptime_ms":         "derived from timer.ticks",
	"serial.rx_irqs":          "depends on input timing",
	"hv.stimer.message_ticks": "Hyper-V synthetic timer expiries so far",
	"hv.stimer.direct_ticks":  "Hyper-V synthetic timer expiries so far",
}

// probeReport runs govmm in report mode and returns the parsed report.
func probeReport(t *testing.T, flags []string, extra ...string) map[string]string {
	t.Helper()
	args := append([]string{"run"}, flags...)
	args = append(args, "--cpus=2", "--memory=256M", "--serial=stdio", "--cmdline=probe.mode=report")
	args = append(args, extra...)
	r := govmm(t, args...)
	if r.Code != 0 {
		t.Fatalf("govmm %s: want exit 0 (guest powered off)\n%s", strings.Join(args, " "), r)
	}
	return parseProbeReport(t, r.Stdout)
}

// parseProbeReport extracts the first report from out. It fails the test
// unless the report is present, every line is key=value, and the keys are
// unique and sorted (the report's contract).
func parseProbeReport(t *testing.T, out string) map[string]string {
	t.Helper()
	out = strings.ReplaceAll(out, "\r", "")
	b := strings.Index(out, probeBegin+"\n")
	if b < 0 {
		t.Fatalf("no %q in the output:\n%s", probeBegin, out)
	}
	body := out[b+len(probeBegin)+1:]
	e := strings.Index(body, probeEnd)
	if e < 0 {
		t.Fatalf("no %q in the output:\n%s", probeEnd, out)
	}
	m := map[string]string{}
	prev := ""
	for _, line := range strings.Split(strings.TrimSuffix(body[:e], "\n"), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			t.Fatalf("report line %q is not key=value", line)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("report key %q appears twice", k)
		}
		if line < prev {
			t.Errorf("report not sorted: %q after %q", line, prev)
		}
		prev = line
		m[k] = v
	}
	return m
}

// checkProbeFacts checks the keys whose values a 2-CPU, 256 MiB govmm (or
// QEMU) machine must show.
func checkProbeFacts(t *testing.T, who string, m map[string]string) {
	t.Helper()
	want := map[string]string{
		"probe.mode":              "report",
		"boot.multiboot":          "1",
		"acpi.found":              "1",
		"acpi.madt":               "1",
		"acpi.fadt":               "1",
		"acpi.ioapic":             "0xfec00000",
		"cpus.madt":               "2",
		"cpus.started":            "2",
		"lapic.timer_lvt":         "0x20030", // vector 0x30, periodic
		"lapic.timer_divide":      "0x3",     // divide by 16
		"serial.irq":              "1",
		"state.counter":           "1000000",
		"state.check.counter":     "ok",
		"state.check.fpu":         "ok",
		"state.check.xmm":         "ok",
		"state.check.msr":         "ok",
		"state.check.lapic_timer": "ok",
		"fpu.fcw":                 "0x0e7f",
		"fpu.mxcsr":               "0xff80",
		"fpu.st1":                 "3fff:8000000000000000",
		"timer.calibration":       "pmtimer",
		"timer.hz":                "100",
		"fpu.xmm00":               "f29f6269d20168c941167fbece64eae2", // seed 1
		"msr.apic_base":           "0xfee00d00",                       // BSP, enabled, x2APIC
		"lapic.mode":              "x2apic",
		"lapic.id":                "0",
		"xsave.supported":         "1",
		"xsave.header.xcomp_bv":   "0x0",
		"cpuid.features.1.edx":    "", // present (checked below)
		"boot.mem_lower_kb":       "639",
		"acpi.pm_timer_bits":      "", // present
		"timer.tsc_hz_measured":   "", // present
		"timer.lapic_hz":          "", // present
		"cpu.vendor":              "", // present
		"xsave.xcr0":              "", // present
		"acpi.pm1a_cnt":           "", // present
		"boot.mem_bytes":          "", // present
		"cpuid.raw.00000001.0":    "", // present
		"msr.pat":                 "", // present
		"xsave.header.xstate_bv":  "", // present
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("%s: report has no %s", who, k)
			continue
		}
		if v != "" && got != v {
			t.Errorf("%s: %s=%s, want %s", who, k, got, v)
		}
	}
	if !strings.Contains(m["cpuid.features.1.edx"], "fxsr") {
		t.Errorf("%s: cpuid.features.1.edx=%q lacks fxsr", who, m["cpuid.features.1.edx"])
	}
	// A partition on MSHV gets the SynIC and the synthetic timers (in
	// direct mode too) from govmm's synthetic features, and the probe runs
	// STIMER0 in message mode and STIMER1 in direct mode; on KVM the guest
	// sees KVM's leaves and none of it.
	if strings.HasPrefix(who, "mshv") {
		if m["hv.stimer.modes"] != "message,direct" || m["state.check.hv_stimer"] != "ok" {
			t.Errorf("%s: hv.stimer.modes=%q state.check.hv_stimer=%q, want message,direct and ok (message_ticks=%s direct_ticks=%s)",
				who, m["hv.stimer.modes"], m["state.check.hv_stimer"], m["hv.stimer.message_ticks"], m["hv.stimer.direct_ticks"])
		}
	} else if _, ok := m["hv.stimer.modes"]; ok {
		t.Errorf("%s: the probe found Hyper-V's synthetic timers on KVM (hv.stimer.modes=%s)", who, m["hv.stimer.modes"])
	}
}

// probeDiff compares two reports. Keys in ignore are skipped; keys matching
// an explained prefix are logged with the reason; anything else that
// differs is returned.
func probeDiff(t *testing.T, aName string, a map[string]string, bName string, b map[string]string,
	explained map[string]string) []string {
	t.Helper()
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var bad []string
	for _, k := range sorted {
		av, aok := a[k]
		bv, bok := b[k]
		if aok == bok && av == bv {
			continue
		}
		if _, ok := probeMeasured[k]; ok {
			continue
		}
		show := func(v string, ok bool) string {
			if !ok {
				return "(absent)"
			}
			return v
		}
		line := fmt.Sprintf("%s: %s=%s %s=%s", k, aName, show(av, aok), bName, show(bv, bok))
		reason := ""
		best := -1
		for prefix, why := range explained {
			if strings.HasPrefix(k, prefix) && len(prefix) > best {
				reason, best = why, len(prefix)
			}
		}
		if best >= 0 {
			t.Logf("explained difference (%s): %s", reason, line)
			continue
		}
		bad = append(bad, line)
	}
	return bad
}

// TestProbeSummary: the built-in default guest (no --kernel, no --cmdline)
// prints its short report and powers off.
func TestProbeSummary(t *testing.T) {
	for _, flags := range accels(t) {
		t.Run(accelName(flags), func(t *testing.T) {
			args := append(append([]string{"run"}, flags...), "--cpus=2", "--memory=256M")
			r := govmm(t, args...)
			if r.Code != 0 {
				t.Fatalf("want exit 0 (poweroff)\n%s", r)
			}
			for _, want := range []string{
				"govmm probe guest", "cpu:", "cpuid 1.edx", "memory:", " MiB (mem_lower 639 KiB",
				"cpus:       2 started (2 in the MADT)", "probe: done, powering off",
				"cpu model:  host", // the model govmm told it (--cpu's default)
			} {
				if !strings.Contains(r.Stdout, want) {
					t.Errorf("output lacks %q\n%s", want, r)
				}
			}
		})
	}
}

// TestProbeBadMode: an unknown probe.mode is reported and ends the guest
// through the debug-exit device with 2 (status 5).
func TestProbeBadMode(t *testing.T) {
	flags := accels(t)[0]
	args := append(append([]string{"run"}, flags...), "--cmdline=probe.mode=bogus")
	r := govmm(t, args...)
	if r.Code != 5 || !strings.Contains(r.Stdout, "unknown probe.mode=bogus") {
		t.Fatalf("want exit 5 and an error naming the mode\n%s", r)
	}
}

// probeAccelDiffs lists the report keys allowed to differ between KVM and
// MSHV, and why: they come from the hypervisor itself, not from govmm.
var probeAccelDiffs = map[string]string{
	"cpuid.hypervisor":            "each hypervisor names itself in CPUID 0x40000000",
	"cpuid.raw.4":                 "hypervisor CPUID leaves 0x40000000+ belong to the hypervisor",
	"cpuid.features.kvm.":         "KVM paravirt features exist only under KVM",
	"cpuid.features.hv.":          "Hyper-V enlightenments exist only under MSHV",
	"msr.hv_":                     "Hyper-V synthetic MSRs exist only under MSHV",
	"hv.stimer.":                  "Hyper-V synthetic timers exist only under MSHV",
	"state.check.hv_stimer":       "Hyper-V synthetic timers exist only under MSHV",
	"cpuid.raw.00000001.0":        "the hypervisor bit and LAPIC features are set by each hypervisor",
	"cpuid.features.1.ecx":        "the hypervisor offers different leaf 1 ECX bits (e.g. tsc_deadline, x2apic)",
	"lapic.version":               "each hypervisor's LAPIC reports its own version and directed-EOI bit",
	"cpuid.raw.00000006.0":        "thermal/power leaf (ARAT) is filtered differently",
	"cpuid.features.6.eax":        "thermal/power leaf (ARAT) is filtered differently",
	"cpuid.raw.80000007.0":        "invariant TSC is reported by the hypervisor",
	"cpuid.features.80000007.edx": "invariant TSC is reported by the hypervisor",
	"timer.tsc_hz_cpuid":          "the TSC frequency leaf is hypervisor-specific",
	"timer.tsc_hz_source":         "the TSC frequency leaf is hypervisor-specific",
	"xsave.xcr0":                  "XGETBV at CPL3 shows the XCR0 the hypervisor runs user mode with",
	"xsave.header.xstate_bv":      "which components are in their init state after hypervisor exits",
	"msr.misc_enable":             "IA32_MISC_ENABLE defaults are the hypervisor's",
	"cpuid.features.d.1.eax":      "XSAVE extensions offered differ (XSAVES on MSHV)",
	"cpuid.raw.0000000d.1":        "XSAVE extensions offered differ (XSAVES on MSHV)",
	"cpuid.raw.00000007.0":        "leaf 7 features are filtered by each hypervisor",
	"cpuid.features.7.":           "leaf 7 features are filtered by each hypervisor",
	"cpuid.features.80000001.":    "extended features are filtered by each hypervisor",
	"cpuid.raw.80000001.0":        "extended features are filtered by each hypervisor",
	"cpuid.features.1.edx":        "leaf 1 EDX features are filtered by each hypervisor",
	"cpuid.raw.00000000.0":        "max basic leaf is the hypervisor's",
	"cpuid.raw.80000000.0":        "max extended leaf is the hypervisor's",
	"cpuid.raw.80000008.0":        "address sizes and extended leaf 8 are the hypervisor's",
	"cpuid.raw.0000000d.0":        "XSAVE sizes depend on the features offered",
	"cpuid.raw.00000015.0":        "TSC/crystal leaf is hypervisor-specific",
	"cpuid.raw.00000016.0":        "frequency leaf is hypervisor-specific",
	"cpuid.leaf1":                 "TSC/frequency leaves 0x15/0x16 are hypervisor-specific",
	"xsave.components":            "XSAVE components depend on the features offered",
	"xsave.comp.":                 "XSAVE components depend on the features offered",
	"xsave.size_max":              "XSAVE sizes depend on the features offered",
	"xsave.saved_mask":            "XSAVE components depend on the features offered",
	"xsave.xcr0_set":              "XSAVE components depend on the features offered",
	"msr.tsc_aux":                 "TSC_AUX exists only where RDTSCP/RDPID is offered",
	"cpu.brand":                   "the brand string leaves are the hypervisor's",
}

// TestProbeReport runs report mode on every accelerator, checks the facts a
// 2-CPU 256 MiB govmm machine shows, and compares the accelerators.
func TestProbeReport(t *testing.T) {
	reports := map[string]map[string]string{}
	var order []string
	for _, flags := range accels(t) {
		name := accelName(flags)
		t.Run(name, func(t *testing.T) {
			m := probeReport(t, flags)
			checkProbeFacts(t, name, m)
			reports[name] = m
			order = append(order, name)
		})
	}
	if len(order) < 2 {
		return
	}
	base := order[0]
	for _, other := range order[1:] {
		explained := probeAccelDiffs
		if !strings.HasPrefix(other, "mshv") {
			explained = nil
		}
		if bad := probeDiff(t, base, reports[base], other, reports[other], explained); len(bad) > 0 {
			t.Errorf("%s and %s disagree beyond the listed differences:\n%s", base, other, strings.Join(bad, "\n"))
		}
	}
}

// TestProbeReportRepeat: probe.wait/probe.repeat (used around snapshots)
// print several reports whose guest-set state is unchanged while time runs.
func TestProbeReportRepeat(t *testing.T) {
	flags := accels(t)[0]
	args := append(append([]string{"run"}, flags...), "--cpus=1",
		"--cmdline=probe.mode=report probe.wait=300 probe.repeat=2 probe.seed=7")
	r := govmm(t, args...)
	if r.Code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	out := strings.ReplaceAll(r.Stdout, "\r", "")
	first := parseProbeReport(t, out)
	second := parseProbeReport(t, out[strings.Index(out, probeEnd)+len(probeEnd):])
	if first["probe.seed"] != "7" || first["fpu.xmm00"] == "f29f6269d20168c941167fbece64eae2" {
		t.Errorf("probe.seed=7 not applied: seed=%s xmm00=%s", first["probe.seed"], first["fpu.xmm00"])
	}
	for _, k := range []string{"timer.ticks"} {
		if first[k] == second[k] {
			t.Errorf("%s did not advance between reports (%s)", k, first[k])
		}
	}
	if bad := probeDiff(t, "first", first, "second", second, nil); len(bad) > 0 {
		t.Errorf("guest state changed between two reports of one run:\n%s", strings.Join(bad, "\n"))
	}
	for k, v := range second {
		if strings.HasPrefix(k, "state.check.") && v != "ok" {
			t.Errorf("second report: %s=%s", k, v)
		}
	}
}

// probeQEMUDiffs: keys that differ between govmm and QEMU (-cpu host, its
// SeaBIOS and ACPI tables, in-kernel irqchip) for a reason that is not a
// govmm bug.
var probeQEMUDiffs = map[string]string{
	"cpuid.":              "CPU model: QEMU's -cpu host and govmm's host model filter CPUID differently",
	"cpu.brand":           "CPU model: QEMU fills the brand string leaves, govmm passes KVM's",
	"timer.tsc_hz_cpuid":  "CPU model: TSC frequency leaves",
	"timer.tsc_hz_source": "CPU model: TSC frequency leaves",
	"xsave.components":    "CPU model: XSAVE components offered",
	"xsave.comp.":         "CPU model: XSAVE components offered",
	"xsave.size_max":      "CPU model: XSAVE components offered",
	"xsave.saved_mask":    "CPU model: XSAVE components offered",
	"xsave.xcr0_set":      "CPU model: XSAVE components offered",
	"msr.tsc_aux":         "CPU model: TSC_AUX needs RDTSCP/RDPID in CPUID",
	"acpi.oem":            "firmware: SeaBIOS's ACPI tables vs govmm's",
	"acpi.revision":       "firmware: SeaBIOS publishes an ACPI 1.0 RSDP",
	"acpi.isos":           "firmware: QEMU's PIIX tables also override the PCI link IRQs 5, 10, 11",
	"boot.mem_":           "firmware: SeaBIOS reserves memory at the top of RAM and the BIOS area",
	"boot.mmap":           "firmware: SeaBIOS's e820 map has more reserved entries",
	"msr.misc_enable":     "firmware: QEMU sets IA32_MISC_ENABLE to fast strings (bit 0) as a BIOS would; govmm keeps the accelerator's reset value (KVM: BTS and PEBS unavailable, bits 11 and 12)",
	"lapic.version":       "irqchip: KVM offers directed EOI (bit 24) only with a userspace IOAPIC (govmm's split irqchip), not with QEMU's in-kernel one",
	"govmm.cpu":           "govmm tells its built-in probe the CPU model on its command line; QEMU's -kernel gets the command line as given",
	"boot.cmdline":        "govmm tells its built-in probe the CPU model on its command line; QEMU's -kernel gets the command line as given",
}

// TestProbeQEMU boots the same probe image under QEMU (-accel kvm) and
// compares its report with govmm's on KVM.
func TestProbeQEMU(t *testing.T) {
	kvmtest.Need(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatalf("qemu-system-x86_64 not found (apt-get install qemu-system-x86): %v", err)
		}
		t.Skip("qemu-system-x86_64 not installed")
	}
	kernel := guestPath(t, "probe.elf")
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "kvm", "-cpu", "host", "-smp", "2", "-m", "256",
		"-kernel", kernel, "-append", "probe.mode=report", "-serial", "stdio", "-display", "none",
		"-monitor", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("qemu timed out after %v\n%s", runTimeout, out)
	}
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += "\n" + string(ee.Stderr)
		}
		t.Fatalf("qemu: %s\n%s", msg, out)
	}
	q := parseProbeReport(t, string(out))
	checkProbeFacts(t, "qemu", q)
	g := probeReport(t, []string{"--accel=kvm"})
	if bad := probeDiff(t, "govmm", g, "qemu", q, probeQEMUDiffs); len(bad) > 0 {
		t.Errorf("govmm and QEMU disagree beyond the differences explained by CPU model and firmware:\n%s",
			strings.Join(bad, "\n"))
	}
}

// tmuxSession runs govmm in a detached 80x24 tmux session on a private
// server socket and returns helpers to drive it.
type tmuxSession struct {
	t        *testing.T
	sock     string
	exitFile string
}

func (s *tmuxSession) tmux(args ...string) string {
	s.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", s.sock}, args...)...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (s *tmuxSession) screen() string { return s.tmux("capture-pane", "-p", "-t", "probe") }

// waitScreen polls the pane until every string in want is on it.
func (s *tmuxSession) waitScreen(what string, want ...string) string {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	var scr string
	for time.Now().Before(deadline) {
		scr = s.screen()
		ok := true
		for _, w := range want {
			if !strings.Contains(scr, w) {
				ok = false
				break
			}
		}
		if ok {
			return scr
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("%s: screen never showed %q; last screen:\n%s", what, want, scr)
	return ""
}

// TestProbeTUI drives the interactive TUI as a person would: every tab by
// its key, an MSR typed in hex, then q; govmm must exit 0.
func TestProbeTUI(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatalf("tmux not found (apt-get install tmux): %v", err)
		}
		t.Skip("tmux not installed")
	}
	for _, flags := range accels(t) {
		t.Run(accelName(flags), func(t *testing.T) {
			dir := t.TempDir()
			s := &tmuxSession{t: t, sock: filepath.Join(dir, "tmux.sock"), exitFile: filepath.Join(dir, "exit")}
			args := append(append([]string{binary, "run"}, flags...), "--cpus=2", "--cmdline=probe.mode=tui")
			script := `"$@"; echo $? > "$GOVMM_EXIT_FILE"; sleep 600`
			s.tmux(append([]string{"new-session", "-d", "-s", "probe", "-x", "80", "-y", "24",
				"-e", "GOVMM_EXIT_FILE=" + s.exitFile, "sh", "-c", script, "sh"}, args...)...)
			defer exec.Command("tmux", "-S", s.sock, "kill-server").Run()

			s.waitScreen("CPUID tab (start)", "govmm probe", "[c] CPUID", "Vendor ", "1.edx", "CPUID tab",
				"Model  host (govmm --cpu)")
			keys := func(k ...string) { s.tmux(append([]string{"send-keys", "-t", "probe"}, k...)...) }
			text := func(k string) { s.tmux("send-keys", "-t", "probe", "-l", k) }

			keys("f")
			s.waitScreen("FPU tab", "FPU tab", "FCW 0x0e7f", "MXCSR 0xff80", "XMM15",
				"Check: x87/MXCSR ok, XMM ok")
			keys("x")
			s.waitScreen("XSAVE tab", "XSAVE tab", "XCR0 0x", "component", "SSE", "XSTATE_BV")
			keys("t")
			scr := s.waitScreen("Timer tab", "Timer tab", "TSC frequency:", "LAPIC timer:", "Target 100 Hz",
				"LVT timer", "0x832", "Initial count", "Current count", "Divide config", "divide by 16",
				"Timer config check:   ok", "Uptime")
			uptime := func(scr string) string {
				i := strings.Index(scr, "Uptime ")
				if i < 0 {
					return ""
				}
				return strings.Fields(scr[i+len("Uptime "):])[0]
			}
			first := uptime(scr)
			deadline := time.Now().Add(30 * time.Second)
			for uptime(s.screen()) == first && time.Now().Before(deadline) {
				time.Sleep(200 * time.Millisecond)
			}
			if uptime(s.screen()) == first {
				t.Errorf("Timer tab is not live: uptime stuck at %s", first)
			}
			keys("m")
			s.waitScreen("MSR tab", "MSR tab", "APIC_BASE", "EFER", "PAT", "MISC_ENABLE",
				"(values chosen at boot: ok)", "Read MSR (hex, Enter)")
			text("0x1b")
			keys("Enter")
			s.waitScreen("MSR 0x1b read", "rdmsr 0x1b = 0x00000000fee00")
			text("0x12345")
			keys("Enter")
			s.waitScreen("MSR 0x12345 read", "rdmsr 0x12345: #GP")
			keys("c")
			s.waitScreen("CPUID tab", "CPUID tab", "Vendor ", "Hypervisor")
			keys("q")
			deadline = time.Now().Add(time.Minute)
			var code []byte
			for time.Now().Before(deadline) {
				if b, err := os.ReadFile(s.exitFile); err == nil && len(b) > 0 {
					code = b
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if code == nil {
				t.Fatalf("govmm did not exit after q; screen:\n%s", s.screen())
			}
			if strings.TrimSpace(string(code)) != "0" {
				t.Fatalf("govmm exit status %s after q, want 0; screen:\n%s", code, s.screen())
			}
			s.waitScreen("after quit", "probe: quit, powering off")
		})
	}
}

// TestLibSelftest runs guests/lib's own test guest (printf formatting,
// cmdline parsing, CPL3 round trips and nesting, #GP-safe MSRs, exception
// hooks, SMP start, a double fault reported from its own stack) on every
// accelerator.
func TestLibSelftest(t *testing.T) {
	kernel := guestPath(t, "libtest.elf")
	for _, flags := range accels(t) {
		t.Run(accelName(flags), func(t *testing.T) {
			args := append(append([]string{"run"}, flags...), "--cpus=3", "--kernel="+kernel)
			r := govmm(t, args...)
			if r.Code != 0 || !strings.Contains(r.Stdout, "libtest: 3 CPUs,") ||
				!strings.Contains(r.Stdout, " 0 failed") || strings.Contains(r.Stdout, "FAIL") {
				t.Fatalf("want all checks passed on 3 CPUs and exit 0\n%s", r)
			}
			for _, ap := range []string{"AP 1 (APIC ID 1) up", "AP 2 (APIC ID 2) up", "printf at CPL3 (ok)"} {
				if !strings.Contains(r.Stdout, ap) {
					t.Errorf("output lacks %q\n%s", ap, r)
				}
			}
		})
	}
	// A fault on an unusable stack faults again while it is delivered: a
	// #DF, which runs on its own stack (IST) and is reported with where it
	// happened, where a triple fault would leave nothing to read.
	for _, flags := range accels(t) {
		t.Run(accelName(flags)+"/double-fault", func(t *testing.T) {
			r := govmm(t, append(append([]string{"run"}, flags...), "--kernel="+kernel, "--cmdline=libtest.df")...)
			if want := (0x40+8)<<1 | 1; r.Code != want || !strings.Contains(r.Stdout, "EXCEPTION 8 (#DF)") ||
				strings.Contains(r.Stderr, "triple fault") {
				t.Fatalf("want the #DF reported (EXCEPTION 8) and exit status %d\n%s", want, r)
			}
		})
	}
}

// TestProbeSnapshot takes a snapshot of a 2-CPU probe in report mode while
// it waits between two reports, restores it on the same accelerator, and
// requires the restored VM's report to equal the source's second report:
// the guest-set state (counter, x87/XMM, MSRs, LAPIC timer) and the tick
// count must survive, and every state check must stay ok.
func TestProbeSnapshot(t *testing.T) {
	for _, a := range accels(t) {
		t.Run(accelName(a), func(t *testing.T) { probeSnapshotRoundTrip(t, a, a) })
	}
}

// TestProbeSnapshotCrossAccel: the same, restoring a KVM snapshot on MSHV
// and an MSHV snapshot on KVM (DESIGN.md: state is accelerator-neutral).
func TestProbeSnapshotCrossAccel(t *testing.T) {
	all := accels(t)
	for _, src := range all {
		for _, dst := range all {
			if accelName(src) == accelName(dst) {
				continue
			}
			t.Run(accelName(src)+"-to-"+accelName(dst), func(t *testing.T) { probeSnapshotRoundTrip(t, src, dst) })
		}
	}
}

// probeTimeAfterRestore checks that time goes on across a snapshot: the
// periodic LAPIC timer keeps counting from where it was (ticks never go
// back) and keeps firing at its rate. The snapshot is taken just after the
// first report, while the guest waits probe.wait=2000 ms, counted in
// ticks of its 100 Hz LAPIC timer, before its second report; so the
// restored guest needs about 2 s of ticks to finish. Were the timer lost,
// the restore would hang; were it running at a different rate, that wait
// would be far shorter or longer.
func probeTimeAfterRestore(t *testing.T, first, source, restored map[string]string, wall time.Duration) {
	t.Helper()
	ticks := func(r map[string]string, which string) int {
		var n int
		if _, err := fmt.Sscan(r["timer.ticks"], &n); err != nil {
			t.Fatalf("%s report: timer.ticks=%q", which, r["timer.ticks"])
		}
		return n
	}
	t0, ts, tr := ticks(first, "first"), ticks(source, "source"), ticks(restored, "restored")
	if tr < t0+200 {
		t.Errorf("timer ticks after restore: %d, want at least %d (first report %d + the 2 s wait at 100 Hz): the tick count went back or stalled", tr, t0+200, t0)
	}
	if d := tr - ts; d < -20 || d > 20 {
		t.Errorf("restored guest reported at tick %d, the source at %d: the wait ended at a different count", tr, ts)
	}
	if wall < 1500*time.Millisecond || wall > 10*time.Second {
		t.Errorf("restored guest took %v to finish a 2 s wait of LAPIC timer ticks: the timer does not fire at its rate", wall)
	}
	t.Logf("ticks: first report %d, source %d, restored %d; restored run took %v", t0, ts, tr, wall.Round(time.Millisecond))
}

func probeSnapshotRoundTrip(t *testing.T, src, dst []string) {
	t.Helper()
	dir := t.TempDir()
	sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	args := append(append([]string{"run"}, src...), "--cpus=2", "--memory=256M", "--api-socket="+sock,
		"--cmdline=probe.mode=report probe.wait=2000 probe.repeat=2 probe.seed=3")
	cmd := exec.CommandContext(ctx, binary, args...)
	var stderr, out virtiotest.SyncBuffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	watch := newStallWatch()
	watch.start(cmd.Process.Pid, &out, &stderr, cancel)
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		out.Write([]byte(sc.Text() + "\n"))
		if strings.Contains(sc.Text(), probeEnd) {
			break
		}
	}
	// The guest now waits 2 s before its second report.
	r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap)
	for sc.Scan() {
		out.Write([]byte(sc.Text() + "\n"))
	}
	werr := cmd.Wait()
	if d := watch.end(); d != "" {
		t.Fatalf("source VM stalled: the nested substrate's failure holds the guest, found early:\n--- %s\n--- its output:\n%s\n%s", d, out.String(), stderr.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("source VM timed out\n%s\n%s", out.String(), stderr.String())
	}
	if r.Code != 0 {
		t.Fatalf("govmm snapshot failed\n%s\n--- source VM (%v):\n%s\n%s", r, werr, out.String(), stderr.String())
	}
	if werr != nil {
		t.Fatalf("source VM: %v\n%s\n%s", werr, out.String(), stderr.String())
	}
	srcOut := strings.ReplaceAll(out.String(), "\r", "")
	second := srcOut[strings.Index(srcOut, probeEnd)+len(probeEnd):]
	want := parseProbeReport(t, second)
	first := parseProbeReport(t, srcOut[:strings.Index(srcOut, probeEnd)+len(probeEnd)])

	rargs := append(append([]string{"restore"}, dst...), "--snapshot="+snap, "--cpus=2", "--memory=256M")
	restoreStart := time.Now()
	rr := govmm(t, rargs...)
	restoreWall := time.Since(restoreStart)
	if rr.Code != 0 {
		t.Fatalf("restore: want exit 0\n%s", rr)
	}
	probeTimeAfterRestore(t, first, want, parseProbeReport(t, rr.Stdout), restoreWall)
	if n := strings.Count(rr.Stdout, probeBegin); n != 1 {
		t.Fatalf("restored VM printed %d reports, want 1 (the snapshot must fall between the two)\n%s", n, rr)
	}
	got := parseProbeReport(t, rr.Stdout)
	for k, v := range got {
		if strings.HasPrefix(k, "state.check.") && v != "ok" {
			t.Errorf("after restore: %s=%s", k, v)
		}
	}
	var explained map[string]string
	if accelName(src) != accelName(dst) {
		explained = probeAccelDiffs
	}
	if bad := probeDiff(t, "source", want, "restored", got, explained); len(bad) > 0 {
		t.Errorf("restored report differs from the source's:\n%s", strings.Join(bad, "\n"))
	}
}
