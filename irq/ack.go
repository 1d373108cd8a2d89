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
}
