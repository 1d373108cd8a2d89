// Command linuxsoak boots Debian's cloud kernel to its userspace again and
// again under govmm, on each accelerator and vCPU count, and reports every
// boot that failed: a soak, not a test (the test suite boots once per
// accelerator). A boot passes when the guest's init prints the token from
// its command line and the expected CPU count, then powers off
// (internal/linuxguest).
//
// Linux reaches init only with hardware virtualization semantics, so where
// this machine's /dev/kvm is missing or is the software kvm_pvm backend the
// soak runs itself inside a nested-KVM VM (internal/nested).
//
//	go run ./bench/linuxsoak [-n 10] [-cpus 1,2,4] [-accels kvm,mshvsim]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"govmm/internal/linuxguest"
	"govmm/internal/nested"
)

func main() {
	n := flag.Int("n", 10, "boots per configuration")
	cpuList := flag.String("cpus", "1,2,4", "vCPU counts")
	accelList := flag.String("accels", "kvm,mshvsim", "accelerators: kvm, mshvsim")
	govmm := flag.String("govmm", "", "govmm binary (default: build it)")
	kernel := flag.String("kernel", os.Getenv("GOVMM_LINUX_KERNEL"), "Linux bzImage (default: the one .ci/run caches)")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on one boot")
	cmdline := flag.String("cmdline", "", "added to the guest's kernel command line, e.g. earlyprintk=serial,ttyS0,115200")
	logLevel := flag.String("log-level", "", "govmm's --log-level")
	flag.Parse()
	if *kernel == "" {
		*kernel = nested.LinuxKernel()
	}
	if *kernel == "" {
		fail("no kernel: run .ci/run once, or pass -kernel")
	}
	if *govmm == "" {
		*govmm = buildGovmm()
	}
	if os.Getenv(nested.InL1Env) != "1" && !hardwareKVM() {
		os.Exit(inL1(*govmm, *kernel))
	}
	var cpus []int
	for _, f := range strings.Split(*cpuList, ",") {
		c, err := strconv.Atoi(f)
		if err != nil || c < 1 {
			fail("bad -cpus " + *cpuList)
		}
		cpus = append(cpus, c)
	}
	accels := map[string][]string{"kvm": {"--accel=kvm"}, "mshvsim": {"--accel=mshv", "--mshv-device=sim"}}
	dir, err := os.MkdirTemp("", "linuxsoak-")
	if err != nil {
		fail(err.Error())
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := linuxguest.WriteInitramfs(initrd); err != nil {
		fail(err.Error())
	}
	type row struct {
		name        string
		pass, fails int
		walls       []time.Duration
	}
	var rows []*row
	for _, acc := range strings.Split(*accelList, ",") {
		flags, ok := accels[acc]
		if !ok {
			fail("unknown accelerator " + acc)
		}
		for _, c := range cpus {
			r := &row{name: fmt.Sprintf("%s, %d vCPU", acc, c)}
			rows = append(rows, r)
			for i := 1; i <= *n; i++ {
				res, err := linuxguest.Boot{Govmm: *govmm, Accel: flags, Kernel: *kernel, Initrd: initrd,
					CPUs: c, Token: fmt.Sprintf("soak-%d", i), Timeout: *timeout,
					Cmdline: *cmdline, LogLevel: *logLevel}.Run(context.Background())
				if err != nil {
					r.fails++
					fmt.Printf("FAIL %s boot %d: %v\n", r.name, i, err)
					continue
				}
				r.pass++
				r.walls = append(r.walls, res.Wall)
				fmt.Printf("ok   %s boot %d: init after %v\n", r.name, i, res.Wall.Round(100*time.Millisecond))
			}
		}
	}
	fmt.Printf("\nLinux boots to userspace (%s):\n", substrate())
	total := 0
	for _, r := range rows {
		fmt.Printf("  %-18s %2d passed, %2d failed, median %v\n", r.name, r.pass, r.fails, median(r.walls).Round(100*time.Millisecond))
		total += r.fails
	}
	if total > 0 {
		os.Exit(1)
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "linuxsoak:", msg)
	os.Exit(2)
}

func buildGovmm() string {
	dir, err := os.MkdirTemp("", "linuxsoak-bin-")
	if err != nil {
		fail(err.Error())
	}
	out := filepath.Join(dir, "govmm")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/govmm")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		fail(fmt.Sprintf("build govmm: %v\n%s", err, b))
	}
	return out
}

// hardwareKVM reports whether /dev/kvm exists and has hardware semantics
// (vmx or svm in /proc/cpuinfo, as under nested KVM).
func hardwareKVM() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	b, _ := os.ReadFile("/proc/cpuinfo")
	s := string(b)
	return strings.Contains(s, " svm") || strings.Contains(s, " vmx")
}

func substrate() string {
	if os.Getenv(nested.InL1Env) == "1" {
		return "nested KVM on QEMU's TCG"
	}
	return "this machine's KVM"
}

// inL1 runs this same command inside a nested-KVM VM.
func inL1(govmm, kernel string) int {
	self, err := os.Executable()
	if err != nil {
		fail(err.Error())
	}
	bb, err := linuxguest.Busybox()
	if err != nil {
		fail(err.Error())
	}
	args := []string{self, "-govmm", govmm, "-kernel", kernel}
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "govmm" && f.Name != "kernel" {
			args = append(args, "-"+f.Name+"="+f.Value.String())
		}
	})
	// The tests' lock (internal/kvmtest): two TCG VMs on a two-core
	// machine each run at half speed, which would skew the soak.
	if f, err := os.OpenFile(filepath.Join(os.TempDir(), "govmm-nested.lock"), os.O_CREATE|os.O_RDWR, 0o666); err == nil {
		fmt.Println("linuxsoak: waiting for the nested-KVM lock")
		syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		defer f.Close()
	}
	fmt.Printf("linuxsoak: no hardware-semantics /dev/kvm here: running in a nested-KVM VM (%d host CPUs)\n", runtime.NumCPU())
	res, err := nested.Run(context.Background(), nested.Config{
		Command: args,
		Dir:     "/tmp",
		Files:   []string{self, govmm, kernel, bb},
		Timeout: 4 * time.Hour,
		Output:  os.Stdout,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return res.ExitCode
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
