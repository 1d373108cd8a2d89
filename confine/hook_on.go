//go:build govmm_testhooks

package confine

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// HookEnv is honoured only by binaries built with -tags govmm_testhooks
// (the end-to-end tests build one): right after Apply it makes the process
// do what the confinement must stop, so that a test can watch it stopped.
//
//	forbidden-syscall   a thread other than the one that installed the
//	                    filter calls personality(0xffffffff), which the
//	                    allowlist lacks
//	open:PATH           open PATH for reading and say on stderr whether
//	                    that worked, then carry on
//	vcpu-open           once vCPU 0's thread has its own filter
//	                    (VCPUThread), a goroutine on another thread opens
//	                    "/" and says whether that worked, then vCPU 0's
//	                    thread opens "/" itself, which its filter refuses
const HookEnv = "GOVMM_TEST_CONFINE_HOOK"

func testHook() {
	v := os.Getenv(HookEnv)
	switch {
	case v == "", v == "vcpu-open":
	case v == "forbidden-syscall":
		done := make(chan struct{})
		go func() {
			// The installing thread is locked to the BSP, so this
			// runs on another: TSYNC must have reached it.
			runtime.LockOSThread()
			unix.Syscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
			fmt.Fprintln(os.Stderr, "govmm: test hook: personality(2) returned: the filter let it through")
			close(done)
		}()
		<-done
	case strings.HasPrefix(v, "open:"):
		path := strings.TrimPrefix(v, "open:")
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "govmm: test hook: open %s: refused: %v\n", path, err)
			return
		}
		f.Close()
		fmt.Fprintf(os.Stderr, "govmm: test hook: open %s: opened\n", path)
	default:
		fmt.Fprintf(os.Stderr, "govmm: test hook: unknown %s=%q\n", HookEnv, v)
	}
}

func vcpuTestHook(index int) {
	if index != 0 || os.Getenv(HookEnv) != "vcpu-open" {
		return
	}
	done := make(chan struct{})
	go func() {
		// A locked thread runs no other goroutine: this one runs
		// on a thread with the process filter alone.
		if fd, err := unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			fmt.Fprintf(os.Stderr, "govmm: test hook: another thread: open /: %v\n", err)
		} else {
			unix.Close(fd)
			fmt.Fprintln(os.Stderr, "govmm: test hook: another thread opened /")
		}
		close(done)
	}()
	<-done
	if fd, err := unix.Open("/", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		unix.Close(fd)
	}
	fmt.Fprintln(os.Stderr, "govmm: test hook: vCPU 0's thread opened /: its filter let it through")
}
