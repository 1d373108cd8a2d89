package confine

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the x86-64 kernel's struct sigaction (what
// rt_sigaction takes, not the C library's).
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// sa_flags (<asm/signal.h>, x86-64).
const (
	saSiginfo  = 0x00000004
	saOnstack  = 0x08000000
	saRestorer = 0x04000000 // x86-64 signal frames need a restorer
)

// Implemented in sigsys_amd64.s.
func sigsysHandler()
func sigsysRestorer()
func sigsysHandlerPC() uintptr
func sigsysRestorerPC() uintptr

// installSIGSYSHandler replaces the Go runtime's SIGSYS handler with the
// one that names the call. All signals are blocked while it runs, and it
// runs on the thread's alternate signal stack (every runtime thread has
// one).
func installSIGSYSHandler() error {
	prepareMessages()
	act := kernelSigaction{
		handler:  sigsysHandlerPC(),
		flags:    saSiginfo | saOnstack | saRestorer,
		restorer: sigsysRestorerPC(),
		mask:     ^uint64(0),
	}
	_, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGSYS), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	if e != 0 {
		return fmt.Errorf("install the SIGSYS handler: %w", e)
	}
	return nil
}
