/* probe.h: shared state of the probe guest (see probe/README.md). */
#ifndef PROBE_H
#define PROBE_H

#include "lib.h"

#define TIMER_VECTOR 0x30
#define HV_SINT_VECTOR 0x52   /* SINT2: STIMER0's expiry messages */
#define HV_DIRECT_VECTOR 0x53 /* STIMER1 in direct mode */
#define HV_TIMER_SINT 2
#define SERIAL_VECTOR 0x24
#define TIMER_DIVIDE_REG 0x3 /* divide by 16 */
#define TIMER_DIVIDE 16

/* Syscalls the probe adds (lib.h: syscall_register). */
#define SYS_PROBE_MSRLIST (SYS_FIRST_USER + 0) /* a0=&struct msr_val[], a1=n */

/* Everything CPL0 set up, read by the CPL3 code. */
struct probe {
	int mode;           /* MODE_* */
	uint64_t seed;
	uint64_t count;     /* state.counter target */
	uint64_t hz;        /* target tick rate */
	uint64_t wait_ms, repeat;
	bool x2apic_wanted;
	int cpus_started;
	uint64_t lapic_hz;      /* measured, divide by 1 */
	uint64_t tsc_hz_meas;   /* measured against PM timer/PIT */
	uint32_t timer_lvt, timer_init, timer_div; /* as programmed */
	bool serial_irq;
	/* Hyper-V synthetic timers (on a partition that grants the SynIC and
	 * the timers): 0 not started, 1 STIMER0 in message mode, 2 also
	 * STIMER1 in direct mode; -1 an MSR write raised #GP. */
	int hv_timers;
	uint64_t xcr0_set;  /* what XSETBV was given (0: not attempted) */
	int xcr0_rc;
	/* MSR values the guest chose and wrote (index into probe_msrs). */
	uint64_t msr_set[16];
	int msr_set_rc[16];
	/* CPL3-set state. */
	uint16_t fcw;
	uint32_t mxcsr;
	uint64_t xmm[16][2];
};
enum { MODE_SUMMARY, MODE_REPORT, MODE_TUI };
extern struct probe P;
extern volatile uint64_t ticks;
extern volatile uint64_t counter;
/* Hyper-V synthetic timer expiries: STIMER0's messages, STIMER1's direct
 * interrupts, and messages that were not STIMER0's expiry. */
extern volatile uint64_t hv_msg_ticks, hv_direct_ticks, hv_bad_msgs;

struct msr_def {
	uint32_t msr;
	const char *key;  /* report key: msr.<key> */
	bool chosen;      /* the probe writes it at boot */
};
extern const struct msr_def probe_msrs[];
extern const int probe_nmsrs;

struct msr_val { uint32_t msr; int rc; uint64_t val; };

/* user.S: CPL3 FPU/SSE/XSAVE helpers. */
void fpu_set_state(const uint64_t *xmm16x2, uint16_t fcw, uint32_t mxcsr);
void fpu_fxsave(void *area512);
void fpu_xsave(void *area, uint64_t mask);
uint64_t fpu_xgetbv(uint32_t idx);

/* cpu.c: CPUID decoding. */
struct feat_reg { uint32_t leaf, sub; int reg; /* 0 eax..3 edx */ const char *key; const char *const *names; };
extern const struct feat_reg feat_regs[];
extern const int nfeat_regs;
int feat_list(const struct feat_reg *f, char *buf, size_t n);
void cpu_vendor(char out[13]);
void cpu_brand(char out[49]);
void hv_name(char out[13], uint32_t *maxleaf);
void cpu_fms(uint32_t *family, uint32_t *model, uint32_t *stepping);
uint64_t tsc_hz_cpuid(const char **how);
bool hyperv(void);

/* report.c / tui.c (CPL3) */
uint64_t report_main(uint64_t arg);
uint64_t summary_main(uint64_t arg);
uint64_t tui_main(uint64_t arg);

/* main.c helpers usable at CPL3 */
uint64_t msr_read_u(uint32_t msr, int *rc);
uint64_t splitmix(uint64_t *s);
uint64_t uptime_ms(void);
uint32_t lapic_read_u(uint32_t reg);

#endif
