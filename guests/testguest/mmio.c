/*
 * mmio.c: the MMIO instruction mix (test=mmio).
 *
 * Every form below runs twice: once against a RAM buffer (the reference)
 * and once against the test device's scratch area (platform.TestDeviceBase,
 * devices/testdev), each time starting from the same 64-byte template. The
 * integer forms run at CPL0 (every access emulated by the accelerator) and
 * again at CPL3, where the RAM reference runs natively on the CPU; the
 * SSE/AVX forms run at CPL3 only. One line is printed per form with what
 * changed (qwords of the area that differ from the template, registers,
 * flags) and "ok" or "MISMATCH" against the reference, then a checksum
 * line. The e2e test (e2e/mmio_test.go) compares the output across
 * accelerators and against values it computes itself.
 *
 * Forms marked NOKVM (movd and movq to or from MMIO, every VEX form) make
 * the KVM on the project's machines stop with an emulation failure when
 * they touch MMIO, even at CPL3, so they only run with all=1 or when only=
 * names them. mmio=BASE moves the area (QEMU's pc-testdev has a RAM-like
 * MMIO window at 0xff000000: -device pc-testdev, mmio=0xff000000).
 */
#include "tg.h"

#define FL_CF 0x001
#define FL_PF 0x004
#define FL_AF 0x010
#define FL_ZF 0x040
#define FL_SF 0x080
#define FL_OF 0x800
#define FL_ARITH (FL_CF | FL_PF | FL_AF | FL_ZF | FL_SF | FL_OF)
#define FL_LOGIC (FL_CF | FL_PF | FL_ZF | FL_SF | FL_OF)

/* Set the arithmetic flags to IN (keeping IF, IOPL, DF...) inside inline asm. */
#define SETFL(in) "pushfq\n\tandq $~0x8d5, (%%rsp)\n\torq $" #in ", (%%rsp)\n\tpopfq\n\t"
#define GETFL "pushfq\n\tpopq %[fl]\n\t"
#define R1 0x1111111111111111ul

/* The template: byte j of the area is (j*0x25 + 0x8d) & 0xff. */
#define TB(j) ((u64)((((j) * 0x25) + 0x8d) & 0xff))
#define TQ(i) (TB(8 * (i)) | TB(8 * (i) + 1) << 8 | TB(8 * (i) + 2) << 16 | TB(8 * (i) + 3) << 24 | \
	       TB(8 * (i) + 4) << 32 | TB(8 * (i) + 5) << 40 | TB(8 * (i) + 6) << 48 | TB(8 * (i) + 7) << 56)
static const u64 tmpl[8] = {TQ(0), TQ(1), TQ(2), TQ(3), TQ(4), TQ(5), TQ(6), TQ(7)};
/* srcbuf: byte j is 0xa0 + j (RAM source of string forms). */
static const u8 srcbuf[32] __attribute__((aligned(32))) = {
	0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
	0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf};
/* cmpbuf: the template's first 5 bytes, then different (for repe cmpsb). */
static const u8 cmpbuf[16] = {0x8d, 0xb2, 0xd7, 0xfc, 0x21, 0x00, 0x01, 0x02,
			      0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a};
/* vsrc: the value vector stores write (byte j is 0x40 + j). */
static const u8 vsrc[32] __attribute__((aligned(32))) = {
	0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f,
	0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f};

static u8 ram_area[64] __attribute__((aligned(64), used));

struct res {
	u64 r1, r2, r3, r4, fl;
	u64 m[8];
	u64 x[4]; /* RAM destination of MMIO->RAM forms, vector registers */
};

typedef void form_fn(volatile u8 *p, struct res *r);

enum { NONE = 0, REG1 = 1, REG2 = 2, AUX = 4, VEC = 8, AVX = 16, STRS = 32, NOKVM = 64 };

struct form {
	const char *name;
	form_fn *fn;
	u64 flmask; /* flags printed and compared */
	int what;   /* REG1/REG2/STRS/AUX/VEC: which results are printed; AVX, NOKVM */
};

/* ---- plain moves ---- */
#define ST(fname, insn, val)                                                            \
	static void fname(volatile u8 *p, struct res *r)                                \
	{                                                                               \
		u64 s = (val);                                                          \
		(void)r;                                                                \
		__asm__ volatile(insn : : [p] "r"(p), [s] "r"(s) : "memory", "r15"); \
	}
ST(f_mov8_st_r, "movb %b[s], 3(%[p])", 0xa5)
ST(f_mov8_st_i, "movb $0x5a, 4(%[p])", 0)
ST(f_mov8_st_ah, "mov %[s], %%r15\n\txchg %%r15, %%rax\n\tmovb %%ah, 50(%[p])\n\txchg %%r15, %%rax", 0x1234)
ST(f_mov16_st_r, "movw %w[s], 9(%[p])", 0xbeef)
ST(f_mov16_st_i, "movw $0x1234, 14(%[p])", 0)
ST(f_mov32_st_r, "movl %k[s], 17(%[p])", 0xdeadbeef)
ST(f_mov32_st_i, "movl $0x89abcdef, 24(%[p])", 0)
ST(f_mov64_st_r, "movq %[s], 33(%[p])", 0x0123456789abcdef)
ST(f_mov64_st_i, "movq $-2, 40(%[p])", 0)
ST(f_mov64_st_r15, "mov %[s], %%r15\n\tmovq %%r15, 48(%[p])", 0xfedcba9876543210)

#define LD(fname, insn)                                                                           \
	static void fname(volatile u8 *p, struct res *r)                                          \
	{                                                                                         \
		u64 v = R1;                                                                       \
		__asm__ volatile(insn : [v] "+&a"(v) : [p] "r"(p) : "memory", "r11", "cc");        \
		r->r1 = v;                                                                        \
	}
LD(f_mov8_ld, "movb 5(%[p]), %b[v]")
LD(f_mov8_ld_ah, "movb 6(%[p]), %%ah")
LD(f_mov16_ld, "movw 7(%[p]), %w[v]")
LD(f_mov32_ld, "movl 13(%[p]), %k[v]")
LD(f_mov64_ld, "movq 19(%[p]), %[v]")
LD(f_mov64_ld_r11, "movq 24(%[p]), %%r11\n\tmov %%r11, %[v]")
LD(f_mov32_ld_a32, "movl 0x10(%k[p]), %k[v]")
LD(f_mov32_ld_sib, "mov $1, %%r11\n\tmovl 4(%[p],%%r11,8), %k[v]")
LD(f_movzbl, "movzbl 3(%[p]), %k[v]")
LD(f_movzbw, "movzbw 3(%[p]), %w[v]")
LD(f_movzwl, "movzwl 5(%[p]), %k[v]")
LD(f_movzbq, "movzbq 3(%[p]), %[v]")
LD(f_movzwq, "movzwq 6(%[p]), %[v]")
LD(f_movsbl, "movsbl 3(%[p]), %k[v]")
LD(f_movsbw, "movsbw 4(%[p]), %w[v]")
LD(f_movswl, "movswl 6(%[p]), %k[v]")
LD(f_movsbq, "movsbq 3(%[p]), %[v]")
LD(f_movswq, "movswq 10(%[p]), %[v]")
LD(f_movslq, "movslq 12(%[p]), %[v]")

/* ---- moffs forms (A0-A3): the address is an immediate, so one copy per base ---- */
#define MOFFS_SET(tag, base)                                                                          \
	static void moffs_##tag(int which, struct res *r)                                             \
	{                                                                                             \
		u64 v = R1;                                                                           \
		switch (which) {                                                                      \
		case 0:                                                                               \
			v = 0x77;                                                                     \
			__asm__ volatile("movabs %%al, " base "+1" : : "a"(v) : "memory");            \
			break;                                                                        \
		case 1:                                                                               \
			__asm__ volatile("movabs " base "+2, %%ax" : "+a"(v) : : "memory");           \
			break;                                                                        \
		case 2:                                                                               \
			v = 0xcafef00d;                                                               \
			__asm__ volatile("movabs %%eax, " base "+8" : : "a"(v) : "memory");           \
			break;                                                                        \
		case 3:                                                                               \
			__asm__ volatile("movabs " base "+4, %%eax" : "+a"(v) : : "memory");          \
			break;                                                                        \
		case 4:                                                                               \
			__asm__ volatile("movabs " base "+16, %%rax" : "+a"(v) : : "memory");         \
			break;                                                                        \
		case 5:                                                                               \
			v = 0x1122334455667788;                                                       \
			__asm__ volatile("movabs %%rax, " base "+24" : : "a"(v) : "memory");          \
			break;                                                                        \
		}                                                                                     \
		r->r1 = v;                                                                            \
	}
MOFFS_SET(ram, "ram_area")
MOFFS_SET(dev, "0xfeb00000")
MOFFS_SET(qemu, "0xff000000")

static int moffs_bad;
static void moffs(int which, volatile u8 *p, struct res *r)
{
	if (p == ram_area)
		moffs_ram(which, r);
	else if ((u64)p == 0xfeb00000ul)
		moffs_dev(which, r);
	else if ((u64)p == 0xff000000ul)
		moffs_qemu(which, r);
	else
		moffs_bad = 1;
}
#define MOFFS(n) \
	static void f_moffs##n(volatile u8 *p, struct res *r) { moffs(n, p, r); }
MOFFS(0)
MOFFS(1)
MOFFS(2)
MOFFS(3)
MOFFS(4)
MOFFS(5)

/* ---- string forms: r1/r2 report pointers relative to p (or the RAM buffer), rcx ---- */
static u8 aux[32] __attribute__((aligned(32)));
static void aux_clear(void)
{
	for (int i = 0; i < 4; i++)
		((volatile u64 *)aux)[i] = 0;
}
static void aux_save(struct res *r)
{
	for (int i = 0; i < 4; i++)
		r->x[i] = ((volatile u64 *)aux)[i];
}

/* STR: rsi/rdi/rcx/rax given; after: r1 = rdi - dbase, r2 = rcx, r3 = rsi - si, r4 = rax, x = aux. */
#define STR(fname, pre, insn, si, di, cnt, ax, dbase)                                               \
	static void fname(volatile u8 *p, struct res *r)                                            \
	{                                                                                           \
		u64 S = (u64)(si), D = (u64)(di), C = (cnt), A = (ax), fl;                           \
		aux_clear();                                                                        \
		__asm__ volatile(pre "\n\t" insn "\n\t" GETFL "cld"                                   \
				 : "+S"(S), "+D"(D), "+c"(C), "+a"(A), [fl] "=&r"(fl)                \
				 :                                                                  \
				 : "memory", "cc");                                                 \
		r->r1 = D - (u64)(dbase);                                                           \
		r->r2 = C;                                                                          \
		r->fl = fl;                                                                         \
		r->r3 = S - (u64)(si);                                                              \
		r->r4 = A;                                                                          \
		aux_save(r);                                                                        \
	}
#define CLD "cld"
#define STD "std"
STR(f_rep_movsb_r2m, CLD, "rep movsb", srcbuf, p + 5, 13, 0, p)
STR(f_rep_movsq_m2r, CLD, "rep movsq", p + 8, aux, 3, 0, aux)
STR(f_rep_movsl_m2m, CLD, "rep movsl", p, p + 36, 5, 0, p)
STR(f_rep_movsw_r2m_std, STD, "rep movsw", srcbuf + 14, p + 30, 6, 0, p)
STR(f_rep_movsb_m2r_std, STD, "rep movsb", p + 20, aux + 15, 9, 0, aux)
STR(f_rep_movsq_m2m_std, STD, "rep movsq", p + 16, p + 48, 2, 0, p)
STR(f_rep_movsl_r2m, CLD, "rep movsl", srcbuf, p + 4, 6, 0, p)
STR(f_rep_movsl_m2r, CLD, "rep movsl", p + 12, aux, 5, 0, aux)
STR(f_rep_movsl_r2m_std, STD, "rep movsl", srcbuf + 28, p + 56, 4, 0, p)
STR(f_rep_movsq_r2m, CLD, "rep movsq", srcbuf, p + 24, 4, 0, p)
STR(f_movsb_m2m, CLD, "movsb", p + 1, p + 60, 0, 0, p)
STR(f_movsq_r2m, CLD, "movsq", srcbuf + 8, p + 40, 0, 0, p)
STR(f_movsw_m2r_std, STD, "movsw", p + 22, aux + 6, 0, 0, aux)
STR(f_rep_stosb, CLD, "rep stosb", 0, p + 3, 11, 0xcc, p)
STR(f_rep_stosw_std, STD, "rep stosw", 0, p + 40, 5, 0xa1b2, p)
STR(f_rep_stosl, CLD, "rep stosl", 0, p + 12, 4, 0x01020304, p)
STR(f_rep_stosq_std, STD, "rep stosq", 0, p + 56, 3, 0x5555aaaa6666bbbb, p)
STR(f_stosq, CLD, "stosq", 0, p + 8, 0, 0x0807060504030201, p)
STR(f_rep_stosb_zero, CLD, "rep stosb", 0, p + 3, 0, 0xee, p)
STR(f_lodsb, CLD, "lodsb", p + 7, 0, 0, R1, 0)
STR(f_lodsq_std, STD, "lodsq", p + 16, 0, 0, R1, 0)
STR(f_rep_lodsl, CLD, "rep lodsl", p + 4, 0, 3, R1, 0)
STR(f_repe_cmpsb, CLD, "repe cmpsb", p, cmpbuf, 16, 0, cmpbuf)
STR(f_repne_scasb, CLD, "repne scasb", 0, p, 32, 0xda, p)
STR(f_scasq, CLD, "scasq", 0, p + 8, 0, 0x1234, p)
STR(f_cmpsw_std, STD, "cmpsw", p + 10, cmpbuf + 2, 0, 0, cmpbuf)

/* ---- read-modify-write with a memory destination ---- */
#define RMW(fname, insn, src, flin)                                                       \
	static void fname(volatile u8 *p, struct res *r)                                  \
	{                                                                                 \
		u64 s = (src), fl;                                                        \
		__asm__ volatile(SETFL(flin) insn "\n\t" GETFL                            \
				 : [fl] "=&r"(fl), [s] "+&c"(s)                           \
				 : [p] "r"(p)                                             \
				 : "memory", "cc");                                       \
		r->fl = fl;                                                               \
		r->r1 = s;                                                                \
	}
#define ALU4(op)                                                               \
	RMW(f_##op##8, #op "b %b[s], 1(%[p])", 0x7f, 1)                        \
	RMW(f_##op##16, #op "w $0x8001, 2(%[p])", 0, 1)                        \
	RMW(f_##op##32, #op "l $-3, 5(%[p])", 0, 1)                            \
	RMW(f_##op##64, #op "q %[s], 8(%[p])", 0x8000000000000001, 1)          \
	RMW(f_##op##8i, #op "b $0x81, 17(%[p])", 0, 0)
ALU4(add)
ALU4(or)
ALU4(and)
ALU4(xor)
ALU4(sub)
ALU4(adc)
ALU4(sbb)
#define UN4(op)                                          \
	RMW(f_##op##8, #op "b 0(%[p])", 0, 1)            \
	RMW(f_##op##16, #op "w 2(%[p])", 0, 1)           \
	RMW(f_##op##32, #op "l 4(%[p])", 0, 1)           \
	RMW(f_##op##64, #op "q 8(%[p])", 0, 1)
UN4(inc)
UN4(dec)
UN4(not)
UN4(neg)
/* memory as source: register destination, compare and test */
RMW(f_add64_ld, "addq 16(%[p]), %[s]", 0x7fffffffffffffff, 0)
RMW(f_sub32_ld, "subl 20(%[p]), %k[s]", 0x12345678, 0)
RMW(f_cmp32, "cmpl %k[s], 20(%[p])", 0x12345678, 0)
RMW(f_cmp8_i, "cmpb $0x7f, 23(%[p])", 0, 0)
RMW(f_test16_i, "testw $0x8000, 22(%[p])", 0, 1)
RMW(f_test64_r, "testq %[s], 24(%[p])", 0x00ff00ff00ff00ff, 0)
RMW(f_add32_sib, "mov $1, %%r11\n\taddl %k[s], 4(%[p],%%r11,8)", 0x11111111, 0)
/* exchange */
RMW(f_xchg8, "xchgb %b[s], 3(%[p])", R1, 0)
RMW(f_xchg16, "xchgw %w[s], 6(%[p])", R1, 0)
RMW(f_xchg32, "xchgl %k[s], 12(%[p])", R1, 0)
RMW(f_xchg64, "xchgq %[s], 16(%[p])", R1, 0)
RMW(f_xadd32, "xaddl %k[s], 4(%[p])", 0x80000000, 0)
RMW(f_lock_xadd64, "lock xaddq %[s], 8(%[p])", 0x100, 0)
/* lock forms */
RMW(f_lock_add64, "lock addq %[s], 8(%[p])", 0x0101010101010101, 0)
RMW(f_lock_or8_i, "lock orb $0x42, 1(%[p])", 0, 0)
RMW(f_lock_and16, "lock andw %w[s], 2(%[p])", 0x0ff0, 0)
RMW(f_lock_xor32, "lock xorl %k[s], 4(%[p])", 0xffffffff, 0)
RMW(f_lock_sub64_i, "lock subq $0x7f, 16(%[p])", 0, 0)
RMW(f_lock_adc32, "lock adcl %k[s], 12(%[p])", 0x7fffffff, 1)
RMW(f_lock_sbb8, "lock sbbb %b[s], 7(%[p])", 0xff, 1)
RMW(f_lock_inc32, "lock incl 20(%[p])", 0, 1)
RMW(f_lock_dec64, "lock decq 24(%[p])", 0, 0)
RMW(f_lock_not8, "lock notb 30(%[p])", 0, 0)
RMW(f_lock_neg16, "lock negw 32(%[p])", 0, 0)
/* bit tests */
RMW(f_bt32_i, "btl $5, 4(%[p])", 0, 0)
RMW(f_bts64_i, "btsq $63, 8(%[p])", 0, 0)
RMW(f_btr16_i, "btrw $3, 2(%[p])", 0, 0)
RMW(f_btc32_i, "btcl $31, 12(%[p])", 0, 1)
RMW(f_bt64_r, "btq %[s], 0(%[p])", 70, 0)
RMW(f_bts32_r, "btsl %k[s], 16(%[p])", 45, 0)
RMW(f_btr64_r, "btrq %[s], 0(%[p])", 200, 1)
RMW(f_btc16_r, "btcw %w[s], 2(%[p])", 17, 0)
RMW(f_bts32_r_neg, "btsl %k[s], 32(%[p])", (u32)-20, 0)
RMW(f_lock_bts64_i, "lock btsq $1, 40(%[p])", 0, 0)
RMW(f_lock_btr32_r, "lock btrl %k[s], 44(%[p])", 34, 0)
RMW(f_lock_btc16_i, "lock btcw $15, 46(%[p])", 0, 0)
/* setcc to memory (flags chosen by SETFL) */
RMW(f_sete, "sete 3(%[p])", 0, 0x40)
RMW(f_setc, "setc 4(%[p])", 0, 0x01)
RMW(f_setl, "setl 5(%[p])", 0, 0x80)
RMW(f_setne, "setne 6(%[p])", 0, 0x40)
/* push/pop with memory operands */
RMW(f_push64_m, "pushq 8(%[p])\n\tpopq %[s]", 0, 0)
RMW(f_pop64_m, "pushq %[s]\n\tpopq 16(%[p])", 0x0badc0de0badc0de, 0)
RMW(f_push16_m, "pushw 4(%[p])\n\tpopw %w[s]", R1, 0)

/* cmpxchg: rax = expected (from the template: success) or not */
#define TQ32(off) ((u64)(u32)(tmpl[(off) / 8] >> (8 * ((off) % 8))))
#define CX(fname, insn, expect, newv)                                                        \
	static void fname(volatile u8 *p, struct res *r)                                     \
	{                                                                                    \
		u64 a = (expect), s = (newv), fl;                                            \
		__asm__ volatile(insn "\n\t" GETFL                                           \
				 : [fl] "=&r"(fl), "+a"(a)                                   \
				 : [p] "r"(p), [s] "r"(s)                                    \
				 : "memory", "cc");                                          \
		r->fl = fl;                                                                  \
		r->r1 = a;                                                                   \
	}
CX(f_cmpxchg32_eq, "cmpxchgl %k[s], 12(%[p])", TQ32(12), 0x600dbeef)
CX(f_cmpxchg64_ne, "cmpxchgq %[s], 16(%[p])", 0, 0x600dbeef600dbeef)
CX(f_lock_cmpxchg64_eq, "lock cmpxchgq %[s], 24(%[p])", tmpl[3], 0x0102030405060708)
CX(f_lock_cmpxchg16_ne, "lock cmpxchgw %w[s], 2(%[p])", R1, 0x4242)
CX(f_cmpxchg8_eq, "cmpxchgb %b[s], 9(%[p])", (tmpl[1] >> 8) & 0xff, 0x99)

#define CX8B(fname, insn, expect)                                                                    \
	static void fname(volatile u8 *p, struct res *r)                                             \
	{                                                                                            \
		u64 e = (expect), a = (u32)e, d = e >> 32, b = 0x33333333, c = 0x44444444, fl;       \
		__asm__ volatile(insn "\n\t" GETFL                                                   \
				 : [fl] "=&r"(fl), "+a"(a), "+d"(d)                                  \
				 : [p] "r"(p), "b"(b), "c"(c)                                        \
				 : "memory", "cc");                                                  \
		r->fl = fl;                                                                          \
		r->r1 = a;                                                                           \
		r->r2 = d;                                                                           \
	}
CX8B(f_cmpxchg8b_eq, "cmpxchg8b 32(%[p])", tmpl[4])
CX8B(f_lock_cmpxchg8b_ne, "lock cmpxchg8b 40(%[p])", 0)

/* ---- SSE/AVX (CPL3 only): loads leave the register in x[], stores write memory ---- */
#define VLD(fname, pre, insn, post)                                                                  \
	static void fname(volatile u8 *p, struct res *r)                                             \
	{                                                                                            \
		aux_clear();                                                                         \
		__asm__ volatile(pre "\n\t" insn "\n\t" post                                         \
				 : : [p] "r"(p), [a] "r"(aux), [v] "r"(vsrc) : "memory");    \
		aux_save(r);                                                                         \
	}
#define ONES "pcmpeqd %%xmm0, %%xmm0"
#define XOUT "movdqu %%xmm0, (%[a])"
#define VSRC "movdqu (%[v]), %%xmm0"
VLD(f_movd_ld, ONES, "movd 4(%[p]), %%xmm0", XOUT)
VLD(f_movd_st, VSRC, "movd %%xmm0, 9(%[p])", "")
VLD(f_movq_ld, ONES, "movq 16(%[p]), %%xmm0", XOUT)
VLD(f_movq_st, VSRC, "movq %%xmm0, 20(%[p])", "")
VLD(f_movdqa_ld, ONES, "movdqa 16(%[p]), %%xmm0", XOUT)
VLD(f_movdqa_st, VSRC, "movdqa %%xmm0, 32(%[p])", "")
VLD(f_movdqu_ld, ONES, "movdqu 3(%[p]), %%xmm0", XOUT)
VLD(f_movdqu_st, VSRC, "movdqu %%xmm0, 41(%[p])", "")
VLD(f_movaps_ld, ONES, "movaps 48(%[p]), %%xmm0", XOUT)
VLD(f_movaps_st, VSRC, "movaps %%xmm0, 0(%[p])", "")
VLD(f_movups_ld, ONES, "movups 7(%[p]), %%xmm0", XOUT)
VLD(f_movups_st, VSRC, "movups %%xmm0, 27(%[p])", "")
VLD(f_movntdq_st, VSRC, "movntdq %%xmm0, 16(%[p])\n\tsfence", "")
#define YONES "vpcmpeqd %%xmm0, %%xmm0, %%xmm0\n\tvinsertf128 $1, %%xmm0, %%ymm0, %%ymm0"
#define YOUT "vmovdqu %%ymm0, (%[a])\n\tvzeroupper"
#define YSRC "vmovdqu (%[v]), %%ymm0"
VLD(f_vmovdqu128_ld, YONES, "vmovdqu 5(%[p]), %%xmm0", YOUT)
VLD(f_vmovdqu128_st, YSRC, "vmovdqu %%xmm0, 19(%[p])\n\tvzeroupper", "")
VLD(f_vmovdqa128_ld, YONES, "vmovdqa 32(%[p]), %%xmm0", YOUT)
VLD(f_vmovdqa128_st, YSRC, "vmovdqa %%xmm0, 16(%[p])\n\tvzeroupper", "")
VLD(f_vmovdqu256_ld, YONES, "vmovdqu 9(%[p]), %%ymm0", YOUT)
VLD(f_vmovdqu256_st, YSRC, "vmovdqu %%ymm0, 3(%[p])\n\tvzeroupper", "")
VLD(f_vmovdqa256_ld, YONES, "vmovdqa 32(%[p]), %%ymm0", YOUT)
VLD(f_vmovdqa256_st, YSRC, "vmovdqa %%ymm0, 0(%[p])\n\tvzeroupper", "")

#define F(n, fn, mask, what) {n, fn, mask, what}
static const struct form forms[] = {
	F("mov8.st.r", f_mov8_st_r, 0, 0),
	F("mov8.st.i", f_mov8_st_i, 0, 0),
	F("mov8.st.ah", f_mov8_st_ah, 0, 0),
	F("mov16.st.r", f_mov16_st_r, 0, 0),
	F("mov16.st.i", f_mov16_st_i, 0, 0),
	F("mov32.st.r", f_mov32_st_r, 0, 0),
	F("mov32.st.i", f_mov32_st_i, 0, 0),
	F("mov64.st.r", f_mov64_st_r, 0, 0),
	F("mov64.st.i", f_mov64_st_i, 0, 0),
	F("mov64.st.r15", f_mov64_st_r15, 0, 0),
	F("mov8.ld", f_mov8_ld, 0, REG1),
	F("mov8.ld.ah", f_mov8_ld_ah, 0, REG1),
	F("mov16.ld", f_mov16_ld, 0, REG1),
	F("mov32.ld", f_mov32_ld, 0, REG1),
	F("mov64.ld", f_mov64_ld, 0, REG1),
	F("mov64.ld.r11", f_mov64_ld_r11, 0, REG1),
	F("mov32.ld.a32", f_mov32_ld_a32, 0, REG1),
	F("mov32.ld.sib", f_mov32_ld_sib, 0, REG1),
	F("moffs8.st", f_moffs0, 0, 0),
	F("moffs16.ld", f_moffs1, 0, REG1),
	F("moffs32.st", f_moffs2, 0, 0),
	F("moffs32.ld", f_moffs3, 0, REG1),
	F("moffs64.ld", f_moffs4, 0, REG1),
	F("moffs64.st", f_moffs5, 0, 0),
	F("movzbl", f_movzbl, 0, REG1),
	F("movzbw", f_movzbw, 0, REG1),
	F("movzwl", f_movzwl, 0, REG1),
	F("movzbq", f_movzbq, 0, REG1),
	F("movzwq", f_movzwq, 0, REG1),
	F("movsbl", f_movsbl, 0, REG1),
	F("movsbw", f_movsbw, 0, REG1),
	F("movswl", f_movswl, 0, REG1),
	F("movsbq", f_movsbq, 0, REG1),
	F("movswq", f_movswq, 0, REG1),
	F("movslq", f_movslq, 0, REG1),
	F("rep.movsb.ram2mmio", f_rep_movsb_r2m, 0, STRS),
	F("rep.movsq.mmio2ram", f_rep_movsq_m2r, 0, STRS | AUX),
	F("rep.movsl.mmio2mmio", f_rep_movsl_m2m, 0, STRS),
	F("rep.movsw.ram2mmio.std", f_rep_movsw_r2m_std, 0, STRS),
	F("rep.movsb.mmio2ram.std", f_rep_movsb_m2r_std, 0, STRS | AUX),
	F("rep.movsq.mmio2mmio.std", f_rep_movsq_m2m_std, 0, STRS),
	F("rep.movsl.ram2mmio", f_rep_movsl_r2m, 0, STRS),
	F("rep.movsl.mmio2ram", f_rep_movsl_m2r, 0, STRS | AUX),
	F("rep.movsl.ram2mmio.std", f_rep_movsl_r2m_std, 0, STRS),
	F("rep.movsq.ram2mmio", f_rep_movsq_r2m, 0, STRS),
	F("movsb.mmio2mmio", f_movsb_m2m, 0, STRS),
	F("movsq.ram2mmio", f_movsq_r2m, 0, STRS),
	F("movsw.mmio2ram.std", f_movsw_m2r_std, 0, STRS | AUX),
	F("rep.stosb", f_rep_stosb, 0, STRS),
	F("rep.stosw.std", f_rep_stosw_std, 0, STRS),
	F("rep.stosl", f_rep_stosl, 0, STRS),
	F("rep.stosq.std", f_rep_stosq_std, 0, STRS),
	F("stosq", f_stosq, 0, STRS),
	F("rep.stosb.count0", f_rep_stosb_zero, 0, STRS),
	F("lodsb", f_lodsb, 0, STRS | AUX),
	F("lodsq.std", f_lodsq_std, 0, STRS | AUX),
	F("rep.lodsl", f_rep_lodsl, 0, STRS | AUX),
	F("repe.cmpsb", f_repe_cmpsb, FL_ARITH, STRS | AUX),
	F("repne.scasb", f_repne_scasb, FL_ARITH, STRS),
	F("scasq", f_scasq, FL_ARITH, STRS),
	F("cmpsw.std", f_cmpsw_std, FL_ARITH, STRS | AUX),
#define FALU(op, mask) F(#op "8", f_##op##8, mask, 0), F(#op "16.i", f_##op##16, mask, 0), \
		       F(#op "32.i8", f_##op##32, mask, 0), F(#op "64", f_##op##64, mask, 0),  \
		       F(#op "8.i", f_##op##8i, mask, 0)
	FALU(add, FL_ARITH),
	FALU(or, FL_LOGIC),
	FALU(and, FL_LOGIC),
	FALU(xor, FL_LOGIC),
	FALU(sub, FL_ARITH),
	FALU(adc, FL_ARITH),
	FALU(sbb, FL_ARITH),
#define FUN(op, mask) F(#op "8", f_##op##8, mask, 0), F(#op "16", f_##op##16, mask, 0), \
		      F(#op "32", f_##op##32, mask, 0), F(#op "64", f_##op##64, mask, 0)
	FUN(inc, FL_ARITH),
	FUN(dec, FL_ARITH),
	FUN(not, FL_ARITH),
	FUN(neg, FL_ARITH),
	F("add64.ld", f_add64_ld, FL_ARITH, REG1),
	F("sub32.ld", f_sub32_ld, FL_ARITH, REG1),
	F("cmp32", f_cmp32, FL_ARITH, 0),
	F("cmp8.i", f_cmp8_i, FL_ARITH, 0),
	F("test16.i", f_test16_i, FL_LOGIC, 0),
	F("test64.r", f_test64_r, FL_LOGIC, 0),
	F("add32.sib", f_add32_sib, FL_ARITH, 0),
	F("xchg8", f_xchg8, 0, REG1),
	F("xchg16", f_xchg16, 0, REG1),
	F("xchg32", f_xchg32, 0, REG1),
	F("xchg64", f_xchg64, 0, REG1),
	F("xadd32", f_xadd32, FL_ARITH, REG1),
	F("lock.xadd64", f_lock_xadd64, FL_ARITH, REG1),
	F("cmpxchg32.eq", f_cmpxchg32_eq, FL_ARITH, REG1),
	F("cmpxchg64.ne", f_cmpxchg64_ne, FL_ARITH, REG1),
	F("lock.cmpxchg64.eq", f_lock_cmpxchg64_eq, FL_ARITH, REG1),
	F("lock.cmpxchg16.ne", f_lock_cmpxchg16_ne, FL_ARITH, REG1),
	F("cmpxchg8.eq", f_cmpxchg8_eq, FL_ARITH, REG1),
	F("cmpxchg8b.eq", f_cmpxchg8b_eq, FL_ZF, REG1 | REG2),
	F("lock.cmpxchg8b.ne", f_lock_cmpxchg8b_ne, FL_ZF, REG1 | REG2),
	F("lock.add64", f_lock_add64, FL_ARITH, 0),
	F("lock.or8.i", f_lock_or8_i, FL_LOGIC, 0),
	F("lock.and16", f_lock_and16, FL_LOGIC, 0),
	F("lock.xor32", f_lock_xor32, FL_LOGIC, 0),
	F("lock.sub64.i", f_lock_sub64_i, FL_ARITH, 0),
	F("lock.adc32", f_lock_adc32, FL_ARITH, 0),
	F("lock.sbb8", f_lock_sbb8, FL_ARITH, 0),
	F("lock.inc32", f_lock_inc32, FL_ARITH, 0),
	F("lock.dec64", f_lock_dec64, FL_ARITH, 0),
	F("lock.not8", f_lock_not8, FL_ARITH, 0),
	F("lock.neg16", f_lock_neg16, FL_ARITH, 0),
	F("bt32.i", f_bt32_i, FL_CF, 0),
	F("bts64.i", f_bts64_i, FL_CF, 0),
	F("btr16.i", f_btr16_i, FL_CF, 0),
	F("btc32.i", f_btc32_i, FL_CF, 0),
	F("bt64.r", f_bt64_r, FL_CF, 0),
	F("bts32.r", f_bts32_r, FL_CF, 0),
	F("btr64.r", f_btr64_r, FL_CF, 0),
	F("btc16.r", f_btc16_r, FL_CF, 0),
	F("bts32.r.neg", f_bts32_r_neg, FL_CF, 0),
	F("lock.bts64.i", f_lock_bts64_i, FL_CF, 0),
	F("lock.btr32.r", f_lock_btr32_r, FL_CF, 0),
	F("lock.btc16.i", f_lock_btc16_i, FL_CF, 0),
	F("sete", f_sete, 0, 0),
	F("setc", f_setc, 0, 0),
	F("setl", f_setl, 0, 0),
	F("setne", f_setne, 0, 0),
	F("push64.m", f_push64_m, 0, REG1),
	F("pop64.m", f_pop64_m, 0, 0),
	F("push16.m", f_push16_m, 0, REG1),
	F("movd.ld", f_movd_ld, 0, VEC | NOKVM),
	F("movd.st", f_movd_st, 0, VEC | NOKVM),
	F("movq.ld", f_movq_ld, 0, VEC | NOKVM),
	F("movq.st", f_movq_st, 0, VEC | NOKVM),
	F("movdqa.ld", f_movdqa_ld, 0, VEC),
	F("movdqa.st", f_movdqa_st, 0, VEC),
	F("movdqu.ld", f_movdqu_ld, 0, VEC),
	F("movdqu.st", f_movdqu_st, 0, VEC),
	F("movaps.ld", f_movaps_ld, 0, VEC),
	F("movaps.st", f_movaps_st, 0, VEC),
	F("movups.ld", f_movups_ld, 0, VEC),
	F("movups.st", f_movups_st, 0, VEC),
	F("movntdq.st", f_movntdq_st, 0, VEC),
	F("vmovdqu128.ld", f_vmovdqu128_ld, 0, VEC | AVX | NOKVM),
	F("vmovdqu128.st", f_vmovdqu128_st, 0, VEC | AVX | NOKVM),
	F("vmovdqa128.ld", f_vmovdqa128_ld, 0, VEC | AVX | NOKVM),
	F("vmovdqa128.st", f_vmovdqa128_st, 0, VEC | AVX | NOKVM),
	F("vmovdqu256.ld", f_vmovdqu256_ld, 0, VEC | AVX | NOKVM),
	F("vmovdqu256.st", f_vmovdqu256_st, 0, VEC | AVX | NOKVM),
	F("vmovdqa256.ld", f_vmovdqa256_ld, 0, VEC | AVX | NOKVM),
	F("vmovdqa256.st", f_vmovdqa256_st, 0, VEC | AVX | NOKVM),
};
#define NFORMS (sizeof(forms) / sizeof(forms[0]))

/* Results of the CPL0 pass, printed later from CPL3 (printing is cheap there). */
static struct res cpl0_mmio[NFORMS], cpl0_ram[NFORMS];
static u8 cpl0_ran[NFORMS];

static void area_init(volatile u8 *p)
{
	for (int i = 0; i < 8; i++)
		((volatile u64 *)p)[i] = tmpl[i];
}

static void area_snap(volatile u8 *p, struct res *r)
{
	for (int i = 0; i < 8; i++)
		r->m[i] = ((volatile u64 *)p)[i];
}

static void run_form(const struct form *f, volatile u8 *p, struct res *r)
{
	r->r1 = r->r2 = r->r3 = r->r4 = r->fl = 0;
	for (int i = 0; i < 4; i++)
		r->x[i] = 0;
	area_init(p);
	f->fn(p, r);
	area_snap(p, r);
	r->fl &= f->flmask;
}

static int same(const struct res *a, const struct res *b)
{
	if (a->r1 != b->r1 || a->r2 != b->r2 || a->r3 != b->r3 || a->r4 != b->r4 || a->fl != b->fl)
		return 0;
	for (int i = 0; i < 8; i++)
		if (a->m[i] != b->m[i])
			return 0;
	for (int i = 0; i < 4; i++)
		if (a->x[i] != b->x[i])
			return 0;
	return 1;
}

/*
 * selected says whether form f runs: only=PREFIX[,PREFIX...] picks forms by
 * name prefix; without it every form runs except the NOKVM ones (forms the
 * KVM instruction emulator on the project's machines cannot emulate against
 * MMIO: they would stop the VM with an emulation failure), which run when
 * all=1 or when only= names them in full.
 */
static int mmio_all;

static int named(const char *name, const char *s, int n)
{
	int i = 0;
	while (i < n && name[i] == s[i])
		i++;
	return i == n && name[n] == 0;
}

static int selected(const struct form *f, const char *only)
{
	if (!only || !*only)
		return mmio_all || !(f->what & NOKVM);
	/* only=PREFIX[,PREFIX...] */
	const char *s = only;
	while (*s) {
		int n = 0;
		while (s[n] && s[n] != ',')
			n++;
		int i = 0;
		while (i < n && f->name[i] == s[i])
			i++;
		if (i == n && (mmio_all || !(f->what & NOKVM) || named(f->name, s, n)))
			return 1;
		s += n;
		if (*s == ',')
			s++;
	}
	return 0;
}

/* Runs on CPL0: only the integer forms. */
void mmio_cpl0_pass(u64 base, const char *only, int all)
{
	mmio_all = all;
	for (unsigned i = 0; i < NFORMS; i++) {
		if ((forms[i].what & VEC) || !selected(&forms[i], only))
			continue;
		run_form(&forms[i], ram_area, &cpl0_ram[i]);
		run_form(&forms[i], (volatile u8 *)base, &cpl0_mmio[i]);
		cpl0_ran[i] = 1;
	}
}

static u64 csum = 0xcbf29ce484222325ul;
static int nlines, nbad;

/*
 * The report is formatted at CPL3 (natively) into obuf and written to COM1
 * by mmio_flush at CPL0 with a single rep outsb: the accelerator moves the
 * whole buffer in a few exits, where a printf per line would cost hundreds
 * of thousands of emulated CPL0 instructions on the project's KVM.
 */
static char obuf[48 * 1024];
static u32 olen;
static int otrunc;

static void oput(char c)
{
	if (olen >= sizeof(obuf) - 64) {
		otrunc = 1;
		return;
	}
	obuf[olen++] = c;
}

/* outs appends s (with "\n" as "\r\n") to the report and the checksum. */
static void outs(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			oput('\r');
		oput(*s);
		csum ^= (u8)*s;
		csum *= 0x100000001b3ul;
	}
}

void mmio_flush(void)
{
	u64 n = olen;
	const char *p = obuf;
	__asm__ volatile("cld\n\trep outsb" : "+S"(p), "+c"(n) : "d"(0x3f8) : "memory");
	olen = 0;
}

static void outhex(u64 v)
{
	char b[19];
	tg_fmthex(b, v);
	outs(b);
}

/* print_res prints one form's line: what r shows, or "=cpl0" when r equals
 * the CPL0 result prev (to keep CPL0 console work down), then whether r
 * matches the RAM reference ref. */
static void print_res(const char *pass, const struct form *f, const struct res *r, const struct res *ref,
		      const struct res *prev)
{
	outs("mmio ");
	outs(pass);
	outs(" ");
	outs(f->name);
	outs(":");
	if (prev && same(r, prev)) {
		outs(" =cpl0");
		goto verdict;
	}
	for (int i = 0; i < 8; i++) {
		if (r->m[i] != tmpl[i]) {
			char k[5] = {' ', 'm', (char)('0' + i), '=', 0};
			outs(k);
			outhex(r->m[i]);
		}
	}
	if (f->what & STRS) {
		outs(" di=");
		outhex(r->r1);
		outs(" cx=");
		outhex(r->r2);
		outs(" si=");
		outhex(r->r3);
		outs(" ax=");
		outhex(r->r4);
	}
	if (f->what & (REG1 | REG2)) {
		outs(" r1=");
		outhex(r->r1);
	}
	if (f->what & REG2) {
		outs(" r2=");
		outhex(r->r2);
	}
	if (f->what & (AUX | VEC)) {
		for (int i = 0; i < 4; i++) {
			if (r->x[i] == 0)
				continue;
			char k[5] = {' ', 'x', (char)('0' + i), '=', 0};
			outs(k);
			outhex(r->x[i]);
		}
	}
	if (f->flmask) {
		outs(" fl=");
		outhex(r->fl);
	}
verdict:
	if (same(r, ref)) {
		outs(" ok\n");
	} else {
		outs(" MISMATCH\n");
		nbad++;
	}
	nlines++;
}

/* Runs on CPL3: prints the CPL0 results, then runs and prints every form. */
void mmio_cpl3_pass(u64 base, const char *only, int have_avx)
{
	int skipped = 0;
	for (unsigned i = 0; i < NFORMS; i++) {
		if ((!only || !*only) && (forms[i].what & NOKVM) && !mmio_all) {
			if (!skipped++)
				outs("mmio: not run (this KVM cannot emulate them against MMIO; all=1 runs them):");
			outs(" ");
			outs(forms[i].name);
		}
	}
	if (skipped)
		outs("\n");
	for (unsigned i = 0; i < NFORMS; i++)
		if (cpl0_ran[i])
			print_res("cpl0", &forms[i], &cpl0_mmio[i], &cpl0_ram[i], 0);
	for (unsigned i = 0; i < NFORMS; i++) {
		const struct form *f = &forms[i];
		struct res m, rr;
		if (!selected(f, only))
			continue;
		if ((f->what & AVX) && !have_avx)
			continue;
		run_form(f, ram_area, &rr);
		run_form(f, (volatile u8 *)base, &m);
		print_res("cpl3", f, &m, &rr, cpl0_ran[i] ? &cpl0_mmio[i] : 0);
	}
	if (moffs_bad) {
		outs("mmio: moffs forms need base 0xfeb00000 or 0xff000000 (QEMU pc-testdev)\n");
		nbad++;
	}
	if (otrunc) {
		outs("mmio: report truncated\n");
		nbad++;
	}
	{
		char b[160];
		snprintf(b, sizeof(b), "mmio checksum=0x%lx lines=%d mismatches=%d avx=%d\n", (unsigned long)csum,
			 nlines, nbad, have_avx ? 1 : 0);
		outs(b);
	}
}

int mmio_mismatches(void) { return nbad + moffs_bad; }
