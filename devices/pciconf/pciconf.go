// Package pciconf is PCI configuration mechanism #1 (CONFIG_ADDRESS at
// 0xCF8, CONFIG_DATA at 0xCFC-0xCFF) for a machine with no PCI devices.
// Guests (Linux, SeaBIOS-style firmware) probe these ports to decide
// whether PCI exists; answering with a working address latch and "no
// device" everywhere lets them conclude there is nothing to enumerate
// instead of timing out or misdetecting a bus.
package pciconf

import (
	"sync"

	"govmm/devices/bus"
	"govmm/platform"
)

// Ranges the device answers. The full device covers [0xCF8, 0xD00); port
// 0xCF9 is usually the reset control register of another device, so the
// VMM registers the two views instead:
//
//	AddressPort() at 0xCF8, size AddressSize
//	DataPort()    at 0xCFC, size DataSize
const (
	Size        = 8
	AddressSize = 1 // 32-bit accesses start at 0xCF8; the bus looks up the start port
	DataSize    = 4
	dataOffset  = 4
)

// Device is the configuration mechanism. It is safe for concurrent use.
type Device struct {
	mu    sync.Mutex
	state State
}

// State is the device's snapshot state.
type State struct {
	// Address is the CONFIG_ADDRESS latch (enable bit 31, bus, device,
	// function, register).
	Address uint32 `json:"address"`
	// DataWrites counts (ignored) writes to CONFIG_DATA, for diagnostics.
	DataWrites uint64 `json:"data_writes"`
}

// New returns the configuration mechanism with a zero address latch.
func New() *Device { return &Device{} }

// Read handles a read at offset from 0xCF8.
func (d *Device) Read(offset uint64, data []byte) {
	fill(data)
	switch {
	case offset < dataOffset:
		// As on QEMU's PCI host bridge, the latch reads back at any
		// width; bytes beyond 0xCFB (or a read not starting at 0xCF8)
		// read as all ones.
		if offset != 0 {
			return
		}
		d.mu.Lock()
		a := d.state.Address
		d.mu.Unlock()
		for i := 0; i < len(data) && i < 4; i++ {
			data[i] = byte(a >> (8 * i))
		}
	default:
		// CONFIG_DATA: there is no device at any bus/device/function, so
		// every configuration register reads as all ones (vendor 0xFFFF).
	}
}

// Write handles a write at offset from 0xCF8.
func (d *Device) Write(offset uint64, data []byte) {
	switch {
	case offset < dataOffset:
		// Only a 32-bit write to 0xCF8 changes the latch; byte writes
		// to 0xCF8-0xCFB belong to other functions on real chipsets
		// (0xCF9 reset control, 0xCFB mechanism select) and are ignored.
		if offset != 0 || len(data) != 4 {
			return
		}
		a := uint32(data[0]) | uint32(data[1])<<8 | uint32(data[2])<<16 | uint32(data[3])<<24
		d.mu.Lock()
		d.state.Address = a
		d.mu.Unlock()
	default:
		d.mu.Lock()
		d.state.DataWrites++
		d.mu.Unlock()
	}
}

// Register claims CONFIG_ADDRESS (0xCF8, AddressSize) and CONFIG_DATA
// (0xCFC, DataSize) on pio, leaving 0xCF9-0xCFB to others (0xCF9 is the
// ACPI reset register).
func (d *Device) Register(pio *bus.Bus) error {
	if err := pio.Register(platform.PortPCIConfig, AddressSize, "pci-config-address", d.AddressPort()); err != nil {
		return err
	}
	return pio.Register(platform.PortPCIConfig+dataOffset, DataSize, "pci-config-data", d.DataPort())
}

// AddressPort is the view of CONFIG_ADDRESS, to register at 0xCF8 with
// size AddressSize.
func (d *Device) AddressPort() bus.Device { return view{d, 0} }

// DataPort is the view of CONFIG_DATA, to register at 0xCFC with size
// DataSize.
func (d *Device) DataPort() bus.Device { return view{d, dataOffset} }

type view struct {
	d    *Device
	base uint64
}

func (v view) Read(offset uint64, data []byte)  { v.d.Read(v.base+offset, data) }
func (v view) Write(offset uint64, data []byte) { v.d.Write(v.base+offset, data) }

// Save returns the device state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Restore sets the device state.
func (d *Device) Restore(s State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state = s
	return nil
}

func fill(b []byte) {
	for i := range b {
		b[i] = 0xff
	}
}
