//go:build linux && arm64

package arm64

import (
	"encoding/binary"
	"os"
	"strings"
	"sync"
	"testing"

	"govmm/accel"
	"govmm/accel/kvmarm"
	"govmm/boot/arm64image"
)

// needKVM skips a test without /dev/kvm (these run in the aarch64 L1).
func needKVM(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
			t.Fatal("no /dev/kvm")
		}
		t.Skip("no /dev/kvm")
	}
}

// bareImage wraps AArch64 instructions in an arm64 Image header: the
// first word branches over the header to them.
func bareImage(code ...uint32) []byte {
	b := make([]byte, arm64image.HeaderSize, 4096)
	le := binary.LittleEndian
	le.PutUint32(b[0:], 0x14000010) // b +64
	le.PutUint64(b[16:], 4096)      // image_size
	le.PutUint64(b[24:], 0xa)       // 4K pages, anywhere
	le.PutUint32(b[56:], arm64image.Magic)
	for _, c := range code {
		b = le.AppendUint32(b, c)
	}
	return b
}

// Instructions of the test guests.
const (
	movX0UART    = 0xd2a12000 // movz x0, #0x0900, lsl #16 (UARTBase)
	movW1A       = 0x52800821 // movz w1, #'A'
	strW1X0      = 0xb9000001 // str w1, [x0]
	stpX1X1X0    = 0xa9000401 // stp x1, x1, [x0] (no ISV: KVM cannot decode it)
	movW0Off     = 0x52800100 // movz w0, #0x0008
	movkW0PSCI   = 0x72b08000 // movk w0, #0x8400, lsl #16: 0x84000008 SYSTEM_OFF
	movW0Reset   = 0x52800120 // movz w0, #0x0009: with movk, SYSTEM_RESET
	hvc0         = 0xd4000002 // hvc #0
	branchToSelf = 0x14000000 // b .
)

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runBare(t *testing.T, cpus int, code ...uint32) (Result, string) {
	t.Helper()
	var out syncBuf
	m, err := New(Config{MemSize: 64 << 20, NumCPUs: cpus, Kernel: bareImage(code...), KernelName: t.Name(), Serial: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return m.Run(), out.String()
}

// TestPL011AndSystemOff: a store KVM decodes reaches the PL011, and PSCI
// SYSTEM_OFF powers the machine off (the secondary vCPU, never started,
// is stopped too).
func TestPL011AndSystemOff(t *testing.T) {
	needKVM(t)
	res, out := runBare(t, 2, movX0UART, movW1A, strW1X0, strW1X0, movW0Off, movkW0PSCI, hvc0, branchToSelf)
	if res.Stop != StopPowerOff || res.Err != nil {
		t.Fatalf("stop %v, err %v; want power-off", res.Stop, res.Err)
	}
	if out != "AA" {
		t.Errorf("console %q, want \"AA\"", out)
	}
}

func TestSystemReset(t *testing.T) {
	needKVM(t)
	res, _ := runBare(t, 1, movW0Reset, movkW0PSCI, hvc0, branchToSelf)
	if res.Stop != StopReset {
		t.Fatalf("stop %v, err %v; want reset", res.Stop, res.Err)
	}
}

// TestUndecodableMMIO: a store pair to the UART carries no instruction
// syndrome; the guest ends with an error naming the address and the ESR.
func TestUndecodableMMIO(t *testing.T) {
	needKVM(t)
	res, _ := runBare(t, 1, movX0UART, movW1A, stpX1X1X0, branchToSelf)
	if res.Stop != StopCrash || res.Err == nil {
		t.Fatalf("stop %v, err %v; want a crash", res.Stop, res.Err)
	}
	msg := res.Err.Error()
	for _, want := range []string{"0x9000000", "ESR", "write"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	t.Log(msg)
}

// TestITSRouting: with the ITS in place, KVM accepts the MSI routes the
// PCI functions' vectors get (each with its ITS device ID), irqfds on
// them and MMIO ioeventfds for the doorbells; a resample irqfd is refused
// with a reason on an MSI GSI, and taken on the INTx SPIs' GSIs.
func TestITSRouting(t *testing.T) {
	needKVM(t)
	m, err := New(Config{MemSize: 64 << 20, NumCPUs: 1, Kernel: bareImage(branchToSelf), KernelName: t.Name(), Virtio: VirtioConfig{RNG: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if f := m.pci.Function(1, 0); f == nil {
		t.Fatal("no virtio-rng function at 00:01.0")
	}
	gsi, err := m.routes.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	m.vm.SetMSIDevID(gsi, kvmarm.RequesterID(0, 1, 0))
	// GITS_TRANSLATER is at offset 0x10040 of the ITS frame; the data is
	// the event ID.
	if err := m.routes.SetMSI(gsi, accel.MSI{AddressLo: GICITSBase + 0x1_0040, Data: 3}); err != nil {
		t.Fatal(err)
	}
	if err := m.routes.Commit(); err != nil {
		t.Fatalf("KVM refused an MSI route with a device ID: %v", err)
	}
	f, err := m.routes.NewIRQFD(gsi, false)
	if err != nil {
		t.Fatalf("irqfd on the ITS route: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}
	if _, err := m.routes.NewIRQFD(gsi, true); err == nil || !strings.Contains(err.Error(), "resample") {
		t.Errorf("resample irqfd: %v, want a refusal naming resampling", err)
	}
	// INTx: KVM takes a resample irqfd on each INTx SPI's GSI, which the
	// machine routed to the SPI (KVM_IRQ_ROUTING_IRQCHIP).
	for i := range PCINumINTxSPIs {
		spi := uint32(PCIINTxSPIBase + i)
		rf, err := m.routes.NewIRQFD(spi, true)
		if err != nil {
			t.Errorf("resample irqfd on INTx SPI %d: %v", spi, err)
			continue
		}
		if rf.InUserspace() {
			t.Errorf("INTx SPI %d: the resample irqfd is served in userspace, not by KVM", spi)
		}
		if err := rf.Close(); err != nil {
			t.Error(err)
		}
	}
	e, err := m.routes.NewIOEventFD(PCIMMIO32Base+0x3000, 2, false, nil)
	if err != nil {
		t.Fatalf("MMIO ioeventfd: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Error(err)
	}
}
