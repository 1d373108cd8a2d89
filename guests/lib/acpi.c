/* acpi.c: find the machine through ACPI (RSDP, RSDT/XSDT, MADT, FADT) and
 * power off through PM1a_CNT with the DSDT's \_S5 sleep type. */
#include "lib.h"

struct acpi_info acpi;

struct sdt {
	char sig[4];
	uint32_t len;
	uint8_t rev, sum;
	char oem[6], oem_table[8];
	uint32_t oem_rev, creator, creator_rev;
} __attribute__((packed));

static uint8_t checksum(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint8_t s = 0;
	while (n--)
		s += *b++;
	return s;
}

static uint64_t find_rsdp(void)
{
	/* Compare 8 bytes at once: CPL0 loops are emulated (slow) here. */
	for (uint64_t a = 0xE0000; a < 0x100000; a += 16)
		if (*(const volatile uint64_t *)a == 0x2052545020445352ULL && checksum((const void *)a, 20) == 0)
			return a;
	return 0;
}

static void parse_madt(const struct sdt *t)
{
	const uint8_t *p = (const uint8_t *)t;
	acpi.has_madt = true;
	acpi.lapic_addr = *(const uint32_t *)(p + 36);
	acpi.ncpus = acpi.ncpus_total = 0;
	for (uint32_t off = 44; off + 2 <= t->len;) {
		uint8_t type = p[off], len = p[off + 1];
		if (len < 2 || off + len > t->len)
			break;
		const uint8_t *e = p + off;
		switch (type) {
		case 0: /* processor local APIC */
			if (*(const uint32_t *)(e + 4) & 1) {
				acpi.ncpus_total++;
				if (acpi.ncpus < MAX_CPUS)
					acpi.apic_ids[acpi.ncpus++] = e[3];
			}
			break;
		case 1: /* IOAPIC (the first one) */
			if (!acpi.has_ioapic) {
				acpi.has_ioapic = true;
				acpi.ioapic_id = e[2];
				acpi.ioapic_addr = *(const uint32_t *)(e + 4);
				acpi.ioapic_gsi_base = *(const uint32_t *)(e + 8);
			}
			break;
		case 2: /* interrupt source override */
			if (acpi.niso < (int)ARRAY_SIZE(acpi.iso)) {
				acpi.iso[acpi.niso].irq = e[3];
				acpi.iso[acpi.niso].gsi = *(const uint32_t *)(e + 4);
				acpi.iso[acpi.niso].flags = *(const uint16_t *)(e + 8);
				acpi.niso++;
			}
			break;
		case 5: /* LAPIC address override */
			acpi.lapic_addr = *(const uint64_t *)(e + 4);
			break;
		case 9: /* processor local x2APIC */
			if (*(const uint32_t *)(e + 8) & 1) {
				acpi.ncpus_total++;
				if (acpi.ncpus < MAX_CPUS)
					acpi.apic_ids[acpi.ncpus++] = *(const uint32_t *)(e + 4);
			}
			break;
		}
		off += len;
	}
	if (acpi.ncpus == 0)
		acpi.ncpus = acpi.ncpus_total = 1;
}

static void parse_fadt(const struct sdt *t)
{
	const uint8_t *p = (const uint8_t *)t;
	acpi.has_fadt = true;
	if (t->len >= 80) {
		acpi.dsdt = *(const uint32_t *)(p + 40);
		acpi.sci_irq = *(const uint16_t *)(p + 46);
		acpi.pm1a_cnt = (uint16_t) * (const uint32_t *)(p + 64);
		acpi.pm_tmr_port = (uint16_t) * (const uint32_t *)(p + 76);
	}
	if (t->len >= 116)
		acpi.pm_tmr_32bit = (*(const uint32_t *)(p + 112) >> 8) & 1;
	if (t->len >= 148 && *(const uint64_t *)(p + 140))
		acpi.dsdt = *(const uint64_t *)(p + 140);
	if (t->len >= 184 && !acpi.pm1a_cnt && p[172] == 1)
		acpi.pm1a_cnt = (uint16_t) * (const uint64_t *)(p + 176);
	if (t->len >= 220 && !acpi.pm_tmr_port && p[208] == 1)
		acpi.pm_tmr_port = (uint16_t) * (const uint64_t *)(p + 212);
}

static void visit(uint64_t addr)
{
	if (!addr || addr >= 0x100000000ULL)
		return;
	const struct sdt *t = (const struct sdt *)addr;
	if (t->len < sizeof(struct sdt) || t->len > 0x100000 || checksum(t, t->len) != 0)
		return;
	if (!memcmp(t->sig, "APIC", 4))
		parse_madt(t);
	else if (!memcmp(t->sig, "FACP", 4))
		parse_fadt(t);
}

bool acpi_init(void)
{
	memset(&acpi, 0, sizeof(acpi));
	acpi.lapic_addr = 0xFEE00000;
	acpi.ncpus = acpi.ncpus_total = 1;
	acpi.ioapic_addr = 0xFEC00000;
	uint64_t rsdp = find_rsdp();
	if (!rsdp)
		return false;
	const uint8_t *r = (const uint8_t *)rsdp;
	acpi.found = true;
	acpi.rsdp = rsdp;
	acpi.revision = r[15];
	memcpy(acpi.oem_id, r + 9, 6);
	uint64_t xsdt = 0;
	if (acpi.revision >= 2 && *(const uint32_t *)(r + 20) >= 36 && checksum(r, *(const uint32_t *)(r + 20)) == 0)
		xsdt = *(const uint64_t *)(r + 24);
	const struct sdt *root = (const struct sdt *)(xsdt ? xsdt : *(const uint32_t *)(r + 16));
	if ((uint64_t)root == 0 || (uint64_t)root >= 0x100000000ULL || root->len < 36 || root->len > 0x10000 ||
	    checksum(root, root->len) != 0)
		return true;
	size_t esz = xsdt ? 8 : 4, n = (root->len - 36) / esz;
	const uint8_t *ents = (const uint8_t *)root + 36;
	for (size_t i = 0; i < n; i++)
		visit(esz == 8 ? *(const uint64_t *)(ents + 8 * i) : *(const uint32_t *)(ents + 4 * i));
	if (!acpi.has_ioapic)
		acpi.ioapic_addr = 0;
	return true;
}

uint32_t acpi_isa_gsi(int irq, uint16_t *flags)
{
	for (int i = 0; i < acpi.niso; i++)
		if (acpi.iso[i].irq == irq) {
			if (flags)
				*flags = acpi.iso[i].flags;
			return acpi.iso[i].gsi;
		}
	if (flags)
		*flags = 0;
	return (uint32_t)irq;
}

/* Find Name(_S5_, Package(){ a, ... }) in the DSDT's AML: SLP_TYPa. */
static int s5_slp_typ(void)
{
	if (!acpi.dsdt || acpi.dsdt >= 0x100000000ULL)
		return -1;
	const struct sdt *t = (const struct sdt *)acpi.dsdt;
	if (memcmp(t->sig, "DSDT", 4) || t->len < 36 || t->len > 0x100000)
		return -1;
	const uint8_t *p = (const uint8_t *)t;
	for (uint32_t i = 36; i + 10 < t->len; i++) {
		if (p[i] != '_' || p[i + 1] != 'S' || p[i + 2] != '5' || p[i + 3] != '_')
			continue;
		uint32_t j = i + 4;
		if (p[j] != 0x12) /* PackageOp */
			continue;
		j++;
		j += 1 + (p[j] >> 6); /* PkgLength */
		j++;                  /* NumElements */
		if (p[j] == 0x0A)     /* BytePrefix */
			return p[j + 1];
		if (p[j] == 0x00 || p[j] == 0x01)
			return p[j];
		if (p[j] == 0xFF)
			return 7;
		return -1;
	}
	return -1;
}

NORETURN void poweroff(void)
{
	if (cpl() == 3)
		sys_call(SYS_POWEROFF, 0, 0, 0);
	int typ = acpi.pm1a_cnt ? s5_slp_typ() : -1;
	if (typ >= 0) {
		outw(acpi.pm1a_cnt, (uint16_t)(((typ & 7) << 10) | (1 << 13)));
		udelay(100000);
	}
	debug_exit(0);
}
