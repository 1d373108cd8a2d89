// Package abi is the Linux VFIO user ABI (include/uapi/linux/vfio.h) that
// govmm's VFIO passthrough speaks: the container and group API with the
// type1 IOMMU, device information, regions, interrupts and reset. It is
// the only place in the VFIO code that issues raw ioctls or uses unsafe;
// abi_test.go checks every struct's size and field offsets against the
// kernel header's.
package abi

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VFIO ioctls are _IO(';', 100+n): no direction or size in the number,
// the structs carry their own argsz.
const (
	vfioType = ';'
	vfioBase = 100
)

func io(n uintptr) uintptr { return vfioType<<8 | (vfioBase + n) }

// Request numbers.
var (
	GetAPIVersion       = io(0)
	CheckExtension      = io(1)
	SetIOMMU            = io(2)
	GroupGetStatus      = io(3)
	GroupSetContainer   = io(4)
	GroupUnsetContainer = io(5)
	GroupGetDeviceFD    = io(6)
	DeviceGetInfo       = io(7)
	DeviceGetRegion     = io(8)
	DeviceGetIRQInfo    = io(9)
	DeviceSetIRQs       = io(10)
	DeviceReset         = io(11)
	IOMMUGetInfo        = io(12)
	IOMMUMapDMA         = io(13)
	IOMMUUnmapDMA       = io(14)
)

// APIVersion is the only VFIO API version there is.
const APIVersion = 0

// IOMMU types (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
const (
	Type1IOMMU   = 1
	Type1v2IOMMU = 3
)

// Group status flags.
const (
	GroupFlagsViable       = 1 << 0
	GroupFlagsContainerSet = 1 << 1
)

// Device info flags.
const (
	DeviceFlagsReset = 1 << 0
	DeviceFlagsPCI   = 1 << 1
)

// Region info flags and capability IDs.
const (
	RegionFlagRead  = 1 << 0
	RegionFlagWrite = 1 << 1
	RegionFlagMmap  = 1 << 2
	RegionFlagCaps  = 1 << 3

	RegionCapSparseMmap   = 1
	RegionCapMSIXMappable = 3
)

// IRQ info flags.
const (
	IRQInfoEventFD    = 1 << 0
	IRQInfoMaskable   = 1 << 1
	IRQInfoAutomasked = 1 << 2
	IRQInfoNoResize   = 1 << 3
)

// SetIRQs flags.
const (
	IRQSetDataNone      = 1 << 0
	IRQSetDataBool      = 1 << 1
	IRQSetDataEventFD   = 1 << 2
	IRQSetActionMask    = 1 << 3
	IRQSetActionUnmask  = 1 << 4
	IRQSetActionTrigger = 1 << 5
)

// DMA map flags.
const (
	DMAMapRead  = 1 << 0
	DMAMapWrite = 1 << 1
)

// vfio-pci region and IRQ indexes.
const (
	PCIBAR0Region   = 0
	PCIBAR5Region   = 5
	PCIROMRegion    = 6
	PCIConfigRegion = 7
	PCIVGARegion    = 8

	PCIINTxIRQ = 0
	PCIMSIIRQ  = 1
	PCIMSIXIRQ = 2
	PCIErrIRQ  = 3
	PCIReqIRQ  = 4
)

// GroupStatus is struct vfio_group_status.
type GroupStatus struct {
	Argsz uint32
	Flags uint32
}

// DeviceInfo is struct vfio_device_info as newer Linux headers declare
// it (6.12's), with the trailing pad that makes its size a multiple of 8 (24
// bytes). Older ones (6.1's) end it at cap_offset (20 bytes); the fields sit at
// the same offsets in both, and every kernel takes either argsz.
type DeviceInfo struct {
	Argsz      uint32
	Flags      uint32
	NumRegions uint32
	NumIRQs    uint32
	CapOffset  uint32
	Pad        uint32
}

// RegionInfo is struct vfio_region_info.
type RegionInfo struct {
	Argsz     uint32
	Flags     uint32
	Index     uint32
	CapOffset uint32
	Size      uint64
	Offset    uint64
}

// IRQInfo is struct vfio_irq_info.
type IRQInfo struct {
	Argsz uint32
	Flags uint32
	Index uint32
	Count uint32
}

// IRQSet is struct vfio_irq_set without its flexible data array.
type IRQSet struct {
	Argsz uint32
	Flags uint32
	Index uint32
	Start uint32
	Count uint32
}

// IOMMUType1Info is struct vfio_iommu_type1_info.
type IOMMUType1Info struct {
	Argsz       uint32
	Flags       uint32
	IOVAPgsizes uint64
	CapOffset   uint32
	Pad         uint32
}

// DMAMap is struct vfio_iommu_type1_dma_map.
type DMAMap struct {
	Argsz uint32
	Flags uint32
	Vaddr uint64
	IOVA  uint64
	Size  uint64
}

// DMAUnmap is struct vfio_iommu_type1_dma_unmap.
type DMAUnmap struct {
	Argsz uint32
	Flags uint32
	IOVA  uint64
	Size  uint64
}

// CapHeader is struct vfio_info_cap_header.
type CapHeader struct {
	ID      uint16
	Version uint16
	Next    uint32
}

// SparseMmapArea is struct vfio_region_sparse_mmap_area.
type SparseMmapArea struct {
	Offset uint64
	Size   uint64
}

// sparseMmapHeader is struct vfio_region_info_cap_sparse_mmap without its
// areas.
type sparseMmapHeader struct {
	Header   CapHeader
	NrAreas  uint32
	Reserved uint32
}

func ioctl(fd int, req, arg uintptr) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// ContainerAPIVersion is VFIO_GET_API_VERSION.
func ContainerAPIVersion(container int) (int, error) { return ioctl(container, GetAPIVersion, 0) }

// ContainerCheckExtension is VFIO_CHECK_EXTENSION: > 0 when supported.
func ContainerCheckExtension(container int, ext uintptr) (int, error) {
	return ioctl(container, CheckExtension, ext)
}

// ContainerSetIOMMU is VFIO_SET_IOMMU.
func ContainerSetIOMMU(container int, typ uintptr) error {
	_, err := ioctl(container, SetIOMMU, typ)
	return err
}

// GetGroupStatus is VFIO_GROUP_GET_STATUS.
func GetGroupStatus(group int) (GroupStatus, error) {
	s := GroupStatus{Argsz: uint32(unsafe.Sizeof(GroupStatus{}))}
	_, err := ioctlPtr(group, GroupGetStatus, unsafe.Pointer(&s))
	return s, err
}

// SetGroupContainer is VFIO_GROUP_SET_CONTAINER.
func SetGroupContainer(group, container int) error {
	fd := int32(container)
	_, err := ioctlPtr(group, GroupSetContainer, unsafe.Pointer(&fd))
	return err
}

// UnsetGroupContainer is VFIO_GROUP_UNSET_CONTAINER.
func UnsetGroupContainer(group int) error {
	_, err := ioctl(group, GroupUnsetContainer, 0)
	return err
}

// GetDeviceFD is VFIO_GROUP_GET_DEVICE_FD for the device named name (its
// PCI address, DDDD:BB:DD.F).
func GetDeviceFD(group int, name string) (int, error) {
	b, err := unix.BytePtrFromString(name)
	if err != nil {
		return -1, err
	}
	return ioctlPtr(group, GroupGetDeviceFD, unsafe.Pointer(b))
}

// GetDeviceInfo is VFIO_DEVICE_GET_INFO.
func GetDeviceInfo(dev int) (DeviceInfo, error) {
	i := DeviceInfo{Argsz: uint32(unsafe.Sizeof(DeviceInfo{}))}
	_, err := ioctlPtr(dev, DeviceGetInfo, unsafe.Pointer(&i))
	return i, err
}

// Region is a region's information with the sparse mmap areas its
// capability chain lists (nil: none listed).
type Region struct {
	RegionInfo
	Sparse []SparseMmapArea
	// MSIXMappable: the kernel lets the MSI-X table be mmap'ed.
	MSIXMappable bool
}

// GetRegionInfo is VFIO_DEVICE_GET_REGION_INFO, with a second call for
// the capability chain when the kernel has one.
func GetRegionInfo(dev int, index uint32) (Region, error) {
	ri := RegionInfo{Argsz: uint32(unsafe.Sizeof(RegionInfo{})), Index: index}
	if _, err := ioctlPtr(dev, DeviceGetRegion, unsafe.Pointer(&ri)); err != nil {
		return Region{}, err
	}
	r := Region{RegionInfo: ri}
	if ri.Flags&RegionFlagCaps == 0 || ri.Argsz <= uint32(unsafe.Sizeof(RegionInfo{})) {
		return r, nil
	}
	if ri.Argsz > 1<<16 {
		return r, fmt.Errorf("region %d: capability chain of %d bytes", index, ri.Argsz)
	}
	buf := make([]uint64, (ri.Argsz+7)/8)
	p := unsafe.Pointer(&buf[0])
	*(*RegionInfo)(p) = RegionInfo{Argsz: ri.Argsz, Index: index}
	if _, err := ioctlPtr(dev, DeviceGetRegion, p); err != nil {
		return Region{}, err
	}
	full := *(*RegionInfo)(p)
	raw := unsafe.Slice((*byte)(p), len(buf)*8)
	r.RegionInfo = full
	r.RegionInfo.Argsz = ri.Argsz
	sparse, mappable, err := parseRegionCaps(raw[:ri.Argsz], full.CapOffset)
	r.Sparse, r.MSIXMappable = sparse, mappable
	return r, err
}

// parseRegionCaps walks a region info's capability chain (offsets from
// the start of the info); kernel-provided, but checked all the same.
func parseRegionCaps(raw []byte, off uint32) (sparse []SparseMmapArea, msixMappable bool, err error) {
	hdrSize := uint32(unsafe.Sizeof(CapHeader{}))
	for n := 0; off != 0; n++ {
		if n > 64 || uint64(off)+uint64(hdrSize) > uint64(len(raw)) || off%4 != 0 {
			return sparse, msixMappable, fmt.Errorf("bad region capability chain at %#x", off)
		}
		h := *(*CapHeader)(unsafe.Pointer(&raw[off]))
		switch h.ID {
		case RegionCapSparseMmap:
			sh := uint32(unsafe.Sizeof(sparseMmapHeader{}))
			if uint64(off)+uint64(sh) > uint64(len(raw)) {
				return sparse, msixMappable, fmt.Errorf("sparse mmap capability truncated")
			}
			s := *(*sparseMmapHeader)(unsafe.Pointer(&raw[off]))
			as := uint64(unsafe.Sizeof(SparseMmapArea{}))
			if uint64(off)+uint64(sh)+uint64(s.NrAreas)*as > uint64(len(raw)) {
				return sparse, msixMappable, fmt.Errorf("sparse mmap capability lists %d areas past its end", s.NrAreas)
			}
			sparse = []SparseMmapArea{}
			for i := uint64(0); i < uint64(s.NrAreas); i++ {
				sparse = append(sparse, *(*SparseMmapArea)(unsafe.Pointer(&raw[uint64(off)+uint64(sh)+i*as])))
			}
		case RegionCapMSIXMappable:
			msixMappable = true
		}
		off = h.Next
	}
	return sparse, msixMappable, nil
}

// GetIRQInfo is VFIO_DEVICE_GET_IRQ_INFO.
func GetIRQInfo(dev int, index uint32) (IRQInfo, error) {
	i := IRQInfo{Argsz: uint32(unsafe.Sizeof(IRQInfo{})), Index: index}
	_, err := ioctlPtr(dev, DeviceGetIRQInfo, unsafe.Pointer(&i))
	return i, err
}

// SetIRQEventFDs is VFIO_DEVICE_SET_IRQS with DATA_EVENTFD|ACTION_TRIGGER:
// vectors start.. of index signal fds (-1 unassigns one).
func SetIRQEventFDs(dev int, index, start uint32, fds []int32) error {
	return setIRQs(dev, IRQSetDataEventFD|IRQSetActionTrigger, index, start, uint32(len(fds)), int32Bytes(fds))
}

// DisableIRQs is VFIO_DEVICE_SET_IRQS with DATA_NONE|ACTION_TRIGGER and
// count 0: the interrupt index is turned off.
func DisableIRQs(dev int, index uint32) error {
	return setIRQs(dev, IRQSetDataNone|IRQSetActionTrigger, index, 0, 0, nil)
}

// SetIRQAction is VFIO_DEVICE_SET_IRQS with DATA_NONE and the given
// action (mask or unmask) on vectors start..start+count-1.
func SetIRQAction(dev int, action, index, start, count uint32) error {
	return setIRQs(dev, IRQSetDataNone|action, index, start, count, nil)
}

// SetIRQUnmaskEventFD is VFIO_DEVICE_SET_IRQS with
// DATA_EVENTFD|ACTION_UNMASK: a write to fd unmasks vector start (INTx's
// resample path); fd -1 removes it.
func SetIRQUnmaskEventFD(dev int, index, start uint32, fd int32) error {
	return setIRQs(dev, IRQSetDataEventFD|IRQSetActionUnmask, index, start, 1, int32Bytes([]int32{fd}))
}

func int32Bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		u := uint32(x)
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	return b
}

func setIRQs(dev int, flags, index, start, count uint32, data []byte) error {
	hs := int(unsafe.Sizeof(IRQSet{}))
	buf := make([]uint32, (hs+len(data)+3)/4)
	p := unsafe.Pointer(&buf[0])
	*(*IRQSet)(p) = IRQSet{Argsz: uint32(hs + len(data)), Flags: flags, Index: index, Start: start, Count: count}
	copy(unsafe.Slice((*byte)(p), len(buf)*4)[hs:], data)
	_, err := ioctlPtr(dev, DeviceSetIRQs, p)
	return err
}

// ResetDevice is VFIO_DEVICE_RESET.
func ResetDevice(dev int) error {
	_, err := ioctl(dev, DeviceReset, 0)
	return err
}

// GetIOMMUInfo is VFIO_IOMMU_GET_INFO (type1).
func GetIOMMUInfo(container int) (IOMMUType1Info, error) {
	i := IOMMUType1Info{Argsz: uint32(unsafe.Sizeof(IOMMUType1Info{}))}
	_, err := ioctlPtr(container, IOMMUGetInfo, unsafe.Pointer(&i))
	return i, err
}

// MapDMA is VFIO_IOMMU_MAP_DMA: the device may read and write host memory
// mem at I/O virtual address iova.
func MapDMA(container int, iova uint64, mem []byte) error {
	if len(mem) == 0 {
		return fmt.Errorf("map DMA at %#x: empty range", iova)
	}
	m := DMAMap{Argsz: uint32(unsafe.Sizeof(DMAMap{})), Flags: DMAMapRead | DMAMapWrite,
		Vaddr: uint64(uintptr(unsafe.Pointer(&mem[0]))), IOVA: iova, Size: uint64(len(mem))}
	_, err := ioctlPtr(container, IOMMUMapDMA, unsafe.Pointer(&m))
	return err
}

// UnmapDMA is VFIO_IOMMU_UNMAP_DMA; it returns the bytes unmapped.
func UnmapDMA(container int, iova, size uint64) (uint64, error) {
	u := DMAUnmap{Argsz: uint32(unsafe.Sizeof(DMAUnmap{})), IOVA: iova, Size: size}
	_, err := ioctlPtr(container, IOMMUUnmapDMA, unsafe.Pointer(&u))
	return u.Size, err
}
