package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"govmm/accel"
	"govmm/cpu"
	"govmm/devices/acpipm"
	"govmm/devices/irqtestdev"
	"govmm/devices/pcihp"
	"govmm/devices/pcitestdev"
	"govmm/devices/pctestdev"
	"govmm/devices/pit"
	"govmm/devices/rtc"
	"govmm/devices/serial"
	"govmm/devices/testdev"
	"govmm/irq/chipset"
	"govmm/pci"
	"govmm/snapshot"
	"govmm/vfio"
	"govmm/virtio"
	"govmm/virtio/balloon"
	"govmm/virtio/console"
)

// Section versions of the state this package writes. Bump one when its
// layout changes incompatibly and keep reading the old one where possible.
//
// The machine record is version 2 when it lists hot-added devices
// (MachineState.HotAdded) and version 1 otherwise, so that a govmm from
// before hot-added devices still restores a snapshot without them, and
// refuses one with them, naming the version, instead of building a
// machine without the devices.
const (
	machineVersion   = 2
	machineVersionV1 = 1 // no hot-added devices
	vcpuVersion      = 1
	devicesVersion   = 1
	clockVersion     = 1
)

// MachineState describes the VM a snapshot belongs to. A restore must
// build the same machine: memory size and vCPU count are checked, not
// adapted, because the guest already knows them.
type MachineState struct {
	MemSize uint64             `json:"mem_size"`
	NumCPUs int                `json:"num_cpus"`
	CPUID   []accel.CPUIDEntry `json:"cpuid"`
	Accel   string             `json:"saved_on_accel"`
	Cmdline string             `json:"cmdline,omitempty"`
	// TestDevices: the VM has the project's MMIO test devices.
	TestDevices bool `json:"test_devices,omitempty"`
	// NoPMU: the CPU model removed the PMU.
	NoPMU bool `json:"no_pmu,omitempty"`
	// CPUModel is the --cpu model CPUID was derived from ("x86-64-v3",
	// "host,-avx512f"); snapshots older than named models lack it: host.
	CPUModel string `json:"cpu_model,omitempty"`
	// Topology is the --topology the vCPUs were arranged in; snapshots
	// without it (and VMs booted without the flag) have one socket of
	// NumCPUs cores.
	Topology accel.Topology `json:"topology,omitzero"`
	// FeatureMSRs are the CPU model's feature MSRs (IA32_ARCH_CAPABILITIES),
	// which the destination must be able to present.
	FeatureMSRs []accel.MSR `json:"feature_msrs,omitempty"`
	// HotAdded are the devices hot-added and still present, by slot
	// (machine record version 2): a restore and a migration's
	// destination rebuild them after the boot-time devices of their
	// flags.
	HotAdded []HotAddedDevice `json:"hot_added,omitempty"`
}

// VCPUState is one vCPU's architectural state in the neutral form.
type VCPUState struct {
	Regs      accel.Regs      `json:"regs"`
	Sregs     accel.Sregs     `json:"sregs"`
	FPU       accel.FPU       `json:"fpu"`
	XSave     []byte          `json:"xsave,omitempty"`
	XCRs      []accel.XCR     `json:"xcrs,omitempty"`
	MSRs      []accel.MSR     `json:"msrs"`
	LAPIC     accel.LAPIC     `json:"lapic"`
	Events    accel.Events    `json:"events"`
	MPState   accel.MPState   `json:"mp_state"`
	DebugRegs accel.DebugRegs `json:"debug_regs"`
	// SynIC is present when the vCPU has one: always on MSHV, on KVM when
	// the guest's CPUID grants it (a guest that came from MSHV).
	SynIC *accel.SynIC `json:"synic,omitempty"`
	// SSP is CET's current shadow-stack pointer, present when the vCPU's
	// CPUID offers shadow stacks (the rest of CET travels as MSRs).
	SSP *uint64 `json:"ssp,omitempty"`
}

// DeviceState is the userspace device model's state.
type DeviceState struct {
	Chipset chipset.State     `json:"chipset"`
	UART    serial.State      `json:"uart"`
	RTC     rtc.State         `json:"rtc"`
	PIT     pit.State         `json:"pit"`
	PM      acpipm.State      `json:"acpi_pm"`
	TestDev *testdev.State    `json:"testdev,omitempty"`
	IRQTest *irqtestdev.State `json:"irqtestdev,omitempty"`
	PCTest  *pctestdev.State  `json:"pc_testdev,omitempty"`
	PCITest *pcitestdev.State `json:"pci_testdev,omitempty"`
	PCI     *pci.State        `json:"pci,omitempty"`
	// Virtio is each virtio device's transport and queue state, in
	// slot order.
	Virtio []virtio.PCIState `json:"virtio,omitempty"`
	// VirtioConsole is the virtio console's own state (host input not
	// yet delivered), when the VM has one.
	VirtioConsole *console.State `json:"virtio_console,omitempty"`
	// VirtioBalloon is the balloon's target and actual, when the VM has
	// one.
	VirtioBalloon *balloon.State `json:"virtio_balloon,omitempty"`
	// Hotplug is the PCI hotplug controller's state (slots announced
	// that the guest has not read yet); snapshots from before hot-add
	// lack it.
	Hotplug *pcihp.State `json:"pci_hotplug,omitempty"`
}

// ClockState is the guest clock at save time.
type ClockState struct {
	NS uint64 `json:"ns"`
}

// Machine describes the machine this VM is (what a restore must rebuild),
// its hot-added devices included.
func (v *VM) Machine() MachineState {
	v.hotMu.Lock()
	defer v.hotMu.Unlock()
	return v.machineLocked()
}

// machineLocked is Machine with v.hotMu held.
func (v *VM) machineLocked() MachineState {
	return MachineState{
		MemSize: v.mem.Size(), NumCPUs: v.cfg.NumCPUs, CPUID: v.cfg.CPUID,
		Accel: v.cfg.Accel.Name(), Cmdline: v.cfg.Cmdline, TestDevices: v.cfg.TestDevices, NoPMU: v.cfg.NoPMU,
		CPUModel: v.cfg.CPUModel, Topology: v.cfg.Topology, FeatureMSRs: v.cfg.FeatureMSRs,
		HotAdded: v.hotAddedLocked(),
	}
}

// addMachine adds the machine record to st, at the version its content
// needs (see machineVersion).
func addMachine(st *snapshot.State, m MachineState) error {
	ver := uint32(machineVersion)
	if len(m.HotAdded) == 0 {
		ver = machineVersionV1
	}
	return st.Add("machine", ver, m)
}

// SaveState captures the whole VM state (not guest memory). The VM must be paused.
func (v *VM) SaveState() (*snapshot.State, error) {
	if !v.Paused() {
		return nil, errors.New("save state: the VM is not paused")
	}
	if err := v.plat.vfio.refuseUnmigratable("a snapshot"); err != nil {
		return nil, err
	}
	// No eject (its goroutine may still run after the vCPU that asked
	// for it paused) nor hot-add changes the devices while they are
	// saved: the record, the bus and the transports agree.
	v.hotMu.Lock()
	defer v.hotMu.Unlock()
	if err := v.refuseUncarriedLocked("a snapshot"); err != nil {
		return nil, err
	}
	st := &snapshot.State{}
	if err := addMachine(st, v.machineLocked()); err != nil {
		return nil, err
	}
	for i := 0; i < v.cfg.NumCPUs; i++ {
		var cs VCPUState
		if err := v.onVCPU(i, func(c accel.VCPU) error { return captureVCPU(c, &cs) }); err != nil {
			return nil, fmt.Errorf("save vCPU %d: %w", i, err)
		}
		if err := st.Add(fmt.Sprintf("vcpu/%d", i), vcpuVersion, cs); err != nil {
			return nil, err
		}
	}
	p := v.plat
	if err := p.uart.Flush(); err != nil {
		v.log.Warn("serial output flush before save", "err", err)
	}
	ds := DeviceState{
		Chipset: p.chips.Save(), UART: p.uart.Save(), RTC: p.rtc.Save(), PIT: p.pit.Save(), PM: p.pm.Save(),
	}
	if p.testdev != nil {
		td, it, pt := p.testdev.Save(), p.irqdev.Save(), p.pctest.Save()
		ds.PCTest = &pt
		pt2 := p.pcitest.Save()
		ds.PCITest = &pt2
		ds.TestDev, ds.IRQTest = &td, &it
	}
	ps := p.pci.Save()
	ds.PCI = &ps
	for _, d := range p.virtio {
		// Pause quiesced them: no request is in flight.
		ds.Virtio = append(ds.Virtio, d.Transport.Save())
	}
	if p.console != nil {
		cs := p.console.Save()
		ds.VirtioConsole = &cs
	}
	if b := p.virtioSet.Balloon; b != nil {
		bs := b.Save()
		ds.VirtioBalloon = &bs
	}
	if p.hotplug != nil {
		hs := p.hotplug.Save()
		ds.Hotplug = &hs
	}
	if err := st.Add("devices", devicesVersion, ds); err != nil {
		return nil, err
	}
	ns, err := v.avm.Clock()
	if err != nil && !errors.Is(err, accel.ErrNotSupported) {
		return nil, fmt.Errorf("save guest clock: %w", err)
	}
	if err := st.Add("clock", clockVersion, ClockState{NS: ns}); err != nil {
		return nil, err
	}
	// Last, once nothing else can fail: the devices stop here and run
	// again when the VM resumes.
	if err := p.vfio.save(st); err != nil {
		return nil, err
	}
	return st, nil
}

// steps runs named steps in order until one fails, and keeps that first
// failure's error, prefixed with its name and the steps' verb.
type steps struct {
	verb string // "" or "restore"
	err  error
}

func (s *steps) step(what string, f func() error) {
	if s.err != nil {
		return
	}
	if e := f(); e != nil {
		if s.verb != "" {
			what = s.verb + " " + what
		}
		s.err = fmt.Errorf("%s: %w", what, e)
	}
}

func captureVCPU(c accel.VCPU, s *VCPUState) error {
	var st steps
	step := st.step
	step("registers", func() (e error) { s.Regs, e = c.Regs(); return })
	step("segment registers", func() (e error) { s.Sregs, e = c.Sregs(); return })
	step("FPU", func() (e error) { s.FPU, e = c.FPU(); return })
	step("XSAVE", func() error {
		x, e := c.XSave()
		if errors.Is(e, accel.ErrNotSupported) {
			return nil
		}
		s.XSave = x.Data
		return e
	})
	step("XCRs", func() (e error) {
		s.XCRs, e = c.XCRs()
		if errors.Is(e, accel.ErrNotSupported) {
			return nil
		}
		return e
	})
	step("MSRs", func() error {
		idx, e := c.MSRIndexList()
		if e != nil {
			return e
		}
		s.MSRs, e = c.MSRs(guestStateMSRs(idx))
		return e
	})
	step("LAPIC", func() (e error) { s.LAPIC, e = c.LAPIC(); return })
	step("events", func() (e error) { s.Events, e = c.Events(); return })
	step("MP state", func() (e error) { s.MPState, e = c.MPState(); return })
	step("debug registers", func() (e error) { s.DebugRegs, e = c.DebugRegs(); return })
	if sc, ok := c.(accel.SynICVCPU); ok {
		step("SynIC", func() error {
			syn, e := sc.SynIC()
			if errors.Is(e, accel.ErrNotSupported) {
				return nil // a KVM vCPU whose CPUID grants no SynIC
			}
			s.SynIC = &syn
			return e
		})
	}
	if sc, ok := c.(accel.ShadowStackVCPU); ok {
		step("shadow-stack pointer", func() error {
			ssp, e := sc.SSP()
			if errors.Is(e, accel.ErrNotSupported) {
				return nil // no shadow stacks in the vCPU's CPUID
			}
			s.SSP = &ssp
			return e
		})
	}
	return st.err
}

// restoreVCPU applies s in the order both accelerators accept: control
// state first (segments and control registers decide how the rest is read),
// then registers, FPU/XSAVE, MSRs (TSC among them), the LAPIC, events and
// finally the run state.
//
// bsp is vCPU 0's saved state when s is another vCPU's (nil for vCPU 0),
// for the MSRs one vCPU holds for the whole VM (partitionMSRs).
func restoreVCPU(c accel.VCPU, s *VCPUState, bsp *VCPUState) error {
	st := steps{verb: "restore"}
	step := st.step
	var deadline []accel.MSR // IA32_TSC_DEADLINE, set after the LAPIC
	step("segment registers", func() error { return c.SetSregs(&s.Sregs) })
	step("registers", func() error { return c.SetRegs(&s.Regs) })
	if len(s.XCRs) > 0 {
		step("XCRs", func() error { return c.SetXCRs(s.XCRs) })
	}
	step("FPU", func() error { return c.SetFPU(&s.FPU) })
	if len(s.XSave) > 0 {
		step("XSAVE", func() error { return c.SetXSave(&accel.XSave{Data: s.XSave}) })
	}
	step("MSRs", func() error {
		var bspMSRs []accel.MSR
		if bsp != nil {
			bspMSRs = bsp.MSRs
		}
		msrs, err := portableMSRs(c, s.MSRs, bspMSRs)
		if err != nil {
			return err
		}
		var late []accel.MSR
		msrs, late = splitLateMSRs(msrs)
		if err := c.SetMSRs(msrs); err != nil {
			return err
		}
		deadline = late
		return nil
	})
	step("LAPIC", func() error { return c.SetLAPIC(&s.LAPIC) })
	if len(deadline) > 0 {
		step("TSC deadline", func() error { return c.SetMSRs(deadline) })
	}
	if s.SSP != nil {
		// After the MSRs: S_CET, U_CET and the privilege levels'
		// pointers are in place.
		step("shadow-stack pointer", func() error {
			sc, ok := c.(accel.ShadowStackVCPU)
			if !ok {
				if *s.SSP == 0 {
					return nil // no shadow stack in use
				}
				return fmt.Errorf("the saved vCPU has shadow-stack pointer %#x, and this accelerator cannot hold it", *s.SSP)
			}
			e := sc.SetSSP(*s.SSP)
			if errors.Is(e, accel.ErrNotSupported) && *s.SSP == 0 {
				return nil
			}
			return e
		})
	}
	step("events", func() error { return c.SetEvents(&s.Events) })
	step("debug registers", func() error { return c.SetDebugRegs(&s.DebugRegs) })
	if s.SynIC != nil {
		step("SynIC", func() error {
			sc, ok := c.(accel.SynICVCPU)
			switch {
			case ok:
				return sc.SetSynIC(s.SynIC)
			case s.SynIC.InUse():
				return errors.New("the saved vCPU uses the Hyper-V SynIC (pages or synthetic timers), which this accelerator does not offer")
			}
			return nil // an untouched SynIC has nothing to carry over
		})
	}
	step("MP state", func() error { return c.SetMPState(s.MPState) })
	return st.err
}

// notGuestState are MSRs an accelerator may list that are not guest state
// of their own: EFER and APIC_BASE travel in the segment-register class,
// and the read-only model MSRs are fixed by the CPU model, not by the guest.
var notGuestState = map[uint32]string{
	0xc0000080: "EFER (saved with the control registers)",
	0x0000001b: "APIC_BASE (saved with the control registers)",
	0x0000010a: "ARCH_CAPABILITIES (CPU model)",
	0x000000ce: "PLATFORM_INFO (CPU model)",
	0x00000345: "PERF_CAPABILITIES (CPU model)",
	0x0000008b: "UCODE_REV (CPU model)",
	// Hyper-V's read-only MSRs, which KVM lists on hosts with its Hyper-V
	// emulation: the VP index, clocks the accelerator derives (the
	// reference counter follows the restored guest clock) and fixed
	// frequencies.
	0x40000002: "HV_X64_MSR_VP_INDEX (the vCPU's index, fixed when it is created)",
	0x40000010: "HV_X64_MSR_VP_RUNTIME (derived clock)",
	0x40000020: "HV_X64_MSR_TIME_REF_COUNT (derived clock)",
	0x40000022: "HV_X64_MSR_TSC_FREQUENCY (CPU model)",
	0x40000023: "HV_X64_MSR_APIC_FREQUENCY (CPU model)",
	0x40000081: "HV_X64_MSR_SVERSION (the SynIC's read-only version)",
	0x40000084: "HV_X64_MSR_EOM (an action: a write delivers the next SynIC message)",
}

// guestStateMSRs filters an accelerator's MSR list down to guest state.
func guestStateMSRs(list []uint32) []uint32 {
	out := make([]uint32, 0, len(list))
	for _, i := range list {
		if _, skip := notGuestState[i]; !skip {
			out = append(out, i)
		}
	}
	return out
}

// msrTSCDeadline is IA32_TSC_DEADLINE, the LAPIC timer's deadline in
// TSC-deadline mode.
const msrTSCDeadline = 0x6e0

// splitLateMSRs takes IA32_TSC_DEADLINE out of msrs: it is restored after
// the LAPIC, because KVM_SET_LAPIC cancels the LAPIC timer and with it an
// armed deadline (QEMU writes it last for the same reason,
// kvm_put_tscdeadline_msr). Set with the other MSRs, a guest whose timer
// runs in TSC-deadline mode (Linux, wherever CPUID offers the mode) would
// wait for ever for its next tick after a restore.
func splitLateMSRs(msrs []accel.MSR) (early, late []accel.MSR) {
	early = msrs[:0:0]
	for _, m := range msrs {
		if m.Index == msrTSCDeadline {
			late = append(late, m)
		} else {
			early = append(early, m)
		}
	}
	return early, late
}

// msrResetValue lists MSRs whose reset value is not zero.
var msrResetValue = func() map[uint32]uint64 {
	m := map[uint32]uint64{
		0x4b564d05: 1,           // MSR_KVM_POLL_CONTROL: host-side halt polling allowed
		0x0000009e: 0x30000,     // IA32_SMBASE (KVM lists it where it offers SMM; govmm's guests have none)
		0xc0000104: 0x100000000, // AMD TSC_RATIO: 1.0 in 8.32 fixed point (nested SVM's TSC scaling)
	}
	// Hyper-V's SINT0-15 reset masked (TLFS: bit 16).
	for i := uint32(0x40000090); i <= 0x4000009F; i++ {
		m[i] = 1 << 16
	}
	return m
}()

// kvmParavirtMSRs are the MSRs of KVM's paravirtual interface.
var kvmParavirtMSRs = map[uint32]string{
	0x00000011: "MSR_KVM_WALL_CLOCK, kvmclock",
	0x00000012: "MSR_KVM_SYSTEM_TIME, kvmclock",
	0x4b564d00: "MSR_KVM_WALL_CLOCK_NEW, kvmclock",
	0x4b564d01: "MSR_KVM_SYSTEM_TIME_NEW, kvmclock",
	0x4b564d02: "MSR_KVM_ASYNC_PF_EN",
	0x4b564d03: "MSR_KVM_STEAL_TIME",
	0x4b564d04: "MSR_KVM_PV_EOI_EN",
	0x4b564d05: "MSR_KVM_POLL_CONTROL",
	0x4b564d06: "MSR_KVM_ASYNC_PF_INT",
	0x4b564d07: "MSR_KVM_ASYNC_PF_ACK",
}

// partitionMSRs hold one value for the whole VM, which an accelerator may
// take through one vCPU only: MSHV lets the VMM set HV_X64_MSR_HYPERCALL on
// VP 0 alone (Cloud Hypervisor restores it there only), while KVM lists it
// on every vCPU. Another vCPU's copy is left to vCPU 0 when vCPU 0's saved
// state has the same value.
var partitionMSRs = map[uint32]string{
	0x40000001: "HV_X64_MSR_HYPERCALL",
}

// portableMSRs picks the saved MSRs the destination accelerator can hold.
// Accelerators list different MSRs (KVM offers its paravirtual and AMD
// ones, MSHV the Hyper-V synthetic ones), so a snapshot taken on one names
// MSRs the other has never heard of. An MSR the destination lacks is
// dropped only while it holds its reset value (the guest never used it);
// one that holds anything else means the guest relies on state the
// destination cannot give it (kvmclock on MSHV, say), and the restore is
// refused naming the MSR.
//
// bsp is vCPU 0's saved MSRs when saved is another vCPU's (nil for vCPU 0).
func portableMSRs(c accel.VCPU, saved, bsp []accel.MSR) ([]accel.MSR, error) {
	list, err := c.MSRIndexList()
	if err != nil {
		return nil, fmt.Errorf("list the destination's MSRs: %w", err)
	}
	have := make(map[uint32]bool, len(list))
	for _, i := range list {
		have[i] = true
	}
	out := make([]accel.MSR, 0, len(saved))
	for _, m := range saved {
		if _, skip := notGuestState[m.Index]; skip {
			continue
		}
		switch {
		case have[m.Index]:
			out = append(out, m)
		case bsp != nil && partitionMSRs[m.Index] != "" && slices.Contains(bsp, m):
			// vCPU 0 restores it for the whole VM.
		case m.Value != msrResetValue[m.Index]:
			if name, ok := partitionMSRs[m.Index]; ok && bsp != nil {
				return nil, fmt.Errorf("the saved vCPU has MSR %#x (%s) = %#x, which differs from vCPU 0's; this accelerator holds it once for the whole VM, through vCPU 0",
					m.Index, name, m.Value)
			}
			if what, ok := kvmParavirtMSRs[m.Index]; ok {
				return nil, fmt.Errorf("the saved vCPU has MSR %#x = %#x (%s): the guest uses KVM's paravirtual interface, which this accelerator does not offer; boot a guest whose snapshots must restore elsewhere with --cpu host,-kvm",
					m.Index, m.Value, what)
			}
			if m.Index == msrTSCDeadline {
				return nil, fmt.Errorf("the saved vCPU has MSR %#x (IA32_TSC_DEADLINE) = %#x: its LAPIC timer is armed in TSC-deadline mode, and this accelerator cannot hold the deadline; boot a guest whose snapshots must restore here with --cpu ...,-tsc_deadline_timer",
					m.Index, m.Value)
			}
			return nil, fmt.Errorf("the saved vCPU has MSR %#x = %#x, and this accelerator cannot hold that MSR", m.Index, m.Value)
		}
	}
	return out, nil
}

// Restored is a parsed, validated snapshot ready to be applied to a new VM.
type Restored struct {
	Machine MachineState
	VCPUs   []VCPUState
	Devices DeviceState
	Clock   ClockState
	// VFIO is each passed-through device's state ("vfio/N" sections,
	// vfiomig.go), in --device order.
	VFIO []vfio.MigrationState
}

// ParseState validates a state file completely before anything is built,
// so that a bad file is refused whole.
func ParseState(st *snapshot.State) (*Restored, error) {
	r := &Restored{}
	ver, err := st.Get("machine", machineVersionV1, machineVersion, &r.Machine)
	if err != nil {
		return nil, err
	}
	if ver < 2 && len(r.Machine.HotAdded) > 0 {
		return nil, fmt.Errorf("state section \"machine\" is version %d and lists hot-added devices, which version 2 introduced: the record is malformed", ver)
	}
	if err := checkHotAdded(r.Machine.HotAdded); err != nil {
		return nil, fmt.Errorf("state section \"machine\": %w", err)
	}
	if r.Machine.NumCPUs < 1 || r.Machine.NumCPUs > 255 {
		return nil, fmt.Errorf("snapshot machine has %d vCPUs", r.Machine.NumCPUs)
	}
	if r.Machine.MemSize == 0 || r.Machine.MemSize%4096 != 0 {
		return nil, fmt.Errorf("snapshot machine memory size %d is not a positive multiple of 4 KiB", r.Machine.MemSize)
	}
	r.VCPUs = make([]VCPUState, r.Machine.NumCPUs)
	for i := range r.VCPUs {
		if _, err := st.Get(fmt.Sprintf("vcpu/%d", i), 1, vcpuVersion, &r.VCPUs[i]); err != nil {
			return nil, err
		}
	}
	if _, err := st.Get("devices", 1, devicesVersion, &r.Devices); err != nil {
		return nil, err
	}
	if _, err := st.Get("clock", 1, clockVersion, &r.Clock); err != nil {
		return nil, err
	}
	if r.VFIO, err = parseVFIO(st); err != nil {
		return nil, err
	}
	return r, nil
}

// VCPUState captures vCPU index's state (for diagnostics). The VM must be paused.
func (v *VM) VCPUState(index int) (VCPUState, error) {
	var cs VCPUState
	if index < 0 || index >= v.cfg.NumCPUs {
		return cs, fmt.Errorf("no vCPU %d (the VM has %d)", index, v.cfg.NumCPUs)
	}
	err := v.onVCPU(index, func(c accel.VCPU) error { return captureVCPU(c, &cs) })
	return cs, err
}

// WarmStateCodec runs the state encoder and decoder once on empty values,
// so that the reflection work encoding/json does on a type's first use
// happens before a live migration's pause instead of inside it (about a
// millisecond on each side).
func WarmStateCodec() {
	for _, v := range []any{&MachineState{}, &VCPUState{}, &DeviceState{}, &ClockState{}} {
		if b, err := json.Marshal(v); err == nil {
			_ = json.Unmarshal(b, v)
		}
	}
}

// CheckCPU refuses a saved machine whose CPUID the destination cannot
// present: supported is the destination accelerator's supported CPUID,
// and every CPU feature the saved table has must be in it (a guest that
// was promised AVX2 would fault on a host without it, long after the
// restore). The refusal names the missing features; a VM booted on the
// host model is told it is tied to a host of the same kind. Restore and
// migrate receive call it before building anything.
func (m MachineState) CheckCPU(supported []accel.CPUIDEntry, accelName string) error {
	missing := cpu.MissingOn(m.CPUID, supported)
	if len(missing) == 0 {
		return nil
	}
	model := m.CPUModel
	if model == "" {
		model = "host"
	}
	msg := fmt.Sprintf("the saved VM's CPU (--cpu %s) has features %s on this host does not offer: %s",
		model, accelName, strings.Join(missing, " "))
	if name, _, _ := strings.Cut(model, ","); name == "host" {
		msg += "; a --cpu host VM is tied to a host of the same kind (the same CPU and accelerator): boot it on a named model (govmm cpu-models) to move it between hosts"
	} else {
		msg += fmt.Sprintf("; this host cannot run the %s model", name)
	}
	return &InputError{Err: errors.New(msg)}
}

// CheckFeatureMSRs refuses feature MSRs (a CPU model's
// IA32_ARCH_CAPABILITIES) that acc cannot present, naming the bits it
// lacks. Run, restore and migrate receive call it before building anything.
func CheckFeatureMSRs(acc accel.Accelerator, msrs []accel.MSR, model string) error {
	if len(msrs) == 0 {
		return nil
	}
	src, ok := acc.(accel.FeatureMSRSource)
	if !ok {
		return &InputError{Err: fmt.Errorf("--cpu %s sets feature MSR %#x, which %s cannot present", model, msrs[0].Index, acc.Name())}
	}
	for _, m := range msrs {
		sup, err := src.SupportedFeatureMSR(m.Index)
		if err != nil {
			return &InputError{Err: fmt.Errorf("--cpu %s sets feature MSR %#x = %#x: %w", model, m.Index, m.Value, err)}
		}
		if extra := m.Value &^ sup; extra != 0 {
			return &InputError{Err: fmt.Errorf("--cpu %s sets feature MSR %#x = %#x, and %s on this host presents only %#x (bits %#x missing): this host cannot run the model", model, m.Index, m.Value, acc.Name(), sup, extra)}
		}
	}
	return nil
}
