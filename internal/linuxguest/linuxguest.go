// Package linuxguest boots a real Linux guest under govmm to its userspace
// and reads back what that userspace saw. The e2e tests and the boot soak
// (bench/linuxsoak) share it, so that both judge a boot the same way.
//
// The guest is Debian's cloud kernel (fetched by .ci/run) with a tiny
// initramfs: a static busybox and an /init that prints one line with the
// token from the kernel command line, the CPUs the kernel brought up and
// its clocksource (and, when asked, the kernel log), then powers off. The
// same boot runs under QEMU too, as the baseline a govmm boot's kernel log
// is compared with.
package linuxguest

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"govmm/internal/hangreport"
	"govmm/internal/initramfs"
	"govmm/internal/nested"
)

// Busybox returns a static busybox from the host (package busybox-static).
func Busybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return p, nil
		}
	}
	return "", errors.New("no static busybox (apt-get install busybox-static)")
}

// initScript is the guest's /init.
const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
tok=$(/bin/busybox sed -n 's/.*govmm\.token=\([^ ]*\).*/\1/p' /proc/cmdline)
cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)
online=$(/bin/busybox cat /sys/devices/system/cpu/online)
cs=$(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
echo "govmm-userspace: token=$tok cpus=$cpus online=$online clocksource=$cs"
if /bin/busybox grep -q govmm.topology=1 /proc/cmdline; then
	for c in /sys/devices/system/cpu/cpu[0-9]*; do
		t=$c/topology
		echo "govmm-topology ${c##*/} package=$(/bin/busybox cat $t/physical_package_id) core=$(/bin/busybox cat $t/core_id) smt=$(/bin/busybox cat $t/thread_siblings_list) pkg=$(/bin/busybox cat $t/core_siblings_list)"
	done
fi
ticks=$(/bin/busybox sed -n 's/.*govmm\.ticks=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$ticks" ]; then
	echo "govmm-clockevent: $(/bin/busybox cat /sys/devices/system/clockevents/clockevent0/current_device) tsc_deadline_timer=$(/bin/busybox grep -m1 -c -w tsc_deadline_timer /proc/cpuinfo)"
	i=0; sum=7
	while [ $i -lt $ticks ]; do
		i=$((i + 1)); sum=$(( (sum * 31 + i) % 1000000007 ))
		echo "govmm-tick $i sum=$sum"
		/bin/busybox sleep 1
	done
	echo "govmm-ticks-done $i sum=$sum"
fi
if /bin/busybox grep -q govmm.dmesg=1 /proc/cmdline; then
	echo "govmm-dmesg-begin"
	/bin/busybox dmesg -r | /bin/busybox gzip -9 | /bin/busybox base64
	echo "govmm-dmesg-end"
fi
/bin/busybox poweroff -f
`

// TickSum is the checksum init prints after tick n (govmm.ticks=N on the
// command line makes it print N ticks, one a second, before powering off;
// before the first it prints ClockEventLine with CPU 0's clock-event
// device, "lapic-deadline" when the LAPIC timer runs in TSC-deadline mode,
// "lapic" in one-shot mode, "Hyper-V clockevent" for Hyper-V's synthetic
// timer, and tsc_deadline_timer=1 or 0 as the CPU offers the mode).
func TickSum(n int) int64 {
	sum := int64(7)
	for i := 1; i <= n; i++ {
		sum = (sum*31 + int64(i)) % 1000000007
	}
	return sum
}

// ClockEventLine begins the line a ticking guest prints with its CPU 0's
// clock-event device (TickSum).
const ClockEventLine = "govmm-clockevent: "

// WriteInitramfs writes the guest's initramfs to path.
func WriteInitramfs(path string) error { return WriteInitramfsWith(path, initScript) }

// WriteInitramfsWith writes an initramfs with a static busybox and init as
// its /init (a script that calls /bin/busybox by path).
func WriteInitramfsWith(path, init string) error {
	bb, err := Busybox()
	if err != nil {
		return err
	}
	a := initramfs.New()
	if err := a.File("/bin/busybox", bb); err != nil {
		return err
	}
	a.Bytes("/init", 0o755, []byte(init))
	a.Dir("/dev")
	return a.WriteFile(path)
}

// Boot is one boot's settings.
type Boot struct {
	Govmm   string   // the govmm binary
	Accel   []string // accelerator flags, e.g. --accel=kvm
	Kernel  string
	Initrd  string
	CPUs    int
	Memory  string // default 512M
	Token   string // printed back by the guest's init
	Timeout time.Duration
	// Stall ends a boot whose console has printed nothing for this long
	// (default 90 s) with an error that matches ErrStalled. A boot on
	// this project's nested substrate prints a line at least every few
	// seconds; a guest that goes quiet for minutes has stopped making
	// progress.
	Stall time.Duration
	// Cmdline is added to the kernel command line, e.g.
	// "earlyprintk=serial,ttyS0,115200" to see a boot that dies before
	// the console is up.
	Cmdline string
	// LogLevel is govmm's --log-level (default: govmm's own).
	LogLevel string
	// Args are more govmm run flags, e.g. --seccomp=off.
	Args []string
	// Dmesg asks init to print the kernel log (Result.Log). The boot is
	// then quiet: the log comes whole from dmesg, so the console need not
	// carry it twice during the boot (each byte an exit to the VMM, the
	// traffic that the nested substrate's failures follow; the boot-log
	// test killed two L1s in a row on 2026-12-06).
	Dmesg bool
	// QEMU boots under qemu-system-x86_64 with this machine type ("pc",
	// "microvm") on KVM instead of govmm: the baseline a govmm boot is
	// compared with. Govmm and Accel are then unused.
	QEMU string
	// QEMUCPU is QEMU's -cpu (default "host").
	QEMUCPU string
}

// Result is what a boot showed.
type Result struct {
	Code    int    // govmm's exit status
	Console string // the serial console
	Stderr  string // govmm's log
	Wall    time.Duration
	Token   string // as init read it from /proc/cmdline
	CPUs    int    // processors in /proc/cpuinfo
	Online  string // /sys/devices/system/cpu/online
	// Clocksource is the kernel's current clocksource.
	Clocksource string
	// Log is the kernel log, when Boot.Dmesg asked for it.
	Log []LogLine
}

// LogLine is one kernel log message.
type LogLine struct {
	Level int    // 0 emergency ... 4 warning ... 7 debug
	Text  string // without the level and timestamp
}

var userspaceLine = regexp.MustCompile(`govmm-userspace: token=(\S*) cpus=(\d+) online=(\S*) clocksource=(\S*)`)

// rawLogLine is one line of `dmesg -r`: <priority>[ seconds] text.
var rawLogLine = regexp.MustCompile(`^<(\d+)>(?:\[\s*\d+\.\d+\] ?)?(.*)$`)

// base64Line is a line of base64's output (76 characters but the last).
var base64Line = regexp.MustCompile(`^[A-Za-z0-9+/]+=*$`)

// ParseLog parses the kernel log init printed between its markers, as
// `dmesg -r` compressed with gzip and encoded in base64: a quarter of the
// bytes the plain log would take over the UART, each of them an exit to
// the VMM. Lines that are not base64 (a console message of the kernel's
// between init's lines) are left out. Continuation lines (no priority)
// belong to the message before them. It returns nil, and an error that
// says why, when the markers are missing or the log does not decode.
func ParseLog(console string) ([]LogLine, error) {
	begin := strings.Index(console, "govmm-dmesg-begin")
	end := strings.LastIndex(console, "govmm-dmesg-end")
	if begin < 0 || end < begin {
		return nil, fmt.Errorf("no kernel log: its begin marker %s, its end marker %s",
			seen(begin >= 0), seen(strings.Contains(console, "govmm-dmesg-end")))
	}
	var enc strings.Builder
	for _, l := range strings.Split(console[begin:end], "\n")[1:] {
		if l = strings.TrimRight(l, "\r"); base64Line.MatchString(l) {
			enc.WriteString(l)
		}
	}
	zipped, err := base64.StdEncoding.DecodeString(enc.String())
	if err != nil {
		return nil, fmt.Errorf("the kernel log's base64 does not decode (a console message cut into a line?): %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(zipped))
	if err != nil {
		return nil, fmt.Errorf("the kernel log is not gzip: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("the kernel log does not decompress: %w", err)
	}
	var out []LogLine
	for _, l := range strings.Split(string(raw), "\n") {
		l = strings.TrimRight(l, "\r")
		if m := rawLogLine.FindStringSubmatch(l); m != nil {
			pri, _ := strconv.Atoi(m[1])
			out = append(out, LogLine{Level: pri & 7, Text: m[2]})
		} else if len(out) > 0 && l != "" {
			out[len(out)-1].Text += "\n" + l
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the kernel log has no message")
	}
	return out, nil
}

// ErrStalled is the error (through errors.Is) of a boot whose console went
// quiet for Boot.Stall.
var ErrStalled = errors.New("the console printed nothing")

// activityWriter is a buffer that counts its writes.
type activityWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes uint64
}

func (w *activityWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

func (w *activityWriter) count() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

func (w *activityWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// Run boots the guest once. An error means the boot did not reach
// userspace with the right token and CPU count, or did not power off
// cleanly; it carries the end of the console and govmm's log.
func (b Boot) Run(ctx context.Context) (Result, error) {
	if b.Memory == "" {
		b.Memory = "512M"
	}
	if b.Timeout == 0 {
		b.Timeout = 5 * time.Minute
	}
	if b.Stall == 0 {
		b.Stall = 90 * time.Second
	}
	timed, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	ctx, stall := context.WithCancelCause(timed)
	defer stall(nil)
	cmdline := "console=ttyS0 panic=-1 govmm.token=" + b.Token
	if b.Dmesg {
		cmdline += " quiet govmm.dmesg=1"
	}
	cmdline = strings.TrimSpace(cmdline + " " + b.Cmdline)
	var cmd *exec.Cmd
	var vcpus string // the hang report and govmm info --vcpus, when the boot is cut short
	if b.QEMU != "" {
		cmd = exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "kvm", "-cpu", cmp.Or(b.QEMUCPU, "host"), "-M", b.QEMU,
			"-smp", strconv.Itoa(b.CPUs), "-m", b.Memory, "-nographic", "-nodefaults", "-serial", "stdio",
			"-no-reboot", "-kernel", b.Kernel, "-initrd", b.Initrd, "-append", cmdline)
	} else {
		args := append([]string{"run"}, b.Accel...)
		args = append(args, "--kernel", b.Kernel, "--initrd", b.Initrd, "--cpus", strconv.Itoa(b.CPUs),
			"--memory", b.Memory, "--serial", "stdio", "--cmdline", cmdline)
		if b.LogLevel != "" {
			args = append(args, "--log-level", b.LogLevel)
		}
		args = append(args, b.Args...)
		// A control socket, so that a boot cut short can show where the
		// guest's vCPUs were (RIP, CPL, IF, halted, the LAPIC's ISR and
		// IRR): what tells a guest spinning with interrupts off or waiting
		// for a lost interrupt from a slow one.
		sockDir, err := os.MkdirTemp("", "govmm-boot-")
		if err != nil {
			return Result{}, err
		}
		defer os.RemoveAll(sockDir)
		sock := filepath.Join(sockDir, "api.sock")
		args = append(args, "--api-socket", sock)
		cmd = exec.CommandContext(ctx, b.Govmm, args...)
		// A boot ended early (stalled, timed out) gets SIGQUIT first: Go
		// prints every goroutine, which shows whether the vCPUs sat in
		// KVM_RUN (the guest or the substrate) or waited in the VMM.
		// Wait returns only after Cancel did, so vcpus is set by then.
		// The hang report comes first: info --vcpus pauses the VM, which
		// moves every vCPU.
		cmd.Cancel = func() error {
			vcpus = "\n--- " + HangReport(cmd.Process.Pid) +
				InspectVCPUs(b.Govmm, sock, "the guest's vCPUs when the boot was cut short")
			return cmd.Process.Signal(syscall.SIGQUIT)
		}
		cmd.WaitDelay = 5 * time.Second
	}
	stdout := &activityWriter{}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	start, mark := time.Now(), nested.ShutdownMark()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start %s: %w", b.name(), err)
	}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		// Quiet time is counted in ticks of a second, not read off the
		// clock: L1's clock on the nested substrate (the HPET under TCG)
		// has been seen to jump by tens of seconds, and a jump must not
		// pass for a guest that went quiet. A ticker drops the ticks a
		// jump skips.
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var seen uint64
		quiet := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if n := stdout.count(); n != seen {
					seen, quiet = n, 0
					continue
				}
				if quiet++; time.Duration(quiet)*time.Second >= b.Stall {
					stall(fmt.Errorf("%w for %d s", ErrStalled, quiet))
					return
				}
				if b.QEMU == "" && time.Duration(quiet)*time.Second%StallCheckEvery == 0 {
					if d := SubstrateStall(cmd.Process.Pid); d != "" {
						stall(fmt.Errorf("%w for %d s, on the nested substrate's known failure:\n%s", ErrStalled, quiet, d))
						return
					}
				}
			}
		}
	}()
	err := cmd.Wait()
	stall(nil)
	<-watched
	res := Result{Console: stdout.String(), Stderr: stderr.String(), Wall: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		res.Code = ee.ExitCode()
	} else if err != nil {
		return res, fmt.Errorf("run govmm: %w", err)
	}
	fail := func(format string, a ...any) (Result, error) {
		err := fmt.Errorf("%s (%s, %d vCPUs, after %v)\n--- console (end):\n%s\n--- VMM log:\n%s%s",
			fmt.Sprintf(format, a...), b.name(), b.CPUs, res.Wall.Round(time.Millisecond),
			tail(res.Console, 30), vmmLog(res.Stderr), vcpus)
		if IsTripleFault(res.Stderr) {
			// Whatever else went wrong followed from it: a guest that
			// triple-faulted while init dumped the kernel log left that
			// log cut short. L1's trace says where it faulted.
			err = &tripleFaultError{fmt.Errorf("%w%s", err, nested.ShutdownExits(mark, nested.GuestRAM([]string{"--memory", b.Memory})))}
		}
		return res, err
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrStalled) {
		r, err := fail("%v", cause)
		return r, &stallError{err}
	}
	if timed.Err() != nil {
		return fail("no power-off within %v", b.Timeout)
	}
	// QEMU, run with -no-reboot, exits 0 on the reset a triple fault
	// causes and says nothing else: a QEMU boot that ends before init's
	// line or the kernel log's end, with no panic, ended that way. L1's
	// trace says where.
	failReset := func(format string, a ...any) (Result, error) {
		r, err := fail(format, a...)
		if b.QEMU != "" && res.Code == 0 && !strings.Contains(res.Console, "Kernel panic") && !strings.Contains(res.Console, "govmm-dmesg-end") {
			err = &tripleFaultError{fmt.Errorf("%w%s", err, nested.ShutdownExits(mark, nested.GuestRAM([]string{"--memory", b.Memory})))}
		}
		return r, err
	}
	m := userspaceLine.FindStringSubmatch(res.Console)
	if m == nil {
		return failReset("init never printed its line: exit status %d", res.Code)
	}
	res.Token, res.Online, res.Clocksource = m[1], m[3], m[4]
	res.CPUs, _ = strconv.Atoi(m[2])
	if b.Dmesg {
		var err error
		if res.Log, err = ParseLog(res.Console); err != nil {
			// Which marker is missing tells a guest that stopped before
			// or during dmesg from a log whose lines were mangled.
			return failReset("init printed no kernel log that reads (%v)", err)
		}
	}
	switch {
	case res.Token != b.Token:
		return fail("init read token %q from /proc/cmdline, want %q", res.Token, b.Token)
	case res.CPUs != b.CPUs:
		return fail("the guest brought up %d CPUs (online %s), want %d", res.CPUs, res.Online, b.CPUs)
	case res.Code != 0:
		return fail("exit status %d after the guest's poweroff, want 0", res.Code)
	}
	return res, nil
}

// ErrTripleFault is the error (through errors.Is) of a boot that ended in a
// triple fault, before init ran or while it printed the kernel log. On
// this project's nested substrate that is how its known failure usually
// shows (an L2 guest resumed with L1's registers, often while the kernel
// patches its own text): tests may boot such a guest once more, and say
// so.
var ErrTripleFault = errors.New("the guest triple-faulted")

// IsTripleFault reports whether govmm's log says a vCPU triple-faulted.
func IsTripleFault(vmmLog string) bool { return strings.Contains(vmmLog, ": triple fault (") }

type tripleFaultError struct{ error }

func (e *tripleFaultError) Is(target error) bool { return target == ErrTripleFault }

// stallError is a failed boot whose cause was a quiet console.
type stallError struct{ error }

func (e *stallError) Is(target error) bool { return target == ErrStalled }

// name says what ran the boot, for messages.
// HangReport is hangreport.Report for govmm process pid, headed by the
// nested substrate's diagnosis when the report shows its known failure.
// The e2e tests use it too.
func HangReport(pid int) string {
	r := hangreport.Report(pid)
	if d := nested.SubstrateFailure(r); d != "" {
		return "diagnosis: " + d + "\n" + r
	}
	return r
}

// StallCheckEvery is how long a guest's console stays quiet before a wait
// asks whether the nested substrate's known failure holds its vCPUs
// (SubstrateStall), and how often it asks again while the quiet lasts.
const StallCheckEvery = 20 * time.Second

// SubstrateStall is HangReport for govmm process pid when the report shows
// the nested substrate's known failure (its vCPUs re-entered again and
// again at one RIP inside L1's kvm module), and "" when it does not, or
// outside L1. A wait whose guest went quiet asks it, so that a test the
// substrate stalled fails at once (and runs again, internal/kvmtest)
// rather than at its full bound: three such stalls, found only at their
// bounds of 1, 3 and 4 minutes, cost a CI run of 2026-12-06 eight minutes.
func SubstrateStall(pid int) string {
	if os.Getenv(nested.InL1Env) != "1" {
		return ""
	}
	r := hangreport.Report(pid)
	if d := nested.SubstrateFailure(r); d != "" {
		return "diagnosis: " + d + "\n" + r
	}
	return ""
}

// InspectVCPUs is `govmm info` (the devices, with each virtio queue's
// ring positions and MSI-X vector: what tells a lost interrupt from a
// driver that posted nothing) and then `govmm info --vcpus` (which pauses
// the VM) on control socket sock, each with its own bound (a boot's
// context is already done when it is asked), under heading; when the
// vCPUs show the nested substrate's known failure it says so first
// (nested.SubstrateFailure). The e2e tests use it too.
func InspectVCPUs(govmm, sock, heading string) string {
	info := func(args ...string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, govmm, append([]string{"info", "--api-socket", sock}, args...)...).CombinedOutput()
	}
	devices := "\n--- the VM's devices and queues (govmm info):\n"
	out, err := info()
	if err != nil {
		devices = fmt.Sprintf("\n--- govmm info failed (%v):\n", err)
	}
	devices += string(out)
	out, err = info("--vcpus")
	if err != nil {
		return devices + fmt.Sprintf("\n--- govmm info --vcpus failed (%v):\n%s", err, out)
	}
	diagnosis := ""
	if d := nested.SubstrateFailure(string(out)); d != "" {
		diagnosis = "\n--- diagnosis: " + d
	}
	return diagnosis + devices + "\n--- " + heading + " (govmm info --vcpus):\n" + string(out)
}

func seen(b bool) string {
	if b {
		return "printed"
	}
	return "missing"
}

func (b Boot) name() string {
	if b.QEMU != "" {
		return "qemu-system-x86_64 -cpu " + cmp.Or(b.QEMUCPU, "host") + " -M " + b.QEMU
	}
	return "govmm " + strings.Join(b.Accel, " ")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// head is the first n lines of s.
func head(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// vmmLog is the end of govmm's stderr for a failure report; a goroutine
// dump (SIGQUIT, see Run) is kept down to its vCPU and device goroutines.
func vmmLog(stderr string) string {
	i := strings.Index(stderr, "SIGQUIT: quit")
	if i < 0 {
		return tail(stderr, 20)
	}
	var keep []string
	for _, g := range strings.Split(stderr[i:], "\n\n") {
		if strings.Contains(g, "govmm/vm.") || strings.Contains(g, "govmm/accel") || strings.HasPrefix(g, "SIGQUIT") {
			keep = append(keep, head(g, 12))
		}
	}
	return tail(stderr[:i], 10) + "\n" + strings.Join(keep, "\n\n")
}
