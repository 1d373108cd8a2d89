# elf64: a plain ELF64 kernel (no Multiboot, no guests/lib) that govmm's
# ELF64 loader enters directly in long mode; see elf64/main.c.
ELF64_OBJS := $(BUILD)/elf64/start.o $(BUILD)/elf64/main.o
$(BIN)/elf64.elf: $(ELF64_OBJS) elf64/elf64.ld
	@mkdir -p $(@D)
	$(GUEST_CC) -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,max-page-size=0x1000 \
		-Wl,-z,noexecstack -Wl,--no-warn-rwx-segments -Wl,-T,elf64/elf64.ld -o $@ $(ELF64_OBJS)
ALL += $(BIN)/elf64.elf
