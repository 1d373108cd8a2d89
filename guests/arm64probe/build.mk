# arm64probe/build.mk: the arm64 probe, a bare-metal AArch64 guest in a
# Linux arm64 Image (bin/arm64probe.img), built with Debian's cross
# compiler (gcc-aarch64-linux-gnu). make ARM64_GUESTS= skips it.
ARM64_CC ?= aarch64-linux-gnu-gcc
ARM64_OBJCOPY ?= aarch64-linux-gnu-objcopy
ARM64_GUESTS ?= arm64probe

ARM64_FLAGS := -ffreestanding -fpie -fvisibility=hidden -mstrict-align -mgeneral-regs-only \
	-mbranch-protection=none -fno-stack-protector -fno-asynchronous-unwind-tables \
	-fno-unwind-tables -fno-common -fno-ident -fno-plt -g0 -ffile-prefix-map=$(CURDIR)/=
ARM64_CFLAGS := -std=gnu11 -O2 -Wall -Wextra -Wno-unused-parameter $(ARM64_FLAGS)
ARM64_LDFLAGS := -nostdlib -static -Wl,-pie -Wl,--no-dynamic-linker -Wl,-z,text -Wl,--build-id=none \
	-Wl,-z,max-page-size=0x1000 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments -Wl,-T,arm64probe/linker.ld

ARM64PROBE_OBJS := $(addprefix $(BUILD)/arm64probe/,start.o main.o fdt.o lib.o report.o tui.o string.o)

$(BUILD)/arm64probe/%.o: arm64probe/%.c arm64probe/probe.h
	@mkdir -p $(@D)
	$(ARM64_CC) $(ARM64_CFLAGS) -c $< -o $@

# The x86-64 guests' string functions, built for arm64.
$(BUILD)/arm64probe/string.o: lib/string.c lib/string.h
	@mkdir -p $(@D)
	$(ARM64_CC) $(ARM64_CFLAGS) -c $< -o $@

$(BUILD)/arm64probe/%.o: arm64probe/%.S
	@mkdir -p $(@D)
	$(ARM64_CC) $(ARM64_FLAGS) -c $< -o $@

$(BIN)/arm64probe.img: $(ARM64PROBE_OBJS) arm64probe/linker.ld
	@mkdir -p $(@D)
	$(ARM64_CC) $(ARM64_LDFLAGS) -o $(BUILD)/arm64probe.elf $(ARM64PROBE_OBJS)
	$(ARM64_OBJCOPY) -O binary $(BUILD)/arm64probe.elf $@

ifneq ($(filter arm64probe,$(ARM64_GUESTS)),)
ALL += $(BIN)/arm64probe.img
endif
