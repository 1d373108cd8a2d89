# stress: the guest that hammers random ports and unbacked MMIO addresses
# for a bounded time (e2e/stress_test.go), bin/stress.elf.
STRESS_OBJS := $(BUILD)/stress/main.o
$(eval $(call MB_GUEST,stress,$(STRESS_OBJS)))
