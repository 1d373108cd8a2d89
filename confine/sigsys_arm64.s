#include "textflag.h"

// sigsysHandler is the SIGSYS handler (see sigsys.go), the arm64 twin of
// sigsys_amd64.s, entered by the kernel with the AAPCS64 convention: R0 =
// signal, R1 = siginfo_t *, R2 = ucontext. It writes the prepared name
// of the trapped call, the thread's role and the hint to fd 2, and calls
// exit_group(ExitSIGSYS). It never returns. System calls: SVC $0 with the
// number in R8 and the arguments in R0-R2; the kernel keeps every
// register but R0.
TEXT ·sigsysHandler(SB),NOSPLIT|NOFRAME,$0-0
	MOVWU	4(R1), R9		// si_errno: the filter's SECCOMP_RET_DATA, the role
	CMP	$260, R9		// numRoles
	BLO	rolok
	MOVD	$0, R9			// roleProcess
rolok:
	MOVWU	28(R1), R3		// si_arch
	MOVW	$0xc00000b7, R4		// AUDIT_ARCH_AARCH64
	CMPW	R4, R3
	BNE	other
	MOVWU	24(R1), R3		// si_syscall
	CMP	$512, R3		// numSyscalls
	BHS	other
	LSL	$4, R3, R3		// * sizeof(sigsysMessage)
	MOVD	$·sigsysMessages(SB), R4
	ADD	R3, R4, R4
	MOVD	0(R4), R1
	MOVD	8(R4), R2
	B	write
other:
	MOVD	$·sigsysOther(SB), R4
	MOVD	0(R4), R1
	MOVD	8(R4), R2
write:
	MOVD	$2, R0			// stderr
	MOVD	$64, R8			// SYS_write
	SVC	$0
	LSL	$4, R9, R3		// * sizeof(sigsysMessage)
	MOVD	$·sigsysRoles(SB), R4
	ADD	R3, R4, R4
	MOVD	0(R4), R1
	MOVD	8(R4), R2
	MOVD	$2, R0
	MOVD	$64, R8
	SVC	$0
	MOVD	$·sigsysHint(SB), R4
	MOVD	0(R4), R1
	MOVD	8(R4), R2
	MOVD	$2, R0
	MOVD	$64, R8
	SVC	$0
	MOVD	$159, R0		// ExitSIGSYS
	MOVD	$94, R8			// SYS_exit_group
	SVC	$0
	UNDEF

// sigsysHandlerPC returns the entry of sigsysHandler itself (ABI0), not of
// a Go wrapper around it.
TEXT ·sigsysHandlerPC(SB),NOSPLIT,$0-8
	MOVD	$·sigsysHandler(SB), R0
	MOVD	R0, ret+0(FP)
	RET
