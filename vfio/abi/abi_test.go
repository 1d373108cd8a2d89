package abi

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"govmm/internal/abicheck"
)

// abi pins the structs, request numbers and constants govmm uses to
// <linux/vfio.h> (recorded from gcc on x86-64).
var abi = []abicheck.Value{
	abicheck.V("sizeof(struct vfio_group_status)", unsafe.Sizeof(GroupStatus{}), 8),
	// Its size is 20 bytes in 6.1's headers and 24 in 6.12's (the
	// pad): the offsets are what every header agrees on, the size is
	// recorded below.
	abicheck.V("offsetof(struct vfio_device_info, num_irqs)", unsafe.Offsetof(DeviceInfo{}.NumIRQs), 12),
	abicheck.V("offsetof(struct vfio_device_info, cap_offset)", unsafe.Offsetof(DeviceInfo{}.CapOffset), 16),
	abicheck.V("sizeof(struct vfio_region_info)", unsafe.Sizeof(RegionInfo{}), 32),
	abicheck.V("offsetof(struct vfio_region_info, size)", unsafe.Offsetof(RegionInfo{}.Size), 16),
	abicheck.V("offsetof(struct vfio_region_info, offset)", unsafe.Offsetof(RegionInfo{}.Offset), 24),
	abicheck.V("sizeof(struct vfio_irq_info)", unsafe.Sizeof(IRQInfo{}), 16),
	abicheck.V("sizeof(struct vfio_irq_set)", unsafe.Sizeof(IRQSet{}), 20),
	abicheck.V("sizeof(struct vfio_iommu_type1_info)", unsafe.Sizeof(IOMMUType1Info{}), 24),
	abicheck.V("offsetof(struct vfio_iommu_type1_info, iova_pgsizes)", unsafe.Offsetof(IOMMUType1Info{}.IOVAPgsizes), 8),
	abicheck.V("sizeof(struct vfio_iommu_type1_dma_map)", unsafe.Sizeof(DMAMap{}), 32),
	abicheck.V("offsetof(struct vfio_iommu_type1_dma_map, vaddr)", unsafe.Offsetof(DMAMap{}.Vaddr), 8),
	abicheck.V("offsetof(struct vfio_iommu_type1_dma_map, iova)", unsafe.Offsetof(DMAMap{}.IOVA), 16),
	abicheck.V("offsetof(struct vfio_iommu_type1_dma_map, size)", unsafe.Offsetof(DMAMap{}.Size), 24),
	abicheck.V("sizeof(struct vfio_iommu_type1_dma_unmap)", unsafe.Sizeof(DMAUnmap{}), 24),
	abicheck.V("offsetof(struct vfio_iommu_type1_dma_unmap, iova)", unsafe.Offsetof(DMAUnmap{}.IOVA), 8),
	abicheck.V("sizeof(struct vfio_info_cap_header)", unsafe.Sizeof(CapHeader{}), 8),
	abicheck.V("sizeof(struct vfio_region_info_cap_sparse_mmap)", unsafe.Sizeof(sparseMmapHeader{}), 16),
	abicheck.V("sizeof(struct vfio_region_sparse_mmap_area)", unsafe.Sizeof(SparseMmapArea{}), 16),
	// _IO(';', 100 + n): 0x3b64 + n.
	abicheck.V("VFIO_GET_API_VERSION", GetAPIVersion, 0x3b64),
	abicheck.V("VFIO_CHECK_EXTENSION", CheckExtension, 0x3b65),
	abicheck.V("VFIO_SET_IOMMU", SetIOMMU, 0x3b66),
	abicheck.V("VFIO_GROUP_GET_STATUS", GroupGetStatus, 0x3b67),
	abicheck.V("VFIO_GROUP_SET_CONTAINER", GroupSetContainer, 0x3b68),
	abicheck.V("VFIO_GROUP_UNSET_CONTAINER", GroupUnsetContainer, 0x3b69),
	abicheck.V("VFIO_GROUP_GET_DEVICE_FD", GroupGetDeviceFD, 0x3b6a),
	abicheck.V("VFIO_DEVICE_GET_INFO", DeviceGetInfo, 0x3b6b),
	abicheck.V("VFIO_DEVICE_GET_REGION_INFO", DeviceGetRegion, 0x3b6c),
	abicheck.V("VFIO_DEVICE_GET_IRQ_INFO", DeviceGetIRQInfo, 0x3b6d),
	abicheck.V("VFIO_DEVICE_SET_IRQS", DeviceSetIRQs, 0x3b6e),
	abicheck.V("VFIO_DEVICE_RESET", DeviceReset, 0x3b6f),
	abicheck.V("VFIO_IOMMU_GET_INFO", IOMMUGetInfo, 0x3b70),
	abicheck.V("VFIO_IOMMU_MAP_DMA", IOMMUMapDMA, 0x3b71),
	abicheck.V("VFIO_IOMMU_UNMAP_DMA", IOMMUUnmapDMA, 0x3b72),
	abicheck.V("VFIO_API_VERSION", APIVersion, 0),
	abicheck.V("VFIO_TYPE1_IOMMU", Type1IOMMU, 1),
	abicheck.V("VFIO_TYPE1v2_IOMMU", Type1v2IOMMU, 3),
	abicheck.V("VFIO_GROUP_FLAGS_VIABLE", GroupFlagsViable, 1),
	abicheck.V("VFIO_GROUP_FLAGS_CONTAINER_SET", GroupFlagsContainerSet, 2),
	abicheck.V("VFIO_DEVICE_FLAGS_RESET", DeviceFlagsReset, 1),
	abicheck.V("VFIO_DEVICE_FLAGS_PCI", DeviceFlagsPCI, 2),
	abicheck.V("VFIO_REGION_INFO_FLAG_READ", RegionFlagRead, 1),
	abicheck.V("VFIO_REGION_INFO_FLAG_WRITE", RegionFlagWrite, 2),
	abicheck.V("VFIO_REGION_INFO_FLAG_MMAP", RegionFlagMmap, 4),
	abicheck.V("VFIO_REGION_INFO_FLAG_CAPS", RegionFlagCaps, 8),
	abicheck.V("VFIO_REGION_INFO_CAP_SPARSE_MMAP", RegionCapSparseMmap, 1),
	abicheck.V("VFIO_REGION_INFO_CAP_MSIX_MAPPABLE", RegionCapMSIXMappable, 3),
	abicheck.V("VFIO_IRQ_INFO_EVENTFD", IRQInfoEventFD, 1),
	abicheck.V("VFIO_IRQ_INFO_MASKABLE", IRQInfoMaskable, 2),
	abicheck.V("VFIO_IRQ_INFO_AUTOMASKED", IRQInfoAutomasked, 4),
	abicheck.V("VFIO_IRQ_INFO_NORESIZE", IRQInfoNoResize, 8),
	abicheck.V("VFIO_IRQ_SET_DATA_NONE", IRQSetDataNone, 1),
	abicheck.V("VFIO_IRQ_SET_DATA_BOOL", IRQSetDataBool, 2),
	abicheck.V("VFIO_IRQ_SET_DATA_EVENTFD", IRQSetDataEventFD, 4),
	abicheck.V("VFIO_IRQ_SET_ACTION_MASK", IRQSetActionMask, 8),
	abicheck.V("VFIO_IRQ_SET_ACTION_UNMASK", IRQSetActionUnmask, 16),
	abicheck.V("VFIO_IRQ_SET_ACTION_TRIGGER", IRQSetActionTrigger, 32),
	abicheck.V("VFIO_DMA_MAP_FLAG_READ", DMAMapRead, 1),
	abicheck.V("VFIO_DMA_MAP_FLAG_WRITE", DMAMapWrite, 2),
	abicheck.V("VFIO_PCI_BAR0_REGION_INDEX", PCIBAR0Region, 0),
	abicheck.V("VFIO_PCI_BAR5_REGION_INDEX", PCIBAR5Region, 5),
	abicheck.V("VFIO_PCI_ROM_REGION_INDEX", PCIROMRegion, 6),
	abicheck.V("VFIO_PCI_CONFIG_REGION_INDEX", PCIConfigRegion, 7),
	abicheck.V("VFIO_PCI_VGA_REGION_INDEX", PCIVGARegion, 8),
	abicheck.V("VFIO_PCI_INTX_IRQ_INDEX", PCIINTxIRQ, 0),
	abicheck.V("VFIO_PCI_MSI_IRQ_INDEX", PCIMSIIRQ, 1),
	abicheck.V("VFIO_PCI_MSIX_IRQ_INDEX", PCIMSIXIRQ, 2),
	abicheck.V("VFIO_PCI_ERR_IRQ_INDEX", PCIErrIRQ, 3),
	abicheck.V("VFIO_PCI_REQ_IRQ_INDEX", PCIReqIRQ, 4),
}

// deviceInfoSize is sizeof(struct vfio_device_info) in newer headers
// (6.12's), recorded only: bookworm's 6.1 headers say 20.
var deviceInfoSize = []abicheck.Value{
	abicheck.V("sizeof(struct vfio_device_info)", unsafe.Sizeof(DeviceInfo{}), 24),
}

func TestABI(t *testing.T) {
	abicheck.Recorded(t, abi)
	abicheck.Recorded(t, deviceInfoSize)
}

func TestABIAgainstHeader(t *testing.T) {
	abicheck.Headers(t, "gcc", []string{"linux/vfio.h"}, abi)
}

func TestInt32Bytes(t *testing.T) {
	b := int32Bytes([]int32{7, -1})
	if binary.LittleEndian.Uint32(b) != 7 || binary.LittleEndian.Uint32(b[4:]) != 0xffffffff {
		t.Fatalf("int32Bytes = % x", b)
	}
}

func TestParseRegionCaps(t *testing.T) {
	// A region info (32 bytes), then an MSI-X-mappable capability at 32
	// pointing to a sparse mmap capability with two areas at 40.
	raw := make([]byte, 40+16+32)
	le := binary.LittleEndian
	le.PutUint16(raw[32:], RegionCapMSIXMappable)
	le.PutUint32(raw[36:], 40)
	le.PutUint16(raw[40:], RegionCapSparseMmap)
	le.PutUint32(raw[48:], 2)
	le.PutUint64(raw[56:], 0)
	le.PutUint64(raw[64:], 0x1000)
	le.PutUint64(raw[72:], 0x3000)
	le.PutUint64(raw[80:], 0x5000)
	sparse, mappable, err := parseRegionCaps(raw, 32)
	if err != nil || !mappable || len(sparse) != 2 || sparse[1] != (SparseMmapArea{0x3000, 0x5000}) {
		t.Fatalf("parseRegionCaps = %v, %v, %v", sparse, mappable, err)
	}
	// Areas past the end, a loop and a misaligned offset are refused.
	le.PutUint32(raw[48:], 3)
	if _, _, err := parseRegionCaps(raw, 32); err == nil {
		t.Error("three areas in room for two: no error")
	}
	le.PutUint32(raw[48:], 2)
	le.PutUint32(raw[44:], 32) // sparse's next points back at the first
	if _, _, err := parseRegionCaps(raw, 32); err == nil {
		t.Error("a looping chain: no error")
	}
	if _, _, err := parseRegionCaps(raw, 34); err == nil {
		t.Error("misaligned capability: no error")
	}
}
