package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
	"govmm/internal/linuxguest"
)

// TestLinuxSmoke boots Debian's cloud kernel (fetched by .ci/run into
// GOVMM_LINUX_KERNEL) until the serial console shows "Linux version". On
// the software kvm_pvm backend guest CPL0 code is emulated, so the
// kernel's own decompressor takes minutes and the kernel stops soon after
// its first lines (see shared/reference/host-kvm.md): there, reaching the
// banner proves the loader, the entry state and the serial port. On
// hardware semantics TestLinuxUserspace goes all the way to init.
func TestLinuxSmoke(t *testing.T) {
	kvmtest.Need(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal("GOVMM_LINUX_KERNEL is not set (.ci/run downloads the kernel and sets it)")
		}
		t.Skip("GOVMM_LINUX_KERNEL not set")
	}
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { linuxBanner(t, acc, kernel) })
	}
}

func linuxBanner(t *testing.T, acc []string, kernel string) {
	{
		out := filepath.Join(t.TempDir(), "serial.out")
		args := append([]string{"run"}, acc...)
		args = append(args, "--kernel", kernel, "--cpu", "host,-cx16", "--memory", "512M",
			"--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200", "--serial", "file:"+out)
		cmd := exec.Command(binary, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.After(12 * time.Minute)
		tick := time.NewTicker(2 * time.Second)
		start := time.Now()
	wait:
		for {
			select {
			case err := <-exited:
				b, _ := os.ReadFile(out)
				t.Fatalf("govmm exited (%v) before Linux printed its banner:\n%s", err, b)
			case <-deadline:
				cmd.Process.Kill()
				b, _ := os.ReadFile(out)
				t.Fatalf("no \"Linux version\" within 12 minutes; serial output:\n%s", b)
			case <-tick.C:
				b, _ := os.ReadFile(out)
				if i := strings.Index(string(b), "Linux version"); i >= 0 {
					line := string(b[i:])
					if j := strings.IndexByte(line, '\n'); j >= 0 {
						line = line[:j]
					}
					t.Logf("after %v: %s", time.Since(start).Round(time.Second), line)
					break wait
				}
			}
		}
		cmd.Process.Kill()
		<-exited
	}
}

// TestLinuxUserspace boots Debian's cloud kernel with a busybox initramfs
// to its init, which prints the token from the kernel command line and the
// CPUs the kernel brought up, then powers off: on KVM and on mshvsim, with
// 2 vCPUs (GOVMM_LINUX_CPUS=1,2,4 for more; bench/linuxsoak repeats them).
// It needs hardware virtualization semantics: on the software kvm_pvm
// backend Linux never reaches init, so there it runs on nested KVM only.
func TestLinuxUserspace(t *testing.T) {
	kvmtest.NeedHardware(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	if err := linuxguest.WriteInitramfs(initrd); err != nil {
		t.Fatal(err)
	}
	cpus := []int{2}
	if s := os.Getenv("GOVMM_LINUX_CPUS"); s != "" {
		cpus = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				t.Fatalf("GOVMM_LINUX_CPUS=%q: want a list such as 1,2,4", s)
			}
			cpus = append(cpus, n)
		}
	}
	for _, acc := range accels(t) {
		for _, n := range cpus {
			t.Run(fmt.Sprintf("%s/%dcpu", accelName(acc), n), func(t *testing.T) {
				token := fmt.Sprintf("tok-%d-%d", n, time.Now().UnixNano()%1e6)
				res, err := linuxguest.Boot{Govmm: binary, Accel: acc, Kernel: kernel, Initrd: initrd,
					CPUs: n, Token: token}.Run(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("init ran after %v: token %s, %d CPUs online (%s)", res.Wall.Round(time.Millisecond), res.Token, res.CPUs, res.Online)
			})
		}
	}
}
