package confine

import (
	"strconv"

	"golang.org/x/sys/unix"
)

// A forbidden system call traps (SECCOMP_RET_TRAP): the kernel skips it
// and sends the calling thread SIGSYS, whose siginfo names the call. The
// Go runtime's own handler would only say "bad system call" and dump
// goroutines, so govmm installs its own, written in assembly because it
// runs on whatever thread trapped, with no Go runtime state it could rely
// on. It writes a line prepared in advance for that call's number to
// stderr, with the thread's role (a vCPU thread's filter returns the vCPU
// in SECCOMP_RET_DATA, which the kernel passes in si_errno; when several
// filters trap, the kernel keeps the newest one's value, the vCPU's), and
// ends the process with status ExitSIGSYS. The alternative,
// SECCOMP_RET_KILL_PROCESS, ends the process with no word on stderr; the
// call's number would only reach the audit log, where a user rarely looks.
//
// The kernel resets the handler to the default (death by SIGSYS, without
// the line) if the thread blocks SIGSYS at that moment; the Go runtime
// blocks signals only around thread creation, whose clone is allowed.

// ExitSIGSYS is the exit status after a forbidden system call: 128 +
// SIGSYS, what a shell reports for a process SIGSYS killed.
const ExitSIGSYS = 128 + int(unix.SIGSYS)

// sigsysMessage is one prepared line: a pointer and a length the handler
// passes to write(2) as they are.
type sigsysMessage struct {
	p *byte
	n uintptr
}

// Offsets the assembly handler relies on, the same on x86-64 and arm64
// (both 64-bit siginfo_t: three ints, then the union at 16).
// TestSiginfoOffsets checks them against the C headers.
const (
	siginfoErrnoOff   = 4   // siginfo_t.si_errno (int): the filter's SECCOMP_RET_DATA, the role
	siginfoSyscallOff = 24  // siginfo_t.si_syscall (int)
	siginfoArchOff    = 28  // siginfo_t.si_arch (unsigned int)
	numSyscalls       = 512 // x86-64 and arm64 system call numbers are below this
)

var (
	// sigsysMessages[nr] names the host architecture's system call nr
	// (sigsys_amd64.s, sigsys_arm64.s); the handler reads
	// it by index, so its element size (16) is in the assembly too.
	sigsysMessages [numSyscalls]sigsysMessage
	// sigsysOther names a call of another ABI (i386 through int 0x80,
	// AArch32) or a number past the table.
	sigsysOther sigsysMessage
	// sigsysRoles[role] names the thread whose filter refused the call
	// (the role is the filter's SECCOMP_RET_DATA: roleProcess, or
	// roleVCPU0 plus the vCPU's index, or a device thread's role); the handler reads it by index
	// too, and uses roleProcess's for a number past the table.
	sigsysRoles [numRoles]sigsysMessage
	// sigsysHint follows either.
	sigsysHint sigsysMessage
	// sigsysText holds the bytes the messages point into.
	sigsysText []byte
)

const hintText = ": the VMM made a system call its seccomp filter does not allow, and is stopped (please report this with the command line to the govmm issue tracker; --seccomp=log logs such calls and lets them through, --seccomp=process leaves vCPU and device threads without their narrower filters, --seccomp=off disables the filters)\n"

// prepareMessages fills the tables the handler reads: one buffer, so
// that preparing them costs one allocation, not one per system call.
func prepareMessages() {
	if sigsysHint.n != 0 {
		return
	}
	const prefix = "\ngovmm: seccomp: forbidden system call "
	type span struct{ off, n int }
	var spans [numSyscalls]span
	buf := make([]byte, 0, numSyscalls*(len(prefix)+32)+numRoles*80+len(hintText)+128)
	for nr := range spans {
		name, ok := hostArch.sys.SyscallNumbers[nr]
		if !ok {
			name = "unknown"
		}
		off := len(buf)
		buf = append(buf, prefix...)
		buf = append(buf, name...)
		buf = append(buf, " ("...)
		buf = strconv.AppendInt(buf, int64(nr), 10)
		buf = append(buf, ')')
		spans[nr] = span{off, len(buf) - off}
	}
	otherOff := len(buf)
	buf = append(buf, prefix+"of another ABI (32-bit) or an unknown number"...)
	otherLen := len(buf) - otherOff
	var roles [numRoles]span
	for r := range roles {
		off := len(buf)
		switch r {
		case roleProcess:
			buf = append(buf, " on a thread under the process filter alone (a VMM thread, not a vCPU's or a device queue's or worker's, unless --seccomp=process)"...)
		case roleDiskWorker:
			buf = append(buf, " on a virtio-blk worker thread (its filter allows less than the VMM's other threads')"...)
		case roleNetQueue:
			buf = append(buf, " on a virtio-net queue thread (its filter allows less than the VMM's other threads')"...)
		case roleVsockQueue:
			buf = append(buf, " on a virtio-vsock queue thread (its filter allows less than the VMM's other threads')"...)
		default:
			buf = append(buf, " on vCPU "...)
			buf = strconv.AppendInt(buf, int64(r-roleVCPU0), 10)
			buf = append(buf, "'s thread (its filter allows less than the VMM's other threads')"...)
		}
		roles[r] = span{off, len(buf) - off}
	}
	hintOff := len(buf)
	buf = append(buf, hintText...)
	sigsysText = buf
	for nr, sp := range spans {
		sigsysMessages[nr] = sigsysMessage{p: &sigsysText[sp.off], n: uintptr(sp.n)}
	}
	for r, sp := range roles {
		sigsysRoles[r] = sigsysMessage{p: &sigsysText[sp.off], n: uintptr(sp.n)}
	}
	sigsysOther = sigsysMessage{p: &sigsysText[otherOff], n: uintptr(otherLen)}
	sigsysHint = sigsysMessage{p: &sigsysText[hintOff], n: uintptr(len(hintText))}
}
