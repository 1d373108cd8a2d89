package main

// -arch arm64: the same measurement on KVM/arm64 (issue 17): govmm's arm64
// build against qemu-system-aarch64 -accel kvm -M virt -cpu host, booting
// the Linux Image directly (-kernel, no firmware) and through its UEFI
// firmware (-bios QEMU_EFI.fd, which loads the same -kernel through
// fw_cfg), with the same arm64 kernel, busybox initramfs, command line,
// memory and vCPUs, interleaved per repetition. It runs inside an aarch64
// L1 (internal/nested, Config.Arch = "arm64"), the only KVM/arm64 this
// project has, and so does QEMU: Debian's arm64 qemu-system-arm and the
// libraries it links, unpacked by .ci/run into ~/.cache/govmm/arm64-qemu,
// run there through their own dynamic loader (the L1 has no /lib).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"govmm/bench/internal/host"
	"govmm/internal/initramfs"
	"govmm/internal/nested"
)

var (
	archFlag  = flag.String("arch", "", "arm64: measure govmm's arm64 build against qemu-system-aarch64 in an aarch64 L1 (-runs, -cpus, -timeout, -no-qemu apply; the rest is x86 only)")
	arm64QEMU = flag.String("arm64-qemu", "", "with -arch arm64: the unpacked arm64 QEMU tree (default: .ci/run's, next to the arm64 kernel)")
)

// The arm64 columns.
var arm64VMMs = []string{"govmm", "qemu-virt", "qemu-virt-uefi"}

// arm64Cmdline is the arm64 guests' command line: cmdline's, with the
// PL011 (ttyAMA0 on govmm's board and on QEMU virt) as the console.
var arm64Cmdline = strings.Replace(cmdline, "console=ttyS0", "console=ttyAMA0", 1)

// arm64Init is the arm64 guest's /init: the marker, then power-off.
const arm64Init = `#!/bin/busybox sh
echo "linuxboot: init"
/bin/busybox poweroff -f
`

// arm64Config is what every arm64 boot shares.
type arm64Config struct {
	govmm, kernel, initrd string
	qemuDir               string // the unpacked arm64 QEMU ("" without QEMU)
	runs                  int
	cpus                  []int
	timeout               time.Duration
	emit                  func(result)
}

// qemuParts are the arm64 QEMU's files inside its tree.
const (
	qemuAArch64Loader = "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
	qemuAArch64Bin    = "usr/bin/qemu-system-aarch64"
	qemuAArch64EFI    = "usr/share/qemu-efi-aarch64/QEMU_EFI.fd"
)

func defaultARM64QEMU() string {
	return filepath.Join(filepath.Dir(nested.ARM64Dir()), "arm64-qemu")
}

// checkARM64QEMU reports what of the arm64 QEMU tree is missing.
func checkARM64QEMU(dir string) error {
	for _, p := range []string{qemuAArch64Loader, qemuAArch64Bin, qemuAArch64EFI} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return fmt.Errorf("arm64 QEMU: %w (run .ci/run once, or pass -arm64-qemu)", err)
		}
	}
	return nil
}

func (cfg *arm64Config) columns() []string {
	if cfg.qemuDir == "" {
		return arm64VMMs[:1]
	}
	return arm64VMMs
}

// argv boots the guest under vmm with cpus vCPUs.
func (cfg *arm64Config) argv(vmm string, cpus int) []string {
	if vmm == "govmm" {
		return []string{cfg.govmm, "run", "--kernel", cfg.kernel, "--initrd", cfg.initrd, "--cmdline", arm64Cmdline,
			"--cpus", strconv.Itoa(cpus), "--memory", memory + "M", "--serial", "stdio"}
	}
	q := cfg.qemuDir
	libs := filepath.Join(q, "lib/aarch64-linux-gnu") + ":" + filepath.Join(q, "usr/lib/aarch64-linux-gnu")
	// gic-version=3 (with its ITS, virt's default for GICv3) as govmm's
	// board has; -cpu host, as govmm's vCPUs are the host's.
	args := []string{filepath.Join(q, qemuAArch64Loader), "--library-path", libs, filepath.Join(q, qemuAArch64Bin),
		"-accel", "kvm", "-cpu", "host", "-M", "virt,gic-version=3",
		"-smp", strconv.Itoa(cpus), "-m", memory, "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-kernel", cfg.kernel, "-initrd", cfg.initrd, "-append", arm64Cmdline}
	if vmm == "qemu-virt-uefi" {
		args = append(args, "-bios", filepath.Join(q, qemuAArch64EFI))
	}
	return args
}

// measure boots every column runs times, alternating the order.
func (cfg *arm64Config) measure() {
	for rep := 0; rep < cfg.runs; rep++ {
		for i, cpus := range cfg.cpus {
			for _, vmm := range alternate(cfg.columns(), rep+i) {
				cfg.emit(cfg.boot(vmm, cpus, rep))
			}
		}
		cfg.emit(result{Kind: "done", Rep: rep})
	}
}

// boot is one timed boot: exec to the marker line, exec to exit.
func (cfg *arm64Config) boot(vmm string, cpus, rep int) result {
	return timeBoot(result{Kind: "boot", VMM: vmm, CPUs: cpus, Rep: rep}, cfg.argv(vmm, cpus), cfg.timeout, launch{}, nil)
}

// mainARM64 is main for -arch arm64: inside the aarch64 L1 (-prebuilt) it
// boots and prints result lines; on the host it builds the arm64 govmm,
// this benchmark for arm64 and the initramfs, runs itself in an aarch64
// L1 and prints the report.
func mainARM64() {
	if *archFlag != "arm64" {
		fail("-arch %q: want arm64 (the default is this machine's x86-64)", *archFlag)
	}
	get := func(name string) string { return flag.Lookup(name).Value.String() }
	runs, err := strconv.Atoi(get("runs"))
	if err != nil || runs < 1 {
		fail("bad -runs %q", get("runs"))
	}
	timeout, err := time.ParseDuration(get("timeout"))
	if err != nil {
		fail("bad -timeout: %v", err)
	}
	cfg := &arm64Config{runs: runs, timeout: timeout, qemuDir: *arm64QEMU}
	for _, f := range strings.Split(get("cpus"), ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			fail("bad -cpus %q", get("cpus"))
		}
		cfg.cpus = append(cfg.cpus, n)
	}
	noQEMU := get("no-qemu") == "true"
	if prebuilt := get("prebuilt"); prebuilt != "" {
		if runtime.GOARCH != "arm64" {
			fail("-arch arm64 -prebuilt runs inside the aarch64 L1")
		}
		cfg.govmm, cfg.initrd, cfg.kernel = filepath.Join(prebuilt, "govmm"), filepath.Join(prebuilt, "initrd.cpio"), get("kernel")
		cfg.emit = func(r result) { fmt.Println(r) }
		cfg.emit(result{Kind: "substrate", Note: arm64Substrate(cfg)})
		cfg.measure()
		return
	}

	a, err := nested.FindARM64()
	if err != nil {
		fail("nested arm64 KVM: %v", err)
	}
	cfg.kernel = a.Kernel
	if !noQEMU {
		if cfg.qemuDir == "" {
			cfg.qemuDir = defaultARM64QEMU()
		}
		if err := checkARM64QEMU(cfg.qemuDir); err != nil {
			fail("%v", err)
		}
	}
	tmp, err := os.MkdirTemp("", "govmm-linuxboot-arm64-")
	if err != nil {
		fail("%v", err)
	}
	defer os.RemoveAll(tmp)
	self := filepath.Join(tmp, "linuxboot")
	if err := buildForARM64(filepath.Join(tmp, "govmm"), "./cmd/govmm"); err != nil {
		fail("%v", err)
	}
	if err := buildForARM64(self, "./bench/linuxboot"); err != nil {
		fail("%v", err)
	}
	ar := initramfs.New()
	if err := ar.File("/bin/busybox", a.Busybox); err != nil {
		fail("%v", err)
	}
	ar.Bytes("/init", 0o755, []byte(arm64Init))
	ar.Dir("/dev")
	if err := ar.WriteFile(filepath.Join(tmp, "initrd.cpio")); err != nil {
		fail("%v", err)
	}

	command := strings.TrimSpace("go run ./bench/linuxboot " + strings.Join(os.Args[1:], " "))
	args := []string{self, "-arch", "arm64", "-prebuilt", tmp, "-kernel", cfg.kernel, "-runs", strconv.Itoa(runs),
		"-cpus", joinInts(cfg.cpus), "-timeout", timeout.String()}
	files := []string{tmp, cfg.kernel}
	if cfg.qemuDir != "" {
		args = append(args, "-arm64-qemu", cfg.qemuDir)
		files = append(files, cfg.qemuDir)
	} else {
		args = append(args, "-no-qemu")
	}
	fmt.Fprintln(os.Stderr, "linuxboot: arm64: running in an aarch64 L1; waiting for its lock")
	c := newCollector()
	begin := time.Now()
	res, err := nested.Run(context.Background(), nested.Config{
		Arch:        nested.ArchARM64,
		Command:     args,
		Dir:         "/tmp",
		Files:       files,
		MemoryMB:    3072,
		Timeout:     time.Duration(runs*len(cfg.columns())*len(cfg.cpus))*timeout + 10*time.Minute,
		IdleTimeout: timeout + 2*time.Minute,
		Output:      &host.LineWriter{Line: c.line},
	})
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("the run in the aarch64 L1 exited with status %d", res.ExitCode)
	}
	var ne *nested.Error
	if errors.As(err, &ne) {
		err = fmt.Errorf("%s\n--- L1 kernel log (end):\n%s", ne.Reason, host.LastLines(ne.ConsoleLog, 15))
	}
	reportARM64(c, cfg, command, time.Since(begin))
	if err != nil {
		fail("%v", err)
	}
}

// buildForARM64 cross-compiles pkg of this module for arm64, static.
func buildForARM64(out, pkg string) error {
	_, file, _, _ := runtime.Caller(0)
	c := exec.Command("go", "build", "-o", out, pkg)
	c.Dir = filepath.Dir(filepath.Dir(filepath.Dir(file)))
	c.Env = append(os.Environ(), "GOARCH=arm64", "CGO_ENABLED=0")
	if b, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s for arm64: %v\n%s", pkg, err, b)
	}
	return nil
}

// arm64Substrate says where the numbers come from: L1's kernel and CPUs,
// and the QEMU version.
func arm64Substrate(cfg *arm64Config) string {
	s := "aarch64 L1"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		s += ", Linux " + strings.TrimSpace(string(b))
	}
	s += fmt.Sprintf(", %d CPUs", runtime.NumCPU())
	if cfg.qemuDir != "" {
		argv := cfg.argv("qemu-virt", 1)
		out, err := exec.Command(argv[0], argv[1], argv[2], argv[3], "--version").Output()
		if err != nil {
			return s + ", QEMU --version: " + err.Error()
		}
		s += ", " + strings.SplitN(string(out), "\n", 2)[0]
	}
	return s
}

// reportARM64 prints the medians and minima of each column and govmm's
// ratios to QEMU's.
func reportARM64(c *collector, cfg *arm64Config, command string, took time.Duration) {
	fmt.Printf("\nLinux arm64 to init: %s, initramfs with busybox, %q, %s MiB; %d runs interleaved\n",
		filepath.Base(cfg.kernel), arm64Cmdline, memory, cfg.runs)
	fmt.Printf("substrate: %s\n\n", c.substrate)
	fmt.Printf("%-15s %5s %16s %16s %16s %16s %7s\n", "VMM", "vCPUs", "init median", "init min", "exit median", "exit min", "failed")
	for _, cpus := range cfg.cpus {
		for _, vmm := range cfg.columns() {
			s := c.stats("boot", vmm, cpus)
			fmt.Printf("%-15s %5d %16s %16s %16s %16s %4d/%d\n", vmm, cpus, msec(median(s.init)), msec(minimum(s.init)),
				msec(median(s.exit)), msec(minimum(s.exit)), s.failed, s.failed+len(s.init))
		}
		g := c.stats("boot", "govmm", cpus)
		for _, vmm := range cfg.columns()[1:] {
			q := c.stats("boot", vmm, cpus)
			fmt.Printf("govmm / %s, %d vCPUs: init %s, exit %s\n", vmm, cpus, times(ratio(g.init, q.init)), times(ratio(g.exit, q.exit)))
		}
	}
	for _, r := range c.results {
		if r.failed() {
			fmt.Printf("failed: %s %d vCPUs run %d: %s\n", r.VMM, r.CPUs, r.Rep+1, r.Note)
		}
	}
	fmt.Printf("\n%s: %v\n", command, took.Round(time.Second))
}
