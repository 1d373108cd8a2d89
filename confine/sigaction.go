package confine

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the kernel's struct sigaction, what rt_sigaction
// takes (not the C library's). x86-64 and arm64 share its layout:
// <asm-generic/signal.h>'s, with sa_restorer present because both define
// SA_RESTORER (arm64 for its AArch32 tasks). TestSigactionLayout checks it.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// sa_flags (<asm-generic/signal-defs.h>, <asm/signal.h>: the same values
// on x86-64 and arm64).
const (
	saSiginfo  = 0x00000004
	saOnstack  = 0x08000000
	saRestorer = 0x04000000
)

// installSIGSYSHandler replaces the Go runtime's SIGSYS handler with the
// one that names the call (sigsys_amd64.s, sigsys_arm64.s). All signals
// are blocked while it runs, and it runs on the thread's alternate signal
// stack (every runtime thread has one). x86-64 signal frames need a
// restorer; on arm64 the kernel returns through the vDSO's sigreturn
// trampoline when SA_RESTORER is clear (the handler never returns
// anyway).
func installSIGSYSHandler() error {
	prepareMessages()
	act := kernelSigaction{
		handler: sigsysHandlerPC(),
		flags:   saSiginfo | saOnstack,
		mask:    ^uint64(0),
	}
	if r := sigsysRestorerPC(); r != 0 {
		act.flags |= saRestorer
		act.restorer = r
	}
	_, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGSYS), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	if e != 0 {
		return fmt.Errorf("install the SIGSYS handler: %w", e)
	}
	return nil
}
