//go:build !arm64

package main

import (
	"strings"
	"testing"

	"govmm/vfio"
)

func TestDeviceFlag(t *testing.T) {
	var d deviceFlags
	for _, v := range []string{"vfio=/sys/bus/pci/devices/0000:00:03.0", "vfio=0000:00:04.0,order=irqs-first"} {
		if err := d.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	c := d.config()
	if len(c.Devices) != 2 || c.Devices[0] != "0000:00:03.0" || c.Devices[1] != "0000:00:04.0" || c.Order != vfio.OrderIRQsFirst {
		t.Fatalf("config %+v", c)
	}
	for v, want := range map[string]string{
		"vfio=0000:00:03.0":                   "given twice",
		"vfio=0000:00:05.0,order=route-first": "the VM has one order",
		"vfio=0000:00:05.0,order=sideways":    "want route-first",
		"vfio=0000:00:05.0,rom=off":           "unknown option",
		"nvme=0000:00:05.0":                   "want vfio=",
		"vfio=/dev/sda":                       "give /sys/bus/pci/devices",
	} {
		if err := d.Set(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Set(%q) = %v, want an error containing %q", v, err, want)
		}
	}
}

func TestDeviceFlagIOMMU(t *testing.T) {
	var d deviceFlags
	if d.config().IOMMU != vfio.IOMMUAuto {
		t.Fatalf("default IOMMU %v, want auto", d.config().IOMMU)
	}
	for _, v := range []string{"vfio=0000:00:03.0,iommu=iommufd", "vfio=0000:00:04.0,order=irqs-first,iommu=iommufd", "vfio=0000:00:06.0"} {
		if err := d.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if c := d.config(); c.IOMMU != vfio.IOMMUIOMMUFD || len(c.Devices) != 3 {
		t.Fatalf("config %+v, want iommufd and three devices", c)
	}
	for v, want := range map[string]string{
		"vfio=0000:00:05.0,iommu=legacy": "the VM has one IOMMU API",
		"vfio=0000:00:05.0,iommu=type1":  "want auto, iommufd or legacy",
	} {
		if err := d.Set(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Set(%q) = %v, want an error containing %q", v, err, want)
		}
	}
	var l deviceFlags
	if err := l.Set("vfio=0000:00:03.0,iommu=legacy"); err != nil || l.config().IOMMU != vfio.IOMMULegacy {
		t.Fatalf("iommu=legacy: %v, %v", err, l.config().IOMMU)
	}
}
