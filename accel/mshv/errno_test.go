package mshv

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
)

// TestNotSupported: only the kernel's own refusals mean "not offered":
// ENOTTY (mainline mshv_dev_ioctl, drivers/hv/mshv_root_main.c, knows
// only MSHV_CREATE_PARTITION) and an EINVAL with no hypervisor status
// (mshv_ioctl_passthru_hvcall's allow-list, the pt_flags mask). An errno
// that carries a hypervisor status is the hypervisor answering: EIO for
// UNKNOWN_PROPERTY or ACCESS_DENIED, EINVAL for INVALID_PARAMETER, as
// hv_status_infos[] in drivers/hv/hv_common.c maps them.
func TestNotSupported(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{unix.ENOTTY, true},
		{unix.EINVAL, true},
		{fmt.Errorf("get property: %w", &HvcallError{Code: mshvabi.HvcallGetPartitionPropertyEx, Err: unix.EINVAL}), true},
		{fmt.Errorf("get property: %w", &HvcallError{Code: mshvabi.HvcallGetPartitionProperty, Status: 9, Err: unix.EIO}), false},
		{&HvcallError{Code: mshvabi.HvcallGetPartitionProperty, Status: 6, Err: unix.EIO}, false},
		{&HvcallError{Code: mshvabi.HvcallGetPartitionProperty, Status: 5, Err: unix.EINVAL}, false},
		{unix.EIO, false},
		{unix.EACCES, false},
	} {
		if got := notSupported(c.err); got != c.want {
			t.Errorf("notSupported(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
