//go:build !arm64

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"govmm/api"
)

// stuckVCPUs is the state of last session's hang: vCPU 0 spinning at CPL3
// with interrupts off and three vectors in IRR, its timer in TSC-deadline
// mode with the deadline passed; vCPU 1 an AP never started.
func stuckVCPUs() api.VCPUsResult {
	code := uint32(0)
	deadline, tsc := uint64(0x1000), uint64(0x1800)
	return api.VCPUsResult{PauseMS: 0.412, VCPUs: []api.VCPU{
		{
			Index: 0, MPState: "runnable", Mode: "long", CodeBits: 64, CPL: 3, CS: 0x33, SS: 0x2b,
			RIP: 0x401a2c, RSP: 0x7ffc1000, RFLAGS: api.RFLAGS{Value: 0x3006, Set: []string{"PF"}, IOPL: 3},
			CR0: 0x80050033, CR3: 0x1234000, CR4: 0x3506f0, EFER: 0xd01, Code: "ebfe90",
			Events: api.Events{Exception: &api.Exception{Vector: 13, Name: "#GP", State: "injected", ErrorCode: &code}, NMIMasked: true},
			LAPIC: api.LAPIC{
				Mode: "x2apic", BSP: true, SoftwareEnabled: true, SpuriousVector: 0xff, ID: 0, TPR: 0, PPR: 0,
				ISR: []int{}, TMR: []int{}, IRR: []int{0x22, 0x41, 0xec},
				Timer:  api.LAPICLVT{Vector: 0xec, Mode: "tsc-deadline"},
				Divide: 1, TSCDeadline: &deadline, TSC: &tsc,
			},
		},
		{
			Index: 1, MPState: "uninitialized", Mode: "real", CodeBits: 16, CS: 0xf000, RIP: 0xfff0,
			RFLAGS: api.RFLAGS{Value: 0x2, Set: []string{}},
			LAPIC: api.LAPIC{Mode: "xapic", ID: 1, ISR: []int{}, TMR: []int{}, IRR: []int{},
				Timer: api.LAPICLVT{Vector: 0, Mode: "one-shot", Masked: true}, Divide: 2},
		},
	}}
}

const stuckText = `2 vCPUs; the VM was paused 0.412 ms for the capture and runs again
vCPU 0: runnable; long mode, 64-bit code, CPL 3
  rip 0x401a2c  cs 0x0033  rsp 0x7ffc1000  ss 0x002b
  rflags 0x3006 [PF] IOPL 3; interrupts disabled (IF=0)
  cr0 0x80050033  cr2 0x0  cr3 0x1234000  cr4 0x3506f0  efer 0xd01
  code eb fe 90
  events: exception #GP (13) injected, error code 0x0; NMIs blocked
  lapic: x2APIC, id 0 (BSP), enabled (spurious vector 0xff); TPR 0x00 PPR 0x00
    ISR []  IRR [0x22 0x41 0xec]  TMR []
    timer: vector 0xec, tsc-deadline, unmasked; initial 0, current 0, divide by 1; TSC deadline 0x1000, passed 2048 cycles ago
vCPU 1: waiting for INIT/SIPI; real mode, 16-bit code, CPL 0
  rip 0xfff0  cs 0xf000  rsp 0x0  ss 0x0000
  rflags 0x2 [] IOPL 0; interrupts disabled (IF=0)
  cr0 0x0  cr2 0x0  cr3 0x0  cr4 0x0  efer 0x0
  code: unreadable (RIP not mapped)
  events: none
  lapic: xAPIC, id 1, software-disabled (spurious vector 0x0); TPR 0x00 PPR 0x00
    ISR []  IRR []  TMR []
    timer: vector 0x00, one-shot, masked; initial 0, current 0, divide by 2
`

// TestPrintVCPUs: the terminal form, fixed input, checked output.
func TestPrintVCPUs(t *testing.T) {
	var b bytes.Buffer
	printVCPUs(&b, stuckVCPUs())
	if b.String() != stuckText {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), stuckText)
	}
	var l bytes.Buffer
	printInterruptLines(&l, api.VCPUsResult{
		IOAPIC: []api.IOAPICPin{{Pin: 18, Entry: 0x1c031, Vector: 0x31, Dest: 1, Level: true, RemoteIRR: true, Resample: true, Asserted: true,
			Requested: true, Resampler: true, Delivered: 7, EOIs: 5, EdgeClears: 1}},
		INTx: []api.INTxLine{{Device: "virtio-rng", GSI: 18, ISR: 1, Asserted: true, Raises: 9}},
	})
	const lines = `IOAPIC pins (unmasked, or with anything asserted or in service):
  pin 18: vector 0x31 dest 1 level remote-IRR; input high (line low, resample high), request latched, resampled; 7 delivered, 5 EOIs, 1 Remote IRRs cleared by an edge rewrite
INTx lines:
  virtio-rng: GSI 18, ISR 0x1, MSI-X off, asserted, 9 raises
`
	if l.String() != lines {
		t.Errorf("interrupt lines: got:\n%s\nwant:\n%s", l.String(), lines)
	}
	var p bytes.Buffer
	printVCPUs(&p, api.VCPUsResult{WasPaused: true})
	if p.String() != "0 vCPUs; the VM was paused already and stays paused\n" {
		t.Errorf("paused VM: %q", p.String())
	}
	for _, tc := range []struct {
		l    api.LAPIC
		want string
	}{
		{api.LAPIC{Timer: api.LAPICLVT{Mode: "periodic"}}, ""},
		{api.LAPIC{Timer: api.LAPICLVT{Mode: "tsc-deadline"}}, ""},
		{api.LAPIC{Timer: api.LAPICLVT{Mode: "tsc-deadline"}, TSCDeadline: new(uint64)}, "; TSC deadline 0 (disarmed)"},
		{api.LAPIC{Timer: api.LAPICLVT{Mode: "tsc-deadline"}, TSCDeadline: ptr(uint64(0x900))}, "; TSC deadline 0x900"},
		{api.LAPIC{Timer: api.LAPICLVT{Mode: "tsc-deadline"}, TSCDeadline: ptr(uint64(0x900)), TSC: ptr(uint64(0x800))}, "; TSC deadline 0x900, 256 cycles ahead"},
	} {
		if got := deadlineText(&tc.l); got != tc.want {
			t.Errorf("deadline %+v: %q, want %q", tc.l, got, tc.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// vcpusTarget serves a fixed "vcpus" reply (or error) and an info reply.
type vcpusTarget struct {
	api.Target
	mu  sync.Mutex // the control server calls from its own goroutine
	res api.VCPUsResult
	err error
}

func (v *vcpusTarget) Info() api.Info { return api.Info{State: "running", CPUs: 2} }

func (v *vcpusTarget) VCPUs() (api.VCPUsResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.res, v.err
}

func (v *vcpusTarget) fail(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.err = err
}
func (v *vcpusTarget) Snapshot(api.SnapshotRequest, func(uint64, uint64)) (api.SnapshotResult, error) {
	return api.SnapshotResult{}, errors.New("not here")
}

// runOut is run with stdout.
func runOut(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := realMain(args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestInfoVCPUsCLI: `govmm info --vcpus` through a control socket, as
// text and as JSON; `info --json`; a failed capture exits 70 with its
// reason.
func TestInfoVCPUsCLI(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	tg := &vcpusTarget{res: stuckVCPUs()}
	srv, err := api.Listen(sock, tg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	code, out, errOut := runOut("info", "--api-socket", sock, "--vcpus")
	if code != 0 || out != stuckText {
		t.Fatalf("info --vcpus: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	code, out, errOut = runOut("info", "--api-socket", sock, "--vcpus", "--json")
	var res api.VCPUsResult
	if code != 0 {
		t.Fatalf("info --vcpus --json: exit %d: %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !reflect.DeepEqual(res, stuckVCPUs()) {
		t.Fatalf("info --vcpus --json: %v\n%s", err, out)
	}
	if !strings.Contains(out, `"irr": [`) || !strings.Contains(out, "\n  \"vcpus\"") {
		t.Errorf("info --vcpus --json is not the indented reply:\n%s", out)
	}
	code, out, _ = runOut("info", "--api-socket", sock, "--json")
	var info api.Info
	if err := json.Unmarshal([]byte(out), &info); code != 0 || err != nil || info.CPUs != 2 || info.State != "running" {
		t.Fatalf("info --json: exit %d, %v:\n%s", code, err, out)
	}
	tg.fail(errors.New("capture vCPU 1: LAPIC: injected"))
	code, _, errOut = runOut("info", "--api-socket", sock, "--vcpus")
	if code != exitInternal || !strings.Contains(errOut, "info: capture vCPU 1: LAPIC: injected") {
		t.Fatalf("failed capture: exit %d, want %d: %s", code, exitInternal, errOut)
	}
	if code, _, errOut := runOut("pause", "--api-socket", sock, "--vcpus"); code != exitUsage || !strings.Contains(errOut, "-vcpus") {
		t.Errorf("pause --vcpus: exit %d, want %d: %s", code, exitUsage, errOut)
	}
}
