/* tui.c: probe.mode=tui, the serial-console TUI (80x24, ANSI). Runs at
 * CPL3; keys arrive through the UART interrupt (IOAPIC, IRQ4) into the
 * lib's receive ring; the screen is built in a buffer and written with one
 * sys_call per redraw. Tabs: c CPUID, f FPU, x XSAVE, t Timer, m MSR; q quits;
 * space shows the next page of a long tab. */
#include "facts.h"

enum { TAB_CPUID, TAB_FPU, TAB_XSAVE, TAB_TIMER, TAB_MSR, NTABS };
static const char *const tab_names[NTABS] = {"CPUID", "FPU", "XSAVE", "Timer", "MSR"};
static const char tab_keys[NTABS] = {'c', 'f', 'x', 't', 'm'};

#define CONTENT_ROWS 19 /* rows 4..22 */
#define MAXCL 80
static char cl[MAXCL][81];
static int ncl;
static char scr[12288];
static size_t sl;
static int tab = TAB_CPUID, page;
static char msr_input[24];
static char msr_result[80];

static void sadd(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void sadd(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(scr + sl, sizeof(scr) - sl, fmt, ap);
	va_end(ap);
	sl += (size_t)n;
	if (sl >= sizeof(scr))
		sl = sizeof(scr) - 1;
}

static void cadd(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void cadd(const char *fmt, ...)
{
	if (ncl >= MAXCL)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cl[ncl], 80, fmt, ap); /* at most 79 columns */
	va_end(ap);
	ncl++;
}

/* cwrap: "label text..." wrapped at word boundaries, continuation lines
 * indented to the text column. */
static void cwrap(const char *label, const char *text)
{
	int indent = (int)strlen(label) + 1;
	char line[81];
	int pos = snprintf(line, sizeof(line), "%s ", label);
	const char *s = text;
	if (!*s) {
		cadd("%s (none)", label);
		return;
	}
	while (*s) {
		const char *w = s;
		while (*s && *s != ' ')
			s++;
		int wl = (int)(s - w);
		if (pos + wl > 78 && pos > indent) {
			line[pos] = 0;
			cadd("%s", line);
			pos = snprintf(line, sizeof(line), "%*s", indent, "");
		}
		if (pos + wl > 78)
			wl = 78 - pos;
		memcpy(line + pos, w, (size_t)wl);
		pos += wl;
		if (*s == ' ') {
			s++;
			if (pos < 78)
				line[pos++] = ' ';
		}
	}
	line[pos] = 0;
	cadd("%s", line);
}

static void fmt_uptime(char *buf, size_t n)
{
	uint64_t ms = uptime_ms();
	snprintf(buf, n, "%02lu:%02lu:%02lu.%02lu", ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms / 10 % 100);
}

static void fmt_hz(char *buf, size_t n, uint64_t hz)
{
	snprintf(buf, n, "%lu.%06lu MHz", hz / 1000000, hz % 1000000);
}

/* ---- tabs ---- */

static void tab_cpuid(void)
{
	char vendor[13], brand[49], hv[13], buf[512];
	uint32_t fam, model, step, hvmax;
	cpu_vendor(vendor);
	cpu_brand(brand);
	cpu_fms(&fam, &model, &step);
	hv_name(hv, &hvmax);
	cadd("Vendor %s  Family %#x  Model %#x  Stepping %u", vendor, fam, model, step);
	cadd("Brand  %s  (max leaf %#x, extended %#x)", brand[0] ? brand : "(none)", cpuid(0, 0).eax,
	     cpuid(0x80000000, 0).eax);
	if (cmdline_get("govmm.cpu", buf, sizeof(buf))) {
		/* The model govmm applied, and what it changes against the host. */
		char list[768], text[800];
		cadd("Model  %s (govmm --cpu)", buf);
		static const char *const kinds[][2] = {{"govmm.cpu.hidden", "  hides"}, {"govmm.cpu.added", "  adds "}};
		for (int k = 0; k < 2; k++) {
			list[0] = 0;
			cmdline_get(kinds[k][0], list, sizeof(list));
			int j = 0;
			for (int i = 0; list[i] && j + 1 < (int)sizeof(text); i++)
				text[j++] = list[i] == ',' ? ' ' : list[i];
			text[j] = 0;
			cwrap(kinds[k][1], text);
		}
	}
	if (hv[0]) {
		cadd("Hypervisor \"%s\" (leaves 0x40000000-%#x)", hv, hvmax);
		for (uint32_t l = 0x40000001; l <= hvmax && l < 0x40000007; l++) {
			struct cpuid_regs r = cpuid(l, 0);
			cadd("  %#x: %08x %08x %08x %08x", l, r.eax, r.ebx, r.ecx, r.edx);
		}
	} else {
		cadd("Hypervisor: none");
	}
	for (int i = 0; i < nfeat_regs; i++) {
		if (feat_list(&feat_regs[i], buf, sizeof(buf)) < 0)
			continue;
		char label[24];
		snprintf(label, sizeof(label), "%-12s", feat_regs[i].key);
		cwrap(label, buf);
	}
	if (cpuid(0, 0).eax >= 0x15) {
		struct cpuid_regs r = cpuid(0x15, 0);
		cadd("Leaf 0x15: denominator %u, numerator %u, crystal %u Hz", r.eax, r.ebx, r.ecx);
	} else {
		cadd("Leaf 0x15: not available");
	}
	if (cpuid(0, 0).eax >= 0x16) {
		struct cpuid_regs r = cpuid(0x16, 0);
		cadd("Leaf 0x16: base %u MHz, max %u MHz, bus %u MHz", r.eax & 0xFFFF, r.ebx & 0xFFFF, r.ecx & 0xFFFF);
	} else {
		cadd("Leaf 0x16: not available");
	}
}

static void tab_fpu(void)
{
	bool fok = check_fpu(), xok = check_xmm();
	read_fx();
	static const char *const rc[4] = {"nearest", "down", "up", "chop"};
	static const char *const pc[4] = {"24-bit", "rsvd", "53-bit", "64-bit"};
	cadd("x87 FCW %#06x (RC %s, PC %s, masks %#x)", fx.fcw, rc[(fx.fcw >> 10) & 3], pc[(fx.fcw >> 8) & 3],
	     fx.fcw & 0x3F);
	cadd("    FSW %#06x (TOP %u, exceptions %#x)  FTW %#04x (abridged)  FOP %#x", fx.fsw, (fx.fsw >> 11) & 7,
	     fx.fsw & 0x3F, fx.ftw, fx.fop);
	char a[40], b[40];
	fmt_st(a, sizeof(a), &fx.st[0]);
	fmt_st(b, sizeof(b), &fx.st[1]);
	cadd("    ST0 %s (pi)   ST1 %s (1.0)", a, b);
	cadd("MXCSR %#06x (RC %s, FTZ %u, DAZ %u, masks %#x)  MXCSR_MASK %#x", fx.mxcsr, rc[(fx.mxcsr >> 13) & 3],
	     (fx.mxcsr >> 15) & 1, (fx.mxcsr >> 6) & 1, (fx.mxcsr >> 7) & 0x3F, fx.mxcsr_mask);
	cadd("XMM registers (patterns from probe.seed=%lu, set at CPL3 at boot):", P.seed);
	for (int i = 0; i < 16; i += 2)
		cadd(" XMM%-2d %016lx%016lx  XMM%-2d %016lx%016lx", i, fx.xmm[i][1], fx.xmm[i][0], i + 1,
		     fx.xmm[i + 1][1], fx.xmm[i + 1][0]);
	cadd("Check: x87/MXCSR %s, XMM %s (read back with FXSAVE at CPL3)", fok ? "ok" : "FAIL",
	     xok ? "ok" : "FAIL");
}

static const char *const xcomp_names[19] = {
	"x87", "SSE", "AVX", "BNDREGS", "BNDCSR", "opmask", "ZMM_Hi256", "Hi16_ZMM", "PT", "PKRU",
	"PASID", "CET_U", "CET_S", "HDC", "UINTR", "LBR", "HWP", "XTILECFG", "XTILEDATA"};

static void tab_xsave(void)
{
	if (!(cpuid(1, 0).ecx & (1u << 26))) {
		cadd("XSAVE: not supported (CPUID.1:ECX.XSAVE=0)");
		return;
	}
	struct cpuid_regs d = cpuid(0xd, 0), d1 = cpuid(0xd, 1);
	uint64_t sup = ((uint64_t)d.edx << 32) | d.eax, xcr0 = fpu_xgetbv(0);
	cadd("XCR0 %#lx (XGETBV at CPL3); the guest set %#lx with XSETBV at CPL0%s", xcr0, P.xcr0_set,
	     P.xcr0_rc ? " (#GP)" : "");
	if (d1.eax & 4)
		cadd("XINUSE %#lx (XGETBV ecx=1)", fpu_xgetbv(1));
	else
		cadd("XINUSE: XGETBV ecx=1 not supported");
	cadd("CPUID 0xD.0: components %#lx, size for XCR0 %u, max size %u", sup, d.ebx, d.ecx);
	char buf[128];
	feat_list(&feat_regs[6], buf, sizeof(buf));
	cadd("CPUID 0xD.1: %s", buf[0] ? buf : "(none)");
	cadd(" #  component   size  offset  XCR0");
	for (int i = 0; i < 19; i++) {
		if (!(sup & (1ULL << i)) && !(xcr0 & (1ULL << i)))
			continue;
		uint32_t size = i == 0 ? 160 : i == 1 ? 256 : cpuid(0xd, (uint32_t)i).eax;
		uint32_t off = i == 0 ? 0 : i == 1 ? 160 : cpuid(0xd, (uint32_t)i).ebx;
		cadd("%2d  %-10s %5u  %6u  %s%s", i, xcomp_names[i], size, off, (xcr0 >> i) & 1 ? "yes" : "no",
		     (sup >> i) & 1 ? "" : "  (not in CPUID 0xD)");
	}
	uint64_t bv, comp, mask;
	if (read_xsave(&bv, &comp, &mask))
		cadd("XSAVE header (XSAVE at CPL3, mask %#lx): XSTATE_BV %#lx  XCOMP_BV %#lx", mask, bv, comp);
	else
		cadd("XSAVE header: not taken (mask %#lx)", mask);
}

static void tab_timer(void)
{
	char a[40], up[32];
	const char *how;
	uint64_t tsc = tsc_hz_cpuid(&how);
	if (tsc) {
		fmt_hz(a, sizeof(a), tsc);
		cadd("TSC frequency:        %s (%s)", a, how);
	} else {
		cadd("TSC frequency:        Not available (CPUID 0x15/0x40000010)");
	}
	fmt_hz(a, sizeof(a), P.tsc_hz_meas);
	cadd("TSC measured:         %s (against the %s)", a, acpi.pm_tmr_port ? "ACPI PM timer" : "PIT");
	fmt_hz(a, sizeof(a), P.lapic_hz);
	cadd("LAPIC timer:          %s (divide by 1, measured)", a);
	fmt_uptime(up, sizeof(up));
	cadd("Target %lu Hz   Ticks %lu   Uptime %s", P.hz, ticks, up);
	struct timer_regs t;
	read_timer(&t);
	cadd("LAPIC (%s)       MMIO   x2APIC MSR  value", lapic_x2apic() ? "x2APIC" : "xAPIC");
	cadd("  LVT timer          0x320  0x832       %#010x (vec %#x, %s%s)", t.lvt, t.lvt & 0xFF,
	     (t.lvt >> 17) & 3 ? ((t.lvt >> 17) & 3) == 1 ? "periodic" : "tsc-deadline" : "one-shot",
	     (t.lvt >> 16) & 1 ? ", masked" : "");
	cadd("  Initial count      0x380  0x838       %u", t.init);
	cadd("  Current count      0x390  0x839       %u", t.cur);
	uint32_t dv = ((t.div & 3) | ((t.div >> 1) & 4));
	cadd("  Divide config      0x3e0  0x83e       %#x (divide by %u)", t.div, dv == 7 ? 1 : 2u << dv);
	cadd("Timer config check:   %s", check_timer(&t) ? "ok" : "FAIL (changed since boot)");
	if (cpuid(0, 0).eax >= 0x15) {
		struct cpuid_regs r = cpuid(0x15, 0);
		cadd("CPUID 0x15: denominator %u, numerator %u, crystal %u Hz", r.eax, r.ebx, r.ecx);
	}
	if (cpuid(0, 0).eax >= 0x16) {
		struct cpuid_regs r = cpuid(0x16, 0);
		cadd("CPUID 0x16: base %u MHz, max %u MHz, bus %u MHz", r.eax & 0xFFFF, r.ebx & 0xFFFF, r.ecx & 0xFFFF);
	}
	if (hyperv()) {
		int rc1, rc2;
		uint64_t f1 = msr_read_u(0x40000022, &rc1), f2 = msr_read_u(0x40000023, &rc2);
		cadd("Hyper-V TSC_FREQUENCY %s%lu  APIC_FREQUENCY %s%lu", rc1 ? "#GP " : "", f1, rc2 ? "#GP " : "", f2);
	}
	if (P.hv_timers < 0)
		cadd("Hyper-V synthetic timers: a SynIC or timer MSR write raised #GP");
	else if (P.hv_timers == 1)
		cadd("Hyper-V synthetic timers: STIMER0 %lu expiry messages (SINT%d)", hv_msg_ticks, HV_TIMER_SINT);
	else if (P.hv_timers == 2)
		cadd("Hyper-V synthetic timers: STIMER0 %lu expiry messages (SINT%d), STIMER1 %lu direct interrupts",
		     hv_msg_ticks, HV_TIMER_SINT, hv_direct_ticks);
	cadd("Serial input: %s, %lu receive interrupts", P.serial_irq ? "IOAPIC interrupt" : "polled",
	     serial_rx_irqs);
}

static const struct { uint32_t msr; const char *name; } hv_msrs[] = {
	{0x40000000, "HV_GUEST_OS_ID"}, {0x40000001, "HV_HYPERCALL"}, {0x40000002, "HV_VP_INDEX"},
	{0x40000080, "HV_SCONTROL"},    {0x40000081, "HV_SVERSION"},  {0x40000082, "HV_SIEFP"},
	{0x40000083, "HV_SIMP"},        {0x40000090, "HV_SINT0"},     {0x400000B0, "HV_STIMER0_CONFIG"},
};

static void msr_line(uint32_t msr, const char *name, int rc, uint64_t v)
{
	char up[32];
	size_t i;
	for (i = 0; name[i] && i + 1 < sizeof(up); i++)
		up[i] = (name[i] >= 'a' && name[i] <= 'z') ? (char)(name[i] - 32) : name[i];
	up[i] = 0;
	if (rc)
		cadd("%#010x  %-20s #GP", msr, up);
	else
		cadd("%#010x  %-20s %#018lx", msr, up, v);
}

static void tab_msr(void)
{
	struct msr_val vals[32];
	read_msrs(vals);
	char chk[128];
	check_msrs(chk, sizeof(chk), vals);
	cadd("MSR         name                 value          (values chosen at boot: %s)", chk);
	for (int i = 0; i < probe_nmsrs; i++)
		msr_line(probe_msrs[i].msr, probe_msrs[i].key, vals[i].rc, vals[i].val);
	if (hyperv()) {
		for (size_t i = 0; i < ARRAY_SIZE(hv_msrs); i++) {
			int rc;
			uint64_t v = msr_read_u(hv_msrs[i].msr, &rc);
			msr_line(hv_msrs[i].msr, hv_msrs[i].name, rc, v);
		}
	} else {
		cadd("(no Hyper-V SynIC MSRs: the hypervisor is not Microsoft Hv)");
	}
}

/* ---- drawing ---- */

static void build_content(void)
{
	ncl = 0;
	switch (tab) {
	case TAB_CPUID: tab_cpuid(); break;
	case TAB_FPU: tab_fpu(); break;
	case TAB_XSAVE: tab_xsave(); break;
	case TAB_TIMER: tab_timer(); break;
	case TAB_MSR: tab_msr(); break;
	}
}

static int npages(void) { return ncl ? (ncl + CONTENT_ROWS - 1) / CONTENT_ROWS : 1; }

static void header(void)
{
	char vendor[13], up[32];
	cpu_vendor(vendor);
	fmt_uptime(up, sizeof(up));
	sadd("\033[1;1H\033[7m govmm probe | %-12s | %d CPU%s | %s | uptime %s ", vendor, P.cpus_started,
	     P.cpus_started == 1 ? "" : "s", lapic_x2apic() ? "x2APIC" : "xAPIC", up);
	sadd("\033[K\033[0m");
}

static void draw(bool clear)
{
	sl = 0;
	build_content();
	if (page >= npages())
		page = 0;
	if (clear)
		sadd("\033[0m\033[2J");
	header();
	sadd("\033[2;1H");
	for (int i = 0; i < NTABS; i++)
		sadd(i == tab ? " \033[7m[%c] %s\033[0m" : " [%c] %s", tab_keys[i], tab_names[i]);
	sadd("  [q] Quit\033[K\033[3;1H\033[K");
	for (int r = 0; r < CONTENT_ROWS; r++) {
		int i = page * CONTENT_ROWS + r;
		sadd("\033[%d;1H%s\033[K", 4 + r, i < ncl ? cl[i] : "");
	}
	if (tab == TAB_MSR)
		sadd("\033[23;1HRead MSR (hex, Enter): %s_  %s\033[K", msr_input, msr_result);
	else
		sadd("\033[23;1H\033[K");
	sadd("\033[24;1H%s tab, page %d/%d%s; keys: c f x t m, q quit\033[K", tab_names[tab], page + 1, npages(),
	     npages() > 1 ? " (space: next page)" : "");
	serial_write(scr, sl);
}

static void draw_header(void)
{
	sl = 0;
	header();
	sadd("\033[24;80H");
	serial_write(scr, sl);
}

static bool is_hex(int c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static void msr_enter(void)
{
	uint64_t msr;
	if (!parse_hex(msr_input, &msr) || msr > 0xFFFFFFFF) {
		snprintf(msr_result, sizeof(msr_result), "bad MSR number \"%s\"", msr_input);
	} else {
		int rc;
		uint64_t v = msr_read_u((uint32_t)msr, &rc);
		if (rc)
			snprintf(msr_result, sizeof(msr_result), "rdmsr %#lx: #GP", msr);
		else
			snprintf(msr_result, sizeof(msr_result), "rdmsr %#lx = %#018lx", msr, v);
	}
	msr_input[0] = 0;
}

/* key: returns 1 to redraw, 2 to quit, 0 for nothing. */
static int key(int c)
{
	static int esc;
	if (esc) { /* skip ESC [ x sequences (arrows) */
		if (esc == 1 && c == '[') {
			esc = 2;
			return 0;
		}
		esc = 0;
		return 0;
	}
	if (c == 0x1B) {
		esc = 1;
		if (tab == TAB_MSR && msr_input[0]) {
			msr_input[0] = 0;
			return 1;
		}
		return 0;
	}
	if (tab == TAB_MSR) {
		size_t n = strlen(msr_input);
		bool start = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
		if ((n && (is_hex(c) || c == 'x' || c == 'X')) || (!n && start)) {
			if (n + 1 < sizeof(msr_input)) {
				msr_input[n] = (char)c;
				msr_input[n + 1] = 0;
			}
			return 1;
		}
		if (n && (c == 0x7F || c == 0x08)) {
			msr_input[n - 1] = 0;
			return 1;
		}
		if (n && (c == '\r' || c == '\n')) {
			msr_enter();
			return 1;
		}
	}
	if (c == 'q' || c == 'Q')
		return 2;
	if (c == ' ') {
		page++;
		return 1;
	}
	for (int i = 0; i < NTABS; i++)
		if (c == tab_keys[i] || c == tab_keys[i] - 32) {
			tab = i;
			page = 0;
			return 1;
		}
	if (c == 0x0C) /* Ctrl-L */
		return 1;
	return 0;
}

uint64_t tui_main(uint64_t arg)
{
	uint64_t next = 0;
	int prev_tab = -1, prev_page = -1;
	for (;;) {
		int c, act = 0;
		while ((c = serial_getc()) >= 0) {
			int a = key(c);
			if (a > act)
				act = a;
			if (act == 2)
				break;
		}
		if (act == 2)
			break;
		if (act || prev_tab < 0) {
			draw(tab != prev_tab || page != prev_page);
			prev_tab = tab;
			prev_page = page;
			next = ticks + P.hz / 2;
		} else if (ticks >= next) {
			if (tab == TAB_TIMER || tab == TAB_MSR)
				draw(false);
			else
				draw_header();
			next = ticks + (tab == TAB_TIMER ? P.hz / 4 : P.hz);
		}
		sys_call(SYS_WAIT, 0, 0, 0);
	}
	serial_write("\033[0m\033[2J\033[H", 12);
	printf("probe: quit, powering off\n");
	return 0;
}
