package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"govmm/internal/linuxguest"
)

// The network test's modules: the guest's virtio_net (and its failover
// dependencies), and L1's tun, which L1 does not load by itself. Each is
// a GOVMM_* path, so kvmtest copies it into L1.
var netModuleEnvs = map[string]string{
	"GOVMM_E2E_NET_MOD_FAILOVER":     "net/core/failover.ko",
	"GOVMM_E2E_NET_MOD_NET_FAILOVER": "drivers/net/net_failover.ko",
	"GOVMM_E2E_NET_MOD_VIRTIO_NET":   "drivers/net/virtio_net.ko",
	"GOVMM_E2E_NET_MOD_TUN":          "drivers/net/tun.ko",
}

func init() { setModuleEnvs(netModuleEnvs) }

// The guest's and L1's addresses on the TAP.
const (
	netTap     = "govmmtap0"
	netMAC     = "52:54:00:12:ab:cd"
	netHostIP  = "10.77.0.1"
	netGuestIP = "10.77.0.2"
	netUp      = 4 << 20 // guest to L1
	netDown    = 4 << 20 // L1 to guest
	netReply   = 1 << 20 // each side's answer
)

// ethUp is the guest's shell that waits up to tenths tenths of a second
// for eth0, then brings lo and eth0 up with the guest's address.
func ethUp(tenths int) string {
	return fmt.Sprintf(`i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt %d ]; do $B sleep 0.1; i=$((i+1)); done
$B ip link set lo up
$B ip addr add %s/24 dev eth0
$B ip link set eth0 up
`, tenths, netGuestIP)
}

var netInit = `#!/bin/busybox sh
` + virtioInitHead + `for m in failover net_failover virtio_net; do
	$B insmod /lib/modules/$m.ko || echo "net-test: insmod $m failed"
done
` + ethUp(100) + `$B sleep 1
echo "net-test: mac $($B cat /sys/class/net/eth0/address) carrier $($B cat /sys/class/net/eth0/carrier)"
` + fmt.Sprintf(`/bin/vsockpeer tcpserve 7000 1 g2h-answer %d &
srv=$!
if $B ping -c 3 -W 10 %s >/dev/null; then echo "net-test: ping ok"; else echo "net-test: ping failed"; fi
/bin/vsockpeer tcpdial %s:7001 up %d
wait $srv
echo "vsock-test: done"
$B poweroff -f
`, netReply, netHostIP, netHostIP, netUp)

// netInitrd is the virtio initramfs with virtio_net and the peer program.
func netInitrd(t *testing.T) string { return guestInitrdNet(t, netInit) }

// guestInitrdNet is netInitrd with another init.
func guestInitrdNet(t *testing.T, init string) string {
	t.Helper()
	extra := map[string]string{"/bin/vsockpeer": os.Getenv(vsockPeerEnv)}
	for env, rel := range netModuleEnvs {
		if !strings.HasSuffix(rel, "tun.ko") {
			extra["/lib/modules/"+filepath.Base(rel)] = os.Getenv(env)
		}
	}
	return guestInitrd(t, init, extra)
}

// needTun makes /dev/net/tun work in L1: it loads tun.ko and makes the
// node where devtmpfs did not.
func needTun(t *testing.T) {
	t.Helper()
	loadModules(t, "/sys/class/misc/tun", []string{"GOVMM_E2E_NET_MOD_TUN"}, netModuleEnvs)
	needMiscNode(t, "/dev/net/tun", 200)
}

// busyboxIP runs busybox's ip applet (L1 has no iproute2).
func busyboxIP(t *testing.T, args ...string) {
	t.Helper()
	bb, err := linuxguest.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bb, append([]string{"ip"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// hostTap waits for the TAP govmm creates as it builds the VM and gives
// L1 its address on it.
func hostTap(t *testing.T) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if _, err := net.InterfaceByName(netTap); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	busyboxIP(t, "addr", "add", netHostIP+"/24", "dev", netTap)
	busyboxIP(t, "link", "set", netTap, "up")
}

// tcpTransfer is L1's connection number i to the guest's port 7000: it
// sends netDown bytes of seed, half-closes, and checks the guest's answer
// and the checksum the guest printed of what it received. during, if
// set, runs once the bytes are sent and before the half-close, while the
// guest still waits for the rest: packets have gone both ways, and the
// VM is certainly still running.
func tcpTransfer(t *testing.T, p *proc, seed string, i int, during func()) {
	t.Helper()
	down := pattern(seed, netDown)
	c, err := net.DialTimeout("tcp4", netGuestIP+":7000", 30*time.Second)
	if err != nil {
		t.Fatalf("connect to the guest: %v\n%s", err, p.output())
	}
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	if _, err := c.Write(down); err != nil {
		p.transferFatal(fmt.Sprintf("transfer %d: send to the guest", i), err)
	}
	if during != nil {
		during()
	}
	c.(*net.TCPConn).CloseWrite()
	answer, err := io.ReadAll(c)
	c.Close()
	if want := pattern(fmt.Sprintf("g2h-answer-%d", i), netReply); err != nil || string(answer) != string(want) {
		if err == nil {
			t.Fatalf("transfer %d: the guest answered %d bytes, want %d of the pattern", i, len(answer), len(want))
		}
		p.transferFatal(fmt.Sprintf("transfer %d: the guest's answer (%d bytes of %d)", i, len(answer), len(want)), err)
	}
	key := fmt.Sprintf("h2g-recv-%d", i)
	p.waitFor("vsock-test: "+key, time.Minute)
	if got, w := vsockLine(p.output(), key), fmt.Sprintf("%d %s", len(down), sum(down)); got != w {
		t.Fatalf("transfer %d: L1 to guest: the guest printed %q, want %q", i, got, w)
	}
}

// transferFatal fails a test whose data stopped moving (what, err: a
// deadline passed or TCP gave up): as a substrate stall when L1's kvm_amd
// holds the guest's vCPUs (the test then runs again), else with what tells
// a lost interrupt or doorbell from a stopped guest: the kernel's view of
// govmm's threads, the vCPUs' LAPIC state, and every goroutine (where the
// device's threads wait).
func (p *proc) transferFatal(what string, err error) {
	p.t.Helper()
	if diag := linuxguest.SubstrateStall(p.cmd.Process.Pid); diag != "" {
		p.substrateFatal(diag, what)
	}
	vcpus := p.quit()
	p.t.Fatalf("%s: %v\n--- govmm's output, with the goroutine dump SIGQUIT asked for:\n%s%s", what, err, p.output(), vcpus)
}

// TestNetLinux boots Linux with a virtio-net device on a TAP that govmm
// creates in L1, on each accelerator. L1 gives the TAP an address; the
// guest configures eth0 (its MAC from --net), pings L1, and each side
// sends the other 4 MiB over TCP, half-closes and gets a 1 MiB answer:
// every byte is checked on both sides.
func TestNetLinux(t *testing.T) {
	netLinux(t, "", needTun, func(t *testing.T, p *proc) {
		// While the guest's data flows, each thread of the TAP's data
		// path has its own seccomp filter (#16).
		checkDeviceThreads(t, p.cmd.Process.Pid, "net0-rx0", "net0-rxq0", "net0-tx0")
	}, nil)
}

// netLinux is TestNetLinux with opt added to the --net flag, need run
// before each boot, during called while the first transfer's data flows
// and after, if set, once the guest is done.
func netLinux(t *testing.T, opt string, need func(*testing.T), during, after func(*testing.T, *proc)) {
	kernel := linuxKernel(t)
	initrd := netInitrd(t)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			need(t)
			ln, err := net.Listen("tcp4", ":7001")
			if err != nil {
				t.Fatal(err)
			}
			up := serveOnce(t, ln, pattern("h2g-answer", netReply))
			args := append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--net", "tap="+netTap+",mac="+netMAC+opt, "--cmdline", "console=ttyS0 quiet panic=-1")
			p := bootGuest(t, args, "vsock-test: listening 7000", func() { hostTap(t) })
			tcpTransfer(t, p, "down", 1, func() { during(t, p) })
			p.waitFor("vsock-test: done", 3*time.Minute)
			if after != nil {
				after(t, p)
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("govmm exit %d\n%s", code, p.output())
			}
			out := p.output()
			if !strings.Contains(out, "net-test: mac "+netMAC+" carrier 1") {
				t.Errorf("eth0: want MAC %s and carrier 1:\n%s", netMAC, out)
			}
			if !strings.Contains(out, "net-test: ping ok") {
				t.Errorf("the guest could not ping L1:\n%s", out)
			}
			if want := pattern("h2g-answer", netReply); vsockLine(out, "g2h-reply") != fmt.Sprintf("%d %s", len(want), sum(want)) {
				t.Errorf("L1's answer: the guest printed %q", vsockLine(out, "g2h-reply"))
			}
			select {
			case b := <-up:
				if want := pattern("up", netUp); string(b) != string(want) {
					t.Errorf("L1 read %d bytes from the guest, want %d of the pattern", len(b), len(want))
				}
			case <-time.After(10 * time.Second):
				t.Error("the guest's connection never reached L1")
			}
		})
	}
}

// checkDeviceThreads reads the seccomp filters of each thread of govmm
// (pid): every thread with a filter of its own (#16: vCPU threads
// "vcpuN", virtio-blk workers "vdX-ioN", virtio-net threads "netN-...":
// the queues' servers and the TAP readers, virtio-vsock queue threads
// "vsock-...") has one filter more than the main thread, each other
// thread none more, and the threads named in want exist.
// TestConfineVCPUThreads and TestVirtioSnapshot check the vCPU and disk
// worker threads the same way.
func checkDeviceThreads(t *testing.T, pid int, want ...string) {
	t.Helper()
	counts, base := threadFilters(t, pid)
	if base < 1 {
		t.Fatalf("the main thread has %d seccomp filters, want the process filter: %v", base, counts)
	}
	own := regexp.MustCompile(`^(vcpu\d+|vd[a-z]-io\d+|net\d+-.*|vsock-.*)$`)
	for name, n := range counts {
		w := base
		if own.MatchString(name) {
			w = base + 1
		}
		if n != w {
			t.Errorf("thread %q: %d seccomp filters, want %d (the main thread has %d)", name, n, w, base)
		}
	}
	for _, name := range want {
		if _, ok := counts[name]; !ok {
			t.Errorf("no thread named %s among %v", name, counts)
		}
	}
	t.Logf("seccomp filters per thread: %v (main thread %d)", counts, base)
}

// netSnapInit serves two TCP connections and powers off.
var netSnapInit = strings.Replace(netInit, "tcpserve 7000 1 ", "tcpserve 7000 2 ", 1)

// tapMAC is the host-side MAC of the TAP netTap in L1.
func tapMAC(t *testing.T) string {
	t.Helper()
	ifi, err := net.InterfaceByName(netTap)
	if err != nil {
		t.Fatalf("the TAP %s: %v", netTap, err)
	}
	return ifi.HardwareAddr.String()
}

// netHostMAC is the host-side MAC govmm gives a TAP it creates for a
// guest with netMAC (virtio/net.HostMAC): netMAC with its first byte 0xfe.
const netHostMAC = "fe:54:00:12:ab:cd"

// TestNetSnapshot snapshots a guest on a TAP after one TCP transfer and
// restores it on a TAP of the same name (created again by the restoring
// govmm): a second transfer carries every byte. The TAP each govmm
// creates has the same host-side MAC, derived from the guest's (so the
// guest's neighbour entry for L1 stays right), and govmm info says so. A
// restore with another MAC is refused.
func TestNetSnapshot(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, netSnapInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			needTun(t)
			ln, err := net.Listen("tcp4", ":7001")
			if err != nil {
				t.Fatal(err)
			}
			serveOnce(t, ln, pattern("h2g-answer", netReply))
			dir := tempSocketDir(t)
			api, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			nf := "tap=" + netTap + ",mac=" + netMAC
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--net", nf, "--cmdline", "console=ttyS0 quiet panic=-1"),
				"vsock-test: listening 7000", func() { hostTap(t) })
			macBefore := tapMAC(t)
			if macBefore != netHostMAC {
				t.Errorf("the TAP govmm created has host-side MAC %s, want %s (derived from the guest's %s)", macBefore, netHostMAC, netMAC)
			}
			r := govmm(t, "info", "--api-socket="+api)
			if !strings.Contains(r.Stdout, "tap="+netTap+" mac="+netMAC+" (TAP created by govmm, host side "+netHostMAC+")") {
				t.Errorf("govmm info does not give the created TAP's host-side MAC %s:\n%s", netHostMAC, r)
			}
			// Under the device, its status and its receive and transmit
			// queues' ring positions and MSI-X vectors, which a stalled
			// transfer's report shows (transferFatal).
			if !regexp.MustCompile(`(?m)^    status 0xf, \d+ handlers and chains in flight\n    q0 size \d+: available \d+, taken \d+, used \d+, interrupt checked at \d+, used_event \d+, avail_event \d+; vector \d+: address 0xfee`).MatchString(r.Stdout) ||
				!strings.Contains(r.Stdout, "    q1 size ") {
				t.Errorf("govmm info does not show virtio-net's queues:\n%s", r)
			}
			tcpTransfer(t, p, "before", 1, nil)
			if r := govmm(t, "snapshot", "--api-socket="+api, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restore := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			r = govmm(t, append(append([]string(nil), restore...), "--net", "tap="+netTap+",mac=52:54:00:00:00:01")...)
			if r.Code != 64 || !strings.Contains(r.Stderr, "mac=") {
				t.Fatalf("restore with another MAC: want exit 64 naming the MAC, got\n%s", r)
			}
			// A control socket for the restored VM too: a failure's
			// report then has its vCPUs' state (transferFatal).
			p = start(t, append(restore, "--net", nf, "--api-socket="+filepath.Join(dir, "restored.sock"))...)
			hostTap(t)
			if after := tapMAC(t); after != macBefore {
				t.Errorf("the TAP the restore created has host-side MAC %s, the one before the snapshot had %s: the guest's neighbour entry for %s names a MAC that is gone", after, macBefore, netHostIP)
			}
			tcpTransfer(t, p, "after", 2, nil)
			p.waitFor("vsock-test: done", 3*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("restored guest: exit %d\n%s", code, p.output())
			}
		})
	}
}
