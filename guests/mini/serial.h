/*
 * mini/serial.h is the console of the guests that run without guests/lib
 * (elf64, which the ELF64 loader enters directly in long mode, and mblow,
 * which stays in 32-bit protected mode): port I/O, COM1 output and hex
 * numbers, in static functions that build for either mode.
 */
#ifndef MINI_SERIAL_H
#define MINI_SERIAL_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void putc(char c)
{
	/* Wait for THRE, but never forever: a UART that never drains must not hang us. */
	for (int i = 0; i < 1000 && !(inb(COM1 + 5) & 0x20); i++)
		;
	outb(COM1, (u8)c);
}

static inline void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc('\r');
		putc(*s);
	}
}

static inline void puthex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	puts(&buf[i]);
}

#endif
