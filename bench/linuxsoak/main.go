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
// The accelerator "qemu" boots the same kernel and initramfs under
// qemu-system-x86_64 on the same KVM (its defaults: -M pc -cpu host), the
// baseline that tells a failure of govmm's from one of the substrate's.
//
//	go run ./bench/linuxsoak [-n 10] [-cpus 1,2,4] [-accels kvm,mshvsim,qemu] [-args '--seccomp=off']
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
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
	accelList := flag.String("accels", "kvm,mshvsim", "accelerators: kvm, mshvsim, and qemu (QEMU's boot on KVM, the baseline)")
	govmm := flag.String("govmm", "", "govmm binary (default: build it)")
	kernel := flag.String("kernel", os.Getenv("GOVMM_LINUX_KERNEL"), "Linux bzImage (default: the one .ci/run caches)")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on one boot")
	cmdline := flag.String("cmdline", "", "added to the guest's kernel command line, e.g. earlyprintk=serial,ttyS0,115200")
	logLevel := flag.String("log-level", "", "govmm's --log-level")
	extra := flag.String("args", "", "more govmm run flags, space-separated, e.g. --seccomp=off")
	ktrace := flag.Bool("ktrace", false, "trace the host kernel's kvm events during each boot and print the last of them when a boot fails (needs tracefs)")
	inner := flag.Bool("inner", false, "run by the soak itself inside L1: no summary")
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
	var cpus []int
	for _, f := range strings.Split(*cpuList, ",") {
		c, err := strconv.Atoi(f)
		if err != nil || c < 1 {
			fail("bad -cpus " + *cpuList)
		}
		cpus = append(cpus, c)
	}
	accels := map[string][]string{"kvm": {"--accel=kvm"}, "mshvsim": {"--accel=mshv", "--mshv-device=sim"}, "qemu": nil}
	var rows []*row
	for _, acc := range strings.Split(*accelList, ",") {
		if _, ok := accels[acc]; !ok {
			fail("unknown accelerator " + acc)
		}
		for _, c := range cpus {
			rows = append(rows, &row{name: fmt.Sprintf("%s, %d vCPU", acc, c), accel: acc, cpus: c})
		}
	}
	if os.Getenv(nested.InL1Env) != "1" && !nested.HardwareKVM() {
		inL1(*govmm, *kernel, rows, *n, *timeout)
		os.Exit(summary(rows))
	}
	dir, err := os.MkdirTemp("", "linuxsoak-")
	if err != nil {
		fail(err.Error())
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := linuxguest.WriteInitramfs(initrd); err != nil {
		fail(err.Error())
	}
	var tr *tracer
	if *ktrace {
		if tr, err = startTrace(); err != nil {
			fail("kernel trace: " + err.Error())
		}
	}
	for _, r := range rows {
		for i := 1; i <= *n; i++ {
			tr.clear()
			b := linuxguest.Boot{Govmm: *govmm, Accel: accels[r.accel], Kernel: *kernel, Initrd: initrd,
				CPUs: r.cpus, Token: fmt.Sprintf("soak-%d", i), Timeout: *timeout,
				Cmdline: *cmdline, LogLevel: *logLevel, Args: strings.Fields(*extra)}
			if r.accel == "qemu" {
				b.QEMU = "pc"
			}
			res, err := b.Run(context.Background())
			if err != nil {
				r.fails++
				fmt.Printf("FAIL %s boot %d: %v\n", r.name, i, err)
				if t := tr.tail(80); t != "" {
					fmt.Printf("--- host kernel's kvm trace (end):\n%s\n", t)
				}
				continue
			}
			r.pass++
			r.walls = append(r.walls, res.Wall)
			fmt.Printf("ok   %s boot %d: init after %v\n", r.name, i, res.Wall.Round(100*time.Millisecond))
		}
	}
	if !*inner {
		os.Exit(summary(rows))
	}
}

type row struct {
	name        string
	accel       string
	cpus        int
	pass, fails int
	walls       []time.Duration
}

func summary(rows []*row) int {
	fmt.Printf("\nLinux boots to userspace (%s):\n", substrate())
	total := 0
	for _, r := range rows {
		fmt.Printf("  %-18s %2d passed, %2d failed, median %v\n", r.name, r.pass, r.fails, median(r.walls).Round(100*time.Millisecond))
		total += r.fails
	}
	if total > 0 {
		return 1
	}
	return 0
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

// substrate names where the boots ran, with L1's settings.
func substrate() string {
	if os.Getenv(nested.InL1Env) == "1" {
		return "nested KVM on QEMU's TCG"
	}
	if !nested.HardwareKVM() {
		l1cpus, tcg := os.Getenv(nested.L1CPUsEnv), os.Getenv(nested.L1TCGEnv)
		if l1cpus == "" {
			l1cpus = "2"
		}
		if tcg == "" {
			tcg = "thread=multi"
		}
		return fmt.Sprintf("nested KVM on QEMU's TCG, L1 with %s CPUs and %s", l1cpus, tcg)
	}
	return "this machine's KVM"
}

// inL1 runs the soak inside nested-KVM VMs, one per configuration. When
// L1 itself dies (its kernel panics, or QEMU resets or kills it) the boot
// that was running counts as failed, and a fresh L1 runs the rest.
func inL1(govmm, kernel string, rows []*row, n int, timeout time.Duration) {
	self, err := os.Executable()
	if err != nil {
		fail(err.Error())
	}
	bb, err := linuxguest.Busybox()
	if err != nil {
		fail(err.Error())
	}
	// Hold the machine-wide L1 lock for the whole soak: the restarts
	// after an L1 that died then come before anyone else's VM.
	fmt.Println("linuxsoak: waiting for the nested-KVM lock")
	release, err := nested.Lock()
	if err != nil {
		fail(err.Error())
	}
	defer release()
	fmt.Printf("linuxsoak: no hardware-semantics /dev/kvm here: running in nested-KVM VMs (%d host CPUs)\n", runtime.NumCPU())
	for _, r := range rows {
		for done := 0; done < n; {
			args := []string{self, "-govmm", govmm, "-kernel", kernel, "-inner",
				"-accels", r.accel, "-cpus", strconv.Itoa(r.cpus), "-n", strconv.Itoa(n - done)}
			flag.Visit(func(f *flag.Flag) {
				switch f.Name {
				case "govmm", "kernel", "accels", "cpus", "n", "inner":
				default:
					args = append(args, "-"+f.Name+"="+f.Value.String())
				}
			})
			c := &counter{r: r, w: os.Stdout}
			var programs []string
			if r.accel == "qemu" {
				programs = []string{"qemu-system-x86_64"}
			}
			_, err := nested.Run(context.Background(), nested.Config{
				Command:  args,
				Dir:      "/tmp",
				Files:    []string{self, govmm, kernel, bb},
				Programs: programs,
				Timeout:  time.Duration(n-done)*(timeout+time.Minute) + 3*time.Minute,
				// Each boot prints a line within its timeout: longer silence
				// is an L1 that froze (a 1-CPU L1 does, whole, on a soft lockup).
				IdleTimeout: timeout + 2*time.Minute,
				Output:      c,
			})
			done += c.boots
			if err != nil {
				done++
				r.fails++
				msg := err.Error()
				if e, ok := err.(*nested.Error); ok {
					msg = e.Reason + "\n--- L1 kernel log (end):\n" + e.ConsoleLog
				}
				fmt.Printf("FAIL %s boot %d: L1 died: %s\n", r.name, done, msg)
			}
		}
	}
}

// counter passes L1's output on and counts the boots it reports.
type counter struct {
	r     *row
	w     io.Writer
	boots int
}

func (c *counter) Write(p []byte) (int, error) {
	s := string(p)
	switch {
	case strings.HasPrefix(s, "ok   "):
		c.boots++
		c.r.pass++
		if i := strings.LastIndex(s, "init after "); i >= 0 {
			if d, err := time.ParseDuration(strings.TrimSpace(s[i+len("init after "):])); err == nil {
				c.r.walls = append(c.r.walls, d)
			}
		}
	case strings.HasPrefix(s, "FAIL "):
		c.boots++
		c.r.fails++
	}
	return c.w.Write(p)
}

// tracer records the host kernel's kvm trace events (tracefs).
type tracer struct{ dir string }

func startTrace() (*tracer, error) {
	dir := "/sys/kernel/tracing"
	if _, err := os.Stat(filepath.Join(dir, "trace")); err != nil {
		if err := syscall.Mount("nodev", dir, "tracefs", 0, ""); err != nil {
			return nil, fmt.Errorf("mount tracefs: %w", err)
		}
	}
	t := &tracer{dir: dir}
	for _, w := range []struct{ file, val string }{
		{"buffer_size_kb", "8192"},
		{"events/kvm/enable", "1"},
		{"tracing_on", "1"},
	} {
		if err := os.WriteFile(filepath.Join(dir, w.file), []byte(w.val), 0o644); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *tracer) clear() {
	if t != nil {
		os.WriteFile(filepath.Join(t.dir, "trace"), nil, 0o644)
	}
}

func (t *tracer) tail(n int) string {
	if t == nil {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(t.dir, "trace"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
