package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// virtioPackedInit prints each virtio device's ID and negotiated feature
// string (Linux's /sys/bus/virtio/devices/virtioN/features: character i
// is feature bit i), then copies blocks of vda as virtioTickInit does.
var virtioPackedInit = strings.Replace(virtioTickInit, "i=1\n", `for d in /sys/bus/virtio/devices/virtio*; do
	echo "virtio-packed: device $($B cat $d/device) features $($B cat $d/features)"
done
i=1
`, 1)

// packedFeatures returns the feature strings the guest printed for
// virtio device ID id.
func packedFeatures(console string, id int) []string {
	re := regexp.MustCompile(fmt.Sprintf(`virtio-packed: device 0x%04x features ([01]+)`, id))
	var out []string
	for _, m := range re.FindAllStringSubmatch(console, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestVirtioPacked boots Linux with a packed=on disk (and a split-ring
// virtio-rng) on each accelerator. Linux's virtio_ring must negotiate
// VIRTIO_F_RING_PACKED (bit 34) for the disk and not for the rng; the
// guest copies blocks on the disk through the packed ring and reads each
// copy back past its page cache; a snapshot is taken in the middle and
// refused by a restore whose disk lacks packed=on, and restores with it:
// the restored guest's later copies read back right and the image after
// power-off holds all eight.
func TestVirtioPacked(t *testing.T) {
	needLinux(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	initrd := virtioInitrd(t, virtioPackedInit)
	const blk64 = 64 << 10
	pa := pattern("vda", vdaSize)
	tick := func(i int) string { return fmt.Sprintf("virtio-tick %d %s", i, sum(pa[i*blk64:(i+1)*blk64])) }
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			dir := t.TempDir()
			vda := filepath.Join(dir, "vda.img")
			sock, snap := filepath.Join(dir, "api.sock"), filepath.Join(dir, "snap")
			disk := "path=" + vda + ",serial=packed"
			fresh := func() {
				if err := os.WriteFile(vda, pa, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			p := bootGuestFresh(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--initrd", initrd, "--cpus=2",
				"--memory=512M", "--api-socket", sock, "--disk", disk+",packed=on", "--rng", "--cmdline", "console=ttyS0 quiet panic=-1"),
				tick(3), fresh, nil)
			out := p.output()
			blkF, rngF := packedFeatures(out, 2), packedFeatures(out, 4)
			if len(blkF) != 1 || len(blkF[0]) < 35 || blkF[0][34] != '1' {
				t.Fatalf("the disk's negotiated features %q lack RING_PACKED (bit 34)\n%s", blkF, out)
			}
			if len(rngF) != 1 || len(rngF[0]) < 35 || rngF[0][34] != '0' {
				t.Fatalf("the rng's negotiated features %q: want a split ring (bit 34 clear)\n%s", rngF, out)
			}
			t.Logf("disk features %s", blkF[0])
			if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
				t.Fatalf("govmm snapshot:\n%s\n--- source:\n%s", r, p.output())
			}
			if code := p.exit(time.Minute); code != 0 {
				t.Fatalf("source after snapshot --stop: exit %d\n%s", code, p.output())
			}
			restoreArgs := append(append([]string{"restore"}, acc...), "--snapshot="+snap, "--cpus=2", "--memory=512M")
			r := govmm(t, append(append([]string(nil), restoreArgs...), "--disk", disk, "--rng")...)
			if r.Code != 64 || !strings.Contains(r.Stderr, "packed=on") {
				t.Fatalf("restore of a packed-ring snapshot onto a split-ring disk: want exit 64 naming packed=on, got\n%s", r)
			}
			t.Logf("refused (no packed=on): %s", strings.TrimSpace(r.Stderr))
			source := p.output()
			p = start(t, append(restoreArgs, "--disk", disk+",packed=on", "--rng")...)
			finishTickingCopies(t, p, source, vda, pa)
		})
	}
}

// TestVirtioPackedIO runs TestVirtioLinux's guest (reads, a copy, entropy
// written, a discard, a refused write to the read-only disk, both images
// checked byte for byte) with packed=on on both disks.
func TestVirtioPackedIO(t *testing.T) {
	needLinux(t)
	kernel := os.Getenv(linuxKernelEnv)
	if kernel == "" {
		t.Fatal("GOVMM_LINUX_KERNEL is not set and no kernel is cached (.ci/run downloads it)")
	}
	initrd := virtioInitrd(t, virtioInit)
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) { virtioLinux(t, acc, kernel, initrd, t.TempDir(), ",packed=on") })
	}
}
