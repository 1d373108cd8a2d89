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
// The filter is one process-wide allowlist installed with TSYNC, not one
// per thread role as Firecracker and Cloud Hypervisor install: the Go
// runtime moves goroutines between OS threads, so only a thread locked for
// its whole life could carry a narrower filter, and govmm's vCPU threads
// go back to the runtime's pool when the VM ends.
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
)

func (m SeccompMode) String() string {
	switch m {
	case SeccompOn:
		return "on"
	case SeccompOff:
		return "off"
	case SeccompLog:
		return "log"
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
	}
	return 0, fmt.Errorf("%q: want on, off or log", s)
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
