/* console.c: the 16550 serial console (polled output, polled or
 * interrupt-driven input) and a small printf. */
#include "lib.h"

#define COM1 0x3F8
#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20

spinlock_t print_lock;
volatile uint64_t serial_rx_irqs;
static bool fifo;
static int tx_credit;
static bool rx_irq;
static volatile uint8_t rx_ring[256];
static volatile uint32_t rx_head, rx_tail;

void serial_init(void)
{
	outb(COM1 + 1, 0x00);  /* IER: no interrupts */
	outb(COM1 + 3, 0x80);  /* DLAB */
	outb(COM1 + 0, 0x01);  /* 115200 */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);  /* 8N1 */
	outb(COM1 + 2, 0x07);  /* FIFO on, clear both */
	outb(COM1 + 4, 0x0B);  /* DTR | RTS | OUT2 */
	fifo = (inb(COM1 + 2) & 0xC0) == 0xC0;
	tx_credit = 0;
}

static void raw_putc(char c)
{
	if (tx_credit <= 0) {
		/* Bounded wait: a missing UART reads 0xFF (THRE set). */
		for (int i = 0; i < 100000 && !(inb(COM1 + 5) & UART_LSR_THRE); i++)
			pause();
		tx_credit = fifo ? 16 : 1;
	}
	outb(COM1, (uint8_t)c);
	tx_credit--;
}

void putc(char c)
{
	if (c == '\n')
		raw_putc('\r');
	raw_putc(c);
}

void serial_write(const char *s, size_t n)
{
	if (cpl() == 3) {
		sys_call(SYS_WRITE, (uint64_t)s, n, 0);
		return;
	}
	uint64_t fl = read_flags();
	cli();
	spin_lock(&print_lock);
	for (size_t i = 0; i < n; i++)
		putc(s[i]);
	spin_unlock(&print_lock);
	if (fl & 0x200)
		sti();
}

void puts(const char *s)
{
	serial_write(s, strlen(s));
}

/* ---- formatting ---- */

struct out {
	char *buf; /* NULL: console */
	size_t n, pos;
	char ubuf[128]; /* CPL3 console output, flushed through SYS_WRITE */
	size_t ulen;
	bool user;
};

static void uflush(struct out *o)
{
	if (o->ulen)
		sys_call(SYS_WRITE, (uint64_t)o->ubuf, o->ulen, 0);
	o->ulen = 0;
}

static void emit(struct out *o, char c)
{
	if (o->buf) {
		if (o->pos + 1 < o->n)
			o->buf[o->pos] = c;
	} else if (o->user) {
		if (o->ulen == sizeof(o->ubuf))
			uflush(o);
		o->ubuf[o->ulen++] = c;
	} else {
		putc(c);
	}
	o->pos++;
}

static void emit_num(struct out *o, uint64_t v, int base, bool upper, bool neg, int width, bool zero, bool left)
{
	char tmp[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0;
	do {
		tmp[n++] = digits[v % (unsigned)base];
		v /= (unsigned)base;
	} while (v);
	int len = n + (neg ? 1 : 0);
	if (neg && zero)
		emit(o, '-');
	if (!left)
		for (; width > len; width--)
			emit(o, zero ? '0' : ' ');
	if (neg && !zero)
		emit(o, '-');
	while (n)
		emit(o, tmp[--n]);
	if (left)
		for (; width > len; width--)
			emit(o, ' ');
}

static int format(struct out *o, const char *f, va_list ap)
{
	for (; *f; f++) {
		if (*f != '%') {
			emit(o, *f);
			continue;
		}
		f++;
		bool zero = false, left = false, alt = false;
		for (;; f++) {
			if (*f == '0')
				zero = true;
			else if (*f == '-')
				left = true;
			else if (*f == '#')
				alt = true;
			else
				break;
		}
		int width = 0;
		if (*f == '*') {
			width = va_arg(ap, int);
			f++;
		}
		while (*f >= '0' && *f <= '9')
			width = width * 10 + (*f++ - '0');
		int prec = -1;
		if (*f == '.') {
			f++;
			prec = 0;
			if (*f == '*') {
				prec = va_arg(ap, int);
				f++;
			}
			while (*f >= '0' && *f <= '9')
				prec = prec * 10 + (*f++ - '0');
		}
		int lng = 0;
		while (*f == 'l' || *f == 'z') {
			lng++;
			f++;
		}
		if (left)
			zero = false;
		switch (*f) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			emit_num(o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, false, v < 0, width, zero, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
			if (alt && *f != 'u') {
				emit(o, '0');
				emit(o, 'x');
				width = width > 2 ? width - 2 : 0;
			}
			emit_num(o, v, *f == 'u' ? 10 : 16, *f == 'X', false, width, zero, left);
			break;
		}
		case 'p':
			emit(o, '0');
			emit(o, 'x');
			emit_num(o, (uint64_t)va_arg(ap, void *), 16, false, false, width > 2 ? width - 2 : 0, zero, left);
			break;
		case 'c': {
			char c = (char)va_arg(ap, int);
			if (!left)
				for (int w = width; w > 1; w--)
					emit(o, ' ');
			emit(o, c);
			if (left)
				for (int w = width; w > 1; w--)
					emit(o, ' ');
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			int len = 0;
			while (s[len] && (prec < 0 || len < prec))
				len++;
			if (!left)
				for (int w = width; w > len; w--)
					emit(o, ' ');
			for (int i = 0; i < len; i++)
				emit(o, s[i]);
			if (left)
				for (int w = width; w > len; w--)
					emit(o, ' ');
			break;
		}
		case '%':
			emit(o, '%');
			break;
		case 0:
			f--;
			break;
		default:
			emit(o, '%');
			emit(o, *f);
		}
	}
	return (int)o->pos;
}

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct out o = {.buf = buf, .n = n};
	int r = format(&o, fmt, ap);
	if (n)
		buf[o.pos < n ? o.pos : n - 1] = 0;
	return r;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

int vprintf(const char *fmt, va_list ap)
{
	struct out o = {.user = cpl() == 3};
	if (o.user) {
		/* Port I/O and cli are not reliable at CPL3 (IOPL is not honoured
		 * on every KVM): format here, write in the kernel. */
		int r = format(&o, fmt, ap);
		uflush(&o);
		return r;
	}
	uint64_t fl = read_flags();
	cli();
	spin_lock(&print_lock);
	int r = format(&o, fmt, ap);
	spin_unlock(&print_lock);
	if (fl & 0x200)
		sti();
	return r;
}

int printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vprintf(fmt, ap);
	va_end(ap);
	return r;
}

/* ---- input ---- */

static void serial_isr(struct regs *r)
{
	(void)r;
	serial_rx_irqs++;
	for (int i = 0; i < 64 && (inb(COM1 + 5) & UART_LSR_DR); i++) {
		uint8_t c = inb(COM1);
		uint32_t h = rx_head;
		if (h - rx_tail < sizeof(rx_ring)) {
			rx_ring[h % sizeof(rx_ring)] = c;
			__atomic_store_n(&rx_head, h + 1, __ATOMIC_RELEASE);
		}
	}
	(void)inb(COM1 + 2); /* IIR: acknowledge */
	lapic_eoi();
}

bool serial_irq_enable(uint8_t vector)
{
	if (!acpi.has_ioapic)
		return false;
	uint16_t flags;
	uint32_t gsi = acpi_isa_gsi(4, &flags);
	set_handler(vector, serial_isr);
	rx_irq = true;
	while (inb(COM1 + 5) & UART_LSR_DR) /* drain */
		(void)inb(COM1);
	ioapic_route(gsi, vector, lapic_id(), flags);
	outb(COM1 + 4, 0x0B);
	outb(COM1 + 1, 0x01); /* IER: received data available */
	return true;
}

int serial_getc(void)
{
	if (rx_irq) {
		uint32_t t = rx_tail;
		if (t == __atomic_load_n(&rx_head, __ATOMIC_ACQUIRE))
			return -1;
		int c = rx_ring[t % sizeof(rx_ring)];
		rx_tail = t + 1;
		return c;
	}
	uint8_t lsr;
	if (cpl() == 3)
		return (int)sys_call(SYS_GETC, 0, 0, 0);
	lsr = inb(COM1 + 5);
	if (lsr != 0xFF && (lsr & UART_LSR_DR))
		return inb(COM1);
	return -1;
}
