package vfio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHost points the sysfs, /dev/vfio and /dev/iommu lookups at a
// temporary tree for the test's duration. iommu says whether /dev/iommu
// exists (as a character device: /dev/null stands in for it).
func fakeHost(t *testing.T, iommu bool) (sys, dev string) {
	t.Helper()
	root := t.TempDir()
	sys, dev = filepath.Join(root, "sys"), filepath.Join(root, "dev", "vfio")
	for _, d := range []string{sys, filepath.Join(dev, "devices")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	oldSys, oldDev, oldIOMMU := sysfsDevices, DevDir, IOMMUDev
	t.Cleanup(func() { sysfsDevices, DevDir, IOMMUDev = oldSys, oldDev, oldIOMMU })
	sysfsDevices, DevDir = sys, dev
	IOMMUDev = filepath.Join(root, "dev", "iommu")
	if iommu {
		if err := os.Symlink("/dev/null", IOMMUDev); err != nil {
			t.Fatal(err)
		}
	}
	return sys, dev
}

// fakeDevice adds a PCI device bound to driver in IOMMU group 5, with
// the VFIO cdev vfio-dev/<cdev> in sysfs (none when cdev is "") and its
// /dev/vfio/devices node when node is set.
func fakeDevice(t *testing.T, sys, dev, addr, driver, cdev string, node bool) {
	t.Helper()
	d := filepath.Join(sys, addr)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../bus/pci/drivers/"+driver, filepath.Join(d, "driver")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../kernel/iommu_groups/5", filepath.Join(d, "iommu_group")); err != nil {
		t.Fatal(err)
	}
	if cdev != "" {
		if err := os.MkdirAll(filepath.Join(d, "vfio-dev", cdev), 0o755); err != nil {
			t.Fatal(err)
		}
		if node {
			if err := os.Symlink("/dev/null", filepath.Join(dev, "devices", cdev)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestChooseIOMMU(t *testing.T) {
	sys, dev := fakeHost(t, true)
	fakeDevice(t, sys, dev, "0000:00:03.0", "vfio-pci", "vfio0", true)
	fakeDevice(t, sys, dev, "0000:00:04.0", "vfio-pci", "vfio1", true)
	fakeDevice(t, sys, dev, "0000:00:05.0", "vfio-pci", "vfio2", false) // a kernel without CONFIG_VFIO_DEVICE_CDEV lists it in sysfs only
	fakeDevice(t, sys, dev, "0000:00:06.0", "vfio-pci", "", false)
	for _, c := range []struct {
		mode  IOMMUMode
		addrs []string
		want  IOMMUMode
	}{
		{IOMMUAuto, []string{"0000:00:03.0", "0000:00:04.0"}, IOMMUIOMMUFD},
		{IOMMUAuto, []string{"0000:00:03.0", "0000:00:05.0"}, IOMMULegacy},
		{IOMMUAuto, []string{"0000:00:06.0"}, IOMMULegacy},
		{IOMMULegacy, []string{"0000:00:03.0"}, IOMMULegacy},
		{IOMMUIOMMUFD, []string{"0000:00:06.0"}, IOMMUIOMMUFD},
	} {
		if got := ChooseIOMMU(c.mode, c.addrs); got != c.want {
			t.Errorf("ChooseIOMMU(%v, %v) = %v, want %v", c.mode, c.addrs, got, c.want)
		}
	}
	if err := os.Remove(IOMMUDev); err != nil {
		t.Fatal(err)
	}
	if got := ChooseIOMMU(IOMMUAuto, []string{"0000:00:03.0"}); got != IOMMULegacy {
		t.Errorf("auto without /dev/iommu = %v, want legacy", got)
	}
}

func TestIOMMUFDErrors(t *testing.T) {
	sys, dev := fakeHost(t, false)
	_, err := NewIOMMUFD()
	if err == nil || !strings.Contains(err.Error(), "is missing") || !strings.Contains(err.Error(), "iommu=legacy") {
		t.Errorf("NewIOMMUFD without /dev/iommu: %v, want it missing and iommu=legacy named", err)
	}
	if _, err := OpenIOMMU(IOMMUIOMMUFD, nil); err == nil {
		t.Error("OpenIOMMU(iommufd) without /dev/iommu: no error")
	}
	// OpenDevice's checks before any ioctl, on an IOMMUFD that has no fd.
	f := &IOMMUFD{fd: -1}
	fakeDevice(t, sys, dev, "0000:00:03.0", "nvme", "vfio0", true)
	fakeDevice(t, sys, dev, "0000:00:04.0", "vfio-pci", "", false)
	fakeDevice(t, sys, dev, "0000:00:05.0", "vfio-pci", "vfio2", false)
	for addr, want := range map[string]string{
		"0000:00:03.0": "bound to driver nvme, not vfio-pci",
		"0000:00:04.0": "has no VFIO cdev",
		"0000:00:05.0": "without CONFIG_VFIO_DEVICE_CDEV",
		"0000:00:07.0": "no such PCI device",
	} {
		if _, err := f.OpenDevice(addr); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("OpenDevice(%s) = %v, want an error containing %q", addr, err, want)
		}
	}
}

func TestParseIOMMUMode(t *testing.T) {
	for _, m := range []IOMMUMode{IOMMUAuto, IOMMUIOMMUFD, IOMMULegacy} {
		got, err := ParseIOMMUMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseIOMMUMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseIOMMUMode("type1"); err == nil {
		t.Error("ParseIOMMUMode(type1): no error")
	}
}
