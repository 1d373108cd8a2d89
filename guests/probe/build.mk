# probe/build.mk: the probe guest (the built-in default guest), bin/probe.elf.
PROBE_OBJS := $(addprefix $(BUILD)/probe/,main.o cpu.o facts.o report.o tui.o user.o)
$(eval $(call MB_GUEST,probe,$(PROBE_OBJS)))
