package irq

// AckNotifier is implemented by Lines whose interrupt controller can tell
// when an edge it delivered was taken by the CPU (the 8259A's INTA cycle). A periodic timer uses it to deliver
// ticks it owes one at a time instead of letting them merge in a request
// register while the vCPU is not running (KVM's in-kernel PIT calls this
// "reinjection"). Notifications are best effort: an accelerator may never
// send them, so a user must keep working without.
type AckNotifier interface {
	// OnAck registers fn, called (from any goroutine, without locks of
	// the controller held) each time the line's interrupt is taken.
	OnAck(fn func())
	// AckExpected reports whether an edge raised now would be
	// acknowledged: the controller that reports acknowledgements takes
	// the line (the 8259A has the IRQ unmasked). While it does not (Linux
	// masks IRQ0 at the 8259A and routes the timer through the IOAPIC),
	// a user must not wait for acknowledgements that never come.
	AckExpected() bool
}
