/* smp.c: start the application processors listed in the MADT with
 * INIT/SIPI through a real-mode trampoline copied below 1 MiB. */
#include "lib.h"

extern char tramp_start[], tramp_end[], tramp_gdt_ptr[], tramp_cr3[], tramp_stack[], tramp_arg[];
extern uint64_t gdt[];
extern struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdt_ptr;
extern uint8_t kernel_stacks[MAX_CPUS][16384];
void percpu_setup(uint32_t index, uint64_t kstack_top);
void cpu_features_enable(void);
void idt_load(void);

volatile int cpus_started = 1;
static void (*ap_fn)(uint32_t);
static volatile uint32_t ap_ack;

#define TRAMP(sym) ((void *)(TRAMP_BASE + ((char *)(sym) - tramp_start)))

NORETURN void ap_start(uint64_t index)
{
	percpu_setup((uint32_t)index, (uint64_t)kernel_stacks[index] + sizeof(kernel_stacks[0]));
	idt_load();
	cpu_features_enable();
	lapic_init(lapic_x2apic());
	__atomic_add_fetch(&cpus_started, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&ap_ack, 1, __ATOMIC_RELEASE);
	if (ap_fn)
		ap_fn((uint32_t)index);
	for (;;) {
		cli();
		hlt();
	}
}

static bool wait_ack(uint32_t us)
{
	for (uint32_t t = 0; t < us; t += 1000) {
		if (__atomic_load_n(&ap_ack, __ATOMIC_ACQUIRE))
			return true;
		udelay(1000);
	}
	return __atomic_load_n(&ap_ack, __ATOMIC_ACQUIRE);
}

int smp_start(void (*ap_main)(uint32_t index))
{
	ap_fn = ap_main;
	if (acpi.ncpus <= 1)
		return cpus_started;
	memcpy((void *)TRAMP_BASE, tramp_start, (size_t)(tramp_end - tramp_start));
	struct { uint16_t limit; uint32_t base; } __attribute__((packed)) *gp = TRAMP(tramp_gdt_ptr);
	gp->limit = gdt_ptr.limit;
	gp->base = (uint32_t)(uint64_t)gdt;
	*(uint64_t *)TRAMP(tramp_cr3) = READ_CR(3);
	uint32_t self = lapic_id(), next = 1;
	for (int i = 0; i < acpi.ncpus && next < MAX_CPUS; i++) {
		uint32_t id = acpi.apic_ids[i];
		if (id == self)
			continue;
		percpu[next].apic_id = id;
		*(uint64_t *)TRAMP(tramp_stack) = (uint64_t)kernel_stacks[next] + sizeof(kernel_stacks[0]);
		*(uint64_t *)TRAMP(tramp_arg) = next;
		ap_ack = 0;
		lapic_send_ipi(id, 0x4500); /* INIT, assert */
		udelay(10000);
		lapic_send_ipi(id, 0x4600 | (TRAMP_BASE >> 12)); /* SIPI */
		if (!wait_ack(100000)) {
			lapic_send_ipi(id, 0x4600 | (TRAMP_BASE >> 12));
			if (!wait_ack(1000000)) {
				printf("smp: CPU with APIC ID %u did not start\n", id);
				continue;
			}
		}
		next++;
	}
	return cpus_started;
}

void spin_lock(spinlock_t *l)
{
	while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE))
		while (l->v)
			pause();
}

void spin_unlock(spinlock_t *l)
{
	__atomic_store_n(&l->v, 0, __ATOMIC_RELEASE);
}
