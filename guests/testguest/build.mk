# testguest: the Multiboot scenario guest (test=NAME on the cmdline; see
# testguest/main.c), linked with guests/lib.
TESTGUEST_OBJS := $(BUILD)/testguest/main.o $(BUILD)/testguest/mmio.o $(BUILD)/testguest/pio.o $(BUILD)/testguest/memwrite.o
$(eval $(call MB_GUEST,testguest,$(TESTGUEST_OBJS)))
