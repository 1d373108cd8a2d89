package vfio

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"govmm/vfio/abi"
)

// SysfsMdevDevices is where the kernel lists mediated devices (mdev): a
// virtual device a parent driver (a vGPU's, or Linux's sample mtty)
// creates and hands to userspace through VFIO, each named by a UUID and
// in an IOMMU group of its own.
const SysfsMdevDevices = "/sys/bus/mdev/devices"

var mdevUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// IsMdev reports whether name (as ParseAddress returns it) is a mediated
// device's UUID rather than a PCI address.
func IsMdev(name string) bool { return mdevUUID.MatchString(name) }

// parseMdev accepts /sys/bus/mdev/devices/UUID and returns the UUID.
func parseMdev(s string) (string, error) {
	u := strings.ToLower(filepath.Base(filepath.Clean(s)))
	if !mdevUUID.MatchString(u) {
		return "", fmt.Errorf("vfio device %q: %q is not a mediated device's UUID", s, u)
	}
	return u, nil
}

// CheckMdev looks at a mediated device in sysfs before anything is
// opened: it exists, its parent's driver has it, and it has an IOMMU
// group. It returns the group number.
func CheckMdev(uuid string) (int, error) {
	dir := filepath.Join(SysfsMdevDevices, uuid)
	if _, err := os.Stat(dir); err != nil {
		return 0, fmt.Errorf("vfio device %s: no such mediated device (%s is missing; create one with echo UUID > /sys/class/mdev_bus/PARENT/mdev_supported_types/TYPE/create)", uuid, dir)
	}
	if _, err := os.Readlink(filepath.Join(dir, "driver")); err != nil {
		return 0, fmt.Errorf("vfio device %s: the mediated device is bound to no driver (is its parent's module loaded?)", uuid)
	}
	return iommuGroup(uuid, dir, "a mediated device gets one when vfio_iommu_type1 is loaded")
}

// checkDevice is CheckDevice or CheckMdev, by the name's kind.
func checkDevice(name string) (int, error) {
	if IsMdev(name) {
		return CheckMdev(name)
	}
	return CheckDevice(name)
}

// UnmaskIRQ unmasks vector 0 of interrupt index (VFIO_DEVICE_SET_IRQS
// with DATA_NONE|ACTION_UNMASK), for a device whose driver takes no
// unmask eventfd (mdev drivers such as mtty): govmm then does from
// userspace what the kernel's resample path would.
func (d *Device) UnmaskIRQ(index uint32) error {
	if err := abi.SetIRQAction(d.fd, abi.IRQSetActionUnmask, index, 0, 1); err != nil {
		return fmt.Errorf("vfio device %s: unmask IRQ index %d: %w", d.Addr, index, err)
	}
	return nil
}

// irqUnmasker is a device that can unmask an interrupt line by ioctl
// (*Device).
type irqUnmasker interface {
	UnmaskIRQ(index uint32) error
}

// serveINTxUnmask is INTx's resample path for a driver that refuses an
// unmask eventfd (ENOTTY; mtty's does): the irqfd still signals unmask at
// the guest's EOI, and govmm unmasks the line with VFIO_DEVICE_SET_IRQS
// (ACTION_UNMASK) from a goroutine, as QEMU does without a resampler.
// Called with p.mu held; the goroutine ends when the eventfd is closed.
func (p *PCI) serveINTxUnmask(u irqUnmasker) {
	x := p.intx
	if x.served {
		return
	}
	x.served = true
	p.log.Info("vfio: the driver takes no INTx unmask eventfd; govmm unmasks the line itself at each EOI")
	x.unmask.Serve(func(uint64) {
		p.mu.Lock()
		on := x.irqfd != nil && !p.closed
		p.mu.Unlock()
		if !on {
			return
		}
		if err := u.UnmaskIRQ(abi.PCIINTxIRQ); err != nil {
			p.log.Warn("vfio: unmask INTx", "err", err)
		}
	})
}
