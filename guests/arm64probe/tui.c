/* tui.c: the interactive serial-console screen (probe.mode=tui, 80x24,
 * ANSI). Keys arrive by the PL011 receive interrupt (SPI through the GIC
 * distributor) and are polled too; a 4 Hz virtual timer tick refreshes the
 * timer tab. Tabs: i ID registers, t timer, g GIC, p PSCI and CPUs,
 * m memory and /chosen, s system registers; Ctrl-L redraws, q quits. */
#include "probe.h"

enum { TAB_ID, TAB_TIMER, TAB_GIC, TAB_PSCI, TAB_MEM, TAB_SYS, NTABS };
static const char tab_keys[NTABS] = {'i', 't', 'g', 'p', 'm', 's'};
static const char *const tab_names[NTABS] = {"ID regs", "Timer", "GIC", "PSCI/CPUs", "Memory", "Sysregs"};

static void line(int row, const char *fmt, ...) __attribute__((format(__printf__, 2, 3)));
static void line(int row, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, 81, fmt, ap);
	va_end(ap);
	printf("\033[%d;1H%s\033[K", row, buf);
}

/* wrap: prints a long space-separated list over rows from row, at most
 * 76 columns each; returns the next row. */
static int wrap(int row, const char *label, const char *s)
{
	char buf[96];
	size_t o = snprintf(buf, sizeof(buf), "%-10s", label);
	while (*s) {
		const char *w = s;
		while (*s && *s != ' ')
			s++;
		size_t l = s - w;
		if (o + l + 1 > 78) {
			line(row++, "%s", buf);
			o = snprintf(buf, sizeof(buf), "%-10s", "");
		}
		if (o + l + 1 < sizeof(buf)) {
			memcpy(buf + o, w, l);
			o += l;
			buf[o++] = ' ';
			buf[o] = 0;
		}
		while (*s == ' ')
			s++;
	}
	line(row++, "%s", buf);
	return row;
}

static void tab_id(void)
{
	int r = 3;
	for (int i = 0; i < P.nid; i++)
		line(r++, "%-14s %016lx", P.id[i].name, P.id[i].val);
	r++;
	wrap(r, "features", P.features);
}

static void tab_timer(void)
{
	uint64_t now = counter(), f = P.cntfrq ? P.cntfrq : 1;
	int r = 3;
	line(r++, "CNTFRQ_EL0        %lu Hz", P.cntfrq);
	line(r++, "DTB timer PPIs    %u %u %u %u (virtual: INTID %u)", P.fdt.timer_ppi[0], P.fdt.timer_ppi[1], P.fdt.timer_ppi[2],
	     P.fdt.timer_ppi[3], P.timer_intid);
	line(r++, "CNTVCT_EL0        %lu (%lu.%03lu s)", now, now / f, now % f * 1000 / f);
	isb();
	line(r++, "CNTPCT_EL0        %lu", read_sysreg(cntpct_el0));
	line(r++, "CNTV_CTL_EL0      %lx   CNTV_CVAL_EL0 %lu", read_sysreg(cntv_ctl_el0), read_sysreg(cntv_cval_el0));
	line(r++, "CNTKCTL_EL1       %lx", read_sysreg(cntkctl_el1));
	line(r++, "counter check     %s (%lu virtual, %lu physical ticks in %lu ms)", P.counter_ok ? "ok" : "FAIL", P.vct_delta,
	     P.pct_delta, P.calib_ms);
	line(r++, "timer IRQ test    %d/5 fired, latency %lu-%lu ns", P.timer_irqs,
	     P.timer_irqs ? P.timer_lat_min * 1000000000ul / f : 0, P.timer_lat_max * 1000000000ul / f);
	line(r++, "4 Hz tick         %lu ticks", tick_count());
	line(r++, "serial RX IRQs    %lu", P.rx_irqs);
}

static void tab_gic(void)
{
	int r = 3;
	line(r++, "compatible        %s", P.fdt.gic_compat);
	line(r++, "architecture      GICv%u (GICD_PIDR2 %x)", P.gic_arch, P.gicd_pidr2);
	line(r++, "distributor       %lx  TYPER %x (%u lines)  IIDR %x", P.fdt.gicd_base, P.gicd_typer,
	     ((P.gicd_typer & 0x1f) + 1) * 32, P.gicd_iidr);
	line(r++, "redistributors    %d from %lx, ours #%d, TYPER[0] %lx", P.nredist, P.fdt.gicr_base, P.my_redist, P.gicr_typer0);
	line(r++, "ITS               %s", P.fdt.gic_its ? "yes" : "no");
	line(r++, "ICC_SRE_EL1       %x", P.icc_sre);
	line(r++, "ICC_PMR_EL1       %lx   ICC_CTLR_EL1 %lx", read_sysreg(S3_0_C4_C6_0), read_sysreg(S3_0_C12_C12_4));
	line(r++, "ICC_IGRPEN1_EL1   %lx   ICC_RPR_EL1 %lx", read_sysreg(S3_0_C12_C12_7), read_sysreg(S3_0_C12_C11_3));
	line(r++, "spurious %lu, other %lu interrupts", P.spurious, P.other_irqs);
}

static void tab_psci(void)
{
	int r = 3;
	line(r++, "PSCI %lu.%lu via %s (%s)", P.psci_version >> 16, P.psci_version & 0xffff, P.fdt.psci_method, P.fdt.psci_compat);
	line(r++, "SMCCC %lx, hypervisor %s", P.smccc_version, hyp_name());
	for (int i = 0; i < 12; i += 2)
		line(r++, "  %-20s %3ld     %-20s %3ld", psci_feat_names[i], P.psci_feat[i], psci_feat_names[i + 1], P.psci_feat[i + 1]);
	line(r++, "CPUs: %d in the DTB, %d started", P.fdt.ncpus, P.cpus_started);
	for (int i = 0; i < P.fdt.ncpus && r < 23; i++)
		line(r++, "  #%-2d MPIDR %-10lx EL%lu %s", i, P.cpu[i].mpidr, P.cpu[i].el,
		     i == 0 ? "boot" : P.cpu[i].started ? "ran, now off" : "NOT STARTED");
}

static void tab_mem(void)
{
	int r = 3;
	line(r++, "model             %s", P.fdt.model);
	line(r++, "DTB               %lx, %u bytes, version %u", P.dtb, P.fdt.totalsize, P.fdt.version);
	line(r++, "image             %lx", P.base);
	for (int i = 0; i < P.fdt.nmem; i++)
		line(r++, "memory #%d         %lx + %lx (%lu MiB)", i, P.fdt.mem_base[i], P.fdt.mem_size[i], P.fdt.mem_size[i] >> 20);
	line(r++, "checked words     %d, %s", P.mem_checked, P.mem_bad ? "FAIL" : "ok");
	line(r++, "console           PL011 %lx (%s), SPI %d", P.fdt.uart_base, P.fdt.uart_path, (int)P.fdt.uart_spi);
	r = wrap(r, "bootargs", P.fdt.bootargs ? P.fdt.bootargs : "");
}

static void tab_sys(void)
{
	int r = 3;
	line(r++, "CurrentEL  %lx  (entered at EL%lu)", read_sysreg(CurrentEL), P.el);
	line(r++, "SCTLR_EL1  %016lx", read_sysreg(sctlr_el1));
	line(r++, "TCR_EL1    %016lx", read_sysreg(tcr_el1));
	line(r++, "MAIR_EL1   %016lx", read_sysreg(mair_el1));
	line(r++, "TTBR0_EL1  %016lx", read_sysreg(ttbr0_el1));
	line(r++, "TTBR1_EL1  %016lx", read_sysreg(ttbr1_el1));
	line(r++, "VBAR_EL1   %016lx", read_sysreg(vbar_el1));
	line(r++, "CPACR_EL1  %016lx", read_sysreg(cpacr_el1));
	line(r++, "DAIF       %016lx", read_sysreg(daif));
	line(r++, "SPSel      %016lx", read_sysreg(spsel));
	line(r++, "TPIDR_EL1  %016lx", read_sysreg(tpidr_el1));
	line(r++, "CNTKCTL    %016lx", read_sysreg(cntkctl_el1));
}

static int tab;

static void draw(int clear)
{
	if (clear)
		puts_raw("\033[2J");
	char hdr[160];
	size_t o = snprintf(hdr, sizeof(hdr), "arm64probe");
	for (int i = 0; i < NTABS; i++)
		o += snprintf(hdr + o, sizeof(hdr) - o, i == tab ? " \033[7m[%c] %s\033[0m" : " [%c] %s", tab_keys[i], tab_names[i]);
	printf("\033[1;1H%s\033[K", hdr);
	for (int r = 2; r <= 23; r++)
		printf("\033[%d;1H\033[K", r);
	switch (tab) {
	case TAB_ID: tab_id(); break;
	case TAB_TIMER: tab_timer(); break;
	case TAB_GIC: tab_gic(); break;
	case TAB_PSCI: tab_psci(); break;
	case TAB_MEM: tab_mem(); break;
	case TAB_SYS: tab_sys(); break;
	}
	printf("\033[24;1H%s tab; keys: i t g p m s, Ctrl-L redraw, q quit\033[K", tab_names[tab]);
}

void tui(void)
{
	uart_irq_enable();
	tick_start(4);
	irq_on();
	draw(1);
	uint64_t last = tick_count();
	for (;;) {
		int c = rx_getc();
		if (c < 0) {
			if (tab == TAB_TIMER && tick_count() != last) {
				last = tick_count();
				draw(0);
			}
			wfi();
			continue;
		}
		if (c == 'q' || c == 'Q')
			break;
		if (c == 12) {
			draw(1);
			continue;
		}
		for (int i = 0; i < NTABS; i++)
			if (c == tab_keys[i] || c == tab_keys[i] - 32) {
				tab = i;
				draw(0);
			}
	}
	irq_off();
	puts_raw("\033[2J\033[H");
	puts_raw("probe: quit, powering off\n");
}
