// Command govmm is a virtual machine monitor for hardware-isolated sandboxes
// on Linux, driving KVM (/dev/kvm) or the Microsoft Hypervisor (/dev/mshv).
//
//	govmm run [flags]      boot a guest and wait for it to end
//	govmm restore|snapshot|migrate|pause|resume|info   VM lifecycle
//	govmm balloon --size SIZE   take RAM from the guest (virtio-balloon)
//	govmm add-disk|add-net      hot-add a virtio disk or network device
//	govmm caps [--json]    what the host offers
//	govmm cpu-models       the CPU models and which this host can run
//	govmm jail [flags] -- run [flags]   govmm run in a jail (package jail)
//	govmm version
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"govmm/internal/schedpolicy"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "0.1.0-dev"

// Exit statuses of govmm besides the guest's own (0, (V<<1)|1 from the
// debug-exit port, and vm.StatusCrash when the guest crashed).
const (
	exitUsage    = 64 // bad flags or bad input files (EX_USAGE)
	exitNoAccel  = 69 // the accelerator is unavailable (EX_UNAVAILABLE)
	exitInternal = 70 // govmm itself failed (EX_SOFTWARE)
)

// exitError carries a process exit status up to main.
type exitError struct {
	status int
	err    error
}

func (e *exitError) Error() string { return e.err.Error() }

func fail(status int, format string, args ...any) error {
	return &exitError{status, fmt.Errorf(format, args...)}
}

// mainStart is when main began: the VM logs the time from it to the
// guest's first instruction (vm.Config.Epoch). Go runtime start-up before
// main is not in it.
var mainStart time.Time

func main() {
	mainStart = time.Now()
	if len(os.Args) > 1 && slices.Contains([]string{"run", "restore", "migrate"}, os.Args[1]) {
		// The VMM's helper threads do not preempt its vCPU threads
		// (which take the normal policy back); see schedpolicy.
		if err := schedpolicy.BatchProcess(); err != nil {
			fmt.Fprintf(os.Stderr, "govmm: warning: the helper threads keep the normal scheduling policy: %v\n", err)
		}
	}
	os.Exit(realMain(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func realMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdin, stdout, stderr)
	case "restore":
		err = cmdRestore(args[1:], stdin, stdout, stderr)
	case "snapshot":
		err = cmdSnapshot(args[1:], stdout, stderr)
	case "migrate":
		err = cmdMigrate(args[1:], stdin, stdout, stderr)
	case "pause", "resume", "info":
		err = cmdSimple(args[0], args[1:], stdout, stderr)
	case "balloon":
		err = cmdBalloon(args[1:], stdout, stderr)
	case "add-disk", "add-net":
		err = cmdHotAdd(args[0], args[1:], stdout, stderr)
	case "caps":
		err = cmdCaps(args[1:], stdout)
	case "cpu-models":
		err = cmdCPUModels(args[1:], stdout, stderr)
	case "jail":
		err = cmdJail(args[1:], stdin, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "govmm %s (%s)\n", version, buildNote())
	case "help", "-h", "--help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "govmm: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintf(stderr, "govmm: %v\n", ee.err)
		}
		return ee.status
	}
	fmt.Fprintf(stderr, "govmm: %v\n", err)
	return exitInternal
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: govmm <command> [flags]

commands:
  run       boot a guest (the built-in probe guest unless --kernel is given)
  restore   start a VM from a snapshot directory (--snapshot DIR)
  snapshot  snapshot a running VM through its control socket (--api-socket, --dir)
  migrate   live-migrate: "migrate receive --listen ADDR" on the destination,
            "migrate send --api-socket PATH --to ADDR [--verify]" for the source VM
  pause, resume, info   control a running VM through its control socket
  balloon   set a running VM's balloon target (--api-socket, --size SIZE; 0 gives all back)
  add-disk  hot-add a virtio disk: add-disk --api-socket PATH path=FILE[,readonly=on][,serial=ID]
  add-net   hot-add a virtio network device: add-net --api-socket PATH tap=NAME[,mac=MAC]
  caps      show what this host's accelerators offer (--json for JSON)
  cpu-models  list the CPU models (--cpu) and which this host can run
  jail      run "govmm run" in a jail (namespaces, chroot, uid drop, rlimits, cgroup):
            jail --id ID --uid U --gid G [flags] -- run [run flags]
  version   print the version

Run "govmm <command> -h" for a command's flags.
`)
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// buildNote says which Go built the binary and whether it is static: a cgo
// build (the default when a C compiler is installed, for package net's DNS
// resolver) loads libc at every start, about 0.8 ms that a VMM started per
// sandbox should not pay. The README builds with CGO_ENABLED=0.
func buildNote() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return runtime.Version()
	}
	for _, s := range info.Settings {
		if s.Key == "CGO_ENABLED" && s.Value == "1" {
			return info.GoVersion + ", cgo: dynamically linked; build with CGO_ENABLED=0 for a static binary that starts faster"
		}
	}
	return info.GoVersion + ", static"
}
