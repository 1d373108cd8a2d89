/* report.c: probe.mode=report prints sorted key=value lines between
 * "--- probe report begin ---" and "--- probe report end ---", and the
 * summary mode (the default guest's short report). Both run at CPL3. */
#include "facts.h"

#define MAXLINES 400
static char pool[48 * 1024];
static size_t pool_used;
static char *lines[MAXLINES];
static int nlines;

static void add(const char *key, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void add(const char *key, const char *fmt, ...)
{
	if (nlines >= MAXLINES || pool_used + 64 > sizeof(pool))
		return;
	char *p = pool + pool_used;
	size_t room = sizeof(pool) - pool_used;
	int n = snprintf(p, room, "%s=", key);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(p + n, room - (size_t)n, fmt, ap);
	va_end(ap);
	if ((size_t)n >= room)
		return;
	pool_used += (size_t)n + 1;
	lines[nlines++] = p;
}

static void collect(void)
{
	char buf[512], k[64];
	nlines = 0;
	pool_used = 0;

	/* probe */
	char mode[16] = "summary";
	cmdline_get("probe.mode", mode, sizeof(mode));
	add("probe.mode", "%s", mode);
	add("probe.seed", "%lu", P.seed);
	add("probe.hz", "%lu", P.hz);
	add("boot.cmdline", "%s", boot.cmdline);

	/* boot info */
	add("boot.multiboot", "%d", boot.multiboot);
	add("boot.mem_lower_kb", "%u", boot.mem_lower_kb);
	add("boot.mem_upper_kb", "%u", boot.mem_upper_kb);
	add("boot.mem_bytes", "%lu", boot_mem_bytes());
	add("boot.mmap_entries", "%d", boot.nmmap);
	for (int i = 0; i < boot.nmmap; i++) {
		snprintf(k, sizeof(k), "boot.mmap.%02d", i);
		add(k, "%#lx+%#lx type=%u", boot.mmap[i].base, boot.mmap[i].len, boot.mmap[i].type);
	}
	add("boot.modules", "%d", boot.nmods);

	/* ACPI */
	add("acpi.found", "%d", acpi.found);
	add("acpi.oem", "%s", acpi.oem_id);
	add("acpi.revision", "%d", acpi.revision);
	add("acpi.madt", "%d", acpi.has_madt);
	add("acpi.fadt", "%d", acpi.has_fadt);
	add("acpi.ioapic", acpi.has_ioapic ? "%#x" : "none", acpi.ioapic_addr);
	add("acpi.ioapic_gsi_base", "%u", acpi.ioapic_gsi_base);
	size_t pos = 0;
	buf[0] = 0;
	for (int i = 0; i < acpi.niso; i++)
		pos += (size_t)snprintf(buf + pos, sizeof(buf) - pos, "%sirq%u>gsi%u/%#x", i ? " " : "",
					acpi.iso[i].irq, acpi.iso[i].gsi, acpi.iso[i].flags);
	add("acpi.isos", "%s", acpi.niso ? buf : "none");
	add("acpi.pm_timer", acpi.pm_tmr_port ? "%#x" : "none", acpi.pm_tmr_port);
	add("acpi.pm_timer_bits", "%d", acpi.pm_tmr_port ? (acpi.pm_tmr_32bit ? 32 : 24) : 0);
	add("acpi.pm1a_cnt", acpi.pm1a_cnt ? "%#x" : "none", acpi.pm1a_cnt);
	add("acpi.sci_irq", "%u", acpi.sci_irq);

	/* CPUs */
	add("cpus.madt", "%d", acpi.ncpus_total);
	add("cpus.max", "%d", MAX_CPUS);
	add("cpus.started", "%d", P.cpus_started);

	/* CPUID */
	char vendor[13], brand[49], hv[13];
	uint32_t fam, model, step, hvmax;
	cpu_vendor(vendor);
	cpu_brand(brand);
	cpu_fms(&fam, &model, &step);
	hv_name(hv, &hvmax);
	add("cpu.vendor", "%s", vendor);
	add("cpu.brand", "%s", brand[0] ? brand : "none");
	add("cpu.family", "%#x", fam);
	add("cpu.model", "%#x", model);
	add("cpu.stepping", "%u", step);
	add("cpuid.hypervisor", "%s", hv[0] ? hv : "none");
	/* The CPU model, as govmm tells its own guests on the command line. */
	char list[768];
	if (cmdline_get("govmm.cpu", buf, sizeof(buf))) {
		add("govmm.cpu", "%s", buf);
		list[0] = 0;
		cmdline_get("govmm.cpu.hidden", list, sizeof(list));
		add("govmm.cpu.hidden", "%s", list);
		list[0] = 0;
		cmdline_get("govmm.cpu.added", list, sizeof(list));
		add("govmm.cpu.added", "%s", list);
	}
	for (int i = 0; i < nfeat_regs; i++) {
		if (feat_list(&feat_regs[i], buf, sizeof(buf)) < 0)
			continue;
		snprintf(k, sizeof(k), "cpuid.features.%s", feat_regs[i].key);
		add(k, "%s", buf);
	}
	static const uint32_t raw[][2] = {
		{0, 0}, {1, 0}, {6, 0}, {7, 0}, {0xd, 0}, {0xd, 1}, {0x15, 0}, {0x16, 0},
		{0x80000000, 0}, {0x80000001, 0}, {0x80000007, 0}, {0x80000008, 0},
	};
	uint32_t max0 = cpuid(0, 0).eax, max8 = cpuid(0x80000000, 0).eax;
	for (size_t i = 0; i < ARRAY_SIZE(raw); i++) {
		uint32_t l = raw[i][0];
		if (l < 0x80000000 ? l > max0 : l > max8)
			continue;
		struct cpuid_regs r = cpuid(l, raw[i][1]);
		snprintf(k, sizeof(k), "cpuid.raw.%08x.%u", l, raw[i][1]);
		add(k, "%08x %08x %08x %08x", r.eax, r.ebx, r.ecx, r.edx);
	}
	for (uint32_t l = 0x40000000; hv[0] && l <= hvmax && l < 0x40000010; l++) {
		struct cpuid_regs r = cpuid(l, 0);
		snprintf(k, sizeof(k), "cpuid.raw.%08x.0", l);
		add(k, "%08x %08x %08x %08x", r.eax, r.ebx, r.ecx, r.edx);
	}
	if (max0 >= 0x15) {
		struct cpuid_regs r = cpuid(0x15, 0);
		add("cpuid.leaf15", "denominator=%u numerator=%u crystal_hz=%u", r.eax, r.ebx, r.ecx);
	}
	if (max0 >= 0x16) {
		struct cpuid_regs r = cpuid(0x16, 0);
		add("cpuid.leaf16", "base_mhz=%u max_mhz=%u bus_mhz=%u", r.eax & 0xFFFF, r.ebx & 0xFFFF, r.ecx & 0xFFFF);
	}

	/* LAPIC and timer */
	struct timer_regs t;
	read_timer(&t);
	add("lapic.mode", "%s", lapic_x2apic() ? "x2apic" : "xapic");
	add("lapic.id", "%u", lapic_x2apic() ? lapic_read_u(LAPIC_ID) : lapic_read_u(LAPIC_ID) >> 24);
	add("lapic.version", "%#x", lapic_read_u(LAPIC_VER));
	add("lapic.svr", "%#x", lapic_read_u(LAPIC_SVR));
	add("lapic.timer_lvt", "%#x", t.lvt);
	add("lapic.timer_initial", "%u", t.init);
	add("lapic.timer_divide", "%#x", t.div);
	add("state.check.lapic_timer", "%s", check_timer(&t) ? "ok" : "FAIL");
	const char *how;
	uint64_t tsc_cpuid = tsc_hz_cpuid(&how);
	add("timer.hz", "%lu", P.hz);
	add("timer.calibration", "%s", acpi.pm_tmr_port ? "pmtimer" : P.lapic_hz ? "pit" : "none");
	add("timer.lapic_hz", "%lu", P.lapic_hz);
	add("timer.tsc_hz_measured", "%lu", P.tsc_hz_meas);
	add("timer.tsc_hz_cpuid", tsc_cpuid ? "%lu" : "unavailable", tsc_cpuid);
	add("timer.tsc_hz_source", "%s", how);
	add("timer.ticks", "%lu", ticks);
	add("timer.uptime_ms", "%lu", uptime_ms());
	if (P.hv_timers) {
		add("hv.stimer.modes", "%s", P.hv_timers == 2 ? "message,direct" : P.hv_timers == 1 ? "message" : "gp");
		add("hv.stimer.message_ticks", "%lu", hv_msg_ticks);
		add("hv.stimer.direct_ticks", "%lu", hv_direct_ticks);
		add("state.check.hv_stimer", "%s", check_hv_timers());
	}
	add("serial.irq", "%d", P.serial_irq);
	add("serial.rx_irqs", "%lu", serial_rx_irqs);

	/* MSRs */
	struct msr_val vals[32];
	read_msrs(vals);
	for (int i = 0; i < probe_nmsrs; i++) {
		if (probe_msrs[i].msr == 0x10 || probe_msrs[i].msr == 0x6E0)
			continue; /* TSC and TSC deadline change all the time */
		snprintf(k, sizeof(k), "msr.%s", probe_msrs[i].key);
		if (vals[i].rc)
			add(k, "gp");
		else
			add(k, "%#lx", vals[i].val);
	}
	check_msrs(buf, sizeof(buf), vals);
	add("state.check.msr", "%s", buf);
	if (hyperv()) {
		static const struct { uint32_t msr; const char *key; } hv[] = {
			{0x40000000, "msr.hv_guest_os_id"}, {0x40000001, "msr.hv_hypercall"},
			{0x40000002, "msr.hv_vp_index"},    {0x40000080, "msr.hv_scontrol"},
			{0x40000081, "msr.hv_sversion"},    {0x40000082, "msr.hv_siefp"},
			{0x40000083, "msr.hv_simp"},        {0x40000090, "msr.hv_sint0"},
		};
		for (size_t i = 0; i < ARRAY_SIZE(hv); i++) {
			int rc;
			uint64_t v = msr_read_u(hv[i].msr, &rc);
			if (rc)
				add(hv[i].key, "gp");
			else
				add(hv[i].key, "%#lx", v);
		}
	}

	/* state set at CPL3 */
	add("state.counter", "%lu", counter);
	add("state.check.counter", "%s", counter == P.count ? "ok" : "FAIL");
	add("state.check.fpu", "%s", check_fpu() ? "ok" : "FAIL");
	add("state.check.xmm", "%s", check_xmm() ? "ok" : "FAIL");
	read_fx();
	add("fpu.fcw", "%#06x", fx.fcw);
	add("fpu.fsw", "%#06x", fx.fsw);
	add("fpu.ftw", "%#04x", fx.ftw);
	add("fpu.mxcsr", "%#x", fx.mxcsr);
	add("fpu.mxcsr_mask", "%#x", fx.mxcsr_mask);
	for (int i = 0; i < 2; i++) {
		char st[40];
		fmt_st(st, sizeof(st), &fx.st[i]);
		snprintf(k, sizeof(k), "fpu.st%d", i);
		add(k, "%s", st);
	}
	for (int i = 0; i < 16; i++) {
		snprintf(k, sizeof(k), "fpu.xmm%02d", i);
		add(k, "%016lx%016lx", fx.xmm[i][1], fx.xmm[i][0]);
	}

	/* XSAVE */
	bool has_xsave = cpuid(1, 0).ecx & (1u << 26);
	add("xsave.supported", "%d", has_xsave);
	if (has_xsave) {
		struct cpuid_regs d = cpuid(0xd, 0);
		uint64_t sup = ((uint64_t)d.edx << 32) | d.eax;
		add("xsave.components", "%#lx", sup);
		add("xsave.size_max", "%u", d.ecx);
		for (int i = 2; i < 63; i++) {
			if (!(sup & (1ULL << i)))
				continue;
			struct cpuid_regs c = cpuid(0xd, (uint32_t)i);
			snprintf(k, sizeof(k), "xsave.comp.%02d", i);
			add(k, "size=%u offset=%u", c.eax, c.ebx);
		}
		add("xsave.xcr0", "%#lx", fpu_xgetbv(0));
		if (P.xcr0_set)
			add("xsave.xcr0_set", P.xcr0_rc ? "gp" : "%#lx", P.xcr0_set);
		else
			add("xsave.xcr0_set", "none");
		uint64_t bv, comp, mask;
		if (read_xsave(&bv, &comp, &mask)) {
			add("xsave.saved_mask", "%#lx", mask);
			add("xsave.header.xstate_bv", "%#lx", bv);
			add("xsave.header.xcomp_bv", "%#lx", comp);
		}
	}
}

static void sort_lines(void)
{
	for (int i = 1; i < nlines; i++) {
		char *x = lines[i];
		int j = i - 1;
		while (j >= 0 && strcmp(lines[j], x) > 0) {
			lines[j + 1] = lines[j];
			j--;
		}
		lines[j + 1] = x;
	}
}

static void wait_ms(uint64_t ms)
{
	uint64_t end = ticks + (ms * P.hz + 999) / 1000;
	while (ticks < end)
		sys_call(SYS_WAIT, 0, 0, 0);
}

uint64_t report_main(uint64_t arg)
{
	for (uint64_t r = 0; r < (P.repeat ? P.repeat : 1); r++) {
		wait_ms(P.wait_ms);
		collect();
		sort_lines();
		printf("--- probe report begin ---\n");
		for (int i = 0; i < nlines; i++)
			printf("%s\n", lines[i]);
		printf("--- probe report end ---\n");
	}
	return 0;
}

uint64_t summary_main(uint64_t arg)
{
	char vendor[13], brand[49], hv[13], buf[512];
	uint32_t fam, model, step, hvmax;
	cpu_vendor(vendor);
	cpu_brand(brand);
	cpu_fms(&fam, &model, &step);
	hv_name(hv, &hvmax);
	printf("govmm probe guest\n");
	printf("  cpu:        %s, family %#x model %#x stepping %u\n", vendor, fam, model, step);
	printf("  brand:      %s\n", brand[0] ? brand : "(none)");
	printf("  hypervisor: %s\n", hv[0] ? hv : "(none)");
	if (cmdline_get("govmm.cpu", buf, sizeof(buf))) {
		char list[768] = "";
		printf("  cpu model:  %s", buf);
		if (cmdline_get("govmm.cpu.hidden", list, sizeof(list)) && list[0])
			printf(", hides %s", list);
		list[0] = 0;
		if (cmdline_get("govmm.cpu.added", list, sizeof(list)) && list[0])
			printf(", adds %s", list);
		printf("\n");
	}
	for (int i = 0; i < 2; i++) {
		feat_list(&feat_regs[i], buf, sizeof(buf));
		printf("  cpuid %-6s %s\n", feat_regs[i].key, buf);
	}
	if (feat_list(&feat_regs[3], buf, sizeof(buf)) >= 0)
		printf("  cpuid %-6s %s\n", feat_regs[3].key, buf);
	uint64_t mem = boot_mem_bytes();
	printf("  memory:     %lu MiB (mem_lower %u KiB, mem_upper %u KiB, %d mmap entries)\n", mem >> 20,
	       boot.mem_lower_kb, boot.mem_upper_kb, boot.nmmap);
	printf("  cpus:       %d started (%d in the MADT%s)\n", P.cpus_started, acpi.ncpus_total,
	       acpi.ncpus_total > MAX_CPUS ? ", the probe starts at most 64" : "");
	printf("  acpi:       %s, lapic %s, ioapic %s, pm timer %s\n", acpi.found ? "found" : "not found",
	       lapic_x2apic() ? "x2apic" : "xapic", acpi.has_ioapic ? "yes" : "no",
	       acpi.pm_tmr_port ? "yes" : "no");
	printf("  timer:      LAPIC %lu Hz, TSC %lu Hz (measured)\n", P.lapic_hz, P.tsc_hz_meas);
	printf("probe: done, powering off\n");
	return 0;
}
