/* main.c: the probe guest's CPL0 part: find the machine (ACPI, LAPIC,
 * IOAPIC), start the APs, calibrate the LAPIC timer and run a periodic
 * tick, route the serial interrupt, set the MSRs the report checks, then
 * run the chosen mode at CPL3 and power off. See README.md. */
#include "probe.h"

struct probe P;
volatile uint64_t ticks;
volatile uint64_t counter;

/* MSRs shown in the MSR tab and the report; "chosen" ones are written at
 * boot with seed-derived values so a snapshot/restore test can check them. */
const struct msr_def probe_msrs[] = {
	{0x0000001B, "apic_base", false},
	{0xC0000080, "efer", false},
	{0x00000277, "pat", true},
	{0x00000010, "tsc", false},
	{0xC0000103, "tsc_aux", true},
	{0x000001A0, "misc_enable", false},
	{0x00000174, "sysenter_cs", true},
	{0x00000175, "sysenter_esp", true},
	{0x00000176, "sysenter_eip", true},
	{0xC0000081, "star", true},
	{0xC0000082, "lstar", true},
	{0xC0000083, "cstar", true},
	{0xC0000084, "fmask", true},
	{0xC0000102, "kernel_gs_base", true},
	{0x000006E0, "tsc_deadline", false},
};
const int probe_nmsrs = ARRAY_SIZE(probe_msrs);

uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}


/* The value the probe writes to chosen MSR i (0 if it writes none). */
static uint64_t chosen_value(uint32_t msr, uint64_t *s)
{
	uint64_t r = splitmix(s);
	switch (msr) {
	case 0x277: { /* PAT: keep PA0=WB and PA3=UC (used by our page tables) */
		static const uint8_t types[] = {0, 1, 4, 5, 6, 7};
		uint64_t pat = 0;
		for (int i = 0; i < 8; i++) {
			uint8_t t = types[(r >> (8 * i)) % 6];
			if (i == 0)
				t = 6;
			if (i == 3)
				t = 0;
			pat |= (uint64_t)t << (8 * i);
		}
		return pat;
	}
	case 0xC0000103: return r & 0xFFFFFFFF;          /* TSC_AUX: 32 bits */
	case 0x174: return r & 0xFFF8;                   /* SYSENTER_CS */
	case 0x175:
	case 0x176: return r & 0xFFFFFFF0;               /* 32-bit values: same on Intel and AMD */
	case 0xC0000081: return r & 0xFFFFFFFF00000000ULL; /* STAR: selectors only */
	case 0xC0000084: return r & 0x3FFFFF;            /* FMASK: defined RFLAGS bits */
	default: return r & 0x00007FFFFFFFFFF0ULL;        /* LSTAR, CSTAR, KERNEL_GS_BASE: canonical */
	}
}

static void set_msrs(void)
{
	uint64_t s = P.seed ^ 0x4D5352;
	for (int i = 0; i < probe_nmsrs && i < (int)ARRAY_SIZE(P.msr_set); i++) {
		if (!probe_msrs[i].chosen)
			continue;
		P.msr_set[i] = chosen_value(probe_msrs[i].msr, &s);
		P.msr_set_rc[i] = wrmsr_safe(probe_msrs[i].msr, P.msr_set[i]);
	}
}

/* Enable the user state components (x87, SSE, AVX, AVX-512, PKRU) in XCR0;
 * probe.xcr0=HEX overrides, probe.xsetbv=0 skips. */
static void setup_xcr0(void)
{
	if (!(cpuid(1, 0).ecx & (1u << 26)) || !cmdline_u64("probe.xsetbv", 1))
		return;
	struct cpuid_regs d = cpuid(0xd, 0);
	uint64_t want = ((((uint64_t)d.edx << 32) | d.eax) & 0x2E7) | 1;
	char buf[24];
	uint64_t v;
	if (cmdline_get("probe.xcr0", buf, sizeof(buf)) && parse_hex(buf, &v))
		want = v;
	P.xcr0_set = want;
	P.xcr0_rc = xsetbv_safe(0, want);
}

static void timer_tick(struct regs *r)
{
	ticks++;
	lapic_eoi();
}

/* Hyper-V's synthetic timers. On a partition that grants the SynIC and
 * the synthetic timers (CPUID 0x40000003 EAX bits 2 and 3), STIMER0 runs
 * periodically at P.hz and posts its expiry messages to SINT2's slot of
 * the message page (SIMP); with direct mode (EDX bit 19) STIMER1 runs at
 * the same rate and raises its own vector. The report checks that both
 * keep firing, also after a snapshot is restored. */
volatile uint64_t hv_msg_ticks, hv_direct_ticks, hv_bad_msgs;
static uint8_t simp_page[4096] __attribute__((aligned(4096)));

#define HV_MSR_SCONTROL 0x40000080
#define HV_MSR_SIMP 0x40000083
#define HV_MSR_EOM 0x40000084
#define HV_MSR_SINT0 0x40000090
#define HV_MSR_STIMER0_CONFIG 0x400000B0 /* STIMERn_CONFIG = +2n, _COUNT = +2n+1 */
#define HVMSG_TIMER_EXPIRED 0x80000010
#define STIMER_ENABLE 1
#define STIMER_PERIODIC 2
#define STIMER_DIRECT (1u << 12)

static void hv_sint_isr(struct regs *r)
{
	volatile uint8_t *slot = simp_page + 256 * HV_TIMER_SINT;
	volatile uint32_t *type = (volatile uint32_t *)slot;
	if (*type == HVMSG_TIMER_EXPIRED && *(volatile uint32_t *)(slot + 16) == 0)
		hv_msg_ticks++;
	else
		hv_bad_msgs++;
	uint8_t flags = slot[5];
	*type = 0; /* free the slot */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (flags & 1) /* another message waits: end of message */
		wrmsr(HV_MSR_EOM, 0);
	lapic_eoi();
}

static void hv_direct_isr(struct regs *r)
{
	hv_direct_ticks++;
	lapic_eoi();
}

static void hv_timers_start(void)
{
	if (!hyperv())
		return;
	struct cpuid_regs f = cpuid(0x40000003, 0);
	if ((f.eax & (3u << 2)) != (3u << 2))
		return;
	uint64_t period = 10000000 / (P.hz ? P.hz : 100); /* 100 ns units */
	set_handler(HV_SINT_VECTOR, hv_sint_isr);
	set_handler(HV_DIRECT_VECTOR, hv_direct_isr);
	int rc = wrmsr_safe(HV_MSR_SIMP, (uint64_t)simp_page | 1);
	rc |= wrmsr_safe(HV_MSR_SINT0 + HV_TIMER_SINT, HV_SINT_VECTOR);
	rc |= wrmsr_safe(HV_MSR_SCONTROL, 1);
	rc |= wrmsr_safe(HV_MSR_STIMER0_CONFIG + 1, period);
	rc |= wrmsr_safe(HV_MSR_STIMER0_CONFIG, STIMER_ENABLE | STIMER_PERIODIC | (uint64_t)HV_TIMER_SINT << 16);
	P.hv_timers = 1;
	if (f.edx & (1u << 19)) {
		rc |= wrmsr_safe(HV_MSR_STIMER0_CONFIG + 3, period);
		rc |= wrmsr_safe(HV_MSR_STIMER0_CONFIG + 2,
				 STIMER_ENABLE | STIMER_PERIODIC | STIMER_DIRECT | (uint64_t)HV_DIRECT_VECTOR << 4);
		P.hv_timers = 2;
	}
	if (rc)
		P.hv_timers = -1;
}

uint64_t uptime_ms(void)
{
	return P.hz ? ticks * 1000 / P.hz : 0;
}

static void timer_start(void)
{
	P.timer_div = TIMER_DIVIDE_REG;
	P.timer_lvt = TIMER_VECTOR | (1u << 17); /* periodic */
	uint64_t per = P.lapic_hz / TIMER_DIVIDE / (P.hz ? P.hz : 100);
	if (!P.lapic_hz) /* no PM timer and no PIT: assume a 1 GHz bus (KVM's) */
		per = 1000000000ULL / TIMER_DIVIDE / (P.hz ? P.hz : 100);
	if (per == 0)
		per = 1;
	if (per > 0xFFFFFFFF)
		per = 0xFFFFFFFF;
	P.timer_init = (uint32_t)per;
	set_handler(TIMER_VECTOR, timer_tick);
	lapic_write(LAPIC_TIMER_DIV, P.timer_div);
	lapic_write(LAPIC_LVT_TIMER, P.timer_lvt);
	lapic_write(LAPIC_TIMER_INIT, P.timer_init);
}

/* SYS_PROBE_MSRLIST: read n MSRs in one trip to CPL0. */
static uint64_t sys_msrlist(uint64_t a0, uint64_t a1, uint64_t a2)
{
	struct msr_val *v = (struct msr_val *)a0;
	for (uint64_t i = 0; i < a1; i++)
		v[i].rc = rdmsr_safe(v[i].msr, &v[i].val);
	return 0;
}

uint64_t msr_read_u(uint32_t msr, int *rc)
{
	struct msr_val v = {msr, 0, 0};
	sys_call(SYS_PROBE_MSRLIST, (uint64_t)&v, 1, 0);
	if (rc)
		*rc = v.rc;
	return v.val;
}

uint32_t lapic_read_u(uint32_t reg) { return (uint32_t)sys_call(SYS_LAPIC_READ, reg, 0, 0); }

static void ap_main(uint32_t idx)
{
	/* APs only prove they started; they stay halted with interrupts off. */
}

static uint64_t setup_user(uint64_t arg)
{
	/* CPL3: the counter, then x87/SSE state from the seed. */
	for (uint64_t i = 0; i < P.count; i++)
		counter++;
	uint64_t s = P.seed ^ 0x584D4D;
	for (int i = 0; i < 16; i++) {
		P.xmm[i][0] = splitmix(&s);
		P.xmm[i][1] = splitmix(&s);
	}
	P.fcw = 0x0E7F;   /* round toward zero, 53-bit precision, all masked */
	P.mxcsr = 0xFF80; /* FTZ, round toward zero, all masked */
	fpu_set_state(&P.xmm[0][0], P.fcw, P.mxcsr);
	return 0;
}

int main(void)
{
	char mode[16] = "summary";
	cmdline_get("probe.mode", mode, sizeof(mode));
	if (!strcmp(mode, "report"))
		P.mode = MODE_REPORT;
	else if (!strcmp(mode, "tui"))
		P.mode = MODE_TUI;
	else if (!strcmp(mode, "summary"))
		P.mode = MODE_SUMMARY;
	else {
		printf("probe: unknown probe.mode=%s (want summary, report or tui)\n", mode);
		return 2;
	}
	P.seed = cmdline_u64("probe.seed", 1);
	P.count = cmdline_u64("probe.count", 1000000);
	P.hz = cmdline_u64("probe.hz", 100);
	if (P.hz == 0 || P.hz > 10000)
		P.hz = 100;
	P.wait_ms = cmdline_u64("probe.wait", 0);
	P.repeat = cmdline_u64("probe.repeat", 1);
	P.x2apic_wanted = cmdline_u64("probe.x2apic", 1) != 0;

	if (P.mode != MODE_REPORT)
		printf("probe: booting (mode %s)\n", mode);
	acpi_init();
	pic_disable();
	lapic_init(P.x2apic_wanted);
	P.cpus_started = cmdline_u64("probe.smp", 1) ? smp_start(ap_main) : 1;
	P.lapic_hz = lapic_timer_calibrate((uint32_t)cmdline_u64("probe.calib_ms", 50), &P.tsc_hz_meas);
	syscall_register(SYS_PROBE_MSRLIST, sys_msrlist);
	set_msrs();
	setup_xcr0();
	timer_start();
	hv_timers_start();
	P.serial_irq = serial_irq_enable(SERIAL_VECTOR);
	sti();
	user_call(setup_user, 0);

	switch (P.mode) {
	case MODE_REPORT:
		user_call(report_main, 0);
		break;
	case MODE_TUI:
		user_call(tui_main, 0);
		break;
	default:
		user_call(summary_main, 0);
	}
	poweroff();
}
