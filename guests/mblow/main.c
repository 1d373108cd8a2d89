/*
 * mblow is the Multiboot v1 kernel behind govmm's end-to-end test of
 * Multiboot images loaded below 1 MiB. It is linked at 0x8000 (mblow.ld)
 * and its bss (pad[] below) reaches past 0x20000, so the image covers
 * every place govmm's boot structures usually go: the Multiboot
 * information at 0x8000, the boot stack below 0x1f000 and the command
 * line at 0x20000. It stays in 32-bit protected mode as entered and
 * checks that:
 *   - EAX holds the Multiboot magic;
 *   - the image lies in RAM according to the memory map;
 *   - the information, command line, module list, modules, memory map,
 *     boot loader name and entry stack lie outside the image and do not
 *     overlap one another;
 *   - the bss is zero (a structure written into it would show).
 * Then it prints the command line word by word: argv[0] is the kernel's
 * name (GRUB, QEMU's -kernel and govmm put it first), the arguments start
 * at argv[1]. Each module gets its length and the FNV-1a (32-bit) hash of
 * its first 4 KiB. It leaves through the debug-exit port with 0x10 on
 * success (process exit status 33) or 0x11 on failure (status 35).
 */
#include "../mini/serial.h"

#define MB_MAGIC 0x2BADB002u

extern char __image_start[], __image_end[];
extern u32 entry_esp, bad_stack;

/* Makes the bss reach past 0x20000. */
static u32 pad[0x20000 / 4];
static int failed;

static void putdec(u32 v)
{
	char buf[11];
	int i = 10;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(&buf[i]);
}

static u32 rd32(u32 addr) { return *(const volatile u32 *)addr; }

static u32 strlen(const char *s)
{
	u32 n = 0;
	while (s[n])
		n++;
	return n;
}

static void fail(const char *what, u32 a, u32 b)
{
	puts("mblow: FAIL: ");
	puts(what);
	puts(" [");
	puthex(a);
	puts(", ");
	puthex(b);
	puts(")\n");
	failed = 1;
}

static __attribute__((noreturn)) void debug_exit(u32 v)
{
	outl(DEBUG_EXIT, v);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* What the loader handed over, and the image: none may overlap another. */
#define MAX_RANGES 16
static const char *rname[MAX_RANGES];
static u32 rstart[MAX_RANGES], rend[MAX_RANGES];
static int nranges;

static void add(const char *name, u32 start, u32 end)
{
	if (nranges < MAX_RANGES) {
		rname[nranges] = name;
		rstart[nranges] = start;
		rend[nranges] = end;
		nranges++;
	}
}

static void check_overlaps(void)
{
	for (int i = 0; i < nranges; i++)
		for (int j = i + 1; j < nranges; j++)
			if (rstart[i] < rend[j] && rstart[j] < rend[i]) {
				puts("mblow: FAIL: ");
				puts(rname[i]);
				puts(" [");
				puthex(rstart[i]);
				puts(", ");
				puthex(rend[i]);
				puts(") overlaps ");
				puts(rname[j]);
				puts(" [");
				puthex(rstart[j]);
				puts(", ");
				puthex(rend[j]);
				puts(")\n");
				failed = 1;
			}
}

static const char *const modname[] = {"module 0", "module 1", "module 2", "module 3"};

void mblow_main(u32 magic, u32 mbi)
{
	u32 image_start = (u32)__image_start, image_end = (u32)__image_end;
	puts("mblow: image ");
	puthex(image_start);
	puts("-");
	puthex(image_end);
	puts("\n");
	if (magic != MB_MAGIC) {
		fail("EAX is not the Multiboot magic, EAX/EBX", magic, mbi);
		debug_exit(0x11);
	}
	if (bad_stack)
		fail("the entry stack [ESP-4K, ESP) lies in the image", entry_esp - 0x1000, entry_esp);
	add("image", image_start, image_end);
	add("information", mbi, mbi + 88);
	add("entry stack", entry_esp - 0x1000, entry_esp);
	u32 flags = rd32(mbi);
	const char *cmdline = "";
	if (flags & (1u << 2)) {
		cmdline = (const char *)rd32(mbi + 16);
		add("command line", (u32)cmdline, (u32)cmdline + strlen(cmdline) + 1);
	} else {
		fail("no command line: flags", flags, flags);
	}
	u32 nmods = 0, mods = 0;
	if (flags & (1u << 3)) {
		nmods = rd32(mbi + 20);
		mods = rd32(mbi + 24);
		if (nmods > 4)
			nmods = 4;
		add("module list", mods, mods + 16 * nmods);
		for (u32 i = 0; i < nmods; i++)
			add(modname[i], rd32(mods + 16 * i), rd32(mods + 16 * i + 4));
	}
	int in_ram = 0;
	if (flags & (1u << 6)) {
		u32 len = rd32(mbi + 44), p = rd32(mbi + 48), end = p + len;
		add("memory map", p, end);
		for (; p + 24 <= end; p += rd32(p) + 4) {
			u64 base = *(const volatile u64 *)(p + 4), size = *(const volatile u64 *)(p + 12);
			if (rd32(p + 20) == 1 && base <= image_start && image_end <= base + size)
				in_ram = 1;
		}
	}
	if (!in_ram)
		fail("the image is not in RAM according to the memory map", image_start, image_end);
	if (flags & (1u << 9)) {
		u32 name = rd32(mbi + 64);
		add("boot loader name", name, name + strlen((const char *)name) + 1);
	}
	check_overlaps();
	for (u32 i = 0; i < sizeof(pad) / sizeof(pad[0]); i++)
		if (((volatile u32 *)pad)[i]) {
			fail("bss not zero at", (u32)&pad[i], (u32)&pad[i] + 4);
			break;
		}

	puts("mblow: info=");
	puthex(mbi);
	puts(" cmdline=");
	puthex((u32)cmdline);
	puts(" esp=");
	puthex(entry_esp);
	puts("\n");

	u32 argc = 0;
	for (const char *s = cmdline; *s;) {
		while (*s == ' ')
			s++;
		if (!*s)
			break;
		puts("mblow: argv[");
		putdec(argc++);
		puts("]=\"");
		while (*s && *s != ' ')
			putc(*s++);
		puts("\"\n");
	}
	puts("mblow: argc=");
	putdec(argc);
	puts("\n");

	for (u32 i = 0; i < nmods; i++) {
		u32 start = rd32(mods + 16 * i), end = rd32(mods + 16 * i + 4);
		u32 n = end - start, h = 0x811c9dc5u;
		for (u32 j = 0; j < n && j < 4096; j++)
			h = (h ^ ((const volatile u8 *)start)[j]) * 0x01000193u;
		puts("mblow: module");
		putdec(i);
		puts(" at ");
		puthex(start);
		puts(" len=");
		putdec(n);
		puts(" fnv1a4k=");
		puthex(h);
		puts("\n");
	}
	if (!failed)
		puts("mblow: ok\n");
	debug_exit(failed ? 0x11 : 0x10);
}
