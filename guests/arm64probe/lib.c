/* lib.c: freestanding helpers of the arm64 probe (its string functions
 * and parse_u64 are ../lib/string.c, the x86-64 guests' own): a small
 * vsnprintf (%d %u %x %s %c with 0, -, width and l/ll), and the PL011
 * console whose address the device tree gives. */
#include "probe.h"

struct out {
	char *buf;
	size_t n, len;
};

static void emit(struct out *o, char c)
{
	if (o->len + 1 < o->n)
		o->buf[o->len] = c;
	o->len++;
}

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap)
{
	struct out o = {buf, n, 0};
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			emit(&o, *fmt);
			continue;
		}
		fmt++;
		int zero = 0, left = 0, width = 0, lng = 0;
		for (;; fmt++) {
			if (*fmt == '0')
				zero = 1;
			else if (*fmt == '-')
				left = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			lng++, fmt++;
		char tmp[24];
		const char *s = tmp;
		int len = 0, neg = 0;
		uint64_t v;
		switch (*fmt) {
		case 'd':
			{
				int64_t x = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
				neg = x < 0;
				v = neg ? (uint64_t)-x : (uint64_t)x;
			}
			goto dec;
		case 'u':
			v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
		dec:
			do
				tmp[sizeof(tmp) - 1 - len++] = '0' + v % 10;
			while (v /= 10);
			if (neg)
				tmp[sizeof(tmp) - 1 - len++] = '-';
			s = tmp + sizeof(tmp) - len;
			break;
		case 'x':
			v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
			do
				tmp[sizeof(tmp) - 1 - len++] = "0123456789abcdef"[v & 15];
			while (v >>= 4);
			s = tmp + sizeof(tmp) - len;
			break;
		case 's':
			s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			len = strlen(s);
			break;
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			len = 1;
			break;
		case '%':
			tmp[0] = '%';
			len = 1;
			break;
		default:
			emit(&o, '%');
			if (!*fmt)
				goto done;
			tmp[0] = *fmt;
			len = 1;
			break;
		}
		if (!left)
			for (int i = len; i < width; i++)
				emit(&o, zero ? '0' : ' ');
		for (int i = 0; i < len; i++)
			emit(&o, s[i]);
		if (left)
			for (int i = len; i < width; i++)
				emit(&o, ' ');
	}
done:
	if (n)
		buf[o.len < n ? o.len : n - 1] = 0;
	return (int)o.len;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf, n, fmt, ap);
	va_end(ap);
	return r;
}

/* PL011 registers. */
#define UART_DR 0x00
#define UART_FR 0x18
#define FR_RXFE (1u << 4)
#define FR_TXFF (1u << 5)

static uint64_t uart;

void uart_init(uint64_t base) { uart = base; }

void putc_raw(char c)
{
	if (!uart)
		return;
	for (int i = 0; i < 1000000 && (rd32(uart + UART_FR) & FR_TXFF); i++)
		;
	wr32(uart + UART_DR, (uint8_t)c);
}

void puts_raw(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc_raw('\r');
		putc_raw(*s);
	}
}

void printf(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	puts_raw(buf);
}

int uart_getc(void)
{
	if (!uart || (rd32(uart + UART_FR) & FR_RXFE))
		return -1;
	return rd32(uart + UART_DR) & 0xff;
}

/* has_word: whether the space-separated list holds word w. */
int has_word(const char *list, const char *w)
{
	size_t wl = strlen(w);
	for (const char *p = list; *p;) {
		while (*p == ' ')
			p++;
		const char *s = p;
		while (*p && *p != ' ')
			p++;
		if ((size_t)(p - s) == wl && strncmp(s, w, wl) == 0)
			return 1;
	}
	return 0;
}
