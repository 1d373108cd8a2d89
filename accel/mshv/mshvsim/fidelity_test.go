package mshvsim_test

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

	"govmm/accel/mshv/mshvabi"
	"govmm/accel/mshv/mshvsim"
)

// newPartition creates a partition with synthetic processor features
// synth (none set when 0) and initialises it; it returns the partition fd.
func newPartition(t *testing.T, s *mshvsim.Sim, synth uint64) int {
	t.Helper()
	pfd, err := mshvabi.CreatePartitionFD(s, &mshvabi.CreatePartition{Flags: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(pfd) })
	if synth != 0 {
		in := make([]byte, 24)
		binary.LittleEndian.PutUint32(in[8:], mshvabi.PropSyntheticProcFeatures)
		binary.LittleEndian.PutUint64(in[16:], synth)
		if _, err := hvcall(s, pfd, mshvabi.HvcallSetPartitionProperty, 0, in, nil); err != nil {
			t.Fatalf("SYNTHETIC_PROC_FEATURES: %v", err)
		}
	}
	if err := mshvabi.InitializePartition(s, pfd); err != nil {
		t.Fatal(err)
	}
	return pfd
}

// hvPartition creates an initialised partition whose guests see Hyper-V
// (hypervisor_present, hv1, hypercall and VP index registers) with VPs
// 0 and 1; it returns the partition fd.
func hvPartition(t *testing.T, s *mshvsim.Sim) int {
	t.Helper()
	pfd := newPartition(t, s, 1<<mshvabi.SynHypervisorPresent|1<<mshvabi.SynHv1|1<<mshvabi.SynAccessHypercallRegs|1<<mshvabi.SynAccessVPIndex)
	for i := uint32(0); i < 2; i++ {
		vfd, err := mshvabi.CreateVPFD(s, pfd, i)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(vfd) })
	}
	return pfd
}

func setReg(s *mshvsim.Sim, pfd int, vp, name uint32, v uint64) (mshvabi.HvcallResult, error) {
	in := make([]byte, 16+32)
	binary.LittleEndian.PutUint32(in[8:], vp)
	binary.LittleEndian.PutUint32(in[16:], name)
	binary.LittleEndian.PutUint64(in[32:], v)
	return hvcall(s, pfd, mshvabi.HvcallSetVPRegisters, 1, in, nil)
}

func getReg(t *testing.T, s *mshvsim.Sim, pfd int, vp, name uint32) uint64 {
	t.Helper()
	in := make([]byte, 16+4)
	binary.LittleEndian.PutUint32(in[8:], vp)
	binary.LittleEndian.PutUint32(in[16:], name)
	out := make([]byte, 16)
	if _, err := hvcall(s, pfd, mshvabi.HvcallGetVPRegisters, 1, in, out); err != nil {
		t.Fatalf("get register %#x of VP %d: %v", name, vp, err)
	}
	return binary.LittleEndian.Uint64(out)
}

// TestHypercallRegisterVP0Only: HV_REGISTER_HYPERCALL is the partition's
// and the hypervisor lets the VMM set it through one VP: Cloud
// Hypervisor's hypervisor/src/mshv/mod.rs set_state restores it on VP 0
// only "as Microsoft Hypervisor allows setting this register for only one
// VCPU". Setting it on VP 1 is refused (ACCESS_DENIED, EIO through
// hv_status_infos[]); set on VP 0, every VP reads the same value.
func TestHypercallRegisterVP0Only(t *testing.T) {
	s := newSim(t, mshvsim.Options{})
	pfd := hvPartition(t, s)
	// The hypercall page stays disabled until the guest OS ID is set (the
	// TLFS's rule, which KVM under the simulator applies).
	if _, err := setReg(s, pfd, 0, mshvabi.RegGuestOSID, 0x8100_0000_0000_0000); err != nil {
		t.Fatalf("GUEST_OS_ID: %v", err)
	}
	r, err := setReg(s, pfd, 1, mshvabi.RegHypercall, 0x2000)
	wantErrno(t, "HYPERCALL on VP 1", err, unix.EIO)
	if r.Status != 6 {
		t.Errorf("HYPERCALL on VP 1: status %#x, want HV_STATUS_ACCESS_DENIED (6)", r.Status)
	}
	if _, err := setReg(s, pfd, 0, mshvabi.RegHypercall, 0x2000); err != nil {
		t.Fatalf("HYPERCALL on VP 0: %v", err)
	}
	for vp := uint32(0); vp < 2; vp++ {
		if got := getReg(t, s, pfd, vp, mshvabi.RegHypercall); got != 0x2000 {
			t.Errorf("VP %d reads HYPERCALL %#x, want 0x2000 (partition-wide)", vp, got)
		}
	}
}

// TestEOMWriteOnly: HV_REGISTER_EOM is an action (Linux
// drivers/hv/hyperv_vmbus.h vmbus_signal_eom: a write makes the hypervisor
// rescan its message queues) and reads as 0, as KVM's synic_get_msr
// answers a guest; it is not stored.
func TestEOMWriteOnly(t *testing.T) {
	s := newSim(t, mshvsim.Options{})
	pfd := hvPartition(t, s)
	if _, err := setReg(s, pfd, 0, mshvabi.RegEOM, 5); err != nil {
		t.Fatalf("EOM write: %v", err)
	}
	if got := getReg(t, s, pfd, 0, mshvabi.RegEOM); got != 0 {
		t.Errorf("EOM reads %#x after a write of 5, want 0", got)
	}
}

// TestLAPICStateAPICID: apic_id of hv_local_interrupt_controller_state is
// the APIC ID register as the xAPIC page holds it, ID<<24 in xAPIC mode
// (rust-vmm mshv-bindings x86_64/regs.rs copies the page's ID register to
// and from apic_id unchanged; OpenVMM's virt::x86::vp builds a reset state
// with apic_id<<24), so VP 1 reads 1<<24, and a state written back keeps
// it.
func TestLAPICStateAPICID(t *testing.T) {
	s := newSim(t, mshvsim.Options{})
	pfd := newPartition(t, s, 0)
	var vfd int
	var err error
	for i := uint32(0); i < 2; i++ {
		if vfd, err = mshvabi.CreateVPFD(s, pfd, i); err != nil {
			t.Fatal(err)
		}
		fd := vfd
		t.Cleanup(func() { s.Close(fd) })
	}
	buf := mshvabi.AlignedBuffer(4096)
	if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateLAPIC, buf); err != nil {
		t.Fatal(err)
	}
	if id := binary.LittleEndian.Uint32(buf); id != 1<<24 {
		t.Fatalf("VP 1's apic_id is %#x, want %#x (the ID register, ID<<24 in xAPIC mode)", id, 1<<24)
	}
	if _, err := mshvabi.SetVPState(s, vfd, mshvabi.VPStateLAPIC, buf); err != nil {
		t.Fatal(err)
	}
	clear(buf)
	if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateLAPIC, buf); err != nil {
		t.Fatal(err)
	}
	if id := binary.LittleEndian.Uint32(buf); id != 1<<24 {
		t.Errorf("after writing the state back, apic_id is %#x", id)
	}
}

func getProp(t *testing.T, s *mshvsim.Sim, fd int, code uint32) uint64 {
	t.Helper()
	in := make([]byte, 16)
	binary.LittleEndian.PutUint32(in[8:], code)
	out := make([]byte, 8)
	if _, err := hvcall(s, fd, mshvabi.HvcallGetPartitionProperty, 0, in, out); err != nil {
		t.Fatalf("property %#x: %v", code, err)
	}
	return binary.LittleEndian.Uint64(out)
}

// TestXSaveLayoutFollowsBanks: the XSAVE state a partition transfers is its
// XSAVE_STATES property (the kernel asks for exactly that,
// drivers/hv/mshv_root_main.c mshv_vp_ioctl_get_set_state), and a
// partition whose XSAVE bank disables AVX has no AVX component: the
// property lacks it, MAX_XSAVE_DATA_SIZE shrinks by its 256 bytes (when
// that crosses a page), the VP's image does not list it in XCOMP_BV, and
// an image that holds it is refused.
func TestXSaveLayoutFollowsBanks(t *testing.T) {
	main := newSim(t, mshvsim.Options{})
	full := newVP(t, main, nil)
	if getProp(t, main, full, mshvabi.PropXSaveStates)&4 == 0 {
		t.Skip("this host has no AVX")
	}
	later := newSim(t, mshvsim.Options{V2: true})
	avx, _ := mshvabi.LookupBankFeature("avx")
	vfd := newVP(t, later, &mshvabi.CreatePartitionV2{Flags: 0xf, DisabledXSave: 1 << avx.Bit})
	states := getProp(t, later, vfd, mshvabi.PropXSaveStates)
	if states&4 != 0 {
		t.Errorf("XSAVE_STATES %#x has AVX, which the partition's bank disables", states)
	}
	if a, b := getProp(t, later, vfd, mshvabi.PropMaxXSaveDataSize), getProp(t, main, full, mshvabi.PropMaxXSaveDataSize); a > b {
		t.Errorf("MAX_XSAVE_DATA_SIZE %d without AVX, %d with it", a, b)
	}
	buf := mshvabi.AlignedBuffer(8192)
	if _, err := mshvabi.GetVPState(later, vfd, mshvabi.VPStateXSave, buf); err != nil {
		t.Fatal(err)
	}
	if xc := binary.LittleEndian.Uint64(buf[520:]); xc&4 != 0 || xc&^(1<<63) != states|3 {
		t.Errorf("XCOMP_BV %#x, want the partition's states %#x", xc, states|3)
	}
	if _, err := mshvabi.SetVPState(later, vfd, mshvabi.VPStateXSave, buf); err != nil {
		t.Errorf("the VP's own image refused: %v", err)
	}
	binary.LittleEndian.PutUint64(buf[520:], 1<<63|states|7)
	_, err := mshvabi.SetVPState(later, vfd, mshvabi.VPStateXSave, buf)
	wantErrno(t, "an image with the AVX component", err, unix.EINVAL)
}

// TestLAPICStateNMIPending: the hypervisor keeps a VP's pending NMI as bit
// 2 of apic_irr[0] in its LAPIC state (OpenVMM's virt::x86::vp,
// hv_apic_nmi_pending); setting the state with the bit makes an NMI
// pending, and the state read back shows it until it is cleared.
func TestLAPICStateNMIPending(t *testing.T) {
	s := newSim(t, mshvsim.Options{})
	vfd := newVP(t, s, nil)
	buf := mshvabi.AlignedBuffer(4096)
	if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateLAPIC, buf); err != nil {
		t.Fatal(err)
	}
	const irr0 = 84
	if buf[irr0]&4 != 0 {
		t.Fatalf("a new VP has an NMI pending")
	}
	for _, want := range []bool{true, false} {
		buf[irr0] &^= 4
		if want {
			buf[irr0] |= 4
		}
		if _, err := mshvabi.SetVPState(s, vfd, mshvabi.VPStateLAPIC, buf); err != nil {
			t.Fatal(err)
		}
		got := mshvabi.AlignedBuffer(4096)
		if _, err := mshvabi.GetVPState(s, vfd, mshvabi.VPStateLAPIC, got); err != nil {
			t.Fatal(err)
		}
		if (got[irr0]&4 != 0) != want {
			t.Errorf("NMI pending %v written, the state reads IRR[0] %#x", want, got[irr0])
		}
	}
}
