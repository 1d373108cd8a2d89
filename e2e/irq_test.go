package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/api"
	"govmm/guests"
	"govmm/internal/linuxguest"
	"govmm/internal/nested"
	"govmm/virtio/virtiotest"
)

// The irq guest's exit statuses: IRQ_OK (0x10; IRQ_FAIL is 0x11) through
// the debug-exit port.
const (
	irqOK = 0x10<<1 | 1
)

// runIRQ runs the irq guest with irqtest=scenario (plus extra cmdline
// words) on every accelerator and hands each result to check.
func runIRQ(t *testing.T, scenario, extra string, check func(t *testing.T, r Result)) {
	guest := guestPath(t, "irq")
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			args := append([]string{"run", "--test-devices"}, acc...)
			args = append(args, "--kernel", guest, "--cmdline", strings.TrimSpace("irqtest="+scenario+" "+extra),
				"--serial", "stdio", "--cpus", "1")
			r := govmm(t, args...)
			if r.Code != irqOK {
				t.Fatalf("irq guest %s: want exit %d (IRQ_OK)\n%s", scenario, irqOK, r)
			}
			check(t, r)
		})
	}
}

// fields parses "prefix: k=v k=v ..." from the first line of out that
// starts with prefix (and, if match is set, contains it).
func fields(t *testing.T, out, prefix, match string) map[string]string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix+":") || !strings.Contains(line, match) {
			continue
		}
		return keyValues(line)
	}
	t.Fatalf("no %q line (containing %q) in the guest output:\n%s", prefix, match, out)
	return nil
}

// keyValue is one k=v or k="v w" of a guest's report line or a log record.
var keyValue = regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`)

// keyValues returns line's k=v fields, quotes taken off the values.
func keyValues(line string) map[string]string {
	m := map[string]string{}
	for _, kv := range keyValue.FindAllStringSubmatch(line, -1) {
		m[kv[1]] = strings.Trim(kv[2], `"`)
	}
	return m
}

func num(t *testing.T, m map[string]string, k string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(m[k], 0, 64)
	if err != nil {
		t.Fatalf("field %s=%q: %v", k, m[k], err)
	}
	return v
}

// within2pct checks the interrupt count against the count the PIT's
// programmed rate gives over the PM-timer-measured interval.
func within2pct(t *testing.T, m map[string]string) {
	t.Helper()
	irqs, exp := num(t, m, "irqs")*1000, num(t, m, "expected_milli")
	if exp == 0 {
		t.Fatal("expected count is 0")
	}
	diff := int64(irqs) - int64(exp)
	if diff < 0 {
		diff = -diff
	}
	if uint64(diff)*100 > exp*2 {
		t.Fatalf("timer interrupts: counted %d, programmed rate gives %d.%03d over the PM-timer interval (off by more than 2%%)",
			irqs/1000, exp/1000, exp%1000)
	}
}

// TestIRQPIT: the guest finds the IOAPIC and the IRQ0->GSI2 override in the
// MADT, routes the PIT to a vector and counts its interrupts against the
// ACPI PM timer.
func TestIRQPIT(t *testing.T) {
	runIRQ(t, "pit", "hz=100 ms=3000", func(t *testing.T, r Result) {
		madt := fields(t, r.Stdout, "madt", "")
		if madt["ioapic"] != "0xfec00000" || madt["irq0_gsi"] != "2" {
			t.Fatalf("MADT as the guest saw it: %v", madt)
		}
		within2pct(t, fields(t, r.Stdout, "pit", "irqs="))
	})
}

// TestIRQPIC: legacy mode, the IOAPIC masked and IRQ0 through the 8259s as
// ExtINT.
func TestIRQPIC(t *testing.T) {
	runIRQ(t, "pic", "hz=100 ms=2000", func(t *testing.T, r Result) {
		within2pct(t, fields(t, r.Stdout, "pic", "irqs="))
	})
}

// TestIRQLevel: a level-triggered line (irqtestdev on GSI 16) held until
// the guest acknowledges it. Remote IRR is set in every handler invocation
// and clear after the EOI, the line stays asserted until acknowledged, and
// an EOI with the line still high redelivers.
//
// How many interrupts one assertion gives depends on when the host's LAPIC
// reports the EOI. On a LAPIC that keeps the vector in service until the
// guest's EOI (hardware KVM, MSHV), exactly one per assertion, and two when
// the guest EOIs before acknowledging. The software kvm_pvm KVM of the
// project's machines completes an interrupt as it delivers it (the vector
// is not in service inside the handler and KVM_EXIT_IOAPIC_EOI arrives
// before the handler has acknowledged the device), so the IOAPIC sees the
// EOI with the line still high and redelivers exactly once more: two per
// assertion, three with EOI first. The guest reports which LAPIC it saw.
func TestIRQLevel(t *testing.T) {
	runIRQ(t, "level", "n=20 m=5", func(t *testing.T, r Result) {
		m := fields(t, r.Stdout, "level", "assertions=")
		irqs, eoiFirst, isr := num(t, m, "irqs"), num(t, m, "eoi_first_irqs"), num(t, m, "lapic_isr_in_isr")
		if num(t, m, "rirr_after_eoi") != 0 {
			t.Fatalf("Remote IRR still set after the EOI: %v", m)
		}
		if num(t, m, "device_asserts") != 25 {
			t.Fatalf("device saw %s assertions, want 25", m["device_asserts"])
		}
		switch {
		case isr == irqs+eoiFirst:
			if irqs != 20 || eoiFirst != 10 || num(t, m, "rirr_in_isr") != 30 {
				t.Fatalf("want exactly one interrupt per assertion (20), two per EOI-first assertion (10), Remote IRR set in all 30 handler calls: %v", m)
			}
		case isr == 0:
			t.Logf("this host's LAPIC completes interrupts on delivery (vector not in service in the handler): expecting one redelivery per assertion")
			if irqs != 40 || eoiFirst != 15 || num(t, m, "rirr_in_isr") != 30 {
				t.Fatalf("want exactly two interrupts per assertion (40), three per EOI-first assertion (15), Remote IRR set in 30 handler calls: %v", m)
			}
		default:
			t.Fatalf("the vector was in service in %d of %d handler calls: neither LAPIC behaviour: %v", isr, irqs+eoiFirst, m)
		}
	})
}

// TestIRQMSIOrderings: the host fires N MSIs through an irqfd set up in
// QEMU's and in Cloud Hypervisor's VFIO ordering, while the vCPU runs and
// while it is halted; the guest counts exactly N each time.
func TestIRQMSIOrderings(t *testing.T) {
	runIRQ(t, "msi", "n=50", func(t *testing.T, r Result) {
		for _, order := range []string{"qemu", "cloud-hypervisor"} {
			for _, wait := range []string{"running", "halted"} {
				m := fields(t, r.Stdout, "msi", "order="+order+" wait="+wait+" ")
				if num(t, m, "irqs") != 50 || num(t, m, "sent") != 50 || num(t, m, "acks") != 50 || m["status"] != "0x2" {
					t.Fatalf("order %s, vCPU %s: %v", order, wait, m)
				}
			}
		}
	})
}

// TestIRQResample: a level-triggered device that has only an eventfd pair
// (trigger and resample, as a VFIO INTx line or a vhost device), played by
// a host goroutine in irqtestdev: for each of N assertions it signals the
// trigger, and on each resample signals it again while the guest has not
// acknowledged it. On an IOAPIC pin govmm's IOAPIC serves the pair on
// every accelerator; on a level-triggered MSI route the accelerator must
// resample (MSHV does, mshvsim emulates it) and KVM must refuse clearly.
// Runs with the vCPU running and halted.
//
// Every assertion is acknowledged exactly once (real == N), every trigger
// gives exactly one interrupt and one resample (none lost, none merged).
// On a LAPIC that keeps the vector in service until the guest's EOI the
// device never has to re-trigger: exactly N interrupts. On the software
// KVM that completes interrupts on delivery (see TestIRQLevel) the EOI,
// and so the resample, can come before the handler acknowledged the
// device, which then re-triggers once: at most 2N interrupts, the extra
// ones finding nothing pending.
func TestIRQResample(t *testing.T) {
	const n = 30
	guest := guestPath(t, "irq")
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			args := append([]string{"run", "--test-devices"}, acc...)
			args = append(args, "--kernel", guest, "--cmdline", fmt.Sprintf("irqtest=resample n=%d", n),
				"--serial", "stdio", "--cpus", "1")
			r := govmm(t, args...)
			if r.Code != irqOK {
				t.Fatalf("irq guest resample: want exit %d (IRQ_OK)\n%s", irqOK, r)
			}
			for _, path := range []string{"ioapic", "msi"} {
				for _, wait := range []string{"running", "halted"} {
					m := fields(t, r.Stdout, "resample", "path="+path+" wait="+wait+" ")
					if path == "msi" && accelName(acc) == "kvm" {
						if m["status"] != "0x6" || num(t, m, "irqs") != 0 || num(t, m, "triggers") != 0 ||
							!strings.Contains(r.Stderr, "a level-triggered MSI cannot be resampled on KVM") ||
							!strings.Contains(r.Stderr, "IOAPIC pin (GSI 0-23)") {
							t.Fatalf("KVM must refuse a resample irqfd on an MSI GSI and say to use an IOAPIC pin: %v\n%s", m, r.Stderr)
						}
						continue
					}
					checkResample(t, path+"/"+wait, m, n)
				}
			}
		})
	}
}

func checkResample(t *testing.T, what string, m map[string]string, n uint64) {
	t.Helper()
	irqs, trig := num(t, m, "irqs"), num(t, m, "triggers")
	if m["status"] != "0x2" || num(t, m, "asserts") != n || num(t, m, "real") != n {
		t.Fatalf("%s: want status 0x2 (done), %d assertions each acknowledged once: %v", what, n, m)
	}
	if irqs != trig || num(t, m, "resamples") != trig || num(t, m, "spurious") != irqs-n {
		t.Fatalf("%s: want one interrupt and one resample per trigger (%d): %v", what, trig, m)
	}
	switch isr := num(t, m, "lapic_isr_in_isr"); {
	case isr == irqs:
		if trig != n {
			t.Fatalf("%s: the LAPIC keeps the vector in service until the EOI, so the device never re-triggers: want exactly %d interrupts: %v", what, n, m)
		}
	case isr == 0:
		t.Logf("%s: this host's LAPIC completes interrupts on delivery: %d re-triggers for %d assertions", what, trig-n, n)
		if trig > 2*n {
			t.Fatalf("%s: more than one re-trigger per assertion (%d triggers for %d): %v", what, trig, n, m)
		}
	default:
		t.Fatalf("%s: the vector was in service in %d of %d handler calls: neither LAPIC behaviour: %v", what, isr, irqs, m)
	}
}

// TestIRQCalibration: the LAPIC timer calibrated against the PM timer and
// against the PIT agree (both clocks come from the host's monotonic clock).
func TestIRQCalibration(t *testing.T) {
	runIRQ(t, "calib", "", func(t *testing.T, r Result) {
		m := fields(t, r.Stdout, "calib", "lapic_hz_pm=")
		pm, pit := num(t, m, "lapic_hz_pm"), num(t, m, "lapic_hz_pit")
		if pm == 0 || pit == 0 {
			t.Fatalf("calibration failed: %v", m)
		}
		d := int64(pm) - int64(pit)
		if d < 0 {
			d = -d
		}
		if uint64(d)*100 > pm*2 {
			t.Fatalf("LAPIC timer: %d Hz against the PM timer, %d Hz against the PIT (more than 2%% apart)", pm, pit)
		}
	})
}

// TestIRQSerialInput: bytes written to govmm's stdin reach the guest through
// the UART's receive interrupt (IRQ4 through the IOAPIC).
func TestIRQSerialInput(t *testing.T) {
	guest := guestPath(t, "irq")
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
			defer cancel()
			args := append([]string{"run", "--test-devices"}, acc...)
			args = append(args, "--kernel", guest, "--cmdline", "irqtest=serial", "--serial", "stdio")
			cmd := exec.CommandContext(ctx, binary, args...)
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr, out virtiotest.SyncBuffer
			cmd.Stderr = &stderr
			mark := nested.ShutdownMark()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			watch := newStallWatch()
			watch.start(cmd.Process.Pid, &out, &stderr, cancel)
			sc := bufio.NewScanner(stdout)
			ready := false
			for sc.Scan() {
				out.Write([]byte(sc.Text() + "\n"))
				if strings.Contains(sc.Text(), "serial: ready") {
					ready = true
					break
				}
			}
			if ready {
				// "ready" is printed after the receive interrupt is
				// enabled (the guest drains older input first).
				fmt.Fprint(stdin, "hello irq\n")
			}
			rest, _ := io.ReadAll(stdout)
			out.Write(rest)
			err = cmd.Wait()
			stdin.Close()
			if d := watch.end(); d != "" {
				t.Fatalf("stalled: the nested substrate's failure holds the guest, found early:\n--- %s\n--- its output:\n%s\n%s", d, out.String(), stderr.String())
			}
			if linuxguest.IsTripleFault(stderr.String()) {
				stderr.Write([]byte(nested.ShutdownExits(mark, nested.GuestRAM(args))))
			}
			if ctx.Err() != nil {
				t.Fatalf("timed out\n%s\n%s", out.String(), stderr.String())
			}
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			r := Result{Stdout: out.String(), Stderr: stderr.String(), Code: code}
			if !ready || code != irqOK {
				t.Fatalf("serial guest: want exit %d after \"serial: ready\"\n%s", irqOK, r)
			}
			m := fields(t, r.Stdout, "serial", "got=")
			if m["got"] != "hello irq" || num(t, m, "rx_irqs") == 0 {
				t.Fatalf("serial input by interrupt: %v", m)
			}
		})
	}
}

// BenchmarkIRQFastPaths compares, inside the irq guest, an MSI delivered
// through an irqfd with one injected from userspace (KVM_SIGNAL_MSI /
// the MSHV assert-interrupt path), each measured as the full round trip of
// one paced MSI (host signal, guest handler, acknowledgement); and a
// doorbell write from CPL3 consumed by an ioeventfd with one that exits to
// govmm as plain MMIO. It prints the pairs side by side with ratios and
// reports them as metrics (ns per operation, from the guest's TSC).
//
//	go test ./e2e -run XXX -bench IRQFastPaths -benchtime 1x
func BenchmarkIRQFastPaths(b *testing.B) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		b.Skipf("no /dev/kvm: %v", err)
	}
	img, err := guests.Image("irq")
	if err != nil {
		b.Fatal(err)
	}
	guest := filepath.Join(b.TempDir(), "irq.elf")
	if err := os.WriteFile(guest, img, 0o644); err != nil {
		b.Fatal(err)
	}
	for _, acc := range [][]string{{"--accel=kvm"}, {"--accel=mshv", "--mshv-device=sim"}} {
		b.Run(accelName(acc), func(b *testing.B) {
			var m map[string]uint64
			for i := 0; i < b.N; i++ {
				args := append([]string{"run", "--test-devices"}, acc...)
				args = append(args, "--kernel", guest, "--cmdline", "irqtest=bench n=200 bells=2000", "--serial", "stdio")
				ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
				out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
				cancel()
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != irqOK {
					b.Fatalf("irq bench guest: %v\n%s", err, out)
				}
				m = map[string]uint64{}
				for _, line := range strings.Split(string(out), "\n") {
					if !strings.HasPrefix(line, "bench: irqfd_ns=") {
						continue
					}
					for _, kv := range strings.Fields(strings.TrimPrefix(line, "bench: ")) {
						k, v, _ := strings.Cut(kv, "=")
						n, _ := strconv.ParseUint(strings.TrimSpace(v), 0, 64)
						m[k] = n
					}
				}
				if m["irqfd_ns"] == 0 || m["ioeventfd_ns"] == 0 {
					b.Fatalf("no bench line:\n%s", out)
				}
			}
			b.ReportMetric(float64(m["irqfd_ns"]), "irqfd-ns/msi")
			b.ReportMetric(float64(m["signalmsi_ns"]), "signalmsi-ns/msi")
			b.ReportMetric(float64(m["ioeventfd_ns"]), "ioeventfd-ns/write")
			b.ReportMetric(float64(m["mmio_ns"]), "mmio-ns/write")
			ratio := func(slow, fast uint64) float64 { return float64(slow) / float64(fast) }
			fmt.Printf("\n%-8s %-34s %12s %8s\n", accelName(acc), "path", "ns/op", "ratio")
			fmt.Printf("%-8s %-34s %12d %8s\n", "", "MSI via irqfd (round trip)", m["irqfd_ns"], "1.00")
			fmt.Printf("%-8s %-34s %12d %7.2fx\n", "", "MSI via userspace inject", m["signalmsi_ns"], ratio(m["signalmsi_ns"], m["irqfd_ns"]))
			fmt.Printf("%-8s %-34s %12d %8s\n", "", "doorbell via ioeventfd (CPL3)", m["ioeventfd_ns"], "1.00")
			fmt.Printf("%-8s %-34s %12d %7.2fx\n", "", "doorbell via MMIO exit (CPL3)", m["mmio_ns"], ratio(m["mmio_ns"], m["ioeventfd_ns"]))
			if m["fastmode"] != 1 {
				fmt.Printf("%-8s (no ioeventfd could be assigned: the fast doorbell exited too)\n", "")
			}
		})
	}
}

// TestIRQMSIWhileKicked: the same MSI runs while the host keeps pausing and
// resuming the VM through its control socket (every pause kicks the vCPU
// out of the guest): no interrupt is lost or duplicated across the kicks.
func TestIRQMSIWhileKicked(t *testing.T) {
	guest := guestPath(t, "irq")
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			// The guest's speed varies a lot on the nested substrate: a
			// run so quick that no pause landed tested nothing, and runs
			// again ten times as long.
			for _, n := range []int{100, 1000} {
				kicks, pauseErr := msiWhileKicked(t, acc, guest, n)
				if kicks >= 5 {
					t.Logf("%d pause/resume kicks during %d MSIs per ordering, every MSI counted once", kicks, n)
					return
				}
				t.Logf("only %d pauses landed during %d MSIs per ordering (last refusal: %v)", kicks, n, pauseErr)
			}
			t.Fatal("too few pauses landed: the test did not exercise kicks")
		})
	}
}

// msiWhileKicked runs the irq guest's MSI test with n interrupts per
// ordering while pausing and resuming the VM, checks that every MSI was
// counted once, and returns the pauses that landed.
func msiWhileKicked(t *testing.T, acc []string, guest string, n int) (int, error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vm.sock")
	args := append([]string{"run", "--test-devices", "--api-socket", sock}, acc...)
	args = append(args, "--kernel", guest, "--cmdline", fmt.Sprintf("irqtest=msi n=%d", n), "--serial", "stdio", "--cpus", "1")
	p := start(t, args...)
	waitPath(t, sock)
	c, err := api.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	kicks := 0
	var pauseErr error
	for {
		select {
		case <-p.done:
		default:
			if err := c.Pause(); err == nil {
				kicks++
			} else {
				pauseErr = err
			}
			time.Sleep(2 * time.Millisecond)
			c.Resume()
			time.Sleep(3 * time.Millisecond)
			continue
		}
		break
	}
	if code := p.exit(time.Second); code != irqOK {
		t.Fatalf("irq guest: exit %d, want %d\n%s", code, irqOK, p.output())
	}
	for _, order := range []string{"qemu", "cloud-hypervisor"} {
		for _, wait := range []string{"running", "halted"} {
			m := fields(t, p.output(), "msi", "order="+order+" wait="+wait+" ")
			if num(t, m, "irqs") != uint64(n) || num(t, m, "acks") != uint64(n) || m["status"] != "0x2" {
				t.Fatalf("order %s, vCPU %s, with %d pauses: %v", order, wait, kicks, m)
			}
		}
	}
	return kicks, pauseErr
}

// TestIRQPCTestdev drives QEMU's pc-testdev as kvm-unit-tests does: the
// scratch port and memory, a page flush, edges raised on an IOAPIC line
// from the guest's own port writes, and a level line that the IOAPIC
// redelivers after each EOI until the guest lowers it.
func TestIRQPCTestdev(t *testing.T) {
	runIRQ(t, "pctestdev", "n=20", func(t *testing.T, r Result) {
		m := fields(t, r.Stdout, "pctestdev", "")
		if m["scratch"] != "0x12345678" || m["mem"] != "0x1122334455667788" || m["flush"] != "0x5a5a1234" {
			t.Errorf("scratch port, memory or flushed page: %v", m)
		}
		if num(t, m, "edges") != 20 || num(t, m, "edges_ok") != 20 || num(t, m, "levels") != 3 {
			t.Errorf("interrupts: %v (want 20 edges, 3 level deliveries)", m)
		}
	})
}

// TestSerialInputAtRestore: input already waiting on stdin when a restore
// starts reaches the guest. The UART raises its interrupt as soon as the
// input arrives, so govmm must hold it until the vCPUs exist with their
// LAPICs: an MSI sent before then is lost (KVM_SIGNAL_MSI fails, MSHV
// rejects it) and the guest would wait forever.
func TestSerialInputAtRestore(t *testing.T) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			r := restoredIRQGuest(t, acc, "irqtest=serial", "serial: ready", "hello restore\n")
			if m := fields(t, r.Stdout, "serial", "got="); m["got"] != "hello restore" {
				t.Fatalf("restored guest read %v", m)
			}
		})
	}
}

// restoredIRQGuest boots the irq guest with cmdline on acc, waits for its
// ready line, snapshots and stops it, and restores it with input on its
// stdin; the restored guest must exit irqOK.
func restoredIRQGuest(t *testing.T, acc []string, cmdline, ready, input string) Result {
	t.Helper()
	dir := t.TempDir()
	sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
	args := append([]string{"run", "--test-devices"}, acc...)
	p := start(t, append(args, "--kernel", guestPath(t, "irq"), "--cmdline", cmdline, "--api-socket", sock)...)
	p.waitFor(ready, time.Minute)
	if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
		t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
	}
	p.exit(30 * time.Second)
	r := govmmInput(t, input, append(append([]string{"restore"}, acc...), "--snapshot="+snap)...)
	if r.Code != irqOK {
		t.Fatalf("restored guest (%s): want exit %d\n%s", cmdline, irqOK, r)
	}
	return r
}

// TestIRQPCITestdev finds QEMU's pci-testdev on PCI bus 0 through the
// configuration ports and the ECAM window the MCFG names, sizes and moves
// its BARs, and runs kvm-unit-tests' port-I/O and MMIO tests against them.
func TestIRQPCITestdev(t *testing.T) {
	runIRQ(t, "pcitestdev", "", func(t *testing.T, r Result) {
		m := fields(t, r.Stdout, "pcitestdev", "")
		if m["host"] != "0x81b36" || m["slot"] != "31" || m["ecam"] != "0xe0000000" || m["ecam_ok"] != "1" ||
			m["mmio"] != "16,16,16" || m["portio"] != "16,16,16" {
			t.Errorf("pci-testdev: %v", m)
		}
	})
}

// TestPCIStateAtRestore: BARs a guest moved, and pci-testdev's counter,
// survive a snapshot and restore (on the same accelerator).
func TestPCIStateAtRestore(t *testing.T) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			r := restoredIRQGuest(t, acc, "irqtest=pcitestdev wait=1", "pcitestdev: placed", "x")
			if m := fields(t, r.Stdout, "pcitestdev", "kept="); m["kept"] != "5" || m["bar0"] != "0xc0100000" || m["bar1"] != "0xc201" {
				t.Fatalf("restored guest: %v", m)
			}
		})
	}
}
