package vfio

import (
	"errors"
	"fmt"
	"io"
	mbits "math/bits"
	"os"

	"golang.org/x/sys/unix"

	"govmm/vfio/abi"
)

// VFIO migration v2: a device whose driver implements it (the flags of
// VFIO_DEVICE_FEATURE_MIGRATION include STOP_COPY) is stopped, its state
// read from the data fd the STOP_COPY state hands out, and on the
// destination written to the fd of the RESUMING state. govmm uses the
// arcs every such driver has (drivers/vfio/vfio_main.c,
// vfio_mig_get_next_state): RUNNING -> STOP -> STOP_COPY -> STOP ->
// RUNNING on the source, RUNNING -> STOP -> RESUMING -> STOP -> RUNNING
// on the destination. The device's data is opaque to govmm; its driver
// checks it when RESUMING ends.
//
// A device whose flags include PRE_COPY is read while it still runs in a
// live migration: RUNNING -> PRE_COPY when the copy of guest RAM starts,
// its data fd read as far as VFIO_MIG_GET_PRECOPY_INFO says it can be
// (initial_bytes + dirty_bytes) during the rounds, then, with the guest
// paused, PRE_COPY -> STOP_COPY (the core passes through PRE_COPY_P2P
// when the device has P2P) and the same data fd read to its end: the
// kernel hands out no new one on that arc. The destination writes the
// two parts back to back in RESUMING, as one stream. A migration that
// fails before the pause goes PRE_COPY -> RUNNING, which ends the data
// transfer session. Snapshots use STOP_COPY only.

// MaxMigrationData bounds the state read from a device: a driver's
// STOP_COPY data is its registers and queues, not its memory.
const MaxMigrationData = 256 << 20

// migState names a device migration state, for errors.
func migState(s uint32) string {
	switch s {
	case abi.DeviceStateError:
		return "ERROR"
	case abi.DeviceStateStop:
		return "STOP"
	case abi.DeviceStateRunning:
		return "RUNNING"
	case abi.DeviceStateStopCopy:
		return "STOP_COPY"
	case abi.DeviceStateResuming:
		return "RESUMING"
	case abi.DeviceStateRunningP2P:
		return "RUNNING_P2P"
	case abi.DeviceStatePreCopy:
		return "PRE_COPY"
	case abi.DeviceStatePreCopyP2P:
		return "PRE_COPY_P2P"
	}
	return fmt.Sprintf("state %d", s)
}

// MigrationFlags returns the device's VFIO migration flags
// (abi.MigrationStopCopy, ...); 0 when its driver has no migration
// support.
func (d *Device) MigrationFlags() uint64 {
	d.migOnce.Do(func() {
		f, err := abi.GetMigrationFlags(d.fd)
		if err == nil {
			d.migFlags = f
		}
	})
	return d.migFlags
}

// Migratable reports whether the device can be migrated (STOP_COPY).
func (d *Device) Migratable() bool { return d.MigrationFlags()&abi.MigrationStopCopy != 0 }

// setState moves the device to state s and returns the data fd the
// kernel hands out (as an *os.File; nil for states without one).
func (d *Device) setState(s uint32) (*os.File, error) {
	from := d.migCur
	fd, err := abi.SetMigState(d.fd, s)
	if err != nil {
		// The driver may have stopped part way, or in ERROR; ask.
		if cur, gerr := abi.GetMigState(d.fd); gerr == nil {
			d.migCur = cur
		}
		return nil, fmt.Errorf("vfio device %s: migration state %s -> %s: %w (now %s)", d.Addr, migState(from), migState(s), err, migState(d.migCur))
	}
	d.migCur = s
	if fd < 0 {
		return nil, nil
	}
	return os.NewFile(uintptr(fd), "vfio-migration-"+d.Addr), nil
}

// SaveMigration stops the device and returns its migration data: STOP,
// STOP_COPY, the data fd read to its end, STOP. The device stays stopped
// until Run. The guest's vCPUs must be paused: a stopped device takes no
// access.
func (d *Device) SaveMigration() ([]byte, error) {
	if !d.Migratable() {
		return nil, fmt.Errorf("vfio device %s has no VFIO migration support (its driver offers no STOP_COPY)", d.Addr)
	}
	d.migMu.Lock()
	defer d.migMu.Unlock()
	if d.migCur == abi.DeviceStateRunning {
		if _, err := d.setState(abi.DeviceStateStop); err != nil {
			return nil, err
		}
	}
	limit := int64(MaxMigrationData)
	pre := d.preFile
	d.preFile = nil
	if pre != nil {
		limit -= int64(d.preRead)
	}
	f, err := d.setState(abi.DeviceStateStopCopy)
	if err != nil {
		if pre != nil {
			pre.Close()
		}
		return nil, err
	}
	switch {
	case f == nil && pre != nil:
		// PRE_COPY -> STOP_COPY goes on with the pre-copy data fd.
		f = pre
	case pre != nil:
		pre.Close()
	case f == nil:
		return nil, fmt.Errorf("vfio device %s: STOP_COPY gave no data fd", d.Addr)
	}
	data, rerr := io.ReadAll(io.LimitReader(f, limit+1))
	f.Close()
	if rerr == nil && int64(len(data)) > limit {
		rerr = fmt.Errorf("more than %d MiB of state", MaxMigrationData>>20)
	}
	if _, err := d.setState(abi.DeviceStateStop); err != nil {
		return nil, errors.Join(rerr, err)
	}
	if rerr != nil {
		return nil, fmt.Errorf("vfio device %s: read its migration data: %w", d.Addr, rerr)
	}
	return data, nil
}

// LoadMigration loads migration data into the device: STOP, RESUMING,
// the data written to the data fd, STOP (when the driver checks it). The
// device stays stopped until Run. On failure the device is reset when it
// can be, or left to its driver, and the data is refused whole.
func (d *Device) LoadMigration(data []byte) error {
	if !d.Migratable() {
		return fmt.Errorf("vfio device %s has no VFIO migration support (its driver offers no STOP_COPY), so it cannot take the saved device's state", d.Addr)
	}
	d.migMu.Lock()
	defer d.migMu.Unlock()
	if d.migCur == abi.DeviceStateRunning {
		if _, err := d.setState(abi.DeviceStateStop); err != nil {
			return err
		}
	}
	f, err := d.setState(abi.DeviceStateResuming)
	if err != nil {
		return err
	}
	if f == nil {
		return fmt.Errorf("vfio device %s: RESUMING gave no data fd", d.Addr)
	}
	n, werr := f.Write(data)
	f.Close()
	if werr == nil && n != len(data) {
		werr = fmt.Errorf("wrote %d of %d bytes", n, len(data))
	}
	if werr != nil {
		d.abandonLocked()
		return fmt.Errorf("vfio device %s: its driver refused the saved state (%d bytes): %w", d.Addr, len(data), werr)
	}
	if _, err := d.setState(abi.DeviceStateStop); err != nil {
		d.abandonLocked()
		return fmt.Errorf("vfio device %s: its driver refused the saved state (%d bytes) when loading it: %w", d.Addr, len(data), err)
	}
	return nil
}

// abandonLocked gets a device out of a failed load: a reset (which
// returns a migratable device to RUNNING), else back to RUNNING.
func (d *Device) abandonLocked() {
	if d.CanReset() {
		if abi.ResetDevice(d.fd) == nil {
			d.migCur = abi.DeviceStateRunning
			return
		}
	}
	if _, err := abi.SetMigState(d.fd, abi.DeviceStateRunning); err == nil {
		d.migCur = abi.DeviceStateRunning
	} else if cur, err := abi.GetMigState(d.fd); err == nil {
		d.migCur = cur
	}
}

// Run returns a stopped device to RUNNING (after SaveMigration, when the
// guest resumes, or after LoadMigration, when it first runs), and a
// device in PRE_COPY too (a live migration that failed: EndPreCopy). A
// device that is already running, or was never stopped, is left alone.
func (d *Device) Run() error {
	d.migMu.Lock()
	defer d.migMu.Unlock()
	if d.migCur == abi.DeviceStateRunning {
		return nil
	}
	_, err := d.setState(abi.DeviceStateRunning)
	if d.preFile != nil {
		d.preFile.Close()
		d.preFile = nil
	}
	return err
}

// PreCopyCapable reports whether the device can be read while it runs
// (its driver offers PRE_COPY along with STOP_COPY).
func (d *Device) PreCopyCapable() bool {
	f := d.MigrationFlags()
	return f&abi.MigrationStopCopy != 0 && f&abi.MigrationPreCopy != 0
}

// StartPreCopy moves the running device to PRE_COPY and keeps the data
// fd it hands out, for ReadPreCopy and then SaveMigration.
func (d *Device) StartPreCopy() error {
	if !d.PreCopyCapable() {
		return fmt.Errorf("vfio device %s has no PRE_COPY", d.Addr)
	}
	d.migMu.Lock()
	defer d.migMu.Unlock()
	if d.migCur != abi.DeviceStateRunning {
		return fmt.Errorf("vfio device %s: PRE_COPY from %s: the device is not running", d.Addr, migState(d.migCur))
	}
	f, err := d.setState(abi.DeviceStatePreCopy)
	if err != nil {
		return err
	}
	if f == nil {
		d.abandonLocked()
		return fmt.Errorf("vfio device %s: PRE_COPY gave no data fd", d.Addr)
	}
	d.preFile, d.preRead = f, 0
	return nil
}

// ReadPreCopy returns what the device in PRE_COPY offers now: as many
// bytes as VFIO_MIG_GET_PRECOPY_INFO reports (initial_bytes plus
// dirty_bytes), read from the data fd; nothing when that is 0 or the
// device is not in PRE_COPY.
func (d *Device) ReadPreCopy() ([]byte, error) {
	d.migMu.Lock()
	defer d.migMu.Unlock()
	f := d.preFile
	if f == nil {
		return nil, nil
	}
	info, err := abi.GetPrecopyInfo(int(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("vfio device %s: VFIO_MIG_GET_PRECOPY_INFO: %w", d.Addr, err)
	}
	n := info.InitialBytes + info.DirtyBytes
	if n == 0 {
		return nil, nil
	}
	if d.preRead+n > MaxMigrationData {
		return nil, fmt.Errorf("vfio device %s: more than %d MiB of pre-copy state (%d read, %d more offered)", d.Addr, MaxMigrationData>>20, d.preRead, n)
	}
	buf := make([]byte, n)
	got := 0
	for got < len(buf) {
		k, err := f.Read(buf[got:])
		got += k
		if errors.Is(err, io.EOF) || errors.Is(err, unix.ENOMSG) || k == 0 && err == nil {
			// The temporary end of the pre-copy stream: the estimate
			// was high.
			break
		}
		if err != nil {
			return nil, fmt.Errorf("vfio device %s: read pre-copy data: %w", d.Addr, err)
		}
	}
	d.preRead += uint64(got)
	return buf[:got], nil
}

// EndPreCopy returns a device in PRE_COPY to RUNNING (a live migration
// that failed before the device stopped), which ends its data transfer
// session; a device in any other state is left alone.
func (d *Device) EndPreCopy() error {
	d.migMu.Lock()
	defer d.migMu.Unlock()
	if d.preFile == nil {
		return nil
	}
	d.preFile.Close()
	d.preFile = nil
	if d.migCur != abi.DeviceStatePreCopy {
		return nil
	}
	_, err := d.setState(abi.DeviceStateRunning)
	return err
}

// DirtyRange is guest RAM a device's DMA logging covers (IOVA = GPA).
type DirtyRange struct{ GPA, Size uint64 }

// StartDMALogging has the device log the pages it writes by DMA in
// ranges (VFIO_DEVICE_FEATURE_DMA_LOGGING_START), for a live migration:
// those writes are in no accelerator's dirty log. When the device cannot
// log them, or the kernel cannot report its log (the report needs
// iommufd's iova_bitmap, which a kernel without CONFIG_IOMMUFD_DRIVER
// lacks: EOPNOTSUPP), every page of ranges counts as written once the
// device has stopped (DMADirty), which is correct and costs the downtime
// a copy of all guest RAM. It returns why, in that case.
func (d *Device) StartDMALogging(ranges []DirtyRange) (fallback error) {
	var rs []abi.DMALoggingRange
	for _, r := range ranges {
		rs = append(rs, abi.DMALoggingRange{IOVA: r.GPA, Length: r.Size})
	}
	ps := uint64(os.Getpagesize())
	d.migMu.Lock()
	defer d.migMu.Unlock()
	d.dmaRanges, d.dmaPage, d.dmaAll, d.dmaStarted = ranges, ps, false, false
	// Reports are asked for in host pages whatever granularity the
	// driver chose to track in (it replicates bits to fit).
	if _, err := abi.StartDMALogging(d.fd, ps, rs); err != nil {
		d.dmaAll = true
		return fmt.Errorf("vfio device %s: start DMA logging: %w", d.Addr, err)
	}
	d.dmaStarted = true
	// A report of one page tells whether the kernel can report at all.
	if len(ranges) > 0 {
		if err := abi.ReportDMALogging(d.fd, ranges[0].GPA, ps, ps, make([]uint64, 1)); err != nil {
			d.dmaAll = true
			return fmt.Errorf("vfio device %s: DMA logging report: %w", d.Addr, err)
		}
	}
	return nil
}

// DMADirty calls mark for every page the device wrote since the last
// call (or StartDMALogging), a run of pages at a time. Without a usable
// DMA log it marks every page of the ranges once the device is stopped
// (after SaveMigration) and nothing before.
func (d *Device) DMADirty(mark func(gpa, size uint64)) error {
	d.migMu.Lock()
	ranges, ps, all := d.dmaRanges, d.dmaPage, d.dmaAll
	stopped := d.migCur == abi.DeviceStateStop || d.migCur == abi.DeviceStateStopCopy
	d.migMu.Unlock()
	if all {
		if stopped {
			for _, r := range ranges {
				mark(r.GPA, r.Size)
			}
		}
		return nil
	}
	for _, r := range ranges {
		n := (r.Size + ps - 1) / ps
		bm := make([]uint64, (n+63)/64)
		if err := abi.ReportDMALogging(d.fd, r.GPA, r.Size, ps, bm); err != nil {
			return fmt.Errorf("vfio device %s: DMA logging report of %#x-%#x: %w", d.Addr, r.GPA, r.GPA+r.Size, err)
		}
		for w, bm := range bm {
			for word := bm; word != 0; word &= word - 1 {
				i := uint64(w)*64 + uint64(mbits.TrailingZeros64(word))
				mark(r.GPA+i*ps, ps)
			}
		}
	}
	return nil
}

// StopDMALogging ends DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP).
func (d *Device) StopDMALogging() error {
	d.migMu.Lock()
	on := d.dmaStarted
	d.dmaRanges, d.dmaStarted, d.dmaAll = nil, false, false
	d.migMu.Unlock()
	if !on {
		return nil
	}
	if err := abi.StopDMALogging(d.fd); err != nil {
		return fmt.Errorf("vfio device %s: stop DMA logging: %w", d.Addr, err)
	}
	return nil
}
