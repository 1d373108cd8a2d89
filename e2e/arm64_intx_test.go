package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The arm64 INTx guest's disk: 24 MiB of pattern, the known block at
// 1 MiB, the entropy block at 2 MiB, the dd run over [4, 4+mb) MiB and
// the ticks' blocks from 21 MiB.
const (
	arm64INTxDiskSize = 24 << 20
	arm64INTxRNGBlock = 32 // in 64 KiB blocks
	arm64INTxDDMiB    = 16
	arm64INTxTickBase = 336
	// arm64INTxTicks: the snapshot is taken after tick 2.
	arm64INTxTicks = 6
)

// arm64INTxPrelude begins both arm64 INTx guests' /init (this test's and
// TestARM64VirtioINTxMigration's): the file systems, the console, the
// virtio modules, a wait for vda and hwrng, and the shell functions both
// use.
var arm64INTxPrelude = arm64VirtioInit("intx-test") + `i=0
while { [ ! -b /dev/vda ] || [ ! -c /dev/hwrng ]; } && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
` + intxShellFuncs

// arm64INTxInit is the guest's /init: the virtio modules, the virtio
// lines of /proc/interrupts, the known block read, 64 KiB of entropy
// written to vda and read back past the page cache, a timed dd each way,
// then arm64INTxTicks ticks that each copy a fresh entropy block to the disk,
// read it back and print the virtio interrupt count (the same lines as
// TestVirtioINTx's guest, so its parsers read them).
var arm64INTxInit = arm64INTxPrelude + `irqs boot
echo "intx-test: known-sum $($B dd if=/dev/vda bs=65536 skip=` + strconv.Itoa(arm64KnownOff/arm64Block) + ` count=1 2>/dev/null | $B sha256sum)"
` + intxIOShell(arm64INTxRNGBlock, strconv.Itoa(arm64INTxDDMiB), arm64INTxTickBase, arm64INTxTicks) + `$B poweroff -f
`

// TestARM64VirtioINTx boots Debian's arm64 kernel under govmm's arm64
// build in the aarch64 L1 with pci=nomsi, a virtio disk and virtio-rng,
// so virtio_pci takes INTA of each function, which the device tree's
// interrupt-map routes to a GIC SPI (slot 1: SPI 4, INTID 36; slot 2:
// SPI 5, INTID 37) and govmm raises through a KVM resample irqfd. The
// test wants the two virtio lines in /proc/interrupts on those GICv3
// INTIDs, level-triggered, and no ITS MSI; counts that grow with the
// I/O; the guest's entropy and tick blocks read back as written and
// found in the image after power-off. The guest is snapshotted (--stop)
// during its ticks and restored, and the restored guest's ticks must do
// their I/O with interrupts still arriving (the INTx line state carried
// by the snapshot). One guest boot. TestARM64VirtioINTxMigration
// live-migrates the same guest, again and again.
func TestARM64VirtioINTx(t *testing.T) {
	a := arm64L1(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "govmm-arm64")
	buildARM64(t, bin, "build", "./cmd/govmm")
	ar := arm64VirtioArchive(t, a)
	ar.Bytes("/init", 0o755, []byte(arm64INTxInit))
	initrd := writeInitrd(t, dir, ar)
	disk := filepath.Join(dir, "disk.img")
	img := pattern("arm64-"+t.Name(), arm64INTxDiskSize)
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}

	g := bin
	devs := ` --disk path=` + disk + ` --rng`
	script := arm64TickShell + arm64MigrateShell(g) + g + ` run --kernel ` + a.Kernel + ` --initrd ` + initrd + ` --cpus 2 --memory 512M` + devs + ` --cmdline 'console=ttyAMA0 panic=-1 pci=nomsi' --serial file:/tmp/run1.log --api-socket /tmp/api1.sock 2>/tmp/run1.err &
P1=$!
waitfor /tmp/run1.log 'intx-tick 2 ' 300
` + g + ` snapshot --api-socket /tmp/api1.sock --dir /tmp/snap --stop; echo "l1: snapshot exit=$?"
reap $P1 60; echo "l1: run1 exit=$?"
` + g + ` restore --snapshot /tmp/snap` + devs + ` --serial file:/tmp/run2.log 2>/tmp/run2.err &
P2=$!
waitfor /tmp/run2.log 'intx-test: done' 300
reap $P2 60; echo "l1: run2 exit=$?"
echo "l1: image-rng-sum $(dd if=` + disk + ` bs=65536 skip=` + strconv.Itoa(arm64INTxRNGBlock) + ` count=1 2>/dev/null | sha256sum)"
i=1; while [ $i -le ` + strconv.Itoa(arm64INTxTicks) + ` ]; do echo "l1: image-tick-$i $(dd if=` + disk + ` bs=65536 skip=$((` + strconv.Itoa(arm64INTxTickBase) + `+i)) count=1 2>/dev/null | sha256sum)"; i=$((i+1)); done
` + dumpRunLogs(2)
	start := time.Now()
	o := runARM64L1(t, script, 20*time.Minute, bin, initrd, disk, a.Kernel)
	t.Logf("L1 run took %v", time.Since(start).Round(time.Second))
	var runs [2]strings.Builder
	for _, l := range strings.Split(o, "\n") {
		for i := range runs {
			if v, ok := strings.CutPrefix(l, fmt.Sprintf("run%d| ", i+1)); ok {
				runs[i].WriteString(v + "\n")
			}
		}
	}
	guest := runs[0].String() + runs[1].String()
	fail := func(format string, a ...any) {
		t.Helper()
		t.Errorf(format, a...)
	}
	for _, want := range []string{"l1: aarch64, /dev/kvm: yes", "l1: snapshot exit=0", "l1: run1 exit=0\n", "l1: run2 exit=0\n", "intx-test: done"} {
		if !strings.Contains(o, want) {
			fail("output lacks %q", want)
		}
	}
	if strings.Contains(o, "l1: timeout waiting") || regexp.MustCompile(`intx-test: .*failed`).MatchString(guest) {
		fail("L1 or the guest reported a failure")
	}
	if got, want := guestValue(guest, "intx-test", "known-sum"), sum(img[arm64KnownOff:arm64KnownOff+arm64Block]); got != want {
		fail("the guest read the known block as %q, want %s", got, want)
	}
	if got := guestValue(guest, "intx-test", "rng-bytes"); got != "65536" {
		fail("the guest read %q bytes from /dev/hwrng, want 65536", got)
	}
	sums := strings.Fields(guestValue(guest, "intx-test", "disk-sum"))
	if len(sums) != 2 || sums[0] != sums[1] || sums[0] == sum(make([]byte, arm64Block)) {
		fail("entropy block: written and read back SHA-256 %q", sums)
	} else if got := guestValue(o, "l1", "image-rng-sum"); got != sums[0] {
		fail("the image's entropy block has SHA-256 %q, the guest wrote %s", got, sums[0])
	}

	// The interrupt lines: two GICv3 SPIs, level, the INTIDs the
	// interrupt-map gives slots 1 and 2; no ITS MSI.
	boot, nb, ni, ne, ok := intxGrowth(guest, fail)
	if !ok {
		t.FailNow()
	}
	gic := regexp.MustCompile(`GICv3\s+(\d+)\s+Level\s+virtio\d+`)
	intids := map[string]bool{}
	for _, l := range boot {
		m := gic.FindStringSubmatch(l)
		if m == nil || strings.Contains(l, "MSI") {
			fail("with pci=nomsi a virtio interrupt is not a level GICv3 SPI: %q", l)
			continue
		}
		intids[m[1]] = true
	}
	if len(boot) != 2 || !intids["36"] || !intids["37"] {
		fail("virtio lines %q: want two, on GICv3 INTIDs 36 and 37 (SPIs 4 and 5, INTA of slots 1 and 2)", boot)
	}
	t.Logf("virtio interrupts: %d after boot, %d after the I/O, %d at the end; lines at the end:\n%s", nb, ni, ne, strings.Join(intxIRQLines(guest, "end"), "\n"))

	ticks := intxTicksOf(t, guest)
	restored := intxTicksOf(t, runs[1].String())
	checkINTxTicks(ticks, arm64INTxTicks, fail)
	for i := 1; i <= arm64INTxTicks; i++ {
		m := regexp.MustCompile(fmt.Sprintf(`intx-tick %d ([0-9a-f]{64}) `, i)).FindStringSubmatch(guest)
		if m != nil {
			if got := guestValue(o, "l1", fmt.Sprintf("image-tick-%d", i)); got != m[1] {
				fail("the image's tick %d block has SHA-256 %q, the guest wrote %s", i, got, m[1])
			}
		}
	}
	if len(restored) == 0 {
		fail("no tick came from the restored guest")
	}
	t.Logf("ticks %v (tick -> virtio interrupts), %d of them from the restored guest", ticks, len(restored))
	logINTxDD(t, guest, fail)
}
