package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// netMQHead loads virtio_net, configures eth0, prints the queues the
// kernel made and waits until L1 answers pings.
var netMQHead = `#!/bin/busybox sh
` + virtioInitHead + `for m in failover net_failover virtio_net; do
	$B insmod /lib/modules/$m.ko || echo "net-test: insmod $m failed"
done
` + ethUp(100) + `echo "net-test: queues $($B ls /sys/class/net/eth0/queues | $B tr '\n' ' ')"
i=0
until $B ping -c 1 -W 2 ` + netHostIP + ` >/dev/null; do
	i=$((i+1))
	if [ $i -ge 30 ]; then echo "net-test: ping failed"; break; fi
done
`

// netMQUploads runs one TCP upload pinned to each of the guest's two
// CPUs: the driver's XPS maps CPU i to transmit queue i, and the TAP
// sends each flow's answer back on the queue the flow came from, so both
// pairs carry packets both ways. Then it prints the virtio lines of
// /proc/interrupts as "net-test: irq1 ...".
var netMQUploads = fmt.Sprintf(`for c in 0 1; do
	$B taskset $((1 << c)) /bin/vsockpeer tcpdial %s:$((7001 + c)) up-cpu$c %d
done
$B grep virtio /proc/interrupts | while read -r l; do echo "net-test: irq1 $l"; done
`, netHostIP, netUp)

var netMQInit = netMQHead + netMQUploads + `echo "vsock-test: done"
$B poweroff -f
`

// netMQSnapInit is netMQInit, then a third upload from CPU 1 that the
// guest tries every second until L1 listens (after the restore), and the
// interrupts again, as "net-test: irq2 ...".
var netMQSnapInit = netMQHead + netMQUploads + `echo "net-test: phase1 done"
until $B taskset 2 /bin/vsockpeer tcpdial ` + netHostIP + fmt.Sprintf(`:7003 up-after %d; do $B sleep 1; done
`, netUp) + `$B grep virtio /proc/interrupts | while read -r l; do echo "net-test: irq2 $l"; done
echo "vsock-test: done"
$B poweroff -f
`

// irqCount sums the per-CPU counts of /proc/interrupts lines the guest
// printed as "net-test: TAG N: c0 c1 ... name", by the IRQ's name.
func irqCount(out, tag string) map[string]uint64 {
	counts := map[string]uint64{}
	re := regexp.MustCompile(`net-test: ` + tag + ` \d+:((?:\s+\d+)+)\s+.*?(\S+)\s*$`)
	for _, l := range strings.Split(out, "\n") {
		m := re.FindStringSubmatch(strings.TrimRight(l, "\r"))
		if m == nil {
			continue
		}
		var n uint64
		for _, f := range strings.Fields(m[1]) {
			v, _ := strconv.ParseUint(f, 10, 64)
			n += v
		}
		counts[m[2]] += n
	}
	return counts
}

// queueIRQs is the interrupts of the virtio-net queue named q
// ("input.1"), and whether the guest has that queue's vector.
func queueIRQs(irqs map[string]uint64, q string) (uint64, bool) {
	var n uint64
	found := false
	for name, v := range irqs {
		if strings.HasSuffix(name, "-"+q) {
			n, found = n+v, true
		}
	}
	return n, found
}

// TestNetMultiqueue boots a 2-vCPU Linux guest with --net queues=2 on a
// TAP govmm creates in L1 (multiqueue), on each accelerator. The guest's
// driver enables both pairs (the kernel shows rx-0, rx-1, tx-0 and tx-1),
// uploads 4 MiB to L1 from each CPU and reads L1's 1 MiB answer, every
// byte checked; each pair's receive and transmit vector must have
// interrupted the guest. govmm info shows queues=2.
func TestNetMultiqueue(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, netMQInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			needTun(t)
			var ups []<-chan []byte
			for c := range 2 {
				ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", 7001+c))
				if err != nil {
					t.Fatal(err)
				}
				ups = append(ups, serveOnce(t, ln, pattern(fmt.Sprintf("h2g-answer-cpu%d", c), netReply)))
			}
			api := filepath.Join(tempSocketDir(t), "api.sock")
			args := append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--net", "tap="+netTap+",mac="+netMAC+",queues=2",
				"--cmdline", "console=ttyS0 quiet panic=-1")
			p := bootGuest(t, args, "net-test: queues", func() { hostTap(t) })
			if info := govmm(t, "info", "--api-socket", api); !strings.Contains(info.Stdout, "queues=2") {
				t.Errorf("govmm info does not show queues=2:\n%s", info)
			}
			// The driver enabled both pairs through the control queue
			// and posted receive buffers on each: those queues'
			// threads have their own seccomp filter (#16), as every
			// virtio-net thread there is by then.
			checkDeviceThreads(t, p.cmd.Process.Pid, "net0-ctrl", "net0-rxq0", "net0-rxq1")
			p.waitFor("vsock-test: done", 3*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("govmm exit %d\n%s", code, p.output())
			}
			out := p.output()
			if q := guestValue(out, "net-test", "queues"); strings.Join(strings.Fields(q), " ") != "rx-0 rx-1 tx-0 tx-1" {
				t.Errorf("the guest's eth0 has queues %q, want rx-0 rx-1 tx-0 tx-1\n%s", q, out)
			}
			// Both answers, in order (CPU 0's connection first).
			var replies []string
			for _, l := range strings.Split(out, "\n") {
				if _, v, ok := strings.Cut(l, "vsock-test: g2h-reply "); ok {
					replies = append(replies, strings.TrimSpace(v))
				}
			}
			for c := range 2 {
				want := pattern(fmt.Sprintf("h2g-answer-cpu%d", c), netReply)
				if c >= len(replies) || replies[c] != fmt.Sprintf("%d %s", len(want), sum(want)) {
					t.Errorf("L1's answer to CPU %d: the guest printed %q", c, replies)
				}
				select {
				case b := <-ups[c]:
					if w := pattern(fmt.Sprintf("up-cpu%d", c), netUp); string(b) != string(w) {
						t.Errorf("L1 read %d bytes from CPU %d's connection, want %d of the pattern", len(b), c, len(w))
					}
				case <-time.After(10 * time.Second):
					t.Errorf("CPU %d's connection never reached L1", c)
				}
			}
			irqs := irqCount(out, "irq1")
			t.Logf("guest interrupts: %v", irqs)
			for _, q := range []string{"input.0", "output.0", "input.1", "output.1"} {
				if n, found := queueIRQs(irqs, q); !found || n == 0 {
					t.Errorf("queue %s: %d interrupts (found %v), want some on each pair's vectors:\n%s", q, n, found, out)
				}
			}
		})
	}
}

// TestNetMultiqueueSnapshot snapshots a queues=2 guest after an upload
// from each CPU, checks that restores with queues=1 and queues=3 are
// refused (exit 64, naming queues=), restores with queues=2 on a TAP the
// restoring govmm creates again, and has the guest upload 4 MiB from CPU
// 1 once more: the restored device must have both pairs enabled, so pair
// 1's receive and transmit vectors interrupt the guest again, and every
// byte arrives.
func TestNetMultiqueueSnapshot(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, netMQSnapInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			needTun(t)
			for c := range 2 {
				ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", 7001+c))
				if err != nil {
					t.Fatal(err)
				}
				serveOnce(t, ln, pattern(fmt.Sprintf("h2g-answer-cpu%d", c), netReply))
			}
			dir := tempSocketDir(t)
			api, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			nf := "tap=" + netTap + ",mac=" + netMAC + ",queues=2"
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--net", nf, "--cmdline", "console=ttyS0 quiet panic=-1"),
				"net-test: queues", func() { hostTap(t) })
			p.waitFor("net-test: phase1 done", 3*time.Minute)
			if r := govmm(t, "snapshot", "--api-socket="+api, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			before := irqCount(p.output(), "irq1")
			restore := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			for _, q := range []string{"1", "3"} {
				r := govmm(t, append(append([]string(nil), restore...), "--net", "tap="+netTap+",mac="+netMAC+",queues="+q)...)
				if r.Code != 64 || !strings.Contains(r.Stderr, "queues=2") {
					t.Fatalf("restore with queues=%s: want exit 64 naming queues=2, got\n%s", q, r)
				}
			}
			ln, err := net.Listen("tcp4", ":7003")
			if err != nil {
				t.Fatal(err)
			}
			up := serveOnce(t, ln, pattern("h2g-answer-after", netReply))
			p = start(t, append(restore, "--net", nf)...)
			hostTap(t)
			p.waitFor("vsock-test: done", 3*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("restored guest: exit %d\n%s", code, p.output())
			}
			checkPair1After(t, p.output(), up, before, "restore", "snapshot")
		})
	}
}

// TestNetMultiqueueMigration moves a queues=2 guest live between two
// govmm processes on KVM after an upload from each CPU. The TAP is a
// multiqueue one, so the destination attaches its own queues to it while
// the source still holds its own, and the TAP carries on with the
// destination's once the source ends. A destination with queues=1 is
// refused before any memory moves, naming queues=2, and the source runs
// on. After the move the guest uploads 4 MiB from CPU 1: every byte
// arrives, and pair 1's vectors interrupt again, which they would not if
// the destination had one pair enabled.
func TestNetMultiqueueMigration(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, netMQSnapInit)
	var kvm []string
	for _, acc := range accels(t) {
		if accelName(acc) == "kvm" {
			kvm = acc
		}
	}
	if kvm == nil {
		t.Skip("no KVM")
	}
	needTun(t)
	for c := range 2 {
		ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", 7001+c))
		if err != nil {
			t.Fatal(err)
		}
		serveOnce(t, ln, pattern(fmt.Sprintf("h2g-answer-cpu%d", c), netReply))
	}
	dir := tempSocketDir(t)
	sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
	nf := "tap=" + netTap + ",mac=" + netMAC + ",queues=2"
	s := bootGuest(t, append(append([]string{"run"}, kvm...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
		"--memory=512M", "--cpu", "host", "--api-socket", sock, "--net", nf, "--cmdline", "console=ttyS0 quiet panic=-1"),
		"net-test: queues", func() { hostTap(t) })
	s.waitFor("net-test: phase1 done", 3*time.Minute)
	before := irqCount(s.output(), "irq1")
	receive := append(append([]string{"migrate", "receive"}, kvm...), "--listen", "unix:"+mig)

	d := start(t, append(append([]string(nil), receive...), "--net", "tap="+netTap+",mac="+netMAC)...)
	waitPath(t, mig)
	r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+mig)
	if r.Code != 70 || !strings.Contains(r.Stderr, "destination refused the VM") || !strings.Contains(r.Stderr, "queues=2") {
		t.Fatalf("migrate send to a queues=1 destination: want exit 70 and a refusal naming queues=2, got\n%s\ndestination:\n%s", r, d.output())
	}
	t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
	d.waitFor("still listening", 30*time.Second)
	select {
	case <-s.done:
		t.Fatalf("the source ended after a refused migration:\n%s", s.output())
	default:
	}
	d.cmd.Process.Kill()
	<-d.done
	os.Remove(mig)

	d = start(t, append(append([]string(nil), receive...), "--net", nf, "--api-socket", filepath.Join(dir, "dst.sock"))...)
	waitPath(t, mig)
	migrateLive(t, sock, mig, s, d)
	ln, err := net.Listen("tcp4", ":7003")
	if err != nil {
		t.Fatal(err)
	}
	up := serveOnce(t, ln, pattern("h2g-answer-after", netReply))
	d.waitFor("vsock-test: done", 3*time.Minute)
	if code := d.exit(time.Minute); code != 0 {
		t.Fatalf("destination: exit %d\n%s", code, d.output())
	}
	checkPair1After(t, d.output(), up, before, "move", "move")
}

// checkPair1After checks the end of a multiqueue guest that went on in
// another process (after event: "restore" or "move"; before names the
// interrupt counts' moment, "snapshot" or "move"): L1 got its 4 MiB
// upload from CPU 1 on up and the guest L1's answer, and pair 1's
// vectors interrupted again since before.
func checkPair1After(t *testing.T, out string, up <-chan []byte, before map[string]uint64, event, beforeEvent string) {
	t.Helper()
	select {
	case b := <-up:
		if w := pattern("up-after", netUp); string(b) != string(w) {
			t.Errorf("L1 read %d bytes from the guest after the %s, want %d of the pattern", len(b), event, len(w))
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the guest's connection after the %s never reached L1", event)
	}
	want := pattern("h2g-answer-after", netReply)
	if got := vsockLine(out, "g2h-reply"); got != fmt.Sprintf("%d %s", len(want), sum(want)) {
		t.Errorf("L1's answer after the %s: the guest printed %q\n%s", event, got, out)
	}
	after := irqCount(out, "irq2")
	t.Logf("guest interrupts before the %s %v, at the end %v", beforeEvent, before, after)
	for _, q := range []string{"input.1", "output.1"} {
		b, _ := queueIRQs(before, q)
		a, found := queueIRQs(after, q)
		if !found || a <= b {
			t.Errorf("queue %s: %d interrupts before the %s, %d at the end: pair 1 carried nothing after the %s\n%s", q, b, beforeEvent, a, event, out)
		}
	}
}
