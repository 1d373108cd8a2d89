package vfio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"govmm/vfio/abi"
)

// IOMMU is where a VM's devices are opened and its RAM is mapped for their
// DMA: a VFIO container with the type1 IOMMU (Container), or an iommufd
// with the devices opened through their VFIO cdevs (IOMMUFD). The device
// fds both give are the same API (regions, interrupts, reset).
type IOMMU interface {
	// OpenDevice checks the device in sysfs and opens it.
	OpenDevice(addr string) (*Device, error)
	// MapDMA maps mem at I/O virtual address iova for every device.
	MapDMA(iova uint64, mem []byte) error
	// Mapped returns the DMA mappings (IOVA and size).
	Mapped() [][2]uint64
	// Close unmaps guest RAM and closes what OpenIOMMU opened. The
	// devices must be closed first.
	Close() error
	// Kind is "iommufd" or "legacy", for logs.
	Kind() string
}

// IOMMUMode chooses the IOMMU API (--device vfio=...,iommu=).
type IOMMUMode int

const (
	// IOMMUAuto is iommufd when /dev/iommu exists and every device has
	// a VFIO cdev, else the legacy container.
	IOMMUAuto IOMMUMode = iota
	// IOMMUIOMMUFD is /dev/iommu and /dev/vfio/devices/vfioN (Linux 6.6
	// on, built with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV).
	IOMMUIOMMUFD
	// IOMMULegacy is the container and group API (/dev/vfio/vfio and
	// /dev/vfio/N) with the type1 IOMMU.
	IOMMULegacy
)

var iommuModes = []string{"auto", "iommufd", "legacy"}

func (m IOMMUMode) String() string {
	if m < 0 || int(m) >= len(iommuModes) {
		return fmt.Sprintf("IOMMUMode(%d)", int(m))
	}
	return iommuModes[m]
}

// ParseIOMMUMode parses auto, iommufd or legacy.
func ParseIOMMUMode(s string) (IOMMUMode, error) {
	for i, n := range iommuModes {
		if s == n {
			return IOMMUMode(i), nil
		}
	}
	return 0, fmt.Errorf("vfio: iommu=%q: want auto, iommufd or legacy", s)
}

// IOMMUDev is iommufd's character device.
var IOMMUDev = "/dev/iommu"

// sysfsDevices is SysfsDevices, where CheckDevice and the cdev lookup
// look (a variable for tests).
var sysfsDevices = SysfsDevices

// cdevName returns the name (vfioN) of the VFIO cdev of the device at
// addr, from its sysfs directory's vfio-dev/, or "" when it has none.
// The kernel lists vfio-dev/vfioN for every vfio-pci device (without
// CONFIG_VFIO_DEVICE_CDEV too, then with no /dev node behind it).
func cdevName(addr string) string {
	m, _ := filepath.Glob(filepath.Join(sysfsDevices, addr, "vfio-dev", "vfio*"))
	if len(m) != 1 {
		return ""
	}
	return filepath.Base(m[0])
}

// cdevPath is the device node of the VFIO cdev of the device at addr, or
// "" when the device or the kernel has none.
func cdevPath(addr string) string {
	n := cdevName(addr)
	if n == "" {
		return ""
	}
	p := filepath.Join(DevDir, "devices", n)
	if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return ""
	}
	return p
}

// ChooseIOMMU resolves mode for devices addrs: auto picks iommufd when
// /dev/iommu exists and every device has its VFIO cdev node, else the
// legacy container. It checks nothing else.
func ChooseIOMMU(mode IOMMUMode, addrs []string) IOMMUMode {
	if mode != IOMMUAuto {
		return mode
	}
	if _, err := os.Stat(IOMMUDev); err != nil {
		return IOMMULegacy
	}
	for _, a := range addrs {
		if cdevPath(a) == "" {
			return IOMMULegacy
		}
	}
	return IOMMUIOMMUFD
}

// OpenIOMMU opens the IOMMU API mode chooses (ChooseIOMMU) for devices
// addrs.
func OpenIOMMU(mode IOMMUMode, addrs []string) (IOMMU, error) {
	switch ChooseIOMMU(mode, addrs) {
	case IOMMUIOMMUFD:
		return NewIOMMUFD()
	case IOMMULegacy:
		return NewContainer()
	}
	return nil, fmt.Errorf("vfio: unknown IOMMU mode %v", mode)
}

// Kind is "legacy".
func (c *Container) Kind() string { return "legacy" }

// IOMMUFD is one iommufd (/dev/iommu) with one I/O address space that
// holds guest RAM at IOVA = guest physical address; the VM's devices,
// opened through their VFIO cdevs, are bound to it and attached to that
// address space.
type IOMMUFD struct {
	mu   sync.Mutex
	fd   int
	ioas uint32
	dma  []dmaRange
}

// NewIOMMUFD opens /dev/iommu and makes the address space.
func NewIOMMUFD() (*IOMMUFD, error) {
	fd, err := unix.Open(IOMMUDev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("vfio: %s is missing: the kernel has no iommufd (it needs CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV: modprobe iommufd before vfio), or use iommu=legacy", IOMMUDev)
		}
		return nil, fmt.Errorf("vfio: open %s: %w", IOMMUDev, err)
	}
	ioas, err := abi.IOASAlloc(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vfio: allocate an I/O address space in %s: %w", IOMMUDev, err)
	}
	return &IOMMUFD{fd: fd, ioas: ioas}, nil
}

// Kind is "iommufd".
func (f *IOMMUFD) Kind() string { return "iommufd" }

// OpenDevice checks the device in sysfs, opens its VFIO cdev, binds it to
// the iommufd and attaches it to the address space.
func (f *IOMMUFD) OpenDevice(addr string) (*Device, error) {
	g, err := CheckDevice(addr)
	if err != nil {
		return nil, err
	}
	name := cdevName(addr)
	if name == "" {
		return nil, fmt.Errorf("vfio device %s has no VFIO cdev (%s/%s/vfio-dev/ lists none): use iommu=legacy", addr, sysfsDevices, addr)
	}
	path := filepath.Join(DevDir, "devices", name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENXIO), errors.Is(err, unix.EOPNOTSUPP):
			return nil, fmt.Errorf("vfio device %s: %s is missing: the kernel was built without CONFIG_VFIO_DEVICE_CDEV; use iommu=legacy", addr, path)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("vfio device %s: %s is busy: another process (a VMM?) has the device open", addr, path)
		}
		return nil, fmt.Errorf("vfio device %s: open %s: %w", addr, path, err)
	}
	if _, err := abi.BindIOMMUFD(fd, f.fd); err != nil {
		unix.Close(fd)
		hint := ""
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
			hint = fmt.Sprintf(" (every device of IOMMU group %d must be bound to vfio-pci or to no driver, and none opened through the group API; it holds %s)", g, groupMembers(g))
		}
		return nil, fmt.Errorf("vfio device %s: bind %s to %s: %w%s", addr, path, IOMMUDev, err, hint)
	}
	if _, err := abi.AttachIOMMUFDPT(fd, f.ioas); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vfio device %s: attach it to I/O address space %d: %w", addr, f.ioas, err)
	}
	return newDevice(addr, fd)
}

// MapDMA maps mem at iova in the address space, readable and writable by
// the devices. The kernel pins the pages.
func (f *IOMMUFD) MapDMA(iova uint64, mem []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := abi.IOASMap(f.fd, f.ioas, iova, mem); err != nil {
		hint := ""
		if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EPERM) {
			hint = " (the pages are pinned: raise RLIMIT_MEMLOCK, ulimit -l, to the guest's RAM size)"
		}
		return fmt.Errorf("vfio: map guest RAM %#x-%#x for DMA in %s: %w%s", iova, iova+uint64(len(mem)), IOMMUDev, err, hint)
	}
	f.dma = append(f.dma, dmaRange{iova, uint64(len(mem))})
	return nil
}

// UnmapAll removes every mapping of the address space.
func (f *IOMMUFD) UnmapAll() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, r := range f.dma {
		if _, err := abi.IOASUnmap(f.fd, f.ioas, r.iova, r.size); err != nil {
			errs = append(errs, fmt.Errorf("vfio: unmap DMA %#x-%#x in %s: %w", r.iova, r.iova+r.size, IOMMUDev, err))
		}
	}
	f.dma = nil
	return errors.Join(errs...)
}

// Mapped returns the DMA mappings (IOVA and size).
func (f *IOMMUFD) Mapped() [][2]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out [][2]uint64
	for _, r := range f.dma {
		out = append(out, [2]uint64{r.iova, r.size})
	}
	return out
}

// Close unmaps guest RAM and closes the iommufd, which frees the address
// space. The devices must be closed first: closing a device's cdev
// detaches and unbinds it.
func (f *IOMMUFD) Close() error {
	err := f.UnmapAll()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
	}
	return err
}
