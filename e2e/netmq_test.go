package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// netMQInit runs one TCP upload pinned to each of the guest's two CPUs:
// the driver's XPS maps CPU i to transmit queue i, and the TAP sends
// each flow's answer back on the queue the flow came from, so both
// pairs carry packets both ways. It prints the queues the kernel made
// and the virtio lines of /proc/interrupts.
var netMQInit = `#!/bin/busybox sh
` + virtioInitHead + `for m in failover net_failover virtio_net; do
	$B insmod /lib/modules/$m.ko || echo "net-test: insmod $m failed"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
$B ip link set lo up
$B ip addr add ` + netGuestIP + `/24 dev eth0
$B ip link set eth0 up
echo "net-test: queues $($B ls /sys/class/net/eth0/queues | $B tr '\n' ' ')"
i=0
until $B ping -c 1 -W 2 ` + netHostIP + ` >/dev/null; do
	i=$((i+1))
	if [ $i -ge 30 ]; then echo "net-test: ping failed"; break; fi
done
` + fmt.Sprintf(`for c in 0 1; do
	$B taskset $((1 << c)) /bin/vsockpeer tcpdial %s:$((7001 + c)) up-cpu$c %d
done
`, netHostIP, netUp) + `$B grep virtio /proc/interrupts | while read -r l; do echo "net-test: irq $l"; done
echo "vsock-test: done"
$B poweroff -f
`

// irqCount sums the per-CPU counts of /proc/interrupts lines the guest
// printed as "net-test: irq N: c0 c1 ... name", by the IRQ's name.
func irqCount(out string) map[string]uint64 {
	counts := map[string]uint64{}
	re := regexp.MustCompile(`net-test: irq \d+:((?:\s+\d+)+)\s+.*?(\S+)\s*$`)
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
				"--cmdline", "console=ttyS0 panic=-1")
			p := bootGuest(t, args, "net-test: queues", func() { hostTap(t) })
			if info := govmm(t, "info", "--api-socket", api); !strings.Contains(info.Stdout, "queues=2") {
				t.Errorf("govmm info does not show queues=2:\n%s", info)
			}
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
			irqs := irqCount(out)
			t.Logf("guest interrupts: %v", irqs)
			for _, q := range []string{"input.0", "output.0", "input.1", "output.1"} {
				var n uint64
				found := false
				for name, v := range irqs {
					if strings.HasSuffix(name, "-"+q) {
						n, found = n+v, true
					}
				}
				if !found || n == 0 {
					t.Errorf("queue %s: %d interrupts (found %v), want some on each pair's vectors:\n%s", q, n, found, out)
				}
			}
		})
	}
}
