package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
	"govmm/internal/linuxguest"
)

// TestLinuxSmoke boots Debian's cloud kernel (fetched by .ci/run into
// GOVMM_LINUX_KERNEL) until the serial console shows "Linux version". On
// the software kvm_pvm backend guest CPL0 code is emulated, so the
// kernel's own decompressor takes minutes and the kernel stops soon after
// its first lines (see shared/reference/host-kvm.md): there, reaching the
// banner proves the loader, the entry state and the serial port. On
// hardware semantics TestLinuxBootLog goes all the way to init.
func TestLinuxSmoke(t *testing.T) {
	if !hostMSHV() {
		kvmtest.Need(t)
	}
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal("GOVMM_LINUX_KERNEL is not set (.ci/run downloads the kernel and sets it)")
		}
		t.Skip("GOVMM_LINUX_KERNEL not set")
	}
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { linuxBanner(t, acc, kernel) })
	}
}

func linuxBanner(t *testing.T, acc []string, kernel string) {
	{
		out := filepath.Join(t.TempDir(), "serial.out")
		args := append([]string{"run"}, acc...)
		args = append(args, "--kernel", kernel, "--cpu", "host,-cx16", "--memory", "512M",
			"--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200", "--serial", "file:"+out)
		cmd := exec.Command(binary, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.After(12 * time.Minute)
		tick := time.NewTicker(2 * time.Second)
		start := time.Now()
		var w quietWatch
	wait:
		for {
			select {
			case err := <-exited:
				b, _ := os.ReadFile(out)
				if i := strings.Index(string(b), "Linux version"); i >= 0 {
					// The banner is what this test asks for; what ended
					// the guest after it is TestLinuxBootLog's business.
					t.Logf("Linux printed its banner; govmm then exited (%v) after %v", err, time.Since(start).Round(time.Second))
					return
				}
				t.Fatalf("govmm exited (%v) before Linux printed its banner:\n%s\n--- govmm's stderr:\n%s", err, b, stderr.String())
			case <-deadline:
				cmd.Process.Kill()
				b, _ := os.ReadFile(out)
				t.Fatalf("no \"Linux version\" within 12 minutes; serial output:\n%s", b)
			case <-tick.C:
				b, _ := os.ReadFile(out)
				if w.due(len(b), string(b), 2*time.Second) {
					if diag := linuxguest.SubstrateStall(cmd.Process.Pid); diag != "" {
						cmd.Process.Kill()
						t.Fatalf("stalled before Linux printed its banner: the nested substrate's failure holds the guest, found early:\n--- %s\n--- serial output:\n%s", diag, b)
					}
				}
				if i := strings.Index(string(b), "Linux version"); i >= 0 {
					line := string(b[i:])
					if j := strings.IndexByte(line, '\n'); j >= 0 {
						line = line[:j]
					}
					t.Logf("after %v: %s", time.Since(start).Round(time.Second), line)
					break wait
				}
			}
		}
		cmd.Process.Kill()
		<-exited
	}
}

// linuxGuest returns Debian's cloud kernel and the busybox initramfs of
// internal/linuxguest, for the tests that need hardware virtualization
// semantics (nested KVM where the machine's KVM is kvm_pvm).
func linuxGuest(t *testing.T) (kernel, initrd string) {
	t.Helper()
	needLinux(t)
	kernel = os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	initrd = filepath.Join(t.TempDir(), "initrd.cpio")
	if err := linuxguest.WriteInitramfs(initrd); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

// badBootLines are kernel log lines no clean boot prints: each one names
// something govmm presents wrongly (a missing clock, a broken timer
// route, CPUID that does not add up, a PMU that is not there) or a kernel
// that hit a bug.
var badBootLines = []string{
	"tsc: Fast TSC calibration failed",
	"tsc: Unable to calibrate against PIT",
	"tsc: HPET/PMTIMER calibration failed",
	"tsc: Marking TSC unstable due to could not calculate TSC khz",
	"MP-BIOS bug",
	"XSAVE consistency problem",
	"Broken PMU hardware",
	"Failed to access perfctr msr",
	"WARNING:",
	"BUG:",
	"Call Trace",
	"Oops",
	"Kernel panic",
}

// acceptedBootDifferences are kernel warnings a govmm boot may print that
// the same kernel under QEMU -M pc on the same KVM does not, each with the
// reason it is accepted. Keys are normalized messages (see normalizeLog).
var acceptedBootDifferences = map[string]string{
	"hrtimer: interrupt took # ns":                                      "timing, not the machine: printed once when a timer interrupt ran late, which slow exits on the nested substrate cause now and then",
	"APIC calibration not consistent with PM-Timer: #ms instead of #ms": "timing, not the machine: the kernel times the LAPIC timer against the PM timer over 100 ms and warns past 1%; a slow exit of the nested substrate in that window is enough",
}

// wantClocksource is the clocksource a Linux guest must pick, by
// accelerator, and acceptedClocksource the known exceptions.
var (
	wantClocksource = map[string]string{
		"kvm":     "kvm-clock",
		"mshv":    "hyperv_clocksource_tsc_page",
		"mshvsim": "hyperv_clocksource_tsc_page",
	}
	acceptedClocksource = map[string]string{}
)

// normalizeLog makes messages from two boots comparable: numbers,
// addresses and sizes become '#'.
func normalizeLog(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	var b strings.Builder
	digit := false
	for _, r := range s {
		isNum := r >= '0' && r <= '9' || r >= 'a' && r <= 'f' && digit
		if isNum {
			if !digit {
				b.WriteByte('#')
			}
			digit = true
			continue
		}
		digit = false
		b.WriteRune(r)
	}
	return strings.TrimSpace(b.String())
}

// TestLinuxBootLog boots Linux to init on each accelerator and, as the
// baseline, under QEMU on the same KVM, all with the same kernel, initrd,
// command line and vCPU count (2; GOVMM_LINUX_CPUS=1,2,4 for more). Init
// must read its token from the command line and see every vCPU online. A govmm boot fails on any line of badBootLines,
// on any warning the QEMU boot does not print (unless accepted, with its
// reason), and on a clocksource other than the accelerator's paravirtual
// clock. On a real /dev/mshv host without KVM there is no QEMU to compare
// with: every warning fails there unless accepted.
func TestLinuxBootLog(t *testing.T) {
	kernel, initrd := linuxGuest(t)
	all := accels(t)
	withKVM := hasAccel(all, "kvm") != nil
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && withKVM {
		t.Fatal("qemu-system-x86_64 is the baseline of this test (.ci/run installs it): ", err)
	}
	boot := func(t *testing.T, b linuxguest.Boot) linuxguest.Result {
		t.Helper()
		b.Govmm, b.Kernel, b.Initrd, b.Dmesg = binary, kernel, initrd, true
		b.Token = fmt.Sprintf("log-%d", time.Now().UnixNano()%1e6)
		return bootRetryingSubstrate(t, b)
	}
	// The baselines: QEMU's default on KVM (kvmclock, in-kernel PIT) for
	// KVM, and for MSHV QEMU with Hyper-V's enlightenments instead of
	// KVM's (the reference TSC page, VP index, frequency MSRs: what the
	// Microsoft Hypervisor presents and mshvsim backs) and its userspace
	// IOAPIC and PIT, as govmm's split irqchip has them.
	type baseline struct {
		name  string
		warns map[string]bool // normalized messages of level warning or worse
		lines []string        // every message, for badBootLines
	}
	newBaseline := func(t *testing.T, cpus int, cpu, machine string) baseline {
		t.Helper()
		res := boot(t, linuxguest.Boot{QEMU: machine, QEMUCPU: cpu, CPUs: cpus})
		b := baseline{name: fmt.Sprintf("QEMU -cpu %s -M %s -smp %d", cpu, machine, cpus), warns: map[string]bool{}}
		for _, l := range res.Log {
			if l.Level <= 4 {
				b.warns[normalizeLog(l.Text)] = true
			}
			b.lines = append(b.lines, l.Text)
		}
		t.Logf("%s: clocksource %s, %d warnings", b.name, res.Clocksource, len(b.warns))
		return b
	}
	type baselineKey struct {
		hyperv bool // the accelerator presents Hyper-V's interface (MSHV), not KVM's
		cpus   int
	}
	baselines := map[baselineKey]baseline{}
	cpus := linuxCPUs(t)
	for _, acc := range all {
		for _, n := range cpus {
			name := accelName(acc)
			t.Run(fmt.Sprintf("%s/%dcpu", name, n), func(t *testing.T) {
				// The baseline boots inside the subtest, so that running
				// one subtest (a rerun in a fresh L1) boots only its own.
				key := baselineKey{hyperv: name != "kvm", cpus: n}
				base, ok := baselines[key]
				if !ok && !withKVM {
					base = baseline{name: "QEMU (no baseline: no KVM on this host)", warns: map[string]bool{}}
					t.Logf("no KVM on this host: no QEMU baseline, so every kernel warning not accepted fails")
				} else if !ok {
					if key.hyperv {
						base = newBaseline(t, n, "host,kvm=off,hv-time,hv-vpindex,hv-frequencies", "pc,kernel-irqchip=split")
					} else {
						base = newBaseline(t, n, "host", "pc")
					}
					baselines[key] = base
				}
				res := boot(t, linuxguest.Boot{Accel: acc, CPUs: n})
				for _, l := range res.Log {
					for _, bad := range badBootLines {
						if !strings.Contains(l.Text, bad) {
							continue
						}
						if slices.ContainsFunc(base.lines, func(s string) bool { return strings.Contains(s, bad) }) {
							t.Logf("kernel log: %s (%s prints it too: the substrate)", l.Text, base.name)
						} else {
							t.Errorf("kernel log: %s", l.Text)
						}
					}
					if l.Level > 4 {
						continue
					}
					n := normalizeLog(l.Text)
					if reason, ok := acceptedBootDifferences[n]; ok {
						t.Logf("accepted warning %q: %s", l.Text, reason)
					} else if !base.warns[n] {
						t.Errorf("warning %s does not print: <%d> %s", base.name, l.Level, l.Text)
					}
				}
				want := wantClocksource[name]
				if res.Clocksource != want {
					if reason, ok := acceptedClocksource[name]; ok {
						t.Logf("clocksource %s, not %s (accepted: %s)", res.Clocksource, want, reason)
					} else {
						t.Errorf("clocksource %s, want %s", res.Clocksource, want)
					}
				}
				t.Logf("init after %v: token %s, %d CPUs online (%s), clocksource %s",
					res.Wall.Round(time.Millisecond), res.Token, res.CPUs, res.Online, res.Clocksource)
			})
		}
	}
}

// bootRetryingSubstrate runs b, and once more if its console went quiet
// (see linuxguest.ErrStalled) or it triple-faulted
// (linuxguest.ErrTripleFault). On this project's nested substrate a Linux
// guest now and then stops making progress for good (QEMU's own boot with
// the same kernel, -cpu host,kvm=off, kernel-irqchip=split, does it too,
// in CI runs that logged both), or dies in a triple fault: most often
// early in its boot, right after "x86/fpu: Enabled xstate features", where
// the kernel patches its own text (the substrate's failure the README
// describes); once on mshvsim with 2 vCPUs while init printed the log.
// One retry, reported in the test log, keeps that from failing a run; a
// boot that fails twice, or fails any other way, fails the test.
func bootRetryingSubstrate(t *testing.T, b linuxguest.Boot) linuxguest.Result {
	t.Helper()
	res, err := b.Run(context.Background())
	if errors.Is(err, linuxguest.ErrStalled) || errors.Is(err, linuxguest.ErrTripleFault) {
		t.Logf("RETRY after a failed boot (the substrate; see bootRetryingSubstrate): %v", err)
		res, err = b.Run(context.Background())
	}
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// linuxCPUs is the vCPU counts TestLinuxBootLog boots with: 2, or the list
// in GOVMM_LINUX_CPUS (1,2,4; bench/linuxsoak repeats them).
func linuxCPUs(t *testing.T) []int {
	s := os.Getenv("GOVMM_LINUX_CPUS")
	if s == "" {
		return []int{2}
	}
	var cpus []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			t.Fatalf("GOVMM_LINUX_CPUS=%q: want a list such as 1,2,4", s)
		}
		cpus = append(cpus, n)
	}
	return cpus
}

// tickingLinux is a running Linux guest whose init prints a tick and a
// running checksum every second (linuxguest's govmm.ticks), ticks times
// before it powers off.
type tickingLinux struct {
	kernel, initrd string
	ticks          int
}

func newTickingLinux(t *testing.T, ticks int) tickingLinux {
	t.Helper()
	kernel, initrd := linuxGuest(t)
	return tickingLinux{kernel, initrd, ticks}
}

func tickLine(i int) string { return fmt.Sprintf("govmm-tick %d sum=%d", i, linuxguest.TickSum(i)) }

// start boots the guest with 2 vCPUs on acc with CPU model cpu and the
// control socket sock, and waits for tick n.
//
// Every model the tick tests boot offers the TSC-deadline timer (KVM and
// mshvsim both do), and the guest must see it. Booted on KVM it must run
// its LAPIC timer in that mode, so that the moves carry an armed
// IA32_TSC_DEADLINE, which the restore sets after the LAPIC (and MSHV
// holds as HV_X64_REGISTER_TSC_DEADLINE). Linux keeps the mode only where
// it knows its TSC's frequency (tsc_init clears the feature when it
// cannot calibrate, which a -kvm guest on the nested substrate cannot),
// so a -kvm guest on KVM is told it (tscArgs), as TestVirtioLiveMigration
// tells its guest. Booted on mshvsim, Linux prefers Hyper-V's synthetic
// timer ("Hyper-V clockevent") to any LAPIC timer, as on the Microsoft
// Hypervisor, and its clock events go through the SynIC.
func (g tickingLinux) start(t *testing.T, acc []string, cpu, sock string, n int) *proc {
	t.Helper()
	args := append(append([]string{"run"}, acc...), "--kernel", g.kernel, "--initrd", g.initrd, "--cpus=2",
		"--memory=512M", "--cpu", cpu, "--api-socket", sock,
		"--cmdline", fmt.Sprintf("console=ttyS0 quiet panic=-1 govmm.ticks=%d", g.ticks)+tscArgs(t, acc, cpu))
	p := bootGuest(t, args, tickLine(n), nil)
	dev := "lapic-deadline"
	if accelName(acc) != "kvm" {
		dev = "Hyper-V clockevent"
	}
	if want := linuxguest.ClockEventLine + dev + " tsc_deadline_timer=1\n"; !strings.Contains(strings.ReplaceAll(p.output(), "\r", ""), want) {
		t.Fatalf("--cpu %s on %s: want the clock-event line %q (the TSC-deadline timer offered, and on KVM used):\n%s", cpu, accelName(acc), want, p.output())
	}
	return p
}

// lastTick is the last tick in out, at least from.
func (g tickingLinux) lastTick(out string, from int) int {
	last := from
	for i := from; i <= g.ticks; i++ {
		if strings.Contains(out, tickLine(i)) {
			last = i
		}
	}
	return last
}

// finish waits for a guest that took over after tick n to tick on to
// the end, with the right checksum, and power off cleanly. before is
// what the guest printed before it moved: a move may come while the guest
// prints a tick line, so that tick n+1 begins there and ends in p's
// output ("govmm-tick 5 sum" on the source, "=201390172" on the
// destination, in a CI run of 2026-12-06).
func (g tickingLinux) finish(t *testing.T, p *proc, n int, before string) {
	t.Helper()
	t0 := time.Now()
	if n >= g.ticks {
		t.Fatalf("the guest had ticked to the end (%d) before it moved: nothing was left to check after the move (raise its tick count)", g.ticks)
	}
	p.waitFor(fmt.Sprintf("govmm-ticks-done %d sum=%d", g.ticks, linuxguest.TickSum(g.ticks)), 3*time.Minute)
	if code := p.exit(time.Minute); code != 0 {
		t.Fatalf("guest: exit %d after its ticks, want 0 (poweroff):\n%s", code, p.output())
	}
	out := p.output()
	if m := g.missing(before, out, n); len(m) > 0 {
		t.Errorf("guest skipped ticks %v:\n%s", m, out)
	}
	t.Logf("guest ticked %d more times and powered off after %v", g.ticks-n, time.Since(t0).Round(time.Millisecond))
}

// missing is the ticks after n that out, what the guest printed after
// it moved, lacks; the first of them may have begun in before.
func (g tickingLinux) missing(before, out string, n int) []int {
	var m []int
	for i := n + 1; i <= g.ticks; i++ {
		if !strings.Contains(out, tickLine(i)) && (i > n+1 || !strings.Contains(before+out, tickLine(i))) {
			m = append(m, i)
		}
	}
	return m
}

// TestTicksAcrossMove: a tick line split by the move counts (CI run of
// 2026-12-06: "govmm-tick 5 sum" on the source, "=201390172" on the
// destination), a tick the destination did not print does not.
func TestTicksAcrossMove(t *testing.T) {
	g := tickingLinux{ticks: 7}
	var src, dst strings.Builder
	for i := 1; i <= 4; i++ {
		src.WriteString(tickLine(i) + "\n")
	}
	cut := strings.Index(tickLine(5), "=")
	src.WriteString(tickLine(5)[:cut])
	dst.WriteString(tickLine(5)[cut:] + "\n")
	for i := 6; i <= 7; i++ {
		dst.WriteString(tickLine(i) + "\n")
	}
	n := g.lastTick(src.String(), 3)
	if n != 4 {
		t.Fatalf("last whole tick on the source: %d, want 4", n)
	}
	if m := g.missing(src.String(), dst.String(), n); len(m) != 0 {
		t.Fatalf("a tick split by the move: missing %v", m)
	}
	if m := g.missing("", dst.String(), n); !slices.Equal(m, []int{5}) {
		t.Fatalf("half a tick line: missing %v, want [5]", m)
	}
	if m := g.missing(src.String(), strings.Replace(dst.String(), tickLine(6), "", 1), n); !slices.Equal(m, []int{6}) {
		t.Fatalf("a tick the destination did not print: missing %v, want [6]", m)
	}
}

// TestLinuxSnapshot snapshots a running 2-vCPU Linux guest whose init
// prints a tick and a running checksum every second, and restores it on
// each accelerator: it must go on ticking from where it was, end with the
// right checksum, and power off cleanly. A guest meant to move between
// accelerators is booted with --cpu host,-kvm (kvmclock and KVM's other
// paravirtual MSRs exist only on KVM); a KVM guest using kvmclock restores
// on KVM, and restoring it elsewhere is refused with a clear error. A guest
// booted on mshvsim uses Hyper-V's reference TSC page (-kvm changes
// nothing there), and restored on KVM keeps it through KVM's Hyper-V
// emulation.
func TestLinuxSnapshot(t *testing.T) {
	const snapAt = 3
	g := newTickingLinux(t, snapAt+5)
	// snapshot boots Linux on acc, snapshots it once it printed tick
	// snapAt, and stops it there (--stop). It returns the snapshot and
	// the last tick the guest printed before it: the guest may have
	// ticked on while the snapshot was being asked for.
	type saved struct {
		dir  string
		last int
		out  string // what the guest printed before the snapshot
	}
	snapshot := func(t *testing.T, acc []string, cpu string) saved {
		dir := t.TempDir()
		sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
		p := g.start(t, acc, cpu, sock, snapAt)
		if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
			t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
		}
		p.exit(time.Minute)
		out := p.output()
		return saved{snap, g.lastTick(out, snapAt), out}
	}
	restore := func(t *testing.T, acc []string, s saved) {
		p := start(t, append(append([]string{"restore"}, acc...), "--snapshot="+s.dir, "--cpus=2", "--memory=512M")...)
		g.finish(t, p, s.last, s.out)
	}
	all := accels(t)
	for _, src := range all {
		srcName := accelName(src)
		t.Run(srcName+"-portable", func(t *testing.T) {
			snap := snapshot(t, src, "host,-kvm")
			for _, dst := range all {
				t.Run("to-"+accelName(dst), func(t *testing.T) { restore(t, dst, snap) })
			}
		})
		if srcName != "kvm" {
			continue
		}
		t.Run("kvm-kvmclock", func(t *testing.T) {
			snap := snapshot(t, src, "host")
			for _, dst := range all {
				dstName := accelName(dst)
				t.Run("to-"+dstName, func(t *testing.T) {
					if dstName == "kvm" {
						restore(t, dst, snap)
						return
					}
					r := govmm(t, append(append([]string{"restore"}, dst...), "--snapshot="+snap.dir, "--cpus=2", "--memory=512M")...)
					if r.Code == 0 || !strings.Contains(r.Stderr, "KVM's paravirtual interface") {
						t.Fatalf("restoring a kvmclock guest on %s: want a refusal naming KVM's paravirtual interface, got\n%s", dstName, r)
					}
					t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
				})
			}
		})
	}
}

// TestLinuxLiveMigration moves a running 2-vCPU Linux guest between two
// govmm processes while it ticks: across accelerators both ways (KVM to
// MSHV on --cpu x86-64-v2,-kvm, MSHV to KVM on host,-kvm), and KVM to KVM
// with kvmclock. The destination must
// tick on to the end with the right checksum and power off cleanly. The
// guest ticks on the source while its memory is copied (8-11 s on the
// nested substrate with the machine busy), so it ticks for 20 s after the
// migration starts: with 5, as the snapshot test has, a slow copy left
// the source to print the last tick, and the destination nothing to show.
func TestLinuxLiveMigration(t *testing.T) {
	const migrateAt = 3
	g := newTickingLinux(t, migrateAt+20)
	for _, m := range linuxMoves(t) {
		t.Run(accelName(m.src)+"-to-"+accelName(m.dst), func(t *testing.T) {
			dir := t.TempDir()
			sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
			s := g.start(t, m.src, m.cpu, sock, migrateAt)
			// A control socket on the destination: a stall after the move
			// shows the guest's vCPUs (proc.vcpus).
			d := start(t, append(append([]string{"migrate", "receive"}, m.dst...), "--listen", "unix:"+mig,
				"--api-socket", filepath.Join(dir, "dst.sock"))...)
			waitPath(t, mig)
			migrateLive(t, sock, mig, s, d)
			// The source may have ticked past migrateAt while memory was
			// copied; the destination goes on from the source's last tick.
			out := s.output()
			g.finish(t, d, g.lastTick(out, migrateAt), out)
		})
	}
}
