/* main.c: the arm64 probe's boot CPU: read the device tree, the ID
 * registers, PSCI and SMCCC, set up the GICv3 (distributor, our
 * redistributor, the ICC system-register CPU interface), check the
 * counter and the EL1 virtual timer's interrupt, start the other CPUs
 * with PSCI CPU_ON, touch memory, then run the chosen mode. See README.md. */
#include "probe.h"

struct probe P;

/* System registers by encoding, so any assembler takes them. */
#define ID_AA64ZFR0 S3_0_C0_C4_4
#define ID_AA64ISAR2 S3_0_C0_C6_2
#define ID_AA64MMFR2 S3_0_C0_C7_2
#define ICC_PMR S3_0_C4_C6_0
#define ICC_IAR1 S3_0_C12_C12_0
#define ICC_EOIR1 S3_0_C12_C12_1
#define ICC_BPR1 S3_0_C12_C12_3
#define ICC_CTLR S3_0_C12_C12_4
#define ICC_SRE S3_0_C12_C12_5
#define ICC_IGRPEN1 S3_0_C12_C12_7

#define PSCI_VERSION 0x84000000
#define PSCI_CPU_OFF 0x84000002
#define PSCI_CPU_ON 0xC4000003
#define PSCI_AFFINITY_INFO 0xC4000004
#define PSCI_MIGRATE_INFO_TYPE 0x84000006
#define PSCI_SYSTEM_OFF 0x84000008
#define PSCI_FEATURES 0x8400000A
#define SMCCC_VERSION 0x80000000
#define SMCCC_HYP_UID 0x8600ff01

const char *const psci_feat_names[12] = {
	"cpu_suspend", "cpu_off", "cpu_on", "affinity_info", "migrate_info_type", "system_off",
	"system_reset", "psci_features", "cpu_default_suspend", "system_suspend", "system_reset2", "smccc_version",
};
const uint32_t psci_feat_ids[12] = {
	0xC4000001, 0x84000002, 0xC4000003, 0xC4000004, 0x84000006, 0x84000008,
	0x84000009, 0x8400000A, 0xC400000C, 0xC400000E, 0xC4000012, 0x80000000,
};

uint64_t psci(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3)
{
	return P.conduit_smc ? smc_call(fn, a1, a2, a3, 0) : hvc_call(fn, a1, a2, a3, 0);
}

void power_off(void)
{
	irq_off();
	if (P.fdt.psci_found)
		psci(PSCI_SYSTEM_OFF, 0, 0, 0);
	puts_raw(P.fdt.psci_found ? "arm64probe: PSCI SYSTEM_OFF returned: halting\n" : "arm64probe: no PSCI in the device tree: halting\n");
	for (;;)
		wfi();
}

uint64_t counter(void)
{
	isb();
	return read_sysreg(cntvct_el0);
}

void delay_ms(uint64_t ms)
{
	uint64_t end = counter() + P.cntfrq * ms / 1000;
	while (counter() < end)
		;
}

/* ---- exceptions and interrupts ---- */

static volatile uint64_t timer_fire_at, timer_cval;
static volatile int timer_fired;
static volatile uint64_t tick_period, ticks;
static volatile uint8_t rx_ring[256];
static volatile uint32_t rx_head, rx_tail;
static uint32_t uart_intid;

uint64_t timer_fired_at(void) { return timer_fire_at; }
uint64_t tick_count(void) { return ticks; }

int rx_getc(void)
{
	if (rx_tail == rx_head)
		return uart_getc(); /* also poll: a console without RX interrupts still works */
	return rx_ring[rx_tail++ % sizeof(rx_ring)];
}

static void irq(void)
{
	uint64_t iar = read_sysreg(ICC_IAR1);
	uint32_t id = iar & 0xffffff;
	if (id >= 1020 && id <= 1023) {
		P.spurious++;
		return;
	}
	if (id == P.timer_intid) {
		uint64_t now = read_sysreg(cntvct_el0);
		uint64_t ctl = read_sysreg(cntv_ctl_el0);
		if (!(ctl & 4))
			P.timer_wrong_status++;
		if (tick_period) {
			ticks++;
			write_sysreg(cntv_cval_el0, read_sysreg(cntv_cval_el0) + tick_period);
		} else {
			timer_fire_at = now;
			timer_fired = 1;
			write_sysreg(cntv_ctl_el0, 0);
		}
	} else if (uart_intid && id == uart_intid) {
		P.rx_irqs++;
		int c;
		while ((c = uart_getc()) >= 0)
			if (rx_head - rx_tail < sizeof(rx_ring))
				rx_ring[rx_head++ % sizeof(rx_ring)] = (uint8_t)c;
		wr32(P.fdt.uart_base + 0x44, 0x7ff); /* UARTICR */
	} else {
		P.other_irqs++;
	}
	write_sysreg(ICC_EOIR1, iar);
	isb();
}

static const char *const exc_kinds[16] = {
	"sync EL1t", "irq EL1t", "fiq EL1t", "serror EL1t", "sync EL1h", "irq EL1h", "fiq EL1h", "serror EL1h",
	"sync EL0/64", "irq EL0/64", "fiq EL0/64", "serror EL0/64", "sync EL0/32", "irq EL0/32", "fiq EL0/32", "serror EL0/32",
};

void exc_handler(uint64_t kind, uint64_t *regs)
{
	static int nested;
	if (kind == 5) {
		irq();
		return;
	}
	if (nested++) /* a fault while reporting one (or powering off) */
		for (;;)
			wfi();
	printf("\narm64probe: unexpected exception %s: ESR_EL1=%lx ELR_EL1=%lx FAR_EL1=%lx (image at %lx, x0=%lx)\n",
	       exc_kinds[kind & 15], read_sysreg(esr_el1), read_sysreg(elr_el1), read_sysreg(far_el1), P.base, regs[0]);
	power_off();
}

/* ---- ID registers ---- */

static void read_ids(void)
{
	struct idreg *r = P.id;
	r[0] = (struct idreg){"id_aa64pfr0", read_sysreg(id_aa64pfr0_el1)};
	r[1] = (struct idreg){"id_aa64pfr1", read_sysreg(id_aa64pfr1_el1)};
	r[2] = (struct idreg){"id_aa64isar0", read_sysreg(id_aa64isar0_el1)};
	r[3] = (struct idreg){"id_aa64isar1", read_sysreg(id_aa64isar1_el1)};
	r[4] = (struct idreg){"id_aa64isar2", read_sysreg(ID_AA64ISAR2)};
	r[5] = (struct idreg){"id_aa64mmfr0", read_sysreg(id_aa64mmfr0_el1)};
	r[6] = (struct idreg){"id_aa64mmfr1", read_sysreg(id_aa64mmfr1_el1)};
	r[7] = (struct idreg){"id_aa64mmfr2", read_sysreg(ID_AA64MMFR2)};
	r[8] = (struct idreg){"id_aa64dfr0", read_sysreg(id_aa64dfr0_el1)};
	r[9] = (struct idreg){"id_aa64zfr0", read_sysreg(ID_AA64ZFR0)};
	r[10] = (struct idreg){"midr", read_sysreg(midr_el1)};
	r[11] = (struct idreg){"mpidr", read_sysreg(mpidr_el1)};
	r[12] = (struct idreg){"revidr", read_sysreg(revidr_el1)};
	r[13] = (struct idreg){"ctr", read_sysreg(ctr_el0)};
	r[14] = (struct idreg){"dczid", read_sysreg(dczid_el0)};
	P.nid = 15;
}

/* ---- PSCI and SMCCC ---- */

static void probe_psci(void)
{
	P.conduit_smc = strcmp(P.fdt.psci_method, "smc") == 0;
	P.psci_version = psci(PSCI_VERSION, 0, 0, 0) & 0xffffffff;
	for (int i = 0; i < 12; i++)
		P.psci_feat[i] = -1;
	if (P.psci_version >= 0x10000) {
		for (int i = 0; i < 12; i++)
			P.psci_feat[i] = (int32_t)psci(PSCI_FEATURES, psci_feat_ids[i], 0, 0);
		if (P.psci_feat[11] == 0)
			P.smccc_version = psci(SMCCC_VERSION, 0, 0, 0) & 0xffffffff;
	}
	P.migrate_type = psci(PSCI_MIGRATE_INFO_TYPE, 0, 0, 0) & 0xffffffff;
	if (P.smccc_version >= 0x10001 && (int32_t)P.smccc_version > 0) {
		struct smccc_res r;
		if (P.conduit_smc)
			smc_call(SMCCC_HYP_UID, 0, 0, 0, &r);
		else
			hvc_call(SMCCC_HYP_UID, 0, 0, 0, &r);
		P.hyp_uid[0] = r.a0 & 0xffffffff;
		P.hyp_uid[1] = r.a1 & 0xffffffff;
		P.hyp_uid[2] = r.a2 & 0xffffffff;
		P.hyp_uid[3] = r.a3 & 0xffffffff;
	}
}

const char *hyp_name(void)
{
	if (P.hyp_uid[0] == 0xb66fb428 && P.hyp_uid[1] == 0xe911c52e && P.hyp_uid[2] == 0x564bcaa9 && P.hyp_uid[3] == 0x743a004d)
		return "kvm";
	if (P.smccc_version < 0x10001 || (int32_t)P.smccc_version < 0)
		return "unknown (no SMCCC 1.1)";
	if (P.hyp_uid[0] == 0xffffffff)
		return "none or not telling";
	return "unknown";
}

/* ---- GICv3 ---- */

static uint64_t my_aff(void)
{
	uint64_t m = read_sysreg(mpidr_el1);
	return (m & 0xffffff) | ((m >> 32) & 0xff) << 24;
}

static void wait_rwp(uint64_t reg, uint32_t bit)
{
	for (int i = 0; i < 1000000 && (rd32(reg) & bit); i++)
		;
}

static void set_prio(uint64_t base, uint32_t id, uint8_t prio)
{
	uint64_t a = base + 0x400 + (id & ~3u);
	uint32_t sh = (id & 3) * 8;
	wr32(a, (rd32(a) & ~(0xffu << sh)) | (uint32_t)prio << sh);
}

static void gic_init(void)
{
	uint64_t d = P.fdt.gicd_base;
	if (!d)
		return;
	if (strcmp(P.fdt.gic_compat, "arm,gic-v3") != 0) {
		/* GICv2 (gic-400, cortex-a15-gic): its ID registers are at
		 * 0xfe8 of a 4 KiB distributor; the probe drives only GICv3. */
		P.gicd_pidr2 = rd32(d + 0xfe8);
		P.gic_arch = 2;
		return;
	}
	P.gicd_pidr2 = rd32(d + 0xffe8);
	P.gicd_typer = rd32(d + 0x4);
	P.gicd_iidr = rd32(d + 0x8);
	P.gic_arch = (P.gicd_pidr2 >> 4) & 0xf;
	if (P.gic_arch < 3)
		return;
	wr32(d + 0, 0);
	wait_rwp(d, 1u << 31);
	wr32(d + 0, 0x13); /* ARE, EnableGrp1 (NS), EnableGrp0 */
	wait_rwp(d, 1u << 31);

	uint64_t aff = my_aff(), r = P.fdt.gicr_base, my = 0;
	for (int i = 0; r && i < 4 * MAX_CPUS; i++) {
		if (P.fdt.gicr_size && r >= P.fdt.gicr_base + P.fdt.gicr_size)
			break;
		uint64_t t = rd64(r + 8);
		if (i == 0)
			P.gicr_typer0 = t;
		P.nredist++;
		if ((t >> 32) == aff) {
			my = r;
			P.my_redist = i;
		}
		if (t & (1 << 4)) /* Last */
			break;
		r += (t & 2) ? 0x40000 : 0x20000;
	}
	if (!my)
		return;
	wr32(my + 0x14, rd32(my + 0x14) & ~2u); /* GICR_WAKER.ProcessorSleep = 0 */
	for (int i = 0; i < 1000000 && (rd32(my + 0x14) & 4); i++)
		;
	uint64_t sgi = my + 0x10000;
	P.timer_intid = 16 + (P.fdt.timer_found && P.fdt.timer_ppi[2] ? P.fdt.timer_ppi[2] : 11);
	wr32(sgi + 0x80, rd32(sgi + 0x80) | 1u << P.timer_intid); /* Group 1 */
	set_prio(sgi, P.timer_intid, 0xa0);
	wr32(sgi + 0x100, 1u << P.timer_intid); /* ISENABLER0 */

	write_sysreg(ICC_SRE, read_sysreg(ICC_SRE) | 1);
	isb();
	P.icc_sre = read_sysreg(ICC_SRE);
	write_sysreg(ICC_PMR, 0xf0);
	write_sysreg(ICC_BPR1, 0);
	write_sysreg(ICC_IGRPEN1, 1);
	isb();
}

void uart_irq_enable(void)
{
	if (P.gic_arch < 3 || P.fdt.uart_spi == 0xffffffff || P.fdt.uart_spi > 987)
		return;
	uint64_t d = P.fdt.gicd_base;
	uint32_t id = 32 + P.fdt.uart_spi;
	wr32(d + 0x80 + 4 * (id / 32), rd32(d + 0x80 + 4 * (id / 32)) | 1u << (id % 32));
	set_prio(d, id, 0xa0);
	wr64(d + 0x6000 + 8 * id, my_aff());
	uart_intid = id;
	wr32(d + 0x100 + 4 * (id / 32), 1u << (id % 32));
	wr32(P.fdt.uart_base + 0x44, 0x7ff);
	wr32(P.fdt.uart_base + 0x38, (1 << 4) | (1 << 6)); /* IMSC: RX, RX timeout */
}

/* ---- timer ---- */

/* sample: the physical counter read between two reads of the virtual one,
 * the narrowest of eight tries; *v is the virtual reads' midpoint and the
 * result their spread (the uncertainty of pct - vct). */
static uint64_t sample(uint64_t *v, uint64_t *p)
{
	uint64_t best = ~0ull;
	for (int i = 0; i < 8; i++) {
		isb();
		uint64_t a = read_sysreg(cntvct_el0);
		isb();
		uint64_t pp = read_sysreg(cntpct_el0);
		isb();
		uint64_t b = read_sysreg(cntvct_el0);
		if (b >= a && b - a < best) {
			best = b - a;
			*v = a + (b - a) / 2;
			*p = pp;
		}
	}
	return best;
}

/* counter_check: over calib_ms the virtual counter never goes back and
 * the physical one advances by as much: pct - vct (CNTVOFF) stays the
 * same within the reads' spread plus 0.1%. */
static void counter_check(void)
{
	P.cntfrq = read_sysreg(cntfrq_el0) & 0xffffffff;
	if (!P.cntfrq)
		return;
	P.calib_ticks = P.cntfrq * P.calib_ms / 1000;
	uint64_t v0, p0, v1, p1;
	uint64_t w0 = sample(&v0, &p0);
	uint64_t last = v0;
	int mono = 1;
	while (last - v0 < P.calib_ticks) {
		isb();
		uint64_t v = read_sysreg(cntvct_el0);
		if (v < last)
			mono = 0;
		last = v;
	}
	uint64_t w1 = sample(&v1, &p1);
	P.vct_delta = v1 - v0;
	P.pct_delta = p1 - p0;
	uint64_t diff = P.pct_delta > P.vct_delta ? P.pct_delta - P.vct_delta : P.vct_delta - P.pct_delta;
	P.counter_ok = mono && w0 != ~0ull && w1 != ~0ull && diff <= w0 + w1 + P.vct_delta / 1000 + 2;
}

/* timer_irq_test: n one-shot EL1 virtual timer interrupts, ms apart. */
void timer_irq_test(int n, uint64_t ms)
{
	if (!P.cntfrq || !P.timer_intid)
		return;
	uint64_t ticks_per = P.cntfrq * ms / 1000;
	P.timer_lat_min = ~0ull;
	for (int i = 0; i < n; i++) {
		timer_fired = 0;
		uint64_t cval = counter() + ticks_per;
		timer_cval = cval;
		write_sysreg(cntv_cval_el0, cval);
		write_sysreg(cntv_ctl_el0, 1);
		isb();
		irq_on();
		uint64_t limit = cval + P.cntfrq * 2;
		while (!timer_fired && counter() < limit)
			;
		irq_off();
		if (!timer_fired) {
			write_sysreg(cntv_ctl_el0, 0);
			break;
		}
		P.timer_irqs++;
		if (timer_fire_at < cval) {
			P.timer_early++;
			continue;
		}
		uint64_t lat = timer_fire_at - cval;
		P.timer_lat_sum += lat;
		if (lat < P.timer_lat_min)
			P.timer_lat_min = lat;
		if (lat > P.timer_lat_max)
			P.timer_lat_max = lat;
	}
}

/* tick_start: a periodic virtual timer tick (for the TUI), hz per second. */
void tick_start(uint64_t hz)
{
	if (!P.cntfrq || !P.timer_intid || !hz)
		return;
	tick_period = P.cntfrq / hz;
	write_sysreg(cntv_cval_el0, counter() + tick_period);
	write_sysreg(cntv_ctl_el0, 1);
	isb();
}

/* ---- secondary CPUs ---- */

extern char secondary_entry[];

void secondary_main(uint64_t idx, uint64_t el)
{
	struct cpu_mailbox *m = &P.cpu[idx];
	m->mpidr = read_sysreg(mpidr_el1);
	m->midr = read_sysreg(midr_el1);
	m->el = el;
	m->cntvct = counter();
	dsb();
	m->started = 1;
	dsb();
	psci(PSCI_CPU_OFF, 0, 0, 0);
	for (;;)
		wfi();
}

static void start_cpus(void)
{
	uint64_t me = read_sysreg(mpidr_el1) & 0xff00ffffffull;
	/* Index 0 is the boot CPU; the others keep their device-tree order. */
	int idx = 1;
	for (int i = 0; i < P.fdt.ncpus && idx < MAX_CPUS; i++) {
		uint64_t target = P.fdt.cpu_reg[i] & 0xff00ffffffull;
		if (target == me)
			continue;
		P.cpu_on_rc[idx] = (int32_t)psci(PSCI_CPU_ON, target, (uint64_t)secondary_entry, idx);
		if (P.cpu_on_rc[idx] == 0) {
			uint64_t limit = counter() + P.cntfrq * 10;
			while (!P.cpu[idx].started && counter() < limit)
				dsb();
			if (P.cpu[idx].started)
				P.cpus_started++;
		}
		/* The secondary turns itself off: AFFINITY_INFO says OFF (1). */
		int64_t a = -1;
		uint64_t limit = counter() + P.cntfrq * 2;
		do
			a = (int32_t)psci(PSCI_AFFINITY_INFO, target, 0, 0);
		while (P.cpu[idx].started && a != 1 && counter() < limit);
		P.cpu_aff_after[idx] = a;
		idx++;
	}
}

/* ---- memory ---- */

extern char __end[];

static int overlaps(uint64_t a, uint64_t lo, uint64_t hi) { return a + 8 > lo && a < hi; }

static void mem_check(void)
{
	for (int i = 0; i < P.fdt.nmem; i++) {
		uint64_t b = P.fdt.mem_base[i], s = P.fdt.mem_size[i];
		P.mem_total += s;
		for (uint64_t a = b; a + 8 <= b + s; a += 1 << 20) {
			uint64_t t = a == b ? a : a - 8; /* the last word of each MiB, the first of the region */
			if (overlaps(t, P.base, (uint64_t)__end) || overlaps(t, P.dtb, P.dtb + P.fdt.totalsize))
				continue;
			uint64_t save = rd64(t), pat = 0xa5a5000000000000ull ^ t;
			wr64(t, pat);
			dsb();
			if (rd64(t) != pat)
				P.mem_bad++;
			wr64(t, save);
			P.mem_checked++;
		}
		/* And the very last word of the region. */
		uint64_t t = b + s - 8;
		if (!overlaps(t, P.base, (uint64_t)__end) && !overlaps(t, P.dtb, P.dtb + P.fdt.totalsize)) {
			uint64_t save = rd64(t);
			wr64(t, ~save);
			dsb();
			if (rd64(t) != ~save)
				P.mem_bad++;
			wr64(t, save);
			P.mem_checked++;
		}
	}
}

/* ---- options ---- */

static uint64_t opt_u64(const char *key, uint64_t def, uint64_t lo, uint64_t hi)
{
	char v[24];
	uint64_t x;
	if (!fdt_bootarg(P.fdt.bootargs, key, v, sizeof(v)))
		return def;
	if (!parse_u64(v, &x) || x < lo || x > hi) {
		printf("arm64probe: %s=%s is not a number in %lu..%lu: using %lu\n", key, v, lo, hi, def);
		return def;
	}
	return x;
}

void probe_main(uint64_t dtb, uint64_t base, uint64_t el)
{
	P.dtb = dtb;
	P.base = base;
	P.el = el;
	if (!fdt_parse((const void *)dtb, 2u << 20, &P.fdt) || !P.fdt.uart_found) {
		/* No console to say it on: power off through the likeliest
		 * conduit (HVC, unless the DTB said SMC). */
		P.conduit_smc = P.fdt.ok && strcmp(P.fdt.psci_method, "smc") == 0;
		P.fdt.psci_found = 1;
		power_off();
	}
	uart_init(P.fdt.uart_base);
	if (!fdt_bootarg(P.fdt.bootargs, "probe.mode", P.mode, sizeof(P.mode)))
		memcpy(P.mode, "summary", 8);
	P.calib_ms = opt_u64("probe.calib_ms", 50, 1, 10000);
	P.timer_ms = opt_u64("probe.timer_ms", 10, 1, 10000);
	P.mark_ms = opt_u64("probe.mark_ms", 0, 0, 600000);
	P.smp = (int)opt_u64("probe.smp", 1, 0, 1);
	int known = !strcmp(P.mode, "summary") || !strcmp(P.mode, "report") || !strcmp(P.mode, "tui");
	printf("arm64probe: entered at EL%lu, image at %lx, DTB at %lx (%u bytes), mode %s\n", el, base, dtb, P.fdt.totalsize, P.mode);
	if (!known) {
		printf("arm64probe: unknown probe.mode=%s (summary, report or tui): powering off\n", P.mode);
		power_off();
	}
	read_ids();
	if (P.fdt.psci_found)
		probe_psci();
	else
		P.psci_version = 0xffffffff; /* none: no CPU_ON either */
	gic_init();
	counter_check();
	timer_irq_test(5, P.timer_ms);
	P.cpu[0].mpidr = read_sysreg(mpidr_el1);
	P.cpu[0].midr = read_sysreg(midr_el1);
	P.cpu[0].el = P.el;
	P.cpu[0].started = 1;
	P.cpus_started = 1;
	if (P.smp && P.fdt.psci_found)
		start_cpus();
	mem_check();
	decode_features(P.features, sizeof(P.features));
	if (P.mark_ms) {
		printf("arm64probe: mark begin cntvct=%lu\n", counter());
		delay_ms(P.mark_ms);
		printf("arm64probe: mark end cntvct=%lu ms=%lu\n", counter(), P.mark_ms);
	}
	if (!strcmp(P.mode, "report"))
		report();
	else if (!strcmp(P.mode, "tui"))
		tui();
	else
		summary();
	power_off();
}
