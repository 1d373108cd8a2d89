package mshvsim

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStatusErrnos: the errno of each hypervisor status is the one
// upstream hv_result_to_errno (drivers/hv/hv_common.c) takes from
// hv_status_infos[] (INSUFFICIENT_MEMORY: EAGAIN, after the pass-through
// deposited a page, mshv_ioctl_passthru_hvcall in mshv_root_main.c).
func TestStatusErrnos(t *testing.T) {
	for st, want := range map[uint16]error{
		0:      nil,
		2:      unix.EINVAL, // INVALID_HYPERCALL_CODE
		3:      unix.EINVAL, // INVALID_HYPERCALL_INPUT
		4:      unix.EIO,    // INVALID_ALIGNMENT
		5:      unix.EINVAL, // INVALID_PARAMETER
		6:      unix.EIO,    // ACCESS_DENIED
		7:      unix.EIO,    // INVALID_PARTITION_STATE
		8:      unix.EIO,    // OPERATION_DENIED
		9:      unix.EIO,    // UNKNOWN_PROPERTY
		0xA:    unix.EIO,    // PROPERTY_VALUE_OUT_OF_RANGE
		0xB:    unix.EAGAIN, // INSUFFICIENT_MEMORY (deposited, retry)
		0xD:    unix.EINVAL, // INVALID_PARTITION_ID
		0xE:    unix.EINVAL, // INVALID_VP_INDEX
		0x10:   unix.EIO,    // NOT_FOUND
		0x11:   unix.EINVAL, // INVALID_PORT_ID
		0x12:   unix.EINVAL, // INVALID_CONNECTION_ID
		0x13:   unix.EIO,    // INSUFFICIENT_BUFFERS
		0x15:   unix.EIO,    // INVALID_VP_STATE
		0x20:   unix.EIO,    // PROCESSOR_FEATURE_NOT_SUPPORTED
		0x41:   unix.EINVAL, // INVALID_LP_INDEX (its first entry)
		0x50:   unix.EINVAL, // INVALID_REGISTER_VALUE (its first entry)
		0x71:   unix.EIO,    // OPERATION_FAILED
		0x78:   unix.EIO,    // TIME_OUT
		0x1234: unix.EIO,    // not in the table
	} {
		if got := statusErrno(st); !errors.Is(got, want) || (want == nil) != (got == nil) {
			t.Errorf("status %#x: errno %v, want %v", st, got, want)
		}
	}
}
