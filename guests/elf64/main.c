/*
 * elf64 is a freestanding ELF64 kernel used by govmm's end-to-end tests to
 * check the ELF64 loader's entry state: it must start in 64-bit long mode
 * (EFER.LMA set and a code segment with CS.L=1) on a usable stack. It prints
 * its findings on COM1 and leaves through the debug-exit port with 0x10 on
 * success (process exit status 33) or 0x11 on failure (status 35).
 */
#include "../mini/serial.h"

#define MSR_EFER 0xc0000080u

extern u64 entry_rsp;

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
