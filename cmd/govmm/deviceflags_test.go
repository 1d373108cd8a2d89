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
