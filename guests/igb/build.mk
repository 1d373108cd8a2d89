# igb: counts the MSI interrupts of QEMU's igb (82576, 8086:10c9) passed
# through with VFIO while it masks and unmasks them with the MSI
# capability's per-vector mask bit (igb/main.c), linked with guests/lib (and its pci.c).
IGB_OBJS := $(BUILD)/igb/main.o $(BUILD)/lib/pci.o
$(eval $(call MB_GUEST,igb,$(IGB_OBJS)))
