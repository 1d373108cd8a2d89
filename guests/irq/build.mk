# irq: the interrupt-proof guest (irqtest=NAME on the cmdline; see
# irq/main.c), linked with guests/lib.
IRQ_OBJS := $(BUILD)/irq/main.o
$(eval $(call MB_GUEST,irq,$(IRQ_OBJS)))
