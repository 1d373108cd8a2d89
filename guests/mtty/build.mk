# mtty: loops a pattern through Linux's sample mdev serial device (mtty,
# PCI 4348:3253) passed through with VFIO, across a snapshot or a live
# migration (mtty/main.c), linked with guests/lib (and its pci.c).
MTTY_OBJS := $(BUILD)/mtty/main.o $(BUILD)/lib/pci.o
$(eval $(call MB_GUEST,mtty,$(MTTY_OBJS)))
