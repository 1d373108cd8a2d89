/* pci.c: configuration space of bus 0 through ports 0xCF8/0xCFC, for the
 * guests that drive a passed-through device (edu, msix, igb, mtty), which
 * link it; the other guests do not. */
#include "lib.h"

static void pci_select(int slot, int reg)
{
	outl(0xcf8, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)(reg & 0xfc));
}

uint32_t pci_read32(int slot, int reg)
{
	pci_select(slot, reg);
	return inl(0xcfc);
}

void pci_write32(int slot, int reg, uint32_t v)
{
	pci_select(slot, reg);
	outl(0xcfc, v);
}

void pci_write16(int slot, int reg, uint16_t v)
{
	pci_select(slot, reg);
	outw(0xcfc + (reg & 2), v);
}

int pci_find(uint16_t vendor, uint16_t device)
{
	for (int s = 0; s < 32; s++) {
		uint32_t id = pci_read32(s, 0);
		if ((id & 0xffff) == vendor && id >> 16 == device)
			return s;
	}
	return -1;
}
