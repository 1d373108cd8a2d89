/* string.h: the freestanding string and number routines of string.c,
 * shared by the x86-64 guests (lib.h) and the arm64 probe. */
#ifndef GUEST_STRING_H
#define GUEST_STRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strncpy_z(char *d, const char *s, size_t n); /* always NUL-terminates */
/* parse_u64: decimal, or hex with 0x; returns false on junk or overflow. */
bool parse_u64(const char *s, uint64_t *out);
bool parse_hex(const char *s, uint64_t *out); /* hex with or without 0x */

#endif
