package main

import (
	"strings"
	"testing"
)

func TestResultLineRoundTrip(t *testing.T) {
	r := result{VMM: "govmm", Rep: 2, Key: "net-g2h-mbs", Value: 123.4}
	got, ok := parseResult("noise before is not a result\n")
	if ok {
		t.Fatalf("parsed %+v from a non-result line", got)
	}
	if got, ok = parseResult(r.String() + "\n"); !ok || got != r {
		t.Fatalf("round trip: %+v %v, want %+v", got, ok, r)
	}
}

// TestReport: ratios against each QEMU column and the targets' direction
// (throughput up, latency down), and failures listed.
func TestReport(t *testing.T) {
	var rs []result
	add := func(vmm, key string, v ...float64) {
		for i, x := range v {
			rs = append(rs, result{VMM: vmm, Rep: i, Key: key, Value: x})
		}
	}
	add("govmm", "net-g2h-mbs", 100, 300, 200)
	add("qemu", "net-g2h-mbs", 100, 100, 100)
	add("govmm", "vsock-rtt-us", 50, 50, 1000)
	add("qemu", "vsock-rtt-us", 40, 40, 40)
	rs = append(rs, result{VMM: "qemu", Rep: 1, Key: "failed", Note: "no poweroff"})
	// Repetition 2 ran again in a fresh L1: its second figure counts.
	rs = append(rs, result{VMM: "govmm", Rep: 2, Key: "vsock-rtt-us", Value: 50})
	add("govmm-alt", "vsock-rtt-us", 25, 25, 25)
	var b strings.Builder
	report(&b, rs, &config{runs: 3, cpus: 1, columns: []string{"govmm", "qemu", "govmm-alt"}}, "go run ./bench/devbench", 0)
	out := b.String()
	for _, want := range []string{
		"| virtio-net TCP guest to host (MB/s) | 200 (n=3) | 100 (n=3) | - | 2.00x | - | qemu: yes |",
		// the target is QEMU's: another govmm build gets a ratio only
		"| vsock round trip, 64 bytes (µs) | 50.0 (n=3) | 40.0 (n=3) | 25.0 (n=3) | 1.25x | 2.00x | qemu: no |",
		"failed: qemu run 2: no poweroff",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// TestDiagnostics: the guest's interrupt lines and KVM's counters become
// rows per unit (MB, round trip), and info lines are listed once per VMM.
func TestDiagnostics(t *testing.T) {
	units := phaseUnits()
	var rs []result
	rs = append(rs, guestIRQs("govmm-vhost", "vsock LOC=400 virtio2-event=0 virtio2-rx=200", units)...)
	a := kvmSnap{n: map[string]int64{"exits": 1000, "io_exits": 10}}
	b := kvmSnap{n: map[string]int64{"exits": 1000 + 3*rtts, "io_exits": 10 + rtts}}
	rs = append(rs, kvmDelta("qemu-vhost", "vsock", a, b, units["vsock"])...)
	for rep := range 2 {
		rs = append(rs, result{VMM: "qemu-vhost", Rep: rep, Key: "info clocksource kvm-clock"})
	}
	var sb strings.Builder
	report(&sb, rs, &config{runs: 1, cpus: 1, columns: []string{"govmm-vhost", "qemu-vhost"}}, "go run ./bench/devbench", 0)
	out := sb.String()
	for _, want := range []string{
		"| irq vsock LOC | 2.00 | - |",
		"| irq vsock virtio2-rx | 1.00 | - |",
		"| kvm vsock exits | - | 3.00 |",
		"| kvm vsock io_exits | - | 1.00 |",
		"What the guest saw under qemu-vhost:\n  clocksource kvm-clock\n\n",
	} {
		if !strings.Contains(out+"\n", want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "virtio2-event") {
		t.Errorf("a counter that stayed 0 everywhere has a row:\n%s", out)
	}
}

// TestReportBase: without a govmm column, the first govmm column is
// what the ratios are of.
func TestReportBase(t *testing.T) {
	rs := []result{{VMM: "govmm-vhost", Key: "net-h2g-mbs", Value: 30}, {VMM: "qemu-vhost", Key: "net-h2g-mbs", Value: 40}}
	var b strings.Builder
	report(&b, rs, &config{runs: 1, cpus: 1, columns: []string{"govmm-vhost", "qemu-vhost"}}, "go run ./bench/devbench", 0)
	if want := "| virtio-net TCP host to guest (MB/s) | 30.0 (n=1) | 40.0 (n=1) | 0.75x | qemu-vhost: no |"; !strings.Contains(b.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, b.String())
	}
}
