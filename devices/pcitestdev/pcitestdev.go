// Package pcitestdev is QEMU's pci-testdev (PCI 1b36:0005), the device
// x86 conformance suites (kvm-unit-tests' pcitest) use to check that port
// I/O and MMIO writes to a PCI BAR reach the VMM. govmm offers it with
// --test-devices, so such suites run on govmm unchanged and the PCI host
// bridge has a device with both kinds of BAR to enumerate and place.
//
// The device has two BARs: BAR 0, 4 KiB of memory, and BAR 1, 256 I/O
// ports. Both hold the same register file, in byte-wide registers (wider
// accesses act as consecutive byte accesses, as QEMU's memory core splits
// them):
//
//	offset 0            write: select test n (0-2) of the BAR's kind
//	                    (memory: mmio-no-eventfd, mmio-wildcard-eventfd,
//	                    mmio-datamatch-eventfd; I/O: the portio-* ones);
//	                    a value above 2 deselects
//	offsets 0..         read: the selected test's header, byte by byte:
//	                    test number (0-5), access width (1), offset
//	                    (32-bit) the guest writes to, data byte it writes,
//	                    count (32-bit) of matching writes, name (NUL-ended)
//	offset 2048+n (mem) writing the data byte (any byte for the wildcard
//	offset 128+n (I/O)  test) counts once per byte written
//
// QEMU binds ioeventfds to the eventfd tests and then leaves count at zero;
// govmm counts every write (kvm-unit-tests accepts both).
package pcitestdev

import (
	"encoding/binary"
	"fmt"
	"sync"

	"govmm/pci"
)

// Identity and layout, as in QEMU's hw/misc/pci-testdev.c.
const (
	Vendor   = pci.VendorRedHat
	DeviceID = 0x0005
	// Slot is where govmm puts the device on bus 0: the last slot,
	// leaving the low ones to the devices users add.
	Slot = 31

	MemBARSize = 4096 // BAR 0
	IOBARSize  = 256  // BAR 1

	numKinds   = 3 // tests per BAR kind
	memOffset  = 2048
	ioOffset   = 128
	dataMatch  = 0xFA
	dataAny    = 0xCE
	hdrSize    = 16
	offCount   = 12
	noTest     = -1
	numTests   = 2 * numKinds
	testSelect = 0
)

var testNames = [numTests]string{
	"mmio-no-eventfd", "mmio-wildcard-eventfd", "mmio-datamatch-eventfd",
	"portio-no-eventfd", "portio-wildcard-eventfd", "portio-datamatch-eventfd",
}

// State is the device's saved state (its configuration space is saved
// with the PCI bus).
type State struct {
	// Current is the selected test (0-5), or -1.
	Current int `json:"current"`
	// Counts are the tests' counters.
	Counts [numTests]uint32 `json:"counts"`
}

// Device is one pci-testdev. It is safe for concurrent use.
type Device struct {
	fn *pci.Function

	mu sync.Mutex
	s  State
}

// New returns the device with no test selected.
func New() (*Device, error) {
	d := &Device{s: State{Current: noTest}}
	d.fn = pci.NewFunction(pci.Identity{Vendor: Vendor, Device: DeviceID, Class: 0x00, Subclass: 0xff})
	if err := d.fn.SetBAR(0, pci.BAR{Kind: pci.BARMem32, Size: MemBARSize, Dev: bar{d, 0}}); err != nil {
		return nil, fmt.Errorf("pci-testdev: %w", err)
	}
	if err := d.fn.SetBAR(1, pci.BAR{Kind: pci.BARIO, Size: IOBARSize, Dev: bar{d, 1}}); err != nil {
		return nil, fmt.Errorf("pci-testdev: %w", err)
	}
	return d, nil
}

// Function is the device's PCI function, to add to the bus.
func (d *Device) Function() *pci.Function { return d.fn }

// header returns test t's header bytes. d.mu is held.
func (d *Device) header(t int) []byte {
	off := uint32(memOffset + t)
	data := byte(dataMatch)
	if t >= numKinds {
		off = uint32(ioOffset + t)
	}
	if t%numKinds == 1 {
		data = dataAny
	}
	h := make([]byte, hdrSize, hdrSize+len(testNames[t])+1)
	h[0], h[1] = byte(t), 1
	binary.LittleEndian.PutUint32(h[4:], off)
	h[8] = data
	binary.LittleEndian.PutUint32(h[offCount:], d.s.Counts[t])
	return append(append(h, testNames[t]...), 0)
}

// bar is one BAR's view; kind 0 is memory, 1 is I/O.
type bar struct {
	d    *Device
	kind int
}

func (b bar) size() uint64 {
	if b.kind == 0 {
		return MemBARSize
	}
	return IOBARSize
}

func (b bar) Read(off uint64, data []byte) {
	b.d.mu.Lock()
	defer b.d.mu.Unlock()
	var h []byte
	if b.d.s.Current != noTest {
		h = b.d.header(b.d.s.Current)
	}
	for i := range data {
		a := off + uint64(i)
		data[i] = 0
		// QEMU returns 0 for a byte whose end reaches the buffer's
		// end, so the NUL of the name reads as 0 either way.
		if h != nil && a < b.size() && a+1 < uint64(len(h)) {
			data[i] = h[a]
		}
	}
}

func (b bar) Write(off uint64, data []byte) {
	b.d.mu.Lock()
	defer b.d.mu.Unlock()
	for i, v := range data {
		a := off + uint64(i)
		if a >= b.size() {
			return
		}
		b.d.writeByte(b.kind, a, v)
	}
}

// writeByte is one byte-wide write. d.mu is held.
func (d *Device) writeByte(kind int, a uint64, v byte) {
	if a == testSelect {
		d.s.Current = noTest
		if int(v) < numKinds {
			t := kind*numKinds + int(v)
			d.s.Current, d.s.Counts[t] = t, 0
		}
		return
	}
	t := d.s.Current
	if t == noTest {
		return
	}
	h := d.header(t)
	if a != uint64(binary.LittleEndian.Uint32(h[4:])) {
		return
	}
	if t%numKinds != 1 && v != h[8] { // all but the wildcard test match the data
		return
	}
	d.s.Counts[t]++
}

// Save returns the device's state.
func (d *Device) Save() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.s
}

// Restore loads a saved state.
func (d *Device) Restore(s State) error {
	if s.Current < noTest || s.Current >= numTests {
		return fmt.Errorf("pci-testdev restore: test %d out of range", s.Current)
	}
	d.mu.Lock()
	d.s = s
	d.mu.Unlock()
	return nil
}
