/*
 * lib.h: the freestanding runtime shared by govmm's bare-metal test guests.
 *
 * A guest links entry.S + the lib objects and defines `int main(void)`.
 * lib_start (called from the 64-bit entry on the boot CPU, at CPL0) sets up
 * the serial port, GDT/TSS, IDT, per-CPU data and SSE, parses the Multiboot
 * info, then calls main(); main's return value goes to debug_exit().
 *
 * Remember (see /work/shared/reference/host-kvm.md): CPL0 code is emulated
 * slowly on the project's KVM; heavy work and XSAVE/XGETBV/INT3/CMPXCHG16B
 * belong at CPL3 (user_call). The lib is built with -mgeneral-regs-only so
 * the C code never touches x87/SSE registers; only explicit asm does.
 */
#ifndef GUESTLIB_LIB_H
#define GUESTLIB_LIB_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asm.h"
#include "string.h"

#define NORETURN __attribute__((noreturn))
#define PRINTF_LIKE(a, b) __attribute__((format(printf, a, b)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Exit codes given to debug_exit (port 0xf4; status = (v<<1)|1). ---- */
#define EXIT_PANIC 0x3f          /* panic() */
#define EXIT_EXCEPTION 0x40      /* unhandled exception: 0x40 + vector */
#define EXIT_POWEROFF_FAILED 0x3e /* poweroff() found no working method */

/* ---- The guest's entry point. ---- */
int main(void);

/* ---- Port I/O, MSRs, CPUID, control registers. ---- */
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(uint16_t p, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint16_t inw(uint16_t p) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint32_t inl(uint16_t p) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
/* rdmsr_safe/wrmsr_safe return 0, or -1 if the access raised #GP. CPL0 only. */
int rdmsr_safe(uint32_t msr, uint64_t *val);
int wrmsr_safe(uint32_t msr, uint64_t val);
/* xsetbv_safe: XSETBV at CPL0 (works on the project's KVM); -1 on #GP/#UD. */
int xsetbv_safe(uint32_t xcr, uint64_t val);

struct cpuid_regs { uint32_t eax, ebx, ecx, edx; };
static inline struct cpuid_regs cpuid(uint32_t leaf, uint32_t sub)
{
	struct cpuid_regs r;
	__asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(sub));
	return r;
}
static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}
#define READ_CR(n) ({ uint64_t _v; __asm__ volatile("mov %%cr" #n ", %0" : "=r"(_v)); _v; })
#define WRITE_CR(n, v) __asm__ volatile("mov %0, %%cr" #n ::"r"((uint64_t)(v)) : "memory")
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline uint64_t read_flags(void) { uint64_t f; __asm__ volatile("pushfq; pop %0" : "=r"(f)); return f; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline int cpl(void) { uint16_t cs; __asm__ volatile("mov %%cs, %0" : "=r"(cs)); return cs & 3; }

/* Strings and numbers: string.h. */

/* ---- Spinlocks. ---- */
typedef struct { volatile uint32_t v; } spinlock_t;
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);

/* ---- Serial console (16550 at 0x3f8). ----
 * printf/puts/serial_write/serial_getc work at CPL0 and CPL3: at CPL3 they
 * go through sys_call (IOPL=3 is requested but this KVM does not honour it,
 * so CPL3 port I/O and cli/sti raise #GP). putc is CPL0 only. Output from
 * several CPUs is serialised by print_lock (whole printf calls). */
void serial_init(void);
void putc(char c);                     /* CPL0; '\n' becomes "\r\n" */
void puts(const char *s);              /* no newline appended; locked */
void serial_write(const char *s, size_t n); /* locked; '\n' -> "\r\n" */
int printf(const char *fmt, ...) PRINTF_LIKE(1, 2); /* %d %i %u %x %X %lx %llx %s %c %p %%, width, 0, -, l/ll/z */
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) PRINTF_LIKE(3, 4);
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
/* serial_getc: next received byte or -1. Polls the UART unless
 * serial_irq_enable() succeeded, then reads the interrupt-fed ring. */
int serial_getc(void);
/* Route ISA IRQ4 through the IOAPIC (MADT ISOs applied) to `vector` on the
 * boot CPU and enable the UART's receive interrupt. Needs acpi_init() and
 * lapic_init() first. Returns false if there is no IOAPIC. */
bool serial_irq_enable(uint8_t vector);
extern volatile uint64_t serial_rx_irqs; /* receive interrupts taken */

/* ---- PCI configuration space, bus 0 (pci.c). ---- */
uint32_t pci_read32(int slot, int reg);
void pci_write32(int slot, int reg, uint32_t v);
void pci_write16(int slot, int reg, uint16_t v);
int pci_find(uint16_t vendor, uint16_t device); /* its slot, or -1 */

/* ---- Exit. ---- */
NORETURN void debug_exit(uint8_t v);  /* outb(0xf4, v); then cli;hlt forever */
NORETURN void poweroff(void);         /* ACPI S5 via PM1a_CNT (_S5_ from DSDT), else debug_exit(0) */
NORETURN void panic(const char *fmt, ...) PRINTF_LIKE(1, 2); /* prints, debug_exit(EXIT_PANIC) */

/* ---- Multiboot info (copied at boot, so low memory may be reused). ---- */
#define BOOT_MAX_MMAP 32
#define BOOT_MAX_MODS 4
struct boot_info {
	bool multiboot;          /* EAX held 0x2BADB002 */
	uint32_t flags;
	bool has_mem;
	uint32_t mem_lower_kb, mem_upper_kb;
	char image[256];         /* the command line's first word: the kernel's name */
	char cmdline[1024];      /* the rest: the arguments cmdline_get looks in */
	int nmmap;
	struct { uint64_t base, len; uint32_t type; } mmap[BOOT_MAX_MMAP];
	int nmods;
	struct { uint32_t start, end; char name[64]; } mods[BOOT_MAX_MODS];
};
extern struct boot_info boot;
/* boot_set_cmdline: split a Multiboot command line into boot.image and
 * boot.cmdline. Multiboot loaders (GRUB, QEMU's -kernel, govmm) put the
 * kernel's name first and the arguments after it. */
void boot_set_cmdline(const char *c);
/* cmdline_get: copy the value of key=value (or "" for a bare key) from the
 * kernel command line's arguments (boot.cmdline) into buf; false if the
 * key is absent. */
bool cmdline_get(const char *key, char *buf, size_t n);
uint64_t cmdline_u64(const char *key, uint64_t def); /* def if absent or bad */
uint64_t boot_mem_bytes(void); /* usable RAM: mmap type 1 sum, else (lower+upper) KiB */

/* ---- Interrupts and exceptions. ---- */
struct regs {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*irq_handler_t)(struct regs *r);
/* Handlers for vectors 32..255 (interrupts: the handler sends the EOI).
 * For vectors 0..31 a handler replaces the default "print and exit". */
void set_handler(int vector, irq_handler_t h);
#define SPURIOUS_VECTOR 0xFF

/* ---- CPL3. ---- */
/* user_call runs fn(arg) at CPL3 (RFLAGS.IOPL=3 requested, but on this
 * KVM port I/O and cli/sti still fault at CPL3: use sys_call for them;
 * interrupts stay as enabled by the caller) on this CPU's user stack and returns
 * fn's result. Callable from CPL0 only; a syscall handler may call it once
 * more (nesting depth 2; the inner call gets the bottom 8 KiB of the stack). */
uint64_t user_call(uint64_t (*fn)(uint64_t), uint64_t arg);
/* sys_call, from CPL3: enter CPL0 and run syscall nr. The mechanism is a
 * `ud2` at the symbol sys_call_insn, recognised by the #UD handler (on this
 * KVM `int $0x80` from CPL3 arrives as #UD, and syscall/sysret are not
 * emulated at CPL0); it works on any x86 hypervisor. Also callable at CPL0.
 * Built-in calls are below; guests add their own with syscall_register. */
uint64_t sys_call(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2);
#define SYS_RDMSR 1     /* a0=msr, a1=&value (user memory) -> 0 or -1 */
#define SYS_WRMSR 2     /* a0=msr, a1=value -> 0 or -1 */
#define SYS_WAIT 3      /* sti; hlt; cli: wait for the next interrupt */
#define SYS_LAPIC_READ 4 /* a0=register offset -> value */
#define SYS_LAPIC_WRITE 5 /* a0=register offset, a1=value */
#define SYS_POWEROFF 6
#define SYS_EXIT 7      /* a0=code: debug_exit */
#define SYS_CR 8        /* a0=0/2/3/4 -> CRn */
#define SYS_XSETBV 9    /* a0=xcr index, a1=value -> 0 or -1 */
#define SYS_WRITE 10    /* a0=buf, a1=len: console output */
#define SYS_GETC 11     /* -> serial_getc() at CPL0 */
#define SYS_FIRST_USER 16
#define SYS_MAX 64
typedef uint64_t (*syscall_fn_t)(uint64_t a0, uint64_t a1, uint64_t a2);
void syscall_register(int nr, syscall_fn_t fn);

/* ---- Per-CPU data (reached through GS base; valid at CPL0 and CPL3). ---- */
struct tss {
	uint32_t rsvd0;
	uint64_t rsp0, rsp1, rsp2;
	uint64_t rsvd1;
	uint64_t ist[7];
	uint64_t rsvd2;
	uint16_t rsvd3, iomap_base;
} __attribute__((packed));
struct percpu {
	struct percpu *self;   /* PERCPU_SELF */
	uint64_t ksave;        /* PERCPU_KSAVE */
	struct tss *tss;       /* PERCPU_TSS */
	uint64_t ustack_top;   /* PERCPU_USTACK */
	uint32_t index;        /* 0 = boot CPU */
	uint32_t apic_id;
	uint64_t kstack_top;
	uint32_t udepth;       /* user_call nesting depth */
};
static inline struct percpu *this_cpu(void)
{
	struct percpu *p;
	__asm__ volatile("mov %%gs:0, %0" : "=r"(p));
	return p;
}
static inline uint32_t cpu_index(void) { return this_cpu()->index; }
extern struct percpu percpu[MAX_CPUS];

/* ---- ACPI (RSDP scan of 0xE0000-0xFFFFF, RSDT/XSDT, MADT, FADT). ---- */
struct acpi_info {
	bool found;            /* RSDP found and checksummed */
	uint64_t rsdp;
	int revision;
	char oem_id[7];
	bool has_madt, has_fadt;
	uint64_t lapic_addr;   /* default 0xFEE00000 */
	int ncpus;             /* enabled LAPICs in the MADT (1 without one), at most MAX_CPUS */
	int ncpus_total;       /* enabled LAPICs in the MADT, uncapped */
	uint32_t apic_ids[MAX_CPUS];
	bool has_ioapic;
	uint32_t ioapic_addr, ioapic_gsi_base, ioapic_id;
	int niso;
	struct { uint8_t irq; uint32_t gsi; uint16_t flags; } iso[16];
	uint16_t pm_tmr_port;  /* 0 = none */
	bool pm_tmr_32bit;
	uint16_t pm1a_cnt;     /* 0 = none */
	uint64_t dsdt;
	uint16_t sci_irq;
};
extern struct acpi_info acpi;
bool acpi_init(void); /* fills `acpi` (defaults when absent); true if ACPI was found */
/* ISA IRQ -> GSI and MPS INTI flags (polarity bits 0-1, trigger bits 2-3). */
uint32_t acpi_isa_gsi(int irq, uint16_t *flags);

/* ---- LAPIC (xAPIC MMIO or x2APIC MSRs) and IOAPIC. ---- */
#define LAPIC_ID 0x20
#define LAPIC_VER 0x30
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xB0
#define LAPIC_SVR 0xF0
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3E0
#define X2APIC_MSR(reg) (0x800 + ((reg) >> 4))
/* lapic_init: enable this CPU's LAPIC; x2APIC if want_x2apic and CPUID has it
 * (the boot CPU's choice is reused by the APs). */
void lapic_init(bool want_x2apic);
bool lapic_x2apic(void);
uint32_t lapic_read(uint32_t reg);           /* CPL0 (xAPIC reads also work at CPL3) */
void lapic_write(uint32_t reg, uint32_t v);
void lapic_eoi(void);
uint32_t lapic_id(void);
void lapic_send_ipi(uint32_t apic_id, uint32_t icr_lo);
void pic_disable(void); /* mask both 8259s */
void ioapic_route(uint32_t gsi, uint8_t vector, uint32_t apic_id, uint16_t inti_flags);
void ioapic_mask(uint32_t gsi);
uint32_t ioapic_read(uint32_t reg);

/* ---- Time. ---- */
uint32_t pmtimer_read(void);        /* 0 if no PM timer */
#define PM_HZ 3579545ULL            /* the ACPI PM timer's rate */
/* A 64-bit clock in PM timer ticks since pm_start (read it at least every
 * 4.7 s); pm_ms_from_now is the pm_now value ms from now; pm_wait_us
 * spins for us microseconds with the interrupt flag as it is. */
void pm_start(void);
uint64_t pm_now(void);
uint64_t pm_ms_from_now(uint32_t ms);
void pm_wait_us(uint64_t us);
void udelay(uint32_t us);           /* PM timer if present, else port 0x80 reads */
/* lapic_timer_calibrate: LAPIC timer ticks per second at divide-by-1,
 * measured over `ms` milliseconds against the PM timer (else the PIT). 0 on failure. */
uint64_t lapic_timer_calibrate(uint32_t ms, uint64_t *tsc_hz);

/* ---- SMP. ---- */
/* smp_start: start every enabled CPU of the MADT with INIT/SIPI (one at a
 * time); each runs ap_main(index) at CPL0 with its own stacks, GDT/TSS, IDT
 * and LAPIC. Returns the number of CPUs running, the boot CPU included. */
int smp_start(void (*ap_main)(uint32_t index));
extern volatile int cpus_started;
extern spinlock_t print_lock;

#endif
