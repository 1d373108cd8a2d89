package vm

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"govmm/accel"
	"govmm/devices/bus"
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
	parked    chan int        // the index of each vCPU that parked, per pause request
	calls     []chan vcpuCall // per vCPU
	activity  []vcpuActivity  // per vCPU
}

// PauseBound is how long Pause waits for every vCPU to stop. A vCPU thread
// stops between guest entries; one that stays in a device handler (a
// console write to a pipe nobody reads, say) or in the accelerator's run
// call past a kick would otherwise hang the pause, and the snapshot,
// migration or `govmm info` waiting on it, for good.
const PauseBound = 15 * time.Second

// vcpuActivity is where a vCPU thread is, as the VMM sees it, for the
// error of a pause that timed out: in the accelerator's run call, or in a
// port-I/O or MMIO handler and on which address. seq counts the handler
// calls, so that a pause that finds it unchanged knows the vCPU sat there
// for the whole wait. Atomic stores only: this is on every I/O exit.
type vcpuActivity struct {
	what atomic.Uint32
	addr atomic.Uint64
	seq  atomic.Uint64
}

const (
	actStarting uint32 = iota // not yet in its run loop
	actRun                    // in the accelerator's run call (the guest, or the kernel)
	actPIORead
	actPIOWrite
	actMMIORead
	actMMIOWrite
	actExit // acting on an exit Run returned
)

func (a *vcpuActivity) set(what uint32, addr uint64) {
	a.seq.Add(1)
	a.addr.Store(addr)
	a.what.Store(what)
}

// describe says where the vCPU is; moved says whether it made I/O exits
// since seq was seqAtStart.
func (a *vcpuActivity) describe(seqAtStart uint64) string {
	addr := a.addr.Load()
	var where string
	switch a.what.Load() {
	case actStarting:
		return "it has not reached its run loop (still being created or restored)"
	case actRun:
		where = "in the accelerator's run call (guest mode or the kernel), which a kick did not end"
	case actPIORead:
		where = fmt.Sprintf("in the VMM, handling a port-I/O read of %#x", addr)
	case actPIOWrite:
		where = fmt.Sprintf("in the VMM, handling a port-I/O write to %#x", addr)
	case actMMIORead:
		where = fmt.Sprintf("in the VMM, handling an MMIO read of GPA %#x", addr)
	case actMMIOWrite:
		where = fmt.Sprintf("in the VMM, handling an MMIO write to GPA %#x", addr)
	case actExit:
		where = "in the VMM, acting on an exit"
	}
	if a.seq.Load() == seqAtStart {
		return "it is " + where + " and has been since the pause began"
	}
	return "it is " + where + " (it made I/O exits during the wait)"
}

// ioHandler completes a vCPU's port I/O and MMIO on the VM's buses,
// recording what the vCPU is in for a pause that times out.
type ioHandler struct {
	pio, mmio *bus.Bus
	act       *vcpuActivity
}

func (h ioHandler) PIORead(port uint16, data []byte) {
	h.act.set(actPIORead, uint64(port))
	h.pio.Read(uint64(port), data)
	h.act.what.Store(actRun)
}

func (h ioHandler) PIOWrite(port uint16, data []byte) {
	h.act.set(actPIOWrite, uint64(port))
	h.pio.Write(uint64(port), data)
	h.act.what.Store(actRun)
}

func (h ioHandler) MMIORead(addr uint64, data []byte) {
	h.act.set(actMMIORead, addr)
	h.mmio.Read(addr, data)
	h.act.what.Store(actRun)
}

func (h ioHandler) MMIOWrite(addr uint64, data []byte) {
	h.act.set(actMMIOWrite, addr)
	h.mmio.Write(addr, data)
	h.act.what.Store(actRun)
}

type vcpuCall struct {
	fn   func(accel.VCPU) error
	done chan error
}

func (v *VM) initControl() {
	v.ctl.calls = make([]chan vcpuCall, v.cfg.NumCPUs)
	v.ctl.activity = make([]vcpuActivity, v.cfg.NumCPUs)
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
	resume, parked := v.ctl.resume, v.ctl.parked
	v.ctl.mu.Unlock()
	parked <- index
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
// returns once all vCPUs are parked, or fails after PauseBound.
func (v *VM) Pause() error { return v.PauseWithin(PauseBound) }

// PauseWithin is Pause with its own bound. When a vCPU has not stopped
// within bound the pause is called off (the vCPUs that did stop run on)
// and the error says, for each vCPU that did not, where it is.
func (v *VM) PauseWithin(bound time.Duration) error {
	v.ctl.mu.Lock()
	if v.ctl.requested {
		v.ctl.mu.Unlock()
		return nil
	}
	v.ctl.requested = true
	v.ctl.resume = make(chan struct{})
	// A fresh channel per request: a vCPU that parks after a timed-out
	// request was called off leaves its token where no later pause counts it.
	parked := make(chan int, v.cfg.NumCPUs)
	v.ctl.parked = parked
	v.ctl.mu.Unlock()
	seqs := make([]uint64, len(v.ctl.activity))
	for i := range v.ctl.activity {
		seqs[i] = v.ctl.activity[i].seq.Load()
	}
	for _, c := range v.vcpuList() {
		c.Kick()
	}
	timer := time.NewTimer(bound)
	defer timer.Stop()
	stopped := make([]bool, v.cfg.NumCPUs)
	for n := 0; n < v.cfg.NumCPUs; n++ {
		select {
		case i := <-parked:
			stopped[i] = true
		case <-v.stopped:
			return ErrStopped
		case <-timer.C:
			var stuck []string
			for i, ok := range stopped {
				if !ok {
					stuck = append(stuck, fmt.Sprintf("vCPU %d: %s", i, v.ctl.activity[i].describe(seqs[i])))
				}
			}
			v.Resume()
			return fmt.Errorf("pause: %d of %d vCPUs did not stop within %v, so the VM runs on unpaused; %s",
				len(stuck), v.cfg.NumCPUs, bound, strings.Join(stuck, "; "))
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
