/* boot.c: lib_start (boot CPU setup), per-CPU GDT/TSS, the IDT and trap
 * dispatch, the CPL3 syscall table, Multiboot parsing and the exits. */
#include "lib.h"

extern uint32_t mb_magic, mb_info;
extern uint64_t gdt[];
extern char isr_stub_table[];
extern char sys_call_insn[];
extern char xsetbv_safe_insn[], xsetbv_safe_fixup[];
extern char rdmsr_safe_insn[], rdmsr_safe_fixup[], wrmsr_safe_insn[], wrmsr_safe_fixup[];
NORETURN void user_return_to_kernel(uint64_t val);
uint64_t user_call_on(uint64_t (*fn)(uint64_t), uint64_t arg, uint64_t user_stack_top);

struct boot_info boot;
struct percpu percpu[MAX_CPUS];
static struct tss tss[MAX_CPUS] __attribute__((aligned(64)));
extern uint8_t user_stacks[MAX_CPUS][USER_STACK_SIZE]; /* entry.S, not cleared */
extern uint8_t kernel_stacks[MAX_CPUS][16384]; /* entry.S, not cleared */
/* #DF runs on a stack of its own (IST1): a fault that spoils the kernel
 * stack (an overflow, a bad RSP) then ends in a report of where it
 * happened instead of a triple fault, which leaves nothing to read. */
#define DF_IST 1
static uint8_t df_stacks[MAX_CPUS][4096] __attribute__((aligned(16)));

struct idt_entry {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, rsvd;
} __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];
static syscall_fn_t syscalls[SYS_MAX];

/* ---- per-CPU ---- */

void percpu_setup(uint32_t index, uint64_t kstack_top)
{
	struct percpu *p = &percpu[index];
	p->self = p;
	p->index = index;
	p->tss = &tss[index];
	p->ustack_top = (uint64_t)user_stacks[index] + sizeof(user_stacks[0]);
	p->kstack_top = kstack_top;
	tss[index].rsp0 = kstack_top;
	tss[index].ist[DF_IST - 1] = (uint64_t)df_stacks[index] + sizeof(df_stacks[0]);
	tss[index].iomap_base = sizeof(struct tss);

	uint64_t base = (uint64_t)&tss[index], limit = sizeof(struct tss) - 1;
	uint64_t *d = &gdt[TSS_SEL(index) / 8];
	d[0] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89ULL << 40) |
	       (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
	d[1] = base >> 32;
	__asm__ volatile("ltr %w0" ::"r"(TSS_SEL(index)));
	wrmsr(0xC0000101, (uint64_t)p); /* GS base */
}

void cpu_features_enable(void)
{
	uint64_t cr0 = READ_CR(0);
	cr0 &= ~(1ULL << 2); /* EM */
	cr0 |= (1ULL << 1) | (1ULL << 5); /* MP, NE */
	WRITE_CR(0, cr0);
	uint64_t cr4 = READ_CR(4);
	cr4 |= (1ULL << 9) | (1ULL << 10); /* OSFXSR, OSXMMEXCPT */
	if (cpuid(1, 0).ecx & (1u << 26))
		cr4 |= 1ULL << 18; /* OSXSAVE */
	WRITE_CR(4, cr4);
}

/* ---- IDT ---- */

void idt_load(void)
{
	struct { uint16_t limit; uint64_t base; } __attribute__((packed)) p = {sizeof(idt) - 1, (uint64_t)idt};
	__asm__ volatile("lidt %0" ::"m"(p));
}

static void idt_init(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)isr_stub_table + 16 * (uint64_t)v;
		idt[v].off0 = a & 0xFFFF;
		idt[v].sel = KCODE64;
		idt[v].ist = v == 8 ? DF_IST : 0;
		idt[v].type = v == SYSCALL_VECTOR ? 0xEE : 0x8E; /* interrupt gate; DPL3 for syscalls */
		idt[v].off1 = (a >> 16) & 0xFFFF;
		idt[v].off2 = a >> 32;
		idt[v].rsvd = 0;
	}
	idt_load();
}

void set_handler(int vector, irq_handler_t h)
{
	if (vector >= 0 && vector < 256)
		handlers[vector] = h;
}

uint64_t user_call(uint64_t (*fn)(uint64_t), uint64_t arg)
{
	struct percpu *p = this_cpu();
	if (cpl() != 0)
		panic("user_call from CPL%d", cpl());
	if (p->udepth >= 2)
		panic("user_call nested more than once (cpu %u)", p->index);
	/* The outer call uses the top of the user stack; a call nested inside
	 * a syscall handler must not clobber the outer one's frames. */
	uint64_t top = p->udepth ? p->ustack_top - (USER_STACK_SIZE - USER_NEST_STACK) : p->ustack_top;
	p->udepth++;
	uint64_t r = user_call_on(fn, arg, top);
	p->udepth--;
	return r;
}

void syscall_register(int nr, syscall_fn_t fn)
{
	if (nr >= SYS_FIRST_USER && nr < SYS_MAX)
		syscalls[nr] = fn;
}

static const char *exc_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "?",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "?", "?", "?", "?", "?", "?", "#HV", "#VC", "#SX", "?",
};

static uint64_t do_syscall(struct regs *r)
{
	uint64_t nr = r->rax, a0 = r->rsi, a1 = r->rdx, a2 = r->rcx;
	switch (nr) {
	case SYS_USER_RETURN:
		if ((r->cs & 3) != 3)
			panic("SYS_USER_RETURN from CPL%d at rip=%#lx", (int)(r->cs & 3), r->rip);
		user_return_to_kernel(a0);
	case SYS_RDMSR: {
		uint64_t v = 0;
		int rc = rdmsr_safe((uint32_t)a0, &v);
		if (a1)
			*(uint64_t *)a1 = v;
		return (uint64_t)(int64_t)rc;
	}
	case SYS_WRMSR:
		return (uint64_t)(int64_t)wrmsr_safe((uint32_t)a0, a1);
	case SYS_WAIT:
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		return 0;
	case SYS_LAPIC_READ:
		return lapic_read((uint32_t)a0);
	case SYS_LAPIC_WRITE:
		lapic_write((uint32_t)a0, (uint32_t)a1);
		return 0;
	case SYS_POWEROFF:
		poweroff();
	case SYS_EXIT:
		debug_exit((uint8_t)a0);
	case SYS_CR:
		switch (a0) {
		case 0: return READ_CR(0);
		case 2: return READ_CR(2);
		case 3: return READ_CR(3);
		case 4: return READ_CR(4);
		}
		return 0;
	case SYS_WRITE:
		serial_write((const char *)a0, a1);
		return 0;
	case SYS_GETC:
		return (uint64_t)(int64_t)serial_getc();
	case SYS_XSETBV:
		return (uint64_t)(int64_t)xsetbv_safe((uint32_t)a0, a1);
	}
	if (nr < SYS_MAX && syscalls[nr])
		return syscalls[nr](a0, a1, a2);
	panic("unknown syscall %lu from rip=%#lx", nr, r->rip);
}

void trap_dispatch(struct regs *r)
{
	uint64_t v = r->vector;
	if (v == SYSCALL_VECTOR || (v == 6 && r->rip == (uint64_t)sys_call_insn)) {
		if (v == 6)
			r->rip += 2;
		r->rax = do_syscall(r);
		return;
	}
	if (v == 13 && r->rip == (uint64_t)rdmsr_safe_insn) {
		r->r9 = 1;
		r->rip = (uint64_t)rdmsr_safe_fixup;
		return;
	}
	if ((v == 13 || v == 6) && r->rip == (uint64_t)xsetbv_safe_insn) {
		r->r9 = 1;
		r->rip = (uint64_t)xsetbv_safe_fixup;
		return;
	}
	if (v == 13 && r->rip == (uint64_t)wrmsr_safe_insn) {
		r->r9 = 1;
		r->rip = (uint64_t)wrmsr_safe_fixup;
		return;
	}
	if (handlers[v]) {
		handlers[v](r);
		return;
	}
	if (v == SPURIOUS_VECTOR)
		return;
	if (v >= 32) {
		lapic_eoi();
		return;
	}
	print_lock.v = 0; /* fatal: do not deadlock on a lock held by the faulting code */
	printf("\nEXCEPTION %lu (%s) error=%#lx rip=%#lx cs=%#lx rflags=%#lx rsp=%#lx cr2=%#lx cpu=%u\n",
	       v, exc_names[v], r->error, r->rip, r->cs, r->rflags, r->rsp, READ_CR(2), cpu_index());
	debug_exit((uint8_t)(EXIT_EXCEPTION + v));
}

/* ---- Multiboot ---- */

static void parse_multiboot(void)
{
	boot.multiboot = mb_magic == 0x2BADB002;
	if (!boot.multiboot || !mb_info)
		return;
	const uint8_t *mbi = (const uint8_t *)(uint64_t)mb_info;
	uint32_t flags = *(const uint32_t *)mbi;
	boot.flags = flags;
	if (flags & 1) {
		boot.has_mem = true;
		boot.mem_lower_kb = *(const uint32_t *)(mbi + 4);
		boot.mem_upper_kb = *(const uint32_t *)(mbi + 8);
	}
	if (flags & (1 << 2)) {
		const char *c = (const char *)(uint64_t) * (const uint32_t *)(mbi + 16);
		if (c)
			boot_set_cmdline(c);
	}
	if (flags & (1 << 3)) {
		uint32_t n = *(const uint32_t *)(mbi + 20);
		const uint32_t *m = (const uint32_t *)(uint64_t) * (const uint32_t *)(mbi + 24);
		for (uint32_t i = 0; i < n && boot.nmods < BOOT_MAX_MODS; i++, m += 4) {
			boot.mods[boot.nmods].start = m[0];
			boot.mods[boot.nmods].end = m[1];
			if (m[2])
				strncpy_z(boot.mods[boot.nmods].name, (const char *)(uint64_t)m[2], sizeof(boot.mods[0].name));
			boot.nmods++;
		}
	}
	if (flags & (1 << 6)) {
		uint32_t len = *(const uint32_t *)(mbi + 44);
		uint64_t p = *(const uint32_t *)(mbi + 48), end = p + len;
		while (p + 24 <= end && boot.nmmap < BOOT_MAX_MMAP) {
			uint32_t size = *(const uint32_t *)p;
			boot.mmap[boot.nmmap].base = *(const uint64_t *)(p + 4);
			boot.mmap[boot.nmmap].len = *(const uint64_t *)(p + 12);
			boot.mmap[boot.nmmap].type = *(const uint32_t *)(p + 20);
			boot.nmmap++;
			if (size < 20)
				break;
			p += size + 4;
		}
	}
}

void boot_set_cmdline(const char *c)
{
	size_t i = 0;
	while (*c == ' ')
		c++;
	for (; *c && *c != ' '; c++)
		if (i + 1 < sizeof(boot.image))
			boot.image[i++] = *c;
	boot.image[i] = 0;
	while (*c == ' ')
		c++;
	strncpy_z(boot.cmdline, c, sizeof(boot.cmdline));
}

bool cmdline_get(const char *key, char *buf, size_t n)
{
	size_t kl = strlen(key);
	const char *s = boot.cmdline;
	while (*s) {
		while (*s == ' ')
			s++;
		const char *tok = s;
		while (*s && *s != ' ')
			s++;
		size_t tl = (size_t)(s - tok);
		if (tl >= kl && strncmp(tok, key, kl) == 0 && (tl == kl || tok[kl] == '=')) {
			const char *v = tl == kl ? tok + tl : tok + kl + 1;
			size_t vl = (size_t)(s - v), i;
			for (i = 0; i < vl && i + 1 < n; i++)
				buf[i] = v[i];
			if (n)
				buf[i] = 0;
			return true;
		}
	}
	return false;
}

uint64_t cmdline_u64(const char *key, uint64_t def)
{
	char buf[32];
	uint64_t v;
	if (!cmdline_get(key, buf, sizeof(buf)) || !parse_u64(buf, &v))
		return def;
	return v;
}

uint64_t boot_mem_bytes(void)
{
	uint64_t sum = 0;
	for (int i = 0; i < boot.nmmap; i++)
		if (boot.mmap[i].type == 1)
			sum += boot.mmap[i].len;
	if (sum)
		return sum;
	if (boot.has_mem)
		return ((uint64_t)boot.mem_lower_kb + boot.mem_upper_kb) * 1024;
	return 0;
}

/* ---- exits ---- */

NORETURN void debug_exit(uint8_t v)
{
	if (cpl() == 3)
		sys_call(SYS_EXIT, v, 0, 0);
	outb(0xF4, v);
	for (;;) {
		cli();
		hlt();
	}
}

NORETURN void panic(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	print_lock.v = 0;
	puts("\nPANIC: ");
	vprintf(fmt, ap);
	puts("\n");
	va_end(ap);
	debug_exit(EXIT_PANIC);
}

/* ---- start ---- */

extern uint8_t boot_stack_top[];

NORETURN void lib_start(void)
{
	percpu_setup(0, (uint64_t)boot_stack_top);
	serial_init();
	idt_init();
	cpu_features_enable();
	parse_multiboot();
	int rc = main();
	debug_exit((uint8_t)rc);
}
