// Package i8042 is the minimum of the 8042 keyboard controller a PC guest
// needs: the reset line (command 0xFE to port 0x64 is how Linux and most
// bootloaders reboot a PC) and enough of the controller for a guest that
// probes it (status register, controller self-test, the command byte and
// output port) to conclude there is a controller with no keyboard behind
// it instead of hanging. There is no keyboard or mouse emulation and no
// IRQ1/IRQ12.
//
// Port 0x61 (system control port B) is not part of this device; the PIT
// owns it.
package i8042

import (
	"fmt"
	"sync"

	"govmm/devices/bus"
	"govmm/platform"
)

// Registration: DataPort() at 0x60 and CmdPort() at 0x64, each PortSize
// wide.
const PortSize = 1

// Status register bits.
const (
	StatusOBF    = 0x01 // output buffer full (data for the guest at 0x60)
	StatusIBF    = 0x02 // input buffer full (never: we consume writes at once)
	StatusSYS    = 0x04 // system flag (POST passed), mirrors command byte bit 2
	StatusCMD    = 0x08 // last write was to the command port
	StatusUnlock = 0x10 // keyboard not inhibited
)

// Controller commands (written to port 0x64).
const (
	CmdReadCommandByte  = 0x20
	CmdWriteCommandByte = 0x60
	CmdDisableAux       = 0xA7
	CmdEnableAux        = 0xA8
	CmdSelfTest         = 0xAA
	CmdKbdTest          = 0xAB
	CmdDisableKbd       = 0xAD
	CmdEnableKbd        = 0xAE
	CmdReadOutputPort   = 0xD0
	CmdWriteOutputPort  = 0xD1
	CmdPulseReset       = 0xFE
)

// Command byte bits.
const (
	cbKbdInt      = 0x01
	cbSys         = 0x04
	cbKbdDisable  = 0x10
	cbAuxDisable  = 0x20
	cbTranslate   = 0x40
	defaultCmdB   = cbKbdInt | cbSys | cbTranslate
	outResetLine  = 0x01 // output port bit 0: CPU reset (active low)
	outA20        = 0x02
	defaultOutput = outResetLine | outA20
)

// Device is the controller. It is safe for concurrent use; onReset is
// called without the device lock held.
type Device struct {
	onReset func()

	mu sync.Mutex
	s  State
}

// State is the controller's snapshot state.
type State struct {
	Status      uint8 `json:"status"`
	CommandByte uint8 `json:"command_byte"`
	OutputPort  uint8 `json:"output_port"`
	// Output is the byte the guest reads from 0x60 (valid while
	// Status&StatusOBF).
	Output uint8 `json:"output"`
	// Pending is the controller command waiting for its data byte at
	// 0x60 (0x60 or 0xD1), or 0.
	Pending uint8 `json:"pending"`
	// Resets counts reset requests.
	Resets uint64 `json:"resets"`
}

// New returns a controller in its post-POST state. onReset is called when
// the guest pulses the reset line (nil ignores it).
func New(onReset func()) *Device {
	return &Device{onReset: onReset, s: State{
		Status:      StatusSYS | StatusUnlock,
		CommandByte: defaultCmdB,
		OutputPort:  defaultOutput,
	}}
}

// Register claims ports 0x60 and 0x64 on pio (not 0x61: the PIT owns it).
func (d *Device) Register(pio *bus.Bus) error {
	if err := pio.Register(platform.PortI8042Data, PortSize, "i8042-data", d.DataPort()); err != nil {
		return err
	}
	return pio.Register(platform.PortI8042Cmd, PortSize, "i8042-cmd", d.CmdPort())
}

// DataPort is the view of port 0x60.
func (d *Device) DataPort() bus.Device { return port{d, false} }

// CmdPort is the view of port 0x64 (status on read, command on write).
func (d *Device) CmdPort() bus.Device { return port{d, true} }

type port struct {
	d   *Device
	cmd bool
}

func (p port) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if offset != 0 || len(data) == 0 {
		return
	}
	if p.cmd {
		data[0] = p.d.readStatus()
	} else {
		data[0] = p.d.readData()
	}
}

func (p port) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	var reset bool
	if p.cmd {
		reset = p.d.writeCommand(data[0])
	} else {
		reset = p.d.writeData(data[0])
	}
	if reset && p.d.onReset != nil {
		p.d.onReset()
	}
}

func (d *Device) readStatus() uint8 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.s.Status
}

func (d *Device) readData() uint8 {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Reading the data port empties the output buffer; with nothing
	// pending the latch keeps returning the last byte, as the chip does.
	d.s.Status &^= StatusOBF
	return d.s.Output
}

func (d *Device) output(b uint8) {
	d.s.Output = b
	d.s.Status |= StatusOBF
}

// writeCommand handles a controller command and reports whether it
// requests a reset.
func (d *Device) writeCommand(c uint8) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.s.Status |= StatusCMD
	d.s.Pending = 0
	switch {
	case c == CmdReadCommandByte:
		d.output(d.s.CommandByte)
	case c == CmdWriteCommandByte, c == CmdWriteOutputPort:
		d.s.Pending = c
	case c == CmdDisableAux:
		d.s.CommandByte |= cbAuxDisable
	case c == CmdEnableAux:
		d.s.CommandByte &^= cbAuxDisable
	case c == CmdSelfTest:
		d.s.Status |= StatusSYS
		d.s.CommandByte |= cbSys
		d.output(0x55)
	case c == CmdKbdTest:
		d.output(0x00)
	case c == CmdDisableKbd:
		d.s.CommandByte |= cbKbdDisable
	case c == CmdEnableKbd:
		d.s.CommandByte &^= cbKbdDisable
	case c == CmdReadOutputPort:
		d.output(d.s.OutputPort)
	case c&0xF0 == 0xF0:
		// Pulse output lines: low nibble bits that are 0 are pulsed;
		// bit 0 is the CPU reset line (0xFE is the classic reboot).
		if c&outResetLine == 0 {
			d.s.Resets++
			return true
		}
	default:
		// Unimplemented commands (aux loopback, password, ...) get no
		// response, which the guest sees as a timeout.
	}
	return false
}

// writeData handles a byte written to 0x60 and reports whether it
// requests a reset.
func (d *Device) writeData(b uint8) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.s.Status &^= StatusCMD
	p := d.s.Pending
	d.s.Pending = 0
	switch p {
	case CmdWriteCommandByte:
		d.s.CommandByte = b
		d.s.Status = d.s.Status&^StatusSYS | b&cbSys
	case CmdWriteOutputPort:
		d.s.OutputPort = b
		if b&outResetLine == 0 {
			d.s.Resets++
			return true
		}
	default:
		// A byte for the keyboard: there is none, so it is dropped.
	}
	return false
}

// Save returns the controller state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.s
}

// Restore sets the controller state. A Pending value other than 0, 0x60
// or 0xD1 is refused: the controller never waits for data after another
// command.
func (d *Device) Restore(s State) error {
	switch s.Pending {
	case 0, CmdWriteCommandByte, CmdWriteOutputPort:
	default:
		return fmt.Errorf("i8042: restore: pending command %#x takes no data byte", s.Pending)
	}
	s.Status &^= StatusIBF
	d.mu.Lock()
	defer d.mu.Unlock()
	d.s = s
	return nil
}
