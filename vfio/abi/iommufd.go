package abi

import (
	"fmt"
	"unsafe"
)

// The iommufd user API (include/uapi/linux/iommufd.h) and the VFIO device
// cdev requests that bind a device to it (linux/vfio.h, Linux 6.6 on):
// /dev/iommu holds I/O address spaces (IOAS) with their mappings, and a
// device opened as /dev/vfio/devices/vfioN is bound to an iommufd and
// attached to an IOAS instead of going through a group and a container.
// Every request is _IO(';', n): the structs carry their own size.

// iommufd's commands start at 0x80 in the ';' space VFIO uses (VFIO's
// own are 100 + n, below it).
const iommufdCmdBase = 0x80

func iommuIO(n uintptr) uintptr { return vfioType<<8 | (iommufdCmdBase + n) }

// Request numbers.
var (
	IOMMUDestroy   = iommuIO(0) // IOMMU_DESTROY
	IOMMUIOASAlloc = iommuIO(1) // IOMMU_IOAS_ALLOC
	IOMMUIOASMap   = iommuIO(5) // IOMMU_IOAS_MAP
	IOMMUIOASUnmap = iommuIO(6) // IOMMU_IOAS_UNMAP

	DeviceBindIOMMUFD     = io(18) // VFIO_DEVICE_BIND_IOMMUFD
	DeviceAttachIOMMUFDPT = io(19) // VFIO_DEVICE_ATTACH_IOMMUFD_PT
	DeviceDetachIOMMUFDPT = io(20) // VFIO_DEVICE_DETACH_IOMMUFD_PT
)

// IOAS map flags (enum iommufd_ioas_map_flags).
const (
	IOASMapFixedIOVA = 1 << 0
	IOASMapWriteable = 1 << 1
	IOASMapReadable  = 1 << 2
)

// IOMMUDestroyArg is struct iommu_destroy.
type IOMMUDestroyArg struct {
	Size uint32
	ID   uint32
}

// IOASAllocArg is struct iommu_ioas_alloc.
type IOASAllocArg struct {
	Size      uint32
	Flags     uint32
	OutIOASID uint32
}

// IOASMapArg is struct iommu_ioas_map.
type IOASMapArg struct {
	Size     uint32
	Flags    uint32
	IOASID   uint32
	Reserved uint32
	UserVA   uint64
	Length   uint64
	IOVA     uint64
}

// IOASUnmapArg is struct iommu_ioas_unmap.
type IOASUnmapArg struct {
	Size   uint32
	IOASID uint32
	IOVA   uint64
	Length uint64
}

// BindIOMMUFDArg is struct vfio_device_bind_iommufd (the 16 bytes of
// Linux 6.6 to 6.12; later kernels may append fields behind a flag).
type BindIOMMUFDArg struct {
	Argsz    uint32
	Flags    uint32
	IOMMUFD  int32
	OutDevID uint32
}

// AttachIOMMUFDPTArg is struct vfio_device_attach_iommufd_pt.
type AttachIOMMUFDPTArg struct {
	Argsz uint32
	Flags uint32
	PTID  uint32
}

// DetachIOMMUFDPTArg is struct vfio_device_detach_iommufd_pt.
type DetachIOMMUFDPTArg struct {
	Argsz uint32
	Flags uint32
}

// IOASAlloc makes an I/O address space in iommufd and returns its ID.
func IOASAlloc(iommufd int) (uint32, error) {
	a := IOASAllocArg{Size: uint32(unsafe.Sizeof(IOASAllocArg{}))}
	_, err := ioctlPtr(iommufd, IOMMUIOASAlloc, unsafe.Pointer(&a))
	return a.OutIOASID, err
}

// IOASMap maps mem, readable and writable, at exactly iova in IOAS ioas.
// The kernel pins the pages.
func IOASMap(iommufd int, ioas uint32, iova uint64, mem []byte) error {
	if len(mem) == 0 {
		return fmt.Errorf("map IOVA %#x: empty range", iova)
	}
	m := IOASMapArg{Size: uint32(unsafe.Sizeof(IOASMapArg{})), Flags: IOASMapFixedIOVA | IOASMapReadable | IOASMapWriteable,
		IOASID: ioas, UserVA: uint64(uintptr(unsafe.Pointer(&mem[0]))), Length: uint64(len(mem)), IOVA: iova}
	_, err := ioctlPtr(iommufd, IOMMUIOASMap, unsafe.Pointer(&m))
	return err
}

// IOASUnmap removes the mappings in iova..iova+size of IOAS ioas and
// returns how many bytes it unmapped.
func IOASUnmap(iommufd int, ioas uint32, iova, size uint64) (uint64, error) {
	u := IOASUnmapArg{Size: uint32(unsafe.Sizeof(IOASUnmapArg{})), IOASID: ioas, IOVA: iova, Length: size}
	_, err := ioctlPtr(iommufd, IOMMUIOASUnmap, unsafe.Pointer(&u))
	return u.Length, err
}

// IOMMUDestroyObject destroys iommufd object id (an IOAS).
func IOMMUDestroyObject(iommufd int, id uint32) error {
	d := IOMMUDestroyArg{Size: uint32(unsafe.Sizeof(IOMMUDestroyArg{})), ID: id}
	_, err := ioctlPtr(iommufd, IOMMUDestroy, unsafe.Pointer(&d))
	return err
}

// BindIOMMUFD binds the device opened through its cdev to iommufd and
// returns the device's ID there. Until it succeeds the device fd refuses
// every other request.
func BindIOMMUFD(dev, iommufd int) (uint32, error) {
	b := BindIOMMUFDArg{Argsz: uint32(unsafe.Sizeof(BindIOMMUFDArg{})), IOMMUFD: int32(iommufd)}
	_, err := ioctlPtr(dev, DeviceBindIOMMUFD, unsafe.Pointer(&b))
	return b.OutDevID, err
}

// AttachIOMMUFDPT attaches a bound device to page table pt (an IOAS ID:
// the kernel then makes or reuses a hardware page table for it) and
// returns the ID of the page table it is attached to.
func AttachIOMMUFDPT(dev int, pt uint32) (uint32, error) {
	a := AttachIOMMUFDPTArg{Argsz: uint32(unsafe.Sizeof(AttachIOMMUFDPTArg{})), PTID: pt}
	_, err := ioctlPtr(dev, DeviceAttachIOMMUFDPT, unsafe.Pointer(&a))
	return a.PTID, err
}

// DetachIOMMUFDPT detaches a bound device from its page table.
func DetachIOMMUFDPT(dev int) error {
	d := DetachIOMMUFDPTArg{Argsz: uint32(unsafe.Sizeof(DetachIOMMUFDPTArg{}))}
	_, err := ioctlPtr(dev, DeviceDetachIOMMUFDPT, unsafe.Pointer(&d))
	return err
}
