/* facts.c: what the probe reads back at CPL3 (FPU/XSAVE state, MSRs,
 * LAPIC timer) and the checks of the state it set at boot. Shared by the
 * report and the TUI. */
#include "facts.h"

struct fxarea fx __attribute__((aligned(64)));
static uint8_t xarea[8192] __attribute__((aligned(64)));

void read_fx(void) { fpu_fxsave(&fx); }

uint64_t xsave_mask(void)
{
	if (!(cpuid(1, 0).ecx & (1u << 27))) /* OSXSAVE */
		return 0;
	struct cpuid_regs d = cpuid(0xd, 0);
	uint64_t sup = ((uint64_t)d.edx << 32) | d.eax;
	return fpu_xgetbv(0) & sup;
}

/* Size of an XSAVE area for mask (standard format). */
static uint32_t xsave_size(uint64_t mask)
{
	uint32_t size = 576;
	for (int i = 2; i < 63; i++) {
		if (!(mask & (1ULL << i)))
			continue;
		struct cpuid_regs c = cpuid(0xd, (uint32_t)i);
		if (c.ebx + c.eax > size)
			size = c.ebx + c.eax;
	}
	return size;
}

bool read_xsave(uint64_t *xstate_bv, uint64_t *xcomp_bv, uint64_t *mask_out)
{
	uint64_t mask = xsave_mask();
	*mask_out = mask;
	if (!mask || xsave_size(mask) > sizeof(xarea))
		return false;
	memset(xarea, 0, 576);
	fpu_xsave(xarea, mask);
	*xstate_bv = *(uint64_t *)(xarea + 512);
	*xcomp_bv = *(uint64_t *)(xarea + 520);
	return true;
}

bool check_fpu(void)
{
	read_fx();
	if (fx.fcw != P.fcw || fx.mxcsr != P.mxcsr)
		return false;
	if ((fx.fsw & 0x3800) != 0x3000) /* TOP = 6: two values pushed */
		return false;
	/* ST0 = pi (chopped), ST1 = 1.0 */
	if (fx.st[0].exp != 0x4000 || (fx.st[0].mant >> 4) != (0xC90FDAA22168C234ULL >> 4))
		return false;
	if (fx.st[1].exp != 0x3FFF || fx.st[1].mant != 0x8000000000000000ULL)
		return false;
	return true;
}

bool check_xmm(void)
{
	read_fx();
	for (int i = 0; i < 16; i++)
		if (fx.xmm[i][0] != P.xmm[i][0] || fx.xmm[i][1] != P.xmm[i][1])
			return false;
	return true;
}

/* check_msrs: "ok", or "FAIL:" and the mismatching keys. */
void check_msrs(char *buf, size_t n, struct msr_val *vals)
{
	size_t pos = (size_t)snprintf(buf, n, "ok");
	bool bad = false;
	for (int i = 0; i < probe_nmsrs; i++) {
		if (!probe_msrs[i].chosen || P.msr_set_rc[i] != 0)
			continue;
		if (vals[i].rc == 0 && vals[i].val == P.msr_set[i])
			continue;
		if (!bad)
			pos = (size_t)snprintf(buf, n, "FAIL:");
		pos += (size_t)snprintf(buf + pos, pos < n ? n - pos : 0, "%s%s", bad ? "," : "", probe_msrs[i].key);
		bad = true;
	}
}

void read_msrs(struct msr_val *vals)
{
	for (int i = 0; i < probe_nmsrs; i++)
		vals[i].msr = probe_msrs[i].msr;
	sys_call(SYS_PROBE_MSRLIST, (uint64_t)vals, (uint64_t)probe_nmsrs, 0);
}

void read_timer(struct timer_regs *t)
{
	t->lvt = lapic_read_u(LAPIC_LVT_TIMER);
	t->init = lapic_read_u(LAPIC_TIMER_INIT);
	t->cur = lapic_read_u(LAPIC_TIMER_CUR);
	t->div = lapic_read_u(LAPIC_TIMER_DIV);
}

bool check_timer(const struct timer_regs *t)
{
	return (t->lvt & 0x700FF) == (P.timer_lvt & 0x700FF) && t->init == P.timer_init &&
	       (t->div & 0xB) == P.timer_div;
}

/* check_hv_timers: the Hyper-V synthetic timers still fire: each running
 * timer's count goes past what the previous check saw (or 0) within 50
 * LAPIC ticks, and no message but STIMER0's expiry came. Called before
 * each report, so the report after a restore proves the timers were
 * carried over. */
const char *check_hv_timers(void)
{
	static uint64_t seen_msg, seen_direct;
	if (P.hv_timers < 0)
		return "FAIL (a SynIC or timer MSR write raised #GP)";
	for (uint64_t t0 = ticks; ticks - t0 < 50;) {
		if (hv_msg_ticks > seen_msg && (P.hv_timers < 2 || hv_direct_ticks > seen_direct))
			break;
		__asm__ volatile("pause");
	}
	const char *r = "ok";
	if (hv_msg_ticks <= seen_msg)
		r = "FAIL (STIMER0 sent no expiry message)";
	else if (P.hv_timers == 2 && hv_direct_ticks <= seen_direct)
		r = "FAIL (STIMER1 raised no direct interrupt)";
	else if (hv_bad_msgs)
		r = "FAIL (a SynIC message that was not STIMER0's expiry)";
	seen_msg = hv_msg_ticks;
	seen_direct = hv_direct_ticks;
	return r;
}

void fmt_st(char *buf, size_t n, const struct fx_st *st)
{
	snprintf(buf, n, "%04x:%016lx", st->exp, st->mant);
}
