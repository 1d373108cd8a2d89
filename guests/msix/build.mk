# msix: counts the MSI-X interrupts of QEMU's virtio-rng-pci (1af4:1044)
# passed through with VFIO while it masks and unmasks them (msix/main.c),
# linked with guests/lib (and its pci.c).
MSIX_OBJS := $(BUILD)/msix/main.o $(BUILD)/lib/pci.o
$(eval $(call MB_GUEST,msix,$(MSIX_OBJS)))
