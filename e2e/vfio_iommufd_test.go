package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"govmm/internal/kvmtest"
	"govmm/internal/nested"
)

// iommufdModules are the VFIO modules of the kernel in
// nested.IOMMUFDKernelDir, in load order: iommufd first (vfio.ko, built
// with the VFIO cdev, needs it); vfio_virqfd is part of vfio.ko there.
var iommufdModules = []string{"drivers/iommu/iommufd/iommufd.ko", "drivers/vfio/vfio.ko", "drivers/vfio/vfio_iommu_type1.ko",
	"drivers/vfio/pci/vfio-pci-core.ko", "drivers/vfio/pci/vfio-pci.ko"}

// TestVFIOIOMMUFD passes QEMU's edu device through with iommufd and the
// device's VFIO cdev (--device vfio=...,iommu=iommufd) to the edu guest
// on every accelerator, with the checks of TestVFIO/edu (identification,
// INTx, 200 MSIs each received once, DMA both ways through the IOMMU).
// It runs in an L1 of its own on Debian's 6.12 cloud kernel with iommufd
// and the VFIO cdev built as modules (.ci/run builds them into
// nested.IOMMUFDKernelDir: Debian's kernels have neither). There,
// iommu=auto must pick iommufd and iommu=legacy must still work.
func TestVFIOIOMMUFD(t *testing.T) {
	dir := nested.IOMMUFDKernelDir()
	if _, err := os.Stat(dir); err != nil && !kvmtest.InL1() {
		if kvmtest.Required() {
			t.Fatalf("no kernel with iommufd in %s (.ci/run builds it with .ci/iommufd-kernel.sh): %v", dir, err)
		}
		t.Skipf("no kernel with iommufd in %s (.ci/run builds it with .ci/iommufd-kernel.sh): %v", dir, err)
	}
	if !inVFIOL1On(t, dir, iommufdModules) {
		return
	}
	if _, err := os.Stat("/dev/iommu"); err != nil {
		t.Fatalf("/dev/iommu: %v (was iommufd.ko loaded?)", err)
	}
	addr := pciDevice(t, "0x1234", "0x11e8")
	bindVFIO(t, addr)
	if ents, _ := os.ReadDir("/dev/vfio/devices"); len(ents) == 0 {
		t.Fatal("/dev/vfio/devices is empty: vfio.ko was built without the VFIO cdev")
	}
	guest := guestPath(t, "edu")
	const n = 200
	for _, acc := range accels(t) {
		for _, c := range []struct{ iommu, order, kind string }{
			{"iommufd", "route-first", "iommufd"},
			{"iommufd", "irqs-first", "iommufd"},
			{"auto", "route-first", "iommufd"},
			{"legacy", "route-first", "legacy"},
		} {
			t.Run(accelName(acc)+"/"+c.iommu+"/"+c.order, func(t *testing.T) {
				r := vfioGuest(t, acc, guest, fmt.Sprintf("n=%d", n), addr, c.order, "iommu="+c.iommu)
				if !strings.Contains(r.Stderr, "iommu="+c.kind) {
					t.Errorf("govmm did not log iommu=%s:\n%s", c.kind, r.Stderr)
				}
				us := checkEdu(t, r, n)
				t.Logf("MSI round trip %s us on %s through %s, order %s", us, accelName(acc), c.kind, c.order)
			})
		}
	}
}
