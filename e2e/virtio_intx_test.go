package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The INTx guest's disk: 80 MiB, with the throughput run's data from
// 4 MiB, the entropy block at 72 MiB and the ticks' blocks from 1201 *
// 64 KiB.
const (
	intxDiskSize = 80 << 20
	intxRNGBlock = 1152 // in 64 KiB blocks
	intxTickBase = 1200
	intxTicks    = 6
)

// intxInit is the INTx guest's /init: with its network up it pings L1,
// shows /proc/interrupts' virtio lines, writes 64 KiB of entropy from
// virtio-rng to vda, reads it back past its page cache, times a dd of
// intx.mb MiB each way, then copies a fresh entropy block to the disk
// each second (the ticks), each time with the virtio interrupt count.
var intxInit = `#!/bin/busybox sh
` + virtioInitHead + `for m in failover net_failover virtio_net; do
	$B insmod /lib/modules/$m.ko || echo "intx-test: insmod $m failed"
done
$B mkdir -p /tmp
mb=$($B sed -n 's/.*intx\.mb=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0
while { [ ! -b /dev/vda ] || [ ! -e /sys/class/net/eth0 ]; } && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done
` + intxShellFuncs + `$B ip link set lo up
$B ip addr add ` + netGuestIP + `/24 dev eth0
$B ip link set eth0 up
$B sleep 1
if $B ping -c 3 -W 10 ` + netHostIP + ` >/dev/null; then echo "intx-test: ping ok"; else echo "intx-test: ping failed"; fi
irqs boot
` + intxIOShell(intxRNGBlock, "$mb", intxTickBase, intxTicks) + `$B poweroff -f
`

// intxShellFuncs are the INTx guests' shell functions: irqs PHASE prints
// the virtio lines of /proc/interrupts as "intx-irq PHASE: ...", total
// the sum of their counts.
const intxShellFuncs = `irqs() { $B grep virtio /proc/interrupts | $B sed "s/^/intx-irq $1: /"; echo "intx-test: irqs-$1-end"; }
total() { $B awk '/virtio/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }
`

// intxIOShell is the INTx guests' I/O, the same on x86 and arm64: 64 KiB
// of entropy written to vda at 64 KiB block rngBlock and read back past
// the page cache, a timed dd of mb (a shell word) MiB each way from 4
// MiB, then ticks ticks that each copy a fresh entropy block to block
// tickBase+i, read it back and print the virtio interrupt count.
func intxIOShell(rngBlock int, mb string, tickBase, ticks int) string {
	return `$B head -c 65536 /dev/hwrng > /tmp/r
echo "intx-test: rng-bytes $($B wc -c < /tmp/r)"
$B dd if=/tmp/r of=/dev/vda bs=64k seek=` + strconv.Itoa(rngBlock) + ` conv=fsync 2>/dev/null || echo "intx-test: rng write failed"
echo 3 > /proc/sys/vm/drop_caches
echo "intx-test: disk-sum $($B sha256sum < /tmp/r | $B cut -c1-64) $($B dd if=/dev/vda bs=64k skip=` + strconv.Itoa(rngBlock) + ` count=1 2>/dev/null | $B sha256sum | $B cut -c1-64)"
t0=$($B cut -d' ' -f1 /proc/uptime)
$B dd if=/dev/zero of=/dev/vda bs=1M count=` + mb + ` seek=4 conv=fsync 2>/dev/null || echo "intx-test: dd write failed"
t1=$($B cut -d' ' -f1 /proc/uptime)
echo 3 > /proc/sys/vm/drop_caches
$B dd if=/dev/vda of=/dev/null bs=1M count=` + mb + ` skip=4 2>/dev/null || echo "intx-test: dd read failed"
t2=$($B cut -d' ' -f1 /proc/uptime)
echo "intx-test: dd ` + mb + ` $t0 $t1 $t2"
irqs io
i=1
while [ $i -le ` + strconv.Itoa(ticks) + ` ]; do
	$B head -c 65536 /dev/hwrng > /tmp/t
	$B dd if=/tmp/t of=/dev/vda bs=64k seek=$((` + strconv.Itoa(tickBase) + `+i)) conv=fsync 2>/dev/null
	echo 3 > /proc/sys/vm/drop_caches
	echo "intx-tick $i $($B sha256sum < /tmp/t | $B cut -c1-64) $($B dd if=/dev/vda bs=64k skip=$((` + strconv.Itoa(tickBase) + `+i)) count=1 2>/dev/null | $B sha256sum | $B cut -c1-64) irqs=$(total)"
	i=$((i+1))
	$B sleep 1
done
irqs end
echo "intx-test: done"
`
}

// intxGrowth reads the virtio lines the guest printed at boot, after its
// I/O and at its end, fails the test unless each phase has some and
// their counts grew, and returns the boot lines and the three counts.
func intxGrowth(out string, fail func(string, ...any)) (boot []string, nb, ni, ne uint64, ok bool) {
	boot, io, end := intxIRQLines(out, "boot"), intxIRQLines(out, "io"), intxIRQLines(out, "end")
	if len(boot) == 0 || len(io) == 0 || len(end) == 0 {
		fail("no virtio lines in /proc/interrupts (boot %d, io %d, end %d)", len(boot), len(io), len(end))
		return nil, 0, 0, 0, false
	}
	for _, l := range boot {
		nb += intxCount(l)
	}
	for _, l := range io {
		ni += intxCount(l)
	}
	for _, l := range end {
		ne += intxCount(l)
	}
	if !(nb > 0 && ni > nb && ne > ni) {
		fail("virtio interrupts did not grow with the I/O: %d at boot, %d after the disk and rng I/O, %d at the end", nb, ni, ne)
	}
	return boot, nb, ni, ne, true
}

// checkINTxTicks fails the test unless every tick up to n is in ticks
// (from intxTicksOf) with more interrupts than the one before.
func checkINTxTicks(ticks map[int]uint64, n int, fail func(string, ...any)) {
	for i := 1; i <= n; i++ {
		if _, ok := ticks[i]; !ok {
			fail("no tick %d", i)
		}
		if i > 1 && ticks[i] <= ticks[i-1] {
			fail("tick %d: %d virtio interrupts, tick %d had %d: no interrupts for its I/O", i, ticks[i], i-1, ticks[i-1])
		}
	}
}

// logINTxDD logs the guest's dd throughput each way, or fails the test
// if it printed none.
func logINTxDD(t *testing.T, out string, fail func(string, ...any)) {
	t.Helper()
	f := strings.Fields(guestValue(out, "intx-test", "dd"))
	if len(f) != 4 {
		fail("no dd timing")
		return
	}
	mb, _ := strconv.Atoi(f[0])
	t0, _ := strconv.ParseFloat(f[1], 64)
	t1, _ := strconv.ParseFloat(f[2], 64)
	t2, _ := strconv.ParseFloat(f[3], 64)
	t.Logf("dd of %d MiB: write (conv=fsync) %.2f s = %.1f MiB/s, read %.2f s = %.1f MiB/s", mb, t1-t0, float64(mb)/max(t1-t0, 0.01), t2-t1, float64(mb)/max(t2-t1, 0.01))
}

// intxIRQLines returns the /proc/interrupts lines the guest printed for
// phase.
func intxIRQLines(out, phase string) []string {
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if _, v, ok := strings.Cut(l, "intx-irq "+phase+": "); ok {
			ls = append(ls, strings.TrimSpace(v))
		}
	}
	return ls
}

// intxCount sums the per-CPU counts of a /proc/interrupts line.
func intxCount(l string) uint64 {
	f := strings.Fields(l)
	var n uint64
	for _, x := range f[1:] {
		v, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			break
		}
		n += v
	}
	return n
}

// intxTicksOf parses the ticks the guest printed: tick -> interrupt count,
// failing the test on a tick whose block read back differently.
func intxTicksOf(t *testing.T, out string) map[int]uint64 {
	t.Helper()
	ticks := map[int]uint64{}
	for _, m := range regexp.MustCompile(`intx-tick (\d+) ([0-9a-f]{64}) ([0-9a-f]{64}) irqs=(\d+)`).FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(m[1])
		n, _ := strconv.ParseUint(m[4], 10, 64)
		if m[2] != m[3] {
			t.Errorf("tick %d: the guest wrote a block with SHA-256 %s and read back %s", i, m[2], m[3])
		}
		ticks[i] = n
	}
	return ticks
}

// TestVirtioINTx boots Linux with pci=nomsi, so virtio-pci falls back to
// INTx, with a virtio disk, virtio-rng and virtio-net, on each
// accelerator. The guest pings L1, writes entropy to its disk and reads
// it back past its page cache, and times a dd each way; the test checks
// that every virtio interrupt line in /proc/interrupts is an IO-APIC
// line (no PCI-MSI), that the counts grew with the I/O, and the disk
// image after power-off. On KVM the guest is snapshotted in its ticks
// and restored, and must go on doing I/O with interrupts after the
// restore. The same guest with MSI-X (kvm-msix) gives the throughput to
// compare with.
func TestVirtioINTx(t *testing.T) {
	kernel := linuxKernel(t)
	initrd := guestInitrdNet(t, intxInit)
	type run struct {
		name     string
		acc      []string
		nomsi    bool
		snapshot bool
		mb       int
	}
	var runs []run
	for _, acc := range accels(t) {
		n := accelName(acc)
		r := run{name: n, acc: acc, nomsi: true, mb: 64}
		if n == "kvm" {
			r.snapshot = true
			runs = append(runs, r, run{name: "kvm-msix", acc: acc, mb: 64})
			continue
		}
		runs = append(runs, r)
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			needTun(t)
			dir := tempSocketDir(t)
			vda, api, snap := filepath.Join(dir, "vda.img"), filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			fresh := func() {
				if err := os.WriteFile(vda, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(vda, intxDiskSize); err != nil {
					t.Fatal(err)
				}
			}
			cmdline := fmt.Sprintf("console=ttyS0 quiet panic=-1 intx.mb=%d", r.mb)
			if r.nomsi {
				cmdline += " pci=nomsi"
			}
			nf := "tap=" + netTap + ",mac=" + netMAC
			args := append(append([]string{"run"}, r.acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket="+api, "--disk", "path="+vda, "--rng", "--net", nf, "--cmdline", cmdline)
			p := bootGuestFresh(t, args, "intx-tick 2 ", fresh, func() { hostTap(t) })
			source := ""
			if r.snapshot {
				if res := govmm(t, "snapshot", "--api-socket="+api, "--dir="+snap, "--stop"); res.Code != 0 {
					t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", res, p.output())
				}
				if code := p.exit(time.Minute); code != 0 {
					t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
				}
				source = p.output()
				p = start(t, append(append([]string{"restore"}, r.acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M",
					"--disk", "path="+vda, "--rng", "--net", nf)...)
				hostTap(t)
			}
			p.waitFor("intx-test: done", 5*time.Minute)
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("govmm exit %d\n%s", code, p.output())
			}
			out := source + p.output()
			fail := func(format string, a ...any) {
				t.Helper()
				t.Errorf("%s\n--- guest:\n%s", fmt.Sprintf(format, a...), out)
			}
			if strings.Contains(out, "intx-test: insmod") || strings.Contains(out, "virtio-test: insmod") {
				fail("a module did not load")
			}
			if !strings.Contains(out, "intx-test: ping ok") {
				fail("the guest could not ping L1")
			}
			if got := guestValue(out, "intx-test", "rng-bytes"); got != "65536" {
				fail("the guest read %q bytes from /dev/hwrng, want 65536", got)
			}
			sums := strings.Fields(guestValue(out, "intx-test", "disk-sum"))
			img, err := os.ReadFile(vda)
			if err != nil {
				t.Fatal(err)
			}
			if len(sums) != 2 || sums[0] != sums[1] {
				fail("entropy block: written and read back SHA-256 %q differ", sums)
			} else if len(img) != intxDiskSize {
				fail("vda is %d bytes after the run, want %d", len(img), intxDiskSize)
			} else if got := sum(img[intxRNGBlock<<16 : (intxRNGBlock+1)<<16]); got != sums[0] {
				fail("the image's entropy block has SHA-256 %s, the guest wrote %s", got, sums[0])
			} else if bytes.Equal(img[intxRNGBlock<<16:(intxRNGBlock+1)<<16], make([]byte, 1<<16)) {
				fail("the entropy block is zeros")
			}
			// The interrupt lines: INTx through the IOAPIC with
			// pci=nomsi, MSI-X without; counts that grew with the I/O.
			boot, nb, ni, ne, ok := intxGrowth(out, fail)
			if !ok {
				return
			}
			for _, l := range boot {
				if r.nomsi && (!strings.Contains(l, "IO-APIC") || strings.Contains(l, "MSI")) {
					fail("with pci=nomsi a virtio interrupt is not an IO-APIC line: %q", l)
				}
				if !r.nomsi && !strings.Contains(l, "MSI") {
					fail("with MSI-X a virtio interrupt is not an MSI one: %q", l)
				}
			}
			if r.nomsi && len(boot) != 3 {
				fail("with pci=nomsi want 3 virtio IO-APIC lines (disk, rng, net), got %d", len(boot))
			}
			t.Logf("virtio interrupts: %d after boot and ping, %d after the I/O, %d at the end; lines at the end:\n%s", nb, ni, ne, strings.Join(intxIRQLines(out, "end"), "\n"))
			checkINTxTicks(intxTicksOf(t, out), intxTicks, fail)
			if r.snapshot {
				after := p.output()
				n := 0
				for i := 1; i <= intxTicks; i++ {
					if strings.Contains(after, fmt.Sprintf("intx-tick %d ", i)) && !strings.Contains(source, fmt.Sprintf("intx-tick %d ", i)) {
						n++
					}
				}
				if n == 0 {
					fail("no tick came from the restored guest")
				}
				t.Logf("%d ticks of disk and rng I/O after the restore", n)
			}
			logINTxDD(t, out, fail)
		})
	}
}
