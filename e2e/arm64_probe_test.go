package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/guests"
)

// arm64ProbeCore are /proc/cpuinfo feature names that KVM/arm64 passes
// through to a guest unchanged (no vCPU feature or capability gates them,
// unlike sve, paca/pacg, mte or sme): the probe must see each exactly when
// L1's kernel lists it.
var arm64ProbeCore = []string{"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
	"fphp", "asimdhp", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4",
	"asimddp", "sha512", "asimdfhm", "uscat", "ilrcpc", "flagm", "sb", "dcpodp", "i8mm", "bf16"}

// TestARM64Probe boots the arm64 probe (guests/bin/arm64probe.img) in
// report mode with govmm's arm64 build on KVM/arm64 inside the aarch64
// L1, with 2 vCPUs and 256 MiB and again with 4 vCPUs and 512 MiB, and
// checks its report against what govmm was told and what L1 itself
// sees: the CPU count and every secondary started by PSCI CPU_ON (each
// reporting its own MPIDR, then off per AFFINITY_INFO), the memory size,
// GICv3 with one redistributor per vCPU, PSCI 1.x over HVC, KVM's SMCCC
// hypervisor UID, the counter frequency against L1's arch_timer line,
// MIDR and the ID-register features against L1's /proc/cpuinfo, the
// virtual timer's interrupt delivered through the GIC five times, and a
// 3 s wait by the guest's counter against L1's clock. The 4-vCPU run
// boots govmm's built-in guest (no --kernel), which must be the probe.
func TestARM64Probe(t *testing.T) {
	arm64L1(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "govmm-arm64")
	buildARM64(t, bin, "build", "./cmd/govmm")
	img, err := guests.Image("arm64probe")
	if err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(dir, "arm64probe.img")
	if err := os.WriteFile(probe, img, 0o644); err != nil {
		t.Fatal(err)
	}

	// Each line the guest prints is stamped with L1's uptime, so the test
	// can hold the guest's counter-timed wait against L1's clock. kernel
	// "" boots govmm's built-in guest, which is this probe.
	run := func(tag, kernel, cpus, mem, cmdline string) string {
		if kernel != "" {
			kernel = ` --kernel ` + kernel
		}
		return `{ timeout 300 ` + bin + ` run` + kernel + ` --cpus ` + cpus + ` --memory ` + mem +
			` --cmdline '` + cmdline + `' 2>&1; echo "govmm exit=$?"; } | while IFS= read -r l; do read up rest </proc/uptime; echo "` + tag + `: $up $l"; done
`
	}
	script := `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
echo "l1: features $(grep -m1 '^Features' /proc/cpuinfo | cut -d: -f2)"
echo "l1: implementer $(grep -m1 '^CPU implementer' /proc/cpuinfo | cut -d: -f2)"
echo "l1: part $(grep -m1 '^CPU part' /proc/cpuinfo | cut -d: -f2)"
echo "l1: arch_timer $(dmesg | grep -m1 'arch_timer: .*running at')"
` + run("p2", probe, "2", "256M", "probe.mode=report probe.mark_ms=3000") + run("p4", "", "4", "512M", "probe.mode=report")
	o := runARM64L1(t, script, 15*time.Minute, bin, probe)
	if !strings.Contains(o, "l1: aarch64, /dev/kvm: yes") {
		t.Fatalf("L1 has no /dev/kvm")
	}

	p2, times := arm64ProbeRun(t, o, "p2")
	p4, _ := arm64ProbeRun(t, o, "p4")
	for _, c := range []struct {
		r         map[string]string
		cpus, mem int
		name      string
	}{{p2, 2, 256 << 20, "p2"}, {p4, 4, 512 << 20, "p4"}} {
		want := map[string]string{
			"boot.el":                 "1",
			"cpus.dtb":                fmt.Sprint(c.cpus),
			"cpus.started":            fmt.Sprint(c.cpus),
			"cpus.enable_method":      "psci",
			"mem.bytes":               fmt.Sprint(c.mem),
			"mem.regions":             "1",
			"mem.check":               "ok",
			"gic.compatible":          "arm,gic-v3",
			"gic.version":             "3",
			"gic.redists":             fmt.Sprint(c.cpus),
			"gic.its":                 "1",
			"psci.method":             "hvc",
			"psci.feature.cpu_on":     "0",
			"psci.feature.cpu_off":    "0",
			"psci.feature.system_off": "0",
			"hypervisor":              "kvm",
			"timer.check.counter":     "ok",
			"timer.check.irq":         "ok",
			"timer.irqs":              "5",
			"timer.virt_intid":        "27",
			"serial.path":             "/pl011@9000000",
		}
		for k, v := range want {
			if c.r[k] != v {
				t.Errorf("%s: %s=%q, want %q", c.name, k, c.r[k], v)
			}
		}
		if v := c.r["psci.version"]; !strings.HasPrefix(v, "1.") {
			t.Errorf("%s: psci.version=%q, want 1.x on KVM", c.name, v)
		}
		mpidrs := map[string]bool{}
		for i := 0; i < c.cpus; i++ {
			v := c.r[fmt.Sprintf("cpus.%02d", i)]
			m := regexp.MustCompile(`^mpidr=(0x[0-9a-f]+) el=1 (boot|on=0 off=1)$`).FindStringSubmatch(v)
			if m == nil {
				t.Errorf("%s: cpus.%02d=%q: want its MPIDR at EL1, booted or started by CPU_ON and off after", c.name, i, v)
				continue
			}
			if mpidrs[m[1]] {
				t.Errorf("%s: two CPUs report MPIDR %s", c.name, m[1])
			}
			mpidrs[m[1]] = true
		}
	}

	// The counter: the frequency L1's kernel found (KVM passes CNTFRQ_EL0
	// through), and a 3 s wait by the guest's counter against L1's clock.
	freq, err := strconv.ParseUint(p2["timer.cntfrq"], 10, 64)
	if err != nil || freq == 0 {
		t.Fatalf("timer.cntfrq=%q", p2["timer.cntfrq"])
	}
	if m := regexp.MustCompile(`running at ([0-9]+)\.([0-9]+)MHz`).FindStringSubmatch(o); m != nil {
		mhz, _ := strconv.ParseFloat(m[1]+"."+m[2], 64)
		if d := float64(freq) - mhz*1e6; d > 1e4 || d < -1e4 {
			t.Errorf("guest CNTFRQ %d Hz, L1's arch_timer runs at %s.%s MHz", freq, m[1], m[2])
		}
	} else {
		t.Errorf("no arch_timer frequency in L1's dmesg; want it to compare with CNTFRQ %d", freq)
	}
	if freq != 62_500_000 && freq != 1_000_000_000 && freq != 24_000_000 && freq != 25_000_000 && freq != 100_000_000 {
		t.Logf("CNTFRQ %d Hz is none of the usual values", freq)
	}
	if b, e := times["mark begin"], times["mark end"]; b > 0 && e > b {
		ratio := (e - b) / 3.0
		t.Logf("the guest's 3 s counter wait took %.2f s of L1's clock (ratio %.2f)", e-b, ratio)
		// A counter at a rate other than CNTFRQ would be off by a large
		// factor; this is a correctness bound, not a performance one.
		if ratio < 0.5 || ratio > 2 {
			t.Errorf("the guest's counter-timed 3 s took %.2f s of L1's clock", e-b)
		}
	} else {
		t.Errorf("no mark lines in the 2-vCPU run")
	}
	t.Logf("timer IRQ latency %s-%s ns (2 vCPUs), CNTFRQ %d", p2["timer.irq_latency_ns_min"], p2["timer.irq_latency_ns_max"], freq)

	// MIDR and the features: KVM shows the guest L1's own CPU.
	l1 := func(key string) string { return guestValue(o, "l1", key) }
	if impl, _ := strconv.ParseUint(strings.TrimSpace(l1("implementer")), 0, 64); !strings.HasPrefix(p2["cpu.implementer"], fmt.Sprintf("0x%x ", impl)) {
		t.Errorf("guest implementer %q, L1 %q", p2["cpu.implementer"], l1("implementer"))
	}
	if part, _ := strconv.ParseUint(strings.TrimSpace(l1("part")), 0, 64); p2["cpu.part"] != fmt.Sprintf("0x%x", part) {
		t.Errorf("guest part %q, L1 %q", p2["cpu.part"], l1("part"))
	}
	hostF := map[string]bool{}
	for _, f := range strings.Fields(l1("features")) {
		hostF[f] = true
	}
	guestF := map[string]bool{}
	for _, f := range strings.Fields(p2["cpu.features"]) {
		guestF[f] = true
	}
	if len(hostF) == 0 || !guestF["fp"] || !guestF["asimd"] {
		t.Errorf("features: L1 %q, guest %q", l1("features"), p2["cpu.features"])
	}
	for _, f := range arm64ProbeCore {
		if hostF[f] != guestF[f] {
			t.Errorf("feature %s: L1 %v, guest %v", f, hostF[f], guestF[f])
		}
	}
	var onlyL1, onlyGuest []string
	for f := range hostF {
		if !guestF[f] {
			onlyL1 = append(onlyL1, f)
		}
	}
	for f := range guestF {
		if !hostF[f] {
			onlyGuest = append(onlyGuest, f)
		}
	}
	sort.Strings(onlyL1)
	sort.Strings(onlyGuest)
	t.Logf("guest features: %s; only in L1's list: %v; only the guest's: %v", p2["cpu.features"], onlyL1, onlyGuest)
}

// arm64ProbeRun takes one probe run's lines (tag: uptime line) from L1's
// output: its parsed report, and L1's uptime at each "arm64probe: mark"
// line. It fails the test unless govmm exited 0 after the report.
func arm64ProbeRun(t *testing.T, o, tag string) (map[string]string, map[string]float64) {
	t.Helper()
	var lines []string
	times := map[string]float64{}
	exit := ""
	for _, l := range strings.Split(strings.ReplaceAll(o, "\r", ""), "\n") {
		rest, ok := strings.CutPrefix(l, tag+": ")
		if !ok {
			continue
		}
		up, line, _ := strings.Cut(rest, " ")
		lines = append(lines, line)
		if m := regexp.MustCompile(`^arm64probe: (mark (begin|end))`).FindStringSubmatch(line); m != nil {
			times[m[1]], _ = strconv.ParseFloat(up, 64)
		}
		if strings.HasPrefix(line, "govmm exit=") {
			exit = line
		}
	}
	if exit != "govmm exit=0" {
		t.Errorf("%s: %q, want govmm exit=0 (PSCI SYSTEM_OFF after the report)", tag, exit)
	}
	return parseProbeReport(t, strings.Join(lines, "\n")), times
}
