/* asm.h: constants shared by entry.S and the C runtime. */
#ifndef GUESTLIB_ASM_H
#define GUESTLIB_ASM_H

#define MAX_CPUS 64

/* GDT selectors. */
#define KCODE64 0x08
#define KDATA 0x10
#define UDATA 0x18
#define UCODE64 0x20
#define KCODE32 0x28
#define TSS_SEL(i) (0x30 + 16 * (i))

/* Offsets in struct percpu (lib.h), reached through %gs. */
#define PERCPU_SELF 0
#define PERCPU_KSAVE 8
#define PERCPU_TSS 16
#define PERCPU_USTACK 24

/* Per-CPU user (CPL3) stack; a user_call nested inside a syscall handler
 * runs on the lowest USER_NEST_STACK bytes of it. */
#define USER_STACK_SIZE 32768
#define USER_NEST_STACK 8192

/* Where the AP trampoline is copied (below 1 MiB, page aligned). */
#define TRAMP_BASE 0x70000

/* Entering the kernel from CPL3 (see lib.h: sys_call). On the project's
 * KVM (PVM) `int $0x80` at CPL3 arrives as #UD, and port I/O at CPL3 faults
 * whatever IOPL says; so sys_call executes `ud2` at the known address
 * sys_call_insn and the #UD handler turns that into a syscall (rip += 2).
 * Vector 0x80 (a DPL3 gate) is also accepted where INT n works. */
#define SYSCALL_VECTOR 0x80

#define SYS_USER_RETURN 0

#endif
