/* tg.h: what the testguest scenarios share (on top of guests/lib). */
#ifndef TESTGUEST_TG_H
#define TESTGUEST_TG_H

#include "lib.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* Exit values (debug exit; process exit status (v<<1)|1). */
#define TG_OK 0x10   /* status 33 */
#define TG_FAIL 0x11 /* status 35 */

/* tg_fmthex writes "0x..." (lower case, no leading zeros) into b. */
static inline void tg_fmthex(char b[19], u64 v) { snprintf(b, 19, "0x%lx", (unsigned long)v); }

/* mmio.c */
void mmio_cpl0_pass(u64 base, const char *only, int all);
void mmio_cpl3_pass(u64 base, const char *only, int have_avx);
int mmio_mismatches(void);
void mmio_flush(void); /* CPL0: write the report formatted at CPL3 */
/* pio.c */
int pio_run(const char *pass);
/* memwrite.c */
int t_memwrite(void);

#endif
