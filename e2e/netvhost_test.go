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

// L1's side of vhost-net: the kernel's vhost-net and what it needs
// besides tun (vhost, vhost_iotlb, and tap, whose sockets it also
// takes). Each is a GOVMM_* path, so kvmtest copies it into L1.
var vhostNetModuleEnvs = map[string]string{
	"GOVMM_E2E_VHOST_MOD_IOTLB":        "drivers/vhost/vhost_iotlb.ko",
	"GOVMM_E2E_VHOST_MOD_VHOST":        "drivers/vhost/vhost.ko",
	"GOVMM_E2E_VHOST_NET_MOD_TAP":      "drivers/net/tap.ko",
	"GOVMM_E2E_VHOST_NET_MOD_VHOSTNET": "drivers/vhost/vhost_net.ko",
}

var vhostNetModuleOrder = []string{"GOVMM_E2E_VHOST_MOD_IOTLB", "GOVMM_E2E_VHOST_MOD_VHOST",
	"GOVMM_E2E_VHOST_NET_MOD_TAP", "GOVMM_E2E_VHOST_NET_MOD_VHOSTNET"}

func init() { setModuleEnvs(vhostNetModuleEnvs) }

// needVhostNet makes /dev/net/tun and /dev/vhost-net work in L1: it
// loads the modules and makes the nodes where devtmpfs did not.
func needVhostNet(t *testing.T) {
	t.Helper()
	needTun(t)
	loadModules(t, "/sys/class/misc/vhost-net", vhostNetModuleOrder, vhostNetModuleEnvs)
	needMiscNode(t, "/dev/vhost-net", 238) // VHOST_NET_MINOR
}

// vhostWorkerTicks finds the kernel's vhost workers of govmm (pid),
// the tasks "vhost-TID" named after the govmm thread that made itself
// the device file's owner (kernel threads on Linux 6.1, threads of govmm
// from 6.4), and returns the CPU time each has used, in clock ticks (one
// worker per vhost device file).
func vhostWorkerTicks(t *testing.T, pid int) []uint64 {
	t.Helper()
	ours := map[string]bool{}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ours["vhost-"+task.Name()] = true
	}
	comms, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/comm")
	var ticks []uint64
	for _, c := range comms {
		b, err := os.ReadFile(c)
		if err != nil || !ours[strings.TrimSpace(string(b))] {
			continue
		}
		st, err := os.ReadFile(filepath.Join(filepath.Dir(c), "stat"))
		if err != nil {
			continue
		}
		// The fields after the ")" that ends comm: state is field 3,
		// utime 14 and stime 15.
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		s, _ := strconv.ParseUint(f[12], 10, 64)
		ticks = append(ticks, u+s)
	}
	return ticks
}

// checkVhostNet checks, while the guest's data flows, that the kernel's
// vhost-net serves govmm's (pid) receive and transmit queues: govmm has
// pairs /dev/vhost-net files open, a vhost worker per file has run, and
// govmm has none of the threads that serve those queues in userspace
// (the TAP readers "net0-rxN", the queue servers "net0-rxqN" and
// "net0-txN"); the threads it has keep their seccomp filters.
func checkVhostNet(t *testing.T, pid, pairs int) {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == "/dev/vhost-net" {
			n++
		}
	}
	if n != pairs {
		t.Errorf("govmm has %d /dev/vhost-net files open, want %d", n, pairs)
	}
	// The worker's ticks grow as the kernel moves the guest's packets;
	// give a stream that just (re)started a moment to show.
	var ticks []uint64
	busy := 0
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ticks, busy = vhostWorkerTicks(t, pid), 0
		for _, k := range ticks {
			if k > 0 {
				busy++
			}
		}
		if busy > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(ticks) != pairs || busy == 0 {
		t.Errorf("govmm's vhost workers' CPU ticks: %v; want %d workers, at least one that ran", ticks, pairs)
	}
	counts, _ := threadFilters(t, pid)
	userspace := regexp.MustCompile(`^net\d+-(rx|rxq|tx)\d+$`)
	for name := range counts {
		if userspace.MatchString(name) {
			t.Errorf("govmm has a %s thread: the kernel's vhost-net should serve that queue", name)
		}
	}
	checkDeviceThreads(t, pid)
	t.Logf("vhost workers' CPU ticks: %v", ticks)
}

// TestNetVhost is TestNetLinux with vhost=on: the guest pings L1 and
// each side sends the other 4 MiB over TCP and answers 1 MiB, every byte
// checked, while the kernel's vhost-net in L1 serves the queues
// (checkVhostNet). Before vhost-net is loaded, vhost=on is refused
// (exit 64, naming /dev/vhost-net): govmm never falls back to its own
// queues.
func TestNetVhost(t *testing.T) {
	if _, err := os.Stat("/dev/vhost-net"); err != nil {
		needTun(t)
		r := govmm(t, "run", "--kernel", linuxKernel(t), "--memory=128M", "--net", "tap="+netTap+",vhost=on")
		if r.Code != 64 || !strings.Contains(r.Stderr, "/dev/vhost-net") || !strings.Contains(r.Stderr, "vhost_net") {
			t.Fatalf("vhost=on without /dev/vhost-net: want exit 64 naming it and the module, got\n%s", r)
		}
		t.Logf("vhost=on without /dev/vhost-net: exit %d: %s", r.Code, strings.TrimSpace(r.Stderr))
	} else {
		t.Log("/dev/vhost-net was there before the test: the refusal without it is not checked")
	}
	netLinux(t, ",vhost=on", needVhostNet, func(t *testing.T, p *proc) { checkVhostNet(t, p.cmd.Process.Pid, 1) }, nil)
}

// netVhostSnapInit serves three TCP connections and powers off.
var netVhostSnapInit = strings.Replace(netInit, "tcpserve 7000 1 ", "tcpserve 7000 3 ", 1)

// TestNetVhostSnapshot snapshots a guest on vhost=on after one TCP
// transfer, restores it with vhost=on (the rings where the kernel left
// them) for a second, snapshots it again and restores that with
// vhost=off, govmm serving the same rings from the kernel's positions,
// for a third: every byte of each is checked. The guest cannot tell the
// two apart, and a snapshot holds only ring positions, so either restores
// on either.
func TestNetVhostSnapshot(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, netVhostSnapInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			needVhostNet(t)
			ln, err := net.Listen("tcp4", ":7001")
			if err != nil {
				t.Fatal(err)
			}
			serveOnce(t, ln, pattern("h2g-answer", netReply))
			dir := tempSocketDir(t)
			api, snap, snap2 := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap"), filepath.Join(dir, "snap2")
			nf := "tap=" + netTap + ",mac=" + netMAC
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--net", nf+",vhost=on", "--cmdline", "console=ttyS0 quiet panic=-1"),
				"vsock-test: listening 7000", func() { hostTap(t) })
			tcpTransfer(t, p, "before", 1, func() { checkVhostNet(t, p.cmd.Process.Pid, 1) })
			if r := govmm(t, "snapshot", "--api-socket="+api, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restore := append(append([]string{"restore"}, acc...), "--cpus=2", "--memory=512M")
			api2 := filepath.Join(dir, "api2.sock")
			p = start(t, append(restore, "--snapshot="+snap, "--api-socket", api2, "--net", nf+",vhost=on")...)
			hostTap(t)
			tcpTransfer(t, p, "after", 2, func() { checkVhostNet(t, p.cmd.Process.Pid, 1) })
			if r := govmm(t, "snapshot", "--api-socket="+api2, "--dir="+snap2, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot of the restored guest:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("restored guest after snapshot --stop: exit %d\n%s", code, p.output())
			}
			p = start(t, append(restore, "--snapshot="+snap2, "--net", nf)...)
			hostTap(t)
			tcpTransfer(t, p, "again", 3, func() {
				checkDeviceThreads(t, p.cmd.Process.Pid, "net0-rx0", "net0-rxq0", "net0-tx0")
			})
			p.waitFor("vsock-test: done", 3*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("guest restored with vhost=off: exit %d\n%s", code, p.output())
			}
		})
	}
}

// TestNetVhostLiveMigration is TestNetLiveMigration with vhost=on on
// both sides (queues=2: a vhost-net file per pair): the kernel writes
// receive buffers and used rings during the move, which only its dirty
// log (VHOST_F_LOG_ALL, merged into govmm's) shows; `migrate send
// --verify` checks every page the destination got, and every byte of
// both streams is checked.
func TestNetVhostLiveMigration(t *testing.T) {
	netLiveMigration(t, ",vhost=on", needVhostNet, func(t *testing.T, d *proc) { checkVhostNet(t, d.cmd.Process.Pid, 2) })
}
