# lib/build.mk: the shared guest runtime (see lib/lib.h).
LIB_OBJS := $(addprefix $(BUILD)/lib/,entry.o boot.o console.o string.o acpi.o apic.o smp.o)

# libtest: the lib's own test guest (lib/selftest.c), run by e2e/probe_test.go.
$(eval $(call MB_GUEST,libtest,$(BUILD)/lib/selftest.o))
