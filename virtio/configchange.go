package virtio

// ConfigChanged tells the driver that the device's configuration changed
// (virtio 1.2 §4.1.4.3: a new configuration generation, the ISR's
// configuration bit, and the configuration vector when MSI-X has one or
// the INTx line when MSI-X is off), as a balloon does when the host sets
// a new target. It does nothing before the driver set DRIVER_OK or while
// the device needs a reset: the driver reads the configuration when it
// starts, and a broken device signalled its state already.
func (t *PCI) ConfigChanged() {
	t.mu.Lock()
	if !t.active || t.broken {
		t.mu.Unlock()
		return
	}
	t.s.ConfigGen++
	t.isr |= 2
	t.updateINTx()
	v := t.s.ConfigVector
	t.mu.Unlock()
	if v != NoVector {
		if err := t.msix.Trigger(int(v)); err != nil {
			t.log.Error("virtio: configuration interrupt", "device", t.dev.Name(), "err", err)
		}
	}
}
