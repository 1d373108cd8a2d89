# realmode: a 512-byte flat boot-sector binary entered in real mode at
# 0x7c00; see realmode/realmode.S.
$(BUILD)/realmode/realmode.o: realmode/realmode.S
	@mkdir -p $(@D)
	$(GUEST_CC) -m32 -c $< -o $@
$(BIN)/realmode.bin: $(BUILD)/realmode/realmode.o realmode/realmode.ld
	@mkdir -p $(@D)
	ld -m elf_i386 --build-id=none -T realmode/realmode.ld -o $(BUILD)/realmode/realmode.elf $<
	$(OBJCOPY) -O binary -j .text $(BUILD)/realmode/realmode.elf $@
ALL += $(BIN)/realmode.bin
