/*
 * testguest is the Multiboot v1 guest behind most of govmm's end-to-end
 * tests. One image holds several scenarios; the kernel command line picks
 * one with test=NAME (see the table at the end of this file). Each scenario
 * prints what it saw on COM1 and leaves through the debug-exit port:
 * TG_OK (0x10, status 33) on success, TG_FAIL (0x11, status 35) on a
 * failed self-check, or on purpose through a crash (triplefault, emufail).
 *
 *   test=cmdline          print the command line's first word (the image's
 *                         name) and the arguments after it, then each
 *                         module (the initrd is module 0): length, first
 *                         256 bytes and the FNV-1a 64 hash of all of it
 *   test=exit code=N      debug-exit with N (0..255): status (N<<1)|1
 *   test=smp [expect=N]   start every MADT CPU; each prints "cpu N up"
 *   test=triplefault      null IDT, then #GP: the VM must end (status 2)
 *   test=emufail          an x87 load from MMIO: no accelerator emulates it
 *   test=mmio [mmio=BASE] [only=PREFIX,...] [all=1] [avx=0]
 *                         the MMIO instruction mix (mmio.c)
 *   test=pio              port I/O of each size and rep ins/outs (pio.c)
 *   test=memwrite [mb=N]  rewrite N MiB at CPL3 until a key, then verify
 *                         every page against its counter (memwrite.c)
 */
#include "tg.h"

/* ---- test=cmdline: the command line and module 0 (the initrd) ---- */
/* print_bytes prints p[0..n) with non-printable bytes, '"' and '\' as \xNN
 * (puts/printf, not putc: CPL3 output goes through a syscall). */
static void print_bytes(const u8 *p, u32 n)
{
	char buf[128];
	u32 k = 0;
	for (u32 i = 0; i < n; i++) {
		u8 c = p[i];
		if (k + 5 > sizeof(buf)) {
			buf[k] = 0;
			puts(buf);
			k = 0;
		}
		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			buf[k++] = (char)c;
		else
			k += snprintf(buf + k, sizeof(buf) - k, "\\x%02x", c);
	}
	buf[k] = 0;
	puts(buf);
}

static uint64_t cmdline_user(uint64_t arg)
{
	(void)arg;
	printf("image: \"%s\"\n", boot.image);
	printf("cmdline: \"%s\" len=%d\n", boot.cmdline, (int)strlen(boot.cmdline));
	printf("modules: %d\n", boot.nmods);
	for (int i = 0; i < boot.nmods; i++) {
		u32 n = boot.mods[i].end - boot.mods[i].start;
		printf("module%d: len=%u name=\"%s\" data=\"", i, n, boot.mods[i].name);
		const u8 *data = (const u8 *)(uint64_t)boot.mods[i].start;
		print_bytes(data, n > 256 ? 256 : n);
		puts(n > 256 ? "\"...\n" : "\"\n");
		/* FNV-1a 64 of the whole module (runs natively: this is CPL3). */
		u64 h = 0xcbf29ce484222325ul;
		for (u32 j = 0; j < n; j++)
			h = (h ^ data[j]) * 0x100000001b3ul;
		printf("module%d: fnv1a=0x%lx\n", i, (unsigned long)h);
	}
	return 0;
}

static int t_cmdline(void)
{
	user_call(cmdline_user, 0);
	return TG_OK;
}

/* ---- test=exit code=N ---- */
static int t_exit(void)
{
	char buf[32];
	uint64_t v;
	if (!cmdline_get("code", buf, sizeof(buf)) || !parse_u64(buf, &v) || v > 255) {
		printf("exit: need code=N with N in 0..255\n");
		return TG_FAIL;
	}
	printf("exit: code=%u\n", (unsigned)v);
	return (int)v;
}

/* ---- test=smp [expect=N] ---- */
static volatile int aps_printed;

static void ap_main(uint32_t index)
{
	printf("cpu %u up\n", index); /* printf takes print_lock itself */
	__atomic_add_fetch(&aps_printed, 1, __ATOMIC_SEQ_CST);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static int t_smp(void)
{
	acpi_init();
	lapic_init(false);
	printf("cpu 0 up\n");
	int n = smp_start(ap_main);
	/* Wait (bounded) until every AP has printed its line. */
	for (int i = 0; i < 1000 && __atomic_load_n(&aps_printed, __ATOMIC_SEQ_CST) < n - 1; i++)
		udelay(1000);
	printf("smp: %d of %d cpus up\n", n, acpi.ncpus);
	uint64_t want = cmdline_u64("expect", 0);
	if (n != acpi.ncpus || (want && (uint64_t)n != want) || aps_printed != n - 1) {
		printf("smp: FAIL: want %d cpus up and printing, %d APs printed\n", want ? (int)want : acpi.ncpus,
		       aps_printed);
		return TG_FAIL;
	}
	return TG_OK;
}

/* ---- test=triplefault: no IDT, then a fault ---- */
static int t_triplefault(void)
{
	struct __attribute__((packed)) {
		u16 limit;
		u64 base;
	} null_idt = {0, 0};
	printf("triplefault: loading a null IDT and faulting\n");
	__asm__ volatile("cli\n\t"
			 "lidt %0\n\t"
			 /* A load from a non-canonical address: #GP, no IDT -> #DF -> shutdown. */
			 "movabs $0x8000000000000000, %%rax\n\t"
			 "mov (%%rax), %%rax\n\t"
			 "ud2"
			 :
			 : "m"(null_idt)
			 : "rax", "memory");
	printf("triplefault: FAIL: still running\n");
	return TG_FAIL;
}

/* ---- test=emufail: an instruction no accelerator emulates, on MMIO ---- */
/* An x87 load from an unbacked address: KVM's instruction emulator has no
 * x87 loads (on hardware and software KVM alike), and neither has govmm's
 * MMIO emulator on MSHV, so every accelerator must stop the VM with the
 * instruction bytes and the RIP. */
static int t_emufail(void)
{
	printf("emufail: executing fldl 0x100(%%rax) (dd 80 00 01 00 00) on MMIO at 0xfeb00000\n");
	__asm__ volatile(".byte 0xdd, 0x80, 0x00, 0x01, 0x00, 0x00" /* fldl 0x100(%rax) */
			 :
			 : "a"(0xfeb00000ul - 0x100)
			 : "memory");
	printf("emufail: executed without an emulation failure\n");
	return TG_FAIL;
}

/* ---- test=mmio [mmio=BASE] [only=PREFIX,...] [all=1] [avx=0] (see mmio.c) ---- */
struct mmio_args {
	u64 base;
	const char *only;
	int avx;
};

static uint64_t mmio_user(uint64_t arg)
{
	struct mmio_args *a = (struct mmio_args *)arg;
	mmio_cpl3_pass(a->base, a->only, a->avx);
	return 0;
}

static int avx_usable(void)
{
	struct cpuid_regs r = cpuid(1, 0);
	/* AVX and XSAVE (lib_start set CR4.OSXSAVE when XSAVE is there). */
	if (!(r.ecx & (1u << 28)) || !(r.ecx & (1u << 26)))
		return 0;
	return 1;
}

static uint64_t xgetbv0_user(uint64_t arg)
{
	(void)arg;
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static uint64_t xsetbv_user(uint64_t v) { return sys_call(SYS_XSETBV, 0, v, 0); }

static int t_mmio(void)
{
	static char only[128];
	struct mmio_args a = {0xfeb00000ul, only, 0};
	a.base = cmdline_u64("mmio", a.base);
	if (!cmdline_get("only", only, sizeof(only)))
		only[0] = 0;
	if (cmdline_u64("avx", 1) && avx_usable()) {
		/* XCR0 = x87|SSE|AVX; XGETBV runs at CPL3 (it fails at CPL0 here). */
		if ((user_call(xgetbv0_user, 0) & 7) != 7)
			user_call(xsetbv_user, 7);
		a.avx = (user_call(xgetbv0_user, 0) & 7) == 7;
	}
	printf("mmio: base=0x%lx\n", (unsigned long)a.base);
	mmio_cpl0_pass(a.base, only, (int)cmdline_u64("all", 0));
	user_call(mmio_user, (uint64_t)&a);
	mmio_flush();
	return mmio_mismatches() ? TG_FAIL : TG_OK;
}

/* ---- test=pio (CPL0 only: this KVM gives CPL3 no port access, IOPL or not) ---- */
static int t_pio(void)
{
	int bad = pio_run("cpl0");
	printf("pio: mismatches=%d\n", bad);
	return bad ? TG_FAIL : TG_OK;
}

static const struct {
	const char *name;
	int (*fn)(void);
} tests[] = {
	{"cmdline", t_cmdline},
	{"exit", t_exit},
	{"smp", t_smp},
	{"triplefault", t_triplefault},
	{"emufail", t_emufail},
	{"mmio", t_mmio},
	{"pio", t_pio},
	{"memwrite", t_memwrite},
};

int main(void)
{
	char name[32];
	if (!cmdline_get("test", name, sizeof(name))) {
		printf("testguest: no test=NAME on the command line \"%s\"; tests:", boot.cmdline);
		for (unsigned i = 0; i < ARRAY_SIZE(tests); i++)
			printf(" %s", tests[i].name);
		printf("\n");
		return TG_FAIL;
	}
	for (unsigned i = 0; i < ARRAY_SIZE(tests); i++)
		if (strcmp(name, tests[i].name) == 0)
			return tests[i].fn();
	printf("testguest: unknown test \"%s\"\n", name);
	return TG_FAIL;
}
