/*
 * irq is the guest behind govmm's interrupt proofs (e2e/irq_test.go). The
 * kernel command line picks a scenario with irqtest=NAME:
 *
 *   pit     IOAPIC found through the MADT, ISA IRQ0 (GSI from the MADT
 *           override) routed to a vector, PIT channel 0 at hz=N (default
 *           100) counted for ms=M (default 1000) against the ACPI PM timer.
 *   level   irqtestdev holds a level line (GSI 16) until the handler
 *           acknowledges it: exactly one interrupt per assertion, Remote IRR
 *           set while in service and clear after the EOI; then EOI before
 *           acknowledging: exactly one redelivery per assertion.
 *   msi     irqtestdev fires n=N (default 50) MSIs through an irqfd, in the
 *           QEMU and in the Cloud Hypervisor VFIO ordering, with the vCPU
 *           running and with it halted; the guest counts.
 *   serial  serial input by interrupt: prints "serial: ready", then echoes
 *           the first line it receives.
 *   calib   LAPIC timer (and TSC) calibrated against the PM timer and the PIT.
 *   pic     PIC-only: the IOAPIC stays masked, the 8259s deliver IRQ0 as
 *           ExtINT through LINT0; counted like pit.
 *   resample a host goroutine plays a level-triggered device that has only
 *           a trigger and a resample eventfd (irqtestdev RS_*), n=N
 *           (default 30) assertions on IOAPIC pin 17 (served by govmm's
 *           IOAPIC) and on a level-triggered MSI route, with the vCPU
 *           running and halted; the handler acknowledges each and counts
 *           real and spurious ones.
 *   pctestdev QEMU's pc-testdev (devices/pctestdev, as kvm-unit-tests
 *           drives it): the scratch port, the scratch memory at
 *           0xff000000, a page flush, n=N (default 20) edges raised on GSI
 *           10 through port 0x200a, and a level line on GSI 19 held high
 *           across two EOIs (two redeliveries) and lowered in the third
 *           handler (no more).
 *   pcitestdev QEMU's pci-testdev (devices/pcitestdev) found on PCI bus 0
 *           through the 0xCF8/0xCFC ports and through the ECAM window the
 *           MCFG table names: the host bridge at 00:00.0, the device's
 *           BARs sized with all ones and moved by the guest, then
 *           kvm-unit-tests' six port-I/O and MMIO tests (16 writes each),
 *           and memory decode switched off in the command register. With
 *           wait=1 the guest moves the BARs, counts 5 writes in the MMIO
 *           wildcard test, prints "pcitestdev: placed" and polls the UART
 *           for a byte (a snapshot is taken and restored meanwhile), then
 *           checks that the moved BARs and the count survived.
 *   bench   n=N MSIs through an irqfd and injected from userspace
 *           (SignalMSI), and bells=B doorbell writes from CPL3 to a plain
 *           MMIO register and to an ioeventfd-backed one; prints ns each.
 *
 * Every scenario prints one machine-readable line the test parses and exits
 * through the debug-exit port: IRQ_OK (0x10, status 33) or IRQ_FAIL (0x11,
 * status 35).
 */
#include "lib.h"

#define IRQ_OK 0x10
#define IRQ_FAIL 0x11

#define PIT_HZ 1193182ULL

#define VEC_PIT 0x30
#define VEC_LEVEL 0x40
#define VEC_MSI 0x50
#define VEC_SERIAL 0x24
#define VEC_PIC_BASE 0x20

/* devices/irqtestdev */
#define TD_BASE 0xFEB01000ULL
#define TD_ID 0x00
#define TD_LEVEL 0x04
#define TD_ASSERTS 0x08
#define TD_MSI_ADDR 0x10
#define TD_MSI_ADDRH 0x14
#define TD_MSI_DATA 0x18
#define TD_ORDER 0x1C
#define TD_FIRE 0x20
#define TD_MSI_ACK 0x24
#define TD_SENT 0x28
#define TD_STATUS 0x2C
#define TD_ACKS 0x30
#define TD_DOORBELL 0x40
#define TD_DBCOUNT 0x44
#define TD_FASTBELL 0x80
#define TD_FASTCOUNT 0x84
#define TD_FASTMODE 0x88
#define TD_RS_MODE 0x90
#define TD_RS_FIRE 0x94
#define TD_RS_PENDING 0x98
#define TD_RS_STATUS 0x9C
#define TD_RS_ASSERTS 0xA0
#define TD_RS_TRIGGERS 0xA4
#define TD_RS_RESAMPLES 0xA8
#define TD_MAGIC 0x54515249u
#define TD_BUSY 1
#define TD_DONE 2
#define TD_ERROR 4

#define LEVEL_GSI 16
#define RS_GSI 17
#define VEC_RS_PIN 0x44
#define VEC_RS_MSI 0x48

static inline uint32_t td_read(uint32_t r) { return mmio_read32(TD_BASE + r); }
static inline void td_write(uint32_t r, uint32_t v) { mmio_write32(TD_BASE + r, v); }

/* wait_us spins with interrupts enabled (for "nothing more arrives" checks
 * where hlt could sleep forever). */
static void wait_us(uint64_t us)
{
	sti();
	pm_wait_us(us);
}

static bool need_acpi(bool ioapic)
{
	acpi_init();
	if (!acpi.found || !acpi.has_madt || !acpi.pm_tmr_port) {
		printf("irqtest: no ACPI MADT/PM timer (found=%d madt=%d pm=%#x)\n", acpi.found, acpi.has_madt,
		       acpi.pm_tmr_port);
		return false;
	}
	if (ioapic && !acpi.has_ioapic) {
		printf("irqtest: no IOAPIC in the MADT\n");
		return false;
	}
	return true;
}

/* ---- timer counting (pit and pic) ---- */
static volatile uint64_t ticks;

static void pit_isr(struct regs *r)
{
	(void)r;
	ticks++;
	lapic_eoi();
}

static void pic_isr(struct regs *r)
{
	(void)r;
	ticks++;
	outb(0x20, 0x20); /* non-specific EOI; ExtINT needs no LAPIC EOI */
}

static uint32_t pit_start(uint32_t hz)
{
	uint32_t reload = (uint32_t)((PIT_HZ + hz / 2) / hz);
	if (reload < 2)
		reload = 2;
	if (reload > 65535)
		reload = 65535;
	outb(0x43, 0x34); /* channel 0, lobyte/hibyte, mode 2 */
	outb(0x40, reload & 0xFF);
	outb(0x40, reload >> 8);
	return reload;
}

/* count_ticks counts timer interrupts for ms milliseconds of PM time and
 * prints the result line. */
static int count_ticks(const char *name, uint32_t hz, uint32_t reload, uint32_t ms)
{
	pm_start();
	sti();
	uint64_t guard = pm_now() + PM_HZ * 5;
	while (ticks == 0 && pm_now() < guard)
		hlt();
	if (ticks == 0) {
		cli();
		printf("%s: no timer interrupt within 5 s\n", name);
		return IRQ_FAIL;
	}
	uint64_t c0 = ticks, t0 = pm_now(), want = PM_HZ * ms / 1000, t1;
	while ((t1 = pm_now()) - t0 < want)
		hlt();
	uint64_t c1 = ticks;
	t1 = pm_now();
	cli();
	uint64_t n = c1 - c0, dt = t1 - t0;
	/* expected = dt/PM_HZ seconds * PIT_HZ/reload interrupts, in 1/1000 */
	uint64_t exp_milli = dt * PIT_HZ * 1000 / (PM_HZ * reload);
	printf("%s: hz=%u reload=%u irqs=%lu pm_ticks=%lu expected_milli=%lu\n", name, hz, reload, n, dt, exp_milli);
	return IRQ_OK;
}

static int t_pit(void)
{
	if (!need_acpi(true))
		return IRQ_FAIL;
	lapic_init(false);
	pic_disable();
	uint16_t flags;
	uint32_t gsi = acpi_isa_gsi(0, &flags);
	printf("madt: ioapic=%#x gsi_base=%u irq0_gsi=%u flags=%#x cpus=%d\n", acpi.ioapic_addr,
	       acpi.ioapic_gsi_base, gsi, flags, acpi.ncpus);
	set_handler(VEC_PIT, pit_isr);
	ioapic_route(gsi, VEC_PIT, lapic_id(), flags);
	uint32_t hz = (uint32_t)cmdline_u64("hz", 100), ms = (uint32_t)cmdline_u64("ms", 1000);
	uint32_t reload = pit_start(hz);
	int rc = count_ticks("pit", hz, reload, ms);
	ioapic_mask(gsi);
	return rc;
}

static int t_pic(void)
{
	acpi_init(); /* only for the PM timer */
	if (!acpi.pm_tmr_port) {
		printf("pic: no PM timer\n");
		return IRQ_FAIL;
	}
	lapic_init(false);
	lapic_write(LAPIC_LVT_LINT0, 0x700); /* ExtINT, unmasked: virtual wire */
	/* The IOAPIC keeps its reset state (every pin masked). */
	outb(0x20, 0x11);
	outb(0x21, VEC_PIC_BASE);
	outb(0x21, 0x04);
	outb(0x21, 0x01);
	outb(0xA0, 0x11);
	outb(0xA1, VEC_PIC_BASE + 8);
	outb(0xA1, 0x02);
	outb(0xA1, 0x01);
	outb(0xA1, 0xFF);
	outb(0x21, 0xFE); /* IRQ0 only */
	set_handler(VEC_PIC_BASE, pic_isr);
	uint32_t hz = (uint32_t)cmdline_u64("hz", 100), ms = (uint32_t)cmdline_u64("ms", 500);
	uint32_t reload = pit_start(hz);
	int rc = count_ticks("pic", hz, reload, ms);
	outb(0x21, 0xFF);
	outb(0x20, 0x0B); /* OCW3: read ISR */
	uint8_t isr = inb(0x20);
	printf("pic: isr_after=%#x\n", isr);
	return isr ? IRQ_FAIL : rc;
}

/* ---- level ---- */
static volatile uint32_t level_irqs, level_rirr_seen, level_isr_seen, level_eoi_first, level_pending_eoi;

/* lapic_isr: is vector in service in this CPU's LAPIC? A LAPIC that
 * completes interrupts when it delivers them (the software kvm_pvm KVM the
 * project runs on: ISR clear and the level EOI reported to the IOAPIC
 * before the handler runs) makes the IOAPIC see the EOI while the line is
 * still high, so it redelivers; the test needs to know which kind it has. */
static bool lapic_isr(uint8_t v) { return lapic_read(0x100 + 0x10 * (v / 32)) & (1u << (v % 32)); }

static uint32_t redir_lo(uint32_t gsi) { return ioapic_read(0x10 + 2 * (gsi - acpi.ioapic_gsi_base)); }

static void level_isr(struct regs *r)
{
	(void)r;
	level_irqs++;
	if (redir_lo(LEVEL_GSI) & (1u << 14))
		level_rirr_seen++;
	if (lapic_isr(VEC_LEVEL))
		level_isr_seen++;
	if (level_eoi_first && level_pending_eoi) {
		/* EOI with the line still asserted: the IOAPIC must deliver
		 * again once Remote IRR is cleared. */
		level_pending_eoi = 0;
		lapic_eoi();
		return;
	}
	td_write(TD_LEVEL, 0);
	lapic_eoi();
}

static bool wait_count(volatile uint32_t *c, uint32_t want, uint32_t ms)
{
	uint64_t end = pm_now() + PM_HZ * ms / 1000;
	sti();
	while (*c < want && pm_now() < end)
		pause();
	return *c >= want;
}

/* td_setup is how every irqtestdev scenario starts: the machine from
 * ACPI (with an IOAPIC if asked), the test device present, the LAPIC in
 * xAPIC mode, the 8259s masked, the PM timer running. */
static bool td_setup(const char *who, bool ioapic)
{
	if (!need_acpi(ioapic))
		return false;
	if (td_read(TD_ID) != TD_MAGIC) {
		printf("%s: irqtestdev not found at %#llx\n", who, TD_BASE);
		return false;
	}
	lapic_init(false);
	pic_disable();
	pm_start();
	return true;
}

static int t_level(void)
{
	if (!td_setup("level", true))
		return IRQ_FAIL;
	set_handler(VEC_LEVEL, level_isr);
	ioapic_route(LEVEL_GSI, VEC_LEVEL, lapic_id(), 1 | 3 << 2); /* active high, level */
	uint32_t n = (uint32_t)cmdline_u64("n", 20), bad = 0, rirr_after = 0;
	for (uint32_t i = 0; i < n; i++) {
		td_write(TD_LEVEL, 1);
		if (!wait_count(&level_irqs, level_irqs + 1, 2000)) {
			printf("level: assertion %u: no interrupt\n", i);
			bad++;
			break;
		}
		wait_us(2000);
		cli();
		if (redir_lo(LEVEL_GSI) & (1u << 14))
			rirr_after++;
	}
	uint32_t first = level_irqs;
	/* EOI before deasserting: exactly one redelivery per assertion. */
	level_eoi_first = 1;
	uint32_t m = (uint32_t)cmdline_u64("m", 5);
	for (uint32_t i = 0; i < m; i++) {
		level_pending_eoi = 1;
		td_write(TD_LEVEL, 1);
		uint32_t before = level_irqs;
		if (!wait_count(&level_irqs, before + 2, 2000)) {
			printf("level: eoi-first assertion %u: no redelivery\n", i);
			bad++;
			break;
		}
		wait_us(2000);
		cli();
	}
	cli();
	ioapic_mask(LEVEL_GSI);
	printf("level: assertions=%u irqs=%u rirr_in_isr=%u rirr_after_eoi=%u eoi_first_assertions=%u "
	       "eoi_first_irqs=%u device_asserts=%u lapic_isr_in_isr=%u\n",
	       n, first, level_rirr_seen, rirr_after, m, level_irqs - first, td_read(TD_ASSERTS), level_isr_seen);
	/* The counts are checked by the test, which knows both LAPIC kinds. */
	return bad || rirr_after ? IRQ_FAIL : IRQ_OK;
}

/* ---- msi ---- */
#define VEC_WAKE 0x60

static void wake_isr(struct regs *r)
{
	(void)r;
	lapic_eoi();
}

/* wake_timer starts (hz > 0) or stops the LAPIC timer as a periodic wake-up
 * source, so that a hlt loop always comes back to check its condition. */
static void wake_timer(uint64_t lapic_hz, uint32_t hz)
{
	set_handler(VEC_WAKE, wake_isr);
	if (!hz) {
		lapic_write(LAPIC_TIMER_INIT, 0);
		return;
	}
	lapic_write(LAPIC_TIMER_DIV, 0xB);
	lapic_write(LAPIC_LVT_TIMER, 0x20000 | VEC_WAKE); /* periodic */
	lapic_write(LAPIC_TIMER_INIT, (uint32_t)(lapic_hz / hz));
}

static volatile uint32_t msi_irqs;

static void msi_isr(struct regs *r)
{
	(void)r;
	msi_irqs++;
	td_write(TD_MSI_ACK, 1);
	lapic_eoi();
}

static int t_msi(void)
{
	if (!td_setup("msi", false))
		return IRQ_FAIL;
	uint64_t lapic_hz = lapic_timer_calibrate(20, NULL);
	if (!lapic_hz) {
		printf("msi: LAPIC timer calibration failed\n");
		return IRQ_FAIL;
	}
	set_handler(VEC_MSI, msi_isr);
	uint32_t n = (uint32_t)cmdline_u64("n", 50);
	int rc = IRQ_OK;
	static const char *names[] = {"qemu", "cloud-hypervisor"};
	/* Each ordering twice: the vCPU running (spinning with interrupts
	 * enabled) and halted (hlt between interrupts) when they arrive. */
	for (uint32_t run = 0; run < 4; run++) {
		uint32_t order = run & 1;
		bool halted = run >= 2;
		msi_irqs = 0;
		td_write(TD_MSI_ADDR, 0xFEE00000u | (lapic_id() << 12));
		td_write(TD_MSI_ADDRH, 0);
		td_write(TD_MSI_DATA, VEC_MSI); /* fixed, edge */
		td_write(TD_ORDER, order);
		if (halted)
			wake_timer(lapic_hz, 50);
		td_write(TD_FIRE, n);
		uint64_t end = pm_now() + PM_HZ * 60;
		sti();
		while (!(td_read(TD_STATUS) & TD_DONE) && pm_now() < end) {
			if (halted)
				hlt();
			else
				wait_us(500);
		}
		wake_timer(lapic_hz, 0);
		wait_us(5000); /* anything extra would arrive now */
		cli();
		uint32_t st = td_read(TD_STATUS), sent = td_read(TD_SENT), acks = td_read(TD_ACKS);
		printf("msi: order=%s wait=%s n=%u irqs=%u sent=%u acks=%u status=%#x\n", names[order],
		       halted ? "halted" : "running", n, msi_irqs, sent, acks, st);
		if (st != TD_DONE || msi_irqs != n || sent != n || acks != n)
			rc = IRQ_FAIL;
	}
	return rc;
}

/* ---- resample ---- */
static volatile uint32_t rs_irqs, rs_real, rs_spurious, rs_isr_seen;
static volatile uint8_t rs_vec;

static void rs_isr(struct regs *r)
{
	(void)r;
	rs_irqs++;
	if (lapic_isr(rs_vec))
		rs_isr_seen++;
	/* A re-trigger that raced with the acknowledgement finds nothing
	 * pending: counted apart, never acknowledged twice. */
	if (td_read(TD_RS_PENDING)) {
		rs_real++;
		td_write(TD_RS_PENDING, 0);
	} else {
		rs_spurious++;
	}
	lapic_eoi();
}

static int t_resample(void)
{
	if (!td_setup("resample", true))
		return IRQ_FAIL;
	uint64_t lapic_hz = lapic_timer_calibrate(20, NULL);
	if (!lapic_hz) {
		printf("resample: LAPIC timer calibration failed\n");
		return IRQ_FAIL;
	}
	set_handler(VEC_RS_PIN, rs_isr);
	set_handler(VEC_RS_MSI, rs_isr);
	ioapic_route(RS_GSI, VEC_RS_PIN, lapic_id(), 1 | 3 << 2); /* active high, level */
	uint32_t n = (uint32_t)cmdline_u64("n", 30);
	int rc = IRQ_OK;
	static const char *paths[] = {"ioapic", "msi"};
	/* Each path with the vCPU running (spinning with interrupts enabled)
	 * and halted (hlt between interrupts) when the interrupts arrive. */
	for (uint32_t run = 0; run < 4; run++) {
		uint32_t mode = run & 1;
		bool halted = run >= 2;
		rs_irqs = rs_real = rs_spurious = rs_isr_seen = 0;
		rs_vec = mode ? VEC_RS_MSI : VEC_RS_PIN;
		td_write(TD_MSI_ADDR, 0xFEE00000u | (lapic_id() << 12));
		td_write(TD_MSI_ADDRH, 0);
		td_write(TD_MSI_DATA, VEC_RS_MSI | 1u << 15 | 1u << 14); /* fixed, level, assert */
		td_write(TD_RS_MODE, mode);
		if (halted)
			wake_timer(lapic_hz, 50);
		td_write(TD_RS_FIRE, n);
		uint64_t end = pm_now() + PM_HZ * 60;
		sti();
		while (!(td_read(TD_RS_STATUS) & TD_DONE) && pm_now() < end) {
			if (halted)
				hlt();
			else
				pause();
		}
		wake_timer(lapic_hz, 0);
		wait_us(5000); /* anything extra would arrive now */
		cli();
		uint32_t st = td_read(TD_RS_STATUS);
		printf("resample: path=%s wait=%s n=%u irqs=%u real=%u spurious=%u lapic_isr_in_isr=%u asserts=%u "
		       "triggers=%u resamples=%u status=%#x\n",
		       paths[mode], halted ? "halted" : "running", n, rs_irqs, rs_real, rs_spurious, rs_isr_seen,
		       td_read(TD_RS_ASSERTS), td_read(TD_RS_TRIGGERS), td_read(TD_RS_RESAMPLES), st);
		/* The IOAPIC path works on every accelerator; the MSI path
		 * only where the accelerator resamples MSIs (the test knows). */
		if (mode == 0 && (st != TD_DONE || rs_real != n))
			rc = IRQ_FAIL;
	}
	ioapic_mask(RS_GSI);
	return rc;
}

/* ---- serial ---- */
static int t_serial(void)
{
	if (!need_acpi(true))
		return IRQ_FAIL;
	lapic_init(false);
	pic_disable();
	pm_start();
	if (!serial_irq_enable(VEC_SERIAL)) {
		printf("serial: no IOAPIC\n");
		return IRQ_FAIL;
	}
	printf("serial: ready\n");
	char line[64];
	uint32_t k = 0;
	uint64_t end = pm_now() + PM_HZ * 60;
	sti();
	while (pm_now() < end) {
		int c = serial_getc();
		if (c < 0) {
			hlt(); /* the receive interrupt wakes us */
			continue;
		}
		if (c == '\n' || c == '\r')
			break;
		if (k < sizeof(line) - 1)
			line[k++] = (char)c;
	}
	cli();
	line[k] = 0;
	printf("serial: got=\"%s\" rx_irqs=%lu\n", line, (unsigned long)serial_rx_irqs);
	return k && serial_rx_irqs ? IRQ_OK : IRQ_FAIL;
}

/* ---- calib ---- */

/* calib_median calibrates the LAPIC timer against the PM timer (pm) or the
 * PIT five times and returns the median, with the TSC rate of the same
 * run. Each calibration ends on an exit to the VMM (the port read that
 * sees the timer expire), and on a slow host one such exit now and then
 * takes milliseconds: a single 50 ms PIT window was seen 8% long on the
 * nested substrate. The median keeps such a run out. */
static uint64_t calib_median(bool pm, uint64_t *tsc_hz)
{
	enum { RUNS = 5 };
	uint64_t hz[RUNS], tsc[RUNS];
	uint16_t port = acpi.pm_tmr_port;
	if (!pm)
		acpi.pm_tmr_port = 0; /* force the PIT path */
	for (int i = 0; i < RUNS; i++)
		hz[i] = lapic_timer_calibrate(pm ? 100 : 50, &tsc[i]);
	acpi.pm_tmr_port = port;
	for (int i = 1; i < RUNS; i++) /* insertion sort, by hz */
		for (int j = i; j > 0 && hz[j - 1] > hz[j]; j--) {
			uint64_t h = hz[j], t = tsc[j];
			hz[j] = hz[j - 1], tsc[j] = tsc[j - 1];
			hz[j - 1] = h, tsc[j - 1] = t;
		}
	*tsc_hz = tsc[RUNS / 2];
	return hz[0] ? hz[RUNS / 2] : 0; /* one failed calibration fails it */
}

static int t_calib(void)
{
	if (!need_acpi(false))
		return IRQ_FAIL;
	lapic_init(false);
	pic_disable();
	uint64_t tsc_pm, tsc_pit;
	uint64_t pm = calib_median(true, &tsc_pm);
	uint64_t pit = calib_median(false, &tsc_pit);
	printf("calib: lapic_hz_pm=%lu lapic_hz_pit=%lu tsc_hz_pm=%lu tsc_hz_pit=%lu\n", pm, pit, tsc_pm, tsc_pit);
	return pm && pit ? IRQ_OK : IRQ_FAIL;
}

/* ---- bench ---- */

/* bell_loop runs at CPL3: arg = register << 32 | count; returns TSC cycles. */
static uint64_t bell_loop(uint64_t arg)
{
	uint64_t reg = arg >> 32, n = arg & 0xFFFFFFFF, t0 = rdtsc();
	for (uint64_t i = 0; i < n; i++)
		mmio_write32(TD_BASE + reg, 1);
	return rdtsc() - t0;
}

static uint64_t bench_msi(uint32_t order, uint32_t n, uint64_t tsc_hz)
{
	msi_irqs = 0;
	td_write(TD_MSI_ADDR, 0xFEE00000u | (lapic_id() << 12));
	td_write(TD_MSI_ADDRH, 0);
	td_write(TD_MSI_DATA, VEC_MSI);
	td_write(TD_ORDER, order);
	uint64_t t0 = rdtsc(), end = pm_now() + PM_HZ * 60;
	td_write(TD_FIRE, n);
	sti();
	while (msi_irqs < n && !(td_read(TD_STATUS) & TD_ERROR) && pm_now() < end)
		hlt(); /* the MSIs, or the 10 ms LAPIC timer, wake us */
	uint64_t t1 = rdtsc();
	while (!(td_read(TD_STATUS) & TD_DONE) && pm_now() < end)
		hlt(); /* the host tears the run down after the last ack */
	wait_us(2000);
	cli();
	if (msi_irqs != n || (td_read(TD_STATUS) & TD_ERROR)) {
		printf("bench: order %u: %u of %u MSIs, status %#x\n", order, msi_irqs, n, td_read(TD_STATUS));
		return 0;
	}
	return (t1 - t0) * (uint64_t)1000000000 / tsc_hz / n;
}

static int t_bench(void)
{
	if (!td_setup("bench", false))
		return IRQ_FAIL;
	uint64_t tsc_hz;
	uint64_t lapic_hz = lapic_timer_calibrate(100, &tsc_hz);
	if (!lapic_hz || !tsc_hz) {
		printf("bench: calibration failed\n");
		return IRQ_FAIL;
	}
	set_handler(VEC_MSI, msi_isr);
	wake_timer(lapic_hz, 100);
	uint32_t n = (uint32_t)cmdline_u64("n", 200), bells = (uint32_t)cmdline_u64("bells", 2000);
	uint64_t irqfd = bench_msi(0, n, tsc_hz), user = bench_msi(2, n, tsc_hz);
	wake_timer(lapic_hz, 0);
	uint64_t c_mmio = user_call(bell_loop, (uint64_t)TD_DOORBELL << 32 | bells);
	uint64_t c_fast = user_call(bell_loop, (uint64_t)TD_FASTBELL << 32 | bells);
	uint64_t end = pm_now() + PM_HZ * 5;
	while (td_read(TD_FASTCOUNT) < bells && pm_now() < end)
		wait_us(1000);
	uint32_t seen_mmio = td_read(TD_DBCOUNT), seen_fast = td_read(TD_FASTCOUNT);
	printf("bench: irqfd_ns=%lu signalmsi_ns=%lu mmio_ns=%lu ioeventfd_ns=%lu fastmode=%u n=%u bells=%u "
	       "mmio_seen=%u fast_seen=%u tsc_hz=%lu\n",
	       irqfd, user, c_mmio * (uint64_t)1000000000 / tsc_hz / bells,
	       c_fast * (uint64_t)1000000000 / tsc_hz / bells,
	       td_read(TD_FASTMODE), n, bells, seen_mmio, seen_fast, tsc_hz);
	return irqfd && user && seen_mmio == bells && seen_fast == bells ? IRQ_OK : IRQ_FAIL;
}

/* ---- pctestdev ---- */
#define PCT_SCRATCH 0xe0
#define PCT_FLUSH 0xe4
#define PCT_IRQ 0x2000
#define PCT_MEM 0xFF000000ULL
#define PCT_EDGE_GSI 10
#define PCT_LEVEL_GSI 19
#define VEC_PCT_EDGE 0x70
#define VEC_PCT_LEVEL 0x71

static volatile uint32_t pct_edges, pct_levels;
static volatile uint32_t pct_flush_probe = 0x5a5a1234;

static void pct_edge_isr(struct regs *r)
{
	(void)r;
	pct_edges++;
	lapic_eoi();
}

/* The line stays high across the first two EOIs, so the IOAPIC
 * redelivers; the third handler lowers it first. */
static void pct_level_isr(struct regs *r)
{
	(void)r;
	if (++pct_levels >= 3)
		outb(PCT_IRQ + PCT_LEVEL_GSI, 0);
	lapic_eoi();
}

static int t_pctestdev(void)
{
	if (!need_acpi(true))
		return IRQ_FAIL;
	lapic_init(false);
	pic_disable();
	pm_start();
	outl(PCT_SCRATCH, 0x12345678);
	uint32_t scratch = inl(PCT_SCRATCH);
	volatile uint64_t *mem = (volatile uint64_t *)(PCT_MEM + 0x100);
	*mem = 0x1122334455667788ULL;
	uint64_t memv = *mem;
	outl(PCT_FLUSH, (uint32_t)(uintptr_t)&pct_flush_probe);
	uint32_t flushed = pct_flush_probe;
	pct_flush_probe = flushed + 1; /* the page is writable again */

	set_handler(VEC_PCT_EDGE, pct_edge_isr);
	ioapic_route(PCT_EDGE_GSI, VEC_PCT_EDGE, lapic_id(), 1 | 1 << 2); /* active high, edge */
	uint32_t n = (uint32_t)cmdline_u64("n", 20), edges_ok = 0;
	for (uint32_t i = 0; i < n; i++) {
		outb(PCT_IRQ + PCT_EDGE_GSI, 1);
		if (wait_count(&pct_edges, i + 1, 2000))
			edges_ok++;
		outb(PCT_IRQ + PCT_EDGE_GSI, 0);
	}
	cli();
	ioapic_mask(PCT_EDGE_GSI);

	set_handler(VEC_PCT_LEVEL, pct_level_isr);
	ioapic_route(PCT_LEVEL_GSI, VEC_PCT_LEVEL, lapic_id(), 1 | 3 << 2); /* active high, level */
	outb(PCT_IRQ + PCT_LEVEL_GSI, 1);
	wait_count(&pct_levels, 3, 2000);
	wait_us(20000); /* nothing more may come once the line is low */
	cli();
	ioapic_mask(PCT_LEVEL_GSI);
	printf("pctestdev: scratch=%#x mem=%#lx flush=%#x edges=%u edges_ok=%u n=%u levels=%u\n", scratch, memv,
	       flushed, pct_edges, edges_ok, n, pct_levels);
	return scratch == 0x12345678 && memv == 0x1122334455667788ULL && flushed == 0x5a5a1234 && edges_ok == n &&
			       pct_edges == n && pct_levels == 3
		       ? IRQ_OK
		       : IRQ_FAIL;
}

/* ---- pcitestdev ---- */
#define PCI_CFG_ADDR 0xcf8
#define PCI_CFG_DATA 0xcfc
#define PCITEST_ID 0x00051b36u
#define PCIHOST_ID 0x00081b36u
#define PCITEST_MEM 0xC0100000u /* where the guest moves BAR 0 */
#define PCITEST_IO 0xC200u      /* and BAR 1 */

static uint32_t cf8_read(int slot, int reg)
{
	outl(PCI_CFG_ADDR, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)(reg & 0xfc));
	return inl(PCI_CFG_DATA);
}

static void cf8_write(int slot, int reg, uint32_t v)
{
	outl(PCI_CFG_ADDR, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)(reg & 0xfc));
	outl(PCI_CFG_DATA, v);
}

/* The ECAM base from the MCFG table (0: none). */
static uint64_t mcfg_base(void)
{
	const uint8_t *r = (const uint8_t *)acpi.rsdp;
	if (!r || r[15] < 2)
		return 0;
	const uint8_t *x = (const uint8_t *)*(const uint64_t *)(r + 24);
	uint32_t len = *(const uint32_t *)(x + 4);
	for (uint32_t i = 36; i + 8 <= len; i += 8) {
		const uint8_t *t = (const uint8_t *)*(const uint64_t *)(x + i);
		if (!memcmp(t, "MCFG", 4) && *(const uint32_t *)(t + 4) >= 60 && t[54] == 0)
			return *(const uint64_t *)(t + 44);
	}
	return 0;
}

struct pcitest_ops {
	uint8_t (*rb)(uint64_t a);
	void (*wb)(uint64_t a, uint8_t v);
};
static uint8_t mem_rb(uint64_t a) { return *(volatile uint8_t *)a; }
static void mem_wb(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static uint8_t io_rb(uint64_t a) { return inb((uint16_t)a); }
static void io_wb(uint64_t a, uint8_t v) { outb((uint16_t)a, v); }

static uint32_t rl(const struct pcitest_ops *o, uint64_t a)
{
	return o->rb(a) | (uint32_t)o->rb(a + 1) << 8 | (uint32_t)o->rb(a + 2) << 16 | (uint32_t)o->rb(a + 3) << 24;
}

/* kvm-unit-tests' pci_testdev_one: the count of 16 writes, or -1. */
static int pcitest_one(const struct pcitest_ops *o, uint64_t base, int n)
{
	o->wb(base, (uint8_t)n);
	if (rl(o, base + 12) != 0 || o->rb(base + 1) != 1)
		return -1;
	uint8_t sig = o->rb(base + 8);
	uint32_t off = rl(o, base + 4);
	for (int i = 0; i < 16; i++)
		o->wb(base + off, sig);
	return (int)rl(o, base + 12);
}

static int t_pcitestdev(void)
{
	if (!need_acpi(true))
		return IRQ_FAIL;
	uint32_t host = cf8_read(0, 0), hostclass = cf8_read(0, 8) >> 8;
	int slot = -1;
	for (int s = 0; s < 32 && slot < 0; s++)
		if (cf8_read(s, 0) == PCITEST_ID)
			slot = s;
	uint64_t ecam = mcfg_base();
	if (slot < 0 || !ecam) {
		printf("pcitestdev: slot=%d ecam=%#lx host=%#x\n", slot, ecam, host);
		return IRQ_FAIL;
	}
	volatile uint32_t *cfg = (volatile uint32_t *)(ecam + ((uint64_t)slot << 15));
	bool ecam_ok = *(volatile uint32_t *)ecam == host && cfg[0] == PCITEST_ID && cfg[4] == cf8_read(slot, 0x10);
	/* Size the BARs with decoding off, as Linux does, and move them. */
	uint32_t cmd = cf8_read(slot, 4) & 0xffff;
	cf8_write(slot, 4, cmd & ~3u);
	cf8_write(slot, 0x10, 0xffffffff);
	uint32_t size0 = cf8_read(slot, 0x10);
	cfg[5] = 0xffffffff; /* BAR 1 through ECAM */
	uint32_t size1 = cfg[5];
	cf8_write(slot, 0x10, PCITEST_MEM);
	cfg[5] = PCITEST_IO;
	cfg[1] = cmd | 3; /* I/O and memory decode on */
	uint32_t bar0 = cf8_read(slot, 0x10), bar1 = cf8_read(slot, 0x14);
	static const struct pcitest_ops mem = {mem_rb, mem_wb}, io = {io_rb, io_wb};
	bool wait = cmdline_u64("wait", 0) != 0;
	int kept = -1;
	if (wait) {
		mem_wb(PCITEST_MEM, 1); /* mmio-wildcard-eventfd */
		for (int i = 0; i < 5; i++)
			mem_wb(PCITEST_MEM + 2048 + 1, 0x42);
		printf("pcitestdev: placed\n");
		while (!(inb(0x3f8 + 5) & 1)) /* LSR data ready */
			pause();
		(void)inb(0x3f8);
		kept = (int)rl(&mem, PCITEST_MEM + 12);
		bar0 = cf8_read(slot, 0x10);
		bar1 = cf8_read(slot, 0x14);
	}
	int counts[6];
	for (int n = 0; n < 3; n++) {
		counts[n] = pcitest_one(&mem, bar0 & ~0xfu, n);
		counts[3 + n] = pcitest_one(&io, bar1 & ~3u, n);
	}
	/* Memory decode off: BAR 0 reads as all ones, BAR 1 still answers
	 * (byte 0 of the selected test's header: portio-datamatch, test 5). */
	cf8_write(slot, 4, 1);
	uint8_t off_mem = mem_rb(PCITEST_MEM), on_io = io_rb(PCITEST_IO);
	cf8_write(slot, 4, 3);
	printf("pcitestdev: host=%#x host_class=%#x slot=%d ecam=%#lx ecam_ok=%d size0=%#x size1=%#x bar0=%#x bar1=%#x "
	       "mmio=%d,%d,%d portio=%d,%d,%d decode_off=%#x io_test=%u kept=%d\n",
	       host, hostclass, slot, ecam, ecam_ok, size0, size1, bar0, bar1, counts[0], counts[1], counts[2], counts[3],
	       counts[4], counts[5], off_mem, on_io, kept);
	bool ok = host == PCIHOST_ID && hostclass == 0x060000 && ecam_ok && size0 == 0xfffff000 && size1 == 0xffffff01 &&
		  bar0 == PCITEST_MEM && bar1 == (PCITEST_IO | 1) && off_mem == 0xff && on_io == 5 && (!wait || kept == 5);
	for (int i = 0; i < 6; i++)
		ok = ok && counts[i] == 16;
	return ok ? IRQ_OK : IRQ_FAIL;
}

static const struct {
	const char *name;
	int (*fn)(void);
} tests[] = {
	{"bench", t_bench},
	{"pit", t_pit}, {"pic", t_pic}, {"level", t_level}, {"msi", t_msi}, {"serial", t_serial}, {"calib", t_calib},
	{"resample", t_resample}, {"pctestdev", t_pctestdev}, {"pcitestdev", t_pcitestdev},
};

int main(void)
{
	char name[32];
	if (!cmdline_get("irqtest", name, sizeof(name))) {
		printf("irq: no irqtest=NAME on the command line\n");
		return IRQ_FAIL;
	}
	for (size_t i = 0; i < ARRAY_SIZE(tests); i++)
		if (!strcmp(name, tests[i].name)) {
			int rc = tests[i].fn();
			printf("irqtest %s: %s\n", name, rc == IRQ_OK ? "ok" : "FAIL");
			return rc;
		}
	printf("irq: unknown irqtest=%s\n", name);
	return IRQ_FAIL;
}
