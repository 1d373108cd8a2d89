// Package pctestdev is QEMU's pc-testdev, the ISA test device that public
// x86 conformance suites (kvm-unit-tests among them) drive, so that such
// suites run on govmm unchanged when it is enabled with --test-devices:
//
//	port 0xE0-0xE3          scratch port: a write stores the value, a read
//	                        returns the last value written
//	port 0xE4-0xE7          flush page: writing a guest-physical address
//	                        makes the host drop its mapping of that page
//	                        and map it again (the guest sees no change)
//	port 0x2000-0x2017      IRQ lines: writing v to 0x2000+n sets GSI n's
//	                        level to v != 0 (ISA IRQs 0-15 reach the PIC
//	                        and the IOAPIC, 16-23 the IOAPIC)
//	MMIO 0xFF000000-+64 KiB scratch memory, any width
//
// Every value the guest writes is untrusted: out-of-range accesses read
// as all ones and are ignored.
package pctestdev

import (
	"encoding/binary"
	"fmt"
	"sync"

	"govmm/devices/bus"
	"govmm/irq"
)

// Where QEMU puts the device.
const (
	PortScratch = 0xE0
	PortFlush   = 0xE4
	PortIRQ     = 0x2000
	NumIRQs     = 24
	MemBase     = 0xFF000000
	MemSize     = 0x10000
)

// Config is what the device needs from the VM.
type Config struct {
	// Line returns the interrupt line of a GSI (0-23).
	Line func(gsi int) irq.Line
	// Flush drops and re-creates the host mapping of the guest page at
	// gpa (nil: flushing does nothing).
	Flush func(gpa uint64) error
	// Log reports a flush that failed (nil: not reported).
	Log func(msg string, args ...any)
}

// State is the device's saved state.
type State struct {
	Scratch uint32 `json:"scratch"`
	Levels  uint32 `json:"levels"` // bit n: GSI n is held high
	Mem     []byte `json:"mem"`
}

// Device is one pc-testdev. It is safe for concurrent use.
type Device struct {
	cfg   Config
	lines [NumIRQs]irq.Line

	mu sync.Mutex
	s  State
}

// New returns the device with its lines low and its memory zero.
func New(cfg Config) *Device {
	d := &Device{cfg: cfg, s: State{Mem: make([]byte, MemSize)}}
	for i := range d.lines {
		d.lines[i] = irq.NoLine{}
		if cfg.Line != nil {
			d.lines[i] = cfg.Line(i)
		}
	}
	return d
}

// Register puts the device's ports on pio and its memory on mmio.
func (d *Device) Register(pio, mmio *bus.Bus) error {
	for _, r := range []struct {
		base, size uint64
		name       string
		dev        bus.Device
		b          *bus.Bus
	}{
		{PortScratch, 4, "pc-testdev-scratch", scratchPort{d}, pio},
		{PortFlush, 4, "pc-testdev-flush", flushPort{d}, pio},
		{PortIRQ, NumIRQs, "pc-testdev-irq", irqPorts{d}, pio},
		{MemBase, MemSize, "pc-testdev-mem", memory{d}, mmio},
	} {
		if err := r.b.Register(r.base, r.size, r.name, r.dev); err != nil {
			return fmt.Errorf("pc-testdev: %w", err)
		}
	}
	return nil
}

func fill(data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

type scratchPort struct{ d *Device }

func (p scratchPort) Read(off uint64, data []byte) {
	if off+uint64(len(data)) > 4 {
		fill(data)
		return
	}
	p.d.mu.Lock()
	defer p.d.mu.Unlock()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], p.d.s.Scratch)
	copy(data, b[off:])
}

func (p scratchPort) Write(off uint64, data []byte) {
	if off != 0 || len(data) > 4 {
		return
	}
	var b [4]byte
	copy(b[:], data)
	p.d.mu.Lock()
	p.d.s.Scratch = binary.LittleEndian.Uint32(b[:])
	p.d.mu.Unlock()
}

type flushPort struct{ d *Device }

func (flushPort) Read(_ uint64, data []byte) { fill(data) }

func (p flushPort) Write(off uint64, data []byte) {
	if off != 0 || len(data) != 4 || p.d.cfg.Flush == nil {
		return
	}
	gpa := uint64(binary.LittleEndian.Uint32(data))
	if err := p.d.cfg.Flush(gpa &^ 0xfff); err != nil && p.d.cfg.Log != nil {
		p.d.cfg.Log("pc-testdev: flush page", "gpa", fmt.Sprintf("%#x", gpa), "err", err)
	}
}

type irqPorts struct{ d *Device }

func (irqPorts) Read(_ uint64, data []byte) { fill(data) }

func (p irqPorts) Write(off uint64, data []byte) {
	if off >= NumIRQs || len(data) == 0 {
		return
	}
	high := false
	for _, b := range data {
		high = high || b != 0
	}
	p.d.mu.Lock()
	if high {
		p.d.s.Levels |= 1 << off
	} else {
		p.d.s.Levels &^= 1 << off
	}
	p.d.mu.Unlock()
	p.d.lines[off].Set(high)
}

type memory struct{ d *Device }

func (m memory) Read(off uint64, data []byte) {
	if off+uint64(len(data)) > MemSize {
		fill(data)
		return
	}
	m.d.mu.Lock()
	copy(data, m.d.s.Mem[off:])
	m.d.mu.Unlock()
}

func (m memory) Write(off uint64, data []byte) {
	if off+uint64(len(data)) > MemSize {
		return
	}
	m.d.mu.Lock()
	copy(m.d.s.Mem[off:], data)
	m.d.mu.Unlock()
}

// Save returns the device's state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.s
	s.Mem = append([]byte(nil), d.s.Mem...)
	return s
}

// Restore loads a saved state and drives the lines to the saved levels.
func (d *Device) Restore(s State) error {
	if len(s.Mem) != MemSize {
		return fmt.Errorf("pc-testdev restore: memory of %d bytes, want %d", len(s.Mem), MemSize)
	}
	if s.Levels>>NumIRQs != 0 {
		return fmt.Errorf("pc-testdev restore: line levels %#x name lines beyond %d", s.Levels, NumIRQs-1)
	}
	d.mu.Lock()
	d.s = State{Scratch: s.Scratch, Levels: s.Levels, Mem: append([]byte(nil), s.Mem...)}
	d.mu.Unlock()
	for i := range d.lines {
		d.lines[i].Set(s.Levels>>i&1 != 0)
	}
	return nil
}
