/*
 * mblow: the Multiboot header and the 32-bit entry. The loader enters in
 * protected mode, paging off, with EAX = 0x2BADB002 and EBX = the
 * Multiboot information. Multiboot leaves ESP undefined; govmm sets it to
 * the top of a free boot stack, which mblow uses (so a stack placed over
 * the image shows) unless [ESP-4K, ESP) lies inside the image: then it
 * takes its own stack and reports the failure.
 */
	.section .multiboot, "a"
	.align 4
	.long 0x1BADB002                 /* magic */
	.long 0x00000003                 /* flags: page-align modules, memory info */
	.long -(0x1BADB002 + 0x00000003) /* checksum */

	.section .text.start, "ax"
	.code32
	.globl _start
_start:
	cli
	cld
	mov %esp, entry_esp
	cmp $__image_start, %esp
	jbe 1f                           /* stack below the image */
	lea -0x1000(%esp), %ecx
	cmp $__image_end, %ecx
	jae 1f                           /* stack above the image */
	movl $1, bad_stack
	mov $own_stack_top, %esp
1:	and $~15, %esp
	sub $8, %esp
	push %ebx
	push %eax
	call mblow_main
2:	cli
	hlt
	jmp 2b

	.bss
	.align 16
	.globl entry_esp, bad_stack
entry_esp:
	.long 0
bad_stack:
	.long 0
own_stack:
	.space 4096
own_stack_top:
