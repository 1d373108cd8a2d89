package vsock

// eventQueue is the event queue as both backends serve it (the hybrid
// device and vhost-vsock, whose kernel leaves that queue to the VMM):
// the driver's event buffers the device keeps, and whether the driver
// is owed VIRTIO_VSOCK_EVENT_TRANSPORT_RESET. The owner's lock guards it.
type eventQueue struct {
	bufs []kept
	// resetPending: the driver must hear TRANSPORT_RESET.
	resetPending bool
}

// deliver writes a pending transport reset into the first kept buffer,
// if there is one and the device is active, and returns the buffer's
// completion, which the caller runs once it dropped its lock; nil if
// nothing was delivered.
func (e *eventQueue) deliver(active bool) func() {
	if !active || !e.resetPending || len(e.bufs) == 0 {
		return nil
	}
	k := e.bufs[0]
	e.bufs = e.bufs[1:]
	e.resetPending = false
	var b [4]byte
	le.PutUint32(b[:], eventTransportReset)
	k.c.Write(0, b[:])
	return func() { k.done(4) }
}

// unkeep gives back the kept buffers and returns how many.
func (e *eventQueue) unkeep() int {
	n := len(e.bufs)
	e.bufs = nil
	return n
}
