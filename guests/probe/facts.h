/* facts.h: state read back by the probe at CPL3 (facts.c). */
#ifndef PROBE_FACTS_H
#define PROBE_FACTS_H
#include "probe.h"

struct fx_st { uint64_t mant; uint16_t exp; uint8_t pad[6]; } __attribute__((packed));
struct fxarea {
	uint16_t fcw, fsw;
	uint8_t ftw, rsvd;
	uint16_t fop;
	uint64_t fip, fdp;
	uint32_t mxcsr, mxcsr_mask;
	struct fx_st st[8];
	uint64_t xmm[16][2];
	uint8_t rest[96];
} __attribute__((packed));
extern struct fxarea fx;

struct timer_regs { uint32_t lvt, init, cur, div; };

void read_fx(void);
uint64_t xsave_mask(void);
bool read_xsave(uint64_t *xstate_bv, uint64_t *xcomp_bv, uint64_t *mask);
bool check_fpu(void);
bool check_xmm(void);
void read_msrs(struct msr_val *vals);
void check_msrs(char *buf, size_t n, struct msr_val *vals);
void read_timer(struct timer_regs *t);
bool check_timer(const struct timer_regs *t);
const char *check_hv_timers(void);
void fmt_st(char *buf, size_t n, const struct fx_st *st);
#endif
