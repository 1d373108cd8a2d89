package nested

import (
	"strings"
	"testing"
)

// A stalled 2-vCPU Linux boot on mshvsim (bench/linuxsoak, 2026-12-05):
// vCPU 0 shows the substrate's failure, vCPU 1 an idle guest.
const stalledVCPUs = `2 vCPUs; the VM was paused 31.049 ms for the capture and runs again
vCPU 0: runnable; long mode, 64-bit code, CPL 0
  rip 0xffffffffc035adcc  cs 0x0010  rsp 0xff79aa41804bbb30  ss 0x0018
  rflags 0x10246 [PF ZF IF RF] IOPL 0; interrupts enabled (IF=1)
  cr0 0x80050033  cr2 0xffffffffc035adcc  cr3 0x10093e000  cr4 0x751eb0  efer 0xd01
  code: unreadable (RIP not mapped)
  events: exception #PF (14) injected, error code 0x10
  lapic: x2APIC, id 0 (BSP), enabled (spurious vector 0xff); TPR 0x00 PPR 0x00
    ISR []  IRR [0xed]  TMR []
    timer: vector 0xec, one-shot, masked; initial 0, current 0, divide by 2
vCPU 1: halted (HLT, waiting for an interrupt); long mode, 64-bit code, CPL 0
  rip 0xffffffff84617a0b  cs 0x0010  rsp 0xff7d731b80097ed8  ss 0x0018
  rflags 0x212 [AF IF] IOPL 0; interrupts enabled (IF=1)
  cr0 0x80050033  cr2 0x0  cr3 0x18410000  cr4 0x751ea0  efer 0xd01
  code c3 cc cc cc cc eb 07 0f 00 2d 79 13 5f 00 f4
  events: none
  lapic: x2APIC, id 1, enabled (spurious vector 0xff); TPR 0x10 PPR 0x10
    ISR []  IRR []  TMR []
    timer: vector 0x00, one-shot, masked; initial 0, current 0, divide by 2
`

func TestSubstrateFailure(t *testing.T) {
	got := SubstrateFailure(stalledVCPUs)
	if !strings.Contains(got, "vCPU 0 at RIP 0xffffffffc035adcc (CR3 0x10093e000)") || strings.Contains(got, "vCPU 1") {
		t.Fatalf("got %q", got)
	}
	// Each part of the signature is needed.
	for name, edit := range map[string][2]string{
		"a guest page fault elsewhere": {"cr2 0xffffffffc035adcc", "cr2 0x1000"},
		"no #PF on the fetch":          {"events: exception #PF (14) injected, error code 0x10", "events: none"},
		"a guest kernel address":       {"0xffffffffc035adcc", "0xffffffff8135adcc"}, // RIP and CR2
	} {
		if got := SubstrateFailure(strings.ReplaceAll(stalledVCPUs, edit[0], edit[1])); got != "" {
			t.Errorf("%s: got %q", name, got)
		}
	}
	if got := SubstrateFailure("govmm: no such socket"); got != "" {
		t.Errorf("not a vCPU listing: got %q", got)
	}
}

// stalledHang is a hang report's line (internal/hangreport) from the
// stall it was written for: TestMMIOInstructionMix/kvm in L1, 2026-12-06.
const stalledHang = `kvm trace of the vCPU threads: 33235 events: kvm_entry 6644, kvm_inj_exception 6644
vCPU 0 (thread 803): 6644 guest entries, all at RIP 0xffffffffc0688dcc; RIP 0xffffffffc0688dcc lies inside this kernel's module kvm_amd (+0x8dcc)
`

func TestSubstrateFailureInHangReport(t *testing.T) {
	got := SubstrateFailure(stalledHang)
	if !strings.Contains(got, "vCPU 0 entered 6644 times at RIP 0xffffffffc0688dcc in L1's kvm_amd") {
		t.Fatalf("got %q", got)
	}
	for name, edit := range map[string][2]string{
		"a few entries only":        {"6644 guest entries", "12 guest entries"},
		"at several RIPs":           {"all at RIP 0xffffffffc0688dcc;", "at RIPs 0xffffffffc0688dcc 0x100190;"},
		"in another module":         {"module kvm_amd", "module virtio_net"},
		"not in the host's modules": {"; RIP 0xffffffffc0688dcc lies inside this kernel's module kvm_amd (+0x8dcc)", ""},
	} {
		if got := SubstrateFailure(strings.ReplaceAll(stalledHang, edit[0], edit[1])); got != "" {
			t.Errorf("%s: got %q", name, got)
		}
	}
}
