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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"govmm/internal/linuxguest"
	"govmm/internal/nested"
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
	mark := nested.ShutdownMark()
	go func() {
		p.err = p.cmd.Wait()
		// A triple fault leaves no vCPU state; L1's trace of the
		// shutdown exit says where it happened (and whose failure it
		// was), so it goes with the output every failure prints.
		p.mu.Lock()
		if linuxguest.IsTripleFault(p.out.String()) {
			p.out.WriteString(nested.ShutdownExits(mark, nested.GuestRAM(p.cmd.Args)))
		}
		p.mu.Unlock()
		close(p.done)
	}()
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
	var w quietWatch
	for time.Now().Before(deadline) {
		out := p.output()
		if strings.Contains(out, s) {
			return
		}
		if diag := w.substrate(p, len(out), out, 50*time.Millisecond); diag != "" {
			p.substrateFatal(diag, "printing "+strconv.Quote(s))
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
	vcpus := p.quit()
	p.t.Fatalf("%s: no %q within %v; its output, with the goroutine dump SIGQUIT asked for:\n%s%s", strings.Join(p.cmd.Args, " "), s, d, p.output(), vcpus)
}

// quietWatch follows a wait's polls of a process and asks whether the
// nested substrate's known failure holds the guest's vCPUs: after each
// linuxguest.StallCheckEvery that the wait's progress (the output's
// length, or bytes moved) stands still, and at once when the guest
// reports a CPU of its own stuck (a failure that holds one vCPU while the
// others run shows that way: their soft-lockup and RCU-stall reports keep
// the console from going quiet). Such a test then fails at once, with
// the diagnosis, and runs again (internal/kvmtest), rather than waiting
// out its bound. Quiet time is counted in polls, not read off L1's clock,
// which has been seen to jump.
type quietWatch struct {
	last    int  // the progress at the last poll
	polls   int  // polls since it last grew
	scanned int  // how much of the output was searched for stall reports
	report  bool // a stall report came since the last ask
}

// guestStallReports begin the lines a Linux guest prints when one of its
// CPUs stops answering.
var guestStallReports = []string{"soft lockup - CPU#", "detected stalls on CPUs", "hard LOCKUP"}

// due takes one poll: progress n, the output so far (or "" where the
// progress is not the output), poll apart from the last; it says whether
// the substrate is to be asked now.
func (w *quietWatch) due(n int, out string, poll time.Duration) bool {
	if len(out) < w.scanned {
		w.scanned = 0
	}
	// From a little before the new output: a report cut between polls.
	from := max(w.scanned-32, 0)
	for _, r := range guestStallReports {
		if i := strings.Index(out[from:], r); i >= 0 && from+i+len(r) > w.scanned {
			w.report = true
		}
	}
	w.scanned = len(out)
	if w.report {
		w.report, w.polls, w.last = false, 0, n
		return true
	}
	if n != w.last {
		w.last, w.polls = n, 0
		return false
	}
	w.polls++
	return w.polls%int(linuxguest.StallCheckEvery/poll) == 0
}

// substrate is due, and then linuxguest.SubstrateStall for p: the
// diagnosis when the substrate holds the vCPUs, else "".
func (w *quietWatch) substrate(p *proc, n int, out string, poll time.Duration) string {
	if !w.due(n, out, poll) {
		return ""
	}
	return linuxguest.SubstrateStall(p.cmd.Process.Pid)
}

// stallCheck is one poll, poll apart from the last, of a wait on p that
// is not one of proc's own (a test's loop over the control socket or the
// output): with the guest's progress n (where the output is not all of
// it), it fails the test as proc's waits do when the substrate's known
// failure holds the guest, which the wait then does not sit out.
func (p *proc) stallCheck(w *quietWatch, n int, poll time.Duration, doing string) {
	p.t.Helper()
	out := p.output()
	if diag := w.substrate(p, n+len(out), out, poll); diag != "" {
		p.substrateFatal(diag, doing)
	}
}

// substrateFatal ends a wait on what the process was expected to do
// (doing) whose guest the substrate stalled: the process goes as quit
// ends it, and the test fails with diag, which names the substrate.
func (p *proc) substrateFatal(diag, doing string) {
	p.t.Helper()
	vcpus := p.quit()
	p.t.Fatalf("%s: stalled before %s: the nested substrate's failure holds the guest, found early:\n--- %s\n--- its output, with the goroutine dump SIGQUIT asked for:\n%s%s",
		strings.Join(p.cmd.Args, " "), doing, diag, p.output(), vcpus)
}

// vcpus is what `govmm info --vcpus` says about the guest's vCPUs, for a
// process started with a control socket (else ""): where each vCPU is
// (RIP, CPL, IF, halted or not) and its LAPIC's ISR and IRR tell a guest
// that spins with interrupts off or waits for a lost interrupt from a
// guest that is only slow. Asked before SIGQUIT, which ends the process.
func (p *proc) vcpus() string {
	sock := ""
	for i, a := range p.cmd.Args {
		if v, ok := strings.CutPrefix(a, "--api-socket="); ok {
			sock = v
		} else if a == "--api-socket" && i+1 < len(p.cmd.Args) {
			sock = p.cmd.Args[i+1]
		}
	}
	if sock == "" {
		return ""
	}
	return linuxguest.InspectVCPUs(binary, sock, "the guest's vCPUs")
}

// quit ends a process the test gave up on, and returns what tells a hung
// VMM from a quiet guest, gathered before the process goes: the kernel's
// view of its threads (hangreport: whether a vCPU thread spins in the
// guest, halts or never re-enters, and at which RIP), then the vCPUs as
// govmm sees them (vcpus; this pauses the VM). Its SIGQUIT makes Go dump
// every goroutine into the output: whether the vCPUs sat in KVM_RUN (the
// guest, or the substrate under it) or waited in the VMM.
func (p *proc) quit() string {
	diag := "\n--- " + linuxguest.HangReport(p.cmd.Process.Pid) + p.vcpus()
	p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
	return diag
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
	var w quietWatch
	for time.Now().Before(deadline) {
		out := p.output()
		if strings.Contains(out, s) {
			return nil
		}
		if diag := w.substrate(p, len(out), out, poll); diag != "" {
			p.substrateFatal(diag, "printing "+strconv.Quote(s))
		}
		if len(out) != lastLen {
			lastLen, quietPolls = len(out), 0
		} else if quietPolls++; time.Duration(quietPolls)*poll >= quiet {
			vcpus := p.quit()
			return fmt.Errorf("%w for %v while waiting for %q; the output, with the goroutine dump SIGQUIT asked for:\n%s%s", errStalled, quiet, s, p.output(), vcpus)
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
	const poll = 50 * time.Millisecond
	deadline := time.Now().Add(d)
	var w quietWatch
wait:
	for {
		select {
		case <-p.done:
			break wait
		case <-time.After(poll):
		}
		p.stallCheck(&w, 0, poll, "its end")
		if time.Now().After(deadline) {
			vcpus := p.quit()
			p.t.Fatalf("%s did not end within %v; its output, with the goroutine dump SIGQUIT asked for:\n%s%s",
				strings.Join(p.cmd.Args, " "), d, p.output(), vcpus)
		}
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
	// --verify: the destination checks every page against the source's
	// checksums before it starts, so a write the dirty logs missed fails
	// here, naming the page, rather than as a guest that crashes later.
	r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+mig, "--verify")
	if r.Code != 0 || !strings.Contains(r.Stdout, "migrated: total") || !strings.Contains(r.Stdout, "every page verified") {
		// A source whose VM stopped under the move (its guest crashed:
		// a triple fault, which the substrate may explain) ends soon
		// after; its output then says why, with L1's trace of it.
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
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
				// A control socket on the destination: a guest that does not
				// answer the key after the move shows its vCPUs (proc.vcpus).
				d := start(t, append(append([]string{"migrate", "receive"}, dst...), "--listen", "unix:"+mig,
					"--api-socket", filepath.Join(dir, "dst.sock"))...)
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
	sendHello := func(hello string, then []byte) {
		t.Helper()
		c, err := net.Dial("unix", mig)
		if err != nil {
			t.Fatal(err)
		}
		var hdr [5]byte
		hdr[0] = 'H'
		bin.LittleEndian.PutUint32(hdr[1:], uint32(len(hello)))
		c.Write(append(hdr[:], hello...))
		c.Write(then)
		c.Close()
	}
	// A hello whose machine this receiver cannot build (its memory size
	// disagrees with the hello's) is refused as a hello: the receiver
	// keeps listening for a source that sends a machine it can build.
	sendHello(`{"version":1,"mem_size":134217728,"cpus":1,"machine":{}}`, nil)
	d.waitFor("refused a peer", 30*time.Second)
	// A hello the receiver takes (a machine it builds), so that it builds
	// the VM before the stream breaks.
	sendHello(`{"version":1,"mem_size":134217728,"cpus":1,"machine":{"mem_size":134217728,"num_cpus":1}}`,
		[]byte{'P', 1, 0, 0, 0, 0, 0x10}) // a page frame cut short
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

// linuxMove is a live migration of a Linux guest between accelerators,
// booted with a CPU model both can present.
type linuxMove struct {
	src, dst []string
	cpu      string
}

// linuxMoves are the moves the Linux migration tests make: KVM to the
// others on --cpu x86-64-v2,-kvm,+tsc_deadline_timer (a named model is
// what a fleet that migrates uses, #18; the psABI level leaves the
// TSC-deadline timer out, and the guest's timer in that mode is what the
// move must carry), the others to KVM on host,-kvm, KVM to KVM on host
// (with kvmclock), and, on a host with a real /dev/mshv, MSHV to MSHV on
// host.
func linuxMoves(t *testing.T) []linuxMove {
	all := accels(t)
	var moves []linuxMove
	for _, src := range all {
		for _, dst := range all {
			switch {
			case accelName(src) == "kvm" && accelName(dst) != "kvm":
				moves = append(moves, linuxMove{src, dst, "x86-64-v2,-kvm,+tsc_deadline_timer"})
			case accelName(src) != accelName(dst):
				moves = append(moves, linuxMove{src, dst, "host,-kvm"})
			case accelName(src) == "kvm", accelName(src) == "mshv":
				// The same accelerator and host: its own model (a real
				// MSHV host moves between two of its partitions).
				moves = append(moves, linuxMove{src, dst, "host"})
			}
		}
	}
	return moves
}

// vmmLogLine is a line of govmm's own log (text handler or Go's log
// package) in a process's output, beside the guest's console.
var vmmLogLine = regexp.MustCompile(`(?m)^(time=\S+ level=|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARN|ERROR) ).*\n`)

// withoutVMMLog is a process's output without govmm's log lines: the
// guest's console alone.
func withoutVMMLog(out string) string { return vmmLogLine.ReplaceAllString(out, "") }

// tscArgs is what TestVirtioLiveMigration tells a guest booted on KVM
// with a "-kvm" CPU model about its clock, so that it reads the time from
// its TSC as it would on a real host. Such a guest has neither kvmclock
// nor Hyper-V's frequency MSRs, and under nested TCG its own calibration
// against the PIT and the PM timer fails ("Marking TSC unstable"), so it
// reads the time from the ACPI PM timer, each read an exit to govmm,
// thousands a second under this test's load. The substrate's failure
// strikes at a resume after an exit (L1's trace of the shutdown exits
// caught it right after an OUT to the UART and after an RDMSR, the
// guest's own page tables then failing to map its kernel text), so these
// moves failed now and then where the same guest with kvmclock never
// did. It is given the frequency L1's KVM runs it at (govmm caps,
// KVM_GET_TSC_KHZ). A guest booted on mshvsim keeps Hyper-V's reference
// TSC page (told clocksource=tsc, it kept that page in the one run that
// tried).
func tscArgs(t *testing.T, src []string, cpu string) string {
	t.Helper()
	if !strings.Contains(cpu, "-kvm") || accelName(src) != "kvm" {
		return ""
	}
	r := govmm(t, "caps")
	m := regexp.MustCompile(`(?m)^\s*tsc_khz: (\d+)$`).FindStringSubmatch(r.Stdout)
	if m == nil {
		t.Fatalf("govmm caps names no tsc_khz:\n%s", r)
	}
	return " tsc_early_khz=" + m[1] + " tsc=reliable"
}

// migDiskInit is the guest of TestVirtioLiveMigration. It quiets the
// kernel's console messages, which could split its lines. Until its uptime
// passes the start of its loop plus govmm.migsecs (or it has done 60
// rounds), each round takes 1 KiB from /dev/hwrng (which Linux reads 64
// bytes a request, each a round trip through the device: more would take
// seconds on the nested substrate), writes it 64 times over as vda's
// 64 KiB block i (fsync) and reads back block 128+i, which nothing wrote
// and the page cache does not hold yet, so the disk's data lands in guest
// memory by the device's writes: both sums are printed. Then the guest
// checks every block it wrote and read against the sums it kept in its
// own memory, first through its page cache (which holds the device's
// reads from before, during and after the migration) and then, with the
// cache dropped, from the disk, and powers off.
const migDiskInit = `#!/bin/busybox sh
` + virtioInitHead + `$B mkdir -p /tmp
echo 1 > /proc/sys/kernel/printk
echo "mig-test: clock $($B cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
` + vdaOpens + `secs=$($B sed -n 's/.*govmm\.migsecs=\([0-9]*\).*/\1/p' /proc/cmdline)
end=$(( $($B cut -d. -f1 /proc/uptime) + secs ))
blk() { $B dd if=/dev/vda bs=64k skip=$1 count=1 2>/dev/null | $B sha256sum | $B cut -d' ' -f1; }
i=1
while [ $i -le 60 ] && [ $($B cut -d. -f1 /proc/uptime) -lt $end ]; do
	$B head -c 1024 /dev/hwrng > /tmp/r
	$B cat /tmp/r /tmp/r /tmp/r /tmp/r /tmp/r /tmp/r /tmp/r /tmp/r > /tmp/r8
	$B cat /tmp/r8 /tmp/r8 /tmp/r8 /tmp/r8 /tmp/r8 /tmp/r8 /tmp/r8 /tmp/r8 > /tmp/b
	s=$($B sha256sum < /tmp/b | $B cut -d' ' -f1)
	$B dd if=/tmp/b of=/dev/vda bs=64k seek=$i conv=fsync 2>/dev/null || echo "mig-test: write $i failed"
	p=$(blk $((128+i)))
	echo $s > /tmp/s$i
	echo $p > /tmp/p$i
	echo "mig-blk $i $s $p"
	i=$((i+1))
done
n=$((i-1))
bad=0
check() {
	k=1
	while [ $k -le $n ]; do
		[ "$(blk $k)" = "$($B cat /tmp/s$k)" ] || { echo "mig-test: $1 block $k differs from what the guest wrote"; bad=$((bad+1)); }
		[ "$(blk $((128+k)))" = "$($B cat /tmp/p$k)" ] || { echo "mig-test: $1 block $((128+k)) differs from what the guest read"; bad=$((bad+1)); }
		k=$((k+1))
	done
}
check cached
echo 3 > /proc/sys/vm/drop_caches
check disk
echo "mig-test: verified $n bad=$bad"
$B poweroff -f
`

// migBlk matches a round of migDiskInit: block, written sum, read sum.
var migBlk = regexp.MustCompile(`mig-blk (\d+) ([0-9a-f]{64}) ([0-9a-f]{64})`)

// TestVirtioLiveMigration moves a 2-vCPU Linux guest with a virtio-blk
// disk and virtio-rng live while it writes entropy to the disk and reads
// the disk back (migDiskInit): KVM to mshvsim (--cpu x86-64-v2,-kvm),
// mshvsim to KVM (host,-kvm) and KVM to KVM (host, kvmclock). The
// destination opens the same image (shared storage). After the move the
// guest finds every block it wrote and read, in its page cache and on the
// disk, as it was; after its power-off the image holds exactly the blocks
// the guest printed, on either side of the move. KVM to KVM first tries
// destinations with other devices (no entropy device; another image),
// which must be refused before any memory moves, naming the difference,
// while the source runs on and the receiver keeps listening.
func TestVirtioLiveMigration(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrd(t, migDiskInit, nil)
	const migrateAt = 3 // migrate once the guest printed this block
	pa := pattern("vda", vdaSize)
	for _, m := range linuxMoves(t) {
		t.Run(accelName(m.src)+"-to-"+accelName(m.dst), func(t *testing.T) {
			dir := tempSocketDir(t)
			vda := filepath.Join(dir, "vda.img")
			sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
			disk := "path=" + vda + ",serial=mig"
			// The guest loops 40 s of its own time: the migration starts
			// at block 3 and takes 8-30 s on the nested substrate.
			args := append(append([]string{"run"}, m.src...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--cpu", m.cpu, "--api-socket", sock, "--disk", disk, "--rng",
				"--cmdline", "console=ttyS0 quiet panic=-1 govmm.migsecs=40"+tscArgs(t, m.src, m.cpu))
			// A fresh image for every boot (a retried one may have written).
			fresh := func() {
				if err := os.WriteFile(vda, pa, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			s := bootGuestFresh(t, args, fmt.Sprintf("mig-blk %d ", migrateAt), fresh, nil)
			clock := guestValue(s.output(), "mig-test", "clock")
			if tscArgs(t, m.src, m.cpu) != "" && clock != "tsc" && clock != "tsc-early" {
				// tsc-early until the kernel's delayed refinement registers tsc.
				t.Fatalf("the guest's clocksource is %q, not the TSC it was told to use (tscArgs):\n%s", clock, s.output())
			}
			receive := append(append([]string{"migrate", "receive"}, m.dst...), "--listen", "unix:"+mig)
			if accelName(m.src) == "kvm" && accelName(m.dst) == "kvm" {
				other := filepath.Join(dir, "other.img")
				if err := os.WriteFile(other, pa[:vdaSize/2], 0o644); err != nil {
					t.Fatal(err)
				}
				for _, c := range []struct {
					name string
					args []string
					want []string
				}{
					{"no rng", []string{"--disk", disk}, []string{`the source's "virtio-rng" is missing here`}},
					{"other image", []string{"--disk", "path=" + other + ",serial=mig", "--rng"},
						[]string{"slot 1", vda, fmt.Sprintf("bytes=%d", vdaSize), other, fmt.Sprintf("bytes=%d", vdaSize/2)}},
				} {
					d := start(t, append(append([]string(nil), receive...), c.args...)...)
					waitPath(t, mig)
					r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+mig)
					if r.Code != 70 || !strings.Contains(r.Stderr, "destination refused the VM") {
						t.Fatalf("migrate send to a destination with %s: want exit 70 and a refusal, got\n%s\ndestination:\n%s", c.name, r, d.output())
					}
					for _, w := range c.want {
						if !strings.Contains(r.Stderr, w) {
							t.Fatalf("migrate send to a destination with %s: the refusal does not name %q:\n%s", c.name, w, r)
						}
					}
					t.Logf("refused (%s): %s", c.name, strings.TrimSpace(r.Stderr))
					d.waitFor("still listening", 30*time.Second)
					select {
					case <-s.done:
						t.Fatalf("the source ended after a refused migration:\n%s", s.output())
					default:
					}
					d.cmd.Process.Kill()
					<-d.done
					os.Remove(mig)
				}
			}
			// The destination's control socket lets a stall after the
			// move show the guest's vCPUs (proc.vcpus).
			d := start(t, append(append([]string(nil), receive...), "--disk", disk, "--rng", "--api-socket", filepath.Join(dir, "dst.sock"))...)
			waitPath(t, mig)
			migrateLive(t, sock, mig, s, d)
			written, after := checkDiskMigration(t, s, d, vda, pa)
			t.Logf("the guest wrote %d blocks (%d after the move) and verified them", written, after)
		})
	}
}

// checkDiskMigration waits for the moved guest (migDiskInit's) on the
// destination d to verify its disk and power off, then checks what it
// did against the image at path, which held pa before the run: it wrote
// blocks after the move, its own checks passed, each block it printed
// was read back as the image had it, the image holds the sums it printed
// for the blocks it wrote and the rest as it was. It returns how many
// blocks the guest wrote, and how many of those after the move.
func checkDiskMigration(t *testing.T, s, d *proc, path string, pa []byte) (written, after int) {
	t.Helper()
	const blk64 = 64 << 10
	d.waitFor("mig-test: verified", 4*time.Minute)
	if code := d.exit(time.Minute); code != 0 {
		t.Fatalf("destination: exit %d after the guest's checks, want 0 (poweroff):\n%s", code, d.output())
	}
	src, dst := s.output(), d.output()
	after = len(migBlk.FindAllString(dst, -1))
	if after == 0 {
		t.Fatalf("the guest wrote no block after the move (it looped too short for this migration):\nsource:\n%s\ndestination:\n%s", src, dst)
	}
	v := guestValue(dst, "mig-test", "verified")
	if !strings.HasSuffix(v, " bad=0") || strings.Contains(dst, "differs from") ||
		strings.Contains(src+dst, "mig-test: write") || strings.Contains(src, "virtio-test: insmod") {
		t.Fatalf("the guest's own checks after the move: %q\nsource:\n%s\ndestination:\n%s", v, src, dst)
	}
	// The image: the blocks the guest printed (a line the move split is
	// whole in the two outputs joined, once the destination's own log
	// lines, which may come between its two halves, are left out), the
	// rest as it was.
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != vdaSize {
		t.Fatalf("the image is %d bytes after the run, want %d", len(img), vdaSize)
	}
	last := map[int]string{} // the sum the guest printed for each block it wrote
	for _, mm := range migBlk.FindAllStringSubmatch(src+withoutVMMLog(dst), -1) {
		i, _ := strconv.Atoi(mm[1])
		if i < 1 || i > 60 {
			t.Fatalf("the guest printed block %d, outside 1..60", i)
		}
		last[i] = mm[2]
		if got, w := mm[3], sum(pa[(128+i)*blk64:(129+i)*blk64]); got != w {
			t.Errorf("the guest read block %d with SHA-256 %s, the image had %s", 128+i, got, w)
		}
	}
	for b := 0; b < vdaSize/blk64; b++ {
		got := img[b*blk64 : (b+1)*blk64]
		if s, ok := last[b]; ok {
			if sum(got) != s {
				t.Errorf("block %d has SHA-256 %s, the guest wrote %s", b, sum(got), s)
			}
		} else if !bytes.Equal(got, pa[b*blk64:(b+1)*blk64]) {
			t.Errorf("block %d, which the guest did not write, changed", b)
		}
	}
	if t.Failed() {
		t.Fatalf("source:\n%s\ndestination:\n%s", lastLines(src, 40), dst)
	}
	return len(last), after
}

// vdaOpens is the guests' shell lines that wait, 10 s at most, until a
// sector of vda reads (TestHotAddLinux's and migDiskInit): a hot-added
// disk's node appears before the disk can be opened (Linux 6.1's
// device_add_disk: device_add, then bdev_add; an open in between is
// ENXIO).
const vdaOpens = `i=0
until $B dd if=/dev/vda of=/dev/null bs=512 count=1 2>/dev/null || [ $i -ge 100 ]; do $B sleep 0.1; i=$((i+1)); done
`
