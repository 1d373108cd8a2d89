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
 *   stress.rounds=R   how many full rounds over the 2^B addresses to
 *                     finish at least (default 1), so that a slow
 *                     accelerator still touches every one of them
 *   stress.bits=B     distinct MMIO addresses per round: 2^B, B from 1 to 20
 *                     (default 20)
 *   stress.seed=S     the pseudo-random sequence (default 1)
 *
 * Each round touches all 2^B (by default 2^20, 1,048,576) distinct
 * addresses of an 8 MiB stretch of the PCI MMIO window (0xC0000000, where
 * no BAR lies: the guest runs without PCI devices), 8 MiB / 2^B bytes apart
 * (8 bytes for B=20), so that every B covers all 2,048 pages of the
 * stretch; in a permuted order and with read and write widths of 1, 2, 4
 * and 8 bytes, interleaved with port reads and writes at random ports of
 * all 65,536. Writes skip the ports that would end or reset the VM or
 * garble the console; reads go anywhere. Every unbacked MMIO read must
 * return all ones.
 *
 * What the guest does to the machine's devices is on the console: every
 * port write whose first port is a legacy PC port (0x00-0xFF and the ELCR
 * at 0x4D0-0x4D1, where the PIC, PIT, RTC, POST and speaker ports are) is
 * printed as
 *   stress: out #N port=P w=W v=V
 * (N counts port accesses), a few hundred lines in a round of 2^20. An
 * exception prints its vector, RIP, error code, CR2 and the last accesses
 * made before it, so that a fault names what led to it.
 *
 * Once a second (PM timer) it prints
 *   stress: t=SECONDS mmio=N pio=M rounds=R
 * and at the end
 *   stress: done seconds=S mmio=N pio=M rounds=R distinct=D bad=B
 * then exits through the debug-exit port with STRESS_OK (status 33), or
 * STRESS_FAIL (status 35) when an unbacked read returned something else.
 *
 * The guest runs with interrupts disabled from its first instruction to
 * its exit: a random write may reprogram the PIC, the PIT or the RTC to
 * raise any vector at any rate, and none of it is delivered. The vectors
 * that ignore IF have nothing to raise them here: NMI comes only through
 * LINT1 or an IOAPIC or MSI route, which this guest never writes (the LAPIC
 * and the IOAPIC lie outside the stretch it hammers), and the machine has
 * no SMI source. Exceptions are handled (printed, see above). The page
 * tables, GDT, IDT and stacks are in RAM below 64 MiB, which nothing the
 * guest touches aliases (no device that could write guest memory is
 * present).
 */
#include "lib.h"

#define STRESS_OK 0x10
#define STRESS_FAIL 0x11


#define MMIO_BASE 0xC0000000ULL
#define MMIO_SPAN (8ULL << 20) /* the stretch of the MMIO window hammered */
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

static uint64_t pio_ops, mmio_ops;

/* The last accesses, for the exception report. */
#define RING 16
static struct access {
	uint64_t n;    /* mmio_ops or pio_ops at the access */
	uint64_t addr; /* port or MMIO address */
	uint64_t val;  /* the value written */
	uint8_t w, write, pio;
} ring[RING];
static unsigned ring_next;

static inline void note(bool pio, uint64_t addr, int w, bool write, uint64_t v)
{
	struct access *a = &ring[ring_next++ % RING];
	a->n = pio ? pio_ops : mmio_ops;
	a->addr = addr, a->val = write ? v : 0;
	a->w = (uint8_t)w, a->write = write, a->pio = pio;
}

/* legacy_port: whether port p is a legacy PC port whose writes are printed. */
static bool legacy_port(uint16_t p)
{
	return p < 0x100 || p == 0x4d0 || p == 0x4d1;
}

static void port_hammer(void)
{
	uint64_t r = rnd();
	uint16_t p = (uint16_t)r;
	int w = 1 << ((r >> 16) & 3); /* 1, 2, 4 (8 means a read) */
	bool write = (r >> 18) & 1;
	if (w == 8)
		w = 4, write = false;
	if (write && !port_writable(p, w))
		write = false;
	uint32_t v = (uint32_t)(r >> 32);
	if (w < 4)
		v &= (1u << (8 * w)) - 1;
	note(true, p, w, write, v);
	if (write) {
		if (legacy_port(p))
			printf("stress: out #%llu port=%#x w=%d v=%#x\n", (unsigned long long)pio_ops, p, w, v);
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

static const char *const exc_name[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "?",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "?", "?", "?", "?", "?", "?", "#HV", "#VC", "#SX", "?",
};

/* on_exception replaces the library's report of vectors 0-31: the same
 * line, then the accesses that came before it, oldest first. */
static void on_exception(struct regs *r)
{
	print_lock.v = 0; /* the faulting code may hold it */
	printf("\nEXCEPTION %lu (%s) error=%#lx rip=%#lx cs=%#lx rflags=%#lx rsp=%#lx cr2=%#lx\n", r->vector,
	       exc_name[r->vector & 31], r->error, r->rip, r->cs, r->rflags, r->rsp, READ_CR(2));
	printf("stress: after mmio=%llu pio=%llu; the last accesses, oldest first:\n", (unsigned long long)mmio_ops,
	       (unsigned long long)pio_ops);
	for (unsigned k = 0; k < RING; k++) {
		const struct access *a = &ring[(ring_next + k) % RING];
		if (!a->w)
			continue;
		printf("stress:   %s #%llu %s %#llx w=%u", a->pio ? "pio" : "mmio", (unsigned long long)a->n,
		       a->write ? "write" : "read", (unsigned long long)a->addr, a->w);
		if (a->write)
			printf(" v=%#llx", (unsigned long long)a->val);
		printf("\n");
	}
	debug_exit((uint8_t)(EXIT_EXCEPTION + r->vector));
}

int main(void)
{
	cli();
	for (int v = 0; v < 32; v++)
		set_handler(v, on_exception);
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
	const uint64_t naddr = 1ULL << bits, stride = MMIO_SPAN >> bits;
	rng_state = cmdline_u64("stress.seed", 1) * 0x9E3779B97F4A7C15ULL | 1;
	/* An odd multiplier and an offset permute 0..2^B-1: every round
	 * touches every address once, in a scattered order. */
	uint64_t mul = (rnd() | 1) & (naddr - 1), add = rnd() & (naddr - 1);
	printf("stress: start seconds=%llu mmio=[%#llx,%#llx) distinct=%llu stride=%llu\n", (unsigned long long)seconds,
	       (unsigned long long)MMIO_BASE, (unsigned long long)(MMIO_BASE + MMIO_SPAN), (unsigned long long)naddr,
	       (unsigned long long)stride);

	uint64_t end = seconds * PM_HZ, next = PM_HZ, now = clock();
	uint64_t rounds = 0, bad = 0, distinct = 0, i = 0;
	while (now < end || rounds < min_rounds) {
		uint64_t r = rnd();
		uint64_t idx = (i * mul + add) & (naddr - 1);
		int w = 1 << (r & 3);
		uint64_t a = MMIO_BASE + idx * stride;
		bool write = (r >> 2) & 1;
		note(false, a, w, write, w == 8 ? r >> 8 : (r >> 8) & ((1ULL << (8 * w)) - 1));
		if (!mmio_touch(a, w, write, r >> 8) && bad++ < 5)
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
