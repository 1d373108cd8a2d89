/* report.c: the ID register decoding (feature names as Linux's
 * /proc/cpuinfo prints them), the report mode's sorted key=value lines,
 * and the summary mode's short human report. */
#include "probe.h"

enum { PFR0, PFR1, ISAR0, ISAR1, ISAR2, MMFR0, MMFR1, MMFR2, DFR0, ZFR0 };

struct feat {
	uint8_t reg, shift, min, sgn;
	const char *name;
};

/* A feature is there when its 4-bit field is >= min (signed fields: FP
 * and AdvSIMD, where 0xf means absent). */
static const struct feat feats[] = {
	{PFR0, 16, 0, 1, "fp"}, {PFR0, 20, 0, 1, "asimd"}, {ISAR0, 4, 1, 0, "aes"}, {ISAR0, 4, 2, 0, "pmull"},
	{ISAR0, 8, 1, 0, "sha1"}, {ISAR0, 12, 1, 0, "sha2"}, {ISAR0, 16, 1, 0, "crc32"}, {ISAR0, 20, 2, 0, "atomics"},
	{PFR0, 16, 1, 1, "fphp"}, {PFR0, 20, 1, 1, "asimdhp"}, {ISAR0, 28, 1, 0, "asimdrdm"}, {ISAR1, 12, 1, 0, "jscvt"},
	{ISAR1, 16, 1, 0, "fcma"}, {ISAR1, 20, 1, 0, "lrcpc"}, {ISAR1, 0, 1, 0, "dcpop"}, {ISAR0, 32, 1, 0, "sha3"},
	{ISAR0, 36, 1, 0, "sm3"}, {ISAR0, 40, 1, 0, "sm4"}, {ISAR0, 44, 1, 0, "asimddp"}, {ISAR0, 12, 2, 0, "sha512"},
	{PFR0, 32, 1, 0, "sve"}, {ISAR0, 48, 1, 0, "asimdfhm"}, {PFR0, 48, 1, 0, "dit"}, {MMFR2, 32, 1, 0, "uscat"},
	{ISAR1, 20, 2, 0, "ilrcpc"}, {ISAR0, 52, 1, 0, "flagm"}, {PFR1, 4, 2, 0, "ssbs"}, {ISAR1, 36, 1, 0, "sb"},
	{ISAR1, 0, 2, 0, "dcpodp"}, {ZFR0, 0, 1, 0, "sve2"}, {ZFR0, 4, 1, 0, "sveaes"}, {ZFR0, 4, 2, 0, "svepmull"},
	{ZFR0, 16, 1, 0, "svebitperm"}, {ZFR0, 32, 1, 0, "svesha3"}, {ZFR0, 40, 1, 0, "svesm4"}, {ISAR0, 52, 2, 0, "flagm2"},
	{ISAR1, 32, 1, 0, "frint"}, {ZFR0, 44, 1, 0, "svei8mm"}, {ZFR0, 52, 1, 0, "svef32mm"}, {ZFR0, 56, 1, 0, "svef64mm"},
	{ZFR0, 20, 1, 0, "svebf16"}, {ISAR1, 52, 1, 0, "i8mm"}, {ISAR1, 44, 1, 0, "bf16"}, {ISAR1, 48, 1, 0, "dgh"},
	{ISAR0, 60, 1, 0, "rng"}, {PFR1, 0, 1, 0, "bti"}, {PFR1, 8, 2, 0, "mte"}, {ISAR1, 44, 2, 0, "ebf16"},
	{ISAR2, 0, 2, 0, "wfxt"}, {ISAR2, 4, 1, 0, "rpres"}, {PFR1, 8, 3, 0, "mte3"}, {PFR1, 24, 1, 0, "sme"},
	{ISAR2, 16, 1, 0, "mops"}, {ISAR2, 20, 1, 0, "hbc"}, {ISAR2, 48, 1, 0, "rprfm"}, {ISAR2, 52, 1, 0, "cssc"},
	{MMFR0, 60, 1, 0, "ecv"}, {MMFR1, 44, 1, 0, "afp"}, {ZFR0, 20, 2, 0, "sveebf16"},
};

static int field(int reg, int shift, int sgn)
{
	int v = (P.id[reg].val >> shift) & 0xf;
	return sgn && v >= 8 ? v - 16 : v;
}

static size_t add_name(char *out, size_t n, size_t o, const char *name)
{
	int w = snprintf(out + o, o < n ? n - o : 0, "%s%s", o ? " " : "", name);
	return o + (size_t)w;
}

void decode_features(char *out, size_t n)
{
	size_t o = 0;
	out[0] = 0;
	int sve = field(PFR0, 32, 0) >= 1;
	for (size_t i = 0; i < ARRAY_SIZE(feats); i++) {
		const struct feat *f = &feats[i];
		if (f->reg == ZFR0 && !sve)
			continue;
		if (field(f->reg, f->shift, f->sgn) >= f->min)
			o = add_name(out, n, o, f->name);
		if (!strcmp(f->name, "dcpodp")) {
			/* Pointer authentication: any of the address (APA, API, APA3)
			 * and generic (GPA, GPI, GPA3) fields. */
			if (field(ISAR1, 4, 0) || field(ISAR1, 8, 0) || field(ISAR2, 12, 0))
				o = add_name(out, n, o, "paca");
			if (field(ISAR1, 24, 0) || field(ISAR1, 28, 0) || field(ISAR2, 8, 0))
				o = add_name(out, n, o, "pacg");
		}
	}
}

const char *pa_range_name(uint64_t mmfr0)
{
	static const char *const r[] = {"32", "36", "40", "42", "44", "48", "52", "56"};
	uint64_t v = mmfr0 & 0xf;
	return v < 8 ? r[v] : "?";
}

static void granules(char *out, size_t n)
{
	uint64_t m = P.id[MMFR0].val;
	int g4 = (m >> 28) & 0xf, g16 = (m >> 20) & 0xf, g64 = (m >> 24) & 0xf;
	snprintf(out, n, "%s%s%s", g4 != 0xf ? "4k " : "", g16 != 0 ? "16k " : "", g64 != 0xf ? "64k" : "");
	size_t l = strlen(out);
	if (l && out[l - 1] == ' ')
		out[l - 1] = 0;
}

static const char *el_support(int v) { return v == 0 ? "no" : v == 1 ? "aarch64" : v == 2 ? "aarch64+aarch32" : "?"; }

static const char *implementer(uint64_t midr)
{
	switch ((midr >> 24) & 0xff) {
	case 0x00: return "software";
	case 0x41: return "arm";
	case 0x42: return "broadcom";
	case 0x43: return "cavium";
	case 0x46: return "fujitsu";
	case 0x48: return "hisilicon";
	case 0x4e: return "nvidia";
	case 0x50: return "apm";
	case 0x51: return "qualcomm";
	case 0x61: return "apple";
	case 0x6d: return "microsoft";
	case 0xc0: return "ampere";
	}
	return "other";
}

/* ---- the report ---- */

#define MAX_KEYS 400
struct kv {
	char key[40];
	char val[560];
};
static struct kv kvs[MAX_KEYS];
static int nkv;

static void kv(const char *key, const char *fmt, ...) __attribute__((format(__printf__, 2, 3)));
static void kv(const char *key, const char *fmt, ...)
{
	if (nkv >= MAX_KEYS)
		return;
	va_list ap;
	va_start(ap, fmt);
	snprintf(kvs[nkv].key, sizeof(kvs[0].key), "%s", key);
	vsnprintf(kvs[nkv].val, sizeof(kvs[0].val), fmt, ap);
	va_end(ap);
	nkv++;
}

static void psci_ver(char *out, size_t n, uint64_t v)
{
	if ((int32_t)v < 0)
		snprintf(out, n, "none");
	else
		snprintf(out, n, "%lu.%lu", v >> 16, v & 0xffff);
}

static void collect(void)
{
	char k[40], b[128];
	nkv = 0;
	kv("probe.mode", "%s", P.mode);
	kv("probe.calib_ms", "%lu", P.calib_ms);
	kv("probe.timer_ms", "%lu", P.timer_ms);
	kv("boot.el", "%lu", P.el);
	kv("boot.el_now", "%lu", (read_sysreg(CurrentEL) >> 2) & 3);
	kv("boot.image_base", "0x%lx", P.base);
	kv("boot.dtb", "0x%lx", P.dtb);
	kv("boot.dtb_size", "%u", P.fdt.totalsize);
	kv("boot.dtb_version", "%u", P.fdt.version);
	kv("boot.model", "%s", P.fdt.model);
	kv("boot.bootargs", "%s", P.fdt.bootargs ? P.fdt.bootargs : "");

	uint64_t midr = P.id[10].val, mpidr = P.id[11].val;
	kv("cpu.midr", "0x%lx", midr);
	kv("cpu.implementer", "0x%lx (%s)", (midr >> 24) & 0xff, implementer(midr));
	kv("cpu.part", "0x%lx", (midr >> 4) & 0xfff);
	kv("cpu.variant", "%lu", (midr >> 20) & 0xf);
	kv("cpu.revision", "%lu", midr & 0xf);
	kv("cpu.mpidr", "0x%lx", mpidr);
	kv("cpu.features", "%s", P.features);
	kv("cpu.pa_bits", "%s", pa_range_name(P.id[MMFR0].val));
	granules(b, sizeof(b));
	kv("cpu.granules", "%s", b);
	kv("cpu.asid_bits", "%d", field(MMFR0, 4, 0) == 2 ? 16 : 8);
	kv("cpu.vmid_bits", "%d", field(MMFR1, 4, 0) == 2 ? 16 : 8);
	kv("cpu.vhe", "%d", field(MMFR1, 8, 0));
	for (int e = 0; e < 4; e++) {
		snprintf(k, sizeof(k), "cpu.el%d", e);
		kv(k, "%s", el_support(field(PFR0, 4 * e, 0)));
	}
	kv("cpu.gic_sysregs", "%d", field(PFR0, 24, 0));
	kv("cpu.sve", "%d", field(PFR0, 32, 0));
	kv("cpu.pauth", "%s", has_word(P.features, "paca") ? "yes" : "no");
	kv("cpu.pmu_ver", "%d", field(DFR0, 8, 0));
	kv("cpu.debug_ver", "%d", field(DFR0, 0, 0));
	kv("cpu.brps", "%d", field(DFR0, 12, 0) + 1);
	kv("cpu.wrps", "%d", field(DFR0, 20, 0) + 1);
	for (int i = 0; i < P.nid; i++) {
		snprintf(k, sizeof(k), "id.%s", P.id[i].name);
		kv(k, "0x%016lx", P.id[i].val);
	}

	kv("psci.method", "%s", P.fdt.psci_method);
	kv("psci.compatible", "%s", P.fdt.psci_compat);
	psci_ver(b, sizeof(b), P.psci_version);
	kv("psci.version", "%s", b);
	kv("psci.migrate_info_type", "%d", (int)(int32_t)P.migrate_type);
	for (int i = 0; i < 12; i++) {
		snprintf(k, sizeof(k), "psci.feature.%s", psci_feat_names[i]);
		kv(k, "%ld", P.psci_feat[i]);
	}
	if (P.smccc_version)
		psci_ver(b, sizeof(b), P.smccc_version);
	else
		snprintf(b, sizeof(b), "none");
	kv("smccc.version", "%s", b);
	kv("smccc.hyp_uid", "%08lx-%08lx-%08lx-%08lx", P.hyp_uid[0], P.hyp_uid[1], P.hyp_uid[2], P.hyp_uid[3]);
	kv("hypervisor", "%s", hyp_name());

	kv("gic.compatible", "%s", P.fdt.gic_compat);
	kv("gic.dist_base", "0x%lx", P.fdt.gicd_base);
	kv("gic.redist_base", "0x%lx", P.fdt.gicr_base);
	kv("gic.redist_regions", "%u", P.fdt.gicr_regions);
	kv("gic.its", "%d", P.fdt.gic_its);
	kv("gic.pidr2", "0x%x", P.gicd_pidr2);
	kv("gic.version", "%u", P.gic_arch);
	kv("gic.iidr", "0x%x", P.gicd_iidr);
	kv("gic.typer", "0x%x", P.gicd_typer);
	kv("gic.lines", "%u", ((P.gicd_typer & 0x1f) + 1) * 32);
	kv("gic.redists", "%d", P.nredist);
	kv("gic.redist_typer0", "0x%lx", P.gicr_typer0);
	kv("gic.my_redist", "%d", P.my_redist);
	kv("gic.icc_sre", "0x%x", P.icc_sre);

	kv("timer.cntfrq", "%lu", P.cntfrq);
	kv("timer.dtb_clock_frequency", "%u", P.fdt.timer_clock_frequency);
	kv("timer.ppis", "%u,%u,%u,%u", P.fdt.timer_ppi[0], P.fdt.timer_ppi[1], P.fdt.timer_ppi[2], P.fdt.timer_ppi[3]);
	kv("timer.virt_intid", "%u", P.timer_intid);
	kv("timer.calib_ticks", "%lu", P.calib_ticks);
	kv("timer.cntvct_delta", "%lu", P.vct_delta);
	kv("timer.cntpct_delta", "%lu", P.pct_delta);
	kv("timer.check.counter", "%s", P.counter_ok ? "ok" : "FAIL");
	kv("timer.irqs", "%d", P.timer_irqs);
	uint64_t f = P.cntfrq ? P.cntfrq : 1;
	kv("timer.irq_latency_ns_min", "%lu", P.timer_irqs ? P.timer_lat_min * 1000000000ul / f : 0);
	kv("timer.irq_latency_ns_max", "%lu", P.timer_lat_max * 1000000000ul / f);
	int tok = P.timer_irqs == 5 && !P.timer_early && !P.timer_wrong_status;
	if (tok)
		kv("timer.check.irq", "ok");
	else
		kv("timer.check.irq", "FAIL:irqs=%d,early=%d,no_istatus=%d", P.timer_irqs, P.timer_early, P.timer_wrong_status);
	kv("irq.spurious", "%lu", P.spurious);
	kv("irq.other", "%lu", P.other_irqs);

	kv("cpus.dtb", "%d", P.fdt.ncpus);
	b[0] = 0;
	for (int i = 0, o = 0; i < P.fdt.ncpus && o < (int)sizeof(b); i++)
		o += snprintf(b + o, sizeof(b) - o, "%s0x%lx", i ? "," : "", P.fdt.cpu_reg[i]);
	kv("cpus.dtb_mpidrs", "%s", b);
	kv("cpus.enable_method", "%s", P.fdt.ncpus ? P.fdt.cpu_enable[0] : "");
	kv("cpus.smp", "%d", P.smp);
	kv("cpus.started", "%d", P.cpus_started);
	for (int i = 0; i < P.fdt.ncpus && i < MAX_CPUS; i++) {
		snprintf(k, sizeof(k), "cpus.%02d", i);
		if (i == 0)
			kv(k, "mpidr=0x%lx el=%lu boot", P.cpu[0].mpidr, P.cpu[0].el);
		else if (P.cpu[i].started)
			kv(k, "mpidr=0x%lx el=%lu on=%ld off=%ld", P.cpu[i].mpidr, P.cpu[i].el, P.cpu_on_rc[i], P.cpu_aff_after[i]);
		else if (!P.smp || !P.fdt.psci_found)
			kv(k, "not-started (%s)", P.smp ? "no PSCI" : "probe.smp=0");
		else
			kv(k, "FAIL:not-started on=%ld", P.cpu_on_rc[i]);
	}

	kv("mem.regions", "%d", P.fdt.nmem);
	for (int i = 0; i < P.fdt.nmem; i++) {
		snprintf(k, sizeof(k), "mem.%02d", i);
		kv(k, "0x%lx+0x%lx", P.fdt.mem_base[i], P.fdt.mem_size[i]);
	}
	kv("mem.bytes", "%lu", P.mem_total);
	kv("mem.checked", "%d", P.mem_checked);
	kv("mem.check", P.mem_bad ? "FAIL:%d" : "ok", P.mem_bad);

	kv("serial.base", "0x%lx", P.fdt.uart_base);
	kv("serial.path", "%s", P.fdt.uart_path);
	kv("serial.stdout_path", "%s", P.fdt.stdout_path);
	if (P.fdt.uart_spi == 0xffffffff)
		kv("serial.spi", "none");
	else
		kv("serial.spi", "%u", P.fdt.uart_spi);
}

/* linecmp compares two keys as "key=" strings. */
static int linecmp(const char *a, const char *b)
{
	for (;; a++, b++) {
		unsigned char x = *a ? (unsigned char)*a : '=', y = *b ? (unsigned char)*b : '=';
		if (x != y || (!*a && !*b))
			return x - y;
	}
}

void report(void)
{
	collect();
	/* Insertion sort of the lines: by key, "key=" compared as a whole, so
	 * that a key comes before its longer relatives whatever follows it
	 * ("a.b=" < "a.b2=" and the lines read in order). */
	for (int i = 1; i < nkv; i++)
		for (int j = i; j > 0 && linecmp(kvs[j - 1].key, kvs[j].key) > 0; j--) {
			static struct kv t;
			t = kvs[j];
			kvs[j] = kvs[j - 1];
			kvs[j - 1] = t;
		}
	puts_raw("--- probe report begin ---\n");
	for (int i = 0; i < nkv; i++)
		printf("%s=%s\n", kvs[i].key, kvs[i].val);
	puts_raw("--- probe report end ---\n");
}

void summary(void)
{
	char b[128];
	uint64_t midr = P.id[10].val;
	printf("arm64probe summary\n");
	printf("  cpu      MIDR %lx (%s, part %lx), MPIDR %lx, entered at EL%lu\n", midr, implementer(midr), (midr >> 4) & 0xfff,
	       P.id[11].val, P.el);
	printf("  features %s\n", P.features);
	granules(b, sizeof(b));
	printf("  mmu      PA %s bits, granules %s\n", pa_range_name(P.id[MMFR0].val), b);
	psci_ver(b, sizeof(b), P.psci_version);
	printf("  psci     %s via %s (%s), hypervisor %s\n", b, P.fdt.psci_method, P.fdt.psci_compat, hyp_name());
	printf("  cpus     %d in the DTB, %d running (PSCI CPU_ON)\n", P.fdt.ncpus, P.cpus_started);
	printf("  gic      v%u (%s), %d redistributors, ITS %s\n", P.gic_arch, P.fdt.gic_compat, P.nredist, P.fdt.gic_its ? "yes" : "no");
	printf("  timer    CNTFRQ %lu Hz, counter %s, virtual timer IRQ %u fired %d/5 times, latency %lu-%lu ns\n", P.cntfrq,
	       P.counter_ok ? "ok" : "FAIL", P.timer_intid, P.timer_irqs,
	       P.timer_irqs ? P.timer_lat_min * 1000000000ul / (P.cntfrq ? P.cntfrq : 1) : 0,
	       P.timer_lat_max * 1000000000ul / (P.cntfrq ? P.cntfrq : 1));
	printf("  memory   %lu MiB in %d region(s), %d words checked, %s\n", P.mem_total >> 20, P.fdt.nmem, P.mem_checked,
	       P.mem_bad ? "FAIL" : "ok");
	printf("  console  PL011 at %lx (%s)\n", P.fdt.uart_base, P.fdt.uart_path);
	printf("  bootargs %s\n", P.fdt.bootargs ? P.fdt.bootargs : "");
}
