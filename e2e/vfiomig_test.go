package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"govmm/internal/kvmtest"
	"govmm/internal/nested"
)

// mdevL1Env marks the L1 that TestVFIOMigration starts for itself: Debian's
// generic 6.12 kernel (CONFIG_VFIO_MDEV) with Linux's sample mdev driver
// mtty, which has VFIO migration v2 (.ci/mdev-kernel builds it).
const mdevL1Env = "GOVMM_E2E_MDEV_L1"

// mttyType is the mtty type with one port: its instances are the
// function the guest drives. mtty2Type has two ports, and its state does
// not fit a one-port device.
const (
	mttyParent = "/sys/class/mdev_bus/mtty/mdev_supported_types/"
	mttyType   = "mtty-1"
	mtty2Type  = "mtty-2"
)

// inMdevL1 runs the calling test in an L1 of its own on the mdev kernel,
// with vfio, vfio_iommu_type1, mdev and mtty loaded, when this is not that
// L1, and reports whether the caller should go on (it is in that L1).
func inMdevL1(t *testing.T) bool {
	if kvmtest.InL1() && os.Getenv(mdevL1Env) == "1" {
		return true
	}
	if kvmtest.InL1() {
		t.Skip("runs in an L1 of its own, on the mdev kernel with mtty, started from the host")
	}
	dir := nested.MdevLinuxDir()
	mtty := filepath.Join(dir, "mtty", "mtty.ko")
	_, err := nested.FindLinux(dir)
	if err == nil {
		_, err = os.Stat(mtty)
	}
	if err != nil {
		if kvmtest.Required() {
			t.Fatalf("the mdev L1 (run .ci/mdev-kernel): %v", err)
		}
		t.Skipf("the mdev L1 (run .ci/mdev-kernel): %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	timeout := 20 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - time.Minute
	}
	env := []string{mdevL1Env + "=1", binaryEnv + "=" + binary, kvmtest.RequireEnv + "=1"}
	attempt := func(run string, timeout time.Duration) (string, nested.Result, error) {
		var out bytes.Buffer
		res, err := nested.Run(context.Background(), nested.Config{
			Command: []string{exe, "-test.run=" + run, "-test.v=true", "-test.timeout=" + (timeout - 2*time.Minute).String()},
			Env:     env, Files: []string{exe, binary}, Dir: "/",
			Output: io.MultiWriter(&out, prefixWriter{os.Stdout}), Timeout: timeout, IdleTimeout: 5 * time.Minute,
			Linux:   dir,
			Modules: []string{"drivers/vfio/vfio.ko", "drivers/vfio/vfio_iommu_type1.ko", "drivers/vfio/mdev/mdev.ko", mtty},
		})
		return out.String(), res, err
	}
	ownL1(t, "mdev L1", timeout, attempt)
	return false
}

// mttyCreate creates an mtty instance of type typ and returns its sysfs
// path under /sys/bus/mdev/devices; it is removed when the test ends.
func mttyCreate(t *testing.T, typ string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	uuid := fmt.Sprintf("83b8f4f2-509f-382f-3c1e-%012x", b[:])
	if err := os.WriteFile(mttyParent+typ+"/create", []byte(uuid), 0o200); err != nil {
		t.Fatalf("create an %s instance: %v", typ, err)
	}
	path := "/sys/bus/mdev/devices/" + uuid
	t.Cleanup(func() {
		if err := os.WriteFile(path+"/remove", []byte("1"), 0o200); err != nil {
			t.Logf("remove %s: %v", uuid, err)
		}
	})
	return path
}

// mttySource starts the mtty guest with dev passed through and waits
// until its pattern is in the device's receive FIFO.
func mttySource(t *testing.T, acc []string, guest, dev, sock, seed string) *proc {
	t.Helper()
	p := start(t, append(append([]string{"run"}, acc...), "--kernel", guest, "--cmdline", "seed="+seed, "--serial", "stdio", "--cpus", "1",
		"--device", "vfio="+dev, "--api-socket", sock, "--log-level", "info")...)
	p.waitFor("mtty: waiting", 2*time.Minute)
	m := fields(t, p.output(), "mtty", "wrote n=")
	if m["n"] != "15" {
		t.Fatalf("the guest wrote %v, want 15 bytes:\n%s", m, p.output())
	}
	return p
}

// mttyReadBack tells the guest to read its FIFO back and requires all 15
// bytes of the pattern, with LSR.DR set, and the guest's OK.
func mttyReadBack(t *testing.T, p *proc) {
	t.Helper()
	if _, err := p.stdin.Write([]byte("g")); err != nil {
		t.Fatalf("send the key: %v", err)
	}
	code := p.exit(2 * time.Minute)
	out := p.output()
	m := fields(t, out, "mtty", "read n=")
	t.Logf("after the move: %v", m)
	if code != 0x10<<1|1 || m["n"] != "15" || m["match"] != "15" {
		t.Fatalf("the guest did not read its pattern back from the moved device (exit %d, %v):\n%s", code, m, out)
	}
	if !strings.Contains(out, "vfio device state restored") {
		t.Errorf("the destination did not log the device state it loaded:\n%s", out)
	}
}

// logRecords returns the fields of the log records with message msg in
// out, in order, with each one's line number.
func logRecords(out, msg string) (recs []map[string]string, lines []int) {
	for i, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		recs, lines = append(recs, keyValues(line)), append(lines, i)
	}
	return recs, lines
}

// preCopied requires that the source put mtty in PRE_COPY and read some
// of its data while the guest still ran: every such read is logged
// before the device's state was saved (with the guest paused), and the
// saved state counts exactly the bytes read before. Only the last
// migration's records count.
func preCopied(t *testing.T, out string) {
	t.Helper()
	if !strings.Contains(out, `msg="vfio device in PRE_COPY"`) {
		t.Fatalf("the source did not put mtty in PRE_COPY:\n%s", out)
	}
	// The last migration's (an earlier one may have failed).
	_, starts := logRecords(out, "vfio device in PRE_COPY")
	if last := starts[len(starts)-1]; last > 0 {
		out = strings.Join(strings.Split(out, "\n")[last:], "\n")
	}
	reads, at := logRecords(out, "vfio device pre-copy data read")
	saved, savedAt := logRecords(out, "vfio device state saved")
	if len(reads) == 0 || len(saved) != 1 {
		t.Fatalf("%d pre-copy reads and %d saves logged, want some and one:\n%s", len(reads), len(saved), out)
	}
	var sum uint64
	for i, r := range reads {
		if at[i] > savedAt[0] {
			t.Fatalf("pre-copy data read after the device's state was saved (line %d, saved at %d):\n%s", at[i], savedAt[0], out)
		}
		sum += num(t, r, "bytes")
	}
	if sum == 0 || num(t, saved[0], "pre_copy_bytes") != sum {
		t.Fatalf("%d bytes read in pre-copy, the saved state counts %s:\n%s", sum, saved[0]["pre_copy_bytes"], out)
	}
	t.Logf("mtty in PRE_COPY: %d bytes read while the guest ran, %s bytes once stopped", sum, saved[0]["bytes"])
}

// TestVFIOMigration moves a VM with a passed-through device that has
// VFIO migration (mtty, an mdev) by snapshot and restore and by live
// migration, on KVM and on mshvsim: the guest's bytes in the device's
// receive FIFO must be in the destination's fresh device. The live
// migration reads mtty's initial data in PRE_COPY while the guest runs,
// before the pause, and the rest in STOP_COPY; a live migration that
// fails first (the destination refuses the VM) returns mtty from
// PRE_COPY to RUNNING and the source runs on with it. A restore onto
// a device whose driver cannot take the state (two ports for one) is
// refused whole.
func TestVFIOMigration(t *testing.T) {
	if !inMdevL1(t) {
		return
	}
	guest := guestPath(t, "mtty.elf")
	for _, acc := range [][]string{{"--accel=kvm"}, {"--accel=mshv", "--mshv-device=sim"}} {
		name := accelName(acc)
		t.Run("snapshot-"+name, func(t *testing.T) {
			dir := t.TempDir()
			sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			src := mttyCreate(t, mttyType)
			s := mttySource(t, acc, guest, src, sock, "3")
			r := govmm(t, "snapshot", "--api-socket", sock, "--dir", snap)
			if r.Code != 0 {
				t.Fatalf("snapshot: %s\nsource:\n%s", r, s.output())
			}
			s.cmd.Process.Kill()
			<-s.done
			if !strings.Contains(s.output(), "vfio device state saved") {
				t.Errorf("the source did not log the device state it saved:\n%s", s.output())
			}
			// A two-port mtty is the same PCI function to govmm, but its
			// driver refuses a one-port state: the restore fails, naming
			// the device, and runs nothing.
			bad := mttyCreate(t, mtty2Type)
			r = govmm(t, append(append([]string{"restore", "--snapshot", snap}, acc...), "--serial", "stdio", "--device", "vfio="+bad)...)
			if r.Code == 0 || !strings.Contains(r.Stderr, filepath.Base(bad)) || !strings.Contains(r.Stderr, "refused the saved state") || strings.Contains(r.Stdout, "mtty: read") {
				t.Fatalf("restore onto a two-port mtty: want a refusal naming %s\n%s", filepath.Base(bad), r)
			}
			t.Logf("two ports for one: %s", strings.TrimSpace(r.Stderr))
			// Without the device, the restore names what is missing.
			r = govmm(t, append(append([]string{"restore", "--snapshot", snap}, acc...), "--serial", "stdio")...)
			if r.Code != 64 || !strings.Contains(r.Stderr, "VFIO devices") {
				t.Fatalf("restore without the device: want exit 64 naming the VFIO devices\n%s", r)
			}
			dst := mttyCreate(t, mttyType)
			d := start(t, append(append([]string{"restore", "--snapshot", snap}, acc...), "--serial", "stdio", "--device", "vfio="+dst, "--log-level", "info")...)
			mttyReadBack(t, d)
		})
		t.Run("live-"+name, func(t *testing.T) {
			dir := t.TempDir()
			sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
			s := mttySource(t, acc, guest, mttyCreate(t, mttyType), sock, "5")
			dst := mttyCreate(t, mttyType)
			d := start(t, append(append([]string{"migrate", "receive"}, acc...), "--listen", "unix:"+mig, "--serial", "stdio",
				"--device", "vfio="+dst, "--log-level", "info")...)
			waitPath(t, mig)
			// First a destination that refuses the VM (another memory
			// size): the source has put mtty in PRE_COPY when the move
			// fails, returns it to RUNNING and runs on with it.
			bad := filepath.Join(dir, "bad.sock")
			b := start(t, append(append([]string{"migrate", "receive"}, acc...), "--listen", "unix:"+bad, "--memory", "64M")...)
			waitPath(t, bad)
			r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+bad)
			if r.Code == 0 || !strings.Contains(r.Stderr, "keeps running here") {
				t.Fatalf("migrate send to a 64 MiB destination: want a failure with the VM running on\n%s\nsource:\n%s", r, s.output())
			}
			b.cmd.Process.Kill()
			<-b.done
			select {
			case <-s.done:
				t.Fatalf("the source ended after a failed migration:\n%s", s.output())
			default:
			}
			if out := s.output(); !strings.Contains(out, `msg="vfio device in PRE_COPY"`) || strings.Contains(out, "from PRE_COPY to RUNNING") {
				t.Fatalf("the failed migration did not take mtty through PRE_COPY and back cleanly:\n%s", out)
			}
			t.Logf("refused: %s", strings.TrimSpace(r.Stderr))
			migrateLive(t, sock, mig, s, d)
			preCopied(t, s.output())
			mttyReadBack(t, d)
		})
	}
}
