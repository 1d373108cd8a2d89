/*
 * elf64 is a freestanding ELF64 kernel used by govmm's end-to-end tests to
 * check the ELF64 loader's entry state: it must start in 64-bit long mode
 * (EFER.LMA set and a code segment with CS.L=1) on a usable stack. It prints
 * its findings on COM1 and leaves through the debug-exit port with 0x10 on
 * success (process exit status 33) or 0x11 on failure (status 35).
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4
#define MSR_EFER 0xc0000080u

extern u64 entry_rsp;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void putc(char c)
{
	/* Wait for THRE, but never forever: a UART that never drains must not hang us. */
	for (int i = 0; i < 1000 && !(inb(COM1 + 5) & 0x20); i++)
		;
	outb(COM1, (u8)c);
}

static void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc('\r');
		putc(*s);
	}
}

static void puthex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	puts(&buf[i]);
}

static u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}

struct __attribute__((packed)) dtr {
	u16 limit;
	u64 base;
};

static __attribute__((noreturn)) void debug_exit(u32 v)
{
	outl(DEBUG_EXIT, v);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void elf64_main(void)
{
	struct dtr gdtr;
	u16 cs;
	u64 efer, desc = 0;
	int ok = 1;

	puts("elf64: hello from long mode\n");

	efer = rdmsr(MSR_EFER);
	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	if ((u32)(cs & ~7u) + 7 <= gdtr.limit && !(cs & 4))
		desc = *(volatile u64 *)(gdtr.base + (cs & ~7u));

	puts("elf64: efer=");
	puthex(efer);
	puts(" cs=");
	puthex(cs);
	puts(" cs.desc=");
	puthex(desc);
	puts(" rsp=");
	puthex(entry_rsp);
	puts("\n");

	if (!(efer & (1u << 10))) {
		puts("elf64: FAIL: EFER.LMA is clear\n");
		ok = 0;
	}
	if (!(desc & (1ul << 53)) || (desc & (1ul << 54))) {
		puts("elf64: FAIL: CS.L is clear or CS.D is set\n");
		ok = 0;
	}
	if (entry_rsp == 0) {
		puts("elf64: FAIL: entered with RSP=0\n");
		ok = 0;
	}
	if (ok) {
		puts("elf64: long mode ok (EFER.LMA=1, CS.L=1)\n");
		debug_exit(0x10);
	}
	debug_exit(0x11);
}
