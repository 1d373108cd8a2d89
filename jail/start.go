//go:build linux

package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ConfigError is a Config that Start refused before changing anything.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Check validates c without changing anything, as Start does first.
func Check(c Config) error {
	if _, err := c.check(); err != nil {
		return &ConfigError{err}
	}
	return nil
}

// Jail is a started jail.
type Jail struct {
	// Dir is <chroot-base>/govmm/<id>; Root is Dir/root, the program's /.
	Dir, Root string
	// PIDFile holds the program's process ID as the host sees it.
	PIDFile string

	cmd           *exec.Cmd
	cgroupDir     string
	cgroupCreated bool
}

// stagePlan is what Start hands the stage, as JSON on descriptor 3.
type stagePlan struct {
	Root     string
	MoveRoot bool
	NetNS    string
	UID, GID int
	Rlimits  []Rlimit
	Exec     string // the program's path in the jail
	Argv     []string
	Env      []string
}

// Start checks c, builds the jail and starts the program in it with the
// given standard input and outputs (as exec.Cmd takes them: an *os.File
// is passed on as it is, anything else through a pipe; nil is /dev/null).
// It returns once the program has been executed, or
// with the reason the jail could not be entered. A *ConfigError means
// nothing was changed. It needs root.
func Start(c Config, stdin io.Reader, stdout, stderr io.Writer) (*Jail, error) {
	p, err := c.check()
	if err != nil {
		return nil, &ConfigError{err}
	}
	if os.Geteuid() != 0 {
		return nil, &ConfigError{errors.New("the jail must be built by root: it creates device nodes, namespaces and cgroups and changes identity")}
	}
	if err := p.build(); err != nil {
		if !errors.Is(err, os.ErrExist) {
			os.RemoveAll(p.dir) // made by this call: nothing of anyone else's
		}
		return nil, err
	}
	j := &Jail{Dir: p.dir, Root: p.root, PIDFile: filepath.Join(p.dir, "pid")}
	fail := func(err error) (*Jail, error) {
		j.removeCgroup()
		os.RemoveAll(p.dir)
		return nil, err
	}

	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	if c.NewPIDNS {
		attr.Cloneflags |= syscall.CLONE_NEWPID
	}
	if c.NewNetNS {
		attr.Cloneflags |= syscall.CLONE_NEWNET
	}
	if c.NewUserNS {
		// The mount namespace is then the new user namespace's. Root is
		// mapped so that the stage keeps its capabilities there across
		// its exec (they go to the namespace's root only) to set the
		// jail up, and loses them all when it drops to UID:GID, as in
		// the caller's namespace. Setgroups stays allowed for that drop.
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: c.UID, HostID: c.UID, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: c.GID, HostID: c.GID, Size: 1}}
		attr.GidMappingsEnableSetgroups = true
	}
	if c.Cgroup != "" {
		dir, created, err := p.setupCgroup()
		j.cgroupDir, j.cgroupCreated = p.cgroupDir, created
		if err != nil {
			return fail(err)
		}
		defer dir.Close()
		// Cloned straight into the cgroup (CLONE_INTO_CGROUP): the
		// program never runs outside its limits.
		attr.UseCgroupFD, attr.CgroupFD = true, int(dir.Fd())
	}

	sp := stagePlan{
		Root: p.root, MoveRoot: c.moveRoot, NetNS: c.NetNS, UID: c.UID, GID: c.GID,
		Rlimits: p.rlimits, Exec: "/" + p.execName,
		Argv: append([]string{p.execName}, c.Args...), Env: c.Env,
	}
	planR, planW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		planR.Close()
		planW.Close()
		return fail(err)
	}
	defer errR.Close()
	j.cmd = &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        []string{os.Args[0], stageArg},
		Env:         []string{stageEnv + "=1"},
		Stdin:       stdin,
		Stdout:      stdout,
		Stderr:      stderr,
		ExtraFiles:  []*os.File{planR, errW}, // descriptors 3 and 4
		SysProcAttr: attr,
	}
	err = j.cmd.Start()
	planR.Close()
	errW.Close()
	if err != nil {
		planW.Close()
		return fail(fmt.Errorf("start the jail's first process: %w", err))
	}
	err = json.NewEncoder(planW).Encode(sp)
	planW.Close()
	// The error pipe is close-on-exec in the stage: EOF with nothing
	// read means the program was executed.
	msg, rerr := io.ReadAll(errR)
	if err != nil || rerr != nil || len(msg) > 0 {
		j.cmd.Wait()
		switch {
		case len(msg) > 0:
			err = errors.New(string(msg))
		case err == nil:
			err = rerr
		}
		return fail(fmt.Errorf("enter the jail: %w", err))
	}
	if err := os.WriteFile(j.PIDFile, []byte(strconv.Itoa(j.cmd.Process.Pid)+"\n"), 0o644); err != nil {
		j.cmd.Process.Kill()
		j.cmd.Wait()
		return fail(fmt.Errorf("write the pid file: %w", err))
	}
	return j, nil
}

// Pid is the program's process ID as the host sees it.
func (j *Jail) Pid() int { return j.cmd.Process.Pid }

// Signal sends sig to the program.
func (j *Jail) Signal(sig os.Signal) error { return j.cmd.Process.Signal(sig) }

// Wait waits for the program to end and returns its exit status (128+N
// when signal N ended it). A cgroup the jail created is removed; the
// jail's directory is left for the caller (it may hold the VM's output).
func (j *Jail) Wait() (int, error) {
	err := j.cmd.Wait()
	j.removeCgroup()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return 0, err
	}
	ws := j.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ws.ExitStatus(), nil
}

// removeCgroup removes the cgroup Start created, once its processes are
// gone (the kernel frees an emptied cgroup a moment after its last
// process is reaped).
func (j *Jail) removeCgroup() {
	if !j.cgroupCreated {
		return
	}
	for i := 0; i < 50; i++ {
		if err := unix.Rmdir(j.cgroupDir); err == nil || !errors.Is(err, unix.EBUSY) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
