package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/internal/initramfs"
	"govmm/internal/kvmtest"
	"govmm/internal/linuxguest"
)

// The vsock tests' guest side: the kernel's vsock modules (Debian's cloud
// kernel builds vsock and its virtio transport as modules) and vsockpeer,
// a static Go program built on the host. kvmtest copies both into L1.
const (
	vsockModulesEnv = "GOVMM_E2E_VSOCK_MODULES"
	vsockPeerEnv    = "GOVMM_E2E_VSOCK_PEER"
)

var vsockModules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

func init() {
	if kvmtest.InL1() {
		return
	}
	k := guestKernelPath()
	if k != "" && os.Getenv(vsockModulesEnv) == "" {
		dir := filepath.Join(moduleTree(k), "net", "vmw_vsock")
		if _, err := os.Stat(dir); err == nil {
			os.Setenv(vsockModulesEnv, dir)
		}
	}
	if os.Getenv(vsockPeerEnv) == "" && os.Getenv(vsockModulesEnv) != "" {
		_, file, _, _ := runtime.Caller(0)
		out := filepath.Join(os.TempDir(), "govmm-e2e-vsockpeer")
		build := exec.Command("go", "build", "-o", out, "./e2e/vsockpeer")
		build.Dir = filepath.Dir(filepath.Dir(file))
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build vsockpeer: %v\n%s", err, b)
			return
		}
		os.Setenv(vsockPeerEnv, out)
	}
}

// guestInitrd writes an initramfs with busybox, the virtio modules,
// extra files (initramfs path -> host path) and init as /init.
func guestInitrd(t *testing.T, init string, extra map[string]string) string {
	t.Helper()
	modDir := os.Getenv(virtioModulesEnv)
	if modDir == "" {
		t.Fatal("the kernel's virtio modules were not found next to it")
	}
	kdir := filepath.Dir(filepath.Dir(modDir)) // .../kernel
	ar := initramfs.New()
	bb, err := linuxguest.Busybox()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"/bin/busybox": bb}
	for _, m := range virtioModules {
		files["/lib/modules/"+filepath.Base(m)] = filepath.Join(kdir, m)
	}
	for dst, src := range extra {
		if src == "" {
			t.Fatalf("%s: not found on the host (the kernel's modules or a program the test builds)", dst)
		}
		files[dst] = src
	}
	for dst, src := range files {
		if err := ar.File(dst, src); err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
	}
	ar.Bytes("/init", 0o755, []byte(init))
	ar.Dir("/dev")
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := ar.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	return initrd
}

// vsockInitrd is the virtio initramfs with the vsock modules and
// vsockpeer.
func vsockInitrd(t *testing.T, init string) string {
	t.Helper()
	vsDir := os.Getenv(vsockModulesEnv)
	if vsDir == "" {
		t.Fatalf("%s: the kernel's vsock modules were not found next to it", vsockModulesEnv)
	}
	extra := map[string]string{"/bin/vsockpeer": os.Getenv(vsockPeerEnv)}
	for _, m := range vsockModules {
		extra["/lib/modules/"+m+".ko"] = filepath.Join(vsDir, m+".ko")
	}
	return guestInitrd(t, init, extra)
}

// linuxKernel is the kernel the Linux-guest tests boot.
func linuxKernel(t *testing.T) string {
	t.Helper()
	needLinux(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	return kernel
}

// tempSocketDir is a short directory for Unix sockets (t.TempDir can
// exceed their 108-byte limit).
func tempSocketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// vsockInitHead loads the virtio and vsock drivers and waits for the
// vsock device to bind.
const vsockInitHead = virtioInitHead + `for m in vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
	$B insmod /lib/modules/$m.ko || echo "vsock-test: insmod $m failed"
done
i=0
while ! $B ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ 2>/dev/null | $B grep -q virtio && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
echo "vsock-test: bound device $($B cat /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*/device 2>/dev/null)"
`

// Sizes and seeds of the transfers (vsockpeer builds the same patterns).
const (
	vsockUp     = 1 << 20   // guest to host, on the guest's connection
	vsockDown   = 768 << 10 // host to guest, on the host's
	vsockReply  = 512 << 10 // each side's answer
	vsockGuestP = 6000      // the host port the guest connects to
	vsockHostP  = 5000      // the guest port the host connects to
)

// vsockReady is the line the guest prints once it listens.
var vsockReady = fmt.Sprintf("vsock-test: listening %d", vsockHostP)

// vsockInit serves one host connection and makes one to the host, at the
// same time, then powers off.
var vsockInit = `#!/bin/busybox sh
` + vsockInitHead + fmt.Sprintf(`/bin/vsockpeer serve %d 1 g2h-answer %d &
srv=$!
/bin/vsockpeer dial %d up %d
wait $srv
echo "vsock-test: done"
$B poweroff -f
`, vsockHostP, vsockReply, vsockGuestP, vsockUp)

// hostListen serves the guest's connection to host port vsockGuestP.
func hostListen(t *testing.T, sock string) <-chan []byte {
	t.Helper()
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, vsockGuestP))
	if err != nil {
		t.Fatal(err)
	}
	return serveOnce(t, ln, pattern("h2g-answer", vsockReply))
}

// serveOnce accepts one connection on ln, reads it to EOF, sends what it
// read on the channel, answers with answer and closes. The test's end
// closes the listener and the connection and waits for the goroutine, so
// that it never reports into a finished test (which panics the test
// binary and loses every test after it).
func serveOnce(t *testing.T, ln net.Listener, answer []byte) <-chan []byte {
	return serveOnceWith(t, ln, answer, io.ReadAll)
}

// serveOnceWith is serveOnce reading the connection with read.
func serveOnceWith(t *testing.T, ln net.Listener, answer []byte, read func(io.Reader) ([]byte, error)) <-chan []byte {
	got := make(chan []byte, 1)
	done := make(chan struct{})
	var mu sync.Mutex
	var conn net.Conn
	ending := false
	t.Cleanup(func() {
		mu.Lock()
		ending = true
		ln.Close()
		if conn != nil {
			conn.Close()
		}
		mu.Unlock()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		mu.Lock()
		conn = c
		if ending {
			c.Close()
		}
		mu.Unlock()
		defer c.Close()
		b, err := read(c)
		mu.Lock()
		report := err != nil && !ending
		mu.Unlock()
		if report {
			t.Errorf("host side of the guest's connection: read: %v", err)
		}
		got <- b
		c.Write(answer)
	}()
	return got
}

// hostConnect connects to the guest's port through the device's socket,
// sends data, half-closes and returns the guest's answer.
func hostConnect(t *testing.T, sock string, port int, data []byte, half bool) (net.Conn, []byte) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("connect to the vsock socket: %v", err)
	}
	fmt.Fprintf(c, "CONNECT %d\n", port)
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		c.Close()
		t.Fatalf("CONNECT %d: got %q, %v; want OK <port>", port, line, err)
	}
	if _, err := c.Write(data); err != nil {
		t.Fatalf("send to the guest: %v", err)
	}
	if !half {
		return c, nil
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read the guest's answer: %v", err)
	}
	c.Close()
	return nil, b
}

// bootGuest starts govmm with args and waits for ready in its output,
// retrying once a boot the substrate broke (a stall, a triple fault).
// started, if not nil, runs after each start (to configure a TAP govmm
// creates); a retry removes the control socket the killed run left.
func bootGuest(t *testing.T, args []string, ready string, started func()) *proc {
	t.Helper()
	return bootGuestFresh(t, args, ready, nil, started)
}

// bootGuestFresh is bootGuest that also calls fresh, if not nil, before
// each start (to write a disk image a retried boot must find as it was).
func bootGuestFresh(t *testing.T, args []string, ready string, fresh, started func()) *proc {
	t.Helper()
	var p *proc
	for attempt := 1; ; attempt++ {
		if fresh != nil {
			fresh()
		}
		p = start(t, args...)
		if started != nil {
			started()
		}
		err := p.waitProgress(ready, 5*time.Minute, 90*time.Second)
		if err == nil {
			return p
		}
		if attempt > 1 {
			t.Fatal(err)
		}
		t.Logf("RETRY after a failed boot (the substrate; see bootRetryingSubstrate): %v", err)
		p.cmd.Process.Kill()
		<-p.done
		for i, a := range args {
			if a == "--api-socket" && i+1 < len(args) {
				os.Remove(args[i+1])
			}
		}
	}
}

// TestVsockLinux boots Linux with a virtio-vsock device on each
// accelerator. The guest's vsockpeer connects to host port 6000, which
// the test serves on <socket>_6000, while the test connects to the
// guest's port 5000 through the socket with CONNECT; each side sends a
// pattern, half-closes and answers another. Both sides check every
// byte: a lost, duplicated or reordered byte fails the test.
func TestVsockLinux(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := vsockInitrd(t, vsockInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			dir := tempSocketDir(t)
			sock := filepath.Join(dir, "v.sock")
			up := hostListen(t, sock)
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--vsock", "cid=7,socket="+sock, "--cmdline", "console=ttyS0 quiet panic=-1"), vsockReady, nil)
			// The driver filled the receive and event queues: their
			// threads have their own seccomp filter (#16). The guest
			// waits for the host's connection meanwhile.
			checkDeviceThreads(t, p.cmd.Process.Pid, "vsock-rxq", "vsock-evq")
			down := pattern("down", vsockDown)
			_, answer := hostConnect(t, sock, vsockHostP, down, true)
			p.waitFor("vsock-test: done", 3*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("govmm exit %d\n%s", code, p.output())
			}
			checkVsockExchange(t, p.output(), down, answer, up, "the host socket")
		})
	}
}

// vsockSnapInit serves two host connections and powers off.
var vsockSnapInit = `#!/bin/busybox sh
` + vsockInitHead + fmt.Sprintf(`/bin/vsockpeer serve %d 2 g2h-answer %d
echo "vsock-test: done"
$B poweroff -f
`, vsockHostP, vsockReply)

// TestVsockSnapshot snapshots a guest with a host connection open and
// restores it: the connection does not survive (the device sends the
// driver TRANSPORT_RESET, and the guest's read fails), and a new
// connection after the restore carries data both ways. A restore without
// the vsock device, or with another CID, is refused.
func TestVsockSnapshot(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := vsockInitrd(t, vsockSnapInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			dir := tempSocketDir(t)
			sock, api, snap := filepath.Join(dir, "v.sock"), filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			vs := "cid=9,socket=" + sock
			p := bootGuest(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", api, "--vsock", vs, "--cmdline", "console=ttyS0 quiet panic=-1"), vsockReady, nil)
			// A connection that is open at the snapshot.
			c, _ := hostConnect(t, sock, vsockHostP, []byte("before the snapshot"), false)
			defer c.Close()
			p.waitFor("vsock-test: accepted 1", time.Minute)
			if r := govmm(t, "snapshot", "--api-socket="+api, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restore := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			for _, bad := range []struct{ args []string }{{nil}, {[]string{"--vsock", "cid=10,socket=" + sock}}} {
				r := govmm(t, append(append([]string(nil), restore...), bad.args...)...)
				if r.Code != 64 || !strings.Contains(r.Stderr, "virtio") {
					t.Fatalf("restore with %q: want exit 64 naming the virtio devices, got\n%s", bad.args, r)
				}
			}
			p = start(t, append(restore, "--vsock", vs)...)
			p.waitFor("vsock-test: lost 1", 2*time.Minute)
			down := pattern("after", vsockDown)
			_, answer := hostConnect(t, sock, vsockHostP, down, true)
			checkVsockAfterRestore(t, p, down, answer)
		})
	}
}

// checkVsockExchange checks what vsockInit's guest and the host side
// exchanged: the guest bound device 19, got the host's pattern (down)
// and the host's answer, the host got the guest's answer on its
// connection (answer) and the guest's own pattern on up, within 10 s, at
// listener (where the guest's connection lands).
func checkVsockExchange(t *testing.T, out string, down, answer []byte, up <-chan []byte, listener string) {
	t.Helper()
	check := func(what, key string, want []byte) {
		t.Helper()
		if got, w := vsockLine(out, key), fmt.Sprintf("%d %s", len(want), sum(want)); got != w {
			t.Errorf("%s: the guest printed %q, want %q\n%s", what, got, w, out)
		}
	}
	if !strings.Contains(out, "vsock-test: bound device 0x0013") {
		t.Errorf("Linux's vsock driver did not bind a virtio device 19:\n%s", out)
	}
	check("host to guest", "h2g-recv-1", down)
	check("host's answer to the guest", "g2h-reply", pattern("h2g-answer", vsockReply))
	if want := pattern("g2h-answer-1", vsockReply); string(answer) != string(want) {
		t.Errorf("the guest's answer on the host's connection: %d bytes, want %d of the pattern", len(answer), len(want))
	}
	select {
	case b := <-up:
		if want := pattern("up", vsockUp); string(b) != string(want) {
			t.Errorf("%s read %d bytes from the guest's connection, want %d of the pattern", listener, len(b), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the guest's connection to host port %d never reached %s", vsockGuestP, listener)
	}
}

// checkVsockAfterRestore waits for a restored vsock guest's end and
// checks the connection it took after the restore: the host's pattern
// down arrived whole, and the host got the guest's answer.
func checkVsockAfterRestore(t *testing.T, p *proc, down, answer []byte) {
	t.Helper()
	p.waitFor("vsock-test: done", 3*time.Minute)
	if code := p.exit(time.Minute); code != 0 {
		t.Fatalf("restored guest: exit %d\n%s", code, p.output())
	}
	out := p.output()
	if got, w := vsockLine(out, "h2g-recv-2"), fmt.Sprintf("%d %s", len(down), sum(down)); got != w {
		t.Errorf("after the restore the guest printed %q, want %q\n%s", got, w, out)
	}
	if want := pattern("g2h-answer-2", vsockReply); string(answer) != string(want) {
		t.Errorf("the guest's answer after the restore: %d bytes, want %d of the pattern", len(answer), len(want))
	}
}

// vsockLine returns the value after "vsock-test: key ".
func vsockLine(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if _, v, ok := strings.Cut(l, "vsock-test: "+key+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
