package e2e

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/internal/initramfs"
	"govmm/internal/kvmtest"
	"govmm/internal/nested"
)

// arm64L1 finds the aarch64 L1's assets, or skips (fails under
// GOVMM_REQUIRE_KVM=1) when the machine lacks them.
func arm64L1(t *testing.T) *nested.Assets {
	t.Helper()
	if kvmtest.InL1() {
		t.Skip("inside the x86-64 L1: the arm64 tests start their own aarch64 L1 from the host")
	}
	if os.Getenv(kvmtest.NestedEnv) == "0" {
		t.Skip(kvmtest.NestedEnv + "=0: no nested VM")
	}
	a, err := nested.FindARM64()
	if err != nil {
		if kvmtest.Required() {
			t.Fatalf("nested arm64 KVM: %v", err)
		}
		t.Skipf("nested arm64 KVM: %v", err)
	}
	return a
}

// buildARM64 cross-compiles a package of this module for arm64 (static):
// a command with "build", a test binary with "test -c".
func buildARM64(t *testing.T, out string, goArgs ...string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	pkg := goArgs[len(goArgs)-1]
	args := append(append(goArgs[:len(goArgs)-1:len(goArgs)-1], "-o", out), pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = filepath.Dir(filepath.Dir(file))
	cmd.Env = append(os.Environ(), "GOARCH=arm64", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s (GOARCH=arm64): %v\n%s", strings.Join(args, " "), err, b)
	}
}

// buildARM64Govmm builds govmm and the platform/arm64 test binary for
// arm64 in a new temporary directory, which it returns with their paths.
func buildARM64Govmm(t *testing.T) (dir, govmm, platformTest string) {
	t.Helper()
	dir = t.TempDir()
	govmm = filepath.Join(dir, "govmm-arm64")
	buildARM64(t, govmm, "build", "./cmd/govmm")
	platformTest = filepath.Join(dir, "platform-arm64.test")
	buildARM64(t, platformTest, "test", "-c", "./platform/arm64")
	return dir, govmm, platformTest
}

// logWriter sends L1's output to the test log, line by line.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runARM64L1 runs script in an aarch64 L1 with files copied in and
// returns what it printed; an L1 that did not run it to its end fails the
// test with L1's logs.
func runARM64L1(t *testing.T, script string, timeout time.Duration, files ...string) string {
	t.Helper()
	start := time.Now()
	var out strings.Builder
	run := func(timeout time.Duration) (nested.Result, error) {
		out.Reset()
		return nested.Run(context.Background(), nested.Config{
			Arch:        nested.ArchARM64,
			Command:     []string{"/bin/sh", "-c", script},
			Files:       files,
			Timeout:     timeout,
			IdleTimeout: 8 * time.Minute,
			Output:      io.MultiWriter(&out, logWriter{t}),
		})
	}
	res, err := run(timeout)
	var ne *nested.Error
	if errors.As(err, &ne) {
		// L1 itself died or froze: as kvmtest does after an L1 death,
		// the script runs again in a fresh L1, once, with the time left.
		if left := timeout - time.Since(start); left > 5*time.Minute {
			t.Logf("aarch64 L1 stopped: %v\nrunning the script once more in a fresh L1", ne)
			res, err = run(left)
		}
	}
	if err != nil {
		if errors.As(err, &ne) {
			t.Fatalf("%v", ne)
		}
		t.Fatal(err)
	}
	t.Logf("aarch64 L1: boot %v, wall %v, exit %d", res.Boot, res.Wall, res.ExitCode)
	return out.String()
}

// TestARM64LinuxBoot boots Debian's arm64 cloud kernel with govmm's arm64
// build on KVM/arm64 inside the aarch64 L1, with 2 vCPUs and a busybox
// initramfs whose init prints a token from the kernel command line and the
// CPUs online, then powers off through PSCI; then again with 1 vCPU from
// the same kernel gzipped (Image.gz) and with 4 vCPUs (quiet: the full
// kernel log is the 2-vCPU boot's). The same L1 run first runs
// the arm64 KVM backend's own tests there.
func TestARM64LinuxBoot(t *testing.T) {
	a := arm64L1(t)
	dir, bin, platformTest := buildARM64Govmm(t)
	kvmarmTest := filepath.Join(dir, "kvmarm-arm64.test")
	buildARM64(t, kvmarmTest, "test", "-c", "./accel/kvmarm")
	// The arm64 side of the /dev/mshv ABI and the not-implemented error
	// are arm64-only files: this is where their tests run (only theirs:
	// the package's other tests read testdata/ from its directory).
	mshvabiTest := filepath.Join(dir, "mshvabi-arm64.test")
	buildARM64(t, mshvabiTest, "test", "-c", "./accel/mshv/mshvabi")
	mshvarmTest := filepath.Join(dir, "mshvarm-arm64.test")
	buildARM64(t, mshvarmTest, "test", "-c", "./accel/mshv/mshvarm")
	// cmd/govmm's arm64 tests: the x86-only flags and commands refused by
	// name, an x86 snapshot refused by the arm64 restore.
	cmdTest := filepath.Join(dir, "govmm-cmd-arm64.test")
	buildARM64(t, cmdTest, "test", "-c", "./cmd/govmm")

	var tok [8]byte
	rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	ar := initramfs.New()
	for _, d := range []string{"/bin", "/proc", "/sys", "/dev"} {
		ar.Dir(d)
	}
	if err := ar.File("/bin/busybox", a.Busybox); err != nil {
		t.Fatal(err)
	}
	ar.Bytes("/init", 0o755, []byte(`#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
exec >/dev/console 2>&1
echo "guest: cpus-online=$(/bin/busybox cat /sys/devices/system/cpu/online)"
for w in $(/bin/busybox cat /proc/cmdline); do
  case "$w" in govmm.token=*) echo "guest: token=${w#govmm.token=}";; esac
done
/bin/busybox poweroff -f
`))
	initrd := writeInitrd(t, dir, ar)
	gzKernel := gzipFile(t, a.Kernel, filepath.Join(dir, "Image.gz"))

	script := `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
` + bin + ` caps; echo "l1: caps exit=$?"
echo "l1: caps json begin"; ` + bin + ` caps --json; echo "l1: caps json end exit=$?"
` + platformTest + ` -test.count=1 -test.v >/tmp/platform.log 2>&1; echo "l1: platform tests exit=$?"
grep -E '^(--- |ok|PASS|FAIL|panic)|_test.go' /tmp/platform.log
` + kvmarmTest + ` -test.count=1 >/tmp/kvmarm.log 2>&1; echo "l1: kvmarm tests exit=$?"
tail -n 5 /tmp/kvmarm.log
` + mshvabiTest + ` -test.count=1 -test.v -test.run 'Arm64' >/tmp/mshvabi.log 2>&1 && ` + mshvarmTest + ` -test.count=1 -test.v >>/tmp/mshvabi.log 2>&1; echo "l1: mshv arm64 ABI tests exit=$?"
grep -E '^(--- |ok|PASS|FAIL|panic)' /tmp/mshvabi.log
for c in run restore "migrate receive"; do echo "l1: help begin $c"; ` + bin + ` $c -h 2>&1; echo "l1: help end $c"; done
` + cmdTest + ` -test.count=1 -test.v >/tmp/cmd.log 2>&1; echo "l1: cmd tests exit=$?"
grep -E '^(--- |ok|PASS|FAIL|panic)|_test.go' /tmp/cmd.log
out=$(` + bin + ` run --accel mshv --kernel ` + a.Kernel + ` 2>&1); st=$?
echo "$out" | head -c 120; echo; echo "l1: run --accel mshv exit=$st"
uptime_ms() { read up rest </proc/uptime; echo $(( ${up%.*}${up#*.} * 10 )); }
start=$(uptime_ms)
timeout 480 ` + bin + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --cmdline 'console=ttyAMA0 panic=-1 govmm.token=` + token + `'
status=$?
ms=$(( $(uptime_ms) - start ))
echo "l1: govmm exit=$status ms=$ms"
# 1 and 4 vCPUs too, with a quiet kernel log; the 1-vCPU boot from the
# same kernel gzipped (Image.gz).
for n in 1 4; do
  k=` + a.Kernel + `
  [ $n = 1 ] && k=` + gzKernel + `
  timeout 480 ` + bin + ` run --log-level info --kernel $k --initrd ` + initrd + ` --cpus $n --memory 512M --cmdline 'console=ttyAMA0 quiet panic=-1 govmm.token=` + token + `' >/tmp/cpus$n.out 2>&1
  st=$?
  sed "s/^/cpus$n: /" /tmp/cpus$n.out
  echo "l1: govmm --cpus $n exit=$st"
done
`
	o := runARM64L1(t, script, 25*time.Minute, bin, kvmarmTest, platformTest, mshvabiTest, mshvarmTest, cmdTest, initrd, a.Kernel, gzKernel)
	for _, want := range []string{
		"l1: aarch64, /dev/kvm: yes",
		"guest: token=" + token,
		"guest: cpus-online=0-1",
		"l1: govmm exit=0 ",
		"l1: kvmarm tests exit=0",
		"l1: platform tests exit=0",
		"l1: mshv arm64 ABI tests exit=0",
		"l1: cmd tests exit=0",
		"--- PASS: TestARM64RefusesX86Only",
		"--- PASS: TestRestoreRefusesOtherArch",
		"govmm: --accel mshv: MSHV on arm64 is not implemented",
		"l1: run --accel mshv exit=64",
		"--- PASS: TestArm64Layouts",
		"--- PASS: TestNotImplementedNamesWhatIsMissing",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	checkARM64Caps(t, o)
	checkARM64Flags(t, o)
	for _, want := range []string{
		"cpus1: guest: cpus-online=0\n", "cpus1: guest: token=" + token, "l1: govmm --cpus 1 exit=0\n",
		"cpus4: guest: cpus-online=0-3", "cpus4: guest: token=" + token, "l1: govmm --cpus 4 exit=0\n",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// govmm's log says it decompressed the 1-vCPU boot's kernel.
	if !regexp.MustCompile(`cpus1: .*msg="arm64 machine".* gzip=true`).MatchString(o) {
		t.Errorf("the 1-vCPU boot's log does not say its kernel was gzipped")
	}
	if !regexp.MustCompile(`cpus4: .*msg="arm64 machine".* gzip=false`).MatchString(o) {
		t.Errorf("the 4-vCPU boot's log does not say its kernel was a plain Image")
	}
	if strings.Contains(o, "--- FAIL") {
		t.Errorf("a test failed in L1")
	}
	if i := strings.Index(o, "ms="); i >= 0 {
		if ms, err := strconv.Atoi(strings.Fields(o[i+3:])[0]); err == nil {
			t.Logf("govmm run to PSCI power-off, 2 vCPUs, in the aarch64 L1: %d ms", ms)
		}
	}
}

// checkARM64Flags: every flag of the x86 build's run, restore and
// migrate receive is a flag of the arm64 build's too (the README promises
// one command line): one arm64 implements, or one it refuses by name
// (cmd/govmm's TestARM64RefusesX86Only checks the refusals). L1 printed
// the arm64 build's -h output between "l1: help begin/end CMD" lines.
func checkARM64Flags(t *testing.T, o string) {
	t.Helper()
	for _, c := range []string{"run", "restore", "migrate receive"} {
		begin, end := "l1: help begin "+c+"\n", "l1: help end "+c
		i, j := strings.Index(o, begin), strings.Index(o, end)
		if i < 0 || j < i {
			t.Errorf("no arm64 %s -h output", c)
			continue
		}
		arm := flagNames(o[i+len(begin) : j])
		x86 := flagNames(govmm(t, append(strings.Fields(c), "-h")...).Stderr)
		if len(x86) == 0 || len(arm) == 0 {
			t.Errorf("%s -h: %d x86 flags, %d arm64 flags", c, len(x86), len(arm))
			continue
		}
		for name := range x86 {
			if !arm[name] {
				t.Errorf("govmm %s: the x86 build has --%s, the arm64 build neither has nor refuses it", c, name)
			}
		}
	}
}

// flagNames are the flags a flag.FlagSet's usage lists ("  -name ...").
func flagNames(help string) map[string]bool {
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(help, -1) {
		names[m[1]] = true
	}
	return names
}

// gzipFile writes src gzipped to dst (Image.gz from an Image) and returns
// dst.
func gzipFile(t *testing.T, src, dst string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	w := gzip.NewWriter(f)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// checkARM64Caps checks `govmm caps` as TestARM64LinuxBoot ran it in the
// aarch64 L1: status 0 for text and JSON, KVM available with every
// capability and device the machine needs, a preferred target, and MSHV
// named as not implemented.
func checkARM64Caps(t *testing.T, o string) {
	t.Helper()
	for _, want := range []string{"l1: caps exit=0", "l1: caps json end exit=0", "kvm: available (/dev/kvm)",
		"preferred_target: ", "mshv: not available (MSHV is not implemented on arm64)"} {
		if !strings.Contains(o, want) {
			t.Errorf("caps output lacks %q", want)
		}
	}
	_, js, ok := strings.Cut(o, "l1: caps json begin\n")
	if js, _, ok2 := strings.Cut(js, "l1: caps json end"); ok && ok2 {
		var rep struct {
			Accelerators []struct {
				Name      string
				Available bool
				Error     string
				Caps      *struct {
					APIVersion int `json:"api_version"`
					MaxVCPUs   int `json:"max_vcpus"`
					Features   []struct {
						Name  string
						Value int64
						Used  bool
					}
					Info map[string]string
				}
			}
		}
		if err := json.Unmarshal([]byte(js), &rep); err != nil {
			t.Fatalf("caps --json: %v\n%s", err, js)
		}
		if len(rep.Accelerators) != 2 || rep.Accelerators[0].Name != "kvm" || rep.Accelerators[1].Name != "mshv" {
			t.Fatalf("caps --json accelerators: %+v", rep.Accelerators)
		}
		k := rep.Accelerators[0]
		if !k.Available || k.Caps == nil {
			t.Fatalf("caps --json: KVM not available: %s", k.Error)
		}
		if k.Caps.APIVersion != 12 || k.Caps.MaxVCPUs < 4 {
			t.Errorf("caps --json: API version %d, max vCPUs %d", k.Caps.APIVersion, k.Caps.MaxVCPUs)
		}
		vals := map[string]int64{}
		for _, f := range k.Caps.Features {
			vals[f.Name] = f.Value
		}
		for _, name := range strings.Fields(k.Caps.Info["required"]) {
			if vals[name] == 0 {
				t.Errorf("caps --json: required %s is 0 on a host that boots govmm", name)
			}
		}
		for _, name := range []string{"MSI_DEVID", "DEV_ARM_VGIC_V3", "DEV_ARM_VGIC_ITS", "IRQFD", "ONE_REG"} {
			if !strings.Contains(" "+k.Caps.Info["required"]+" ", " "+name+" ") {
				t.Errorf("caps --json: %s not marked required (required: %q)", name, k.Caps.Info["required"])
			}
		}
		t.Logf("caps: preferred target %s, max vCPUs %d, max IPA bits %s, NISV_TO_USER %d, PMU_V3 %d",
			k.Caps.Info["preferred_target"], k.Caps.MaxVCPUs, k.Caps.Info["max_ipa_bits"], vals["ARM_NISV_TO_USER"], vals["ARM_PMU_V3"])
	} else {
		t.Errorf("no caps --json output")
	}
}

// The arm64 guest's disk: a pattern, whose block at arm64KnownOff the
// guest reads back; it writes what it read from /dev/hwrng at
// arm64RNGOff.
const (
	arm64DiskSize = 4 << 20
	arm64KnownOff = 1 << 20
	arm64RNGOff   = 2 << 20
	arm64Block    = 64 << 10
)

// TestARM64Virtio boots Debian's arm64 cloud kernel with govmm's arm64
// build on KVM/arm64 inside the aarch64 L1 with --disk and --rng: the
// guest finds both on the ECAM host bridge, its virtio_pci driver takes
// MSI-X vectors that the ITS delivers as LPIs, it reads a known block of
// the disk and 64 KiB of /dev/hwrng and writes those to the disk, and
// prints the checksums; after power-off L1 checksums the block in the
// image, so the test sees the guest's read, its write, and that the
// entropy reached the disk. The same L1 run first runs the platform's
// ITS routing test on KVM.
func TestARM64Virtio(t *testing.T) {
	a := arm64L1(t)
	dir, bin, platformTest := buildARM64Govmm(t)

	ar := arm64VirtioArchive(t, a)
	ar.Bytes("/init", 0o755, []byte(arm64VirtioInit("arm64-virtio")+`i=0
while { [ ! -b /dev/vda ] || [ ! -c /dev/hwrng ]; } && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
echo "arm64-virtio: vda-size $($B blockdev --getsize64 /dev/vda)"
echo "arm64-virtio: known-sum $($B dd if=/dev/vda bs=65536 skip=`+fmt.Sprint(arm64KnownOff/arm64Block)+` count=1 2>/dev/null | $B sha256sum)"
echo "arm64-virtio: rng-current $($B cat /sys/class/misc/hw_random/rng_current)"
$B head -c `+fmt.Sprint(arm64Block)+` /dev/hwrng >/tmp/rng
echo "arm64-virtio: rng-sum $($B sha256sum </tmp/rng)"
$B dd if=/tmp/rng of=/dev/vda bs=65536 seek=`+fmt.Sprint(arm64RNGOff/arm64Block)+` conv=fsync 2>/dev/null || echo "arm64-virtio: write failed"
$B grep virtio /proc/interrupts | $B sed 's/^/arm64-virtio: irq /'
$B poweroff -f
`))
	initrd := writeInitrd(t, dir, ar)
	disk := filepath.Join(dir, "disk.img")
	img := pattern("arm64-"+t.Name(), arm64DiskSize)
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}

	script := `cd /tmp
echo "l1: $(uname -m), /dev/kvm: $([ -c /dev/kvm ] && echo yes || echo no)"
` + platformTest + ` -test.count=1 -test.v -test.run 'TestITSRouting|TestPL011AndSystemOff' >/tmp/platform.log 2>&1; echo "l1: platform tests exit=$?"
grep -E '^(--- |ok|PASS|FAIL|panic)|_test.go' /tmp/platform.log
timeout 480 ` + bin + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M --disk path=` + disk + ` --rng --cmdline 'console=ttyAMA0 panic=-1'
echo "l1: govmm exit=$?"
echo "l1: image-rng-sum $(dd if=` + disk + ` bs=65536 skip=` + fmt.Sprint(arm64RNGOff/arm64Block) + ` count=1 2>/dev/null | sha256sum)"
`
	o := runARM64L1(t, script, 20*time.Minute, bin, platformTest, initrd, disk, a.Kernel)
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: platform tests exit=0", "l1: govmm exit=0\n"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "arm64-virtio: insmod") || strings.Contains(o, "arm64-virtio: write failed") {
		t.Errorf("the guest reported a failure")
	}
	if got := guestValue(o, "arm64-virtio", "vda-size"); got != fmt.Sprint(arm64DiskSize) {
		t.Errorf("vda size %q, want %d", got, arm64DiskSize)
	}
	if got, want := guestValue(o, "arm64-virtio", "known-sum"), sum(img[arm64KnownOff:arm64KnownOff+arm64Block]); got != want {
		t.Errorf("the guest read the known block as %q, want %s", got, want)
	}
	if got := guestValue(o, "arm64-virtio", "rng-current"); !strings.HasPrefix(got, "virtio_rng") {
		t.Errorf("hw_random's current source %q, want virtio_rng.N", got)
	}
	rngSum := guestValue(o, "arm64-virtio", "rng-sum")
	if len(rngSum) != 64 || rngSum == sum(make([]byte, arm64Block)) || rngSum == sum(img[arm64RNGOff:arm64RNGOff+arm64Block]) {
		t.Errorf("the guest's /dev/hwrng read sums to %q: not 64 KiB of fresh entropy", rngSum)
	}
	if got := guestValue(o, "l1", "image-rng-sum"); got != rngSum {
		t.Errorf("the image holds %q where the guest wrote its entropy (%q)", got, rngSum)
	}
	if !regexp.MustCompile(`arm64-virtio: irq .*MSI.*virtio`).MatchString(o) {
		t.Errorf("no virtio interrupt is an MSI in the guest's /proc/interrupts")
	}
}

const howToGetARM64Virtio = "run .ci/run once: it unpacks Debian's arm64 cloud kernel with its modules into ~/.cache/govmm/arm64"

// arm64VirtioArchive is an initramfs for a guest in the aarch64 L1 a:
// the usual directories, busybox, and the virtio modules in /lib/modules
// (virtioModules, virtio_test.go: Debian's arm64 cloud kernel builds the
// same drivers as modules as its x86 one; the PCI host driver and the ITS
// are built in). The caller adds its /init.
// writeInitrd writes ar as dir/initrd.cpio and returns its path.
func writeInitrd(t *testing.T, dir string, ar *initramfs.Archive) string {
	t.Helper()
	p := filepath.Join(dir, "initrd.cpio")
	if err := ar.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// zeroDisk writes an image of size zero bytes as dir/disk.img and
// returns its path.
func zeroDisk(t *testing.T, dir string, size int) string {
	t.Helper()
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func arm64VirtioArchive(t *testing.T, a *nested.Assets) *initramfs.Archive {
	t.Helper()
	mods := moduleTree(a.Kernel)
	ar := initramfs.New()
	for _, d := range []string{"/bin", "/proc", "/sys", "/dev", "/tmp", "/lib", "/lib/modules"} {
		ar.Dir(d)
	}
	if err := ar.File("/bin/busybox", a.Busybox); err != nil {
		t.Fatal(err)
	}
	for _, m := range virtioModules {
		if err := ar.File("/lib/modules/"+filepath.Base(m), filepath.Join(mods, m)); err != nil {
			t.Fatalf("arm64 virtio module: %v (%s)", err, howToGetARM64Virtio)
		}
	}
	return ar
}

// dumpRunLogs is the end of an aarch64 L1 script that ran n govmm
// processes: each one's stdout (/tmp/runN.log) and stderr (/tmp/runN.err)
// printed with a "runN| " or "errN| " prefix, which the tests split on.
func dumpRunLogs(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		// awk, not sed: a log whose VMM was killed mid-line has no final
		// newline, and sed would run the next log's first line into it
		// (TestARM64State lost the restored guest's first tick so, in a
		// run of 2026-12-06).
		fmt.Fprintf(&b, "awk '{print \"run%d| \" $0}' /tmp/run%d.log\nawk '{print \"err%d| \" $0}' /tmp/run%d.err\n", i, i, i, i)
	}
	return b.String()
}

// TestDumpRunLogs: the lines the aarch64 scripts end with.
func TestDumpRunLogs(t *testing.T) {
	want := "awk '{print \"run1| \" $0}' /tmp/run1.log\nawk '{print \"err1| \" $0}' /tmp/run1.err\n" +
		"awk '{print \"run2| \" $0}' /tmp/run2.log\nawk '{print \"err2| \" $0}' /tmp/run2.err\n"
	if got := dumpRunLogs(2); got != want {
		t.Fatalf("dumpRunLogs(2) = %q, want %q", got, want)
	}
}

// arm64VirtioInit begins the /init of the arm64 guests with a disk and an
// RNG (TestARM64Virtio's, TestARM64Confine's and the INTx tests'): the
// file systems, the console and the virtio modules, a module that fails
// to load said on a line with prefix.
func arm64VirtioInit(prefix string) string {
	return `#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
exec >/dev/console 2>&1
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio-rng; do
	$B insmod /lib/modules/$m.ko || echo "` + prefix + `: insmod $m failed"
done
`
}
