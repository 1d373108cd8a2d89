# edu: drives QEMU's edu device (1234:11e8) passed through with VFIO
# (edu/main.c), linked with guests/lib.
EDU_OBJS := $(BUILD)/edu/main.o
$(eval $(call MB_GUEST,edu,$(EDU_OBJS)))
