/* probe.h: the arm64 probe guest's shared declarations. See README.md. */
#ifndef ARM64PROBE_H
#define ARM64PROBE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_CPUS 64 /* as in start.S */
#define MAX_MEM 8
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define STR1(x) #x
#define STR(x) STR1(x)
#define read_sysreg(r) ({ uint64_t __v; __asm__ volatile("mrs %0, " STR(r) : "=r"(__v)); __v; })
#define write_sysreg(r, v) __asm__ volatile("msr " STR(r) ", %0" : : "r"((uint64_t)(v)))
#define isb() __asm__ volatile("isb" ::: "memory")
#define dsb() __asm__ volatile("dsb sy" ::: "memory")
#define wfi() __asm__ volatile("wfi" ::: "memory")
#define irq_on() __asm__ volatile("msr daifclr, #2" ::: "memory")
#define irq_off() __asm__ volatile("msr daifset, #2" ::: "memory")

static inline uint32_t rd32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void wr32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint64_t rd64(uint64_t a) { return *(volatile uint64_t *)a; }
static inline void wr64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

/* lib.c and ../lib/string.c (fdt_host.c, which runs fdt.c on the build
 * host, defines PROBE_HOST and uses the host libc instead) */
#ifndef PROBE_HOST
#include "../lib/string.h"
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(__printf__, 3, 4)));
void uart_init(uint64_t base);
void putc_raw(char c);
void puts_raw(const char *s);
void printf(const char *fmt, ...) __attribute__((format(__printf__, 1, 2)));
int uart_getc(void); /* -1 when nothing waits */
int has_word(const char *list, const char *w);
#endif

/* fdt.c: what the probe takes from the device tree. */
struct fdt_info {
	int ok;
	const char *err;
	uint32_t totalsize, version;
	const char *bootargs;
	char stdout_path[128];
	int nmem;
	uint64_t mem_base[MAX_MEM], mem_size[MAX_MEM];
	int ncpus;
	uint64_t cpu_reg[MAX_CPUS];
	char cpu_enable[MAX_CPUS][16];
	int psci_found;
	char psci_compat[96];
	char psci_method[8];
	char gic_compat[48];
	uint64_t gicd_base, gicd_size, gicr_base, gicr_size;
	uint32_t gicr_regions;
	int gic_its;
	int timer_found;
	uint32_t timer_ppi[4];
	uint32_t timer_clock_frequency;
	int uart_found;
	uint64_t uart_base;
	uint32_t uart_spi; /* 0xffffffff: none */
	char uart_path[128];
	char model[64];
};
int fdt_parse(const void *blob, uint32_t maxsize, struct fdt_info *fi);
int fdt_bootarg(const char *bootargs, const char *key, char *val, size_t n);

/* main.c */
struct smccc_res { uint64_t a0, a1, a2, a3; };
uint64_t hvc_call(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3, struct smccc_res *res);
uint64_t smc_call(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3, struct smccc_res *res);
uint64_t psci(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3);
void power_off(void) __attribute__((noreturn));
uint64_t counter(void);
void delay_ms(uint64_t ms);

struct cpu_mailbox {
	volatile uint64_t started, mpidr, midr, el, cntvct;
};

struct idreg {
	const char *name;
	uint64_t val;
};

struct probe {
	uint64_t dtb, base, el;
	struct fdt_info fdt;
	char mode[16];
	uint64_t calib_ms, timer_ms, mark_ms;
	int smp;
	struct idreg id[16];
	int nid;
	char features[512];
	uint64_t cntfrq, vct_delta, pct_delta, calib_ticks;
	int counter_ok;
	/* GIC */
	uint32_t gicd_pidr2, gicd_typer, gicd_iidr, gic_arch;
	uint64_t gicr_typer0;
	int nredist;
	int my_redist;
	uint32_t icc_sre;
	/* timer interrupt */
	uint32_t timer_intid;
	int timer_irqs, timer_early, timer_wrong_status;
	uint64_t timer_lat_min, timer_lat_max, timer_lat_sum;
	uint64_t spurious, other_irqs;
	/* PSCI */
	int conduit_smc;
	uint64_t psci_version, smccc_version, hyp_uid[4], migrate_type;
	int64_t psci_feat[12];
	/* CPUs */
	struct cpu_mailbox cpu[MAX_CPUS];
	int64_t cpu_on_rc[MAX_CPUS];
	int64_t cpu_aff_after[MAX_CPUS];
	int cpus_started;
	/* memory */
	uint64_t mem_total;
	int mem_checked, mem_bad;
	/* serial */
	volatile uint64_t rx_irqs;
};
extern struct probe P;
extern const char *const psci_feat_names[12];
extern const uint32_t psci_feat_ids[12];

const char *hyp_name(void);
void decode_features(char *out, size_t n);
const char *pa_range_name(uint64_t mmfr0);
void report(void);
void summary(void);
void tui(void);
void timer_irq_test(int n, uint64_t ms);
uint64_t timer_fired_at(void);
void uart_irq_enable(void);
void tick_start(uint64_t hz);
uint64_t tick_count(void);
int rx_getc(void);

#endif
