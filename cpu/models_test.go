package cpu

import (
	"slices"
	"strings"
	"testing"

	"govmm/accel"
)

// fullTable is a host of the given vendor that has every feature in the
// table (but the dynamic ones), unknown bits in the registers the table
// covers, leaf 7.2's mitigation bits, a supervisor XSAVE component, a
// brand string and a PMU.
func fullTable(vendor string) []accel.CPUIDEntry {
	t := hostTable()
	if vendor == VendorAMD {
		t[0].EBX, t[0].EDX, t[0].ECX = 0x68747541, 0x69746e65, 0x444d4163 // "AuthenticAMD"
	}
	t = append(t,
		accel.CPUIDEntry{Function: 7, Index: 2, Flags: sig, EDX: 0x3f},
		accel.CPUIDEntry{Function: 0xa, EAX: 0x07300805},
		accel.CPUIDEntry{Function: 0x14, Index: 0, Flags: sig, EAX: 1, EBX: 0xf},
		accel.CPUIDEntry{Function: 0x80000002, EAX: 0x6c65746e},
		accel.CPUIDEntry{Function: 0x80000003},
		accel.CPUIDEntry{Function: 0x80000004},
		accel.CPUIDEntry{Function: 0x80000007},
	)
	for i := range t {
		e := &t[i]
		switch {
		case e.Function == 0xd && e.Index == 1:
			e.ECX = 1<<8 | 1<<11 | 1<<12 // PT, CET_U, CET_S
		case e.Function == 7 && e.Index == 0:
			e.EDX |= 1 << 1 // a bit the table does not name
		}
	}
	for i := range features {
		f := &features[i]
		if f.Dynamic {
			continue
		}
		e := find(t, f.Leaf, f.Subleaf)
		if e == nil {
			panic("fullTable: no leaf for " + f.Name)
		}
		*regPtr(e, f.Reg) |= 1 << f.Bit
	}
	return t
}

// hostFor returns a full host a model can run on.
func hostFor(d Definition) []accel.CPUIDEntry {
	if d.Vendor == VendorAMD {
		return fullTable(VendorAMD)
	}
	return fullTable(VendorIntel)
}

func applyOn(t *testing.T, spec string, host []accel.CPUIDEntry) []accel.CPUIDEntry {
	t.Helper()
	m, err := Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	out, err := m.Apply(host)
	if err != nil {
		t.Fatalf("%s: %v", spec, err)
	}
	return out
}

func TestModelsListed(t *testing.T) {
	var names []string
	for _, d := range Definitions() {
		names = append(names, d.Name)
		for _, f := range d.Features {
			ft, ok := Lookup(f)
			if !ok {
				t.Errorf("%s: unknown feature %q", d.Name, f)
				continue
			}
			if ft.Dynamic || ft.VMM || HypervisorLeaf(ft.Leaf) {
				t.Errorf("%s: %s is not the model's to decide", d.Name, f)
			}
		}
		if d.Name != "host" && len(d.Features) == 0 {
			t.Errorf("%s: no features", d.Name)
		}
	}
	if !slices.Equal(names, Models) {
		t.Errorf("Models %v, definitions %v", Models, names)
	}
}

// TestModelFeatures: on a host that has everything, the guest sees
// exactly each model's features (of those a model decides), the bits the
// table does not know are gone, and the model's identity is presented.
func TestModelFeatures(t *testing.T) {
	for _, d := range Definitions() {
		if d.IsHost() {
			continue
		}
		host := hostFor(d)
		out := applyOn(t, d.Name, host)
		for i := range features {
			f := &features[i]
			if !maskable(f) {
				continue
			}
			want := slices.Contains(d.Features, f.Name)
			if got := f.Has(out); got != want {
				t.Errorf("%s: %s present=%v, the definition says %v", d.Name, f.Name, got, want)
			}
		}
		if d.Vendor == VendorAMD && find(out, 0x80000001, 0).EDX&1 == 0 {
			t.Errorf("%s: 0x80000001 EDX lacks the FPU alias of an AMD CPU", d.Name)
		}
		if !has(out, "hypervisor") || !IsKVM(out) {
			t.Errorf("%s: lost the hypervisor bit or KVM's leaves", d.Name)
		}
		if e := find(out, 7, 0); e.EDX&(1<<1) != 0 {
			t.Errorf("%s: leaf 7 EDX bit 1 (not in the table) survived", d.Name)
		}
		if e := find(out, 7, 2); e.EDX != 0 {
			t.Errorf("%s: leaf 7.2 EDX %#x survived", d.Name, e.EDX)
		}
		if e := find(out, 0x14, 0); e.EAX != 0 || e.EBX != 0 {
			t.Errorf("%s: processor trace leaf survived without intel_pt", d.Name)
		}
		if e := find(out, 0xa, 0); e.EAX != 0 {
			t.Errorf("%s: PMU leaf 0xa survived (named models have no PMU by default)", d.Name)
		}
		if Vendor(out) != Vendor(host) {
			t.Errorf("%s: vendor %q, host %q", d.Name, Vendor(out), Vendor(host))
		}
		leaf1 := find(out, 1, 0).EAX
		if d.Family == 0 {
			if leaf1 != find(host, 1, 0).EAX {
				t.Errorf("%s: changed the host's family/model/stepping to %#x", d.Name, leaf1)
			}
		} else if leaf1 != fms(d.Family, d.Model, d.Stepping) {
			t.Errorf("%s: leaf 1 EAX %#x, want %#x", d.Name, leaf1, fms(d.Family, d.Model, d.Stepping))
		}
		if d.Brand != "" {
			var b []byte
			for l := uint32(0x80000002); l <= 0x80000004; l++ {
				e := find(out, l, 0)
				for _, r := range []uint32{e.EAX, e.EBX, e.ECX, e.EDX} {
					b = append(b, byte(r), byte(r>>8), byte(r>>16), byte(r>>24))
				}
			}
			if got := strings.TrimRight(string(b), "\x00"); got != d.Brand {
				t.Errorf("%s: brand %q", d.Name, got)
			}
		}
		if m, _ := Parse(d.Name + ",+pmu"); true {
			out, err := m.Apply(host)
			if err != nil || find(out, 0xa, 0).EAX == 0 {
				t.Errorf("%s,+pmu: PMU not kept (%v)", d.Name, err)
			}
		}
	}
}

func TestFMS(t *testing.T) {
	for _, c := range []struct{ f, m, s, want uint32 }{
		{6, 85, 4, 0x50654},   // Skylake-SP
		{25, 1, 1, 0xa00f11},  // Milan
		{23, 49, 0, 0x830f10}, // Rome
		{6, 106, 6, 0x606a6},  // Ice Lake-SP
		{6, 134, 0, 0x80660},  // QEMU's Icelake-Server
	} {
		if got := fms(c.f, c.m, c.s); got != c.want {
			t.Errorf("fms(%d, %d, %d) = %#x, want %#x", c.f, c.m, c.s, got, c.want)
		}
	}
}

// TestPsABILevels: v2 is the baseline plus exactly the psABI's list, and
// each level contains the one below.
func TestPsABILevels(t *testing.T) {
	def := func(n string) Definition { d, _ := LookupModel(n); return d }
	v2, v3, v4 := def("x86-64-v2"), def("x86-64-v3"), def("x86-64-v4")
	baseline := []string{"cmov", "cx8", "fpu", "fxsr", "mmx", "syscall", "sse", "sse2"}
	levels := []struct {
		d    Definition
		adds []string
	}{
		{v2, []string{"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}},
		{v3, []string{"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}},
		{v4, []string{"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}},
	}
	prev := systemBase
	for _, l := range levels {
		for _, f := range baseline {
			if !slices.Contains(l.d.Features, f) {
				t.Errorf("%s lacks the baseline's %s", l.d.Name, f)
			}
		}
		for _, f := range prev {
			if !slices.Contains(l.d.Features, f) {
				t.Errorf("%s lacks %s of the level below", l.d.Name, f)
			}
		}
		want := joined(prev, l.adds)
		if len(l.d.Features) != len(want) {
			t.Errorf("%s has %d features, want the %d of the level below plus %v", l.d.Name, len(l.d.Features), len(prev), l.adds)
		}
		prev = l.d.Features
	}
	if slices.Contains(v2.Features, "avx") || slices.Contains(v3.Features, "avx512f") {
		t.Error("a level has its successor's features")
	}
}

// TestModelGenerations: a vendor's newer model keeps everything the older
// one has, and each contains the psABI level its ISA reaches.
func TestModelGenerations(t *testing.T) {
	def := func(n string) Definition { d, _ := LookupModel(n); return d }
	for _, c := range [][2]string{
		{"x86-64-v3", "EPYC-Rome"}, {"EPYC-Rome", "EPYC-Milan"},
		{"x86-64-v4", "Skylake-Server"}, {"Skylake-Server", "Icelake-Server"},
	} {
		older, newer := def(c[0]), def(c[1])
		for _, f := range older.Features {
			if !slices.Contains(newer.Features, f) {
				t.Errorf("%s lacks %s, which %s has", newer.Name, f, older.Name)
			}
		}
		if older.XSave&^newer.XSave != 0 {
			t.Errorf("%s lacks XSAVE components %#x of %s", newer.Name, older.XSave&^newer.XSave, older.Name)
		}
	}
}

// TestModelXSave: each model's XSAVE components are the ones its features
// own, and leaf 0xD describes exactly them with a consistent size.
func TestModelXSave(t *testing.T) {
	for _, spec := range []string{"x86-64-v2", "x86-64-v3", "x86-64-v4", "Skylake-Server", "Icelake-Server", "EPYC-Rome", "EPYC-Milan",
		"x86-64-v3,-avx", "x86-64-v4,-avx512f", "Skylake-Server,-pku", "x86-64-v3,+avx512f", "x86-64-v3,+pku"} {
		m, _ := Parse(spec)
		d, _ := LookupModel(m.Name)
		out := applyOn(t, spec, hostFor(d))
		want := uint64(0)
		if has(out, "xsave") {
			want = xsLegacy
			for _, x := range xcr0Bits {
				if has(out, x.feature) {
					want |= x.components
				}
			}
		}
		if len(m.Add)+len(m.Remove) == 0 && want != d.XSave && d.XSave != xsLegacy {
			t.Errorf("%s: XSave %#x in the definition, its features own %#x", spec, d.XSave, want)
		}
		d0 := find(out, 0xd, 0)
		got := uint64(d0.EDX)<<32 | uint64(d0.EAX)
		if got != want {
			t.Errorf("%s: leaf 0xd XCR0 mask %#x, want %#x", spec, got, want)
		}
		if d1 := find(out, 0xd, 1); d1.ECX != 0 || d1.EDX != 0 {
			t.Errorf("%s: supervisor components %#x offered", spec, d1.ECX)
		}
		if want == 0 {
			for _, e := range out {
				if e.Function == 0xd && (e.EAX|e.EBX|e.ECX|e.EDX) != 0 {
					t.Errorf("%s: without XSAVE, leaf 0xd.%d is %+v", spec, e.Index, e)
				}
			}
			continue
		}
		end := uint32(576)
		for i := uint32(2); i < 63; i++ {
			e := find(out, 0xd, i)
			on := want>>i&1 != 0
			switch {
			case on && (e == nil || e.EAX == 0):
				t.Errorf("%s: component %d offered but not described", spec, i)
			case !on && e != nil && e.EAX != 0:
				t.Errorf("%s: component %d not offered but described", spec, i)
			case on:
				end = max(end, e.EBX+e.EAX)
			}
		}
		if d0.ECX != end || d0.EBX > d0.ECX {
			t.Errorf("%s: leaf 0xd.0 max size %#x (current %#x), components end at %#x", spec, d0.ECX, d0.EBX, end)
		}
	}
	if d, _ := LookupModel("x86-64-v2"); d.XSave != xsLegacy {
		t.Errorf("x86-64-v2 XSave %#x", d.XSave)
	}
}

// TestModelDependents: removing a feature from a model removes what
// needs it; adding one whose needs the model lacks is refused by name.
func TestModelDependents(t *testing.T) {
	out := applyOn(t, "x86-64-v3,-avx", fullTable(VendorIntel))
	for _, f := range []string{"avx", "avx2", "fma", "f16c"} {
		if has(out, f) {
			t.Errorf("x86-64-v3,-avx kept %s", f)
		}
	}
	if !has(out, "bmi2") || !has(out, "xsave") {
		t.Error("x86-64-v3,-avx lost bmi2 or xsave")
	}
	out = applyOn(t, "x86-64-v3,+avx512f", fullTable(VendorIntel))
	if !has(out, "avx512f") || has(out, "avx512bw") {
		t.Error("x86-64-v3,+avx512f: wrong AVX-512 set")
	}
	m, _ := Parse("x86-64-v2,+avx2")
	if _, err := m.Apply(fullTable(VendorIntel)); err == nil || !strings.Contains(err.Error(), "needs avx") {
		t.Errorf("x86-64-v2,+avx2: %v", err)
	}
}

// TestModelMissing: a host that lacks a model's features refuses the
// model naming every one; a host of another vendor refuses a vendor model.
func TestModelMissing(t *testing.T) {
	host, err := Hide(fullTable(VendorIntel), []string{"avx2", "bmi2"})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := Parse("x86-64-v3")
	_, err = m.Apply(host)
	if err == nil || !strings.Contains(err.Error(), "lacks avx2 bmi2") {
		t.Errorf("x86-64-v3 on a host without avx2 and bmi2: %v", err)
	}
	// Removing the missing feature makes the model fit again.
	if _, err := (Model{Name: "x86-64-v3", Remove: []string{"avx2", "bmi2"}}).Apply(host); err != nil {
		t.Errorf("x86-64-v3,-avx2,-bmi2 on that host: %v", err)
	}
	// hostTable has no sse4a: EPYC-Milan names it; and it is Intel.
	m, _ = Parse("EPYC-Milan")
	if _, err := m.Apply(hostTable()); err == nil || !strings.Contains(err.Error(), VendorAMD) {
		t.Errorf("EPYC-Milan on Intel: %v", err)
	}
	d, _ := LookupModel("EPYC-Milan")
	why := d.Unavailable(VendorAMD, func(n string) bool { return has(hostTable(), n) })
	if !strings.Contains(why, "missing") || !strings.Contains(why, "sse4a") || strings.Contains(why, "needs") {
		t.Errorf("EPYC-Milan on an AMD host like hostTable: %q", why)
	}
	d, _ = LookupModel("x86-64-v4")
	if why := d.Unavailable(VendorIntel, func(n string) bool { return has(hostTable(), n) }); why != "missing de mce mtrr mca pat movbe avx512cd abm" {
		t.Errorf("x86-64-v4 on hostTable: %q", why)
	}
}

// TestMissingOn: the restore check names the features a saved CPUID has
// and the destination lacks, and nothing for the same host.
func TestMissingOn(t *testing.T) {
	saved := applyOn(t, "x86-64-v3", fullTable(VendorIntel))
	if got := MissingOn(saved, fullTable(VendorIntel)); len(got) != 0 {
		t.Errorf("same host: missing %v", got)
	}
	host := apply(t, "host")
	if got := MissingOn(host, hostTable()); len(got) != 0 {
		t.Errorf("host model on its own host: missing %v", got)
	}
	// A topology bit is the VM's, not the host's.
	if got := MissingOn(withFeatures(apply(t, "host"), "ht"), hostTable()); len(got) != 0 {
		t.Errorf("HTT counted as a host feature: missing %v", got)
	}
	dest, _ := Hide(fullTable(VendorIntel), []string{"avx"})
	got := MissingOn(saved, dest)
	want := []string{"fma", "avx", "f16c", "avx2", "XSAVE components 0x4"}
	if !slices.Equal(got, want) {
		t.Errorf("destination without avx: missing %v, want %v", got, want)
	}
	if _, err := Hide(dest, []string{"nosuch"}); err == nil {
		t.Error("Hide accepted an unknown feature")
	}
}
