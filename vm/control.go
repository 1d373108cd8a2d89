package vm

import (
	"errors"
	"fmt"
	"sync"

	"govmm/accel"
)

// ErrStopped is returned by control operations on a VM that has ended.
var ErrStopped = errors.New("the VM has stopped")

// control parks the vCPU threads for pause, snapshot and migration. A
// paused vCPU waits on its own locked thread, where the controller can run
// state accessors (some accelerators want vCPU calls from the vCPU's thread).
type control struct {
	mu        sync.Mutex
	requested bool
	resume    chan struct{}
	parked    chan struct{}   // one token per vCPU that parked
	calls     []chan vcpuCall // per vCPU
}

type vcpuCall struct {
	fn   func(accel.VCPU) error
	done chan error
}

func (v *VM) initControl() {
	v.ctl.parked = make(chan struct{}, v.cfg.NumCPUs)
	v.ctl.calls = make([]chan vcpuCall, v.cfg.NumCPUs)
	for i := range v.ctl.calls {
		v.ctl.calls[i] = make(chan vcpuCall)
	}
}

// maybePark blocks the calling vCPU thread while a pause is in effect.
func (v *VM) maybePark(index int, c accel.VCPU) {
	v.ctl.mu.Lock()
	if !v.ctl.requested {
		v.ctl.mu.Unlock()
		return
	}
	resume := v.ctl.resume
	v.ctl.mu.Unlock()
	v.ctl.parked <- struct{}{}
	for {
		select {
		case call := <-v.ctl.calls[index]:
			call.done <- call.fn(c)
		case <-resume:
			return
		case <-v.stopped:
			return
		}
	}
}

// Pause stops every vCPU outside the guest and freezes guest time. It
// returns once all vCPUs are parked.
func (v *VM) Pause() error {
	v.ctl.mu.Lock()
	if v.ctl.requested {
		v.ctl.mu.Unlock()
		return nil
	}
	v.ctl.requested = true
	v.ctl.resume = make(chan struct{})
	v.ctl.mu.Unlock()
	for _, c := range v.vcpuList() {
		c.Kick()
	}
	for i := 0; i < v.cfg.NumCPUs; i++ {
		select {
		case <-v.ctl.parked:
		case <-v.stopped:
			return ErrStopped
		}
	}
	if err := v.avm.Pause(); err != nil {
		v.Resume()
		return fmt.Errorf("pause guest time: %w", err)
	}
	v.plat.pauseDevices()
	v.paused.Store(true)
	return nil
}

// Resume lets paused vCPUs run again.
func (v *VM) Resume() error {
	v.ctl.mu.Lock()
	defer v.ctl.mu.Unlock()
	if !v.ctl.requested {
		return nil
	}
	var err error
	if v.paused.Load() {
		v.plat.resumeDevices()
		err = v.avm.Resume()
		v.paused.Store(false)
	}
	v.ctl.requested = false
	close(v.ctl.resume)
	return err
}

// Paused reports whether the VM is paused.
func (v *VM) Paused() bool { return v.paused.Load() }

// onVCPU runs fn with vCPU index on that vCPU's thread. The VM must be paused.
func (v *VM) onVCPU(index int, fn func(accel.VCPU) error) error {
	if !v.paused.Load() {
		return errors.New("vCPU state is only reachable while the VM is paused")
	}
	call := vcpuCall{fn: fn, done: make(chan error, 1)}
	select {
	case v.ctl.calls[index] <- call:
	case <-v.stopped:
		return ErrStopped
	}
	select {
	case err := <-call.done:
		return err
	case <-v.stopped:
		return ErrStopped
	}
}
