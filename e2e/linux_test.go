package e2e

import (
	"govmm/internal/kvmtest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLinuxSmoke boots Debian's cloud kernel (fetched by .ci/run into
// GOVMM_LINUX_KERNEL) until the serial console shows "Linux version". On
// this project's machines guest CPL0 code is emulated by KVM, so the
// kernel's own decompressor takes minutes and the kernel stops soon after
// its first lines (see shared/reference/host-kvm.md): reaching the banner
// proves the loader, the entry state and the serial port.
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
