package abi

import (
	"fmt"
	"runtime"
	"unsafe"
)

// VFIO migration v2 (include/uapi/linux/vfio.h, since Linux 5.18): the
// device feature ioctl, the migration capability and the device state
// machine, whose STOP_COPY and RESUMING states hand out a data fd that
// the device's state is read from and written to.

// DeviceFeature is VFIO_DEVICE_FEATURE (_IO(';', 100 + 17)).
var DeviceFeature = io(17)

// struct vfio_device_feature flags.
const (
	FeatureMask  = 0xffff
	FeatureGet   = 1 << 16
	FeatureSet   = 1 << 17
	FeatureProbe = 1 << 18
)

// Feature indexes.
const (
	FeatureMigration      = 1 // VFIO_DEVICE_FEATURE_MIGRATION
	FeatureMigDeviceState = 2 // VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
)

// Migration flags (struct vfio_device_feature_migration). PRE_COPY, 1<<2,
// came in Linux 6.2: a live migration reads part of the device's state
// while it runs.
const (
	MigrationStopCopy = 1 << 0
	MigrationP2P      = 1 << 1
	MigrationPreCopy  = 1 << 2
)

// Device migration states (enum vfio_device_mig_state).
const (
	DeviceStateError      = 0
	DeviceStateStop       = 1
	DeviceStateRunning    = 2
	DeviceStateStopCopy   = 3
	DeviceStateResuming   = 4
	DeviceStateRunningP2P = 5
	DeviceStatePreCopy    = 6
	DeviceStatePreCopyP2P = 7
)

// MigGetPrecopyInfo is VFIO_MIG_GET_PRECOPY_INFO (_IO(';', 100 + 21)),
// an ioctl of the data fd the PRE_COPY state hands out.
var MigGetPrecopyInfo = io(21)

// PrecopyInfo is struct vfio_precopy_info.
type PrecopyInfo struct {
	Argsz        uint32
	Flags        uint32
	InitialBytes uint64
	DirtyBytes   uint64
}

// GetPrecopyInfo is VFIO_MIG_GET_PRECOPY_INFO on a PRE_COPY data fd: how
// many bytes of the device's initial data, and of state it changed
// since, can be read now (an estimate; reading them lowers it).
func GetPrecopyInfo(dataFD int) (PrecopyInfo, error) {
	in := PrecopyInfo{Argsz: uint32(unsafe.Sizeof(PrecopyInfo{}))}
	_, err := ioctlPtr(dataFD, MigGetPrecopyInfo, unsafe.Pointer(&in))
	return in, err
}

// DeviceFeatureHeader is struct vfio_device_feature without its data.
type DeviceFeatureHeader struct {
	Argsz uint32
	Flags uint32
}

// FeatureMigrationData is struct vfio_device_feature_migration.
type FeatureMigrationData struct {
	Flags uint64
}

// FeatureMigState is struct vfio_device_feature_mig_state.
type FeatureMigState struct {
	DeviceState uint32
	DataFD      int32
}

// migrationFeature is a feature header followed by its migration data.
type migrationFeature struct {
	DeviceFeatureHeader
	FeatureMigrationData
}

// migStateFeature is a feature header followed by a state.
type migStateFeature struct {
	DeviceFeatureHeader
	FeatureMigState
}

// GetMigrationFlags is VFIO_DEVICE_FEATURE GET of the migration feature:
// the device's migration flags. A device without migration fails with
// ENOTTY.
func GetMigrationFlags(dev int) (uint64, error) {
	f := migrationFeature{DeviceFeatureHeader: DeviceFeatureHeader{
		Argsz: uint32(unsafe.Sizeof(migrationFeature{})), Flags: FeatureGet | FeatureMigration}}
	if _, err := ioctlPtr(dev, DeviceFeature, unsafe.Pointer(&f)); err != nil {
		return 0, err
	}
	return f.FeatureMigrationData.Flags, nil
}

// SetMigState is VFIO_DEVICE_FEATURE SET of the device state: it moves
// the device to state and returns the data fd the kernel hands out for
// STOP_COPY and RESUMING (-1 for the other states).
func SetMigState(dev int, state uint32) (int, error) {
	f := migStateFeature{
		DeviceFeatureHeader: DeviceFeatureHeader{Argsz: uint32(unsafe.Sizeof(migStateFeature{})), Flags: FeatureSet | FeatureMigDeviceState},
		FeatureMigState:     FeatureMigState{DeviceState: state, DataFD: -1},
	}
	if _, err := ioctlPtr(dev, DeviceFeature, unsafe.Pointer(&f)); err != nil {
		return -1, err
	}
	return int(f.DataFD), nil
}

// GetMigState is VFIO_DEVICE_FEATURE GET of the device state.
func GetMigState(dev int) (uint32, error) {
	f := migStateFeature{
		DeviceFeatureHeader: DeviceFeatureHeader{Argsz: uint32(unsafe.Sizeof(migStateFeature{})), Flags: FeatureGet | FeatureMigDeviceState},
		FeatureMigState:     FeatureMigState{DataFD: -1},
	}
	if _, err := ioctlPtr(dev, DeviceFeature, unsafe.Pointer(&f)); err != nil {
		return DeviceStateError, err
	}
	return f.DeviceState, nil
}

// Device DMA logging features (the device tracks the pages it writes by
// DMA, for a live migration's dirty pages).
const (
	FeatureDMALoggingStart  = 6
	FeatureDMALoggingStop   = 7
	FeatureDMALoggingReport = 8
)

// DMALoggingControl is struct vfio_device_feature_dma_logging_control.
type DMALoggingControl struct {
	PageSize  uint64
	NumRanges uint32
	Reserved  uint32
	Ranges    uint64 // pointer to []DMALoggingRange
}

// DMALoggingRange is struct vfio_device_feature_dma_logging_range.
type DMALoggingRange struct {
	IOVA   uint64
	Length uint64
}

// DMALoggingReport is struct vfio_device_feature_dma_logging_report.
type DMALoggingReport struct {
	IOVA     uint64
	Length   uint64
	PageSize uint64
	Bitmap   uint64 // pointer to []uint64
}

type dmaLoggingControlFeature struct {
	DeviceFeatureHeader
	DMALoggingControl
}

type dmaLoggingReportFeature struct {
	DeviceFeatureHeader
	DMALoggingReport
}

// StartDMALogging is VFIO_DEVICE_FEATURE SET of DMA_LOGGING_START over
// ranges, asking for pageSize granularity; it returns the page size the
// driver chose.
func StartDMALogging(dev int, pageSize uint64, ranges []DMALoggingRange) (uint64, error) {
	if len(ranges) == 0 {
		return 0, fmt.Errorf("DMA logging over no range")
	}
	f := dmaLoggingControlFeature{
		DeviceFeatureHeader: DeviceFeatureHeader{Argsz: uint32(unsafe.Sizeof(dmaLoggingControlFeature{})), Flags: FeatureSet | FeatureDMALoggingStart},
		DMALoggingControl:   DMALoggingControl{PageSize: pageSize, NumRanges: uint32(len(ranges)), Ranges: uint64(uintptr(unsafe.Pointer(&ranges[0])))},
	}
	_, err := ioctlPtr(dev, DeviceFeature, unsafe.Pointer(&f))
	runtime.KeepAlive(ranges)
	return f.PageSize, err
}

// StopDMALogging is VFIO_DEVICE_FEATURE SET of DMA_LOGGING_STOP.
func StopDMALogging(dev int) error {
	h := DeviceFeatureHeader{Argsz: uint32(unsafe.Sizeof(DeviceFeatureHeader{})), Flags: FeatureSet | FeatureDMALoggingStop}
	_, err := ioctlPtr(dev, DeviceFeature, unsafe.Pointer(&h))
	return err
}

// ReportDMALogging is VFIO_DEVICE_FEATURE GET of DMA_LOGGING_REPORT: it
// ORs into bitmap (bit i: the page at iova + i*pageSize) the pages the
// device wrote in [iova, iova+length) since the last report, and clears
// them in the device's log.
func ReportDMALogging(dev int, iova, length, pageSize uint64, bitmap []uint64) error {
	if uint64(len(bitmap))*64 < (length+pageSize-1)/pageSize {
		return fmt.Errorf("DMA logging report: a bitmap of %d words for %#x bytes of %#x-byte pages", len(bitmap), length, pageSize)
	}
	f := dmaLoggingReportFeature{
		DeviceFeatureHeader: DeviceFeatureHeader{Argsz: uint32(unsafe.Sizeof(dmaLoggingReportFeature{})), Flags: FeatureGet | FeatureDMALoggingReport},
		DMALoggingReport:    DMALoggingReport{IOVA: iova, Length: length, PageSize: pageSize, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))},
	}
	_, err := ioctlPtr(dev, DeviceFeature, unsafe.Pointer(&f))
	runtime.KeepAlive(bitmap)
	return err
}
