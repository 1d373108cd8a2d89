package abi

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

// The sizes and offsets below are those of include/uapi/linux/vfio.h on
// x86-64 (checked with gcc against the header).
func TestLayout(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct vfio_group_status)", unsafe.Sizeof(GroupStatus{}), 8},
		{"sizeof(struct vfio_device_info)", unsafe.Sizeof(DeviceInfo{}), 20},
		{"sizeof(struct vfio_region_info)", unsafe.Sizeof(RegionInfo{}), 32},
		{"offsetof(vfio_region_info, size)", unsafe.Offsetof(RegionInfo{}.Size), 16},
		{"offsetof(vfio_region_info, offset)", unsafe.Offsetof(RegionInfo{}.Offset), 24},
		{"sizeof(struct vfio_irq_info)", unsafe.Sizeof(IRQInfo{}), 16},
		{"sizeof(struct vfio_irq_set)", unsafe.Sizeof(IRQSet{}), 20},
		{"sizeof(struct vfio_iommu_type1_info)", unsafe.Sizeof(IOMMUType1Info{}), 24},
		{"offsetof(vfio_iommu_type1_info, iova_pgsizes)", unsafe.Offsetof(IOMMUType1Info{}.IOVAPgsizes), 8},
		{"sizeof(struct vfio_iommu_type1_dma_map)", unsafe.Sizeof(DMAMap{}), 32},
		{"offsetof(vfio_iommu_type1_dma_map, vaddr)", unsafe.Offsetof(DMAMap{}.Vaddr), 8},
		{"offsetof(vfio_iommu_type1_dma_map, iova)", unsafe.Offsetof(DMAMap{}.IOVA), 16},
		{"offsetof(vfio_iommu_type1_dma_map, size)", unsafe.Offsetof(DMAMap{}.Size), 24},
		{"sizeof(struct vfio_iommu_type1_dma_unmap)", unsafe.Sizeof(DMAUnmap{}), 24},
		{"offsetof(vfio_iommu_type1_dma_unmap, iova)", unsafe.Offsetof(DMAUnmap{}.IOVA), 8},
		{"sizeof(struct vfio_info_cap_header)", unsafe.Sizeof(CapHeader{}), 8},
		{"sizeof(struct vfio_region_info_cap_sparse_mmap)", unsafe.Sizeof(sparseMmapHeader{}), 16},
		{"sizeof(struct vfio_region_sparse_mmap_area)", unsafe.Sizeof(SparseMmapArea{}), 16},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestRequestNumbers(t *testing.T) {
	// _IO(';', 100 + n): 0x3b64 + n.
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"VFIO_GET_API_VERSION", GetAPIVersion, 0x3b64},
		{"VFIO_SET_IOMMU", SetIOMMU, 0x3b66},
		{"VFIO_GROUP_GET_DEVICE_FD", GroupGetDeviceFD, 0x3b6a},
		{"VFIO_DEVICE_SET_IRQS", DeviceSetIRQs, 0x3b6e},
		{"VFIO_DEVICE_RESET", DeviceReset, 0x3b6f},
		{"VFIO_IOMMU_MAP_DMA", IOMMUMapDMA, 0x3b71},
		{"VFIO_IOMMU_UNMAP_DMA", IOMMUUnmapDMA, 0x3b72},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
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
