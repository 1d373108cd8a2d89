/* selftest.c: the lib's own test guest (bin/libtest.elf), run by
 * e2e/probe_test.go: printf formatting, cmdline parsing, number parsing,
 * CPL3 round trips and nesting, #GP-safe MSR access, exception hooks, SMP.
 * Prints "libtest: N passed, M failed" and powers off when M is 0, else
 * exits through the debug-exit device with 1. */
#include "lib.h"

static int passed, failed;

static void check(bool ok, const char *what)
{
	if (ok) {
		passed++;
	} else {
		failed++;
		printf("libtest: FAIL %s\n", what);
	}
}

static void check_fmt(const char *want, const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (strcmp(buf, want) || n != (int)strlen(want)) {
		failed++;
		printf("libtest: FAIL format \"%s\": got \"%s\" (%d), want \"%s\"\n", fmt, buf, n, want);
	} else {
		passed++;
	}
}

/* Set by each AP after its line is printed, so the BSP's summary and
 * power-off cannot cut an AP's line short. */
static volatile int ap_seen[MAX_CPUS];
static void ap_main(uint32_t idx)
{
	printf("libtest: AP %u (APIC ID %u) up\n", idx, lapic_id());
	__atomic_store_n(&ap_seen[idx], 1, __ATOMIC_RELEASE);
}

/* ap_printed waits up to a second for AP idx to finish its line: under a
 * slow accelerator each serial byte is an exit, and one line takes far
 * longer than the AP's start. */
static bool ap_printed(int idx)
{
	for (int ms = 0; ms < 1000; ms++) {
		if (__atomic_load_n(&ap_seen[idx], __ATOMIC_ACQUIRE))
			return true;
		udelay(1000);
	}
	return __atomic_load_n(&ap_seen[idx], __ATOMIC_ACQUIRE);
}

static uint64_t sys_double(uint64_t a0, uint64_t a1, uint64_t a2) { return a0 * 2 + a1 + a2; }

static uint64_t inner(uint64_t a) { return a + (uint64_t)cpl(); }

static uint64_t sys_nested(uint64_t a0, uint64_t a1, uint64_t a2)
{
	return user_call(inner, a0) + 1000; /* CPL0 -> CPL3 from inside a syscall */
}

static uint64_t user_flags(uint64_t arg) { return read_flags(); }

/* user_call_keeps_if: CPL3 code runs with the caller's IF, and user_call
 * returns with it, for a first call and for a second one after it (the
 * return goes through a syscall, whose trap gate clears IF). */
static void user_call_keeps_if(void)
{
	pic_disable(); /* nothing may interrupt while IF is set below */
	cli();
	check((user_call(user_flags, 0) & 0x200) == 0, "user_call with IF clear: CPL3 runs with IF clear");
	check((read_flags() & 0x200) == 0, "user_call with IF clear: returns with IF clear");
	sti();
	bool in1 = user_call(user_flags, 0) & 0x200, out1 = read_flags() & 0x200;
	bool in2 = user_call(user_flags, 0) & 0x200, out2 = read_flags() & 0x200;
	cli();
	check(in1 && in2, "user_call with IF set: CPL3 runs with IF set, also on a second call");
	check(out1 && out2, "user_call with IF set: returns with IF set");
}

static uint64_t user_fn(uint64_t arg)
{
	uint64_t r = 0;
	if (cpl() != 3)
		return 1;
	if (sys_call(SYS_FIRST_USER, 20, 1, 1) != 42)
		return 2;
	if (sys_call(SYS_FIRST_USER + 1, 5, 0, 0) != 1008) /* 5 + CPL3 + 1000 */
		return 3;
	uint64_t v;
	if ((int64_t)sys_call(SYS_RDMSR, 0x1B, (uint64_t)&v, 0) != 0 || !(v & (1u << 11)))
		return 4;
	if ((int64_t)sys_call(SYS_RDMSR, 0xDEAD0000, (uint64_t)&r, 0) != -1)
		return 5;
	printf("libtest: printf at CPL%d (%s)\n", cpl(), "ok");
	return arg + 1;
}

static volatile int ud_hits;
static void ud_handler(struct regs *r)
{
	ud_hits++;
	r->rip += 2; /* skip the ud2 */
}

/* double_fault makes the stack unusable and faults on it: delivering that
 * fault faults again, a #DF, which must reach its handler on its own
 * stack (IST) and be reported, not end the VM in a triple fault. */
NORETURN static void double_fault(void)
{
	printf("libtest: faulting on a non-canonical stack\n");
	__asm__ volatile("mov %0, %%rsp; pushq $0" ::"r"(0x8000000000000000ULL));
	__builtin_unreachable();
}

int main(void)
{
	printf("libtest: start\n");
	char v[16];
	if (cmdline_get("libtest.df", v, sizeof(v)))
		double_fault();
	check_fmt("42", "%d", 42);
	check_fmt("-42", "%d", -42);
	check_fmt("  -42", "%5d", -42);
	check_fmt("-0042", "%05d", -42);
	check_fmt("42   |", "%-5d|", 42);
	check_fmt("4294967295", "%u", 0xFFFFFFFFu);
	check_fmt("18446744073709551615", "%lu", (unsigned long)-1);
	check_fmt("-9223372036854775808", "%ld", (long)(1ULL << 63));
	check_fmt("ff FF 0x00ff", "%x %X %#06x", 255, 255, 255);
	check_fmt("00000000deadbeef", "%016lx", 0xDEADBEEFUL);
	check_fmt("0x1000", "%p", (void *)0x1000);
	check_fmt("[  ab][ab  ][a]", "[%4s][%-4s][%.1s]", "ab", "ab", "abc");
	check_fmt("c=x 100%", "c=%c 100%%", 'x');
	check_fmt("(null)", "%s", (char *)0);
	char small[4];
	check(snprintf(small, sizeof(small), "abcdef") == 6 && !strcmp(small, "abc"), "snprintf truncation");

	boot_set_cmdline("/path/k a=1 bb=hello flag  key=x=y n=0x10 bad=12z");
	check(!strcmp(boot.image, "/path/k"), "cmdline first word is the image");
	check(cmdline_get("a", v, sizeof(v)) && !strcmp(v, "1"), "cmdline a=1");
	check(cmdline_get("bb", v, sizeof(v)) && !strcmp(v, "hello"), "cmdline bb=hello");
	check(cmdline_get("flag", v, sizeof(v)) && !strcmp(v, ""), "cmdline bare flag");
	check(cmdline_get("key", v, sizeof(v)) && !strcmp(v, "x=y"), "cmdline key=x=y");
	check(!cmdline_get("b", v, sizeof(v)), "cmdline prefix is not a match");
	check(!cmdline_get("missing", v, sizeof(v)), "cmdline missing key");
	check(cmdline_get("bb", v, 3) && !strcmp(v, "he"), "cmdline value truncated");
	check(cmdline_u64("n", 7) == 16, "cmdline_u64 hex");
	check(cmdline_u64("bad", 7) == 7, "cmdline_u64 junk -> default");
	check(cmdline_u64("missing", 9) == 9, "cmdline_u64 missing -> default");
	boot_set_cmdline("a=2");
	check(!strcmp(boot.image, "a=2") && !cmdline_get("a", v, sizeof(v)), "cmdline first word is not an argument");
	boot_set_cmdline("  k   x=3");
	check(!strcmp(boot.image, "k") && !strcmp(boot.cmdline, "x=3"), "cmdline words split at runs of spaces");
	uint64_t x;
	check(parse_u64("18446744073709551615", &x) && x == UINT64_MAX, "parse_u64 max");
	check(!parse_u64("18446744073709551616", &x), "parse_u64 overflow");
	check(!parse_u64("", &x), "parse_u64 empty");
	check(parse_hex("C0000080", &x) && x == 0xC0000080, "parse_hex");
	check(!parse_hex("0x", &x), "parse_hex empty");
	check(!parse_hex("12345678123456789", &x), "parse_hex overflow");

	uint64_t m;
	check(rdmsr_safe(0xDEAD0000, &m) == -1, "rdmsr_safe #GP");
	check(rdmsr_safe(0x1B, &m) == 0 && (m & (1u << 11)), "rdmsr_safe APIC_BASE");
	check(wrmsr_safe(0xDEAD0000, 1) == -1, "wrmsr_safe #GP");

	set_handler(6, ud_handler);
	__asm__ volatile("ud2");
	check(ud_hits == 1, "exception handler override");
	set_handler(6, 0);

	acpi_init();
	lapic_init(true);
	syscall_register(SYS_FIRST_USER, sys_double);
	syscall_register(SYS_FIRST_USER + 1, sys_nested);
	uint64_t r = user_call(user_fn, 41);
	check(r == 42, "user_call round trip");
	if (r != 42)
		printf("libtest: user_fn returned %lu\n", r);
	check(cpl() == 0, "back at CPL0");
	user_call_keeps_if();

	int n = smp_start(ap_main);
	check(n == acpi.ncpus, "all MADT CPUs started");
	for (int i = 1; i < n; i++)
		check(ap_printed(i), "AP ran ap_main");
	printf("libtest: %d CPUs, %d passed, %d failed\n", n, passed, failed);
	if (failed)
		debug_exit(1);
	poweroff();
}
