/*
 * pio.c: port I/O of every size and the string forms (test=pio), against
 * ports that exist on every PC and are safe to poke: the POST port 0x80
 * (write only), CMOS RAM through 0x70/0x71 and the PCI configuration
 * address register 0xcf8 (both read back what was written), the PCI data
 * port 0xcfc for a device that does not exist (all ones) and an unclaimed
 * port (all ones). One line per form, then a mismatch count.
 */
#include "tg.h"

#define CMOS_IDX 0x70
#define CMOS_DATA 0x71
#define CMOS_SCRATCH 0x40 /* general-purpose CMOS RAM, not a clock register */
#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define PCI_LATCH 0x80001234u            /* bus 0, dev 2, fn 0, reg 0x34 */
#define PCI_NODEV 0x807ff800u            /* bus 0x7f, dev 31, fn 0, reg 0 */
#define UNCLAIMED 0x2e8

static int bad;
static const char *pass;

static void check(const char *name, u64 got, u64 want)
{
	printf("pio %s %s: 0x%lx %s\n", pass, name, (unsigned long)got, got == want ? "ok" : "MISMATCH");
	if (got != want)
		bad++;
}

static void check_buf(const char *name, const u8 *b, int n, const u8 *want)
{
	int ok = memcmp(b, want, n) == 0;
	printf("pio %s %s:", pass, name);
	for (int i = 0; i < n; i++)
		printf(" %02x", b[i]);
	printf(" %s\n", ok ? "ok" : "MISMATCH");
	if (!ok)
		bad++;
}

static void rep_outs(int size, u16 port, const void *src, u64 n, int std)
{
	const void *s = src;
	if (std)
		__asm__ volatile("std");
	switch (size) {
	case 1:
		__asm__ volatile("rep outsb" : "+S"(s), "+c"(n) : "d"(port) : "memory");
		break;
	case 2:
		__asm__ volatile("rep outsw" : "+S"(s), "+c"(n) : "d"(port) : "memory");
		break;
	default:
		__asm__ volatile("rep outsl" : "+S"(s), "+c"(n) : "d"(port) : "memory");
		break;
	}
	__asm__ volatile("cld");
}

static void rep_ins(int size, u16 port, void *dst, u64 n, int std)
{
	void *d = dst;
	if (std)
		__asm__ volatile("std");
	switch (size) {
	case 1:
		__asm__ volatile("rep insb" : "+D"(d), "+c"(n) : "d"(port) : "memory");
		break;
	case 2:
		__asm__ volatile("rep insw" : "+D"(d), "+c"(n) : "d"(port) : "memory");
		break;
	default:
		__asm__ volatile("rep insl" : "+D"(d), "+c"(n) : "d"(port) : "memory");
		break;
	}
	__asm__ volatile("cld");
}

int pio_run(const char *p)
{
	static const u8 post[16] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
				    0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10};
	u8 buf[16], want[16];

	pass = p;
	bad = 0;

	/* Writes only: they must simply complete. */
	outb(0x80, 0x12);
	outw(0x80, 0x1234);
	outl(0x80, 0x12345678);
	rep_outs(1, 0x80, post, 7, 0);
	rep_outs(2, 0x80, post, 3, 0);
	rep_outs(4, 0x80, post, 2, 0);
	rep_outs(1, 0x80, post + 15, 5, 1);
	printf("pio %s post: outb outw outl rep-outsb rep-outsw rep-outsl rep-outsb-std ok\n", pass);

	/* CMOS RAM: write, select, read back, byte by byte. */
	outb(CMOS_IDX, CMOS_SCRATCH);
	outb(CMOS_DATA, 0x5a);
	outb(CMOS_IDX, CMOS_SCRATCH + 1);
	outb(CMOS_DATA, 0xa5);
	outb(CMOS_IDX, CMOS_SCRATCH);
	check("cmos.inb", inb(CMOS_DATA), 0x5a);
	outb(CMOS_IDX, CMOS_SCRATCH + 1);
	check("cmos.inb2", inb(CMOS_DATA), 0xa5);
	outb(CMOS_IDX, CMOS_SCRATCH);
	memset(buf, 0, sizeof(buf));
	rep_ins(1, CMOS_DATA, buf, 4, 0);
	memset(want, 0, sizeof(want));
	memset(want, 0x5a, 4);
	check_buf("cmos.rep-insb", buf, 6, want);
	memset(buf, 0, sizeof(buf));
	rep_ins(1, CMOS_DATA, buf + 5, 3, 1); /* DF=1: fills buf[5], buf[4], buf[3] */
	memset(want, 0, sizeof(want));
	memset(want + 3, 0x5a, 3);
	check_buf("cmos.rep-insb-std", buf, 7, want);

	/* PCI configuration address latch: 32-bit write and read back. */
	outl(PCI_ADDR, PCI_LATCH);
	check("pci.addr.inl", inl(PCI_ADDR), PCI_LATCH);
	u32 v[4] = {0, 0, 0, 0};
	rep_ins(4, PCI_ADDR, v, 3, 0);
	check("pci.addr.rep-insl", (u64)v[0] ^ v[1] ^ v[2] ^ ((u64)v[3] << 32), PCI_LATCH);
	u32 latch2 = 0x80000000u | (3u << 11) | 0x10;
	rep_outs(4, PCI_ADDR, &latch2, 1, 0);
	check("pci.addr.rep-outsl", inl(PCI_ADDR), latch2);

	/* A function that does not exist reads as all ones at every size. */
	outl(PCI_ADDR, PCI_NODEV);
	check("pci.nodev.inl", inl(PCI_DATA), 0xffffffffu);
	check("pci.nodev.inw", inw(PCI_DATA + 2), 0xffff);
	check("pci.nodev.inb", inb(PCI_DATA + 1), 0xff);
	u16 w[3] = {0, 0, 0};
	rep_ins(2, PCI_DATA, w, 2, 0);
	check("pci.nodev.rep-insw", (u64)w[0] | (u64)w[1] << 16 | (u64)w[2] << 32, 0xffffffffu);
	outl(PCI_ADDR, 0);

	/* Nothing behind this port. */
	check("unclaimed.inb", inb(UNCLAIMED), 0xff);
	check("unclaimed.inw", inw(UNCLAIMED), 0xffff);
	check("unclaimed.inl", inl(UNCLAIMED), 0xffffffffu);
	return bad;
}
