/* user.S: FPU/SSE/XSAVE work of the probe. Runs at CPL3: on the project's
 * KVM, XSAVE/XGETBV at CPL0 are emulation failures (host-kvm.md). The C code
 * is built -mgeneral-regs-only, so the x87/XMM state set here stays put. */
	.text
/* void fpu_set_state(const uint64_t *xmm16x2, uint16_t fcw, uint32_t mxcsr) */
	.globl fpu_set_state
fpu_set_state:
	fninit
	sub $16, %rsp
	mov %si, (%rsp)
	fldcw (%rsp)
	mov %edx, 4(%rsp)
	ldmxcsr 4(%rsp)
	add $16, %rsp
	fld1
	fldpi
	movdqu 0(%rdi), %xmm0
	movdqu 16(%rdi), %xmm1
	movdqu 32(%rdi), %xmm2
	movdqu 48(%rdi), %xmm3
	movdqu 64(%rdi), %xmm4
	movdqu 80(%rdi), %xmm5
	movdqu 96(%rdi), %xmm6
	movdqu 112(%rdi), %xmm7
	movdqu 128(%rdi), %xmm8
	movdqu 144(%rdi), %xmm9
	movdqu 160(%rdi), %xmm10
	movdqu 176(%rdi), %xmm11
	movdqu 192(%rdi), %xmm12
	movdqu 208(%rdi), %xmm13
	movdqu 224(%rdi), %xmm14
	movdqu 240(%rdi), %xmm15
	ret

/* void fpu_fxsave(void *area512): 16-byte aligned */
	.globl fpu_fxsave
fpu_fxsave:
	fxsave64 (%rdi)
	ret

/* void fpu_xsave(void *area, uint64_t mask): 64-byte aligned */
	.globl fpu_xsave
fpu_xsave:
	mov %rsi, %rax
	mov %rsi, %rdx
	shr $32, %rdx
	xsave64 (%rdi)
	ret

/* uint64_t fpu_xgetbv(uint32_t idx) */
	.globl fpu_xgetbv
fpu_xgetbv:
	mov %edi, %ecx
	xgetbv
	shl $32, %rdx
	or %rdx, %rax
	ret
	.section .note.GNU-stack, "", @progbits
