# mblow: a Multiboot v1 ELF32 kernel linked at 0x8000, below 1 MiB, whose
# bss covers the addresses where govmm's boot structures usually go; see
# mblow/main.c. 32-bit code, no guests/lib (which needs long mode and
# 3 MiB of bss).
MBLOW_CFLAGS := -m32 -std=gnu11 -O2 -Wall -Wextra -ffreestanding -fno-pic -fno-pie \
	-fno-stack-protector -fno-asynchronous-unwind-tables -fno-unwind-tables \
	-fno-common -fno-ident -g0 -mgeneral-regs-only -fno-tree-loop-distribute-patterns
MBLOW_OBJS := $(BUILD)/mblow/start.o $(BUILD)/mblow/main.o
$(BUILD)/mblow/start.o: mblow/start.S
	@mkdir -p $(@D)
	$(GUEST_CC) -m32 -c $< -o $@
$(BUILD)/mblow/main.o: mblow/main.c
	@mkdir -p $(@D)
	$(GUEST_CC) $(MBLOW_CFLAGS) -c $< -o $@
$(BIN)/mblow.elf: $(MBLOW_OBJS) mblow/mblow.ld
	@mkdir -p $(@D)
	ld -m elf_i386 --build-id=none -z max-page-size=0x1000 -z noexecstack \
		--no-warn-rwx-segments -T mblow/mblow.ld -o $@ $(MBLOW_OBJS)
ALL += $(BIN)/mblow.elf
