package pci

import (
	"fmt"

	"govmm/devices/bus"
	"govmm/platform"
)

// Configuration mechanism #1: CONFIG_ADDRESS at 0xCF8 (enable bit 31, bus
// 23:16, device 15:11, function 10:8, register 7:2), CONFIG_DATA at
// 0xCFC-0xCFF. Port 0xCF9 is the reset control register of another
// device, so the address port is registered one byte wide (32-bit accesses
// start at 0xCF8, which is all the bus looks up).
const (
	ConfigAddressSize = 1
	ConfigDataSize    = 4
	configEnable      = 1 << 31
)

// RegisterPorts claims CONFIG_ADDRESS and CONFIG_DATA on pio.
func (r *Root) RegisterPorts(pio *bus.Bus) error {
	if err := pio.Register(platform.PortPCIConfig, ConfigAddressSize, "pci-config-address", addressPort{r}); err != nil {
		return fmt.Errorf("pci: %w", err)
	}
	if err := pio.Register(platform.PortPCIConfig+4, ConfigDataSize, "pci-config-data", dataPort{r}); err != nil {
		return fmt.Errorf("pci: %w", err)
	}
	return nil
}

type addressPort struct{ r *Root }

// Read returns the latch at any width, as QEMU's host bridges do.
func (p addressPort) Read(off uint64, data []byte) {
	fill(data)
	if off != 0 {
		return
	}
	a := p.r.addr.Load()
	for i := 0; i < len(data) && i < 4; i++ {
		data[i] = byte(a >> (8 * i))
	}
}

// Write changes the latch on a 32-bit write only: byte writes to
// 0xCF8-0xCFB belong to other functions on real chipsets (0xCF9 reset
// control, 0xCFB mechanism select) and are ignored.
func (p addressPort) Write(off uint64, data []byte) {
	if off != 0 || len(data) != 4 {
		return
	}
	// Bits 1:0 are reserved and read as zero on Intel chipsets; Linux's
	// type-1 probe only checks that bit 31 sticks.
	p.r.addr.Store(le32(data) &^ 3)
}

type dataPort struct{ r *Root }

// target decodes the latch for an access at offset off of CONFIG_DATA;
// ok is false when the enable bit is clear. An access running past 0xCFF
// is clipped to n bytes.
func (p dataPort) target(off uint64, size int) (busNr, slot, fn, reg, n int, ok bool) {
	a := p.r.addr.Load()
	if a&configEnable == 0 || off >= 4 {
		return 0, 0, 0, 0, 0, false
	}
	n = min(size, 4-int(off))
	return int(a>>16) & 0xff, int(a>>11) & 0x1f, int(a>>8) & 7, int(a&0xfc) + int(off), n, true
}

func (p dataPort) Read(off uint64, data []byte) {
	fill(data)
	b, s, f, reg, n, ok := p.target(off, len(data))
	if !ok {
		return
	}
	p.r.ReadConfig(b, s, f, reg, data[:n])
}

func (p dataPort) Write(off uint64, data []byte) {
	b, s, f, reg, n, ok := p.target(off, len(data))
	if !ok {
		return
	}
	p.r.WriteConfig(b, s, f, reg, data[:n])
}

// ECAM is the PCI Express enhanced configuration access window: 4 KiB of
// configuration space per function, 1 MiB per bus, starting with bus 0.
// Accesses of 1, 2 or 4 bytes that do not cross a 4-byte boundary reach
// the function; any other access (8 bytes, unaligned) reads as all ones
// and its writes are dropped, which is what Linux's MMCONFIG accessors
// never produce and what hardware leaves undefined.
type ECAM struct{ r *Root }

// ECAM returns the ECAM window's device, to register on the MMIO bus at
// platform.PCIECAMBase with size platform.PCIECAMSize.
func (r *Root) ECAM() *ECAM { return &ECAM{r} }

func ecamDecode(off uint64, size int) (busNr, slot, fn, reg int, ok bool) {
	reg = int(off & 0xfff)
	if size != 1 && size != 2 && size != 4 || reg%size != 0 {
		return 0, 0, 0, 0, false
	}
	return int(off>>20) & 0xff, int(off>>15) & 0x1f, int(off>>12) & 7, reg, off < 256<<20
}

// Read handles a read at off from the window's base.
func (e *ECAM) Read(off uint64, data []byte) {
	b, s, f, reg, ok := ecamDecode(off, len(data))
	if !ok {
		fill(data)
		return
	}
	e.r.ReadConfig(b, s, f, reg, data)
}

// Write handles a write at off from the window's base.
func (e *ECAM) Write(off uint64, data []byte) {
	if b, s, f, reg, ok := ecamDecode(off, len(data)); ok {
		e.r.WriteConfig(b, s, f, reg, data)
	}
}
