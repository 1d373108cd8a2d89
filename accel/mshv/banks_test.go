package mshv

import (
	"encoding/binary"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"govmm/accel"
	"govmm/accel/mshv/mshvabi"
	"govmm/cpu"
)

const sig = accel.CPUIDFlagSignificantIndex

// richHost is an Intel host CPUID that has every feature of package cpu's
// table and every CPUID bit a feature bank maps, with the XSAVE leaves of
// AVX and AVX-512.
func richHost() []accel.CPUIDEntry {
	t := []accel.CPUIDEntry{
		{Function: 0, EAX: 0x24, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69}, // GenuineIntel
		{Function: 1, EAX: 0x806f8},
		{Function: 6},
		{Function: 7, Index: 0, Flags: sig, EAX: 2},
		{Function: 7, Index: 1, Flags: sig},
		{Function: 7, Index: 2, Flags: sig},
		{Function: 0xd, Index: 0, Flags: sig, EAX: 0xe7, EBX: 0xa80, ECX: 0xa80},
		{Function: 0xd, Index: 1, Flags: sig},
		{Function: 0xd, Index: 2, Flags: sig, EAX: 0x100, EBX: 0x240},
		{Function: 0xd, Index: 5, Flags: sig, EAX: 0x40, EBX: 0x440},
		{Function: 0xd, Index: 6, Flags: sig, EAX: 0x200, EBX: 0x480},
		{Function: 0xd, Index: 7, Flags: sig, EAX: 0x400, EBX: 0x680},
		{Function: 0x24, Index: 0, Flags: sig},
		{Function: 0x80000000, EAX: 0x80000008},
		{Function: 0x80000001},
		{Function: 0x80000007},
		{Function: 0x80000008, EAX: 0x3030},
	}
	set := func(leaf, sub uint32, reg int, bit uint) {
		for i := range t {
			e := &t[i]
			if e.Function == leaf && e.Index == sub {
				*[]*uint32{&e.EAX, &e.EBX, &e.ECX, &e.EDX}[reg] |= 1 << bit
				return
			}
		}
		panic("richHost: no leaf")
	}
	for _, f := range cpu.Features() {
		if !f.Dynamic && !cpu.HypervisorLeaf(f.Leaf) && f.Name != "hypervisor" {
			set(f.Leaf, f.Subleaf, int(f.Reg), f.Bit)
		}
	}
	for _, bf := range mshvabi.BankFeatures {
		if !bf.NoCPUID {
			set(bf.CPUID.Leaf, bf.CPUID.Subleaf, int(bf.CPUID.Reg), uint(bf.CPUID.Bit))
		}
	}
	return t
}

// allOffered is a host that offers every named bank feature.
func allOffered() *[3]uint64 {
	var h [3]uint64
	for _, bf := range mshvabi.BankFeatures {
		h[bf.Bank] |= 1 << bf.Bit
	}
	return &h
}

// createdBanks creates a VM with the model applied to richHost on the
// fake kernel and returns the disabled banks its v2 payload carried.
func createdBanks(t *testing.T, f *fakeHV, spec string) (guest []accel.CPUIDEntry, disabled [3]uint64) {
	t.Helper()
	m, err := cpu.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	guest, err = m.Apply(richHost())
	if err != nil {
		t.Fatalf("%s: %v", spec, err)
	}
	a, err := Open(f.dev)
	if err != nil {
		t.Fatal(err)
	}
	f.payloads = nil
	vm, err := a.NewVM(accel.VMConfig{NumVCPUs: 1, CPUID: guest})
	if err != nil {
		t.Fatal(err)
	}
	if !vm.V2 || len(f.payloads) != 1 || len(f.payloads[0]) != 64 {
		t.Fatalf("%s: no v2 payload (V2 %v, %d payloads)", spec, vm.V2, len(f.payloads))
	}
	p := f.payloads[0]
	if n := binary.LittleEndian.Uint16(p[16:]); n != 2 {
		t.Errorf("pt_num_cpu_fbanks = %d", n)
	}
	return guest, [3]uint64{binary.LittleEndian.Uint64(p[24:]), binary.LittleEndian.Uint64(p[32:]), binary.LittleEndian.Uint64(p[56:])}
}

// off reports whether the named bank feature is disabled.
func off(t *testing.T, disabled [3]uint64, name string) bool {
	t.Helper()
	bf, ok := mshvabi.LookupBankFeature(name)
	if !ok {
		t.Fatalf("no bank feature %s", name)
	}
	return disabled[bf.Bank]>>bf.Bit&1 != 0
}

func TestBanksFromModel(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		on, offs []string
	}{
		{"x86-64-v2",
			[]string{"sse3", "ssse3", "sse4_1", "sse4_2", "pop_cnt", "cmpxchg16b", "lahf_sahf"},
			[]string{"xsave", "avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "avx512", "rd_wr_fs_gs", "smep", "la57", "amx_tile"}},
		{"x86-64-v3",
			[]string{"sse4_2", "avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "lzcnt", "xsave"},
			[]string{"avx512", "avx512_bw", "avx512_vl", "amx_tile", "la57"}},
		{"host,-avx2",
			[]string{"avx", "fma", "bmi2", "la57", "rd_wr_fs_gs", "smep", "rdtscp", "tsc_deadline_tmr", "sha", "avx512_fp16"},
			[]string{"avx2"}},
	} {
		f := newFake()
		f.host = allOffered()
		guest, d := createdBanks(t, f, tc.spec)
		for _, n := range tc.on {
			if off(t, d, n) {
				t.Errorf("%s: %s disabled", tc.spec, n)
			}
		}
		for _, n := range tc.offs {
			if !off(t, d, n) {
				t.Errorf("%s: %s enabled", tc.spec, n)
			}
		}
		// Every mapped feature is disabled exactly when the guest's CPUID
		// lacks it; the others keep the host's value (offered here).
		has := cpuidReader(guest)
		for _, bf := range mshvabi.BankFeatures {
			want := !bf.NoCPUID && !bf.CPUID.Has(has)
			if got := d[bf.Bank]>>bf.Bit&1 != 0; got != want {
				t.Errorf("%s: %s disabled %v, want %v", tc.spec, bf.Name, got, want)
			}
		}
		// Reserved bits: the host does not offer them.
		if d[0]>>63&1 == 0 || d[1]>>63&1 == 0 || d[2]>>63&1 == 0 {
			t.Errorf("%s: reserved bits enabled: %#x", tc.spec, d)
		}
	}
}

func TestBanksKeepHostValue(t *testing.T) {
	f := newFake()
	h := allOffered()
	ibrs, _ := mshvabi.LookupBankFeature("ibrs")
	avx, _ := mshvabi.LookupBankFeature("avx")
	h[ibrs.Bank] &^= 1 << ibrs.Bit // the host does not offer IBRS ...
	h[avx.Bank] &^= 1 << avx.Bit   // ... nor AVX, which the guest's CPUID claims
	f.host = h
	_, d := createdBanks(t, f, "host")
	if !off(t, d, "ibrs") || !off(t, d, "avx") {
		t.Errorf("a feature the host does not offer is enabled: %#x", d)
	}
	if off(t, d, "stibp") || off(t, d, "avx2") {
		t.Errorf("a feature the host offers and the guest has is disabled: %#x", d)
	}
}

func TestBanksHostUnknown(t *testing.T) {
	// No self-targeted hypercall (6.15): mapped features follow the guest,
	// the others stay enabled, reserved bits are disabled.
	f := newFake()
	_, d := createdBanks(t, f, "x86-64-v2")
	if !off(t, d, "avx") || off(t, d, "sse4_2") || off(t, d, "ibrs") || off(t, d, "nested_virt") {
		t.Errorf("disabled banks %#x", d)
	}
	if d[0]>>63&1 == 0 || d[1]>>62&3 != 3 || d[2]>>38 != 1<<26-1 {
		t.Errorf("reserved bits not all disabled: %#x", d)
	}
	// A scratch partition (no guest CPUID) disables nothing when the host
	// does not say.
	if d, hidden := partitionBanks(nil, hostFeatures{}); d != ([3]uint64{}) || hidden != nil {
		t.Errorf("scratch partition: %#x %v", d, hidden)
	}
}

func TestBanksHiddenNamesWhatTheModelRemoves(t *testing.T) {
	m, _ := cpu.Parse("host,-avx2")
	guest, err := m.Apply(richHost())
	if err != nil {
		t.Fatal(err)
	}
	h := allOffered()
	_, hidden := partitionBanks(guest, hostFeatures{offered: *h, known: [3]bool{true, true, true}})
	if !slices.Contains(hidden, "avx2") || slices.Contains(hidden, "avx") {
		t.Errorf("hidden = %s", strings.Join(hidden, " "))
	}
}

// TestBanksV1Warns: on a kernel without the v2 payload the hypervisor
// enables everything it supports; NewVM says once which features the
// model hides that the hypervisor offers all the same.
func TestBanksV1Warns(t *testing.T) {
	var logged strings.Builder
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	f := newFake()
	f.refuseV2 = true
	f.cpuid = richHost()
	m, _ := cpu.Parse("x86-64-v3")
	guest, err := m.Apply(f.cpuid)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(f.dev)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		vm, err := a.NewVM(accel.VMConfig{NumVCPUs: 1, CPUID: guest})
		if err != nil {
			t.Fatal(err)
		}
		if vm.V2 {
			t.Fatal("v2 payload accepted")
		}
	}
	out := logged.String()
	if strings.Count(out, "cannot enforce") != 1 {
		t.Fatalf("want one warning, log:\n%s", out)
	}
	for _, n := range []string{"avx512", "sha", "la57", "rd_wr_fs_gs"} {
		if !strings.Contains(out, " "+n+" ") && !strings.Contains(out, "="+n+" ") && !strings.Contains(out, " "+n+"\"") {
			t.Errorf("warning does not name %s:\n%s", n, out)
		}
	}
	for _, n := range []string{" avx2 ", " fma ", " movbe "} {
		if strings.Contains(out, n) {
			t.Errorf("warning names%sthat the model keeps:\n%s", n, out)
		}
	}
}
