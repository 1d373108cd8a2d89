package abi

import (
	"testing"
	"unsafe"

	"govmm/internal/abicheck"
)

// migrationABI pins VFIO migration v2's structs and constants to
// <linux/vfio.h> (recorded from gcc on x86-64, Linux 6.1 and 6.12 headers).
var migrationABI = []abicheck.Value{
	abicheck.V("sizeof(struct vfio_device_feature)", unsafe.Sizeof(DeviceFeatureHeader{}), 8),
	abicheck.V("sizeof(struct vfio_device_feature_migration)", unsafe.Sizeof(FeatureMigrationData{}), 8),
	abicheck.V("sizeof(struct vfio_device_feature_mig_state)", unsafe.Sizeof(FeatureMigState{}), 8),
	abicheck.V("offsetof(struct vfio_device_feature_mig_state, data_fd)", unsafe.Offsetof(FeatureMigState{}.DataFD), 4),
	abicheck.V("VFIO_DEVICE_FEATURE", DeviceFeature, 0x3b75),
	abicheck.V("VFIO_DEVICE_FEATURE_MASK", FeatureMask, 0xffff),
	abicheck.V("VFIO_DEVICE_FEATURE_GET", FeatureGet, 1<<16),
	abicheck.V("VFIO_DEVICE_FEATURE_SET", FeatureSet, 1<<17),
	abicheck.V("VFIO_DEVICE_FEATURE_PROBE", FeatureProbe, 1<<18),
	abicheck.V("VFIO_DEVICE_FEATURE_MIGRATION", FeatureMigration, 1),
	abicheck.V("VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE", FeatureMigDeviceState, 2),
	abicheck.V("VFIO_MIGRATION_STOP_COPY", MigrationStopCopy, 1),
	abicheck.V("VFIO_MIGRATION_P2P", MigrationP2P, 2),
	abicheck.V("VFIO_DEVICE_STATE_ERROR", DeviceStateError, 0),
	abicheck.V("VFIO_DEVICE_STATE_STOP", DeviceStateStop, 1),
	abicheck.V("VFIO_DEVICE_STATE_RUNNING", DeviceStateRunning, 2),
	abicheck.V("VFIO_DEVICE_STATE_STOP_COPY", DeviceStateStopCopy, 3),
	abicheck.V("VFIO_DEVICE_STATE_RESUMING", DeviceStateResuming, 4),
	abicheck.V("VFIO_DEVICE_STATE_RUNNING_P2P", DeviceStateRunningP2P, 5),
	abicheck.V("VFIO_DEVICE_FEATURE_DMA_LOGGING_START", FeatureDMALoggingStart, 6),
	abicheck.V("VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP", FeatureDMALoggingStop, 7),
	abicheck.V("VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT", FeatureDMALoggingReport, 8),
	abicheck.V("sizeof(struct vfio_device_feature_dma_logging_control)", unsafe.Sizeof(DMALoggingControl{}), 24),
	abicheck.V("offsetof(struct vfio_device_feature_dma_logging_control, num_ranges)", unsafe.Offsetof(DMALoggingControl{}.NumRanges), 8),
	abicheck.V("offsetof(struct vfio_device_feature_dma_logging_control, ranges)", unsafe.Offsetof(DMALoggingControl{}.Ranges), 16),
	abicheck.V("sizeof(struct vfio_device_feature_dma_logging_range)", unsafe.Sizeof(DMALoggingRange{}), 16),
	abicheck.V("sizeof(struct vfio_device_feature_dma_logging_report)", unsafe.Sizeof(DMALoggingReport{}), 32),
	abicheck.V("offsetof(struct vfio_device_feature_dma_logging_report, page_size)", unsafe.Offsetof(DMALoggingReport{}.PageSize), 16),
	abicheck.V("offsetof(struct vfio_device_feature_dma_logging_report, bitmap)", unsafe.Offsetof(DMALoggingReport{}.Bitmap), 24),
}

// preCopyABI is what Linux 6.2 added, which the installed headers of a
// bookworm host (6.1) lack: recorded only (from the 6.12 headers).
var preCopyABI = []abicheck.Value{
	abicheck.V("VFIO_MIGRATION_PRE_COPY", MigrationPreCopy, 4),
	abicheck.V("VFIO_DEVICE_STATE_PRE_COPY", DeviceStatePreCopy, 6),
	abicheck.V("VFIO_DEVICE_STATE_PRE_COPY_P2P", DeviceStatePreCopyP2P, 7),
	abicheck.V("VFIO_MIG_GET_PRECOPY_INFO", MigGetPrecopyInfo, 0x3b79),
	abicheck.V("sizeof(struct vfio_precopy_info)", unsafe.Sizeof(PrecopyInfo{}), 24),
	abicheck.V("offsetof(struct vfio_precopy_info, initial_bytes)", unsafe.Offsetof(PrecopyInfo{}.InitialBytes), 8),
	abicheck.V("offsetof(struct vfio_precopy_info, dirty_bytes)", unsafe.Offsetof(PrecopyInfo{}.DirtyBytes), 16),
}

func TestMigrationABI(t *testing.T) {
	abicheck.Recorded(t, migrationABI)
	abicheck.Recorded(t, preCopyABI)
	// The feature header and its payload sit back to back, as the
	// kernel reads them (data[] follows flags).
	if o := unsafe.Offsetof(migStateFeature{}.FeatureMigState); o != 8 {
		t.Errorf("mig state payload at %d, want 8", o)
	}
	if o := unsafe.Offsetof(migrationFeature{}.FeatureMigrationData); o != 8 {
		t.Errorf("migration payload at %d, want 8", o)
	}
}

func TestMigrationABIAgainstHeader(t *testing.T) {
	abicheck.Headers(t, "gcc", []string{"linux/vfio.h"}, migrationABI)
}
