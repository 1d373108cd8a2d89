/*
 * igb: a bare-metal guest that counts MSI interrupts exactly while it
 * masks and unmasks the vector through the MSI capability's per-vector
 * mask bit. The device is QEMU's igb (Intel 82576, PCI 8086:10c9), whose
 * MSI capability has one vector, 64-bit addresses and per-vector masking
 * (QEMU's hw/net/igb.c: msi_init(dev, 0x50, 1, true, true, ...)).
 *
 * How the device raises: in MSI mode (GPIE.Multiple_MSIX clear, MSI-X
 * off) igb sends one message each time the interrupt cause register ICR
 * ANDed with the mask IMS goes from zero to non-zero (QEMU's
 * igb_raise_interrupts: a cause already set sends nothing, and nothing
 * throttles MSI mode, though ITR and EITR0 are zeroed all the same).
 * The guest enables one cause (IMS = TXDW, bit 0), which the idle device
 * never sets by itself, and raises it by writing ICS. The interrupt
 * handler reads ICR, which clears it in MSI mode, before the next raise;
 * so each raise is one message, and each interrupt must find the cause
 * in ICR.
 *
 * The guest waits for each interrupt before the next raise (two pending
 * in the LAPIC on one vector would merge). Of every k raises:
 *   - one is made with the vector masked by its mask bit: the guest polls
 *     the pending bit until it reads 1, checks nothing arrived, unmasks,
 *     and expects exactly one interrupt and the pending bit clear. Every
 *     third such window clears ICR and raises a second time, then waits
 *     20 ms: two messages under one mask are one pending bit, and one
 *     interrupt arrives.
 *   - one is made and the vector masked and unmasked at once, racing the
 *     message in flight: exactly one interrupt arrives.
 *   - the rest are made with the vector unmasked.
 * At the end the guest waits 50 ms for anything extra. One line reports
 * it:
 *
 *   igb: n=N sent=S recv=R masked=M pending=P coalesced=C races=X
 *        leaks=L stuck=B lost=O nocause=Z us_per_irq=U us_per_plain=V
 *
 * sent counts the interrupts the guest must receive (a coalesced pair is
 * one), recv what arrived; masked the masked windows, pending those whose
 * pending bit read 1; leaks interrupts that came under the mask, stuck a
 * pending bit set before a raise or still set after the unmask, lost
 * interrupts that never came within 2 s, nocause interrupts that found
 * no cause in ICR. us_per_irq is the whole loop's time per raise, masked
 * windows (and their 20 ms waits) included; us_per_plain the mean time
 * from a raise with the vector unmasked to its interrupt (TSC, calibrated
 * against the PM timer over the loop).
 *
 * Cmdline: n=N raises (default 2000), k=K (default 8, at least 4).
 *
 * rate=1 replaces that loop with a sustained-rate measure in two phases
 * of n raises each, every raise made as soon as the last interrupt's
 * handler ran (the handler's ICR read re-arms the cause), timed by the PM
 * timer: plain, nothing else; masked, every raise followed at once by a
 * mask and an unmask of the vector, racing its message in flight (one
 * interrupt each all the same). The masked phase has no windows that
 * poll the pending bit: QEMU's own vfio-pci, the baseline, holds a
 * message under the mask but never shows its pending bit (it reads 0),
 * so such a window would wait for nothing there. Each phase must receive
 * exactly what it sent. Two lines report it:
 *
 *   igb: rate plain n=N sent=S recv=R races=0 stuck=0 lost=O nocause=Z us=T
 *   igb: rate masked n=N sent=S recv=R races=X stuck=B lost=O nocause=Z us=T
 *
 * where T is the phase's time in microseconds (interrupts per second are
 * S / T * 10^6).
 * Exit through the debug-exit port: OK (0x10, status 33) or FAIL (0x11,
 * status 35).
 */
#include "lib.h"

#define OK 0x10
#define FAIL 0x11

#define VENDOR 0x8086
#define DEVICE 0x10c9 /* 82576 */

/* 82576 registers (BAR 0; the interrupt registers at their 8254x
 * offsets, which QEMU's igb decodes) and bits. */
#define R_ITR 0x00c4
#define R_ICR 0x00c0
#define R_ICS 0x00c8
#define R_IMS 0x00d0
#define R_IMC 0x00d8
#define R_GPIE 0x1514
#define R_EITR0 0x1680
#define CAUSE 1u /* ICR.TXDW */

#define CAP_MSI 0x05
#define MSI_ENABLE 1
#define MSI_64 0x80
#define MSI_PVM 0x100

#define VEC 0x72

static int slot, msi, mask_reg, pend_reg;
static uint64_t bar0;

static uint32_t rd(uint32_t r) { return mmio_read32(bar0 + r); }
static void wr(uint32_t r, uint32_t v) { mmio_write32(bar0 + r, v); }

static volatile uint32_t recv, nocause;
static void isr(struct regs *r)
{
	recv++;
	if (!(rd(R_ICR) & CAUSE)) /* the read clears ICR */
		nocause++;
	lapic_eoi();
}

static bool wait_recv(uint32_t want, uint32_t ms)
{
	uint64_t end = pm_ms_from_now(ms);
	while (recv < want && pm_now() < end)
		pause();
	return recv >= want;
}

static void raise(void) { wr(R_ICS, CAUSE); }
static void mask(bool on) { pci_write32(slot, mask_reg, on ? 1 : 0); }
static bool pending(void) { return pci_read32(slot, pend_reg) & 1; }

static bool wait_pending(uint32_t ms)
{
	uint64_t end = pm_ms_from_now(ms);
	while (!pending()) {
		if (pm_now() > end)
			return false;
		pause();
	}
	return true;
}

/* rate_phase makes n raises, each as soon as the last interrupt arrived,
 * racing a mask and unmask of the vector against every one when masking;
 * it prints its line and reports whether every interrupt arrived exactly
 * once. */
static bool rate_phase(uint32_t n, bool masking)
{
	uint32_t sent = 0, races = 0, stuck = 0, lost = 0;
	uint32_t base = recv, nocause0 = nocause;
	uint64_t t0 = pm_now();
	for (uint32_t i = 0; i < n; i++) {
		uint32_t before = recv;
		raise();
		sent++;
		if (masking) {
			mask(true);
			mask(false);
			races++;
		}
		if (!wait_recv(before + 1, 2000)) {
			printf("igb: rate raise %u: no interrupt\n", i);
			lost++;
			(void)rd(R_ICR);
			recv = before + 1; /* go on counting the rest */
		}
	}
	uint64_t t1 = pm_now();
	pm_wait_us(50000); /* nothing more may arrive */
	if (masking && pending()) {
		printf("igb: rate: the pending bit is set, nothing is pending\n");
		stuck++;
	}
	uint32_t got = recv - base - lost;
	uint64_t us = (t1 - t0) * 1000000 / PM_HZ;
	printf("igb: rate %s n=%u sent=%u recv=%u races=%u stuck=%u lost=%u nocause=%u us=%llu\n", masking ? "masked" : "plain",
	       n, sent, got, races, stuck, lost, nocause - nocause0, (unsigned long long)us);
	return sent == n && got == sent && !stuck && !lost && nocause == nocause0;
}

int main(void)
{
	acpi_init();
	if (!acpi.pm_tmr_port) {
		printf("igb: no ACPI PM timer\n");
		return FAIL;
	}
	lapic_init(false);
	pic_disable();
	pm_start();

	slot = msi = -1;
	slot = pci_find(VENDOR, DEVICE);
	if (slot < 0) {
		printf("igb: no %04x:%04x device on bus 0\n", VENDOR, DEVICE);
		return FAIL;
	}
	int p = pci_read32(slot, 0x34) & 0xfc;
	for (int i = 0; p >= 0x40 && i < 48; i++) {
		uint32_t h = pci_read32(slot, p);
		if ((h & 0xff) == CAP_MSI)
			msi = p;
		p = (h >> 8) & 0xfc;
	}
	uint32_t lo = pci_read32(slot, 0x10);
	bar0 = lo & ~0xfull;
	if ((lo & 6) == 4)
		bar0 |= (uint64_t)pci_read32(slot, 0x14) << 32;
	uint16_t ctl = msi < 0 ? 0 : (uint16_t)(pci_read32(slot, msi) >> 16);
	printf("igb: found slot=%d bar0=%#llx msi=%#x control=%#x maskable=%d\n", slot, (unsigned long long)bar0,
	       msi, ctl, (ctl & MSI_PVM) != 0);
	if (msi < 0 || !(ctl & MSI_PVM)) {
		printf("igb: no MSI capability with per-vector masking\n");
		return FAIL;
	}
	if (bar0 == 0 || bar0 >> 32) {
		printf("igb: BAR 0 at %#llx, not mapped by this guest\n", (unsigned long long)bar0);
		return FAIL;
	}
	int data_reg = msi + ((ctl & MSI_64) ? 0x0c : 0x08);
	mask_reg = data_reg + 4;
	pend_reg = data_reg + 8;

	/* Memory decode and bus mastering (the messages are writes). */
	pci_write16(slot, 0x04, (pci_read32(slot, 0x04) & 0xffff) | 0x6);
	/* Quiet device: every cause masked and cleared, MSI mode, no
	 * throttling. */
	wr(R_IMC, 0xffffffffu);
	wr(R_GPIE, 0);
	wr(R_ITR, 0);
	wr(R_EITR0, 0);
	(void)rd(R_ICR);

	/* MSI as Linux enables it: the vector masked first, then address,
	 * data and the enable bit, then the unmask. */
	set_handler(VEC, isr);
	mask(true);
	pci_write32(slot, msi + 4, 0xFEE00000u | lapic_id() << 12);
	if (ctl & MSI_64)
		pci_write32(slot, msi + 8, 0);
	pci_write16(slot, data_reg, VEC);
	pci_write16(slot, msi + 2, (uint16_t)((ctl & ~0x70u) | MSI_ENABLE));
	/* TCG QEMU keeps an ExtINT request SeaBIOS left on LINT0 after
	 * lapic_init masked it, until the LAPIC is next written; this write
	 * drops it (it changes nothing elsewhere). */
	lapic_write(LAPIC_TPR, 0);
	sti();
	if (pending()) {
		printf("igb: the pending bit is set before anything was raised\n");
		return FAIL;
	}
	mask(false);
	wr(R_IMS, CAUSE);

	uint32_t n = (uint32_t)cmdline_u64("n", 2000), k = (uint32_t)cmdline_u64("k", 8);
	if (cmdline_u64("rate", 0)) {
		bool ok = rate_phase(n, false);
		ok = rate_phase(n, true) && ok;
		printf("igb: %s\n", ok ? "PASS" : "FAIL");
		return ok ? OK : FAIL;
	}
	if (k < 4)
		k = 4;
	uint32_t sent = 0, masked = 0, pendset = 0, coalesced = 0, races = 0, leaks = 0, stuck = 0, lost = 0, windows = 0;
	uint64_t plain_tsc = 0, plain = 0;
	uint64_t t0 = pm_now(), c0 = rdtsc();
	for (uint32_t i = 0; i < n; i++) {
		uint32_t before = recv;
		uint32_t step = i % k;
		if (pending()) {
			printf("igb: raise %u: the pending bit is set, nothing was pending\n", i);
			stuck++;
		}
		if (step == k - 1) {
			bool twice = windows % 3 == 2;
			windows++;
			mask(true);
			raise();
			sent++;
			masked++;
			if (wait_pending(2000))
				pendset++;
			else
				printf("igb: raise %u: the masked vector's pending bit never read 1\n", i);
			if (twice) {
				(void)rd(R_ICR); /* clear the cause, so the next raise sends */
				raise();
				pm_wait_us(20000); /* for its message to reach the VMM */
				coalesced++;
				if (!pending()) {
					printf("igb: raise %u: the pending bit cleared under the mask\n", i);
					stuck++;
				}
			}
			if (recv != before) {
				printf("igb: raise %u: %u arrived under the mask\n", i, recv - before);
				leaks++;
			}
			mask(false);
			if (pending()) {
				printf("igb: raise %u: the pending bit is still set after the unmask\n", i);
				stuck++;
			}
		} else if (step == k / 2) {
			raise();
			mask(true);
			mask(false);
			sent++;
			races++;
		} else {
			uint64_t c = rdtsc();
			raise();
			sent++;
			if (wait_recv(before + 1, 2000)) {
				plain_tsc += rdtsc() - c;
				plain++;
			}
		}
		if (!wait_recv(before + 1, 2000)) {
			printf("igb: raise %u: no interrupt\n", i);
			lost++;
			(void)rd(R_ICR);
			recv = before + 1; /* go on counting the rest */
		}
	}
	uint64_t t1 = pm_now(), c1 = rdtsc();
	pm_wait_us(50000); /* nothing more may arrive */
	cli();
	uint32_t got = recv - lost;
	uint64_t us = (t1 - t0) * 1000000 / PM_HZ;
	/* TSC ticks per us over the loop; the plain raises' mean in us. */
	uint64_t plain_us = plain && us ? plain_tsc / plain / ((c1 - c0) / us ? (c1 - c0) / us : 1) : 0;
	printf("igb: n=%u sent=%u recv=%u masked=%u pending=%u coalesced=%u races=%u leaks=%u stuck=%u lost=%u nocause=%u "
	       "us_per_irq=%llu us_per_plain=%llu\n",
	       n, sent, got, masked, pendset, coalesced, races, leaks, stuck, lost, nocause,
	       (unsigned long long)(n ? us / n : 0), (unsigned long long)plain_us);
	bool fail = sent != n || got != sent || pendset != masked || leaks || stuck || lost || nocause;
	printf("igb: %s\n", fail ? "FAIL" : "PASS");
	return fail ? FAIL : OK;
}
