/*
 * entry.S: Multiboot v1 header, 32-bit entry, the switch to 64-bit long
 * mode, the interrupt stubs, the CPL3 switch and the AP trampoline.
 *
 * The image is linked as elf64 and converted to elf32-i386 so that any
 * Multiboot v1 loader (govmm, QEMU -kernel) loads it. Everything runs
 * identity mapped (the first 4 GiB with 2 MiB pages, user-accessible so
 * CPL3 code can use the same addresses).
 */
#include "asm.h"

	.section .multiboot, "a"
	.align 4
mb_header:
	.long 0x1BADB002                 /* magic */
	.long 0x00000003                 /* flags: page-align modules, memory info */
	.long -(0x1BADB002 + 0x00000003) /* checksum */

	.section .text.entry, "ax"
	.code32
	.globl _start32
_start32:
	cli
	cld
	mov %eax, %esi                   /* multiboot magic */
	mov %ebx, %ebp                   /* multiboot info */
	mov $boot_stack_top, %esp

	/* Clear .bss (page tables and stacks live outside it). */
	mov $__bss_start, %edi
	mov $__bss_clear_end, %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl

	mov %esi, mb_magic
	mov %ebp, mb_info

	/* PML4[0] -> PDPT, PDPT[0..3] -> PD0..PD3, PDs: 2048 2 MiB pages. */
	mov $pml4, %edi
	mov $1024, %ecx                  /* zero PML4 and PDPT (adjacent) */
	xor %eax, %eax
	rep stosl
	mov $pdpt, %eax
	or $7, %eax
	mov %eax, pml4
	mov $pd, %eax
	or $7, %eax
	mov %eax, pdpt
	add $0x1000, %eax
	mov %eax, pdpt+8
	add $0x1000, %eax
	mov %eax, pdpt+16
	add $0x1000, %eax
	mov %eax, pdpt+24

	mov $pd, %edi
	mov $0x87, %eax                  /* P | RW | US | PS */
	xor %ecx, %ecx
1:	cmp $1536, %ecx                  /* >= 3 GiB: MMIO hole, uncached */
	jb 2f
	or $0x18, %eax                   /* PWT | PCD */
2:	mov %eax, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	add $0x200000, %eax
	inc %ecx
	cmp $2048, %ecx
	jb 1b

	/* Enter long mode. */
	mov %cr4, %eax
	or $0x20, %eax                   /* PAE */
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	mov $0xC0000080, %ecx            /* EFER */
	rdmsr
	or $0x100, %eax                  /* LME */
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax             /* PG | PE */
	mov %eax, %cr0
	lgdt gdt_ptr
	ljmp $KCODE64, $start64

	.code64
start64:
	mov $KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov $boot_stack_top, %rsp
	xor %ebp, %ebp
	call lib_start                   /* never returns */
9:	cli
	hlt
	jmp 9b

/* ------------------------------------------------------------------ */
/* Interrupt stubs: one per vector, all funnel into trap_common.       */

	.text
	.align 16
	.globl isr_stub_table
isr_stub_table:
	vec = 0
	.rept 256
	.align 16
	.if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	pushq $vec
	.else
	pushq $0
	pushq $vec
	.endif
	jmp trap_common
	vec = vec + 1
	.endr

trap_common:
	push %rax
	push %rbx
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %rbp
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, %rdi
	call trap_dispatch
	.globl trap_return
trap_return:
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rbp
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rbx
	pop %rax
	add $16, %rsp
	iretq

/* ------------------------------------------------------------------ */
/* CPL3 switch.                                                          */
/* uint64_t user_call_on(uint64_t (*fn)(uint64_t), uint64_t arg,        */
/*                       uint64_t user_stack_top)  (see boot.c)        */
	.globl user_call_on
user_call_on:
	pushfq                           /* the caller's IF, restored on return */
	push %rbp
	push %rbx
	push %r12
	push %r13
	push %r14
	push %r15
	mov %gs:PERCPU_KSAVE, %rax
	push %rax                        /* allow nesting: save the previous frame */
	mov %gs:PERCPU_TSS, %rax
	pushq 4(%rax)                    /* and the previous TSS.RSP0 */
	mov %rsp, %gs:PERCPU_KSAVE
	mov %rsp, 4(%rax)                /* TSS.RSP0: traps from CPL3 land below us */
	mov %rdx, %rax
	and $~15, %rax
	sub $8, %rax
	movq $user_exit_stub, (%rax)     /* fn returns into the exit stub */
	pushfq
	pop %rcx
	and $0x200, %rcx                 /* keep the caller's IF */
	or $0x3002, %rcx                 /* IOPL=3, reserved bit 1 */
	pushq $UDATA|3
	push %rax
	push %rcx
	pushq $UCODE64|3
	push %rdi
	mov %rsi, %rdi
	xor %eax, %eax
	xor %ebx, %ebx
	xor %ecx, %ecx
	xor %edx, %edx
	xor %esi, %esi
	xor %ebp, %ebp
	xor %r8d, %r8d
	xor %r9d, %r9d
	xor %r10d, %r10d
	xor %r11d, %r11d
	xor %r12d, %r12d
	xor %r13d, %r13d
	xor %r14d, %r14d
	xor %r15d, %r15d
	iretq

	/* CPL3: fn returned its value in rax. */
user_exit_stub:
	mov %rax, %rsi
	mov $SYS_USER_RETURN, %edi
	call sys_call
	ud2

/* void user_return_to_kernel(uint64_t val): called at CPL0 from the syscall
 * handler; abandons the trap frame and returns val from user_call, with
 * RFLAGS (IF above all) as user_call's caller had it: the syscall's trap
 * gate cleared IF, and a second user_call after the first must not run
 * its CPL3 code with interrupts off. */
	.globl user_return_to_kernel
user_return_to_kernel:
	mov %rdi, %rax
	mov %gs:PERCPU_KSAVE, %rsp
	mov %gs:PERCPU_TSS, %rcx
	popq 4(%rcx)
	popq %gs:PERCPU_KSAVE
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbx
	pop %rbp
	popfq                            /* interrupts as the caller had them */
	ret

/* uint64_t sys_call(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2):
 * from CPL3, enter the kernel (see SYSCALL_INSN in asm.h). */
	.globl sys_call
sys_call:
	mov %rdi, %rax
	.globl sys_call_insn
sys_call_insn:
	ud2
	ret

/* ------------------------------------------------------------------ */
/* Safe MSR access: the #GP handler moves RIP to the fixup label.       */
/* int rdmsr_safe(uint32_t msr, uint64_t *val)                          */
	.globl rdmsr_safe
rdmsr_safe:
	mov %rsi, %r8
	mov %edi, %ecx
	xor %r9d, %r9d
	.globl rdmsr_safe_insn
rdmsr_safe_insn:
	rdmsr
	.globl rdmsr_safe_fixup
rdmsr_safe_fixup:
	test %r9d, %r9d
	jnz 1f
	shl $32, %rdx
	or %rdx, %rax
	mov %rax, (%r8)
	xor %eax, %eax
	ret
1:	mov $-1, %eax
	ret

/* int wrmsr_safe(uint32_t msr, uint64_t val) */
	.globl wrmsr_safe
wrmsr_safe:
	mov %edi, %ecx
	mov %rsi, %rax
	mov %rsi, %rdx
	shr $32, %rdx
	xor %r9d, %r9d
	.globl wrmsr_safe_insn
wrmsr_safe_insn:
	wrmsr
	.globl wrmsr_safe_fixup
wrmsr_safe_fixup:
	mov %r9d, %eax
	neg %eax
	ret

/* int xsetbv_safe(uint32_t xcr, uint64_t val) */
	.globl xsetbv_safe
xsetbv_safe:
	mov %edi, %ecx
	mov %rsi, %rax
	mov %rsi, %rdx
	shr $32, %rdx
	xor %r9d, %r9d
	.globl xsetbv_safe_insn
xsetbv_safe_insn:
	xsetbv
	.globl xsetbv_safe_fixup
xsetbv_safe_fixup:
	mov %r9d, %eax
	neg %eax
	ret

/* ------------------------------------------------------------------ */
/* AP trampoline, copied to TRAMP_BASE (below 1 MiB); entered in real  */
/* mode at CS=TRAMP_BASE>>4, IP=0 by the SIPI.                          */
#define TR(x) (TRAMP_BASE + ((x) - tramp_start))
	.section .rodata.tramp, "a"
	.code16
	.globl tramp_start, tramp_end
tramp_start:
	cli
	cld
	mov %cs, %ax
	mov %ax, %ds
	lgdtl (tramp_gdt_ptr - tramp_start)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $KCODE32, $TR(tramp32)
	.code32
tramp32:
	mov $KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %cr4, %eax
	or $0x20, %eax
	mov %eax, %cr4
	mov TR(tramp_cr3), %eax
	mov %eax, %cr3
	mov $0xC0000080, %ecx
	rdmsr
	or $0x100, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax
	mov %eax, %cr0
	ljmp $KCODE64, $TR(tramp64)
	.code64
tramp64:
	mov TR(tramp_stack), %rsp
	mov TR(tramp_arg), %rdi
	mov $ap_entry64, %rax
	jmp *%rax
	.align 8
	.globl tramp_gdt_ptr, tramp_cr3, tramp_stack, tramp_arg
tramp_gdt_ptr:
	.word 0
	.long 0
	.align 8
tramp_cr3:	.quad 0
tramp_stack:	.quad 0
tramp_arg:	.quad 0
tramp_end:

	.text
ap_entry64:
	lgdt gdt_ptr
	mov $KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	xor %ebp, %ebp
	call ap_start                    /* never returns */
9:	cli
	hlt
	jmp 9b

/* ------------------------------------------------------------------ */
	.data
	.align 16
	.globl gdt, gdt_ptr
gdt:
	.quad 0                          /* 0x00 null */
	.quad 0x00AF9A000000FFFF         /* 0x08 kernel code 64 */
	.quad 0x00CF92000000FFFF         /* 0x10 kernel data */
	.quad 0x00CFF2000000FFFF         /* 0x18 user data */
	.quad 0x00AFFA000000FFFF         /* 0x20 user code 64 */
	.quad 0x00CF9A000000FFFF         /* 0x28 kernel code 32 (AP trampoline) */
	.fill 2*MAX_CPUS, 8, 0           /* 0x30 TSS descriptors, 16 bytes each */
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.globl mb_magic, mb_info
	.bss
	.align 8
mb_magic:	.long 0
mb_info:	.long 0

	.section .pgtables, "aw", @nobits
	.align 4096
	.globl pml4, pdpt, pd
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4*4096

	.section .stack, "aw", @nobits
	.align 16
	.globl boot_stack_top
boot_stack:	.skip 16384
boot_stack_top:
	.globl user_stacks, kernel_stacks
	.align 16
user_stacks:	.skip USER_STACK_SIZE*MAX_CPUS
kernel_stacks:	.skip 16384*MAX_CPUS
