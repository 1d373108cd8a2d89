package e2e

import (
	"bytes"
	bin "encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"govmm/internal/linuxguest"
)

// proc is a govmm process the test talks to while it runs.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
	done  chan struct{}
	err   error
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(binary, args...))
}

// startCmd starts cmd as a proc whose output is collected, killed when
// the test ends.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, done: make(chan struct{}), cmd: cmd}
	p.cmd.Stdout, p.cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	in, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = in
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitFor waits until the output contains s.
func (p *proc) waitFor(s string, d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), s) {
			return
		}
		select {
		case <-p.done:
			if strings.Contains(p.output(), s) {
				return
			}
			p.t.Fatalf("%s exited (%v) before printing %q:\n%s", strings.Join(p.cmd.Args, " "), p.err, s, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Where the threads wait tells a hung VMM from a quiet guest (see exit).
	p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
	p.t.Fatalf("%s: no %q within %v; its output, with the goroutine dump SIGQUIT asked for:\n%s", strings.Join(p.cmd.Args, " "), s, d, p.output())
}

// errStalled is waitProgress's error for a process that printed nothing
// for its quiet bound.
var errStalled = errors.New("stalled: no output")

// waitProgress waits until the output contains s, for at most d, and
// gives up early with errStalled when the process prints nothing for
// quiet, or with linuxguest.ErrTripleFault when it ended in a triple fault.
// Other failures (another exit, the whole bound) are fatal.
func (p *proc) waitProgress(s string, d, quiet time.Duration) error {
	p.t.Helper()
	// Quiet time is counted in polls, not read off the clock, which on
	// the nested substrate has been seen to jump (see linuxguest.Boot).
	const poll = 50 * time.Millisecond
	deadline := time.Now().Add(d)
	lastLen, quietPolls := -1, 0
	for time.Now().Before(deadline) {
		out := p.output()
		if strings.Contains(out, s) {
			return nil
		}
		if len(out) != lastLen {
			lastLen, quietPolls = len(out), 0
		} else if quietPolls++; time.Duration(quietPolls)*poll >= quiet {
			// The goroutine dump says whether the vCPUs sat in KVM_RUN
			// (the guest, or the substrate under it) or waited in the VMM.
			p.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
			}
			return fmt.Errorf("%w for %v while waiting for %q; the output, with the goroutine dump SIGQUIT asked for:\n%s", errStalled, quiet, s, p.output())
		}
		select {
		case <-p.done:
			out := p.output()
			if strings.Contains(out, s) {
				return nil
			}
			if linuxguest.IsTripleFault(out) {
				return fmt.Errorf("%w: %s exited before printing %q:\n%s", linuxguest.ErrTripleFault, strings.Join(p.cmd.Args, " "), s, out)
			}
			p.t.Fatalf("%s exited (%v) before printing %q:\n%s", strings.Join(p.cmd.Args, " "), p.err, s, out)
		case <-time.After(poll):
		}
	}
	p.t.Fatalf("%s: no %q within %v:\n%s", strings.Join(p.cmd.Args, " "), s, d, p.output())
	return nil
}

// exit waits for the process to end and returns its exit status.
func (p *proc) exit(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		// A Go process dumps its goroutines on SIGQUIT: where the vCPU
		// and device threads wait is what tells a hung VMM from a
		// guest that does nothing.
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		p.t.Fatalf("%s did not end within %v; its output, with the goroutine dump SIGQUIT asked for:\n%s",
			strings.Join(p.cmd.Args, " "), d, p.output())
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return 0
}

func waitPath(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

// memwriter starts the guest that rewrites 32 MiB at CPL3 until a key.
func memwriter(t *testing.T, acc []string, sock string) *proc {
	t.Helper()
	args := append([]string{"run"}, acc...)
	args = append(args, "--kernel", guestPath(t, "testguest"), "--memory", "128M",
		"--cmdline", "test=memwrite mb=32", "--api-socket", sock)
	p := start(t, args...)
	p.waitFor("memwrite: running", time.Minute)
	waitPath(t, sock)
	return p
}

// verify asks the memwrite guest to check every page and expects success.
func verify(t *testing.T, p *proc) {
	t.Helper()
	time.Sleep(300 * time.Millisecond) // let it write a while longer
	io.WriteString(p.stdin, "v")
	if code := p.exit(time.Minute); code != 33 || !strings.Contains(p.output(), "bad=0") {
		t.Fatalf("memwrite guest after the move: exit %d, want 33 and bad=0:\n%s", code, p.output())
	}
}

// migrateLive sends the VM behind the control socket sock (process s) to
// the destination d listening at mig, and expects the source to end.
func migrateLive(t *testing.T, sock, mig string, s, d *proc) {
	t.Helper()
	r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+mig)
	if r.Code != 0 || !strings.Contains(r.Stdout, "migrated: total") {
		t.Fatalf("migrate send: %s\nsource:\n%s\ndestination:\n%s", r, s.output(), d.output())
	}
	t.Log(strings.TrimSpace(r.Stdout[strings.LastIndex(r.Stdout, "migrated:"):]))
	if code := s.exit(30 * time.Second); code != 0 {
		t.Fatalf("source after migration: exit %d:\n%s", code, s.output())
	}
}

// TestLiveMigration moves a guest that keeps writing memory between two
// govmm processes, on each accelerator and across them; the guest then
// checks every page it wrote against its own counters.
func TestLiveMigration(t *testing.T) {
	all := accels(t)
	for _, src := range all {
		for _, dst := range all {
			t.Run(accelName(src)+"-to-"+accelName(dst), func(t *testing.T) {
				dir := t.TempDir()
				sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
				s := memwriter(t, src, sock)
				d := start(t, append(append([]string{"migrate", "receive"}, dst...), "--listen", "unix:"+mig)...)
				waitPath(t, mig)
				migrateLive(t, sock, mig, s, d)
				verify(t, d)
			})
		}
	}
}

// TestMigrationFaults drops the connection at each phase: the source keeps
// running untouched (its guest still verifies every page), and a
// destination that loses its source starts nothing.
func TestMigrationFaults(t *testing.T) {
	acc := accels(t)[0]
	dir := t.TempDir()
	sock := filepath.Join(dir, "src.sock")
	s := memwriter(t, acc, sock)

	// A destination that is not there.
	r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+filepath.Join(dir, "nobody.sock"))
	if r.Code == 0 || !strings.Contains(r.Stderr, "keeps running here") {
		t.Fatalf("migrate to nobody: %s", r)
	}
	// Destinations that hang up after n bytes: in the hello, in the pages,
	// and after everything but before confirming.
	for _, n := range []int{3, 200 << 10, -1} {
		mig := filepath.Join(dir, "fake.sock")
		os.Remove(mig)
		ln, err := net.Listen("unix", mig)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			if n > 0 {
				io.CopyN(io.Discard, c, int64(n))
				return
			}
			// Read the whole stream up to its final 'D' frame, then
			// hang up without an acknowledgement.
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			readStream(c)
		}()
		r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+mig)
		ln.Close()
		if r.Code == 0 || !strings.Contains(r.Stderr, "keeps running here") {
			t.Fatalf("destination hanging up after %d bytes: %s", n, r)
		}
		info := govmm(t, "info", "--api-socket", sock)
		if !strings.Contains(info.Stdout, "state:   running") {
			t.Fatalf("source after a failed migration (hang-up after %d bytes) is not running:\n%s", n, info)
		}
	}
	// The memwrite guest polls the UART's line status between batches:
	// info counts those exits against the serial port.
	info := govmm(t, "info", "--api-socket", sock)
	if !regexp.MustCompile(`(?m)^  pio  uart0\s+0x3f8\s+[1-9]\d* reads`).MatchString(info.Stdout) {
		t.Errorf("govmm info does not count the guest's serial port reads:\n%s", info.Stdout)
	}
	verify(t, s)

	// A destination whose source dies mid-stream cleans up and runs nothing.
	mig := filepath.Join(dir, "dst.sock")
	d := start(t, append(append([]string{"migrate", "receive"}, acc...), "--listen", "unix:"+mig)...)
	waitPath(t, mig)
	c, err := net.Dial("unix", mig)
	if err != nil {
		t.Fatal(err)
	}
	hello := []byte(`{"version":1,"mem_size":134217728,"cpus":1}`)
	var hdr [5]byte
	hdr[0] = 'H'
	bin.LittleEndian.PutUint32(hdr[1:], uint32(len(hello)))
	c.Write(append(hdr[:], hello...))
	c.Write([]byte{'P', 1, 0, 0, 0, 0, 0x10}) // a page frame cut short
	c.Close()
	if code := d.exit(30 * time.Second); code == 0 || !strings.Contains(d.output(), "nothing was started") {
		t.Fatalf("destination after its source died: exit %d:\n%s", code, d.output())
	}
}

// readStream consumes one migration stream frame by frame (migrate's wire
// format) through its final 'D'.
func readStream(r io.Reader) error {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:1]); err != nil {
			return err
		}
		switch hdr[0] {
		case 'D':
			return nil
		case 'H', 'S':
			if _, err := io.ReadFull(r, hdr[1:]); err != nil {
				return err
			}
			io.CopyN(io.Discard, r, int64(bin.LittleEndian.Uint32(hdr[1:])))
		case 'P':
			if _, err := io.ReadFull(r, hdr[1:]); err != nil {
				return err
			}
			io.CopyN(io.Discard, r, int64(bin.LittleEndian.Uint32(hdr[1:]))*(8+4096))
		default:
			return io.ErrUnexpectedEOF
		}
	}
}
