package cpu

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"govmm/accel"
)

const sig = accel.CPUIDFlagSignificantIndex

// feature returns the named feature; it panics on an unknown name.
func feature(name string) Feature {
	f, ok := Lookup(name)
	if !ok {
		panic("unknown feature " + name)
	}
	return f
}

// withFeatures returns the table with the named features set.
func withFeatures(entries []accel.CPUIDEntry, names ...string) []accel.CPUIDEntry {
	for _, n := range names {
		f := feature(n)
		e := find(entries, f.Leaf, f.Subleaf)
		if e == nil {
			panic("no leaf for " + n)
		}
		*regPtr(e, f.Reg) |= 1 << f.Bit
	}
	return entries
}

// hostTable is a plausible KVM_GET_SUPPORTED_CPUID result for an Intel
// host with AVX-512.
func hostTable() []accel.CPUIDEntry {
	t := []accel.CPUIDEntry{
		{Function: 0, EAX: 0x1f, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69},
		{Function: 1, EAX: 0x806f8},
		{Function: 4, Index: 0, Flags: sig, EAX: 0x121}, // L1d
		{Function: 4, Index: 1, Flags: sig, EAX: 0x122}, // L1i
		{Function: 4, Index: 2, Flags: sig, EAX: 0x143}, // L2
		{Function: 4, Index: 3, Flags: sig, EAX: 0x163}, // L3
		{Function: 4, Index: 4, Flags: sig, EAX: 0},     // end
		{Function: 7, Index: 0, Flags: sig, EAX: 1},
		{Function: 7, Index: 1, Flags: sig},
		{Function: 0xb, Index: 0, Flags: sig, EBX: 2, ECX: 0x100},
		{Function: 0xb, Index: 1, Flags: sig, EAX: 4, EBX: 8, ECX: 0x201},
		{Function: 0xd, Index: 0, Flags: sig, EAX: 0x2e7, EBX: 0x240, ECX: 0xa88},
		{Function: 0xd, Index: 1, Flags: sig},
		{Function: 0xd, Index: 2, Flags: sig, EAX: 0x100, EBX: 0x240},
		{Function: 0xd, Index: 5, Flags: sig, EAX: 0x40, EBX: 0x440},
		{Function: 0xd, Index: 6, Flags: sig, EAX: 0x200, EBX: 0x480},
		{Function: 0xd, Index: 7, Flags: sig, EAX: 0x400, EBX: 0x680},
		{Function: 0xd, Index: 9, Flags: sig, EAX: 0x8, EBX: 0xa80},
		{Function: 0x1f, Index: 0, Flags: sig, EBX: 2, ECX: 0x100},
		{Function: 0x80000000, EAX: 0x80000008},
		{Function: 0x80000001},
		{Function: 0x80000008, EAX: 0x3030},
		{Function: KVMLeafSignature, EAX: KVMLeafTiming, EBX: kvmSigEBX, ECX: kvmSigECX, EDX: kvmSigEDX},
		{Function: KVMLeafFeatures},
		{Function: KVMLeafTiming, EBX: 1000000},
	}
	t = withFeatures(t, "kvmclock-legacy", "kvm-nopiodelay", "kvmclock", "kvm-asyncpf", "kvm-steal-time",
		"kvm-pv-eoi", "kvm-pv-unhalt", "kvm-pv-tlb-flush", "kvm-asyncpf-int", "kvmclock-stable-bit")
	return withFeatures(t, "fpu", "tsc", "msr", "pae", "cx8", "apic", "sep", "pge", "cmov", "pse", "pse36",
		"clflush", "mmx", "fxsr", "sse", "sse2", "pni", "ssse3", "cx16", "sse4_1", "sse4_2", "x2apic",
		"popcnt", "xsave", "osxsave", "avx", "fma", "f16c", "hypervisor", "tsc_deadline_timer",
		"avx2", "bmi1", "bmi2", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_fp16", "pku", "ospke",
		"avx512_bf16", "xsaveopt", "xsavec", "lm", "nx", "syscall", "lahf_lm", "rdtscp", "pdpe1gb")
}

func TestFeatureTable(t *testing.T) {
	f, ok := Lookup("cx16")
	if !ok || f.Leaf != 1 || f.Reg != ECX || f.Bit != 13 {
		t.Errorf("cx16 = %+v", f)
	}
	if f, ok := Lookup("avx512_bf16"); !ok || f.Leaf != 7 || f.Subleaf != 1 || f.Reg != EAX || f.Bit != 5 {
		t.Errorf("avx512_bf16 = %+v", f)
	}
	if f, ok := Lookup("xsaves"); !ok || f.Leaf != 0xd || f.Subleaf != 1 || f.Bit != 3 {
		t.Errorf("xsaves = %+v", f)
	}
	if f, ok := Lookup("lm"); !ok || f.Leaf != 0x80000001 || f.Reg != EDX || f.Bit != 29 {
		t.Errorf("lm = %+v", f)
	}
	if len(Features()) != len(FeatureNames()) || len(Features()) < 150 {
		t.Errorf("%d features, %d names", len(Features()), len(FeatureNames()))
	}
	got := Present(hostTable())
	if got[0] != "fpu" || !contains(got, "avx512_fp16") || contains(got, "vmx") {
		t.Errorf("Present = %v", got)
	}
}

// TestFeatureTableWellFormed checks the static tables for what building
// them at run time used to check: unique names, dependency tables naming
// known features, and /proc/cpuinfo order.
func TestFeatureTableWellFormed(t *testing.T) {
	// Linux's word order of the CPUID registers features live in.
	type leafReg struct {
		leaf, sub uint32
		reg       Reg
	}
	order := []leafReg{
		{1, 0, EDX}, {1, 0, ECX}, {7, 0, EBX}, {7, 0, ECX}, {7, 0, EDX}, {7, 1, EAX}, {0xd, 1, EAX},
		{0x80000001, 0, ECX}, {0x80000001, 0, EDX}, {0x80000007, 0, EDX}, {0x80000008, 0, EBX},
		{KVMLeafFeatures, 0, EAX},
	}
	rank := func(f Feature) int {
		return slices.Index(order, leafReg{f.Leaf, f.Subleaf, f.Reg})
	}
	seen := map[string]bool{}
	for i, f := range features {
		if seen[f.Name] {
			t.Errorf("duplicate feature name %s", f.Name)
		}
		seen[f.Name] = true
		if f.Name == "" || f.Name != strings.ToLower(f.Name) || strings.ContainsAny(f.Name, ",+ ") || f.Name[0] == '-' {
			t.Errorf("feature %+v: bad name", f)
		}
		if rank(f) < 0 || f.Bit > 31 {
			t.Errorf("feature %s: CPUID %#x.%d %s bit %d is not in a known feature register", f.Name, f.Leaf, f.Subleaf, f.Reg, f.Bit)
			continue
		}
		if i > 0 {
			p := features[i-1]
			if rank(p) > rank(f) || rank(p) == rank(f) && p.Bit >= f.Bit {
				t.Errorf("feature %s (%#x.%d %s bit %d) is out of order after %s (%#x.%d %s bit %d)",
					f.Name, f.Leaf, f.Subleaf, f.Reg, f.Bit, p.Name, p.Leaf, p.Subleaf, p.Reg, p.Bit)
			}
		}
		if wantDyn := f.Name == "osxsave" || f.Name == "ospke"; f.Dynamic != wantDyn {
			t.Errorf("feature %s: Dynamic = %v, want %v", f.Name, f.Dynamic, wantDyn)
		}
		if wantVMM := f.Name == "hypervisor"; f.VMM != wantVMM {
			t.Errorf("feature %s: VMM = %v, want %v", f.Name, f.VMM, wantVMM)
		}
	}
	for _, r := range requires {
		if !seen[r.feature] || !seen[r.needs] || r.feature == r.needs {
			t.Errorf("requires names an unknown feature or itself: %+v", r)
		}
	}
	for _, x := range xcr0Bits {
		if !seen[x.feature] || x.components == 0 || x.components&0b11 != 0 {
			t.Errorf("xcr0Bits entry %+v: unknown feature or bad components", x)
		}
	}
}

// TestFeatureTableContents pins the table's size and a few entries, so that
// a mistake regenerating it shows.
func TestFeatureTableContents(t *testing.T) {
	if got := len(Features()); got != 212 {
		t.Errorf("%d features, want 212", got)
	}
	for _, want := range []Feature{
		{Name: "fpu", Leaf: 1, Reg: EDX, Bit: 0},
		{Name: "pbe", Leaf: 1, Reg: EDX, Bit: 31},
		{Name: "cx16", Leaf: 1, Reg: ECX, Bit: 13},
		{Name: "osxsave", Leaf: 1, Reg: ECX, Bit: 27, Dynamic: true},
		{Name: "avx512f", Leaf: 7, Reg: EBX, Bit: 16},
		{Name: "ospke", Leaf: 7, Reg: ECX, Bit: 4, Dynamic: true},
		{Name: "spec_ctrl_ssbd", Leaf: 7, Reg: EDX, Bit: 31},
		{Name: "avx512_bf16", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 5},
		{Name: "xsaves", Leaf: 0xd, Subleaf: 1, Reg: EAX, Bit: 3},
		{Name: "lahf_lm", Leaf: 0x80000001, Reg: ECX, Bit: 0},
		{Name: "lm", Leaf: 0x80000001, Reg: EDX, Bit: 29},
		{Name: "invtsc", Leaf: 0x80000007, Reg: EDX, Bit: 8},
		{Name: "virt_ssbd", Leaf: 0x80000008, Reg: EBX, Bit: 25},
		{Name: "hypervisor", Leaf: 1, Reg: ECX, Bit: 31, VMM: true},
		{Name: "kvmclock", Leaf: 0x40000001, Reg: EAX, Bit: 3},
		{Name: "kvm-pv-unhalt", Leaf: 0x40000001, Reg: EAX, Bit: 7},
		{Name: "kvmclock-stable-bit", Leaf: 0x40000001, Reg: EAX, Bit: 24},
	} {
		if got, ok := Lookup(want.Name); !ok || got != want {
			t.Errorf("Lookup(%q) = %+v, %v, want %+v", want.Name, got, ok, want)
		}
	}
	if f := Features(); f[0].Name != "fpu" || f[len(f)-1].Name != "kvmclock-stable-bit" {
		t.Errorf("table runs from %s to %s, want fpu to kvmclock-stable-bit", f[0].Name, f[len(f)-1].Name)
	}
	if _, ok := Lookup("bogus"); ok {
		t.Error("Lookup(bogus) succeeded")
	}
	if names := FeatureNames(); !slices.IsSorted(names) || len(names) != len(features) {
		t.Errorf("FeatureNames not sorted or incomplete: %v", names)
	}
}

func TestClosure(t *testing.T) {
	var s featureSet
	s.addClosure("avx512vl")
	var got []string
	for i, f := range features {
		if s.has(i) {
			got = append(got, f.Name)
		}
	}
	want := []string{"avx512vl", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vp2intersect", "avx512_bf16"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("closure(avx512vl) = %v, want %v", got, want)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestParse(t *testing.T) {
	m, err := Parse("host,-cx16,+x2apic, -AVX")
	if err != nil {
		t.Fatal(err)
	}
	want := Model{Name: "host", Add: []string{"x2apic"}, Remove: []string{"cx16", "avx"}}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("got %+v, want %+v", m, want)
	}
	if m.String() != "host,-cx16,-avx,+x2apic" {
		t.Errorf("String() = %q", m.String())
	}
	if m, err := Parse("host"); err != nil || m.Name != "host" || m.Add != nil || m.Remove != nil {
		t.Errorf("Parse(host) = %+v, %v", m, err)
	}
	for spec, wantErr := range map[string]string{
		"":                 "valid models: host",
		"qemu64":           "valid models: host",
		"host,-bogus":      "valid features:",
		"host,cx16":        "+feature or -feature",
		"host,+":           "+feature or -feature",
		"host,+cx16,-cx16": "both added and removed",
		"host,-osxsave":    "control register",
	} {
		_, err := Parse(spec)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("Parse(%q) error %v, want one containing %q", spec, err, wantErr)
		}
	}
	_, err = Parse("host,-bogus")
	if !strings.Contains(err.Error(), "cx16") {
		t.Errorf("unknown-feature error does not list the valid names: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"host", "host,-cx16,+x2apic", "host,,", "host,-", "x,+y", "host,+cx16,+cx16"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		m, err := Parse(spec)
		if err != nil {
			return
		}
		m2, err := Parse(m.String())
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("Parse(%q) = %+v, reparsing %q gives %+v, %v", spec, m, m.String(), m2, err)
		}
	})
}

func apply(t *testing.T, spec string) []accel.CPUIDEntry {
	t.Helper()
	m, err := Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	out, err := m.Apply(hostTable())
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func has(entries []accel.CPUIDEntry, name string) bool { return feature(name).Has(entries) }

func TestApplyHost(t *testing.T) {
	in := hostTable()
	out := apply(t, "host")
	if !reflect.DeepEqual(in, hostTable()) {
		t.Error("Apply modified its input")
	}
	if has(out, "osxsave") || has(out, "ospke") {
		t.Error("dynamic bits OSXSAVE/OSPKE not cleared")
	}
	for _, f := range []string{"cx16", "avx512_fp16", "xsave", "lm"} {
		if !has(out, f) {
			t.Errorf("host model lost %s", f)
		}
	}
}

func TestApplyRemoveSimple(t *testing.T) {
	out := apply(t, "host,-cx16")
	if has(out, "cx16") {
		t.Error("cx16 still set")
	}
	want := hostTable()
	e := find(want, 1, 0)
	e.ECX &^= 1<<13 | 1<<27 // cx16 and osxsave
	find(want, 7, 0).ECX &^= 1 << 4
	if !reflect.DeepEqual(out, want) {
		t.Errorf("-cx16 changed more than cx16:\n%v\n%v", out, want)
	}
}

func TestApplyRemoveXSave(t *testing.T) {
	out := apply(t, "host,-xsave")
	for _, f := range []string{"xsave", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512_fp16",
		"avx512_bf16", "xsaveopt", "xsavec", "pku"} {
		if has(out, f) {
			t.Errorf("-xsave left %s set", f)
		}
	}
	for _, f := range []string{"sse2", "cx16", "bmi2"} {
		if !has(out, f) {
			t.Errorf("-xsave cleared unrelated %s", f)
		}
	}
	for _, e := range out {
		if e.Function == 0xd && (e.EAX|e.EBX|e.ECX|e.EDX) != 0 {
			t.Errorf("-xsave left leaf 0xd.%d = %+v", e.Index, e)
		}
	}
}

func TestApplyRemoveAVX(t *testing.T) {
	out := apply(t, "host,-avx")
	for _, f := range []string{"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_fp16"} {
		if has(out, f) {
			t.Errorf("-avx left %s set", f)
		}
	}
	if !has(out, "xsave") || !has(out, "xsaveopt") {
		t.Error("-avx cleared xsave")
	}
	d0 := find(out, 0xd, 0)
	if d0.EAX != 0x203 || d0.ECX != 0xa88 {
		t.Errorf("leaf 0xd.0 EAX %#x ECX %#x, want XCR0 x87|SSE|PKRU and max size 0xa88", d0.EAX, d0.ECX)
	}
	if d0 := find(apply(t, "host,-avx,-pku"), 0xd, 0); d0.EAX != 0x3 || d0.ECX != 0x240 {
		t.Errorf("-avx,-pku: leaf 0xd.0 EAX %#x ECX %#x, want XCR0 x87|SSE and max size 0x240", d0.EAX, d0.ECX)
	}
	if d2 := find(out, 0xd, 2); d2.EAX != 0 || d2.EBX != 0 {
		t.Errorf("leaf 0xd.2 (YMM) still described: %+v", d2)
	}
	out = apply(t, "host,-avx512f")
	d0 = find(out, 0xd, 0)
	if d0.EAX != 0x207 || d0.ECX != 0xa88 || !has(out, "avx2") || has(out, "avx512bw") {
		t.Errorf("-avx512f: leaf 0xd.0 %+v avx2 %v avx512bw %v", d0, has(out, "avx2"), has(out, "avx512bw"))
	}
}

// TestApplyHypervisor: the guest is told it is virtualized, and KVM's
// paravirtual features are cut as their dependencies say.
func TestApplyHypervisor(t *testing.T) {
	in := hostTable()
	find(in, 1, 0).ECX &^= 1 << 31 // KVM leaves the hypervisor bit to the VMM
	out, err := Model{Name: "host"}.Apply(in)
	if err != nil {
		t.Fatal(err)
	}
	if !has(out, "hypervisor") || !has(out, "kvmclock") || !IsKVM(out) {
		t.Fatalf("host model: hypervisor %v, kvmclock %v, KVM leaves %v", has(out, "hypervisor"), has(out, "kvmclock"), IsKVM(out))
	}
	out = apply(t, "host,-hypervisor")
	if has(out, "hypervisor") {
		t.Error("-hypervisor left the bit set")
	}
	for _, e := range out {
		if HypervisorLeaf(e.Function) {
			t.Errorf("-hypervisor left leaf %#x", e.Function)
		}
	}
	out = apply(t, "host,-kvmclock,-kvm-steal-time")
	for _, f := range []string{"kvmclock", "kvmclock-legacy", "kvmclock-stable-bit", "kvm-steal-time", "kvm-pv-tlb-flush"} {
		if has(out, f) {
			t.Errorf("-kvmclock,-kvm-steal-time left %s", f)
		}
	}
	if !has(out, "kvm-pv-eoi") || !has(out, "kvm-pv-unhalt") || !IsKVM(out) {
		t.Error("-kvmclock removed unrelated paravirtual features")
	}
	out = apply(t, "host,-kvm")
	if IsKVM(out) || !has(out, "hypervisor") || find(out, KVMLeafTiming, 0) != nil {
		t.Errorf("-kvm: KVM leaves %v, hypervisor bit %v", IsKVM(out), has(out, "hypervisor"))
	}
	if _, err := Parse("host,-kvm,+kvm"); err == nil {
		t.Error("-kvm,+kvm accepted")
	}
	for _, spec := range []string{"host,-pmu", "host,+pmu"} {
		if _, err := Parse(spec); err != nil {
			t.Errorf("%s: %v", spec, err)
		}
	}
	m, _ := Parse("host,+kvm-pv-ipi")
	if _, err := m.Apply(hostTable()); err == nil || !strings.Contains(err.Error(), "not offered") {
		t.Errorf("+kvm-pv-ipi where the accelerator does not offer it: %v", err)
	}
}

// TestHypervLeavesAreNotKVM: under Hyper-V the same leaves hold other
// things ("Hv#1" in 0x40000001 EAX has bit 3 set), which must not read as
// KVM features nor be edited as such.
func TestHypervLeavesAreNotKVM(t *testing.T) {
	in := hostTable()
	for i := range in {
		switch in[i].Function {
		case KVMLeafSignature:
			in[i] = accel.CPUIDEntry{Function: KVMLeafSignature, EAX: 0x4000000a, EBX: 0x7263694d, ECX: 0x666f736f, EDX: 0x76482074}
		case KVMLeafFeatures:
			in[i].EAX = 0x31237648 // "Hv#1"
		}
	}
	if IsKVM(in) || Present(in) == nil || slices.Contains(Present(in), "kvmclock") {
		t.Fatalf("a Hyper-V table reads as KVM: %v", Present(in))
	}
	m, _ := Parse("host,-kvmclock")
	out, err := m.Apply(in)
	if err != nil {
		t.Fatal(err)
	}
	if e := find(out, KVMLeafFeatures, 0); e.EAX != 0x31237648 {
		t.Errorf("-kvmclock edited Hyper-V's interface signature: %#x", e.EAX)
	}
}

// TestXSaveLeafConsistent: whatever the model removes, leaf 0xD describes
// exactly the components its XCR0 mask offers, and its sizes add up (Linux
// checks them: "XSAVE consistency problem").
func TestXSaveLeafConsistent(t *testing.T) {
	for _, spec := range []string{"host", "host,-avx", "host,-avx512f", "host,-pku", "host,-avx,-pku", "host,-avx512bw", "host,-xsaveopt"} {
		out := apply(t, spec)
		d0 := find(out, 0xd, 0)
		xcr0 := uint64(d0.EDX)<<32 | uint64(d0.EAX)
		end := uint32(576)
		for i := uint32(2); i < 63; i++ {
			e := find(out, 0xd, i)
			on := xcr0>>i&1 != 0
			switch {
			case on && (e == nil || e.EAX == 0):
				t.Errorf("%s: XCR0 offers component %d, leaf 0xd.%d does not describe it", spec, i, i)
			case !on && e != nil && e.EAX != 0 && i != 8 && i < 10: // user components only
				t.Errorf("%s: component %d not in XCR0 %#x but described: %+v", spec, i, xcr0, *e)
			case on:
				end = max(end, e.EBX+e.EAX)
			}
		}
		if d0.ECX != end || d0.EBX > d0.ECX {
			t.Errorf("%s: leaf 0xd.0 max size %#x (current %#x), components end at %#x", spec, d0.ECX, d0.EBX, end)
		}
		for _, x := range xcr0Bits {
			if xcr0&x.components != 0 && !has(out, x.feature) {
				t.Errorf("%s: XCR0 %#x offers components of %s, which the model removed", spec, xcr0, x.feature)
			}
		}
	}
}

// TestApplyNoPMU: -pmu clears every CPUID trace of a PMU and nothing else,
// and is accepted where there is no PMU to remove.
func TestApplyNoPMU(t *testing.T) {
	in := append(hostTable(), accel.CPUIDEntry{Function: 0xa, EAX: 0x07300805, EBX: 0, ECX: 0, EDX: 0x603})
	in = withFeatures(in, "pdcm", "perfctr_core")
	m, err := Parse("host,-pmu")
	if err != nil || !m.NoPMU() {
		t.Fatalf("Parse: %v, NoPMU %v", err, m.NoPMU())
	}
	out, err := m.Apply(in)
	if err != nil {
		t.Fatal(err)
	}
	if e := find(out, 0xa, 0); *e != (accel.CPUIDEntry{Function: 0xa}) {
		t.Errorf("-pmu left leaf 0xa = %+v", *e)
	}
	if has(out, "pdcm") || has(out, "perfctr_core") || !has(out, "cx16") {
		t.Errorf("-pmu: pdcm %v perfctr_core %v cx16 %v", has(out, "pdcm"), has(out, "perfctr_core"), has(out, "cx16"))
	}
	if _, err := m.Apply(hostTable()); err != nil {
		t.Errorf("-pmu where there is no PMU: %v", err)
	}
	if p, _ := Parse("host,+pmu"); p.NoPMU() {
		t.Error("+pmu reads as no PMU")
	}
}

func TestApplyAdd(t *testing.T) {
	if out := apply(t, "host,+x2apic"); !has(out, "x2apic") {
		t.Error("+x2apic lost x2apic")
	}
	m, _ := Parse("host,+vmx")
	if _, err := m.Apply(hostTable()); err == nil || !strings.Contains(err.Error(), "not offered") {
		t.Errorf("+vmx on a host without it: %v", err)
	}
	m, _ = Parse("host,-xsave,+avx")
	if _, err := m.Apply(hostTable()); err == nil || !strings.Contains(err.Error(), "removes") {
		t.Errorf("-xsave,+avx: %v", err)
	}
	if _, err := (Model{Name: "pentium"}).Apply(hostTable()); err == nil {
		t.Error("unknown model applied")
	}
}

func TestForVCPU(t *testing.T) {
	in := apply(t, "host")
	before := append([]accel.CPUIDEntry(nil), in...)
	out := ForVCPU(in, 3, 4)
	if !reflect.DeepEqual(in, before) {
		t.Error("ForVCPU modified its input")
	}
	l1 := find(out, 1, 0)
	if l1.EBX>>24 != 3 || l1.EBX>>16&0xff != 4 || l1.EDX&(1<<28) == 0 {
		t.Errorf("leaf 1 EBX %#x EDX %#x: want APIC ID 3, 4 logical, HTT", l1.EBX, l1.EDX)
	}
	for _, leaf := range []uint32{0xb, 0x1f} {
		var subs []accel.CPUIDEntry
		for _, e := range out {
			if e.Function == leaf {
				subs = append(subs, e)
			}
		}
		want := []accel.CPUIDEntry{
			{Function: leaf, Index: 0, Flags: sig, EAX: 0, EBX: 1, ECX: 0x100, EDX: 3},
			{Function: leaf, Index: 1, Flags: sig, EAX: 2, EBX: 4, ECX: 0x201, EDX: 3},
			{Function: leaf, Index: 2, Flags: sig, ECX: 2, EDX: 3},
		}
		if !reflect.DeepEqual(subs, want) {
			t.Errorf("leaf %#x = %+v\nwant %+v", leaf, subs, want)
		}
	}
	for i, wantShare := range []uint32{0, 0, 0, 3} {
		e := find(out, 4, uint32(i))
		if e.EAX>>14&0xfff != wantShare || e.EAX>>26 != 3 || e.EAX&0x3fff != hostTable()[2+i].EAX {
			t.Errorf("leaf 4.%d EAX %#x: want sharing %d, cores-1 3", i, e.EAX, wantShare)
		}
	}
	if e := find(out, 4, 4); e.EAX != 0 {
		t.Errorf("leaf 4.4 (no cache) changed: %#x", e.EAX)
	}

	one := ForVCPU(in, 0, 1)
	l1 = find(one, 1, 0)
	if l1.EBX>>16 != 1 || l1.EDX&(1<<28) != 0 {
		t.Errorf("1 CPU: leaf 1 EBX %#x EDX %#x, want ID 0, 1 logical, no HTT", l1.EBX, l1.EDX)
	}
	if e := find(one, 0xb, 1); e.EAX != 0 || e.EBX != 1 {
		t.Errorf("1 CPU: leaf 0xb.1 = %+v", e)
	}
	three := ForVCPU(in, 2, 3)
	if e := find(three, 0xb, 1); e.EAX != 2 || e.EBX != 3 || e.EDX != 2 {
		t.Errorf("3 CPUs: leaf 0xb.1 = %+v, want shift 2, 3 CPUs, ID 2", e)
	}
	if find(three, 1, 0).EBX>>16&0xff != 4 {
		t.Error("3 CPUs: leaf 1 addressable IDs should round up to 4")
	}
}

func TestForVCPUAMD(t *testing.T) {
	in := hostTable()
	in[0].EBX, in[0].ECX, in[0].EDX = 0x68747541, 0x444d4163, 0x69746e65 // AuthenticAMD
	out := ForVCPU(in, 5, 6)
	if e := find(out, 0x80000008, 0); e.ECX&0xff != 5 || e.ECX>>12&0xf != 3 {
		t.Errorf("AMD leaf 0x80000008 ECX %#x, want NC 5, ApicIdCoreIdSize 3", e.ECX)
	}
	intel := ForVCPU(hostTable(), 5, 6)
	if e := find(intel, 0x80000008, 0); e.ECX != 0 {
		t.Errorf("Intel leaf 0x80000008 ECX changed: %#x", e.ECX)
	}
}

// kvmSupported is KVM_GET_SUPPORTED_CPUID as read on a (nested) Intel
// KVM host: a realistic input for Apply.
var kvmSupported = []accel.CPUIDEntry{
	{Function: 0x0, EAX: 0x20, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69},
	{Function: 0x1, EAX: 0xc06f2, EBX: 0x20800, ECX: 0x81202000, EDX: 0xf8bfbff},
	{Function: 0x2, EAX: 0xfeff01, EBX: 0xf0},
	{Function: 0x3},
	{Function: 0x4, Flags: sig, EAX: 0x4000121, EBX: 0x2c0003f, ECX: 0x3f},
	{Function: 0x4, Index: 1, Flags: sig, EAX: 0x4000122, EBX: 0x1c0003f, ECX: 0x3f},
	{Function: 0x4, Index: 2, Flags: sig, EAX: 0x4000143, EBX: 0x3c0003f, ECX: 0x7ff},
	{Function: 0x4, Index: 3, Flags: sig, EAX: 0x4004163, EBX: 0x4c0003f, ECX: 0x3bfff, EDX: 0x4},
	{Function: 0x4, Index: 4, Flags: sig},
	{Function: 0x5},
	{Function: 0x6, EAX: 0x4},
	{Function: 0x7, Flags: sig, EAX: 0x2, EBX: 0x1802042, ECX: 0x1a010104, EDX: 0xbc010400},
	{Function: 0x7, Index: 1, Flags: sig, EAX: 0x1c00},
	{Function: 0x7, Index: 2, Flags: sig, EDX: 0x1f},
	{Function: 0x8},
	{Function: 0x9},
	{Function: 0xa},
	{Function: 0xb, Flags: sig},
	{Function: 0xc},
	{Function: 0xd, Flags: sig, EAX: 0x2e7, EBX: 0xa88, ECX: 0xa88},
	{Function: 0xd, Index: 1, Flags: sig},
	{Function: 0xd, Index: 2, Flags: sig, EAX: 0x100, EBX: 0x240},
	{Function: 0xd, Index: 5, Flags: sig, EAX: 0x40, EBX: 0x440},
	{Function: 0xd, Index: 6, Flags: sig, EAX: 0x200, EBX: 0x480},
	{Function: 0xd, Index: 7, Flags: sig, EAX: 0x400, EBX: 0x680},
	{Function: 0xd, Index: 9, Flags: sig, EAX: 0x8, EBX: 0xa80},
	{Function: 0xe},
	{Function: 0xf, Flags: sig},
	{Function: 0x10, Flags: sig},
	{Function: 0x11},
	{Function: 0x12, Flags: sig},
	{Function: 0x13},
	{Function: 0x14, Flags: sig},
	{Function: 0x15},
	{Function: 0x16},
	{Function: 0x17, Flags: sig},
	{Function: 0x18, Flags: sig},
	{Function: 0x19},
	{Function: 0x1a},
	{Function: 0x1b},
	{Function: 0x1c},
	{Function: 0x1d, Flags: sig},
	{Function: 0x1e, Flags: sig},
	{Function: 0x1f, Flags: sig},
	{Function: 0x20},
	{Function: 0x40000000, EAX: 0x40000001, EBX: 0x4b4d564b, ECX: 0x564b4d56, EDX: 0x4d},
	{Function: 0x40000001, EAX: 0x1007efb},
	{Function: 0x80000000, EAX: 0x80000008},
	{Function: 0x80000001, ECX: 0x101, EDX: 0x20100800},
	{Function: 0x80000002},
	{Function: 0x80000003},
	{Function: 0x80000004},
	{Function: 0x80000005},
	{Function: 0x80000006, ECX: 0x8007040},
	{Function: 0x80000007, EDX: 0x100},
	{Function: 0x80000008, EAX: 0x392e, EBX: 0x100d200},
}

func BenchmarkApplyHost(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		m, err := Parse("host")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Apply(kvmSupported); err != nil {
			b.Fatal(err)
		}
	}
}
