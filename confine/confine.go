// Package confine narrows what the govmm process may do once its VM is
// built and before the guest runs: a seccomp filter that allows only the
// system calls govmm makes from then on (ioctl by request number, socket by
// family, mmap and mprotect never executable, clone only for threads), and
// a Landlock ruleset that leaves the process no file-system access but the
// directory it may write snapshots to and the few files it reads at run
// time.
//
// It exists because govmm runs untrusted guests next to code that parses
// what they write (device registers, instruction bytes, snapshots and
// migration streams). If that code is ever subverted, the kernel still
// refuses what the VMM has no business doing: opening the user's files,
// running programs, creating more VMs, tracing processes, mounting.
//
// The seccomp confinement has two layers. The process filter is one
// allowlist installed on every thread with TSYNC (Apply). Each vCPU
// thread then adds a filter of its own (VCPUThread), narrower still: the
// vCPU thread is the one that runs instruction emulation and device
// handlers on what the guest writes, so it is where a guest that
// subverts govmm would find itself, and it has no business opening
// files, using sockets or creating threads. The kernel runs both filters
// on a vCPU thread and takes the stricter answer, so what a vCPU thread
// may do is the intersection of the two allowlists. A per-thread filter
// holds in Go only on a thread that runs nothing else for the rest of its
// life: the vCPU goroutine locks its thread (runtime.LockOSThread), never
// unlocks it, and the runtime ends the thread with the goroutine; the
// runtime never clones a new thread from a locked one (runtime/proc.go,
// newm: a locked M hands thread creation to the template thread), so no
// other thread inherits the narrower filter. The device threads nearest
// the guest take filters of their own the same way: virtio-blk workers
// (DiskWorkerThread), virtio-net's queue servers and TAP readers
// (NetQueueThread) and virtio-vsock's queue servers (VsockQueueThread).
package confine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// SeccompMode says what the seccomp filter does.
type SeccompMode int

const (
	// SeccompOn stops the process at the first system call the
	// allowlist lacks, with a message naming it (the default).
	SeccompOn SeccompMode = iota
	// SeccompOff installs no filter.
	SeccompOff
	// SeccompLog lets every system call through and has the kernel log
	// those the allowlist lacks (audit records, "type=1326" in dmesg).
	SeccompLog
	// SeccompProcess is SeccompOn without the vCPU threads' own filter:
	// every thread has the process filter only.
	SeccompProcess
)

func (m SeccompMode) String() string {
	switch m {
	case SeccompOn:
		return "on"
	case SeccompOff:
		return "off"
	case SeccompLog:
		return "log"
	case SeccompProcess:
		return "process"
	}
	return fmt.Sprintf("SeccompMode(%d)", int(m))
}

// ParseSeccomp parses --seccomp's value.
func ParseSeccomp(s string) (SeccompMode, error) {
	switch s {
	case "on":
		return SeccompOn, nil
	case "off":
		return SeccompOff, nil
	case "log":
		return SeccompLog, nil
	case "process":
		return SeccompProcess, nil
	}
	return 0, fmt.Errorf("%q: want on, off, log or process", s)
}

// ParseLandlock parses --landlock's value.
func ParseLandlock(s string) (bool, error) {
	switch s {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", s)
}

// Options says what to confine and what to leave reachable.
type Options struct {
	Seccomp  SeccompMode
	Landlock bool
	// WriteDir is the one directory (with what is below it) where the
	// process may create, write, replace and remove files: where
	// snapshots go. Empty: nowhere.
	WriteDir string
	// RemoveDirs are directories where the process may remove files:
	// the control socket's, so that it can unlink the socket at exit.
	RemoveDirs []string
	// ReadFiles are files the process may open for reading later (they
	// need not exist; missing ones are left out).
	ReadFiles []string
	// VCPUDeviceIO lets vCPU threads read and write open descriptors at
	// an offset (pread64, pwrite64): a passed-through VFIO device's
	// configuration space and the BAR regions it does not map are
	// reached that way from the vCPU that traps the guest's access.
	VCPUDeviceIO bool
}

// runtimeReadFiles are read after set-up by the Go runtime or standard
// library: the local time zone at the first log line, and name resolution
// for a `tcp:HOST:PORT` migration target. (The runtime's periodic
// GOMAXPROCS update reads cgroup files through descriptors it opened at
// start: no rule.)
var runtimeReadFiles = []string{"/etc/localtime", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/services"}

// Report says what Apply put in place, for the log.
type Report struct {
	Seccomp  string // "off", or the mode and the allowlist's size
	Landlock string // "off", or the kernel's Landlock ABI and what was granted
}

// Apply confines the calling process: Landlock first (its set-up needs
// system calls the filter then forbids), then seccomp. Call it once, after
// every device, file and socket the VM needs is open and every vCPU
// exists, and before the guest runs. It affects every thread of the
// process, those that exist and those created later.
func Apply(o Options) (Report, error) {
	rep := Report{Seccomp: "off", Landlock: "off"}
	if o.Landlock {
		s, err := restrictPaths(o)
		if err != nil {
			return rep, fmt.Errorf("landlock: %w (--landlock=off runs without it)", err)
		}
		rep.Landlock = s
	}
	if o.Seccomp != SeccompOff {
		n, err := installSeccomp(o.Seccomp)
		if err != nil {
			return rep, fmt.Errorf("seccomp: %w (--seccomp=off runs without it)", err)
		}
		rep.Seccomp = fmt.Sprintf("%s, %d system calls allowed", o.Seccomp, n)
		if o.Seccomp != SeccompProcess {
			// Assembled now, off the vCPUs' way to the guest.
			prepareVCPUThreads()
			if _, err := vcpuFilter(o.Seccomp, 0, o); err != nil {
				return rep, fmt.Errorf("seccomp: %w (--seccomp=process runs without the vCPU threads' filter)", err)
			}
			rep.Seccomp += fmt.Sprintf(", %d on vCPU threads", len(present(vcpuCalls(o))))
		}
	}
	testHook()
	return rep, nil
}

// Within reports whether path lies in dir (or is dir), compared as
// cleaned absolute paths. A symbolic link below dir can still lead
// elsewhere: Landlock, not this check, is what refuses such a path.
func Within(path, dir string) bool {
	p, err1 := filepath.Abs(path)
	d, err2 := filepath.Abs(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && rel != ".." && !filepathHasDotDot(rel)
}

func filepathHasDotDot(rel string) bool {
	return len(rel) >= 3 && rel[:3] == ".."+string(filepath.Separator)
}

// CheckDir validates a directory flag before anything is opened: it must
// exist and be a directory.
func CheckDir(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return errors.New("not a directory")
	}
	return nil
}
