#include "textflag.h"

// sigsysHandler is the SIGSYS handler (see sigsys.go), entered by the
// kernel with the C calling convention: DI = signal, SI = siginfo_t *,
// DX = ucontext. It writes the prepared name of the trapped call, the
// thread's role and the hint to fd 2, and calls exit_group(ExitSIGSYS).
// It never returns.
TEXT ·sigsysHandler(SB),NOSPLIT|NOFRAME,$0-0
	MOVL	4(SI), R8		// si_errno: the filter's SECCOMP_RET_DATA, the role (SYSCALL keeps R8)
	CMPQ	R8, $260		// numRoles
	JB	rolok
	MOVL	$0, R8			// roleProcess
rolok:
	MOVL	28(SI), CX		// si_arch
	CMPL	CX, $0xc000003e		// AUDIT_ARCH_X86_64
	JNE	other
	MOVL	24(SI), AX		// si_syscall
	CMPQ	AX, $512		// numSyscalls
	JAE	other
	SHLQ	$4, AX			// * sizeof(sigsysMessage)
	LEAQ	·sigsysMessages(SB), BX
	MOVQ	0(BX)(AX*1), SI
	MOVQ	8(BX)(AX*1), DX
	JMP	write
other:
	MOVQ	·sigsysOther+0(SB), SI
	MOVQ	·sigsysOther+8(SB), DX
write:
	MOVL	$2, DI			// stderr
	MOVL	$1, AX			// SYS_write
	SYSCALL
	SHLQ	$4, R8			// * sizeof(sigsysMessage)
	LEAQ	·sigsysRoles(SB), BX
	MOVQ	0(BX)(R8*1), SI
	MOVQ	8(BX)(R8*1), DX
	MOVL	$2, DI
	MOVL	$1, AX
	SYSCALL
	MOVL	$2, DI
	MOVQ	·sigsysHint+0(SB), SI
	MOVQ	·sigsysHint+8(SB), DX
	MOVL	$1, AX
	SYSCALL
	MOVL	$159, DI		// ExitSIGSYS
	MOVL	$231, AX		// SYS_exit_group
	SYSCALL
	INT	$3

// sigsysRestorer is the sa_restorer x86-64 requires; the handler never
// returns through it, but a signal frame without one is refused.
TEXT ·sigsysRestorer(SB),NOSPLIT|NOFRAME,$0-0
	MOVL	$15, AX			// SYS_rt_sigreturn
	SYSCALL
	INT	$3

// sigsysHandlerPC returns the entry of sigsysHandler itself (ABI0), not of
// a Go wrapper around it.
TEXT ·sigsysHandlerPC(SB),NOSPLIT,$0-8
	LEAQ	·sigsysHandler(SB), AX
	MOVQ	AX, ret+0(FP)
	RET

TEXT ·sigsysRestorerPC(SB),NOSPLIT,$0-8
	LEAQ	·sigsysRestorer(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
