/*
 * mtty: a bare-metal guest for Linux's sample mediated device mtty
 * (samples/vfio-mdev/mtty.c: a virtual 16550 whose transmitter loops back
 * into its receive FIFO, PCI 4348:3253, one I/O BAR of 8 ports), passed
 * through with VFIO (--device vfio=/sys/bus/mdev/devices/UUID). It proves
 * that the device's state moves with a snapshot or a live migration:
 *
 *   mtty: found slot=S bar0=PORT            the function on bus 0, I/O on
 *   mtty: wrote n=N lsr=L                   N pattern bytes into THR with
 *                                           the FIFO on (they wait in the
 *                                           receive FIFO; LSR.DR set)
 *   mtty: waiting                           until a byte on the console:
 *                                           the host snapshots or migrates
 *                                           the VM meanwhile, then sends it
 *   mtty: read n=N lsr=L bytes=HEX match=M  the receive FIFO read back,
 *                                           LSR before each byte
 *   mtty: PASS | FAIL
 *
 * Without the device's state the FIFO of the destination's device is
 * empty (LSR.DR clear) and the guest fails. Cmdline: n=N bytes (1-15,
 * default 15), seed=S varies the pattern. mtty keeps 16 bytes, but its
 * FIFO is a ring whose head and tail are equal both empty and full, and
 * it tests only those for LSR.DR and for a read: a 16th byte would hide
 * the other 15. Exit through the debug-exit
 * port: MTTY_OK (0x10, status 33) or MTTY_FAIL (0x11, status 35).
 */
#include "lib.h"

#define MTTY_OK 0x10
#define MTTY_FAIL 0x11

#define MTTY_VENDOR 0x4348
#define MTTY_DEVICE 0x3253

#define UART_RX 0
#define UART_TX 0
#define UART_FCR 2
#define UART_LCR 3
#define UART_LSR 5
#define LSR_DR 0x01

static uint8_t pattern(uint32_t seed, uint32_t i) { return (uint8_t)(0x41 + (seed * 7 + i * 13) % 61); }

int main(void)
{
	int slot = pci_find(MTTY_VENDOR, MTTY_DEVICE);
	if (slot < 0) {
		printf("mtty: no 4348:3253 device on bus 0\n");
		return MTTY_FAIL;
	}
	uint32_t b0 = pci_read32(slot, 0x10);
	uint16_t port = (uint16_t)(b0 & ~3u);
	if (!(b0 & 1) || port == 0) {
		printf("mtty: BAR0 %#x is not a placed I/O BAR\n", b0);
		return MTTY_FAIL;
	}
	pci_write16(slot, 0x04, (uint16_t)((pci_read32(slot, 0x04) & 0xffff) | 0x1)); /* I/O decode */
	printf("mtty: found slot=%d bar0=%#x\n", slot, port);

	uint32_t n = (uint32_t)cmdline_u64("n", 15), seed = (uint32_t)cmdline_u64("seed", 1);
	if (n < 1 || n > 15)
		n = 15;
	outb(port + UART_LCR, 0x03);        /* 8N1, DLAB off */
	outb(port + UART_FCR, 0x07);        /* FIFO on (16 bytes), both cleared */
	if (inb(port + UART_LSR) & LSR_DR) {
		printf("mtty: the receive FIFO is not empty after a clear\n");
		return MTTY_FAIL;
	}
	for (uint32_t i = 0; i < n; i++)
		outb(port + UART_TX, pattern(seed, i));
	uint8_t lsr = inb(port + UART_LSR);
	printf("mtty: wrote n=%u lsr=%#x\n", n, lsr);
	if (!(lsr & LSR_DR)) {
		printf("mtty: FAIL (nothing looped back)\n");
		return MTTY_FAIL;
	}

	printf("mtty: waiting\n");
	int c;
	while ((c = serial_getc()) < 0)
		for (int i = 0; i < 2000; i++)
			pause();

	char hex[2 * 16 + 1];
	uint32_t got = 0, match = 0;
	uint8_t first = inb(port + UART_LSR);
	for (uint32_t i = 0; i < 16; i++) {
		if (!(inb(port + UART_LSR) & LSR_DR))
			break;
		uint8_t b = inb(port + UART_RX);
		snprintf(hex + 2 * i, 3, "%02x", b);
		if (i < n && b == pattern(seed, i))
			match++;
		got++;
	}
	hex[2 * got] = 0;
	bool ok = got == n && match == n;
	printf("mtty: read n=%u lsr=%#x bytes=%s match=%u\n", got, first, got ? hex : "-", match);
	printf("mtty: %s\n", ok ? "PASS" : "FAIL");
	return ok ? MTTY_OK : MTTY_FAIL;
}
