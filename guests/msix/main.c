/*
 * msix: a bare-metal guest that counts MSI-X interrupts exactly while it
 * masks and unmasks the vectors they arrive on. The device is QEMU's
 * virtio-rng-pci in virtio 1.x mode (PCI 1af4:1044, disable-legacy=on),
 * passed through with VFIO: each request (one 16-byte buffer on queue 0,
 * then a write to the queue's notify address) is answered with exactly
 * one used buffer and one message on the queue's MSI-X vector (no
 * EVENT_IDX, no NOTIFY_ON_EMPTY, interrupts never suppressed), so the
 * guest knows how many messages the device sent. It accepts
 * VIRTIO_F_ACCESS_PLATFORM: the device's DMA goes through the host's
 * IOMMU, where VFIO mapped guest RAM.
 *
 * Request i uses MSI-X vector i % 2 (the queue's vector is rewritten
 * before each request). Of every k requests:
 *   - one is made while its vector is masked, by the vector's mask bit
 *     or, every other time, by the function mask: the guest waits for the
 *     used buffer (the device has sent the message), polls the PBA until
 *     the vector's bit reads 1, checks nothing arrived, unmasks, and
 *     expects exactly one interrupt and the PBA bit clear. Every third
 *     such window makes a second request before unmasking and waits
 *     20 ms after its used buffer: two messages under one mask are one
 *     pending bit, and one interrupt arrives.
 *   - one is made and its vector masked and unmasked at once, racing the
 *     message in flight: exactly one interrupt arrives.
 *   - the rest are made with the vector unmasked.
 * The guest waits for each interrupt before the next request (two
 * pending in the LAPIC on one vector would merge), and at the end waits
 * 50 ms for anything extra. One line reports it:
 *
 *   msix: n=N sent=S recv=R masked=M pba=P coalesced=C races=X leaks=L
 *         stuck=B lost=O early=E extra=Y us_per_irq=U
 *
 * sent counts the interrupts the guest must receive (a coalesced pair is
 * one), recv what arrived; masked the masked windows, pba those whose
 * PBA bit read 1; leaks interrupts that came under a mask, stuck PBA bits
 * set where nothing was pending or still set after the unmask, lost
 * interrupts that never came within 2 s. early counts interrupts that
 * came before the first request (the guest waits 20 ms for them after
 * it enables MSI-X): a message left in the device by an earlier guest
 * would be one. extra counts interrupts beyond a vector's requests, found
 * before each request and at the end, each printed with the request and
 * the kind of window that came last on that vector, so that a count
 * above n says where it came from.
 *
 * Cmdline: n=N requests (default 1000), k=K (default 8, at least 4),
 * twait=US the wait after a window's second used buffer (default 20000:
 * 20 ms; shorter shows what a message still in flight at the unmask
 * does).
 * Exit through the debug-exit port: OK (0x10, status 33) or FAIL (0x11,
 * status 35).
 */
#include "lib.h"

#define OK 0x10
#define FAIL 0x11

#define VENDOR 0x1af4
#define DEVICE 0x1044 /* virtio 1.x entropy device */

/* Virtio PCI capabilities (virtio 1.2, 4.1.4) and the common
 * configuration structure's fields. */
#define CAP_VENDOR 0x09
#define CFG_COMMON 1
#define CFG_NOTIFY 2
#define C_DFSEL 0x00
#define C_DF 0x04
#define C_GFSEL 0x08
#define C_GF 0x0c
#define C_MSIX_CONFIG 0x10
#define C_STATUS 0x14
#define C_Q_SELECT 0x16
#define C_Q_SIZE 0x18
#define C_Q_MSIX 0x1a
#define C_Q_ENABLE 0x1c
#define C_Q_NOTIFY_OFF 0x1e
#define C_Q_DESC 0x20
#define C_Q_DRIVER 0x28
#define C_Q_DEVICE 0x30
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define F_VERSION_1 (1u << 0)      /* bit 32 */
#define F_ACCESS_PLATFORM (1u << 1) /* bit 33 */
#define NO_VECTOR 0xffff
#define DESC_WRITE 2

#define MSIX_ENABLE 0x8000
#define MSIX_FMASK 0x4000

#define VEC_BASE 0x70
#define QMAX 256

static int slot, msix;
static uint16_t msix_ctl;
static uint64_t common, notify, table, pba;

static inline uint8_t c8(uint32_t r) { return *(volatile uint8_t *)(common + r); }
static inline uint16_t c16(uint32_t r) { return *(volatile uint16_t *)(common + r); }
static inline uint32_t c32(uint32_t r) { return *(volatile uint32_t *)(common + r); }
static inline void w8(uint32_t r, uint8_t v) { *(volatile uint8_t *)(common + r) = v; }
static inline void w16(uint32_t r, uint16_t v) { *(volatile uint16_t *)(common + r) = v; }
static inline void w32(uint32_t r, uint32_t v) { *(volatile uint32_t *)(common + r) = v; }
static inline void w64(uint32_t r, uint64_t v)
{
	w32(r, (uint32_t)v);
	w32(r + 4, (uint32_t)(v >> 32));
}

/* ---- The split virtqueue (virtio 1.2, 2.7). ---- */
struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};
static struct desc descs[QMAX] __attribute__((aligned(4096)));
static struct {
	uint16_t flags, idx, ring[QMAX], used_event;
} avail __attribute__((aligned(4096)));
static struct {
	uint16_t flags;
	volatile uint16_t idx;
	struct {
		uint32_t id, len;
	} ring[QMAX];
	uint16_t avail_event;
} used __attribute__((aligned(4096)));
static uint8_t buf[16] __attribute__((aligned(64)));
static uint16_t qsize, avail_idx;

static volatile uint32_t recv[2];

/* What the last request on each vector was, for the extra report. */
static const char *kind[2] = {"none", "none"};
static uint32_t last_req[2];
static void isr0(struct regs *r)
{
	recv[0]++;
	lapic_eoi();
}
static void isr1(struct regs *r)
{
	recv[1]++;
	lapic_eoi();
}

static bool wait_recv(int v, uint32_t want, uint32_t ms)
{
	uint64_t end = pm_ms_from_now(ms);
	while (recv[v] < want && pm_now() < end)
		pause();
	return recv[v] >= want;
}

/* request puts the buffer on queue 0 and notifies the device. */
static void request(void)
{
	avail.ring[avail_idx % qsize] = 0;
	__asm__ volatile("mfence" ::: "memory");
	avail.idx = ++avail_idx;
	__asm__ volatile("mfence" ::: "memory");
	*(volatile uint16_t *)notify = 0;
}

/* wait_used waits until the device has returned every request: it sends
 * the message right after it updates the used ring. */
static bool wait_used(uint32_t ms)
{
	uint64_t end = pm_ms_from_now(ms);
	while (used.idx != avail_idx) {
		if (pm_now() > end)
			return false;
		pause();
	}
	return true;
}

static bool pba_bit(int v) { return mmio_read32(pba) >> v & 1; }

static bool wait_pba(int v, uint32_t ms)
{
	uint64_t end = pm_ms_from_now(ms);
	while (!pba_bit(v)) {
		if (pm_now() > end)
			return false;
		pause();
	}
	return true;
}

static void mask_vector(int v, bool on) { mmio_write32(table + 16u * v + 12, on ? 1 : 0); }

static void mask_function(bool on)
{
	pci_write16(slot, msix + 2, (uint16_t)(msix_ctl | MSIX_ENABLE | (on ? MSIX_FMASK : 0)));
}

/* The lib maps the first 4 GiB; govmm places 64-bit BARs above 4 GiB.
 * map_high maps the GiB holding addr with 2 MiB uncached pages. */
extern uint64_t pdpt[512];
static uint64_t high_pd[512] __attribute__((aligned(4096)));
static bool map_high(uint64_t addr)
{
	uint64_t gb = addr >> 30;
	if (gb < 4 || pdpt[gb] & 1)
		return true;
	if (gb >= 512 || high_pd[0] & 1)
		return false; /* one high GiB is all this guest needs */
	for (int j = 0; j < 512; j++)
		high_pd[j] = (gb << 30) + ((uint64_t)j << 21) + 0x9b; /* P RW PWT PCD PS */
	pdpt[gb] = (uint64_t)(uintptr_t)high_pd + 3;
	WRITE_CR(3, READ_CR(3));
	return true;
}

/* move_bar64 moves 64-bit BAR bir to addr (hibar=ADDR on the command
 * line: under QEMU, whose firmware places the BAR below 4 GiB, it tries
 * the path govmm's placement takes). */
static void move_bar64(int bir, uint64_t addr)
{
	uint32_t cmd = pci_read32(slot, 0x04) & 0xffff;
	pci_write16(slot, 0x04, (uint16_t)(cmd & ~2u));
	outl(0xcf8, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)(0x10 + 4 * bir));
	outl(0xcfc, (uint32_t)addr | (inl(0xcfc) & 0xf));
	outl(0xcf8, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)(0x14 + 4 * bir));
	outl(0xcfc, (uint32_t)(addr >> 32));
	pci_write16(slot, 0x04, (uint16_t)cmd);
}

static uint64_t bar_addr(int bir)
{
	uint32_t lo = pci_read32(slot, 0x10 + 4 * bir);
	uint64_t a = lo & ~0xfu;
	if ((lo & 6) == 4)
		a |= (uint64_t)pci_read32(slot, 0x14 + 4 * bir) << 32;
	return a;
}

/* setup brings the device to DRIVER_OK with queue 0 on MSI-X vector 0;
 * it returns an error message or NULL. */
static const char *setup(void)
{
	uint32_t notify_mult = 0;
	bool moved = false;
	int p = pci_read32(slot, 0x34) & 0xfc;
	for (int n = 0; p >= 0x40 && n < 48; n++) {
		uint32_t h = pci_read32(slot, p);
		if ((h & 0xff) == CAP_VENDOR) {
			int type = h >> 24 & 0xff, bar = pci_read32(slot, p + 4) & 0xff;
			uint64_t hi = cmdline_u64("hibar", 0);
			if (type == CFG_COMMON && hi && !moved && (pci_read32(slot, 0x10 + 4 * bar) & 6) == 4) {
				move_bar64(bar, hi);
				moved = true;
				common = notify = 0;
				p = pci_read32(slot, 0x34) & 0xfc; /* again, at the new address */
				continue;
			}
			uint64_t at = bar_addr(bar) + pci_read32(slot, p + 8);
			if (!map_high(at))
				return "a virtio structure lies in a second GiB above 4 GiB";
			if (type == CFG_COMMON && !common)
				common = at;
			if (type == CFG_NOTIFY && !notify) {
				notify = at;
				notify_mult = pci_read32(slot, p + 16);
			}
		}
		if ((h & 0xff) == 0x11)
			msix = p;
		p = (h >> 8) & 0xfc;
	}
	if (!common || !notify || msix < 0)
		return "no common configuration, notify capability or MSI-X capability";
	uint32_t t = pci_read32(slot, msix + 4), b = pci_read32(slot, msix + 8);
	msix_ctl = (uint16_t)(pci_read32(slot, msix) >> 16) & ~(MSIX_ENABLE | MSIX_FMASK);
	if ((msix_ctl & 0x7ff) + 1 < 2)
		return "fewer than 2 MSI-X vectors";
	table = bar_addr(t & 7) + (t & ~7u);
	pba = bar_addr(b & 7) + (b & ~7u);
	/* Memory decode and bus mastering (DMA and the messages need it). */
	pci_write16(slot, 0x04, (pci_read32(slot, 0x04) & 0xffff) | 0x6);

	w8(C_STATUS, 0);
	uint64_t end = pm_ms_from_now(1000);
	while (c8(C_STATUS) != 0)
		if (pm_now() > end)
			return "the device did not reset";
	w8(C_STATUS, S_ACK | S_DRIVER);
	w32(C_DFSEL, 1);
	uint32_t hi = c32(C_DF);
	if (!(hi & F_VERSION_1))
		return "the device does not offer VIRTIO_F_VERSION_1";
	w32(C_GFSEL, 0);
	w32(C_GF, 0);
	w32(C_GFSEL, 1);
	w32(C_GF, hi & (F_VERSION_1 | F_ACCESS_PLATFORM));
	w8(C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (!(c8(C_STATUS) & S_FEATURES_OK))
		return "the device refused the features";
	w16(C_MSIX_CONFIG, NO_VECTOR);
	w16(C_Q_SELECT, 0);
	qsize = c16(C_Q_SIZE);
	if (qsize == 0)
		return "queue 0 does not exist";
	if (qsize > QMAX) {
		qsize = QMAX;
		w16(C_Q_SIZE, qsize);
	}
	w16(C_Q_MSIX, 0);
	if (c16(C_Q_MSIX) != 0)
		return "the device refused MSI-X vector 0 for queue 0";
	descs[0].addr = (uint64_t)(uintptr_t)buf;
	descs[0].len = sizeof buf;
	descs[0].flags = DESC_WRITE;
	w64(C_Q_DESC, (uint64_t)(uintptr_t)descs);
	w64(C_Q_DRIVER, (uint64_t)(uintptr_t)&avail);
	w64(C_Q_DEVICE, (uint64_t)(uintptr_t)&used);
	notify += (uint64_t)c16(C_Q_NOTIFY_OFF) * notify_mult;
	w16(C_Q_ENABLE, 1);
	w8(C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	return NULL;
}

static bool set_vector(int v)
{
	w16(C_Q_MSIX, (uint16_t)v);
	return c16(C_Q_MSIX) == v;
}

int main(void)
{
	acpi_init();
	if (!acpi.pm_tmr_port) {
		printf("msix: no ACPI PM timer\n");
		return FAIL;
	}
	lapic_init(false);
	pic_disable();
	pm_start();

	slot = msix = -1;
	slot = pci_find(VENDOR, DEVICE);
	if (slot < 0) {
		printf("msix: no %04x:%04x device on bus 0\n", VENDOR, DEVICE);
		return FAIL;
	}
	const char *err = setup();
	printf("msix: found slot=%d common=%#llx notify=%#llx table=%#llx pba=%#llx queue=%u\n", slot,
	       (unsigned long long)common, (unsigned long long)notify, (unsigned long long)table, (unsigned long long)pba,
	       qsize);
	if (err) {
		printf("msix: %s\n", err);
		return FAIL;
	}
	for (int v = 0; v < 2; v++) {
		mmio_write32(table + 16u * v, 0xFEE00000u | lapic_id() << 12);
		mmio_write32(table + 16u * v + 4, 0);
		mmio_write32(table + 16u * v + 8, VEC_BASE + v);
		mask_vector(v, false);
	}
	set_handler(VEC_BASE, isr0);
	set_handler(VEC_BASE + 1, isr1);
	mask_function(false);
	/* TCG QEMU keeps an ExtINT request SeaBIOS left on LINT0 after
	 * lapic_init masked it, until the LAPIC is next written; this write
	 * drops it (it changes nothing elsewhere). */
	lapic_write(LAPIC_TPR, 0);
	sti();
	pm_wait_us(20000); /* nothing may arrive before the first request */
	uint32_t early = recv[0] + recv[1];
	if (early)
		printf("msix: %u interrupts (vector 0: %u, 1: %u) before any request\n", early, recv[0], recv[1]);
	/* want[v] is what vector v must have received once its last request
	 * was answered; early ones are not counted again as extra. */
	uint32_t want[2] = {recv[0], recv[1]}, extra = 0;

	uint32_t n = (uint32_t)cmdline_u64("n", 1000), k = (uint32_t)cmdline_u64("k", 8);
	uint64_t twait = cmdline_u64("twait", 20000);
	if (k < 4)
		k = 4;
	uint32_t sent = 0, masked = 0, pbaset = 0, coalesced = 0, races = 0, leaks = 0, stuck = 0, lost = 0, windows = 0;
	uint64_t t0 = pm_now();
	for (uint32_t i = 0; i < n; i++) {
		int v = i & 1;
		for (int u = 0; u < 2; u++)
			if (recv[u] > want[u]) {
				printf("msix: request %u: vector %d has %u interrupts more than its requests; its last was request %u, %s\n",
				       i, u, recv[u] - want[u], last_req[u], kind[u]);
				extra += recv[u] - want[u];
				want[u] = recv[u];
			}
		uint32_t before = recv[v];
		uint32_t step = i % k;
		want[v]++;
		last_req[v] = i;
		if (!set_vector(v)) {
			printf("msix: request %u: the device refused MSI-X vector %d\n", i, v);
			return FAIL;
		}
		if (step == k - 1) {
			bool fn = windows % 2 == 1, twice = windows % 3 == 2;
			windows++;
			kind[v] = fn ? (twice ? "two under the function mask" : "one under the function mask")
				     : (twice ? "two under the vector mask" : "one under the vector mask");
			if (fn)
				mask_function(true);
			else
				mask_vector(v, true);
			request();
			sent++;
			masked++;
			if (!wait_used(2000))
				printf("msix: request %u: the device never answered\n", i);
			if (wait_pba(v, 2000))
				pbaset++;
			else
				printf("msix: request %u: masked vector %d's PBA bit never read 1\n", i, v);
			if (twice) {
				request();
				wait_used(2000);
				pm_wait_us(twait); /* for its message to reach the VMM */
				coalesced++;
			}
			if (pba_bit(v ^ 1)) {
				printf("msix: request %u: vector %d's PBA bit is set, nothing was pending\n", i, v ^ 1);
				stuck++;
			}
			if (recv[v] != before) {
				printf("msix: request %u: %u arrived under the %s mask\n", i, recv[v] - before, fn ? "function" : "vector");
				leaks++;
			}
			if (fn)
				mask_function(false);
			else
				mask_vector(v, false);
			if (pba_bit(v)) {
				printf("msix: request %u: vector %d's PBA bit still set after the unmask\n", i, v);
				stuck++;
			}
		} else if (step == k / 2) {
			kind[v] = "a mask race";
			request();
			mask_vector(v, true);
			mask_vector(v, false);
			sent++;
			races++;
		} else {
			kind[v] = "plain";
			request();
			sent++;
		}
		if (!wait_recv(v, before + 1, 2000)) {
			printf("msix: request %u: no interrupt on vector %d (used %u of %u)\n", i, v, used.idx, avail_idx);
			lost++;
			recv[v] = before + 1; /* go on counting the rest */
		}
	}
	uint64_t t1 = pm_now();
	pm_wait_us(50000); /* nothing more may arrive */
	cli();
	for (int u = 0; u < 2; u++)
		if (recv[u] > want[u]) {
			printf("msix: at the end: vector %d has %u interrupts more than its requests; its last was request %u, %s\n", u,
			       recv[u] - want[u], last_req[u], kind[u]);
			extra += recv[u] - want[u];
		}
	uint32_t got = recv[0] + recv[1] - lost - early;
	uint64_t us = (t1 - t0) * 1000000 / PM_HZ;
	printf("msix: n=%u sent=%u recv=%u masked=%u pba=%u coalesced=%u races=%u leaks=%u stuck=%u lost=%u early=%u extra=%u "
	       "used=%u us_per_irq=%llu\n",
	       n, sent, got, masked, pbaset, coalesced, races, leaks, stuck, lost, early, extra, used.idx,
	       (unsigned long long)(n ? us / n : 0));
	bool fail = sent != n || got != sent || pbaset != masked || leaks || stuck || lost || early || extra;
	printf("msix: %s\n", fail ? "FAIL" : "PASS");
	return fail ? FAIL : OK;
}
