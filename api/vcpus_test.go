package api

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// vcpuTarget is a fake target that can show vCPUs, or fail to.
type vcpuTarget struct {
	fakeTarget
	res VCPUsResult
	err error
}

func (v *vcpuTarget) VCPUs() (VCPUsResult, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.res, v.err
}

func (v *vcpuTarget) fail(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.err = err
}

// TestVCPUsRoundTrip: the "vcpus" reply arrives whole, decoded fields
// included; a failure arrives as its message; a target that cannot show
// vCPUs says so.
func TestVCPUsRoundTrip(t *testing.T) {
	code := uint32(0x18)
	deadline := uint64(0)
	want := VCPUsResult{PauseMS: 1.25, VCPUs: []VCPU{{
		Index: 0, MPState: "runnable", Mode: "long", CodeBits: 64, CPL: 3, CS: 0x2b, RIP: 0x401000,
		RFLAGS: RFLAGS{Value: 0x2, Set: []string{}}, GPRs: map[string]uint64{"rax": 1},
		Code:   "ebfe",
		Events: Events{Exception: &Exception{Vector: 13, Name: "#GP", State: "pending", ErrorCode: &code}, Shadow: "sti"},
		LAPIC: LAPIC{Mode: "x2apic", ID: 0x100, ISR: []int{}, TMR: []int{}, IRR: []int{0x20, 0xec},
			Timer: LAPICLVT{Vector: 0xec, Mode: "tsc-deadline"}, Divide: 1, TSCDeadline: &deadline},
	}}}
	sock := filepath.Join(t.TempDir(), "vm.sock")
	vt := &vcpuTarget{res: want}
	srv, err := Listen(sock, vt)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.VCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("vcpus reply:\n got %+v\nwant %+v", got, want)
	}
	vt.fail(errors.New("capture vCPU 1: LAPIC: no such\nthing"))
	if _, err := c.VCPUs(); err == nil || err.Error() != "capture vCPU 1: LAPIC: no such thing" {
		t.Fatalf("failing capture: %v", err)
	}

	sock2 := filepath.Join(t.TempDir(), "old.sock")
	srv2, err := Listen(sock2, &fakeTarget{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	c2, _ := Dial(sock2)
	if _, err := c2.VCPUs(); err == nil || !strings.Contains(err.Error(), "cannot show its vCPUs") {
		t.Fatalf("target without vCPU state: %v", err)
	}
}
