package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// L1's side of vhost-vsock: the kernel's vhost-vsock and the vsock core
// it needs, which L1 does not load by itself. Each is a GOVMM_* path, so
// kvmtest copies it into L1; vhostModuleOrder is their load order.
var vhostModuleEnvs = map[string]string{
	"GOVMM_E2E_VHOST_MOD_VSOCK":        "net/vmw_vsock/vsock.ko",
	"GOVMM_E2E_VHOST_MOD_VSOCK_COMMON": "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
	"GOVMM_E2E_VHOST_MOD_IOTLB":        "drivers/vhost/vhost_iotlb.ko",
	"GOVMM_E2E_VHOST_MOD_VHOST":        "drivers/vhost/vhost.ko",
	"GOVMM_E2E_VHOST_MOD_VHOST_VSOCK":  "drivers/vhost/vhost_vsock.ko",
}

var vhostModuleOrder = []string{"GOVMM_E2E_VHOST_MOD_VSOCK", "GOVMM_E2E_VHOST_MOD_VSOCK_COMMON",
	"GOVMM_E2E_VHOST_MOD_IOTLB", "GOVMM_E2E_VHOST_MOD_VHOST", "GOVMM_E2E_VHOST_MOD_VHOST_VSOCK"}

func init() { setModuleEnvs(vhostModuleEnvs) }

// needVhostVsock loads vhost-vsock in L1 and makes /dev/vhost-vsock
// where devtmpfs did not.
func needVhostVsock(t *testing.T) {
	t.Helper()
	loadModules(t, "/sys/class/misc/vhost-vsock", vhostModuleOrder, vhostModuleEnvs)
	needMiscNode(t, "/dev/vhost-vsock", 241) // VHOST_VSOCK_MINOR
}

// vsockFD is an AF_VSOCK socket in L1, the host side of vhost-vsock.
// Every call is bounded by the socket's send and receive timeouts, and
// the test's end closes it.
func vsockSocket(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("AF_VSOCK socket in L1: %v", err)
	}
	tv := unix.Timeval{Sec: 180}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { unix.Close(fd) }) })
	return fd
}

// acceptUntil accepts one connection on listening socket ln, or gives up
// when stop closes. An interrupted accept is made again: with
// SO_RCVTIMEO set, accept(2) is not restarted after a signal, and the Go
// runtime's preemption signal interrupted one that CI then never saw
// accept (2026-12-07: the guest's dial, connected in L1's kernel, waited
// for ever for an answer).
func acceptUntil(ln int, stop <-chan struct{}) (int, error) {
	for {
		select {
		case <-stop:
			return -1, errors.New("the test ended first")
		default:
		}
		fds := []unix.PollFd{{Fd: int32(ln), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err == unix.EINTR || err == nil && n == 0 {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("poll: %w", err)
		}
		c, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		return c, err
	}
}

func vsockWriteAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func vsockReadAll(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// vhostListen serves one guest connection to host port vsockGuestP over
// AF_VSOCK: reads it to EOF, answers, closes. The result arrives on the
// channel (nil on failure, which is reported).
func vhostListen(t *testing.T) <-chan []byte {
	t.Helper()
	return vhostListenOn(t, vsockGuestP, pattern("h2g-answer", vsockReply))
}

// vhostListenOn is vhostListen on port, answering answer.
func vhostListenOn(t *testing.T, port uint32, answer []byte) <-chan []byte {
	t.Helper()
	ln := vsockSocket(t)
	if err := unix.Bind(ln, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		t.Fatalf("bind AF_VSOCK port %d: %v", port, err)
	}
	if err := unix.Listen(ln, 4); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	errs := make(chan error, 1)
	// The accept waits in poll steps until the test ends, then the
	// listener is closed (vsockSocket's cleanup, after this one): a
	// thread still blocked in accept would keep the port bound for its
	// SO_RCVTIMEO, and the next test's bind fail.
	stop, listening := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop); <-listening })
	go func() {
		c, err := acceptUntil(ln, stop)
		close(listening)
		if err != nil {
			errs <- fmt.Errorf("accept: %w", err)
			got <- nil
			return
		}
		defer unix.Close(c)
		tv := unix.Timeval{Sec: 180}
		unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		b, err := vsockReadAll(c)
		if err != nil {
			errs <- fmt.Errorf("read: %w", err)
			got <- nil
			return
		}
		got <- b
		if err := vsockWriteAll(c, answer); err != nil {
			errs <- fmt.Errorf("answer: %w", err)
		}
		errs <- nil
	}()
	t.Cleanup(func() {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("L1's listener on AF_VSOCK port %d: %v", port, err)
			}
		default:
		}
	})
	return got
}

// vhostConnect connects to the guest's port over AF_VSOCK, sends data,
// and with half shuts its write side and returns the guest's answer;
// without, it returns the open socket.
func vhostConnect(t *testing.T, cid uint32, port int, data []byte, half bool) (int, []byte) {
	t.Helper()
	return vhostConnectMid(t, cid, port, data, half, nil)
}

// vhostConnectMid is vhostConnect calling mid, if not nil, once half of
// data is sent.
func vhostConnectMid(t *testing.T, cid uint32, port int, data []byte, half bool, mid func()) (int, []byte) {
	t.Helper()
	fd := vsockSocket(t)
	var err error
	for i := 0; i < 50; i++ {
		if err = unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: uint32(port)}); err != unix.EINTR {
			break
		}
	}
	if err != nil {
		t.Fatalf("AF_VSOCK connect to %d:%d: %v", cid, port, err)
	}
	first := data
	if mid != nil {
		first = data[:len(data)/2]
	}
	if err := vsockWriteAll(fd, first); err != nil {
		t.Fatalf("send to the guest: %v", err)
	}
	if mid != nil {
		mid()
		if err := vsockWriteAll(fd, data[len(first):]); err != nil {
			t.Fatalf("send to the guest after the middle: %v", err)
		}
	}
	if !half {
		return fd, nil
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	b, err := vsockReadAll(fd)
	if err != nil {
		t.Fatalf("read the guest's answer: %v", err)
	}
	return -1, b
}

// vhostThreads checks that no queue thread of govmm serves the kernel's
// queues: the event queue's server is there with its own filter, the
// receive and transmit queues' are not (the kernel's worker serves them).
func vhostThreads(t *testing.T, pid int) {
	t.Helper()
	checkDeviceThreads(t, pid, "vsock-evq")
	counts, _ := threadFilters(t, pid)
	for _, n := range []string{"vsock-rxq", "vsock-txq"} {
		if _, ok := counts[n]; ok {
			t.Errorf("govmm has a %s thread: the kernel's vhost-vsock should serve that queue", n)
		}
	}
}

// The port and sizes of the exchange after the driver was reloaded.
const (
	vhostAgainP     = 6001
	vhostAgain      = 256 << 10
	vhostAgainReply = 128 << 10
)

// vhostInit is vsockInit, then the vsock transport driver unloaded and
// loaded again (a driver reset: the device stops the kernel's queues,
// then hands it the new ones) and one more connection to the host.
var vhostInit = `#!/bin/busybox sh
` + vsockInitHead + fmt.Sprintf(`/bin/vsockpeer serve %d 1 g2h-answer %d &
srv=$!
/bin/vsockpeer dial %d up %d
wait $srv
i=0
until $B rmmod vmw_vsock_virtio_transport 2>/dev/null || [ $i -ge 30 ]; do $B sleep 1; i=$((i+1)); done
$B insmod /lib/modules/vmw_vsock_virtio_transport.ko || echo "vsock-test: insmod again failed"
i=0
while ! $B ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | $B grep -q virtio && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
echo "vsock-test: reloaded after $i"
/bin/vsockpeer dial %d again %d &
d=$!
# A dial still running after 30 s says where each of its threads waits
# in the kernel (once, a dial after the reload never ended).
i=0
while $B kill -0 $d 2>/dev/null && [ $i -lt 300 ]; do $B sleep 0.1; i=$((i+1)); done
if $B kill -0 $d 2>/dev/null; then
	for t in /proc/$d/task/*; do
		echo "vsock-test: dial stuck: $t $($B cat $t/wchan) $($B cat $t/stack 2>/dev/null | $B tr '\n' ' ')"
	done
fi
wait $d
echo "vsock-test: done"
$B poweroff -f
`, vsockHostP, vsockReply, vsockGuestP, vsockUp, vhostAgainP, vhostAgain)

// vsockLines returns every value after "vsock-test: key ".
func vsockLines(out, key string) []string {
	var vs []string
	for _, l := range strings.Split(out, "\n") {
		if _, v, ok := strings.Cut(l, "vsock-test: "+key+" "); ok {
			vs = append(vs, strings.TrimSpace(v))
		}
	}
	return vs
}

// TestVhostVsockLinux boots Linux with --vsock cid=7 (the kernel's
// vhost-vsock in L1) on each accelerator. The guest's vsockpeer connects
// to host port 6000, which L1 serves over AF_VSOCK, while the test
// connects over AF_VSOCK to the guest's port 5000; each side sends a
// pattern, half-closes and answers another, and both check every byte.
// The VM is paused and resumed in the middle of the host's pattern; then
// the guest unloads and reloads its vsock driver (a reset of the device)
// and connects to the host once more.
func TestVhostVsockLinux(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := vsockInitrd(t, vhostInit)
	needVhostVsock(t)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			up := vhostListen(t)
			again := vhostListenOn(t, vhostAgainP, pattern("again-answer", vhostAgainReply))
			api := filepath.Join(tempSocketDir(t), "api.sock")
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--vsock", "cid=7", "--cmdline", "console=ttyS0 quiet panic=-1"), vsockReady, nil)
			vhostThreads(t, p.cmd.Process.Pid)
			down := pattern("down", vsockDown)
			// Half-way, a pause stops the kernel's queues and takes
			// their positions; the resume starts them again from
			// there. No byte may be lost or repeated.
			_, answer := vhostConnectMid(t, 7, vsockHostP, down, true, func() {
				for _, c := range []string{"pause", "resume"} {
					if r := govmm(t, c, "--api-socket="+api); r.Code != 0 {
						t.Fatalf("govmm %s:\n%s\n--- guest:\n%s", c, r, p.output())
					}
				}
			})
			p.waitFor("vsock-test: done", 3*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("govmm exit %d\n%s", code, p.output())
			}
			out := p.output()
			checkVsockExchange(t, out, down, answer, up, "L1's AF_VSOCK listener")
			// After the driver's reset and a new DRIVER_OK.
			if !strings.Contains(out, "vsock-test: reloaded") || strings.Contains(out, "insmod again failed") {
				t.Errorf("the guest did not reload its vsock driver:\n%s", out)
			}
			replies := vsockLines(out, "g2h-reply")
			if w := pattern("again-answer", vhostAgainReply); len(replies) != 2 || replies[1] != fmt.Sprintf("%d %s", len(w), sum(w)) {
				t.Errorf("after the driver reload the guest read %q, want a second reply of %d bytes\n%s", replies, len(w), out)
			}
			select {
			case b := <-again:
				if want := pattern("again", vhostAgain); string(b) != string(want) {
					t.Errorf("after the driver reload L1 read %d bytes, want %d of the pattern", len(b), len(want))
				}
			case <-time.After(10 * time.Second):
				t.Errorf("the guest's connection after the driver reload never reached L1's listener on port %d", vhostAgainP)
			}
		})
	}
}

// TestVhostVsockSnapshot snapshots a guest on vhost-vsock with an
// AF_VSOCK connection from L1 open, and restores it: the guest hears
// TRANSPORT_RESET on the event queue and its connection fails, and a
// new connection carries data both ways. A restore with the hybrid
// backend, or with another CID, is refused, and so are live migration
// and a second VM with the same CID.
func TestVhostVsockSnapshot(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := vsockInitrd(t, vsockSnapInit)
	needVhostVsock(t)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			dir := tempSocketDir(t)
			api, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--vsock", "cid=9", "--cmdline", "console=ttyS0 quiet panic=-1"), vsockReady, nil)
			// A second VM cannot take the CID this one holds in the
			// host kernel: exit 64 naming it, before any guest runs.
			if r := govmm(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd,
				"--memory=512M", "--vsock", "cid=9")...); r.Code != 64 || !strings.Contains(r.Stderr, "another VM") {
				t.Errorf("a second VM with cid=9: want exit 64 saying another VM has it, got\n%s", r)
			}
			// A connection that is open at the snapshot.
			vhostConnect(t, 9, vsockHostP, []byte("before the snapshot"), false)
			p.waitFor("vsock-test: accepted 1", time.Minute)
			// Live migration is refused, naming the reason, and the
			// guest runs on: the kernel writes guest memory outside
			// govmm's dirty log.
			mig := filepath.Join(dir, "mig.sock")
			ln, err := net.Listen("unix", mig)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				if c, err := ln.Accept(); err == nil {
					io.Copy(io.Discard, c)
					c.Close()
				}
			}()
			r := govmm(t, "migrate", "send", "--api-socket", api, "--to", "unix:"+mig)
			ln.Close()
			if r.Code == 0 || !strings.Contains(r.Stderr, "vhost") {
				t.Fatalf("live migration of a guest on vhost-vsock: want a refusal naming vhost, got\n%s", r)
			}
			if r := govmm(t, "snapshot", "--api-socket="+api, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restore := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			for _, bad := range [][]string{{"--vsock", "cid=10"}, {"--vsock", "cid=9,socket=" + filepath.Join(dir, "v.sock")}} {
				r := govmm(t, append(append([]string(nil), restore...), bad...)...)
				if r.Code != 64 || !strings.Contains(r.Stderr, "virtio") {
					t.Fatalf("restore with %q: want exit 64 naming the virtio devices, got\n%s", bad, r)
				}
			}
			p = start(t, append(restore, "--vsock", "cid=9")...)
			p.waitFor("vsock-test: lost 1", 2*time.Minute)
			vhostThreads(t, p.cmd.Process.Pid)
			down := pattern("after", vsockDown)
			_, answer := vhostConnect(t, 9, vsockHostP, down, true)
			checkVsockAfterRestore(t, p, down, answer)
		})
	}
}

// TestAcceptUntil: the AF_VSOCK listeners' accept (here on a Unix socket,
// with the same SO_RCVTIMEO) takes a connection that comes after a few
// polls, and gives up when the test ends without one.
func TestAcceptUntil(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.sock")
	ln, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	tv := unix.Timeval{Sec: 180}
	unix.SetsockoptTimeval(ln, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(ln, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(ln, 1); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		if c, err := net.Dial("unix", path); err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	stop := make(chan struct{})
	c, err := acceptUntil(ln, stop)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	unix.Close(c)

	close(stop)
	done := make(chan error, 1)
	go func() { _, err := acceptUntil(ln, stop); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("accepted with no client, after the test ended")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("acceptUntil did not give up within 5 s of its stop")
	}
}
