package arm64

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"govmm/boot/arm64image"
	"govmm/fdt"
	"govmm/internal/kvmtest"
)

func TestPlace(t *testing.T) {
	h := arm64image.Header{TextOffset: 0, ImageSize: 27 << 20}
	p, err := Place(h, 10<<20, 512<<20)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kernel != RAMBase || p.KernelEnd != RAMBase+27<<20 {
		t.Errorf("kernel %#x-%#x", p.Kernel, p.KernelEnd)
	}
	end := uint64(RAMBase + 512<<20)
	if p.DTB != end-2<<20 || p.DTB%(2<<20) != 0 {
		t.Errorf("DTB at %#x, want the last 2 MiB block %#x", p.DTB, end-2<<20)
	}
	if p.InitrdEnd > p.DTB || p.Initrd < p.KernelEnd || p.Initrd%4096 != 0 || p.InitrdEnd-p.Initrd != 10<<20 {
		t.Errorf("initrd %#x-%#x (kernel ends %#x, DTB %#x)", p.Initrd, p.InitrdEnd, p.KernelEnd, p.DTB)
	}
	if p, err := Place(h, 0, 64<<20); err != nil || p.Initrd != 0 {
		t.Errorf("no initrd: %+v, %v", p, err)
	}
	for name, c := range map[string]struct {
		initrd, mem uint64
	}{
		"kernel too big": {0, 28 << 20},
		"too little":     {0, 32 << 20},
		"initrd too big": {40 << 20, 64 << 20},
		"too much":       {0, 256 << 30},
	} {
		if _, err := Place(h, c.initrd, c.mem); err == nil {
			t.Errorf("%s: placed", name)
		}
	}
}

func tree(t *testing.T, cpus int) (*fdt.Tree, []byte) {
	t.Helper()
	var mpidrs []uint64
	for i := range cpus {
		mpidrs = append(mpidrs, 0x80000000|uint64(i&15)|uint64(i>>4)<<8)
	}
	b, err := DeviceTree(TreeConfig{MemSize: 512 << 20, MPIDRs: mpidrs, Cmdline: "console=ttyAMA0 x", Initrd: 0x5000_0000, InitrdEnd: 0x5010_0000})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := fdt.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return tr, b
}

func u32s(b []byte) []uint32 {
	var out []uint32
	for len(b) >= 4 {
		out = append(out, binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	return out
}

func TestDeviceTree(t *testing.T) {
	tr, _ := tree(t, 18)
	cpus := tr.Lookup("/cpus")
	if cpus == nil || len(cpus.Children) != 18 {
		t.Fatalf("/cpus: %+v", cpus)
	}
	c17 := tr.Lookup("/cpus/cpu@101")
	if c17 == nil {
		t.Fatal("vCPU 17 (MPIDR Aff1=1, Aff0=1) is not /cpus/cpu@101")
	}
	if reg, _ := c17.Prop("reg"); !bytes.Equal(reg, []byte{0, 0, 1, 1}) {
		t.Errorf("cpu@101 reg %x", reg)
	}
	if m, _ := c17.Prop("enable-method"); string(m) != "psci\x00" {
		t.Errorf("enable-method %q", m)
	}
	if m, _ := tr.Lookup("/psci").Prop("method"); string(m) != "hvc\x00" {
		t.Errorf("psci method %q", m)
	}
	gic := tr.Lookup("/intc@8000000")
	reg, _ := gic.Prop("reg")
	if r := u32s(reg); len(r) != 8 || r[1] != GICDistBase || r[5] != GICRedistBase || r[7] != 18*GICRedistStride {
		t.Errorf("GIC reg %#x", r)
	}
	if ph, _ := gic.Prop("phandle"); u32s(ph)[0] != phandleGIC {
		t.Error("GIC phandle")
	}
	uart := tr.Lookup(UARTPath)
	if irq, _ := uart.Prop("interrupts"); !slicesEqual(u32s(irq), []uint32{0, UARTSPI, 4}) {
		t.Errorf("UART interrupts %v", u32s(irq))
	}
	ch := tr.Lookup("/chosen")
	if v, _ := ch.Prop("stdout-path"); string(v) != UARTPath+"\x00" {
		t.Errorf("stdout-path %q", v)
	}
	if v, _ := ch.Prop("linux,initrd-end"); binary.BigEndian.Uint64(v) != 0x5010_0000 {
		t.Errorf("initrd-end %x", v)
	}
	if v, _ := tr.Lookup("/memory@40000000").Prop("reg"); binary.BigEndian.Uint64(v[8:]) != 512<<20 {
		t.Errorf("memory reg %x", v)
	}
	if _, err := DeviceTree(TreeConfig{MemSize: 1 << 30}); err == nil {
		t.Error("a tree without CPUs")
	}

	its := tr.Lookup(fmt.Sprintf("/intc@8000000/its@%x", GICITSBase))
	if its == nil {
		t.Fatal("no ITS under the GIC")
	}
	if _, ok := its.Prop("msi-controller"); !ok {
		t.Error("the ITS is not an msi-controller")
	}
	if v, _ := its.Prop("reg"); !slicesEqual(u32s(v), []uint32{0, GICITSBase, 0, GICITSSize}) {
		t.Errorf("ITS reg %#x", u32s(v))
	}
	pcie := tr.Lookup(PCIPath)
	if pcie == nil {
		t.Fatal("no PCI host bridge")
	}
	if v, _ := pcie.Prop("compatible"); string(v) != "pci-host-ecam-generic\x00" {
		t.Errorf("PCI compatible %q", v)
	}
	if v, _ := pcie.Prop("reg"); !slicesEqual(u32s(v), []uint32{0, PCIECAMBase, 0, PCIECAMSize}) {
		t.Errorf("ECAM reg %#x", u32s(v))
	}
	if v, _ := pcie.Prop("bus-range"); !slicesEqual(u32s(v), []uint32{0, 0}) {
		t.Errorf("bus-range %v: the ECAM window covers bus 0 only", u32s(v))
	}
	if v, _ := pcie.Prop("msi-map"); !slicesEqual(u32s(v), []uint32{0, phandleITS, 0, 0x10000}) {
		t.Errorf("msi-map %#x: want requester IDs mapped one to one onto the ITS's device IDs", u32s(v))
	}
	if _, ok := pcie.Prop("dma-coherent"); !ok {
		t.Error("the host bridge is not dma-coherent: Linux would map virtqueues uncached while the VMM reads them through the cache")
	}
	ranges, _ := pcie.Prop("ranges")
	want := []uint32{0x0200_0000, 0, PCIMMIO32Base, 0, PCIMMIO32Base, 0, PCIMMIO32End - PCIMMIO32Base,
		0x0300_0000, 0x80, 0, 0x80, 0, 0x80, 0}
	if !slicesEqual(u32s(ranges), want) {
		t.Errorf("PCI ranges %#x, want %#x", u32s(ranges), want)
	}
}

// TestMemoryMap: no two regions of the machine overlap, RAM at its
// largest included, and everything lies in KVM's default 40-bit IPA space.
func TestMemoryMap(t *testing.T) {
	type region struct {
		name       string
		base, size uint64
	}
	rs := []region{
		{"GIC distributor", GICDistBase, GICDistSize},
		{"ITS", GICITSBase, GICITSSize},
		{"redistributors", GICRedistBase, MaxCPUs * GICRedistStride},
		{"UART", UARTBase, UARTSize},
		{"PCI MMIO32", PCIMMIO32Base, PCIMMIO32End - PCIMMIO32Base},
		{"ECAM", PCIECAMBase, PCIECAMSize},
		{"RAM", RAMBase, MaxRAM},
		{"PCI MMIO64", PCIMMIO64Base, PCIMMIO64Size},
	}
	for i, a := range rs {
		if a.base+a.size > 1<<40 {
			t.Errorf("%s ends at %#x, beyond the 40-bit IPA space", a.name, a.base+a.size)
		}
		for _, b := range rs[i+1:] {
			if a.base < b.base+b.size && b.base < a.base+a.size {
				t.Errorf("%s %#x+%#x overlaps %s %#x+%#x", a.name, a.base, a.size, b.name, b.base, b.size)
			}
		}
	}
	if GICITSBase%0x1_0000 != 0 {
		t.Error("the ITS is not 64 KiB aligned")
	}
}

func slicesEqual(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDeviceTreeDTC checks the tree with dtc, which warns about nodes that
// break the bindings' conventions (unit addresses, reg sizes, phandles).
func TestDeviceTreeDTC(t *testing.T) {
	dtc, err := exec.LookPath("dtc")
	if err != nil {
		if kvmtest.Required() {
			t.Fatal("dtc not installed (apt-get install device-tree-compiler; .ci/run does)")
		}
		t.Skip("dtc not installed (apt-get install device-tree-compiler)")
	}
	_, b := tree(t, 2)
	cmd := exec.Command(dtc, "-I", "dtb", "-O", "dts", "-")
	cmd.Stdin = bytes.NewReader(b)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dtc: %v\n%s", err, stderr.String())
	}
	if w := stderr.String(); w != "" {
		t.Errorf("dtc warns:\n%s", w)
	}
	for _, want := range []string{`compatible = "arm,gic-v3";`, `enable-method = "psci";`, `compatible = "arm,pl011\0arm,primecell";`, `clock-names = "uartclk\0apb_pclk";`, `compatible = "arm,gic-v3-its";`, `compatible = "pci-host-ecam-generic";`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dts lacks %q", want)
		}
	}
}
