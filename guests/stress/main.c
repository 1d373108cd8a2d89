/*
 * stress hammers the VMM with the accesses a hostile guest can make at no
 * cost to itself: port I/O to random ports and MMIO to addresses no device
 * backs, each one an exit the VMM must serve. It exists to show that the
 * VMM's memory stays bounded however many distinct addresses a guest
 * touches (the bus remembers a fixed number of them) and that the VMM
 * keeps serving its control socket meanwhile (e2e/stress_test.go).
 *
 * Command line (after the kernel's name):
 *   stress.seconds=N  how long to run at least, by the ACPI PM timer
 *                     (default 60)
 *   stress.rounds=R   how many full rounds over the 2^20 addresses to
 *                     finish at least (default 1), so that a slow
 *                     accelerator still touches every one of them
 *   stress.bits=B     distinct MMIO addresses per round: 2^B, B from 1 to 20
 *                     (default 20)
 *   stress.seed=S     the pseudo-random sequence (default 1)
 *
 * Each round touches all 2^B (by default 2^20, 1,048,576) distinct
 * addresses of an 8 MiB stretch of the PCI MMIO window (0xC0000000, where
 * no BAR lies: the guest runs without PCI devices), 8 bytes apart, in a permuted order and with
 * read and write widths of 1, 2, 4 and 8 bytes, interleaved with port
 * reads and writes at random ports of all 65,536. Writes skip the ports
 * that would end or reset the VM or garble the console; reads go
 * anywhere. Every unbacked MMIO read must return all ones.
 *
 * Once a second (PM timer) it prints
 *   stress: t=SECONDS mmio=N pio=M rounds=R
 * and at the end
 *   stress: done seconds=S mmio=N pio=M rounds=R distinct=D bad=B
 * then exits through the debug-exit port with STRESS_OK (status 33), or
 * STRESS_FAIL (status 35) when an unbacked read returned something else.
 */
#include "lib.h"

#define STRESS_OK 0x10
#define STRESS_FAIL 0x11

#define PM_HZ 3579545ULL

#define MMIO_BASE 0xC0000000ULL
#define MMIO_MAX_BITS 20 /* at most 2^20 distinct addresses, 8 bytes apart */

static uint64_t rng_state;

/* xorshift64*: cheap and good enough to scatter ports and widths. */
static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

/* port_writable: whether a write to port p (of width w) leaves the VM
 * running and its console readable: not the debug-exit port, the UART, the
 * i8042 (its 0xFE command resets), the ACPI PM block (PM1a control can
 * power off), the PCI configuration ports and reset control, fast A20
 * (port 0x92 bit 0 resets on a PC) or the PM timer the guest keeps time by. */
static bool port_writable(uint16_t p, int w)
{
	static const struct { uint16_t lo, hi; } deny[] = {
		{0x60, 0x64}, {0x92, 0x92}, {0xf4, 0xf7}, {0x3f8, 0x3ff},
		{0x600, 0x60f}, {0xcf8, 0xcff},
	};
	uint32_t end = (uint32_t)p + (uint32_t)w - 1;
	for (size_t i = 0; i < ARRAY_SIZE(deny); i++)
		if (p <= deny[i].hi && end >= deny[i].lo)
			return false;
	if (acpi.pm1a_cnt && p <= acpi.pm1a_cnt + 1 && end >= acpi.pm1a_cnt)
		return false;
	if (acpi.pm_tmr_port && p <= acpi.pm_tmr_port + 3 && end >= acpi.pm_tmr_port)
		return false;
	return true;
}

static uint64_t pio_ops;

static void port_hammer(void)
{
	uint64_t r = rnd();
	uint16_t p = (uint16_t)r;
	int w = 1 << ((r >> 16) & 3); /* 1, 2, 4 (8 means a read) */
	bool write = (r >> 18) & 1;
	if (w == 8)
		w = 4, write = false;
	if (write && port_writable(p, w)) {
		uint32_t v = (uint32_t)(r >> 32);
		if (w == 1)
			outb(p, (uint8_t)v);
		else if (w == 2)
			outw(p, (uint16_t)v);
		else
			outl(p, v);
	} else if (w == 1) {
		(void)inb(p);
	} else if (w == 2) {
		(void)inw(p);
	} else {
		(void)inl(p);
	}
	pio_ops++;
}

/* mmio_touch accesses address a with width w (1, 2, 4, 8); a read must see
 * all ones. Returns false on a wrong read. */
static bool mmio_touch(uint64_t a, int w, bool write, uint64_t v)
{
	switch (w) {
	case 1:
		if (write)
			*(volatile uint8_t *)a = (uint8_t)v;
		else
			return *(volatile uint8_t *)a == 0xFF;
		break;
	case 2:
		if (write)
			*(volatile uint16_t *)a = (uint16_t)v;
		else
			return *(volatile uint16_t *)a == 0xFFFF;
		break;
	case 4:
		if (write)
			*(volatile uint32_t *)a = (uint32_t)v;
		else
			return *(volatile uint32_t *)a == 0xFFFFFFFFu;
		break;
	default:
		if (write)
			*(volatile uint64_t *)a = v;
		else
			return *(volatile uint64_t *)a == ~0ULL;
	}
	return true;
}

/* clock: PM timer ticks since the first call, widened to 64 bits (call it
 * more often than the timer wraps: 4.7 s for a 24-bit timer). */
static uint64_t clock(void)
{
	static uint32_t last;
	static uint64_t total;
	static bool started;
	uint32_t mask = acpi.pm_tmr_32bit ? 0xFFFFFFFFu : 0xFFFFFFu;
	uint32_t now = pmtimer_read();
	if (started)
		total += (now - last) & mask;
	last = now, started = true;
	return total;
}

int main(void)
{
	cli();
	acpi_init();
	if (!acpi.pm_tmr_port) {
		printf("stress: no ACPI PM timer to keep time by\n");
		return STRESS_FAIL;
	}
	uint64_t seconds = cmdline_u64("stress.seconds", 60), min_rounds = cmdline_u64("stress.rounds", 1);
	uint64_t bits = cmdline_u64("stress.bits", MMIO_MAX_BITS);
	if (bits < 1 || bits > MMIO_MAX_BITS) {
		printf("stress: stress.bits=%llu is not within 1..%d\n", (unsigned long long)bits, MMIO_MAX_BITS);
		return STRESS_FAIL;
	}
	const uint64_t naddr = 1ULL << bits;
	rng_state = cmdline_u64("stress.seed", 1) * 0x9E3779B97F4A7C15ULL | 1;
	/* An odd multiplier and an offset permute 0..2^B-1: every round
	 * touches every address once, in a scattered order. */
	uint64_t mul = (rnd() | 1) & (naddr - 1), add = rnd() & (naddr - 1);
	printf("stress: start seconds=%llu mmio=[%#llx,%#llx) distinct=%llu\n", (unsigned long long)seconds,
	       (unsigned long long)MMIO_BASE, (unsigned long long)(MMIO_BASE + 8 * naddr),
	       (unsigned long long)naddr);

	uint64_t end = seconds * PM_HZ, next = PM_HZ, now = clock();
	uint64_t mmio_ops = 0, rounds = 0, bad = 0, distinct = 0, i = 0;
	while (now < end || rounds < min_rounds) {
		uint64_t r = rnd();
		uint64_t idx = (i * mul + add) & (naddr - 1);
		int w = 1 << (r & 3);
		uint64_t a = MMIO_BASE + idx * 8;
		if (!mmio_touch(a, w, (r >> 2) & 1, r >> 8) && bad++ < 5)
			printf("stress: unbacked %d-byte read at %#llx is not all ones\n", w, (unsigned long long)a);
		mmio_ops++;
		if (rounds == 0)
			distinct++;
		if (++i == naddr)
			i = 0, rounds++;
		if ((r >> 3 & 3) == 0) /* a port access for every four MMIO accesses */
			port_hammer();
		if ((mmio_ops & 255) == 0) {
			now = clock();
			if (now >= next) {
				printf("stress: t=%llu mmio=%llu pio=%llu rounds=%llu\n", (unsigned long long)(now / PM_HZ),
				       (unsigned long long)mmio_ops, (unsigned long long)pio_ops, (unsigned long long)rounds);
				next += PM_HZ;
			}
		}
	}
	printf("stress: done seconds=%llu mmio=%llu pio=%llu rounds=%llu distinct=%llu bad=%llu\n",
	       (unsigned long long)(now / PM_HZ), (unsigned long long)mmio_ops, (unsigned long long)pio_ops,
	       (unsigned long long)rounds, (unsigned long long)distinct, (unsigned long long)bad);
	return bad ? STRESS_FAIL : STRESS_OK;
}
