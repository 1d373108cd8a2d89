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

// The confinement flags and hooks (package confine) that `run`, `restore`
// and `migrate receive` share on x86-64 and arm64: the machines differ,
// the moment and the way they confine themselves do not.

func init() {
	// The main goroutine keeps the main thread for the process's life
	// (an init that locks it has main run on it, and no other goroutine
	// runs there). A vCPU goroutine ends locked to its thread, under its
	// own filter (vm.SetVCPUThread, arm64.Config.VCPUThread); on the
	// main thread the runtime would park that thread forever instead of
	// ending it, and /proc/PID/status, which is the main thread's, would
	// show the vCPU filter.
	runtime.LockOSThread()
}

// confineFlags are --seccomp, --landlock and --snapshot-dir.
type confineFlags struct {
	seccomp, landlock string
	snapshotDir       string
}

// registerConfine adds the confinement flags.
func (f *confineFlags) registerConfine(fs *flag.FlagSet) {
	fs.StringVar(&f.seccomp, "seccomp", "on", "seccomp filters once the VM is built: on (a system call outside govmm's allowlist stops the process, naming it and the thread; vCPU threads have a narrower allowlist of their own), log (the kernel logs such calls and lets them through), process (on, without the vCPU and device threads' own allowlists) or off")
	fs.StringVar(&f.landlock, "landlock", "on", "Landlock once the VM is built: on (no file-system access but --snapshot-dir; best effort on kernels without Landlock) or off")
	fs.StringVar(&f.snapshotDir, "snapshot-dir", "", "with --landlock=on, the directory snapshots may be written under (govmm snapshot --dir); default: the --api-socket's directory")
}

// checkConfine validates the confinement flags before anything is opened.
func (f *confineFlags) checkConfine() error {
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

// writeDir is the directory Landlock leaves writable: where snapshots
// may go. Without a control socket (apiSocket) no snapshot can be asked
// for, so nothing is writable.
func (f *confineFlags) writeDir(apiSocket string) string {
	if f.landlock != "on" || apiSocket == "" {
		return ""
	}
	if f.snapshotDir != "" {
		return f.snapshotDir
	}
	dir, err := filepath.Abs(filepath.Dir(apiSocket))
	if err != nil {
		return ""
	}
	return dir
}

// apply applies the confinement the flags ask for, with the control
// socket at apiSocket ("" for none) and vCPU threads reaching a
// passed-through device by pread and pwrite when vcpuDeviceIO.
func (f *confineFlags) apply(log *slog.Logger, apiSocket string, vcpuDeviceIO bool) error {
	mode, _ := confine.ParseSeccomp(f.seccomp)
	o := confine.Options{Seccomp: mode, Landlock: f.landlock == "on", WriteDir: f.writeDir(apiSocket), VCPUDeviceIO: vcpuDeviceIO}
	if apiSocket != "" {
		// The socket is unlinked when the VM ends.
		o.RemoveDirs = append(o.RemoveDirs, filepath.Dir(apiSocket))
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

// vmmConfined is set once apply has applied the process filter: a
// thread may add its own filter only after that (the process filter's
// TSYNC fails on a thread with a filter of its own).
var vmmConfined atomic.Bool

// vcpuHook is what each vCPU thread runs before it first enters the
// guest: its own, narrower filter. nil with --seccomp=off or process, so
// that the vCPU threads run as they would without confinement.
func (f *confineFlags) vcpuHook(vcpuDeviceIO bool) func(index int) error {
	mode, _ := confine.ParseSeccomp(f.seccomp)
	if mode == confine.SeccompOff || mode == confine.SeccompProcess {
		return nil
	}
	o := confine.Options{Seccomp: mode, VCPUDeviceIO: vcpuDeviceIO}
	return func(index int) error { return confine.VCPUThread(index, o) }
}

// setDeviceHooks has the virtio devices' worker and queue threads take
// their own filters (diskWorkerHook, deviceThreadHooks).
func (f *confineFlags) setDeviceHooks(c *devices.Config, log *slog.Logger) {
	c.DiskWorkerThread = f.diskWorkerHook(log)
	c.NetQueueThread, c.VsockQueueThread = f.deviceThreadHooks(log)
}

// diskWorkerHook is what each virtio-blk worker thread runs before its
// first request (devices.Config.DiskWorkerThread): the disk workers' own,
// narrower filter. nil with --seccomp=off or process. A worker whose
// first request came before the VMM was confined keeps the process
// filter alone, and says so.
func (f *confineFlags) diskWorkerHook(log *slog.Logger) func(name string) {
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

// deviceThreadHooks are what each virtio-net and virtio-vsock queue
// thread runs before its work (devices.Config.NetQueueThread and
// VsockQueueThread): their own, narrower filters. nil with --seccomp=off
// or process. Before the VMM is confined they report false and the
// thread is asked again at its next work (a restored VM's queues and a
// TAP's packets may come before), so that the process filter's TSYNC
// finds no thread with a filter of its own.
func (f *confineFlags) deviceThreadHooks(log *slog.Logger) (net func(name string, tapFDs []int) bool, vsock func(name string) bool) {
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
