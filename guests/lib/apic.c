/* apic.c: the local APIC (xAPIC MMIO or x2APIC MSRs), the IOAPIC, the
 * 8259 mask, the PM timer and LAPIC timer calibration. */
#include "lib.h"

#define MSR_APIC_BASE 0x1B

static bool x2apic;
static uint64_t lapic_mmio = 0xFEE00000;

bool lapic_x2apic(void) { return x2apic; }

uint32_t lapic_read(uint32_t reg)
{
	if (x2apic)
		return (uint32_t)rdmsr(X2APIC_MSR(reg));
	return mmio_read32(lapic_mmio + reg);
}

void lapic_write(uint32_t reg, uint32_t v)
{
	if (x2apic)
		wrmsr(X2APIC_MSR(reg), v);
	else
		mmio_write32(lapic_mmio + reg, v);
}

void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

uint32_t lapic_id(void)
{
	uint32_t id = lapic_read(LAPIC_ID);
	return x2apic ? id : id >> 24;
}

void lapic_init(bool want_x2apic)
{
	static bool decided;
	if (!decided) {
		x2apic = want_x2apic && (cpuid(1, 0).ecx & (1u << 21));
		decided = true;
	}
	uint64_t base = rdmsr(MSR_APIC_BASE);
	lapic_mmio = acpi.lapic_addr ? acpi.lapic_addr : (base & ~0xFFFULL);
	base |= 1ULL << 11;
	if (x2apic)
		base |= 1ULL << 10;
	wrmsr(MSR_APIC_BASE, base);
	lapic_write(LAPIC_TPR, 0);
	lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
	lapic_write(LAPIC_LVT_LINT0, 0x10000);
	lapic_write(LAPIC_LVT_ERROR, 0x10000);
	percpu[cpu_index()].apic_id = lapic_id();
}

void lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
	if (x2apic) {
		wrmsr(X2APIC_MSR(LAPIC_ICR_LO), ((uint64_t)apic_id << 32) | icr_lo);
		return;
	}
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & (1u << 12)); i++)
		pause();
}

void pic_disable(void)
{
	outb(0x21, 0xFF);
	outb(0xA1, 0xFF);
}

uint32_t ioapic_read(uint32_t reg)
{
	uint64_t b = acpi.ioapic_addr;
	mmio_write32(b, reg);
	return mmio_read32(b + 0x10);
}

static void ioapic_write(uint32_t reg, uint32_t v)
{
	uint64_t b = acpi.ioapic_addr;
	mmio_write32(b, reg);
	mmio_write32(b + 0x10, v);
}

void ioapic_route(uint32_t gsi, uint8_t vector, uint32_t apic_id, uint16_t flags)
{
	if (!acpi.ioapic_addr || gsi < acpi.ioapic_gsi_base)
		return;
	uint32_t pin = gsi - acpi.ioapic_gsi_base;
	uint32_t lo = vector;
	if ((flags & 3) == 3)
		lo |= 1u << 13; /* active low */
	if (((flags >> 2) & 3) == 3)
		lo |= 1u << 15; /* level */
	ioapic_write(0x10 + 2 * pin + 1, apic_id << 24);
	ioapic_write(0x10 + 2 * pin, lo);
}

void ioapic_mask(uint32_t gsi)
{
	if (!acpi.ioapic_addr || gsi < acpi.ioapic_gsi_base)
		return;
	uint32_t pin = gsi - acpi.ioapic_gsi_base;
	ioapic_write(0x10 + 2 * pin, 1u << 16);
}

/* ---- time ---- */

uint32_t pmtimer_read(void)
{
	if (!acpi.pm_tmr_port)
		return 0;
	uint32_t v = inl(acpi.pm_tmr_port);
	return acpi.pm_tmr_32bit ? v : (v & 0xFFFFFF);
}

static uint32_t pm_mask(void) { return acpi.pm_tmr_32bit ? 0xFFFFFFFFu : 0xFFFFFFu; }

/* The PM timer extended to 64 bits: it wraps every 4.7 s (24 bits), so a
 * guest that reads it at least that often sees a monotonic clock. */
static uint32_t pm_last;
static uint64_t pm_total;

void pm_start(void)
{
	pm_last = pmtimer_read();
	pm_total = 0;
}

uint64_t pm_now(void)
{
	uint32_t v = pmtimer_read();
	pm_total += (v - pm_last) & pm_mask();
	pm_last = v;
	return pm_total;
}

uint64_t pm_ms_from_now(uint32_t ms) { return pm_now() + PM_HZ * ms / 1000; }

void pm_wait_us(uint64_t us)
{
	uint64_t end = pm_now() + us * PM_HZ / 1000000;
	while (pm_now() < end)
		pause();
}

void udelay(uint32_t us)
{
	if (acpi.pm_tmr_port) {
		uint32_t ticks = (uint32_t)((uint64_t)us * PM_HZ / 1000000) + 1, start = pmtimer_read();
		while (((pmtimer_read() - start) & pm_mask()) < ticks)
			pause();
		return;
	}
	for (uint32_t i = 0; i < us / 4 + 1; i++)
		(void)inb(0x80);
}

uint64_t lapic_timer_calibrate(uint32_t ms, uint64_t *tsc_hz)
{
	if (tsc_hz)
		*tsc_hz = 0;
	uint32_t old_lvt = lapic_read(LAPIC_LVT_TIMER), old_div = lapic_read(LAPIC_TIMER_DIV);
	lapic_write(LAPIC_LVT_TIMER, 0x10000 | 0x20); /* masked, one-shot */
	lapic_write(LAPIC_TIMER_DIV, 0xB);            /* divide by 1 */
	uint64_t elapsed_lapic = 0, tsc0, tsc1, num = 0, den = 0;
	if (acpi.pm_tmr_port) {
		uint32_t ticks = (uint32_t)(PM_HZ * ms / 1000), t0 = pmtimer_read(), t1;
		while ((t1 = pmtimer_read()) == t0) /* align to a PM timer edge */
			pause();
		t0 = t1;
		tsc0 = rdtsc();
		lapic_write(LAPIC_TIMER_INIT, 0xFFFFFFFF);
		while ((((t1 = pmtimer_read()) - t0) & pm_mask()) < ticks)
			pause();
		uint32_t cur = lapic_read(LAPIC_TIMER_CUR);
		tsc1 = rdtsc();
		elapsed_lapic = 0xFFFFFFFFu - cur;
		num = PM_HZ;
		den = (t1 - t0) & pm_mask();
	} else {
		/* PIT channel 2, mode 0, gate through port 0x61. */
		uint8_t p61 = inb(0x61);
		if (p61 == 0xFF)
			goto out;
		if (ms > 50)
			ms = 50;
		uint32_t count = (uint32_t)(1193182ULL * ms / 1000);
		outb(0x61, (p61 & ~0x02) | 0x01);
		outb(0x43, 0xB0);
		outb(0x42, count & 0xFF);
		outb(0x42, count >> 8);
		(void)inb(0x61);
		tsc0 = rdtsc();
		lapic_write(LAPIC_TIMER_INIT, 0xFFFFFFFF);
		int guard = 0;
		while (!(inb(0x61) & 0x20) && ++guard < 10000000)
			pause();
		uint32_t cur = lapic_read(LAPIC_TIMER_CUR);
		tsc1 = rdtsc();
		outb(0x61, p61);
		if (guard >= 10000000)
			goto out;
		elapsed_lapic = 0xFFFFFFFFu - cur;
		num = 1193182ULL;
		den = count;
	}
	if (den) {
		if (tsc_hz)
			*tsc_hz = (tsc1 - tsc0) * num / den;
		elapsed_lapic = elapsed_lapic * num / den;
	}
out:
	lapic_write(LAPIC_TIMER_INIT, 0);
	lapic_write(LAPIC_TIMER_DIV, old_div);
	lapic_write(LAPIC_LVT_TIMER, old_lvt);
	return den ? elapsed_lapic : 0;
}
