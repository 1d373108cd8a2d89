package debugexit_test

import (
	"encoding/binary"
	"testing"

	"govmm/devices/bus"
	"govmm/devices/debugexit"
	"govmm/devices/i8042"
	"govmm/devices/post"
	"govmm/devices/rtc"
	"govmm/devices/serial"
	"govmm/devices/testdev"
	"govmm/pci"
	"govmm/platform"
)

// TestPlatformWiring registers the legacy devices at their platform
// addresses, the way the VMM does, next to the ranges other packages own
// (PIT and port 0x61, ACPI PM and the 0xCF9 reset register), and checks
// that nothing overlaps and each device answers through the bus.
func TestPlatformWiring(t *testing.T) {
	pio := bus.New("pio", nil)
	mmio := bus.New("mmio", nil)
	var exit int
	var resets int
	dbg := debugexit.New(func(s int) { exit = s })
	kbd := i8042.New(func() { resets++ })
	pcibus := pci.NewRoot(pci.Windows{})
	clock := rtc.New(nil, nil)
	defer clock.Close()
	uart := serial.New(nil, nil)
	td := testdev.New()
	reg := func(b *bus.Bus, base, size uint64, name string, d bus.Device) {
		t.Helper()
		if err := b.Register(base, size, name, d); err != nil {
			t.Fatal(err)
		}
	}
	reg(pio, platform.PortCOM1, serial.Size, "uart0", uart)
	reg(pio, platform.PortCMOS, rtc.Size, "rtc", clock)
	reg(pio, platform.PortPOST, post.Size, "post", post.New(nil))
	reg(pio, platform.PortDebugExit, debugexit.Size, "debug-exit", dbg)
	if err := kbd.Register(pio); err != nil {
		t.Fatal(err)
	}
	if err := pcibus.RegisterPorts(pio); err != nil {
		t.Fatal(err)
	}
	reg(mmio, platform.PCIECAMBase, platform.PCIECAMSize, "pci-ecam", pcibus.ECAM())
	reg(mmio, platform.TestDeviceBase, testdev.Size, "testdev", td)
	// Neighbours owned by other packages must still fit.
	other := fakeDev{}
	reg(pio, platform.PortPIT, 4, "pit", other)
	reg(pio, platform.PortSpeaker, 1, "port61", other)
	reg(pio, platform.PortACPIReset, 1, "acpi-reset", other)
	reg(pio, platform.PortACPIPM, platform.PortACPIPMSize, "acpi-pm", other)

	b1 := []byte{0}
	pio.Read(platform.PortCOM1+serial.RegLSR, b1)
	if b1[0]&serial.LSRTHRE == 0 {
		t.Fatalf("UART LSR %#x", b1[0])
	}
	pio.Write(platform.PortCMOS, []byte{rtc.RegD})
	pio.Read(platform.PortCMOS+1, b1)
	if b1[0] != rtc.DVRT {
		t.Fatalf("RTC D %#x", b1[0])
	}
	pio.Write(platform.PortI8042Cmd, []byte{0xFE})
	if resets != 1 {
		t.Fatal("i8042 reset not reached")
	}
	v := make([]byte, 4)
	binary.LittleEndian.PutUint32(v, 0x80000000)
	pio.Write(platform.PortPCIConfig, v)
	pio.Read(platform.PortPCIConfig+4, v)
	if binary.LittleEndian.Uint32(v) != pci.DeviceRedHatHost<<16|pci.VendorRedHat {
		t.Fatalf("PCI config data (00:00.0 IDs) %x", v)
	}
	pio.Write(platform.PortDebugExit, []byte{0x10})
	if exit != 0x21 {
		t.Fatalf("debug exit status %#x", exit)
	}
	mmio.Write(platform.TestDeviceBase+8, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if td.Snapshot()[8] != 1 {
		t.Fatal("testdev write not reached")
	}
	if r, w := pio.Unclaimed(); r != 0 || w != 0 {
		t.Fatalf("unclaimed accesses %d/%d", r, w)
	}
}

type fakeDev struct{}

func (fakeDev) Read(uint64, []byte)  {}
func (fakeDev) Write(uint64, []byte) {}
