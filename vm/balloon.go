package vm

import (
	"errors"
	"fmt"
	"time"

	"govmm/virtio/balloon"
)

// ErrNoBalloon is returned by SetBalloonTarget on a VM without --balloon.
var ErrNoBalloon = errors.New("this VM has no balloon device (start it with --balloon)")

// balloonDevice is the VM's virtio balloon, or nil.
func (v *VM) balloonDevice() *balloon.Device {
	if v.plat == nil || v.plat.virtioSet == nil {
		return nil
	}
	return v.plat.virtioSet.Balloon
}

// BalloonInfo is the VM's balloon; ok is false without one.
func (v *VM) BalloonInfo() (i balloon.Info, ok bool) {
	d := v.balloonDevice()
	if d == nil {
		return i, false
	}
	return d.Info(), true
}

// SetBalloonTarget sets how much guest RAM the balloon should take from
// the guest, in bytes (rounded down to 4 KiB pages), and raises the
// configuration interrupt; 0 gives it all back. The guest's driver then
// inflates or deflates towards it at its own pace.
func (v *VM) SetBalloonTarget(bytes uint64) error {
	d := v.balloonDevice()
	if d == nil {
		return ErrNoBalloon
	}
	if bytes > v.mem.Size() {
		return &InputError{Err: fmt.Errorf("balloon target %d MiB is more than the guest's %d MiB of RAM", bytes>>20, v.mem.Size()>>20)}
	}
	d.SetTarget(uint32(bytes / balloon.PageSize))
	return nil
}

// RequestBalloonStats asks the guest for fresh memory statistics and
// waits up to wait for them (balloon.Device.RequestStats); false without
// a balloon, without statistics, or when none came in time.
func (v *VM) RequestBalloonStats(wait time.Duration) bool {
	d := v.balloonDevice()
	return d != nil && d.RequestStats(wait)
}
