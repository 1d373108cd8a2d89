/*
 * elf64: entry point of the ELF64 test kernel. govmm's ELF64 loader jumps
 * here in 64-bit long mode with identity-mapped page tables and RSP set;
 * we deliberately keep using that stack (a missing RSP would fault on the
 * first call and end in a triple fault, which the test notices).
 */
	.code64
	.section .text.start, "ax"
	.globl _start
_start:
	cli
	cld
	mov	%rsp, entry_rsp(%rip)
	and	$~15, %rsp
	call	elf64_main
1:	hlt
	jmp	1b

	.bss
	.align 8
	.globl entry_rsp
entry_rsp:
	.quad 0
