// Package vfio passes host PCI devices through to a guest with Linux VFIO:
// the container and group API with the type1 IOMMU, or iommufd with the
// devices' VFIO cdevs (iommufd.go). A Container or an IOMMUFD holds the
// guest's RAM mapped for the devices' DMA; a Device is one vfio-pci
// function opened through its IOMMU group or its cdev; PCI (pci.go) turns a Device
// into a function on govmm's PCI bus, with the parts of configuration
// space a VMM must own (BARs, the command register, MSI) virtualized and
// the device's interrupts delivered through the accelerator's irqfds.
//
// Every error says what to do about it: a missing /dev/vfio names the
// modules, a device bound to another driver names the sysfs writes that
// rebind it, a group that is not viable lists its members and drivers.
package vfio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"govmm/vfio/abi"
)

// SysfsDevices is where the kernel lists PCI devices.
const SysfsDevices = "/sys/bus/pci/devices"

// DevDir is where VFIO's character devices live.
var DevDir = "/dev/vfio"

var pciAddr = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// ParseAddress accepts a sysfs device path (/sys/bus/pci/devices/DDDD:BB:DD.F)
// or the bare address, and returns the address; or a mediated device's
// path (/sys/bus/mdev/devices/UUID, mdev.go), and returns its UUID.
func ParseAddress(s string) (string, error) {
	if filepath.Dir(filepath.Clean(s)) == SysfsMdevDevices {
		return parseMdev(s)
	}
	a := strings.ToLower(filepath.Base(filepath.Clean(s)))
	if strings.Contains(s, "/") && filepath.Dir(filepath.Clean(s)) != SysfsDevices {
		return "", fmt.Errorf("vfio device %q: give /sys/bus/pci/devices/DDDD:BB:DD.F", s)
	}
	if !pciAddr.MatchString(a) {
		return "", fmt.Errorf("vfio device %q: %q is not a PCI address DDDD:BB:DD.F", s, a)
	}
	return a, nil
}

// bindHint says how to hand a device to vfio-pci.
func bindHint(addr string) string {
	return fmt.Sprintf("bind it to vfio-pci: modprobe vfio-pci; echo vfio-pci > %[1]s/%[2]s/driver_override; "+
		"echo %[2]s > %[1]s/%[2]s/driver/unbind (if bound); echo %[2]s > /sys/bus/pci/drivers_probe", SysfsDevices, addr)
}

// CheckDevice looks at a device in sysfs before anything is opened: it
// exists, is bound to vfio-pci, and has an IOMMU group. It returns the
// group number.
func CheckDevice(addr string) (int, error) {
	dir := filepath.Join(sysfsDevices, addr)
	if _, err := os.Stat(dir); err != nil {
		return 0, fmt.Errorf("vfio device %s: no such PCI device (%s is missing)", addr, dir)
	}
	drv, err := os.Readlink(filepath.Join(dir, "driver"))
	switch {
	case err != nil:
		return 0, fmt.Errorf("vfio device %s is bound to no driver; %s", addr, bindHint(addr))
	case filepath.Base(drv) != "vfio-pci":
		return 0, fmt.Errorf("vfio device %s is bound to driver %s, not vfio-pci; %s", addr, filepath.Base(drv), bindHint(addr))
	}
	return iommuGroup(addr, dir, "the host IOMMU is off or absent (boot with intel_iommu=on or amd_iommu=on, and check dmesg for DMAR/AMD-Vi)")
}

// iommuGroup reads the IOMMU group number of device name from its sysfs
// directory's iommu_group link; why says what a missing link means.
func iommuGroup(name, dir, why string) (int, error) {
	g, err := os.Readlink(filepath.Join(dir, "iommu_group"))
	if err != nil {
		return 0, fmt.Errorf("vfio device %s has no IOMMU group: %s", name, why)
	}
	n, err := strconv.Atoi(filepath.Base(g))
	if err != nil {
		return 0, fmt.Errorf("vfio device %s: IOMMU group link %q: %w", name, g, err)
	}
	return n, nil
}

// groupMembers lists the devices of IOMMU group n with their drivers, for
// the "not viable" error.
func groupMembers(n int) string {
	dir := fmt.Sprintf("/sys/kernel/iommu_groups/%d/devices", n)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "(" + dir + " unreadable)"
	}
	var s []string
	for _, e := range ents {
		drv := "no driver"
		if l, err := os.Readlink(filepath.Join(dir, e.Name(), "driver")); err == nil {
			drv = "driver " + filepath.Base(l)
		}
		s = append(s, e.Name()+" ("+drv+")")
	}
	return strings.Join(s, ", ")
}

// Container is one VFIO container (/dev/vfio/vfio) with the type1 IOMMU:
// the groups of one VM's devices share it and its DMA mappings.
type Container struct {
	mu     sync.Mutex
	fd     int
	groups map[int]int // group number -> fd
	iommu  bool        // SetIOMMU done (needs a group first)
	dma    []dmaRange
}

type dmaRange struct{ iova, size uint64 }

// NewContainer opens /dev/vfio/vfio and checks the API and the type1
// IOMMU.
func NewContainer() (*Container, error) {
	path := filepath.Join(DevDir, "vfio")
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("vfio: %s is missing: load the VFIO modules (modprobe vfio-pci, which brings vfio and vfio_iommu_type1)", path)
		}
		return nil, fmt.Errorf("vfio: open %s: %w", path, err)
	}
	c := &Container{fd: fd, groups: map[int]int{}}
	if v, err := abi.ContainerAPIVersion(fd); err != nil || v != abi.APIVersion {
		c.Close()
		return nil, fmt.Errorf("vfio: %s speaks API version %d (%v), want %d", path, v, err, abi.APIVersion)
	}
	if n, err := abi.ContainerCheckExtension(fd, abi.Type1IOMMU); err != nil || n <= 0 {
		c.Close()
		return nil, fmt.Errorf("vfio: %s has no type1 IOMMU (load vfio_iommu_type1)", path)
	}
	return c, nil
}

// group opens IOMMU group n (once) and attaches it to the container.
func (c *Container) group(n int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fd, ok := c.groups[n]; ok {
		return fd, nil
	}
	path := filepath.Join(DevDir, strconv.Itoa(n))
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return -1, fmt.Errorf("vfio: %s is missing: no device of IOMMU group %d is bound to vfio-pci", path, n)
		case errors.Is(err, unix.EBUSY):
			return -1, fmt.Errorf("vfio: %s is busy: another process (a VMM?) has IOMMU group %d open", path, n)
		}
		return -1, fmt.Errorf("vfio: open %s: %w", path, err)
	}
	st, err := abi.GetGroupStatus(fd)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("vfio: group %d status: %w", n, err)
	}
	if st.Flags&abi.GroupFlagsViable == 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("vfio: IOMMU group %d is not viable: every device in it must be bound to vfio-pci or to no driver; it holds %s", n, groupMembers(n))
	}
	if err := abi.SetGroupContainer(fd, c.fd); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("vfio: attach group %d to the container: %w", n, err)
	}
	if !c.iommu {
		typ := uintptr(abi.Type1v2IOMMU)
		if k, err := abi.ContainerCheckExtension(c.fd, abi.Type1v2IOMMU); err != nil || k <= 0 {
			typ = abi.Type1IOMMU
		}
		if err := abi.ContainerSetIOMMU(c.fd, typ); err != nil {
			abi.UnsetGroupContainer(fd)
			unix.Close(fd)
			return -1, fmt.Errorf("vfio: set the type%d IOMMU: %w", map[uintptr]int{1: 1, 3: 2}[typ], err)
		}
		c.iommu = true
	}
	c.groups[n] = fd
	return fd, nil
}

// MapDMA maps host memory mem at I/O virtual address iova (the guest
// physical address) for every device in the container. The kernel pins
// the pages: RLIMIT_MEMLOCK must allow it for an unprivileged user.
func (c *Container) MapDMA(iova uint64, mem []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.iommu {
		return errors.New("vfio: map DMA before any group was attached")
	}
	if err := abi.MapDMA(c.fd, iova, mem); err != nil {
		hint := ""
		if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EPERM) {
			hint = " (the pages are pinned: raise RLIMIT_MEMLOCK, ulimit -l, to the guest's RAM size)"
		}
		return fmt.Errorf("vfio: map guest RAM %#x-%#x for DMA: %w%s", iova, iova+uint64(len(mem)), err, hint)
	}
	c.dma = append(c.dma, dmaRange{iova, uint64(len(mem))})
	return nil
}

// UnmapAll removes every DMA mapping.
func (c *Container) UnmapAll() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, r := range c.dma {
		if _, err := abi.UnmapDMA(c.fd, r.iova, r.size); err != nil {
			errs = append(errs, fmt.Errorf("vfio: unmap DMA %#x-%#x: %w", r.iova, r.iova+r.size, err))
		}
	}
	c.dma = nil
	return errors.Join(errs...)
}

// Mapped returns the DMA mappings (IOVA and size), for tests.
func (c *Container) Mapped() [][2]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][2]uint64
	for _, r := range c.dma {
		out = append(out, [2]uint64{r.iova, r.size})
	}
	return out
}

// Close unmaps the DMA ranges and closes the groups and the container.
// Devices must be closed first.
func (c *Container) Close() error {
	err := c.UnmapAll()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, fd := range c.groups {
		abi.UnsetGroupContainer(fd)
		unix.Close(fd)
	}
	c.groups = nil
	unix.Close(c.fd)
	return err
}

// Device is one vfio-pci device, or a mediated device that VFIO presents
// as one (VFIO_DEVICE_FLAGS_PCI).
type Device struct {
	Addr    string // PCI address, or the mediated device's UUID
	fd      int
	info    abi.DeviceInfo
	regions []abi.Region
	config  abi.Region

	// VFIO migration (migration.go): the flags, read once, and the
	// device state govmm last set (RUNNING, as a device is opened).
	migOnce  sync.Once
	migFlags uint64
	migMu    sync.Mutex
	migCur   uint32
	// preFile is the data fd of PRE_COPY while a live migration reads
	// the device as it runs; preRead counts what was read from it.
	preFile *os.File
	preRead uint64
	// DMA logging during a live migration: the ranges and page size,
	// whether the device's log was started, and whether every page
	// counts as written instead (no usable log).
	dmaRanges  []DirtyRange
	dmaPage    uint64
	dmaStarted bool
	dmaAll     bool
}

// OpenDevice checks the device in sysfs, attaches its group to c and
// opens it.
func (c *Container) OpenDevice(addr string) (*Device, error) {
	g, err := checkDevice(addr)
	if err != nil {
		return nil, err
	}
	gfd, err := c.group(g)
	if err != nil {
		return nil, fmt.Errorf("vfio device %s: %w", addr, err)
	}
	fd, err := abi.GetDeviceFD(gfd, addr)
	if err != nil {
		return nil, fmt.Errorf("vfio device %s: get its fd from group %d: %w", addr, g, err)
	}
	return newDevice(addr, fd)
}

// newDevice reads the information and regions of a device fd (from a
// group or a cdev), closing fd on failure.
func newDevice(addr string, fd int) (*Device, error) {
	d := &Device{Addr: addr, fd: fd, migCur: abi.DeviceStateRunning}
	var err error
	if d.info, err = abi.GetDeviceInfo(fd); err != nil {
		d.Close()
		return nil, fmt.Errorf("vfio device %s: device info: %w", addr, err)
	}
	if d.info.Flags&abi.DeviceFlagsPCI == 0 || d.info.NumRegions <= abi.PCIConfigRegion {
		d.Close()
		return nil, fmt.Errorf("vfio device %s is not a vfio-pci device (flags %#x, %d regions)", addr, d.info.Flags, d.info.NumRegions)
	}
	for i := uint32(0); i <= abi.PCIConfigRegion; i++ {
		r, err := abi.GetRegionInfo(fd, i)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("vfio device %s: region %d info: %w", addr, i, err)
		}
		d.regions = append(d.regions, r)
	}
	d.config = d.regions[abi.PCIConfigRegion]
	return d, nil
}

// Name is the device's PCI address.
func (d *Device) Name() string { return d.Addr }

// CanReset reports whether the device has a reset method.
func (d *Device) CanReset() bool { return d.info.Flags&abi.DeviceFlagsReset != 0 }

// Reset resets the device (VFIO_DEVICE_RESET): a function-level reset or
// whichever method the kernel has for it.
func (d *Device) Reset() error {
	if !d.CanReset() {
		return fmt.Errorf("vfio device %s: the kernel has no reset method for it", d.Addr)
	}
	if err := abi.ResetDevice(d.fd); err != nil {
		return fmt.Errorf("vfio device %s: reset: %w", d.Addr, err)
	}
	return nil
}

// Region returns region i's information (BARs 0-5, ROM 6, config 7).
func (d *Device) Region(i int) abi.Region { return d.regions[i] }

// ReadRegion reads region i at off.
func (d *Device) ReadRegion(i int, off uint64, b []byte) error {
	r := d.regions[i]
	if off > r.Size || uint64(len(b)) > r.Size-off {
		return fmt.Errorf("vfio device %s: read of %d bytes at %#x past region %d (%#x bytes)", d.Addr, len(b), off, i, r.Size)
	}
	n, err := unix.Pread(d.fd, b, int64(r.Offset+off))
	if err == nil && n != len(b) {
		err = fmt.Errorf("short read (%d of %d bytes)", n, len(b))
	}
	if err != nil {
		return fmt.Errorf("vfio device %s: read region %d at %#x: %w", d.Addr, i, off, err)
	}
	return nil
}

// WriteRegion writes region i at off.
func (d *Device) WriteRegion(i int, off uint64, b []byte) error {
	r := d.regions[i]
	if off > r.Size || uint64(len(b)) > r.Size-off {
		return fmt.Errorf("vfio device %s: write of %d bytes at %#x past region %d (%#x bytes)", d.Addr, len(b), off, i, r.Size)
	}
	n, err := unix.Pwrite(d.fd, b, int64(r.Offset+off))
	if err == nil && n != len(b) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(b))
	}
	if err != nil {
		return fmt.Errorf("vfio device %s: write region %d at %#x: %w", d.Addr, i, off, err)
	}
	return nil
}

// Mmap maps size bytes of region i from off (page aligned) shared.
func (d *Device) Mmap(i int, off, size uint64) ([]byte, error) {
	r := d.regions[i]
	if r.Flags&abi.RegionFlagMmap == 0 {
		return nil, fmt.Errorf("vfio device %s: region %d cannot be mmap'ed", d.Addr, i)
	}
	b, err := unix.Mmap(d.fd, int64(r.Offset+off), int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("vfio device %s: mmap region %d (%#x bytes at %#x): %w", d.Addr, i, size, off, err)
	}
	return b, nil
}

// IRQInfo returns interrupt index i's information.
func (d *Device) IRQInfo(i uint32) (abi.IRQInfo, error) {
	info, err := abi.GetIRQInfo(d.fd, i)
	if err != nil {
		return info, fmt.Errorf("vfio device %s: IRQ index %d info: %w", d.Addr, i, err)
	}
	return info, nil
}

// SetIRQEventFDs has vectors start.. of interrupt index signal fds.
func (d *Device) SetIRQEventFDs(index uint32, fds []int32) error {
	if err := abi.SetIRQEventFDs(d.fd, index, 0, fds); err != nil {
		return fmt.Errorf("vfio device %s: enable %d vectors of IRQ index %d: %w", d.Addr, len(fds), index, err)
	}
	return nil
}

// SetIRQUnmaskEventFD has a write to fd unmask vector 0 of interrupt
// index (INTx's resample path).
func (d *Device) SetIRQUnmaskEventFD(index uint32, fd int32) error {
	if err := abi.SetIRQUnmaskEventFD(d.fd, index, 0, fd); err != nil {
		return fmt.Errorf("vfio device %s: unmask eventfd of IRQ index %d: %w", d.Addr, index, err)
	}
	return nil
}

// DisableIRQs turns interrupt index off.
func (d *Device) DisableIRQs(index uint32) error {
	if err := abi.DisableIRQs(d.fd, index); err != nil {
		return fmt.Errorf("vfio device %s: disable IRQ index %d: %w", d.Addr, index, err)
	}
	return nil
}

// Close closes the device.
func (d *Device) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}
