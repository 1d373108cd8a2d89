/*
 * realmode is a 512-byte flat binary (a boot sector, 0x55 0xAA at the end)
 * that govmm loads at 0x7c00 and enters in 16-bit real mode. It checks that
 * CR0.PE is clear, prints "realmode: hello" on COM1 with plain port I/O and
 * leaves through the debug-exit port with 0x12 (process exit status 37), or
 * 0x13 (status 39) if it was not entered in real mode.
 */
	.code16
	.section .text, "ax"
	.globl _start
_start:
	cli
	cld
	/* Normalise CS:IP to 0000:7cxx whichever segment we were entered with. */
	ljmp	$0, $1f
1:	xor	%ax, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	$0x7c00, %sp

	mov	$hello, %si
	call	print

	mov	%cr0, %eax
	test	$1, %al
	jnz	not_real

	mov	$0x12, %eax
	jmp	exit
not_real:
	mov	$bad, %si
	call	print
	mov	$0x13, %eax
exit:
	mov	$0xf4, %dx
	outl	%eax, %dx
2:	hlt
	jmp	2b

/* print writes the NUL-terminated string at DS:SI to COM1. */
print:
	mov	$0x3f8, %dx
3:	lodsb
	test	%al, %al
	jz	4f
	out	%al, %dx
	jmp	3b
4:	ret

hello:	.asciz	"realmode: hello\r\n"
bad:	.asciz	"realmode: FAIL: CR0.PE is set\r\n"

	.org	510
	.byte	0x55, 0xaa
