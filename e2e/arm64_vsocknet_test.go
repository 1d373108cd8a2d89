package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Sizes of the arm64 vsock and network transfers: each side sends
// arm64XferUp bytes and answers with arm64XferReply.
const (
	arm64XferUp    = 1 << 20
	arm64XferReply = 256 << 10
)

// TestARM64VsockNet boots Debian's arm64 cloud kernel with govmm's arm64
// build on KVM/arm64 in the aarch64 L1 with a virtio-net device on a TAP
// govmm creates in L1 and a virtio-vsock device served by govmm (the
// hybrid backend: a Unix socket in L1). The guest's own drivers
// (virtio_net, vmw_vsock_virtio_transport) take both functions on the
// ECAM host bridge with MSI-X through the ITS. Over each device each side
// dials the other: it sends 1 MiB of a known pattern, half-closes and
// reads a 256 KiB answer, and the receiver prints the length and SHA-256
// of what it read; the guest also pings L1. vsockpeer is the program at
// both ends (built for arm64: the guest's AF_VSOCK and TCP, L1's Unix
// socket and TCP).
func TestARM64VsockNet(t *testing.T) {
	a := arm64L1(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "govmm-arm64")
	buildARM64(t, bin, "build", "./cmd/govmm")
	peer := filepath.Join(dir, "vsockpeer-arm64")
	buildARM64(t, peer, "build", "./e2e/vsockpeer")
	mods := moduleTree(a.Kernel)

	ar := arm64VirtioArchive(t, a)
	if err := ar.File("/bin/vsockpeer", peer); err != nil {
		t.Fatal(err)
	}
	guestMods := append(append([]string(nil), vsockModules...), "failover", "net_failover", "virtio_net")
	for _, m := range []string{"net/vmw_vsock/vsock.ko", "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
		"net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko"} {
		if err := ar.File("/lib/modules/"+filepath.Base(m), filepath.Join(mods, m)); err != nil {
			t.Fatalf("arm64 module: %v (%s)", err, howToGetARM64Virtio)
		}
	}
	// Each vsockpeer writes to its own file, printed at the end with its
	// "vsock-test:" lines tagged by whose they are: gvs/gtcp the guest's
	// vsock and TCP ends, lvs/ltcp L1's. (Piped through sed to the
	// console, the servers' "listening" lines came out only at the end.)
	ar.Bytes("/init", 0o755, []byte(arm64VirtioInit("arm64-vn")+`for m in `+strings.Join(guestMods, " ")+`; do
	$B insmod /lib/modules/$m.ko || echo "arm64-vn: insmod $m failed"
done
P=/bin/vsockpeer
`+ethUp(100)+`echo "arm64-vn: mac $($B cat /sys/class/net/eth0/address)"
`+fmt.Sprintf(`$P serve 5000 1 h2g-vsock-answer %d >/tmp/gvs-serve.out 2>&1 &
$P tcpserve 7000 1 h2g-tcp-answer %d >/tmp/gtcp-serve.out 2>&1 &
i=0
while ! { $B grep -q listening /tmp/gvs-serve.out && $B grep -q listening /tmp/gtcp-serve.out; } && [ $i -lt 300 ]; do $B sleep 0.1; i=$((i+1)); done
if $B grep -q listening /tmp/gvs-serve.out && $B grep -q listening /tmp/gtcp-serve.out; then echo "arm64-vn: servers listening"; fi
if $B ping -c 3 -W 10 %s >/dev/null; then echo "arm64-vn: ping ok"; else echo "arm64-vn: ping failed"; fi
$P dial 1024 g2h-vsock %d >/tmp/gvs-dial.out 2>&1
$P tcpdial %s:7001 g2h-tcp %d >/tmp/gtcp-dial.out 2>&1
wait
`, arm64XferReply, arm64XferReply, netHostIP, arm64XferUp, netHostIP, arm64XferUp)+`for f in gvs-serve gtcp-serve gvs-dial gtcp-dial; do $B sed "s/^vsock-test:/$f:/" /tmp/$f.out; done
$B grep virtio /proc/interrupts | $B sed 's/^/arm64-vn: irq /'
echo "arm64-vn: done"
$B poweroff -f
`))
	initrd := writeInitrd(t, dir, ar)
	tun := filepath.Join(mods, "drivers/net/tun.ko")

	script := `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
insmod ` + tun + ` || echo "l1: insmod tun failed"
[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
P=` + peer + `
` + fmt.Sprintf(`$P unixserve /tmp/vs.sock_1024 1 g2h-vsock-answer %d >/tmp/lvs-serve.out 2>&1 &
$P tcpserve 7001 1 g2h-tcp-answer %d >/tmp/ltcp-serve.out 2>&1 &
`, arm64XferReply, arm64XferReply) + `timeout 400 ` + bin + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --net tap=` + netTap + `,mac=` + netMAC + ` --vsock cid=3,socket=/tmp/vs.sock --cmdline 'console=ttyAMA0 loglevel=1 panic=-1' >/tmp/console.out 2>/tmp/govmm.err &
g=$!
i=0; while ! ip link show ` + netTap + ` >/dev/null 2>&1 && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
ip addr add ` + netHostIP + `/24 dev ` + netTap + ` && ip link set ` + netTap + ` up && echo "l1: tap up"
i=0; while ! grep -q 'arm64-vn: servers listening' /tmp/console.out && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done
[ $i -lt 300 ] || echo "l1: the guest's servers never said they listen"
` + fmt.Sprintf(`$P unixdial /tmp/vs.sock 5000 h2g-vsock %d >/tmp/lvs-dial.out 2>&1
$P tcpdial %s:7000 h2g-tcp %d >/tmp/ltcp-dial.out 2>&1
`, arm64XferUp, netGuestIP, arm64XferUp) + `wait $g; echo "l1: govmm exit=$?"
for f in lvs-serve lvs-dial ltcp-serve ltcp-dial; do sed "s/^vsock-test:/$f:/" /tmp/$f.out; done
awk '{print "console| " $0}' /tmp/console.out
awk '{print "err| " $0}' /tmp/govmm.err
`
	o := runARM64L1(t, script, 20*time.Minute, bin, peer, initrd, tun, a.Kernel)
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: tap up", "l1: govmm exit=0\n", "arm64-vn: servers listening",
		"arm64-vn: ping ok", "arm64-vn: mac " + netMAC, "arm64-vn: done"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "arm64-vn: insmod") || strings.Contains(o, "l1: insmod tun failed") {
		t.Errorf("a module did not load")
	}
	// Each receiver read exactly what its peer sent.
	for _, c := range []struct{ who, key, seed string }{
		{"gvs-serve", "h2g-recv-1", "h2g-vsock"},        // L1 to guest, vsock
		{"lvs-serve", "h2g-recv-1", "g2h-vsock"},        // guest to L1, vsock
		{"gtcp-serve", "h2g-recv-1", "h2g-tcp"},         // L1 to guest, TCP
		{"ltcp-serve", "h2g-recv-1", "g2h-tcp"},         // guest to L1, TCP
		{"gvs-dial", "g2h-reply", "g2h-vsock-answer-1"}, // L1's answer, vsock
		{"lvs-dial", "g2h-reply", "h2g-vsock-answer-1"}, // the guest's answer, vsock
		{"gtcp-dial", "g2h-reply", "g2h-tcp-answer-1"},  // L1's answer, TCP
		{"ltcp-dial", "g2h-reply", "h2g-tcp-answer-1"},  // the guest's answer, TCP
	} {
		n := arm64XferUp
		if c.key == "g2h-reply" {
			n = arm64XferReply
		}
		if got, want := guestValue(o, c.who, c.key), fmt.Sprintf("%d %s", n, sum(pattern(c.seed, n))); got != want {
			t.Errorf("%s: %s %q, want %q", c.who, c.key, got, want)
		}
	}
	// virtio-net's and virtio-vsock's queues take ITS LPIs.
	if !regexp.MustCompile(`arm64-vn: irq .*MSI.*virtio`).MatchString(o) {
		t.Errorf("no virtio interrupt is an MSI in the guest's /proc/interrupts")
	}
}
