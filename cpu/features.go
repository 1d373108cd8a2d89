package cpu

import (
	"slices"

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
	// VMM features are govmm's to offer, whatever the accelerator
	// reports: the hypervisor bit, which KVM leaves to the VMM and which
	// every VMM sets. A CPU model can still remove them.
	VMM bool
}

// KVM's paravirtual CPUID leaves (Linux's Documentation/virt/kvm/x86/cpuid.rst).
// Features there count only where leaf 0x40000000 carries KVM's signature:
// the same leaves mean other things under Hyper-V.
const (
	KVMLeafSignature = 0x40000000 // EAX: highest leaf; EBX, ECX, EDX: "KVMKVMKVM\0\0\0"
	KVMLeafFeatures  = 0x40000001 // EAX: KVM_FEATURE_* bits
	KVMLeafTiming    = 0x40000010 // EAX: TSC kHz, EBX: LAPIC bus kHz
)

// KVM's signature in leaf 0x40000000 EBX, ECX, EDX.
const kvmSigEBX, kvmSigECX, kvmSigEDX = 0x4b4d564b, 0x564b4d56, 0x4d

// IsKVM reports whether entries present KVM's paravirtual leaves.
func IsKVM(entries []accel.CPUIDEntry) bool {
	e := find(entries, KVMLeafSignature, 0)
	return e != nil && e.EBX == kvmSigEBX && e.ECX == kvmSigECX && e.EDX == kvmSigEDX
}

// HypervisorLeaf reports whether leaf is in the range hypervisors define
// (0x40000000-0x400000ff).
func HypervisorLeaf(leaf uint32) bool { return leaf>>8 == 0x400000 }

// The tables below are plain literals that the compiler lays out as
// static data: govmm's start-up time is measured, so the package has no
// init code, and looking a feature up is a linear search (the tables are
// small and consulted a handful of times per run).
// TestFeatureTableWellFormed checks what building them at run time used
// to: unique names, known names in the dependency tables, and the order.

// features is the feature table in /proc/cpuinfo order: Linux's word
// order (leaf 1 EDX before ECX, ...), then bit. It is an array so that
// featureSet can be sized from it; range over features[:] (ranging over
// the array itself with a value variable copies it).
var features = [...]Feature{
	// CPUID 1 EDX
	{Name: "fpu", Leaf: 1, Reg: EDX, Bit: 0},
	{Name: "vme", Leaf: 1, Reg: EDX, Bit: 1},
	{Name: "de", Leaf: 1, Reg: EDX, Bit: 2},
	{Name: "pse", Leaf: 1, Reg: EDX, Bit: 3},
	{Name: "tsc", Leaf: 1, Reg: EDX, Bit: 4},
	{Name: "msr", Leaf: 1, Reg: EDX, Bit: 5},
	{Name: "pae", Leaf: 1, Reg: EDX, Bit: 6},
	{Name: "mce", Leaf: 1, Reg: EDX, Bit: 7},
	{Name: "cx8", Leaf: 1, Reg: EDX, Bit: 8},
	{Name: "apic", Leaf: 1, Reg: EDX, Bit: 9},
	{Name: "sep", Leaf: 1, Reg: EDX, Bit: 11},
	{Name: "mtrr", Leaf: 1, Reg: EDX, Bit: 12},
	{Name: "pge", Leaf: 1, Reg: EDX, Bit: 13},
	{Name: "mca", Leaf: 1, Reg: EDX, Bit: 14},
	{Name: "cmov", Leaf: 1, Reg: EDX, Bit: 15},
	{Name: "pat", Leaf: 1, Reg: EDX, Bit: 16},
	{Name: "pse36", Leaf: 1, Reg: EDX, Bit: 17},
	{Name: "pn", Leaf: 1, Reg: EDX, Bit: 18},
	{Name: "clflush", Leaf: 1, Reg: EDX, Bit: 19},
	{Name: "dts", Leaf: 1, Reg: EDX, Bit: 21},
	{Name: "acpi", Leaf: 1, Reg: EDX, Bit: 22},
	{Name: "mmx", Leaf: 1, Reg: EDX, Bit: 23},
	{Name: "fxsr", Leaf: 1, Reg: EDX, Bit: 24},
	{Name: "sse", Leaf: 1, Reg: EDX, Bit: 25},
	{Name: "sse2", Leaf: 1, Reg: EDX, Bit: 26},
	{Name: "ss", Leaf: 1, Reg: EDX, Bit: 27},
	{Name: "ht", Leaf: 1, Reg: EDX, Bit: 28},
	{Name: "tm", Leaf: 1, Reg: EDX, Bit: 29},
	{Name: "ia64", Leaf: 1, Reg: EDX, Bit: 30},
	{Name: "pbe", Leaf: 1, Reg: EDX, Bit: 31},

	// CPUID 1 ECX
	{Name: "pni", Leaf: 1, Reg: ECX, Bit: 0},
	{Name: "pclmulqdq", Leaf: 1, Reg: ECX, Bit: 1},
	{Name: "dtes64", Leaf: 1, Reg: ECX, Bit: 2},
	{Name: "monitor", Leaf: 1, Reg: ECX, Bit: 3},
	{Name: "ds_cpl", Leaf: 1, Reg: ECX, Bit: 4},
	{Name: "vmx", Leaf: 1, Reg: ECX, Bit: 5},
	{Name: "smx", Leaf: 1, Reg: ECX, Bit: 6},
	{Name: "est", Leaf: 1, Reg: ECX, Bit: 7},
	{Name: "tm2", Leaf: 1, Reg: ECX, Bit: 8},
	{Name: "ssse3", Leaf: 1, Reg: ECX, Bit: 9},
	{Name: "cid", Leaf: 1, Reg: ECX, Bit: 10},
	{Name: "sdbg", Leaf: 1, Reg: ECX, Bit: 11},
	{Name: "fma", Leaf: 1, Reg: ECX, Bit: 12},
	{Name: "cx16", Leaf: 1, Reg: ECX, Bit: 13},
	{Name: "xtpr", Leaf: 1, Reg: ECX, Bit: 14},
	{Name: "pdcm", Leaf: 1, Reg: ECX, Bit: 15},
	{Name: "pcid", Leaf: 1, Reg: ECX, Bit: 17},
	{Name: "dca", Leaf: 1, Reg: ECX, Bit: 18},
	{Name: "sse4_1", Leaf: 1, Reg: ECX, Bit: 19},
	{Name: "sse4_2", Leaf: 1, Reg: ECX, Bit: 20},
	{Name: "x2apic", Leaf: 1, Reg: ECX, Bit: 21},
	{Name: "movbe", Leaf: 1, Reg: ECX, Bit: 22},
	{Name: "popcnt", Leaf: 1, Reg: ECX, Bit: 23},
	{Name: "tsc_deadline_timer", Leaf: 1, Reg: ECX, Bit: 24},
	{Name: "aes", Leaf: 1, Reg: ECX, Bit: 25},
	{Name: "xsave", Leaf: 1, Reg: ECX, Bit: 26},
	{Name: "osxsave", Leaf: 1, Reg: ECX, Bit: 27, Dynamic: true},
	{Name: "avx", Leaf: 1, Reg: ECX, Bit: 28},
	{Name: "f16c", Leaf: 1, Reg: ECX, Bit: 29},
	{Name: "rdrand", Leaf: 1, Reg: ECX, Bit: 30},
	{Name: "hypervisor", Leaf: 1, Reg: ECX, Bit: 31, VMM: true},

	// CPUID 7 EBX
	{Name: "fsgsbase", Leaf: 7, Reg: EBX, Bit: 0},
	{Name: "tsc_adjust", Leaf: 7, Reg: EBX, Bit: 1},
	{Name: "sgx", Leaf: 7, Reg: EBX, Bit: 2},
	{Name: "bmi1", Leaf: 7, Reg: EBX, Bit: 3},
	{Name: "hle", Leaf: 7, Reg: EBX, Bit: 4},
	{Name: "avx2", Leaf: 7, Reg: EBX, Bit: 5},
	{Name: "fdp_excptn_only", Leaf: 7, Reg: EBX, Bit: 6},
	{Name: "smep", Leaf: 7, Reg: EBX, Bit: 7},
	{Name: "bmi2", Leaf: 7, Reg: EBX, Bit: 8},
	{Name: "erms", Leaf: 7, Reg: EBX, Bit: 9},
	{Name: "invpcid", Leaf: 7, Reg: EBX, Bit: 10},
	{Name: "rtm", Leaf: 7, Reg: EBX, Bit: 11},
	{Name: "cqm", Leaf: 7, Reg: EBX, Bit: 12},
	{Name: "zero_fcs_fds", Leaf: 7, Reg: EBX, Bit: 13},
	{Name: "mpx", Leaf: 7, Reg: EBX, Bit: 14},
	{Name: "rdt_a", Leaf: 7, Reg: EBX, Bit: 15},
	{Name: "avx512f", Leaf: 7, Reg: EBX, Bit: 16},
	{Name: "avx512dq", Leaf: 7, Reg: EBX, Bit: 17},
	{Name: "rdseed", Leaf: 7, Reg: EBX, Bit: 18},
	{Name: "adx", Leaf: 7, Reg: EBX, Bit: 19},
	{Name: "smap", Leaf: 7, Reg: EBX, Bit: 20},
	{Name: "avx512ifma", Leaf: 7, Reg: EBX, Bit: 21},
	{Name: "clflushopt", Leaf: 7, Reg: EBX, Bit: 23},
	{Name: "clwb", Leaf: 7, Reg: EBX, Bit: 24},
	{Name: "intel_pt", Leaf: 7, Reg: EBX, Bit: 25},
	{Name: "avx512pf", Leaf: 7, Reg: EBX, Bit: 26},
	{Name: "avx512er", Leaf: 7, Reg: EBX, Bit: 27},
	{Name: "avx512cd", Leaf: 7, Reg: EBX, Bit: 28},
	{Name: "sha_ni", Leaf: 7, Reg: EBX, Bit: 29},
	{Name: "avx512bw", Leaf: 7, Reg: EBX, Bit: 30},
	{Name: "avx512vl", Leaf: 7, Reg: EBX, Bit: 31},

	// CPUID 7 ECX
	{Name: "prefetchwt1", Leaf: 7, Reg: ECX, Bit: 0},
	{Name: "avx512vbmi", Leaf: 7, Reg: ECX, Bit: 1},
	{Name: "umip", Leaf: 7, Reg: ECX, Bit: 2},
	{Name: "pku", Leaf: 7, Reg: ECX, Bit: 3},
	{Name: "ospke", Leaf: 7, Reg: ECX, Bit: 4, Dynamic: true},
	{Name: "waitpkg", Leaf: 7, Reg: ECX, Bit: 5},
	{Name: "avx512_vbmi2", Leaf: 7, Reg: ECX, Bit: 6},
	{Name: "shstk", Leaf: 7, Reg: ECX, Bit: 7},
	{Name: "gfni", Leaf: 7, Reg: ECX, Bit: 8},
	{Name: "vaes", Leaf: 7, Reg: ECX, Bit: 9},
	{Name: "vpclmulqdq", Leaf: 7, Reg: ECX, Bit: 10},
	{Name: "avx512_vnni", Leaf: 7, Reg: ECX, Bit: 11},
	{Name: "avx512_bitalg", Leaf: 7, Reg: ECX, Bit: 12},
	{Name: "tme", Leaf: 7, Reg: ECX, Bit: 13},
	{Name: "avx512_vpopcntdq", Leaf: 7, Reg: ECX, Bit: 14},
	{Name: "la57", Leaf: 7, Reg: ECX, Bit: 16},
	{Name: "rdpid", Leaf: 7, Reg: ECX, Bit: 22},
	{Name: "bus_lock_detect", Leaf: 7, Reg: ECX, Bit: 24},
	{Name: "cldemote", Leaf: 7, Reg: ECX, Bit: 25},
	{Name: "movdiri", Leaf: 7, Reg: ECX, Bit: 27},
	{Name: "movdir64b", Leaf: 7, Reg: ECX, Bit: 28},
	{Name: "enqcmd", Leaf: 7, Reg: ECX, Bit: 29},
	{Name: "sgx_lc", Leaf: 7, Reg: ECX, Bit: 30},
	{Name: "pks", Leaf: 7, Reg: ECX, Bit: 31},

	// CPUID 7 EDX
	{Name: "avx512_4vnniw", Leaf: 7, Reg: EDX, Bit: 2},
	{Name: "avx512_4fmaps", Leaf: 7, Reg: EDX, Bit: 3},
	{Name: "fsrm", Leaf: 7, Reg: EDX, Bit: 4},
	{Name: "avx512_vp2intersect", Leaf: 7, Reg: EDX, Bit: 8},
	{Name: "srbds_ctrl", Leaf: 7, Reg: EDX, Bit: 9},
	{Name: "md_clear", Leaf: 7, Reg: EDX, Bit: 10},
	{Name: "serialize", Leaf: 7, Reg: EDX, Bit: 14},
	{Name: "tsxldtrk", Leaf: 7, Reg: EDX, Bit: 16},
	{Name: "pconfig", Leaf: 7, Reg: EDX, Bit: 18},
	{Name: "arch_lbr", Leaf: 7, Reg: EDX, Bit: 19},
	{Name: "ibt", Leaf: 7, Reg: EDX, Bit: 20},
	{Name: "amx_bf16", Leaf: 7, Reg: EDX, Bit: 22},
	{Name: "avx512_fp16", Leaf: 7, Reg: EDX, Bit: 23},
	{Name: "amx_tile", Leaf: 7, Reg: EDX, Bit: 24},
	{Name: "amx_int8", Leaf: 7, Reg: EDX, Bit: 25},
	{Name: "spec_ctrl", Leaf: 7, Reg: EDX, Bit: 26},
	{Name: "intel_stibp", Leaf: 7, Reg: EDX, Bit: 27},
	{Name: "flush_l1d", Leaf: 7, Reg: EDX, Bit: 28},
	{Name: "arch_capabilities", Leaf: 7, Reg: EDX, Bit: 29},
	{Name: "core_capabilities", Leaf: 7, Reg: EDX, Bit: 30},
	{Name: "spec_ctrl_ssbd", Leaf: 7, Reg: EDX, Bit: 31},

	// CPUID 7.1 EAX
	{Name: "avx_vnni", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 4},
	{Name: "avx512_bf16", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 5},
	{Name: "cmpccxadd", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 7},
	{Name: "fzrm", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 10},
	{Name: "fsrs", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 11},
	{Name: "fsrc", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 12},
	{Name: "amx_fp16", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 21},
	{Name: "avx_ifma", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 23},
	{Name: "lam", Leaf: 7, Subleaf: 1, Reg: EAX, Bit: 26},

	// CPUID 0xd.1 EAX
	{Name: "xsaveopt", Leaf: 0xd, Subleaf: 1, Reg: EAX, Bit: 0},
	{Name: "xsavec", Leaf: 0xd, Subleaf: 1, Reg: EAX, Bit: 1},
	{Name: "xgetbv1", Leaf: 0xd, Subleaf: 1, Reg: EAX, Bit: 2},
	{Name: "xsaves", Leaf: 0xd, Subleaf: 1, Reg: EAX, Bit: 3},
	{Name: "xfd", Leaf: 0xd, Subleaf: 1, Reg: EAX, Bit: 4},

	// CPUID 0x80000001 ECX
	{Name: "lahf_lm", Leaf: 0x80000001, Reg: ECX, Bit: 0},
	{Name: "cmp_legacy", Leaf: 0x80000001, Reg: ECX, Bit: 1},
	{Name: "svm", Leaf: 0x80000001, Reg: ECX, Bit: 2},
	{Name: "extapic", Leaf: 0x80000001, Reg: ECX, Bit: 3},
	{Name: "cr8_legacy", Leaf: 0x80000001, Reg: ECX, Bit: 4},
	{Name: "abm", Leaf: 0x80000001, Reg: ECX, Bit: 5},
	{Name: "sse4a", Leaf: 0x80000001, Reg: ECX, Bit: 6},
	{Name: "misalignsse", Leaf: 0x80000001, Reg: ECX, Bit: 7},
	{Name: "3dnowprefetch", Leaf: 0x80000001, Reg: ECX, Bit: 8},
	{Name: "osvw", Leaf: 0x80000001, Reg: ECX, Bit: 9},
	{Name: "ibs", Leaf: 0x80000001, Reg: ECX, Bit: 10},
	{Name: "xop", Leaf: 0x80000001, Reg: ECX, Bit: 11},
	{Name: "skinit", Leaf: 0x80000001, Reg: ECX, Bit: 12},
	{Name: "wdt", Leaf: 0x80000001, Reg: ECX, Bit: 13},
	{Name: "lwp", Leaf: 0x80000001, Reg: ECX, Bit: 15},
	{Name: "fma4", Leaf: 0x80000001, Reg: ECX, Bit: 16},
	{Name: "tce", Leaf: 0x80000001, Reg: ECX, Bit: 17},
	{Name: "nodeid_msr", Leaf: 0x80000001, Reg: ECX, Bit: 19},
	{Name: "tbm", Leaf: 0x80000001, Reg: ECX, Bit: 21},
	{Name: "topoext", Leaf: 0x80000001, Reg: ECX, Bit: 22},
	{Name: "perfctr_core", Leaf: 0x80000001, Reg: ECX, Bit: 23},
	{Name: "perfctr_nb", Leaf: 0x80000001, Reg: ECX, Bit: 24},
	{Name: "bpext", Leaf: 0x80000001, Reg: ECX, Bit: 26},
	{Name: "ptsc", Leaf: 0x80000001, Reg: ECX, Bit: 27},
	{Name: "perfctr_llc", Leaf: 0x80000001, Reg: ECX, Bit: 28},
	{Name: "mwaitx", Leaf: 0x80000001, Reg: ECX, Bit: 29},

	// CPUID 0x80000001 EDX
	{Name: "syscall", Leaf: 0x80000001, Reg: EDX, Bit: 11},
	{Name: "mp", Leaf: 0x80000001, Reg: EDX, Bit: 19},
	{Name: "nx", Leaf: 0x80000001, Reg: EDX, Bit: 20},
	{Name: "mmxext", Leaf: 0x80000001, Reg: EDX, Bit: 22},
	{Name: "fxsr_opt", Leaf: 0x80000001, Reg: EDX, Bit: 25},
	{Name: "pdpe1gb", Leaf: 0x80000001, Reg: EDX, Bit: 26},
	{Name: "rdtscp", Leaf: 0x80000001, Reg: EDX, Bit: 27},
	{Name: "lm", Leaf: 0x80000001, Reg: EDX, Bit: 29},
	{Name: "3dnowext", Leaf: 0x80000001, Reg: EDX, Bit: 30},
	{Name: "3dnow", Leaf: 0x80000001, Reg: EDX, Bit: 31},

	// CPUID 0x80000007 EDX
	{Name: "invtsc", Leaf: 0x80000007, Reg: EDX, Bit: 8},

	// CPUID 0x80000008 EBX
	{Name: "clzero", Leaf: 0x80000008, Reg: EBX, Bit: 0},
	{Name: "irperf", Leaf: 0x80000008, Reg: EBX, Bit: 1},
	{Name: "xsaveerptr", Leaf: 0x80000008, Reg: EBX, Bit: 2},
	{Name: "wbnoinvd", Leaf: 0x80000008, Reg: EBX, Bit: 9},
	{Name: "amd_ibpb", Leaf: 0x80000008, Reg: EBX, Bit: 12},
	{Name: "amd_ibrs", Leaf: 0x80000008, Reg: EBX, Bit: 14},
	{Name: "amd_stibp", Leaf: 0x80000008, Reg: EBX, Bit: 15},
	{Name: "amd_ppin", Leaf: 0x80000008, Reg: EBX, Bit: 23},
	{Name: "amd_ssbd", Leaf: 0x80000008, Reg: EBX, Bit: 24},
	{Name: "virt_ssbd", Leaf: 0x80000008, Reg: EBX, Bit: 25},

	// CPUID 0x40000001 EAX (KVM only), named as QEMU names them.
	{Name: "kvmclock-legacy", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 0}, // MSRs 0x11/0x12
	{Name: "kvm-nopiodelay", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 1},
	{Name: "kvmclock", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 3}, // MSRs 0x4b564d00/01
	{Name: "kvm-asyncpf", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 4},
	{Name: "kvm-steal-time", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 5},
	{Name: "kvm-pv-eoi", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 6},
	{Name: "kvm-pv-unhalt", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 7},
	{Name: "kvm-pv-tlb-flush", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 9},
	{Name: "kvm-asyncpf-vmexit", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 10},
	{Name: "kvm-pv-ipi", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 11},
	{Name: "kvm-poll-control", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 12},
	{Name: "kvm-pv-sched-yield", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 13},
	{Name: "kvm-asyncpf-int", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 14},
	{Name: "kvmclock-stable-bit", Leaf: KVMLeafFeatures, Reg: EAX, Bit: 24},
}

// featureSet is a set of features, by index in features.
type featureSet [(len(features) + 63) / 64]uint64

func (s *featureSet) add(i int)      { s[i/64] |= 1 << (uint(i) % 64) }
func (s *featureSet) has(i int) bool { return s[i/64]>>(uint(i)%64)&1 != 0 }
func (s *featureSet) empty() bool    { return *s == featureSet{} }

// hasName reports whether the named feature is in s.
func (s *featureSet) hasName(name string) bool {
	i := index(name)
	return i >= 0 && s.has(i)
}

// A requirement says that feature needs another one.
type requirement struct{ feature, needs string }

// requires lists what features need (after Linux's
// arch/x86/kernel/cpu/cpuid-deps.c): removing one removes its dependents.
var requires = []requirement{
	{"fxsr", "fpu"}, {"cmov", "fxsr"}, {"mmx", "fxsr"}, {"mmxext", "mmx"}, {"fxsr_opt", "fxsr"},
	{"xsave", "fxsr"}, {"sse", "fxsr"}, {"sse2", "sse"}, {"pni", "sse2"}, {"ssse3", "sse2"},
	{"sse4_1", "sse2"}, {"sse4_2", "sse2"}, {"pclmulqdq", "sse2"}, {"f16c", "sse2"}, {"f16c", "avx"},
	{"aes", "sse2"}, {"sha_ni", "sse2"}, {"gfni", "sse2"}, {"sse4a", "sse2"},
	{"xsaveopt", "xsave"}, {"xsavec", "xsave"}, {"xsaves", "xsave"}, {"xgetbv1", "xsave"},
	{"xfd", "xsave"}, {"avx", "xsave"}, {"pku", "xsave"}, {"mpx", "xsave"},
	{"fma", "avx"}, {"vaes", "avx"}, {"vpclmulqdq", "avx"}, {"avx2", "avx"}, {"avx512f", "avx"},
	{"avx_vnni", "avx2"}, {"avx_ifma", "avx2"}, {"fma4", "avx"}, {"xop", "avx"},
	{"avx512ifma", "avx512f"}, {"avx512pf", "avx512f"}, {"avx512er", "avx512f"}, {"avx512cd", "avx512f"},
	{"avx512dq", "avx512f"}, {"avx512bw", "avx512f"}, {"avx512vl", "avx512f"}, {"avx512vbmi", "avx512f"},
	{"avx512_vbmi2", "avx512vl"}, {"avx512_vnni", "avx512vl"}, {"avx512_bitalg", "avx512vl"},
	{"avx512_vpopcntdq", "avx512f"}, {"avx512_4vnniw", "avx512f"}, {"avx512_4fmaps", "avx512f"},
	{"avx512_vp2intersect", "avx512vl"}, {"avx512_bf16", "avx512vl"}, {"avx512_fp16", "avx512bw"},
	{"amx_tile", "xfd"}, {"amx_bf16", "amx_tile"}, {"amx_int8", "amx_tile"}, {"amx_fp16", "amx_tile"},
	{"shstk", "xsaves"}, {"x2apic", "apic"}, {"tsc_deadline_timer", "apic"},
	{"lm", "pae"}, {"pdpe1gb", "lm"}, {"nx", "pae"},
	{"sep", "msr"}, {"rdtscp", "tsc"}, {"invtsc", "tsc"}, {"tsc_adjust", "tsc"},
	{"pse36", "pse"},
	// KVM's paravirtual features (what Linux's kvm.c needs before it uses one).
	{"kvmclock-legacy", "kvmclock"}, {"kvmclock-stable-bit", "kvmclock"},
	{"kvm-pv-tlb-flush", "kvm-steal-time"}, {"kvm-asyncpf-vmexit", "kvm-asyncpf"}, {"kvm-asyncpf-int", "kvm-asyncpf"},
}

// xsaveComponents are the XSAVE state components (XCR0 bits) a feature owns.
type xsaveComponents struct {
	feature    string
	components uint64
}

// xcr0Bits are the XSAVE state components features own: without the
// feature the component is not offered in CPUID leaf 0xD.
var xcr0Bits = []xsaveComponents{
	{"avx", 1 << 2},
	{"mpx", 1<<3 | 1<<4},
	{"avx512f", 1<<5 | 1<<6 | 1<<7},
	{"pku", 1 << 9},
	{"amx_tile", 1<<17 | 1<<18},
}

// index returns the position of the named feature in features, or -1.
func index(name string) int {
	for i := range features {
		if features[i].Name == name {
			return i
		}
	}
	return -1
}

// Features returns the feature table in /proc/cpuinfo order.
func Features() []Feature { return append([]Feature(nil), features[:]...) }

// Lookup returns the named feature.
func Lookup(name string) (Feature, bool) {
	if i := index(name); i >= 0 {
		return features[i], true
	}
	return Feature{}, false
}

// FeatureNames returns every known feature name, sorted.
func FeatureNames() []string {
	names := make([]string, 0, len(features))
	for _, f := range features[:] {
		names = append(names, f.Name)
	}
	slices.Sort(names)
	return names
}

// Has reports whether f is set in entries. KVM's paravirtual features
// count only in a table with KVM's signature.
func (f Feature) Has(entries []accel.CPUIDEntry) bool {
	if HypervisorLeaf(f.Leaf) && !IsKVM(entries) {
		return false
	}
	e := find(entries, f.Leaf, f.Subleaf)
	return e != nil && reg(e, f.Reg)>>f.Bit&1 != 0
}

// OffersShadowStacks reports whether entries offer CET shadow stacks
// (CPUID.(EAX=7,ECX=0):ECX.CET_SS): a vCPU with them has a current
// shadow-stack pointer, state that no MSR holds, for the accelerators to
// carry.
func OffersShadowStacks(entries []accel.CPUIDEntry) bool {
	return features[index("shstk")].Has(entries)
}

// Present lists the features set in entries, in /proc/cpuinfo order (for
// `govmm caps` and the default guest's report).
func Present(entries []accel.CPUIDEntry) []string {
	var out []string
	for _, f := range features[:] {
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
