// Package e2e runs the govmm binary end to end on the project's own guests,
// on every accelerator this machine offers (KVM, and MSHV through mshvsim).
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"govmm/guests"
	"govmm/internal/kvmtest"
	"govmm/internal/linuxguest"
	"govmm/internal/nested"
	"govmm/virtio/virtiotest"
)

var binary string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if b := os.Getenv(binaryEnv); b != "" && kvmtest.InL1() {
		binary = b // built on the host, copied into the nested-KVM VM
		return kvmtest.Main(m)
	}
	dir, err := os.MkdirTemp("", "govmm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "govmm")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	build := exec.Command("go", "build", "-o", binary, "./cmd/govmm")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the README builds it
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build govmm: %v\n%s", err, out)
		return 1
	}
	if k := nested.LinuxKernel(); os.Getenv(linuxKernelEnv) == "" && k != "" {
		os.Setenv(linuxKernelEnv, k) // the kernel .ci/run fetched
	}
	var tools []string
	for _, p := range []string{"tmux", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(p); err == nil {
			tools = append(tools, p)
		}
	}
	return kvmtest.Main(m, kvmtest.Files(binary), kvmtest.Env(binaryEnv+"="+binary), kvmtest.Programs(tools...))
}

const (
	binaryEnv      = "GOVMM_E2E_BINARY"   // the govmm binary under test, inside L1
	linuxKernelEnv = "GOVMM_LINUX_KERNEL" // Debian's cloud kernel
)

// Result is what one govmm run produced.
type Result struct {
	Stdout, Stderr string
	Code           int
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s\n--- stderr\n%s", r.Code, r.Stdout, r.Stderr)
}

// runTimeout bounds one govmm run: guests here run at CPL0 under an
// emulating KVM, so give them room, but never hang the suite.
const runTimeout = 2 * time.Minute

// govmm runs the binary with args and returns its output and exit status.
func govmm(t *testing.T, args ...string) Result {
	t.Helper()
	return govmmInput(t, "", args...)
}

// govmmInput is govmm with stdin fed from input.
func govmmInput(t *testing.T, input string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	// On the timeout, the kernel's view of the threads (hangreport: in
	// L1, where KVM runs, whether a vCPU spins, halts or never re-enters,
	// and at which RIP), then SIGQUIT: Go prints every goroutine, and
	// where the vCPU threads wait (in KVM_RUN or in the VMM) is what
	// tells a hung guest from a hung VMM. Wait returns after Cancel did.
	// A stall the watch diagnosed has its report already.
	var hang string
	watch := newStallWatch()
	cmd.Cancel = func() error {
		if !watch.found() {
			hang = linuxguest.HangReport(cmd.Process.Pid)
		}
		return cmd.Process.Signal(syscall.SIGQUIT)
	}
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr virtiotest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Stdin = strings.NewReader(input)
	mark := nested.ShutdownMark()
	if err := cmd.Start(); err != nil {
		t.Fatalf("govmm %s: %v", strings.Join(args, " "), err)
	}
	watch.start(cmd.Process.Pid, &stdout, &stderr, cancel)
	err := cmd.Wait()
	diag := watch.end()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if linuxguest.IsTripleFault(res.Stderr) {
		// KVM on AMD reset the vCPU; L1's trace says where it was.
		res.Stderr += nested.ShutdownExits(mark, nested.GuestRAM(args))
	}
	if diag != "" {
		t.Fatalf("govmm %s: stalled: the nested substrate's failure holds the guest, found early:\n--- %s\n--- its output, with the goroutine dump SIGQUIT asked for:\n%s",
			strings.Join(args, " "), diag, res)
	}
	if ctx.Err() != nil {
		t.Fatalf("govmm %s: timed out after %v (its goroutines, dumped on SIGQUIT, are in its stderr)\n%s\n--- %s", strings.Join(args, " "), runTimeout, res, hang)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		res.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("govmm %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// stallWatch watches a govmm process that a test waits on without proc
// (whose waits do the same, quietWatch): after every
// linuxguest.StallCheckEvery in which it printed nothing, or at once when
// its guest reports a stalled CPU, it asks whether the nested substrate's
// known failure holds the vCPUs, and if so keeps the diagnosis and stops
// the process. A CI run of 2026-12-07 waited out such a stall of the
// probe guest to runTimeout's full two minutes.
type stallWatch struct {
	ask  func(pid int) string // linuxguest.SubstrateStall
	quit chan struct{}
	done chan struct{}
	mu   sync.Mutex
	diag string
}

func newStallWatch() *stallWatch {
	return &stallWatch{ask: linuxguest.SubstrateStall, quit: make(chan struct{}), done: make(chan struct{})}
}

// start watches process pid, which writes the guest's console (searched
// for stall reports) and its own log: what both hold is its progress.
// stop is called once on a diagnosis. end must follow.
func (w *stallWatch) start(pid int, console, logs *virtiotest.SyncBuffer, stop func()) {
	const poll = 250 * time.Millisecond
	go func() {
		defer close(w.done)
		var q quietWatch
		tick := time.NewTicker(poll)
		defer tick.Stop()
		for {
			select {
			case <-w.quit:
				return
			case <-tick.C:
			}
			out := console.String()
			if !q.due(len(out)+len(logs.String()), out, poll) {
				continue
			}
			if d := w.ask(pid); d != "" {
				w.mu.Lock()
				w.diag = d
				w.mu.Unlock()
				stop()
				return
			}
		}
	}()
}

// found says whether the watch has its diagnosis.
func (w *stallWatch) found() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.diag != ""
}

// end stops the watch and returns its diagnosis, "" when it had none.
func (w *stallWatch) end() string {
	close(w.quit)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.diag
}

// hostMSHV reports whether the tests run on a host with a real /dev/mshv
// (outside L1, whose tests stand in for it with mshvsim). A variable so
// that TestRealMSHVHostRunsLinux can play such a host.
var hostMSHV = func() bool {
	_, err := os.Stat("/dev/mshv")
	return err == nil && !kvmtest.InL1()
}

// accels returns the accelerator flag sets every end-to-end test runs on:
// KVM and mshvsim (on KVM), and a real MSHV where /dev/mshv exists. Where
// KVM is only reachable on nested KVM, the test runs there too
// (internal/kvmtest); a host with /dev/mshv runs its MSHV part here first.
func accels(t *testing.T) [][]string {
	t.Helper()
	var out [][]string
	if hostMSHV() {
		out = append(out, []string{"--accel=mshv"})
		if !kvmtest.Here(t) {
			return out
		}
	} else {
		kvmtest.Need(t)
	}
	return append(out, []string{"--accel=kvm"}, []string{"--accel=mshv", "--mshv-device=sim"})
}

// needLinux is kvmtest.NeedHardware for the tests that boot Linux: a
// host with a real /dev/mshv has hardware semantics, so there they run on
// --accel=mshv whether or not KVM is here too (accels says which
// accelerators they have), instead of skipping for want of KVM.
func needLinux(t *testing.T) {
	t.Helper()
	if hostMSHV() {
		return
	}
	kvmtest.NeedHardware(t)
}

// hasAccel returns the flag set of the accelerator named name (as
// accelName names them) among all, or nil.
func hasAccel(all [][]string, name string) []string {
	for _, a := range all {
		if accelName(a) == name {
			return a
		}
	}
	return nil
}

// needAccels returns the flag sets of the named accelerators for a test
// that needs each of them (a move from KVM to mshvsim, a KVM-only
// baseline). One missing is a failure, except on a real MSHV host, where
// KVM or mshvsim may be missing: the test skips there, naming what it
// needs, and runs in L1 where the harness reaches one.
func needAccels(t *testing.T, names ...string) [][]string {
	t.Helper()
	all := accels(t)
	out := make([][]string, len(names))
	for i, n := range names {
		if out[i] = hasAccel(all, n); out[i] == nil {
			if hostMSHV() {
				t.Skipf("needs %s, which this /dev/mshv host lacks (it runs where KVM is)", strings.Join(names, " and "))
			}
			t.Fatalf("needs %s: %s is not among the accelerators", strings.Join(names, " and "), n)
		}
	}
	return out
}

// accelName names an accelerator flag set for subtests.
func accelName(flags []string) string {
	for _, f := range flags {
		if f == "--mshv-device=sim" {
			return "mshvsim"
		}
	}
	return strings.TrimPrefix(flags[0], "--accel=")
}

// guestPath writes the embedded guest image name to a temporary file.
func guestPath(t *testing.T, name string) string {
	t.Helper()
	img, err := guests.Image(name)
	if err != nil {
		t.Fatalf("guest image %s: %v", name, err)
	}
	p := filepath.Join(t.TempDir(), filepath.Base(name))
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// guestKernelPath is the Linux guest's kernel: GOVMM_LINUX_KERNEL, else the
// one .ci/run unpacked (also L1's); "" when there is none.
func guestKernelPath() string {
	if k := os.Getenv(linuxKernelEnv); k != "" {
		return k
	}
	return nested.LinuxKernel()
}

// moduleTree is the kernel/ directory of the modules that came with the
// unpacked Debian kernel at kernel (.../boot/vmlinuz-VER beside
// .../lib/modules/VER/kernel).
func moduleTree(kernel string) string {
	ver := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	return filepath.Join(filepath.Dir(filepath.Dir(kernel)), "lib", "modules", ver, "kernel")
}

// TestStressTagBuilds vets the package with the stress build tag, under
// which TestStressGuest lives outside CI: a helper it shares with the
// other tests once changed under it unnoticed, and it stopped compiling.
func TestStressTagBuilds(t *testing.T) {
	if kvmtest.InL1() {
		return // the host checked it; L1 has no Go toolchain
	}
	_, file, _, _ := runtime.Caller(0)
	vet := exec.Command("go", "vet", "-tags", "stress", ".")
	vet.Dir = filepath.Dir(file)
	if out, err := vet.CombinedOutput(); err != nil {
		t.Fatalf("go vet -tags stress ./e2e: %v\n%s", err, out)
	}
}
