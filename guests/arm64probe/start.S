/* start.S: the arm64 probe's entry. A Linux arm64 Image header (so any
 * loader of the arm64 boot protocol runs it: x0 = the DTB, MMU off), self
 * relocation, EL2 -> EL1 when entered at EL2, per-CPU stacks, the
 * exception vectors, the PSCI CPU_ON entry of the secondary CPUs and the
 * HVC/SMC call helpers. */

#define MAX_CPUS 64
#define STACK_SIZE 8192
#define R_AARCH64_RELATIVE 1027

	.section .head, "ax"
	.globl _start
_start:
	b	entry			/* code0 */
	.long	0			/* code1 */
	.quad	0			/* text_offset */
	.quad	__end - _start		/* image_size, BSS included */
	.quad	0xa			/* flags: little endian, 4K pages, anywhere */
	.quad	0, 0, 0			/* res2-4 */
	.ascii	"ARM\x64"		/* magic */
	.long	0			/* res5 (no PE header) */

	.text
entry:
	mov	x19, x0			/* the DTB */
	adr	x20, _start		/* where we run */
	/* Apply the R_AARCH64_RELATIVE relocations: *(base+off) = base+addend. */
	adrp	x1, __rela_start
	add	x1, x1, :lo12:__rela_start
	adrp	x2, __rela_end
	add	x2, x2, :lo12:__rela_end
1:	cmp	x1, x2
	b.hs	2f
	ldp	x3, x4, [x1]		/* r_offset, r_info */
	ldr	x5, [x1, #16]		/* r_addend */
	add	x1, x1, #24
	cmp	w4, #R_AARCH64_RELATIVE
	b.ne	1b
	add	x5, x5, x20
	str	x5, [x20, x3]
	b	1b
2:	/* Clear the BSS. */
	adrp	x1, __bss_start
	add	x1, x1, :lo12:__bss_start
	adrp	x2, __bss_end
	add	x2, x2, :lo12:__bss_end
3:	cmp	x1, x2
	b.hs	4f
	stp	xzr, xzr, [x1], #16
	b	3b
4:	mov	x0, #0
	bl	set_stack
	mrs	x21, CurrentEL
	bl	drop_to_el1
	adrp	x0, vectors
	add	x0, x0, :lo12:vectors
	msr	vbar_el1, x0
	bl	enable_fp
	isb
	mov	x0, x19
	mov	x1, x20
	ubfx	x2, x21, #2, #2
	bl	probe_main
	b	halt

/* set_stack(x0 = CPU index): sp = the top of that CPU's stack. */
set_stack:
	adrp	x1, stacks
	add	x1, x1, :lo12:stacks
	add	x0, x0, #1
	mov	x2, #STACK_SIZE
	madd	x1, x0, x2, x1
	mov	sp, x1
	ret

/* drop_to_el1: at EL2, set up EL1 as a hypervisor-less kernel would see it
 * (AArch64, counters and GIC system registers allowed, no traps) and
 * continue there on the same stack; at EL1 return at once. */
drop_to_el1:
	mrs	x0, CurrentEL
	cmp	x0, #8
	b.ne	9f
	mov	x0, #(1 << 31)		/* HCR_EL2.RW: EL1 is AArch64 */
	msr	hcr_el2, x0
	mrs	x0, cnthctl_el2
	orr	x0, x0, #3		/* EL1PCTEN, EL1PCEN */
	msr	cnthctl_el2, x0
	msr	cntvoff_el2, xzr
	mrs	x0, midr_el1
	msr	vpidr_el2, x0
	mrs	x0, mpidr_el1
	msr	vmpidr_el2, x0
	mov	x0, #0x33ff		/* CPTR_EL2: no FP/SIMD traps */
	msr	cptr_el2, x0
	msr	hstr_el2, xzr
	mrs	x0, S3_4_C12_C9_5	/* ICC_SRE_EL2 |= Enable | SRE */
	mov	x1, #9
	orr	x0, x0, x1
	msr	S3_4_C12_C9_5, x0
	isb
	ldr	x0, =0x30d00800		/* SCTLR_EL1: RES1 bits, MMU and caches off */
	msr	sctlr_el1, x0
	mov	x0, sp
	msr	sp_el1, x0
	mov	x0, #0x3c5		/* EL1h, DAIF masked */
	msr	spsr_el2, x0
	msr	elr_el2, x30
	isb
	eret
9:	ret

/* enable_fp: CPACR_EL1.FPEN = 3 (the probe's C is general-register only,
 * but the TUI shows FP state and the TUI's code may use SIMD registers). */
enable_fp:
	mov	x0, #(3 << 20)
	msr	cpacr_el1, x0
	ret

/* Secondary CPUs arrive here from PSCI CPU_ON with x0 = the context id
 * (their index), MMU off, at the EL the boot CPU was entered at. */
	.globl secondary_entry
secondary_entry:
	mov	x19, x0
	cmp	x19, #MAX_CPUS
	b.hs	halt
	bl	set_stack
	mrs	x21, CurrentEL
	bl	drop_to_el1
	adrp	x0, vectors
	add	x0, x0, :lo12:vectors
	msr	vbar_el1, x0
	bl	enable_fp
	isb
	mov	x0, x19
	ubfx	x1, x21, #2, #2
	bl	secondary_main
halt:
	wfi
	b	halt

/* uint64_t hvc_call(fn, a1, a2, a3) and smc_call: SMCCC calls, x0-x3
 * returned in a struct smccc_res when x4 (pointer) is not 0. */
	.globl hvc_call
hvc_call:
	mov	x8, x4
	hvc	#0
	b	1f
	.globl smc_call
smc_call:
	mov	x8, x4
	smc	#0
1:	cbz	x8, 2f
	stp	x0, x1, [x8]
	stp	x2, x3, [x8, #16]
2:	ret

/* Exception vectors: every entry saves x0-x30 and calls
 * exc_handler(kind, regs); kind 5 is an IRQ taken at EL1 on SP_EL1. */
.macro vent kind
	.balign 0x80
	sub	sp, sp, #256
	stp	x0, x1, [sp, #0]
	mov	x0, #\kind
	b	exc_common
.endm

	.balign 2048
vectors:
	vent 0
	vent 1
	vent 2
	vent 3
	vent 4
	vent 5
	vent 6
	vent 7
	vent 8
	vent 9
	vent 10
	vent 11
	vent 12
	vent 13
	vent 14
	vent 15

exc_common:
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x19, [sp, #144]
	stp	x20, x21, [sp, #160]
	stp	x22, x23, [sp, #176]
	stp	x24, x25, [sp, #192]
	stp	x26, x27, [sp, #208]
	stp	x28, x29, [sp, #224]
	str	x30, [sp, #240]
	mov	x1, sp
	bl	exc_handler
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldp	x6, x7, [sp, #48]
	ldp	x8, x9, [sp, #64]
	ldp	x10, x11, [sp, #80]
	ldp	x12, x13, [sp, #96]
	ldp	x14, x15, [sp, #112]
	ldp	x16, x17, [sp, #128]
	ldp	x18, x19, [sp, #144]
	ldp	x20, x21, [sp, #160]
	ldp	x22, x23, [sp, #176]
	ldp	x24, x25, [sp, #192]
	ldp	x26, x27, [sp, #208]
	ldp	x28, x29, [sp, #224]
	ldr	x30, [sp, #240]
	ldp	x0, x1, [sp, #0]
	add	sp, sp, #256
	eret

	.bss
	.balign 16
	.globl stacks
stacks:
	.space	STACK_SIZE * (MAX_CPUS + 1)
