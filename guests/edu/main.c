/*
 * edu: a bare-metal guest that drives QEMU's "edu" teaching device
 * (PCI 1234:11e8) when govmm passes it through with VFIO
 * (--device vfio=...). It finds the device by scanning bus 0 through the
 * configuration ports, enables memory decode and bus mastering, and
 * checks, each on one line of the console:
 *
 *   edu: found slot=S bar0=ADDR id=ID     identification register (0x00)
 *   edu: liveness ok=N                     write X to 0x04, read back ~X
 *   edu: factorial ok=N                    0x08 with the computing bit of 0x20
 *   edu: intx n=N gsi=G irqs=I acks=A      INTx (before MSI is enabled):
 *                                          the pin's IOAPIC GSI from the
 *                                          _PRT rule, level, each raise
 *                                          taken and acknowledged once
 *   edu: msi n=N sent=S irqs=I acks=A      MSIs raised through 0x60, each
 *                                          taken, its status read at 0x24
 *                                          and acknowledged through 0x64
 *   edu: factirq irqs=I                    a factorial that ends in an MSI
 *   edu: dma to=OK from=OK bytes=B         DMA guest RAM -> device buffer
 *                                          -> other guest RAM, compared
 *
 * Cmdline: n=N MSIs (default 100); intx=0 skips INTx (whose GSI follows
 * govmm's _PRT, not another machine's); hold=1 prints "edu: holding" after
 * the checks and waits for interrupts forever (for snapshot refusals).
 * Exit through the debug-exit port:
 * EDU_OK (0x10, status 33) or EDU_FAIL (0x11, status 35).
 */
#include "lib.h"

#define EDU_OK 0x10
#define EDU_FAIL 0x11

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8

#define R_ID 0x00
#define R_LIVE 0x04
#define R_FACT 0x08
#define R_STATUS 0x20
#define R_ISTATUS 0x24
#define R_IRAISE 0x60
#define R_IACK 0x64
#define R_DMA_SRC 0x80
#define R_DMA_DST 0x88
#define R_DMA_CNT 0x90
#define R_DMA_CMD 0x98
#define ST_COMPUTING 0x01
#define ST_IRQFACT 0x80
#define DMA_START 1
#define DMA_FROM_DEV 2
#define EDU_BUF 0x40000

#define VEC_EDU 0x60
#define VEC_INTX 0x61

static uint64_t bar;
static inline uint32_t rd(uint32_t r) { return mmio_read32(bar + r); }
static inline void wr(uint32_t r, uint32_t v) { mmio_write32(bar + r, v); }

static bool wait_count(volatile uint32_t *c, uint32_t want, uint32_t ms)
{
	uint64_t end = pm_now() + PM_HZ * ms / 1000;
	sti();
	while (*c < want && pm_now() < end)
		pause();
	return *c >= want;
}

static void wait_us(uint64_t us)
{
	sti();
	pm_wait_us(us);
}

/* ---- MSI handler: read the device's interrupt status, acknowledge it. ---- */
static volatile uint32_t irqs, acks, last_status;
static void edu_isr(struct regs *r)
{
	uint32_t st = rd(R_ISTATUS);
	last_status = st;
	if (st) {
		wr(R_IACK, st);
		acks++;
	}
	irqs++;
	lapic_eoi();
}

static int find_cap(int slot, uint8_t want)
{
	if (!(pci_read32(slot, 0x04) >> 16 & 0x10))
		return -1;
	int p = pci_read32(slot, 0x34) & 0xfc;
	for (int n = 0; p >= 0x40 && n < 48; n++) {
		uint32_t h = pci_read32(slot, p);
		if ((h & 0xff) == want)
			return p;
		p = (h >> 8) & 0xfc;
	}
	return -1;
}

static bool wait_idle(uint32_t reg, uint32_t bit, uint32_t ms)
{
	uint64_t end = pm_now() + PM_HZ * ms / 1000;
	while (rd(reg) & bit) {
		if (pm_now() > end)
			return false;
		pause();
	}
	return true;
}

static uint8_t dma_src[4096] __attribute__((aligned(4096)));
static uint8_t dma_dst[4096] __attribute__((aligned(4096)));

int main(void)
{
	int fail = 0;
	acpi_init();
	if (!acpi.pm_tmr_port) {
		printf("edu: no ACPI PM timer\n");
		return EDU_FAIL;
	}
	lapic_init(false);
	pic_disable();
	pm_start();

	int slot = pci_find(EDU_VENDOR, EDU_DEVICE);
	if (slot < 0) {
		printf("edu: no 1234:11e8 device on bus 0\n");
		return EDU_FAIL;
	}
	uint32_t b0 = pci_read32(slot, 0x10);
	bar = b0 & ~0xfu;
	if ((b0 & 1) || bar == 0) {
		printf("edu: BAR0 %#x is not a placed memory BAR\n", b0);
		return EDU_FAIL;
	}
	/* Memory decode and bus mastering (DMA and MSI need it). */
	pci_write16(slot, 0x04, (pci_read32(slot, 0x04) & 0xffff) | 0x6);
	uint32_t id = rd(R_ID);
	printf("edu: found slot=%d bar0=%#llx id=%#x\n", slot, (unsigned long long)bar, id);
	if ((id & 0xff) != 0xed) {
		printf("edu: identification register %#x, want 0x..ed\n", id);
		return EDU_FAIL;
	}

	/* Liveness: the device answers the complement of what was written. */
	static const uint32_t pat[] = {0, 0xffffffffu, 0x12345678u, 0xa5a55a5au, 0xdeadbeefu};
	int live = 0;
	for (unsigned i = 0; i < ARRAY_SIZE(pat); i++) {
		wr(R_LIVE, pat[i]);
		uint32_t got = rd(R_LIVE);
		if (got == ~pat[i])
			live++;
		else
			printf("edu: liveness wrote %#x read %#x, want %#x\n", pat[i], got, ~pat[i]);
	}
	printf("edu: liveness ok=%d of=%d\n", live, (int)ARRAY_SIZE(pat));
	if (live != (int)ARRAY_SIZE(pat))
		fail = 1;

	/* Factorial, polled through the status register's computing bit. */
	static const struct { uint32_t n, f; } facts[] = {{0, 1}, {1, 1}, {5, 120}, {10, 3628800}, {12, 479001600}};
	int fok = 0;
	wr(R_STATUS, 0);
	for (unsigned i = 0; i < ARRAY_SIZE(facts); i++) {
		wr(R_FACT, facts[i].n);
		if (!wait_idle(R_STATUS, ST_COMPUTING, 2000)) {
			printf("edu: factorial of %u never finished\n", facts[i].n);
			continue;
		}
		uint32_t got = rd(R_FACT);
		if (got == facts[i].f)
			fok++;
		else
			printf("edu: factorial of %u = %u, want %u\n", facts[i].n, got, facts[i].f);
	}
	printf("edu: factorial ok=%d of=%d\n", fok, (int)ARRAY_SIZE(facts));
	if (fok != (int)ARRAY_SIZE(facts))
		fail = 1;

	/* INTx through the IOAPIC: INTA-INTD of slot s is GSI 16 + (s + pin - 1)
	 * mod 8 (govmm's _PRT), level-triggered, active low. */
	uint32_t pin = pci_read32(slot, 0x3c) >> 8 & 0xff;
	if (!cmdline_u64("intx", 1)) {
		printf("edu: intx skipped\n");
	} else if (pin >= 1 && pin <= 4) {
		uint32_t gsi = 16 + (slot + pin - 1) % 8, nx = (uint32_t)cmdline_u64("intx", 20), ok = 0;
		set_handler(VEC_INTX, edu_isr);
		ioapic_route(gsi, VEC_INTX, lapic_id(), 3 | 3 << 2);
		irqs = acks = 0;
		for (uint32_t i = 0; i < nx; i++) {
			wr(R_IRAISE, 1u << (i % 32));
			if (!wait_count(&irqs, i + 1, 2000)) {
				printf("edu: INTx %u of %u never arrived\n", i, nx);
				break;
			}
			cli();
			ok++;
		}
		wait_us(50000); /* nothing more may arrive: the line was resampled low */
		cli();
		ioapic_mask(gsi);
		printf("edu: intx n=%u gsi=%u irqs=%u acks=%u status=%#x\n", nx, gsi, irqs, acks, rd(R_ISTATUS));
		if (irqs != nx || acks != nx || ok != nx)
			fail = 1;
		irqs = acks = 0;
	} else {
		printf("edu: intx none pin=%u\n", pin);
		fail = 1;
	}

	/* MSI: fixed delivery to this CPU, edge, vector VEC_EDU. */
	int msi = find_cap(slot, 0x05);
	if (msi < 0) {
		printf("edu: no MSI capability\n");
		return EDU_FAIL;
	}
	uint32_t ctl = pci_read32(slot, msi);
	bool is64 = ctl >> 16 & 0x80;
	pci_write32(slot, msi + 4, 0xFEE00000u | lapic_id() << 12);
	if (is64) {
		pci_write32(slot, msi + 8, 0);
		pci_write16(slot, msi + 12, VEC_EDU);
	} else {
		pci_write16(slot, msi + 8, VEC_EDU);
	}
	set_handler(VEC_EDU, edu_isr);
	pci_write16(slot, msi + 2, (uint16_t)((ctl >> 16) & ~0x70u) | 1); /* one vector, enabled */

	uint32_t n = (uint32_t)cmdline_u64("n", 100), sent = 0;
	uint64_t t0 = pm_now();
	for (uint32_t i = 0; i < n; i++) {
		wr(R_IRAISE, 1u << (i % 32));
		sent++;
		if (!wait_count(&irqs, sent, 2000)) {
			printf("edu: MSI %u of %u never arrived\n", i, n);
			break;
		}
		cli();
	}
	uint64_t t1 = pm_now();
	wait_us(50000); /* nothing more may arrive */
	cli();
	uint64_t us = (t1 - t0) * 1000000 / PM_HZ;
	printf("edu: msi n=%u sent=%u irqs=%u acks=%u status=%#x us_per_msi=%llu\n", n, sent, irqs, acks, rd(R_ISTATUS),
	       (unsigned long long)(sent ? us / sent : 0));
	if (irqs != n || acks != n || sent != n)
		fail = 1;

	/* A factorial that raises its MSI (status 0x1) when it finishes. */
	uint32_t before = irqs;
	wr(R_STATUS, ST_IRQFACT);
	wr(R_FACT, 7);
	bool got = wait_count(&irqs, before + 1, 2000);
	cli();
	uint32_t fact = rd(R_FACT);
	printf("edu: factirq irqs=%u status=%#x fact=%u\n", irqs - before, last_status, fact);
	if (!got || fact != 5040 || last_status != 1)
		fail = 1;
	wr(R_STATUS, 0);

	/* DMA both ways through the IOMMU: RAM -> device buffer -> other RAM. */
	for (int i = 0; i < 4096; i++) {
		dma_src[i] = (uint8_t)(i * 7 + 3);
		dma_dst[i] = 0;
	}
	wr(R_DMA_SRC, (uint32_t)(uintptr_t)dma_src);
	wr(R_DMA_DST, EDU_BUF);
	wr(R_DMA_CNT, 4096);
	wr(R_DMA_CMD, DMA_START);
	bool to = wait_idle(R_DMA_CMD, DMA_START, 5000);
	wr(R_DMA_SRC, EDU_BUF);
	wr(R_DMA_DST, (uint32_t)(uintptr_t)dma_dst);
	wr(R_DMA_CNT, 4096);
	wr(R_DMA_CMD, DMA_START | DMA_FROM_DEV);
	bool from = wait_idle(R_DMA_CMD, DMA_START, 5000);
	int same = memcmp(dma_src, dma_dst, 4096) == 0;
	printf("edu: dma to=%d from=%d same=%d bytes=4096 src=%#llx dst=%#llx\n", to, from, same,
	       (unsigned long long)(uintptr_t)dma_src, (unsigned long long)(uintptr_t)dma_dst);
	if (!to || !from || !same)
		fail = 1;

	printf("edu: %s\n", fail ? "FAIL" : "PASS");
	if (cmdline_u64("hold", 0)) {
		printf("edu: holding\n");
		for (;;) {
			sti();
			hlt();
		}
	}
	return fail ? EDU_FAIL : EDU_OK;
}
