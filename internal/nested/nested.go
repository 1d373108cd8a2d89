// Package nested runs a command inside a Linux VM ("L1") that has a KVM with
// hardware-virtualization semantics, on any x86-64 machine.
//
// Some of the project's machines have no /dev/kvm, and others only the
// software kvm_pvm backend, which emulates guest CPL0 code and hides what
// real hardware shows. QEMU's TCG emulates AMD SVM with -cpu max, so an L1
// booted from Debian's cloud kernel can load kvm_amd and offer a real
// /dev/kvm to whatever runs inside it (see shared/reference/nested-kvm.md).
// The tests (through internal/kvmtest) and the benchmarks use this package
// to run govmm there.
//
// L1 is a throwaway VM: its root is an initramfs holding busybox, the KVM
// modules and the files the command needs, each at its host path. The
// command's output comes back on L1's second serial port, the kernel's log
// on the first. Every run is bounded by a timeout.
package nested

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"govmm/internal/initramfs"
)

// Env names. GOVMM_CACHE is where .ci/run keeps Debian's cloud kernel
// (default ~/.cache/govmm); the kernel and its KVM modules come from
// $GOVMM_CACHE/linux. InL1Env is set to 1 inside L1.
const (
	CacheEnv = "GOVMM_CACHE"
	InL1Env  = "GOVMM_IN_L1"
	// L1 settings for measuring the substrate's stability: vCPUs (default
	// 2) and TCG options (default thread=multi).
	L1CPUsEnv = "GOVMM_L1_CPUS"
	L1TCGEnv  = "GOVMM_L1_TCG"
	// L1KVMAMDEnv holds kvm-amd module parameters for L1 (e.g. "npt=0").
	L1KVMAMDEnv = "GOVMM_L1_KVM_AMD"
	// L1AppendEnv adds to L1's kernel command line (e.g. "tsc=reliable").
	L1AppendEnv = "GOVMM_L1_APPEND"
	qemuBin     = "qemu-system-x86_64"
	exitMark    = "@@govmm-nested-exit="
)

// Config says what to run in L1.
type Config struct {
	// Command is argv; Command[0] is a path inside L1 (every host path
	// added through Files or Programs exists there at the same path).
	Command []string
	Dir     string   // working directory in L1 (default /)
	Env     []string // environment in L1, added to a minimal default
	// Files are host files and directories copied into L1 at the same
	// paths. ELF executables bring the shared libraries ldd lists.
	Files []string
	// Programs are host programs looked up in PATH, copied with their
	// libraries and the data files they are known to need.
	Programs []string
	CPUs     int           // L1 vCPUs (default 2)
	MemoryMB int           // L1 RAM (default 3072)
	Timeout  time.Duration // the whole run, boot included (default 30m)
	// IdleTimeout, when set, ends the run when the command has printed
	// nothing for that long: a frozen L1 (a soft lockup) prints nothing.
	IdleTimeout time.Duration
	// Output receives the command's stdout and stderr as they arrive.
	Output io.Writer
	// Machine replaces L1's -machine value (default "q35"), e.g.
	// "q35,kernel-irqchip=split" for an emulated IOMMU.
	Machine string
	// QEMUArgs are more arguments for L1's QEMU (devices, e.g. "-device",
	// "intel-iommu,intremap=on", "-device", "edu").
	QEMUArgs []string
	// Append is more of L1's kernel command line.
	Append string
	// Modules are more kernel modules of L1's kernel, by their path under
	// its modules' kernel/ directory (e.g. "drivers/vfio/vfio.ko"), loaded
	// in order after KVM's.
	Modules []string
	// Arch is L1's architecture: "" (x86-64) or ArchARM64 (aarch64.go).
	// Every program in an aarch64 L1 must be an arm64 build.
	Arch string
	// Linux is another x86-64 kernel for L1: a Debian kernel package
	// unpacked as the cloud kernel is (boot/vmlinuz-*, its modules under
	// lib/modules/VER/kernel, decompressed), e.g. MdevLinuxDir(). Empty
	// means the cloud kernel in CacheDir()/linux. Modules are then that
	// kernel's, and a Modules entry may also be an absolute path (a
	// module built out of tree for it).
	Linux string
}

// Result is what a run produced.
type Result struct {
	ExitCode int           // the command's exit status
	Boot     time.Duration // from starting QEMU to the command's first byte of output
	Wall     time.Duration
	// ConsoleLog is the end of L1's kernel log (with its first oops), for
	// a command that died of something only L1's kernel saw: the OOM
	// killer, a crash in L1.
	ConsoleLog string
}

// Error is a run that did not end with the command's exit status: L1 did
// not boot, hung, or QEMU failed. It carries the end of both logs.
type Error struct {
	Reason     string
	OutputTail string // the last lines the command printed
	ConsoleLog string // the last lines of L1's kernel log
	// QEMULog is what QEMU itself logged about L1's CPUs (-d cpu_reset):
	// "Triple fault" when L1 died of one, which its kernel cannot report.
	QEMULog string
	// Kept names the files that keep L1's whole kernel log and QEMU's
	// log after the run, for a post-mortem.
	Kept []string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("nested KVM: " + e.Reason)
	if e.OutputTail != "" {
		b.WriteString("\n--- last output from L1:\n" + e.OutputTail)
	}
	if e.ConsoleLog != "" {
		b.WriteString("\n--- L1 kernel log (end):\n" + e.ConsoleLog)
	}
	if e.QEMULog != "" {
		b.WriteString("\n--- QEMU's log of L1's CPUs (end):\n" + e.QEMULog)
	}
	if len(e.Kept) > 0 {
		b.WriteString("\n--- kept: " + strings.Join(e.Kept, " "))
	}
	return b.String()
}

// Assets are the host files L1 is built from.
type Assets struct {
	QEMU        string // qemu-system-x86_64
	QEMUVersion string
	Kernel      string   // Debian cloud kernel bzImage
	Modules     []string // irqbypass.ko, kvm.ko, kvm-amd.ko, in load order
	Busybox     string   // a static busybox
	Arch        string   // "" (x86-64) or ArchARM64
	// OutputModules are loaded before the command's output is switched
	// to OutputDev (default /dev/ttyS1).
	OutputModules []string
	OutputDev     string
}

var (
	assetsOnce sync.Once
	assets     *Assets
	assetsErr  error
)

// Find locates QEMU, the kernel, its KVM modules and busybox, or says what
// is missing and how to get it.
func Find() (*Assets, error) {
	assetsOnce.Do(func() { assets, assetsErr = find() })
	return assets, assetsErr
}

// CacheDir is where .ci/run unpacks Debian's cloud kernel.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "govmm")
}

// LinuxKernel is the cached Debian cloud kernel (a bzImage), or "".
func LinuxKernel() string { return kernelIn(filepath.Join(CacheDir(), "linux")) }

// kernelIn is the newest boot/vmlinuz-* in an unpacked kernel package, or "".
func kernelIn(dir string) string {
	m, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(m) == 0 {
		return ""
	}
	sort.Strings(m)
	return m[len(m)-1]
}

const howToGet = "run .ci/run once: it installs qemu-system-x86 (10.x, from bookworm-backports) and busybox-static, and unpacks Debian's cloud kernel into " + "~/.cache/govmm/linux"

// IOMMUFDKernelDir is where .ci/run puts Debian's 6.12 cloud kernel with
// iommufd and the VFIO modules rebuilt (.ci/iommufd-kernel.sh), for
// TestVFIOIOMMUFD's L1 (Config.Linux).
func IOMMUFDKernelDir() string { return filepath.Join(CacheDir(), "linux-iommufd") }

// MdevLinuxDir is where .ci/mdev-kernel unpacks Debian's generic 6.12
// kernel (with CONFIG_VFIO_MDEV) and builds the mtty sample driver
// (mtty/mtty.ko) for the VFIO migration test's L1.
func MdevLinuxDir() string { return filepath.Join(CacheDir(), "linux-mdev") }

// FindLinux is Find with L1's kernel and KVM modules taken from dir, a
// kernel package unpacked as CacheDir()/linux is (Config.Linux).
func FindLinux(dir string) (*Assets, error) {
	if dir == "" {
		return Find()
	}
	linuxMu.Lock()
	defer linuxMu.Unlock()
	if a, ok := linuxAssets[dir]; ok {
		return a, nil
	}
	a, err := findIn(dir, "run .ci/mdev-kernel (as .ci/run does) to download and unpack it")
	if err != nil {
		return nil, err
	}
	linuxAssets[dir] = a
	return a, nil
}

var (
	linuxMu     sync.Mutex
	linuxAssets = map[string]*Assets{}
)

func find() (*Assets, error) {
	return findIn(filepath.Join(CacheDir(), "linux"), howToGet)
}

// findIn locates QEMU, busybox, and the kernel and KVM modules unpacked
// in dir; hint says how to get what is missing.
func findIn(dir, hint string) (*Assets, error) {
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("nested KVM is built for x86-64 hosts, not %s", runtime.GOARCH)
	}
	var a Assets
	var err error
	if a.QEMU, err = exec.LookPath(qemuBin); err != nil {
		return nil, fmt.Errorf("%s not found: %s", qemuBin, howToGet)
	}
	if out, err := exec.Command(a.QEMU, "--version").Output(); err == nil {
		a.QEMUVersion = strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "QEMU emulator version ")
	}
	if a.Kernel = kernelIn(dir); a.Kernel == "" {
		return nil, fmt.Errorf("no kernel in %s: %s", filepath.Join(dir, "boot"), hint)
	}
	ver := strings.TrimPrefix(filepath.Base(a.Kernel), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", ver, "kernel")
	for _, m := range []string{"virt/lib/irqbypass.ko", "arch/x86/kvm/kvm.ko", "drivers/crypto/ccp/ccp.ko", "arch/x86/kvm/kvm-amd.ko"} {
		p := filepath.Join(mods, m)
		if _, err := os.Stat(p); err != nil {
			if strings.Contains(m, "ccp") {
				continue // only a kernel with SEV support has kvm-amd need it
			}
			return nil, fmt.Errorf("KVM module %s missing: %s", p, hint)
		}
		a.Modules = append(a.Modules, p)
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			a.Busybox = p
			break
		}
	}
	if a.Busybox == "" {
		return nil, fmt.Errorf("busybox not found: %s", howToGet)
	}
	return &a, nil
}

// HardwareKVM reports whether this machine's /dev/kvm has hardware
// virtualization semantics: the CPU shows vmx or svm (as it does inside
// L1). A /dev/kvm without them is the software kvm_pvm backend, which
// emulates guest CPL0 code.
func HardwareKVM() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "flags") {
			for _, f := range strings.Fields(line) {
				if f == "vmx" || f == "svm" {
					return true
				}
			}
		}
	}
	return false
}

// programData lists the data a program reads at run time beyond its
// libraries: QEMU its firmware, tmux the terminal descriptions.
var programData = map[string][]string{
	qemuBin: {"/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"},
	"tmux":  {"/lib/terminfo", "/usr/share/terminfo", "/usr/lib/locale/C.utf8"}, // tmux refuses a non-UTF-8 locale
}

// Lock waits until no other nested VM runs on this machine and holds that
// until release is called. Two TCG VMs on a two-core machine would each run
// at half speed and make every timeout meaningless, so Run takes it too;
// callers that must wait before they budget their time take it first (it
// is not re-entrant across processes, but Run skips it for a caller that
// holds it).
func Lock() (release func(), err error) {
	lockMu.Lock()
	defer lockMu.Unlock()
	if lockHeld {
		return func() {}, nil
	}
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "govmm-nested.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("nested VM lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("nested VM lock: %w", err)
	}
	lockHeld = true
	return func() {
		lockMu.Lock()
		defer lockMu.Unlock()
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
		lockHeld = false
	}, nil
}

var (
	lockMu   sync.Mutex
	lockHeld bool
)

// Run boots L1, runs cfg.Command there and returns its exit status. A
// command that runs and fails is not an error; a VM that does not boot,
// does not finish within the timeout, or dies is (*Error).
func Run(ctx context.Context, cfg Config) (Result, error) {
	find := func() (*Assets, error) { return FindLinux(cfg.Linux) }
	if cfg.Arch == ArchARM64 {
		find = FindARM64
	} else if cfg.Arch != "" {
		return Result{}, fmt.Errorf("nested: no L1 for architecture %q", cfg.Arch)
	}
	a, err := find()
	if err != nil {
		return Result{}, err
	}
	if len(cfg.Command) == 0 {
		return Result{}, errors.New("nested: no command")
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
		if n, err := strconv.Atoi(os.Getenv(L1CPUsEnv)); err == nil && n > 0 {
			cfg.CPUs = n
		}
	}
	tcg := "tcg,thread=multi"
	if v := os.Getenv(L1TCGEnv); v != "" {
		tcg = "tcg," + v
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 3072
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Minute
	}
	if cfg.Output == nil {
		cfg.Output = io.Discard
	}
	release, err := Lock()
	if err != nil {
		return Result{}, err
	}
	defer release()
	work, err := os.MkdirTemp("", "govmm-l1-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(work)
	initrd := filepath.Join(work, "initrd.cpio")
	if err := buildInitramfs(initrd, a, cfg); err != nil {
		return Result{}, fmt.Errorf("nested: build L1's initramfs: %w", err)
	}
	console := filepath.Join(work, "console.log")
	qemuLog := filepath.Join(work, "qemu.log")

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	machine := "q35"
	if cfg.Machine != "" {
		machine = cfg.Machine
	}
	args := []string{
		"-accel", tcg, "-cpu", "max", "-machine", machine,
		"-smp", strconv.Itoa(cfg.CPUs), "-m", strconv.Itoa(cfg.MemoryMB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", initrd,
		"-append", strings.TrimSpace("console=ttyS0 loglevel=4 panic=-1 mitigations=off " + os.Getenv(L1AppendEnv) + " " + cfg.Append),
		"-serial", "file:" + console,
		"-chardev", "stdio,id=out,signal=off", "-serial", "chardev:out",
	}
	if a.Arch == ArchARM64 {
		args = aarch64QEMUArgs(a, cfg, tcg, initrd, console)
	}
	// QEMU logs an L1 CPU's resets, and a triple fault ends L1 with no
	// word from its kernel: the log tells that death from the others.
	args = append(args, "-d", "cpu_reset", "-D", qemuLog)
	cmd := exec.CommandContext(ctx, a.QEMU, append(args, cfg.QEMUArgs...)...)
	cmd.Stdin = nil
	// L1 dies with the test process: a test binary killed from outside
	// (a developer's ^C, a CI timeout) must not leave an L1 running on
	// both cores with the machine-wide lock already given to the next.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var qemuErr bytes.Buffer
	cmd.Stderr = &qemuErr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("nested: start %s: %w", a.QEMU, err)
	}
	res := Result{ExitCode: -1}
	tail := &tailBuffer{max: 64 << 10}
	first := true
	var idle *time.Timer
	var idled atomic.Bool
	if cfg.IdleTimeout > 0 {
		idle = time.AfterFunc(cfg.IdleTimeout, func() { idled.Store(true); cancel() })
		defer idle.Stop()
	}
	// The console tells a dead L1 whose QEMU still runs (watch.go).
	var dead atomic.Value       // string: why L1 was killed
	var lastOutput atomic.Int64 // when the command last printed a line, in UnixNano
	lastOutput.Store(start.UnixNano())
	watchDone := make(chan struct{})
	defer close(watchDone)
	go func() {
		w := &consoleWatch{path: console, beat: time.Now()}
		t := time.NewTicker(watchPoll)
		defer t.Stop()
		for {
			select {
			case <-watchDone:
				return
			case now := <-t.C:
				if why := w.check(now, time.Unix(0, lastOutput.Load())); why != "" {
					dead.Store(why)
					cancel()
					return
				}
			}
		}
	}()
	sc := bufio.NewScanner(pipe)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if idle != nil {
			idle.Reset(cfg.IdleTimeout)
		}
		lastOutput.Store(time.Now().UnixNano())
		line := strings.TrimSuffix(sc.Text(), "\r")
		if first {
			res.Boot = time.Since(start)
			first = false
		}
		if i := strings.Index(line, exitMark); i >= 0 {
			// The marker follows the command's last byte, which need not
			// have ended its line.
			if n, err := strconv.Atoi(line[i+len(exitMark):]); err == nil {
				res.ExitCode = n
			}
			if line = line[:i]; line == "" {
				continue
			}
		}
		tail.WriteString(line + "\n")
		io.WriteString(cfg.Output, line+"\n")
	}
	waitErr := cmd.Wait()
	res.Wall = time.Since(start)
	if res.ExitCode >= 0 {
		if res.ExitCode != 0 {
			res.ConsoleLog = consoleExcerpt(console)
		}
		return res, nil
	}
	e := &Error{OutputTail: tail.lastLines(40), ConsoleLog: consoleExcerpt(console), QEMULog: qemuLogExcerpt(qemuLog)}
	for _, f := range []string{console, qemuLog} {
		if kept := keep(f); kept != "" {
			e.Kept = append(e.Kept, kept)
		}
	}
	switch {
	case dead.Load() != nil:
		e.Reason = dead.Load().(string)
	case idled.Load():
		e.Reason = fmt.Sprintf("no output from L1 for %v (killed)", cfg.IdleTimeout)
	case ctx.Err() == context.DeadlineExceeded:
		e.Reason = fmt.Sprintf("L1 did not finish within %v (killed)", cfg.Timeout)
	case ctx.Err() != nil:
		e.Reason = "cancelled: " + ctx.Err().Error()
	case waitErr != nil:
		e.Reason = fmt.Sprintf("QEMU failed: %v: %s", waitErr, strings.TrimSpace(qemuErr.String()))
	default:
		e.Reason = "L1 powered off before the command reported its exit status"
	}
	if strings.Contains(e.ConsoleLog, "soft lockup") {
		e.Reason += " (L1's kernel reported a soft lockup)"
	}
	return res, e
}

// buildInitramfs writes L1's root: busybox, the modules, /init and every
// file the command needs.
func buildInitramfs(out string, a *Assets, cfg Config) error {
	ar := initramfs.New()
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/root", "/run", "/etc", "/var/tmp", "/bin", "/sbin", "/usr/bin", "/usr/sbin"} {
		ar.Dir(d)
	}
	if err := ar.File("/bin/busybox", a.Busybox); err != nil {
		return err
	}
	for _, m := range a.OutputModules {
		if err := ar.File("/lib/modules/nested/"+filepath.Base(m), m); err != nil {
			return err
		}
	}
	for _, m := range append(append([]string(nil), a.Modules...), extraModules(a, cfg)...) {
		if err := ar.File("/lib/modules/nested/"+filepath.Base(m), m); err != nil {
			return err
		}
	}
	ar.Bytes("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	ar.Bytes("/etc/group", 0o644, []byte("root:x:0:\n"))
	seen := map[string]bool{}
	add := func(p string) error { return addPath(ar, p, seen) }
	for _, p := range cfg.Files {
		if err := add(p); err != nil {
			return err
		}
	}
	for _, prog := range cfg.Programs {
		p, err := exec.LookPath(prog)
		if err != nil {
			return fmt.Errorf("program %s: %w", prog, err)
		}
		if err := add(p); err != nil {
			return err
		}
		for _, d := range programData[prog] {
			if _, err := os.Stat(d); err == nil {
				if err := add(d); err != nil {
					return err
				}
			}
		}
	}
	ar.Bytes("/init", 0o755, []byte(initScript(a, cfg)))
	return ar.WriteFile(out)
}

// addPath adds a host file or tree at its own path; executables bring the
// libraries ldd lists for them.
func addPath(ar *initramfs.Archive, p string, seen map[string]bool) error {
	p, err := filepath.Abs(p)
	if err != nil {
		return err
	}
	if seen[p] {
		return nil
	}
	seen[p] = true
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return ar.Tree(p, func(rel string, d fs.DirEntry) bool { return d.IsDir() && d.Name() == ".git" })
	}
	if err := ar.File(p, p); err != nil {
		return err
	}
	if st.Mode()&0o111 == 0 || !isELF(p) {
		return nil
	}
	for _, lib := range sharedLibs(p) {
		if !seen[lib] {
			seen[lib] = true
			if err := ar.File(lib, lib); err != nil {
				return err
			}
		}
	}
	return nil
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && string(magic[:]) == "\x7fELF"
}

// sharedLibs lists the absolute paths ldd prints for an executable,
// the dynamic loader included; none for a static one.
func sharedLibs(p string) []string {
	out, _ := exec.Command("ldd", p).Output()
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				libs = append(libs, f)
				break
			}
		}
	}
	return libs
}

// shellQuote quotes s for busybox sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// initScript is L1's /init: mount, load KVM, run the command with its
// output on ttyS1, report the exit status, power off.
func initScript(a *Assets, cfg Config) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# KVM's per-VM counters, for hang reports (internal/hangreport) and devbench.
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname l1
ip link set lo up 2>/dev/null
# The BPF interpreter, not the JIT: every govmm process installs a
# seccomp filter, and with JIT-compiled filters L1's kernel died under
# KVM_RUN ("stack guard page was hit") in 3 of 4 TestLinuxSnapshot runs;
# with the interpreter in none of 5 (measured 2026-12-05, QEMU 10.0.2 TCG),
# though it still strikes now and then (one L1 in 70 soak boots).
echo 0 > /proc/sys/net/core/bpf_jit_enable
`)
	for _, m := range a.OutputModules {
		fmt.Fprintf(&b, "insmod /lib/modules/nested/%s || echo 'nested: insmod %s failed'\n", filepath.Base(m), filepath.Base(m))
	}
	out := a.OutputDev
	if out == "" {
		out = "/dev/ttyS1"
	}
	if len(a.OutputModules) > 0 {
		// The device node of a driver just loaded appears a little later.
		fmt.Fprintf(&b, "i=0; while [ ! -c %s ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n", out)
	}
	fmt.Fprintf(&b, "stty -F %s raw -echo 2>/dev/null\nexec >%s 2>&1\n", out, out)
	for _, m := range a.Modules {
		params := ""
		if filepath.Base(m) == "kvm-amd.ko" {
			params = os.Getenv(L1KVMAMDEnv)
		}
		fmt.Fprintf(&b, "insmod /lib/modules/nested/%s %s || echo 'nested: insmod %s failed'\n", filepath.Base(m), params, filepath.Base(m))
	}
	b.WriteString("[ -c /dev/kvm ] || echo 'nested: no /dev/kvm in L1 (is svm missing from -cpu?)'\n")
	if cfg.Arch == "" {
		vmcb := 0
		for _, m := range a.Modules {
			if filepath.Base(m) == "kvm-amd.ko" {
				vmcb = vmcbOffset(m)
			}
		}
		b.WriteString(shutdownTraceScript(vmcb))
	}
	for _, m := range extraModules(a, cfg) {
		fmt.Fprintf(&b, "insmod /lib/modules/nested/%s || echo 'nested: insmod %s failed'\n", filepath.Base(m), filepath.Base(m))
	}
	dir := cfg.Dir
	if dir == "" {
		dir = "/"
	}
	b.WriteString(heartbeatScript(out))
	fmt.Fprintf(&b, "cd %s || echo 'nested: no directory %s'\n", shellQuote(dir), dir)
	env := []string{"HOME=/root", "TMPDIR=/tmp", "TERM=xterm", "LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", InL1Env + "=1"}
	env = append(env, cfg.Env...)
	b.WriteString("env -i")
	for _, e := range env {
		b.WriteString(" " + shellQuote(e))
	}
	for _, arg := range cfg.Command {
		b.WriteString(" " + shellQuote(arg))
	}
	b.WriteString(" </dev/null\n")
	b.WriteString("echo \"" + exitMark + "$?\"\nsync\npoweroff -f\n")
	return b.String()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) WriteString(s string) {
	t.buf = append(t.buf, s...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
}

func (t *tailBuffer) lastLines(n int) string { return lastN(string(t.buf), n) }

func lastLines(path string, n int) string {
	b, _ := os.ReadFile(path)
	return lastN(string(b), n)
}

// oopsMarks begin the kernel messages that say why L1 died.
var oopsMarks = []string{"BUG:", "Oops", "general protection fault", "WARNING:", "Kernel panic", "stack guard page", "invoked oom-killer", "Out of memory"}

// consoleExcerpt is the end of L1's console, preceded by the first kernel
// oops and the lines after it when the oops began before that end (the
// first report is the cause, the last lines are often only its echo), and
// by the last stall dump of the heartbeat loop (watch.go), whole, when it
// too came before that end.
func consoleExcerpt(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.ReplaceAll(strings.TrimRight(string(b), "\n"), "\r", ""), "\n")
	// Of the heartbeats, the last alone says something: L1's uptime
	// when its init last ran.
	last := ""
	if i := lastIndexFunc(lines, func(l string) bool { return strings.Contains(l, heartbeatMark) }); i >= 0 {
		last = lines[i]
	}
	lines = slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, heartbeatMark) && l != last })
	const end, oops, stall = 40, 40, 200
	tail := len(lines) - end // where the end's lines begin
	var parts []string
	if first := slices.IndexFunc(lines, func(l string) bool {
		return slices.ContainsFunc(oopsMarks, func(m string) bool { return strings.Contains(l, m) })
	}); first >= 0 && first < tail {
		from := max(first-3, 0)
		parts = append(parts, strings.Join(lines[from:min(from+oops, tail)], "\n"))
	}
	header := stallMark + ": the command"
	if i := lastIndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, header) }); i >= 0 && i < tail {
		var dump []string
		for _, l := range lines[i:tail] {
			if strings.HasPrefix(l, stallMark) && len(dump) < stall {
				dump = append(dump, l)
			}
		}
		parts = append(parts, strings.Join(dump, "\n"))
	}
	if len(parts) == 0 {
		return lastN(strings.Join(lines, "\n"), end)
	}
	return strings.Join(append(parts, strings.Join(lines[tail:], "\n")), "\n[...]\n")
}

// lastIndexFunc is slices.IndexFunc from the end: the last i with f(s[i]),
// or -1.
func lastIndexFunc[S ~[]E, E any](s S, f func(E) bool) int {
	for i := len(s) - 1; i >= 0; i-- {
		if f(s[i]) {
			return i
		}
	}
	return -1
}

// qemuLogExcerpt is the events in QEMU's log of L1's CPUs ("Triple
// fault"), without the register dumps of every reset.
func qemuLogExcerpt(path string) string {
	b, _ := os.ReadFile(path)
	var events []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "fault") {
			events = append(events, l)
		}
	}
	return lastN(strings.Join(events, "\n"), 20)
}

// keep copies a log of a failed run out of the run's temporary folder
// and returns the copy's name, or "" when there is nothing to keep.
func keep(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	f, err := os.CreateTemp("", "govmm-l1-kept-*-"+filepath.Base(path))
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return ""
	}
	return f.Name()
}

func lastN(s string, n int) string {
	s = strings.ReplaceAll(strings.TrimRight(s, "\n"), "\r", "")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// extraModules are the host paths of cfg.Modules in L1's kernel's module
// tree (next to the KVM modules).
func extraModules(a *Assets, cfg Config) []string {
	if len(cfg.Modules) == 0 || len(a.Modules) == 0 {
		return nil
	}
	// a.Modules[0] is .../kernel/virt/lib/irqbypass.ko.
	root := filepath.Dir(filepath.Dir(filepath.Dir(a.Modules[0])))
	var out []string
	for _, m := range cfg.Modules {
		if !filepath.IsAbs(m) {
			m = filepath.Join(root, m)
		}
		out = append(out, m)
	}
	return out
}
