//go:build !arm64

package confine

import (
	"govmm/accel/mshv/mshvabi"
	"govmm/vfio/abi"
)

// mshvIoctls are the /dev/mshv requests govmm makes once the VM runs.
// MSHV_GET_VP_STATE shares its number with the downstream
// GET_HOST_PARTITION_PROPERTY (on another kind of fd), which the filter
// cannot tell apart.
func mshvIoctls() []ioctlReq {
	return []ioctlReq{
		{"MSHV_RUN_VP", mshvabi.ReqRunVP},
		{"MSHV_ROOT_HVCALL", mshvabi.ReqRootHvcall},
		{"MSHV_GET_VP_STATE", mshvabi.ReqGetVPState},
		{"MSHV_SET_VP_STATE", mshvabi.ReqSetVPState},
		{"MSHV_IRQFD", mshvabi.ReqIRQFD},
		{"MSHV_IOEVENTFD", mshvabi.ReqIOEventFD},
		{"MSHV_SET_MSI_ROUTING", mshvabi.ReqSetMSIRouting},
		{"MSHV_GET_GPAP_ACCESS_BITMAP", mshvabi.ReqGetGPAPAccessBitmap},
		{"MSHV_SET_GUEST_MEMORY", mshvabi.ReqSetGuestMemory},
	}
}

// mshvSetupOnly are /dev/mshv requests made only while the VM is built.
func mshvSetupOnly() []ioctlReq {
	return []ioctlReq{
		{"MSHV_CREATE_PARTITION", mshvabi.ReqCreatePartition},
		{"MSHV_INITIALIZE_PARTITION", mshvabi.ReqInitializePartition},
		{"MSHV_CREATE_VP", mshvabi.ReqCreateVP},
	}
}

// vfioIoctls are the VFIO requests a passed-through device needs once the
// guest runs: its MSI vectors wired and unwired as the guest enables and
// disables them (and INTx unmasked, for a driver without an unmask
// eventfd), its migration state moved for a snapshot or a live migration
// (VFIO_DEVICE_FEATURE: STOP, STOP_COPY, PRE_COPY, RUNNING, and DMA
// logging; VFIO_MIG_GET_PRECOPY_INFO on the data fd of PRE_COPY, during
// a live migration's rounds), and
// the reset and DMA unmapping when the VM ends (from the legacy
// container, or from iommufd's address space; a device opened through its
// cdev is unbound by closing it).
func vfioIoctls() []ioctlReq {
	return []ioctlReq{
		{"VFIO_DEVICE_SET_IRQS", uint32(abi.DeviceSetIRQs)},
		{"VFIO_DEVICE_FEATURE", uint32(abi.DeviceFeature)},
		{"VFIO_MIG_GET_PRECOPY_INFO", uint32(abi.MigGetPrecopyInfo)},
		{"VFIO_DEVICE_RESET", uint32(abi.DeviceReset)},
		{"VFIO_IOMMU_UNMAP_DMA", uint32(abi.IOMMUUnmapDMA)},
		{"VFIO_GROUP_UNSET_CONTAINER", uint32(abi.GroupUnsetContainer)},
		{"IOMMU_IOAS_UNMAP", uint32(abi.IOMMUIOASUnmap)},
	}
}
