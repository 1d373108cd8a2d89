# edu: drives QEMU's edu device (1234:11e8) passed through with VFIO
# (edu/main.c), linked with guests/lib (and its pci.c).
EDU_OBJS := $(BUILD)/edu/main.o $(BUILD)/lib/pci.o
$(eval $(call MB_GUEST,edu,$(EDU_OBJS)))
