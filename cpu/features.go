package cpu

import (
	"sort"
	"sync"

	"govmm/accel"
)

// Reg names a CPUID output register.
type Reg uint8

const (
	EAX Reg = iota
	EBX
	ECX
	EDX
)

func (r Reg) String() string { return [...]string{"eax", "ebx", "ecx", "edx"}[r] }

// Feature is one CPUID feature bit, named as Linux names it in
// /proc/cpuinfo (QEMU's name where Linux shows none, e.g. invtsc).
type Feature struct {
	Name    string
	Leaf    uint32
	Subleaf uint32
	Reg     Reg
	Bit     uint
	// Dynamic features mirror guest control-register state (OSXSAVE is
	// CR4.OSXSAVE, OSPKE is CR4.PKE): KVM computes them at run time, so a
	// CPU model cannot add or remove them.
	Dynamic bool
}

type leafReg struct {
	leaf, sub uint32
	reg       Reg
	names     map[uint]string
}

var featureLeaves = []leafReg{
	{1, 0, EDX, map[uint]string{0: "fpu", 1: "vme", 2: "de", 3: "pse", 4: "tsc", 5: "msr", 6: "pae", 7: "mce",
		8: "cx8", 9: "apic", 11: "sep", 12: "mtrr", 13: "pge", 14: "mca", 15: "cmov", 16: "pat", 17: "pse36",
		18: "pn", 19: "clflush", 21: "dts", 22: "acpi", 23: "mmx", 24: "fxsr", 25: "sse", 26: "sse2", 27: "ss",
		28: "ht", 29: "tm", 30: "ia64", 31: "pbe"}},
	{1, 0, ECX, map[uint]string{0: "pni", 1: "pclmulqdq", 2: "dtes64", 3: "monitor", 4: "ds_cpl", 5: "vmx",
		6: "smx", 7: "est", 8: "tm2", 9: "ssse3", 10: "cid", 11: "sdbg", 12: "fma", 13: "cx16", 14: "xtpr",
		15: "pdcm", 17: "pcid", 18: "dca", 19: "sse4_1", 20: "sse4_2", 21: "x2apic", 22: "movbe", 23: "popcnt",
		24: "tsc_deadline_timer", 25: "aes", 26: "xsave", 27: "osxsave", 28: "avx", 29: "f16c", 30: "rdrand",
		31: "hypervisor"}},
	{7, 0, EBX, map[uint]string{0: "fsgsbase", 1: "tsc_adjust", 2: "sgx", 3: "bmi1", 4: "hle", 5: "avx2",
		6: "fdp_excptn_only", 7: "smep", 8: "bmi2", 9: "erms", 10: "invpcid", 11: "rtm", 12: "cqm",
		13: "zero_fcs_fds", 14: "mpx", 15: "rdt_a", 16: "avx512f", 17: "avx512dq", 18: "rdseed", 19: "adx",
		20: "smap", 21: "avx512ifma", 23: "clflushopt", 24: "clwb", 25: "intel_pt", 26: "avx512pf",
		27: "avx512er", 28: "avx512cd", 29: "sha_ni", 30: "avx512bw", 31: "avx512vl"}},
	{7, 0, ECX, map[uint]string{0: "prefetchwt1", 1: "avx512vbmi", 2: "umip", 3: "pku", 4: "ospke",
		5: "waitpkg", 6: "avx512_vbmi2", 7: "shstk", 8: "gfni", 9: "vaes", 10: "vpclmulqdq",
		11: "avx512_vnni", 12: "avx512_bitalg", 13: "tme", 14: "avx512_vpopcntdq", 16: "la57", 22: "rdpid",
		24: "bus_lock_detect", 25: "cldemote", 27: "movdiri", 28: "movdir64b", 29: "enqcmd", 30: "sgx_lc",
		31: "pks"}},
	{7, 0, EDX, map[uint]string{2: "avx512_4vnniw", 3: "avx512_4fmaps", 4: "fsrm", 8: "avx512_vp2intersect",
		9: "srbds_ctrl", 10: "md_clear", 14: "serialize", 16: "tsxldtrk", 18: "pconfig", 19: "arch_lbr",
		20: "ibt", 22: "amx_bf16", 23: "avx512_fp16", 24: "amx_tile", 25: "amx_int8", 26: "spec_ctrl",
		27: "intel_stibp", 28: "flush_l1d", 29: "arch_capabilities", 30: "core_capabilities",
		31: "spec_ctrl_ssbd"}},
	{7, 1, EAX, map[uint]string{4: "avx_vnni", 5: "avx512_bf16", 7: "cmpccxadd", 10: "fzrm", 11: "fsrs",
		12: "fsrc", 21: "amx_fp16", 23: "avx_ifma", 26: "lam"}},
	{0xd, 1, EAX, map[uint]string{0: "xsaveopt", 1: "xsavec", 2: "xgetbv1", 3: "xsaves", 4: "xfd"}},
	{0x80000001, 0, ECX, map[uint]string{0: "lahf_lm", 1: "cmp_legacy", 2: "svm", 3: "extapic",
		4: "cr8_legacy", 5: "abm", 6: "sse4a", 7: "misalignsse", 8: "3dnowprefetch", 9: "osvw", 10: "ibs",
		11: "xop", 12: "skinit", 13: "wdt", 15: "lwp", 16: "fma4", 17: "tce", 19: "nodeid_msr", 21: "tbm",
		22: "topoext", 23: "perfctr_core", 24: "perfctr_nb", 26: "bpext", 27: "ptsc", 28: "perfctr_llc",
		29: "mwaitx"}},
	{0x80000001, 0, EDX, map[uint]string{11: "syscall", 19: "mp", 20: "nx", 22: "mmxext", 25: "fxsr_opt",
		26: "pdpe1gb", 27: "rdtscp", 29: "lm", 30: "3dnowext", 31: "3dnow"}},
	{0x80000007, 0, EDX, map[uint]string{8: "invtsc"}},
	{0x80000008, 0, EBX, map[uint]string{0: "clzero", 1: "irperf", 2: "xsaveerptr", 9: "wbnoinvd",
		12: "amd_ibpb", 14: "amd_ibrs", 15: "amd_stibp", 23: "amd_ppin", 24: "amd_ssbd", 25: "virt_ssbd"}},
}

var (
	features  []Feature
	byName    = map[string]Feature{}
	dependsOn = map[string][]string{} // feature -> features that require it
)

// requires lists, for each feature, the features it needs (after Linux's
// arch/x86/kernel/cpu/cpuid-deps.c): removing one removes its dependents.
var requires = map[string][]string{
	"fxsr": {"fpu"}, "cmov": {"fxsr"}, "mmx": {"fxsr"}, "mmxext": {"mmx"}, "fxsr_opt": {"fxsr"},
	"xsave": {"fxsr"}, "sse": {"fxsr"}, "sse2": {"sse"}, "pni": {"sse2"}, "ssse3": {"sse2"},
	"sse4_1": {"sse2"}, "sse4_2": {"sse2"}, "pclmulqdq": {"sse2"}, "f16c": {"sse2", "avx"},
	"aes": {"sse2"}, "sha_ni": {"sse2"}, "gfni": {"sse2"}, "sse4a": {"sse2"},
	"xsaveopt": {"xsave"}, "xsavec": {"xsave"}, "xsaves": {"xsave"}, "xgetbv1": {"xsave"},
	"xfd": {"xsave"}, "avx": {"xsave"}, "pku": {"xsave"}, "mpx": {"xsave"},
	"fma": {"avx"}, "vaes": {"avx"}, "vpclmulqdq": {"avx"}, "avx2": {"avx"}, "avx512f": {"avx"},
	"avx_vnni": {"avx2"}, "avx_ifma": {"avx2"}, "fma4": {"avx"}, "xop": {"avx"},
	"avx512ifma": {"avx512f"}, "avx512pf": {"avx512f"}, "avx512er": {"avx512f"}, "avx512cd": {"avx512f"},
	"avx512dq": {"avx512f"}, "avx512bw": {"avx512f"}, "avx512vl": {"avx512f"}, "avx512vbmi": {"avx512f"},
	"avx512_vbmi2": {"avx512vl"}, "avx512_vnni": {"avx512vl"}, "avx512_bitalg": {"avx512vl"},
	"avx512_vpopcntdq": {"avx512f"}, "avx512_4vnniw": {"avx512f"}, "avx512_4fmaps": {"avx512f"},
	"avx512_vp2intersect": {"avx512vl"}, "avx512_bf16": {"avx512vl"}, "avx512_fp16": {"avx512bw"},
	"amx_tile": {"xfd"}, "amx_bf16": {"amx_tile"}, "amx_int8": {"amx_tile"}, "amx_fp16": {"amx_tile"},
	"shstk": {"xsaves"}, "x2apic": {"apic"}, "tsc_deadline_timer": {"apic"},
	"lm": {"pae"}, "pdpe1gb": {"lm"}, "nx": {"pae"},
	"sep": {"msr"}, "rdtscp": {"tsc"}, "invtsc": {"tsc"}, "tsc_adjust": {"tsc"},
	"pse36": {"pse"},
}

// xcr0Bits are the XSAVE state components a feature owns: without the
// feature the component is not offered in CPUID leaf 0xD.
var xcr0Bits = map[string][]uint{
	"avx": {2}, "mpx": {3, 4}, "avx512f": {5, 6, 7}, "pku": {9}, "amx_tile": {17, 18},
}

// The table is built on first use rather than at program start: govmm's
// start-up time is measured, and a VM with the plain host model never
// needs it.
var tableOnce sync.Once

func loadTable() { tableOnce.Do(buildTable) }

func buildTable() {
	for _, lr := range featureLeaves {
		for bit, name := range lr.names {
			f := Feature{Name: name, Leaf: lr.leaf, Subleaf: lr.sub, Reg: lr.reg, Bit: bit,
				Dynamic: name == "osxsave" || name == "ospke"}
			features = append(features, f)
			if _, dup := byName[name]; dup {
				panic("cpu: duplicate feature name " + name)
			}
			byName[name] = f
		}
	}
	// Table order (Linux's word order: leaf 1 EDX before ECX), then bit.
	order := map[[3]uint32]int{}
	for i, lr := range featureLeaves {
		order[[3]uint32{lr.leaf, lr.sub, uint32(lr.reg)}] = i
	}
	sort.Slice(features, func(i, j int) bool {
		a, b := features[i], features[j]
		oa, ob := order[[3]uint32{a.Leaf, a.Subleaf, uint32(a.Reg)}], order[[3]uint32{b.Leaf, b.Subleaf, uint32(b.Reg)}]
		if oa != ob {
			return oa < ob
		}
		return a.Bit < b.Bit
	})
	for f, reqs := range requires {
		if _, ok := byName[f]; !ok {
			panic("cpu: dependency table names unknown feature " + f)
		}
		for _, r := range reqs {
			if _, ok := byName[r]; !ok {
				panic("cpu: dependency table names unknown feature " + r)
			}
			dependsOn[r] = append(dependsOn[r], f)
		}
	}
	for _, d := range dependsOn {
		sort.Strings(d)
	}
}

// Features returns the feature table in /proc/cpuinfo order.
func Features() []Feature { loadTable(); return append([]Feature(nil), features...) }

// Lookup returns the named feature.
func Lookup(name string) (Feature, bool) {
	loadTable()
	f, ok := byName[name]
	return f, ok
}

// FeatureNames returns every known feature name, sorted.
func FeatureNames() []string {
	loadTable()
	names := make([]string, 0, len(features))
	for _, f := range features {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	return names
}

// Has reports whether f is set in entries.
func (f Feature) Has(entries []accel.CPUIDEntry) bool {
	e := find(entries, f.Leaf, f.Subleaf)
	return e != nil && reg(e, f.Reg)>>f.Bit&1 != 0
}

// Present lists the features set in entries, in /proc/cpuinfo order (for
// `govmm caps` and the default guest's report).
func Present(entries []accel.CPUIDEntry) []string {
	loadTable()
	var out []string
	for _, f := range features {
		if f.Has(entries) {
			out = append(out, f.Name)
		}
	}
	return out
}

// find returns the entry for leaf/subleaf (subleaf is ignored for leaves
// without a significant index).
func find(entries []accel.CPUIDEntry, leaf, sub uint32) *accel.CPUIDEntry {
	for i := range entries {
		e := &entries[i]
		if e.Function == leaf && (e.Flags&accel.CPUIDFlagSignificantIndex == 0 || e.Index == sub) {
			return e
		}
	}
	return nil
}

func reg(e *accel.CPUIDEntry, r Reg) uint32 {
	switch r {
	case EAX:
		return e.EAX
	case EBX:
		return e.EBX
	case ECX:
		return e.ECX
	}
	return e.EDX
}

func regPtr(e *accel.CPUIDEntry, r Reg) *uint32 {
	switch r {
	case EAX:
		return &e.EAX
	case EBX:
		return &e.EBX
	case ECX:
		return &e.ECX
	}
	return &e.EDX
}
