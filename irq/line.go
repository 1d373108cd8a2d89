// Package irq is the one way a device raises an interrupt. A device holds a
// Line and never learns which interrupt controller (IOAPIC, PIC) or which
// accelerator delivers it.
package irq

// Line is one interrupt line (a GSI input). Level-triggered devices call
// Set(true) while they need service and Set(false) when they no longer do;
// edge-triggered devices call Pulse. Implementations are safe to call from
// any goroutine.
type Line interface {
	Set(high bool)
	Pulse()
}

// NoLine is a Line connected to nothing (devices built before interrupts
// are wired, or tests).
type NoLine struct{}

func (NoLine) Set(bool) {}
func (NoLine) Pulse()   {}
