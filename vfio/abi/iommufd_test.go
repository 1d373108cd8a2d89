package abi

import (
	"testing"
	"unsafe"

	"govmm/internal/abicheck"
)

// iommufdABI pins the iommufd and VFIO cdev structs, requests and flags
// to <linux/iommufd.h> and <linux/vfio.h> of Linux 6.12 (recorded from
// gcc on x86-64). Headers older than 6.6 lack them, and the check
// against the installed headers skips there.
var iommufdABI = []abicheck.Value{
	abicheck.V("sizeof(struct iommu_destroy)", unsafe.Sizeof(IOMMUDestroyArg{}), 8),
	abicheck.V("offsetof(struct iommu_destroy, id)", unsafe.Offsetof(IOMMUDestroyArg{}.ID), 4),
	abicheck.V("sizeof(struct iommu_ioas_alloc)", unsafe.Sizeof(IOASAllocArg{}), 12),
	abicheck.V("offsetof(struct iommu_ioas_alloc, flags)", unsafe.Offsetof(IOASAllocArg{}.Flags), 4),
	abicheck.V("offsetof(struct iommu_ioas_alloc, out_ioas_id)", unsafe.Offsetof(IOASAllocArg{}.OutIOASID), 8),
	abicheck.V("sizeof(struct iommu_ioas_map)", unsafe.Sizeof(IOASMapArg{}), 40),
	abicheck.V("offsetof(struct iommu_ioas_map, flags)", unsafe.Offsetof(IOASMapArg{}.Flags), 4),
	abicheck.V("offsetof(struct iommu_ioas_map, ioas_id)", unsafe.Offsetof(IOASMapArg{}.IOASID), 8),
	abicheck.V("offsetof(struct iommu_ioas_map, __reserved)", unsafe.Offsetof(IOASMapArg{}.Reserved), 12),
	abicheck.V("offsetof(struct iommu_ioas_map, user_va)", unsafe.Offsetof(IOASMapArg{}.UserVA), 16),
	abicheck.V("offsetof(struct iommu_ioas_map, length)", unsafe.Offsetof(IOASMapArg{}.Length), 24),
	abicheck.V("offsetof(struct iommu_ioas_map, iova)", unsafe.Offsetof(IOASMapArg{}.IOVA), 32),
	abicheck.V("sizeof(struct iommu_ioas_unmap)", unsafe.Sizeof(IOASUnmapArg{}), 24),
	abicheck.V("offsetof(struct iommu_ioas_unmap, ioas_id)", unsafe.Offsetof(IOASUnmapArg{}.IOASID), 4),
	abicheck.V("offsetof(struct iommu_ioas_unmap, iova)", unsafe.Offsetof(IOASUnmapArg{}.IOVA), 8),
	abicheck.V("offsetof(struct iommu_ioas_unmap, length)", unsafe.Offsetof(IOASUnmapArg{}.Length), 16),
	abicheck.V("sizeof(struct vfio_device_bind_iommufd)", unsafe.Sizeof(BindIOMMUFDArg{}), 16),
	abicheck.V("offsetof(struct vfio_device_bind_iommufd, flags)", unsafe.Offsetof(BindIOMMUFDArg{}.Flags), 4),
	abicheck.V("offsetof(struct vfio_device_bind_iommufd, iommufd)", unsafe.Offsetof(BindIOMMUFDArg{}.IOMMUFD), 8),
	abicheck.V("offsetof(struct vfio_device_bind_iommufd, out_devid)", unsafe.Offsetof(BindIOMMUFDArg{}.OutDevID), 12),
	abicheck.V("sizeof(struct vfio_device_attach_iommufd_pt)", unsafe.Sizeof(AttachIOMMUFDPTArg{}), 12),
	abicheck.V("offsetof(struct vfio_device_attach_iommufd_pt, flags)", unsafe.Offsetof(AttachIOMMUFDPTArg{}.Flags), 4),
	abicheck.V("offsetof(struct vfio_device_attach_iommufd_pt, pt_id)", unsafe.Offsetof(AttachIOMMUFDPTArg{}.PTID), 8),
	abicheck.V("sizeof(struct vfio_device_detach_iommufd_pt)", unsafe.Sizeof(DetachIOMMUFDPTArg{}), 8),
	abicheck.V("offsetof(struct vfio_device_detach_iommufd_pt, flags)", unsafe.Offsetof(DetachIOMMUFDPTArg{}.Flags), 4),
	// _IO(';', 0x80 + n) and _IO(';', 100 + n).
	abicheck.V("IOMMU_DESTROY", IOMMUDestroy, 0x3b80),
	abicheck.V("IOMMU_IOAS_ALLOC", IOMMUIOASAlloc, 0x3b81),
	abicheck.V("IOMMU_IOAS_MAP", IOMMUIOASMap, 0x3b85),
	abicheck.V("IOMMU_IOAS_UNMAP", IOMMUIOASUnmap, 0x3b86),
	abicheck.V("VFIO_DEVICE_BIND_IOMMUFD", DeviceBindIOMMUFD, 0x3b76),
	abicheck.V("VFIO_DEVICE_ATTACH_IOMMUFD_PT", DeviceAttachIOMMUFDPT, 0x3b77),
	abicheck.V("VFIO_DEVICE_DETACH_IOMMUFD_PT", DeviceDetachIOMMUFDPT, 0x3b78),
	abicheck.V("IOMMU_IOAS_MAP_FIXED_IOVA", IOASMapFixedIOVA, 1),
	abicheck.V("IOMMU_IOAS_MAP_WRITEABLE", IOASMapWriteable, 2),
	abicheck.V("IOMMU_IOAS_MAP_READABLE", IOASMapReadable, 4),
}

func TestIOMMUFDABI(t *testing.T) { abicheck.Recorded(t, iommufdABI) }

func TestIOMMUFDABIAgainstHeader(t *testing.T) {
	abicheck.Headers(t, "gcc", []string{"linux/iommufd.h", "linux/vfio.h"}, iommufdABI)
}
