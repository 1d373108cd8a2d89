/*
 * The benchmark guest: a Multiboot v1 kernel (so govmm, QEMU and the C
 * floor all load the same bytes) that runs ITER port or MMIO exits in a
 * tight 32-bit loop and then leaves through the debug-exit port.
 * Built three times: -DKIND=0 (exit at once), 1 (port I/O), 2 (MMIO).
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003

	.text
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.code32
	.globl _start
_start:
	cli
#if KIND == 1
	mov $ITER, %ecx
1:	out %al, $0x80
	dec %ecx
	jnz 1b
#elif KIND == 2
	mov $ITER, %ecx
	mov $0xFEB00000, %edi
1:	movl %ecx, (%edi)
	dec %ecx
	jnz 1b
#endif
	xor %eax, %eax
	out %al, $0xf4
2:	hlt
	jmp 2b
