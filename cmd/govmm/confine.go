//go:build !arm64

package main

import (
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"govmm/confine"
	"govmm/virtio/devices"
)

func init() {
	// The main goroutine keeps the main thread for the process's life
	// (an init that locks it has main run on it, and no other goroutine
	// runs there). A vCPU goroutine ends locked to its thread, under its
	// own filter (vm.SetVCPUThread); on the main thread the runtime
	// would park that thread forever instead of ending it, and
	// /proc/PID/status, which is the main thread's, would show the vCPU
	// filter.
	runtime.LockOSThread()
}

// registerConfine adds the confinement flags (run, restore, migrate
// receive).
func (f *runFlags) registerConfine(fs *flag.FlagSet) {
	fs.StringVar(&f.seccomp, "seccomp", "on", "seccomp filters once the VM is built: on (a system call outside govmm's allowlist stops the process, naming it and the thread; vCPU threads have a narrower allowlist of their own), log (the kernel logs such calls and lets them through), process (on, without the vCPU and device threads' own allowlists) or off")
	fs.StringVar(&f.landlock, "landlock", "on", "Landlock once the VM is built: on (no file-system access but --snapshot-dir; best effort on kernels without Landlock) or off")
	fs.StringVar(&f.snapshotDir, "snapshot-dir", "", "with --landlock=on, the directory snapshots may be written under (govmm snapshot --dir); default: the --api-socket's directory")
}

// checkConfine validates the confinement flags before anything is opened.
func (f *runFlags) checkConfine() error {
	if _, err := confine.ParseSeccomp(f.seccomp); err != nil {
		return fail(exitUsage, "--seccomp %v", err)
	}
	if _, err := confine.ParseLandlock(f.landlock); err != nil {
		return fail(exitUsage, "--landlock %v", err)
	}
	if f.snapshotDir != "" {
		if err := confine.CheckDir(f.snapshotDir); err != nil {
			return fail(exitUsage, "--snapshot-dir %s: %v", f.snapshotDir, err)
		}
		abs, err := filepath.Abs(f.snapshotDir)
		if err != nil {
			return fail(exitUsage, "--snapshot-dir %s: %v", f.snapshotDir, err)
		}
		f.snapshotDir = abs
	}
	return nil
}

// landlockWriteDir is the directory Landlock leaves writable: where
// snapshots may go. Without a control socket no snapshot can be asked
// for, so nothing is writable.
func (f *runFlags) landlockWriteDir() string {
	if f.landlock != "on" || f.apiSocket == "" {
		return ""
	}
	if f.snapshotDir != "" {
		return f.snapshotDir
	}
	dir, err := filepath.Abs(filepath.Dir(f.apiSocket))
	if err != nil {
		return ""
	}
	return dir
}

// confine applies the confinement the flags ask for.
func (f *runFlags) confine(log *slog.Logger) error {
	mode, _ := confine.ParseSeccomp(f.seccomp)
	o := confine.Options{Seccomp: mode, Landlock: f.landlock == "on", WriteDir: f.landlockWriteDir(), VCPUDeviceIO: f.vcpuDeviceIO()}
	if f.apiSocket != "" {
		// The socket is unlinked when the VM ends.
		o.RemoveDirs = append(o.RemoveDirs, filepath.Dir(f.apiSocket))
	}
	begin := time.Now()
	rep, err := confine.Apply(o)
	if err != nil {
		return fmt.Errorf("confine the VMM: %w", err)
	}
	log.Info("confined", "seccomp", rep.Seccomp, "landlock", rep.Landlock, "ms", ms(time.Since(begin)))
	vmmConfined.Store(true)
	return nil
}

// vmmConfined is set once confine has applied the process filter: a
// thread may add its own filter only after that (the process filter's
// TSYNC fails on a thread with a filter of its own).
var vmmConfined atomic.Bool

// diskWorkerHook is what each virtio-blk worker thread runs before its
// first request (devices.Config.DiskWorkerThread): the disk workers' own,
// narrower filter. nil with --seccomp=off or process. A worker whose
// first request came before the VMM was confined keeps the process
// filter alone, and says so.
func (f *runFlags) diskWorkerHook(log *slog.Logger) func(name string) {
	mode, _ := confine.ParseSeccomp(f.seccomp)
	if mode == confine.SeccompOff || mode == confine.SeccompProcess {
		return nil
	}
	o := confine.Options{Seccomp: mode}
	return func(name string) {
		if !vmmConfined.Load() {
			log.Warn("a virtio-blk worker served a request before the VMM was confined: its thread keeps the process filter alone", "thread", name)
			return
		}
		if err := confine.DiskWorkerThread(name, o); err != nil {
			log.Error("a virtio-blk worker thread runs without its own seccomp filter", "thread", name, "err", err)
		}
	}
}

// vcpuDeviceIO says whether vCPU threads reach a device through pread
// and pwrite: a passed-through VFIO device's configuration space and
// unmapped BAR regions.
func (f *runFlags) vcpuDeviceIO() bool { return len(f.devices.vfio) > 0 }

// vcpuThreadHook is what each vCPU thread runs before it first enters the
// guest (vm.SetVCPUThread): its own, narrower filter. nil with
// --seccomp=off or process, so that the vCPU threads run as they would
// without confinement.
func (f *runFlags) vcpuThreadHook() func(index int) error {
	mode, _ := confine.ParseSeccomp(f.seccomp)
	if mode == confine.SeccompOff || mode == confine.SeccompProcess {
		return nil
	}
	o := confine.Options{Seccomp: mode, VCPUDeviceIO: f.vcpuDeviceIO()}
	return func(index int) error { return confine.VCPUThread(index, o) }
}

// virtioConfig is the VM's virtio devices as the flags ask, with the
// balloon's limits for accelName and the disk workers' confinement.
func (f *runFlags) virtioConfig(accelName string, log *slog.Logger) devices.Config {
	c := balloonConfig(f.virtio.config(), accelName, f.mshvDev)
	c.DiskWorkerThread = f.diskWorkerHook(log)
	c.NetQueueThread, c.VsockQueueThread = f.deviceThreadHooks(log)
	return c
}

// deviceThreadHooks are what each virtio-net and virtio-vsock queue
// thread runs before its work (devices.Config.NetQueueThread and
// VsockQueueThread): their own, narrower filters. nil with --seccomp=off
// or process. Before the VMM is confined they report false and the
// thread is asked again at its next work (a restored VM's queues and a
// TAP's packets may come before), so that the process filter's TSYNC
// finds no thread with a filter of its own.
func (f *runFlags) deviceThreadHooks(log *slog.Logger) (net func(name string, tapFDs []int) bool, vsock func(name string) bool) {
	mode, _ := confine.ParseSeccomp(f.seccomp)
	if mode == confine.SeccompOff || mode == confine.SeccompProcess {
		return nil, nil
	}
	o := confine.Options{Seccomp: mode}
	net = func(name string, tapFDs []int) bool {
		if !vmmConfined.Load() {
			return false
		}
		if err := confine.NetQueueThread(name, tapFDs, o); err != nil {
			log.Error("a virtio-net queue thread runs without its own seccomp filter", "thread", name, "err", err)
		}
		return true
	}
	vsock = func(name string) bool {
		if !vmmConfined.Load() {
			return false
		}
		if err := confine.VsockQueueThread(name, o); err != nil {
			log.Error("a virtio-vsock queue thread runs without its own seccomp filter", "thread", name, "err", err)
		}
		return true
	}
	return net, vsock
}
