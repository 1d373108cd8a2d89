// Command gofloor is the benchmark's Go floor: the least a Go program can do
// to run the benchmark guest on KVM through govmm's own KVM backend and
// loader, with no device model, interrupt controllers or firmware tables.
// Between go-min (bench/gomin, the C floor in Go: the runtime's cost) and
// govmm it shows what govmm's backend and loader add to start-up and what
// the rest of the machine adds.
//
// usage: gofloor KERNEL.elf [MEM_MIB]
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"govmm/accel"
	"govmm/accel/kvm"
	"govmm/boot"
	"govmm/memory"
)

// exitOnDebugPort completes every access and ends the run on port 0xf4
// (kicking its own vCPU, so Run returns before the guest goes on).
type exitOnDebugPort struct {
	code int
	cpu  accel.VCPU
}

func (h *exitOnDebugPort) PIORead(port uint16, data []byte) {}
func (h *exitOnDebugPort) PIOWrite(port uint16, data []byte) {
	if port == 0xf4 {
		h.code = int(data[0])<<1 | 1
		h.cpu.Kick()
	}
}
func (h *exitOnDebugPort) MMIORead(addr uint64, data []byte)  {}
func (h *exitOnDebugPort) MMIOWrite(addr uint64, data []byte) {}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gofloor:", err)
		os.Exit(70)
	}
}

func run() error {
	if len(os.Args) < 2 {
		return fmt.Errorf("usage: gofloor KERNEL.elf [MEM_MIB]")
	}
	mib := 64
	if len(os.Args) > 2 {
		mib, _ = strconv.Atoi(os.Args[2])
	}
	img, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	a, err := kvm.Open()
	if err != nil {
		return err
	}
	mem, err := memory.New(uint64(mib) << 20)
	if err != nil {
		return err
	}
	vm, err := a.CreateVM(accel.VMConfig{NumVCPUs: 1})
	if err != nil {
		return err
	}
	for _, r := range mem.Regions() {
		if err := vm.MapMemory(accel.MemoryRegion{GPA: r.GPA, Host: r.Host}); err != nil {
			return err
		}
	}
	entry, err := boot.Load(mem, img, boot.Options{})
	if err != nil {
		return err
	}
	c, err := vm.CreateVCPU(0)
	if err != nil {
		return err
	}
	if err := c.SetSregs(&entry.Sregs); err != nil {
		return err
	}
	if err := c.SetRegs(&entry.Regs); err != nil {
		return err
	}
	h := &exitOnDebugPort{cpu: c}
	for h.code == 0 {
		exit, err := c.Run(h)
		if err != nil {
			return err
		}
		if exit.Reason != accel.ExitInterrupted {
			return fmt.Errorf("unexpected exit %v", exit.Reason)
		}
	}
	os.Exit(h.code)
	return nil
}
