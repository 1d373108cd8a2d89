//go:build linux

package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// stageEnv marks the jail's first process: Start re-executes the current
// binary with it set (and nothing else in its environment), and this
// package's init runs the stage before the binary's own main, or a test
// binary's tests, could start. No command line is involved, so a binary
// cannot mistake the stage for an ordinary start and run as itself.
const stageEnv = "_GOVMM_JAIL_STAGE"

// stageArg is the stage's argv[1], for ps.
const stageArg = "--jail-stage"

func init() {
	if os.Getenv(stageEnv) == "1" {
		runStage()
	}
}

// runStage is the jail's first process, started by Start in its new
// namespaces and cgroup. It enters the jail's directory, applies the
// limits, drops to the jailed identity and executes the program; if it
// cannot, it tells Start why and exits.
func runStage() {
	// Namespace joins, no_new_privs and the exec are per thread: all on
	// this one.
	runtime.LockOSThread()
	errs := os.NewFile(4, "jail-errors")
	err := stage()
	if _, werr := fmt.Fprint(errs, err); werr != nil {
		fmt.Fprintf(os.Stderr, "govmm jail: %v (this is the jail's internal stage, started by govmm jail)\n", err)
	}
	os.Exit(1)
}

func stage() error {
	if _, err := unix.FcntlInt(4, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return fmt.Errorf("no error pipe on descriptor 4: %w", err)
	}
	planFile := os.NewFile(3, "jail-plan")
	var sp stagePlan
	err := json.NewDecoder(planFile).Decode(&sp)
	planFile.Close()
	if err != nil {
		return fmt.Errorf("read the jail's plan: %w", err)
	}
	if sp.NetNS != "" {
		if err := joinNetNS(sp.NetNS); err != nil {
			return err
		}
	}
	// Nothing inherited but stdin, stdout and stderr survives the exec.
	if err := closeOnExec(); err != nil {
		return fmt.Errorf("close inherited descriptors: %w", err)
	}
	if err := enterRoot(sp.Root, sp.MoveRoot); err != nil {
		return err
	}
	for _, r := range sp.Rlimits {
		// syscall.Setrlimit, not unix: Go restores its start-up
		// RLIMIT_NOFILE at exec unless told of a new one this way.
		lim := syscall.Rlimit{Cur: r.Value, Max: r.Value}
		if err := syscall.Setrlimit(rlimitResources[r.Name], &lim); err != nil {
			return fmt.Errorf("set rlimit %s=%d: %w", r.Name, r.Value, err)
		}
	}
	// Groups, then gid, then uid (after which nothing more may be
	// changed); leaving uid 0 clears every capability. These apply to
	// all the process's threads.
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("clear supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(sp.GID, sp.GID, sp.GID); err != nil {
		return fmt.Errorf("set gid %d: %w", sp.GID, err)
	}
	if err := syscall.Setresuid(sp.UID, sp.UID, sp.UID); err != nil {
		return fmt.Errorf("set uid %d: %w", sp.UID, err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	err = syscall.Exec(sp.Exec, sp.Argv, sp.Env)
	return fmt.Errorf("execute %s in the jail: %w", sp.Exec, err)
}

// closeOnExec marks every descriptor from 3 up close-on-exec: with
// close_range(2) (Linux 5.11), else one by one from /proc/self/fd.
func closeOnExec() error {
	err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil || !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			// The descriptor that listed the directory is gone by now.
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
				return err
			}
		}
	}
	return nil
}

// joinNetNS moves this thread (and so the program it executes) into the
// network namespace at path.
func joinNetNS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join network namespace %s: %w", path, err)
	}
	return nil
}

// enterRoot makes root this process's /, in the new mount namespace it
// was cloned into: mounts stop propagating to the host, root is bound on
// itself to be a mount point, and pivot_root swaps it with the old root,
// which is then detached. An initramfs root (rootfs) cannot be pivoted
// away (EINVAL); there, or when move is set, the bound root is moved over
// / and the process chroots into it, as switch_root does. A process that
// has dropped uid 0 has no CAP_SYS_CHROOT to climb out of that chroot.
func enterRoot(root string, move bool) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the jail's mounts private: %w", err)
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on itself: %w", root, err)
	}
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("enter %s: %w", root, err)
	}
	if !move {
		err := unix.PivotRoot(".", ".")
		switch {
		case err == nil:
			if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
				return fmt.Errorf("detach the old root: %w", err)
			}
			return unix.Chdir("/")
		case !errors.Is(err, unix.EINVAL):
			return fmt.Errorf("pivot_root into %s: %w", root, err)
		}
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s over /: %w", root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into %s: %w", root, err)
	}
	return unix.Chdir("/")
}
