package cpu

import (
	"fmt"
	"slices"
	"strings"

	"govmm/accel"
)

// Named CPU models exist so that a guest can be promised a CPU every host
// of a fleet can present: a VM booted on a model can be restored or
// migrated to any host whose accelerator offers the model's features. A
// model is data, never code: the features it keeps (by their
// /proc/cpuinfo names in the feature table), the XSAVE state components
// it offers, and, for vendor models, the vendor, family, model, stepping
// and brand string it presents.
//
// A model only ever masks the host: the guest gets the accelerator's
// supported CPUID with every feature-table bit the model does not name
// cleared (also the bits the table does not know, in the registers it
// covers). A model never adds a feature the host lacks; applying one on
// such a host fails naming the missing features.

// Definition is a named CPU model.
type Definition struct {
	Name        string
	Description string
	// Vendor is the CPUID vendor string the model requires ("" keeps
	// the host's). govmm does not present another vendor's CPU: the
	// accelerator runs the host's microarchitecture underneath.
	Vendor string
	// Family, Model and Stepping, when Family is not 0, replace the
	// host's in leaf 1 EAX (and AMD's 0x80000001 EAX).
	Family, Model, Stepping uint32
	// Brand replaces the brand string (leaves 0x80000002-4) when set.
	Brand string
	// Features lists what the model keeps (nil for host: everything).
	Features []string
	// XSave is the XCR0 mask the model offers (x87 and SSE always).
	XSave uint64
	// ArchCapabilities is the IA32_ARCH_CAPABILITIES value the model
	// presents when it keeps the arch_capabilities feature: the bits that
	// tell the guest which speculation bugs the CPU is not affected by,
	// so that it skips their costly mitigations.
	ArchCapabilities uint64
}

// IA32_ARCH_CAPABILITIES bits (Intel SDM vol. 4, table 2-2).
const (
	ArchCapRDCLNo           = 1 << 0 // not affected by Meltdown (rogue data cache load)
	ArchCapIBRSAll          = 1 << 1 // enhanced IBRS
	ArchCapSkipL1DFLVMEntry = 1 << 3 // no L1D flush needed on VM entry
	ArchCapMDSNo            = 1 << 5 // not affected by MDS
	ArchCapPSChangeMCNo     = 1 << 6 // no machine check on a page-size change
	ArchCapTAANo            = 1 << 8 // not affected by TSX async abort
)

// Vendor strings as CPUID leaf 0 spells them.
const (
	VendorIntel = "GenuineIntel"
	VendorAMD   = "AuthenticAMD"
)

// XSAVE state components (XCR0 bits).
const (
	xsX87    = 1 << 0
	xsSSE    = 1 << 1
	xsAVX    = 1 << 2
	xsOpmask = 1 << 5
	xsZMMHi  = 1 << 6
	xsHi16   = 1 << 7
	xsPKRU   = 1 << 9

	xsLegacy = xsX87 | xsSSE
	xsAVX512 = xsOpmask | xsZMMHi | xsHi16
)

// joined concatenates feature lists (the model tables build on each other).
// The vendor models' features beyond the psABI levels, which each vendor's
// newer model keeps.
var (
	// tsc_deadline_timer: QEMU's Intel models have it from SandyBridge
	// on, as the real CPUs do, and every accelerator govmm runs on offers
	// it (KVM emulates it wherever KVM_CAP_TSC_DEADLINE_TIMER is there,
	// which govmm requires; the Microsoft Hypervisor has it in its
	// processor-feature bank 1). QEMU's EPYC models leave it out, as
	// AMD's CPUs lack it, and so do govmm's, and the psABI levels, which
	// describe an instruction set, not a timer.
	skylakeServer = []string{
		"tsc_deadline_timer",
		"pclmulqdq", "aes", "rdrand", "pcid", "pdpe1gb", "rdtscp", "3dnowprefetch",
		"fsgsbase", "smep", "erms", "invpcid", "rdseed", "adx", "smap", "clflushopt", "clwb",
		"pku", "spec_ctrl", "xsaveopt", "xsavec", "xgetbv1",
	}
	epycRome = []string{
		"pclmulqdq", "aes", "rdrand", "pdpe1gb", "rdtscp", "mmxext", "fxsr_opt",
		"osvw", "3dnowprefetch", "misalignsse", "sse4a", "cr8_legacy", "topoext",
		"fsgsbase", "smep", "rdseed", "adx", "smap", "clflushopt", "clwb", "sha_ni",
		"umip", "rdpid",
		"xsaveopt", "xsavec", "xgetbv1", "xsaves",
		"clzero", "xsaveerptr", "wbnoinvd", "amd_ibpb", "amd_ibrs", "amd_stibp", "amd_ssbd",
	}
)

func joined(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// What every x86-64 operating system expects besides the psABI's ISA
// levels: the paging, interrupt and system-call machinery of any 64-bit
// CPU. x2apic is always offered (the accelerator emulates the LAPIC);
// the hypervisor bit is the VMM's and is not listed. VME is left out:
// virtual-8086 mode does not exist in long mode, and KVM does not list it
// on every host (not on the nested substrate's).
var systemBase = []string{
	"fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge",
	"mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "syscall", "nx", "lm",
	"x2apic",
}

// The x86-64 psABI microarchitecture levels (System V AMD64 psABI,
// section 3.1.1). The baseline (CMOV, CX8, FPU, FXSR, MMX, OSFXSR, SCE,
// SSE, SSE2) is in systemBase.
var (
	psABIv2 = []string{"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
	psABIv3 = []string{"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
	psABIv4 = []string{"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
)

// definitions are the models Parse accepts, host first.
var definitions = []Definition{
	{
		Name:        "host",
		Description: "the host CPU as the accelerator offers it (snapshots restore only on a host of the same kind)",
	},
	{
		Name:        "x86-64-v2",
		Description: "x86-64 psABI level 2 (Nehalem, Jaguar and later): SSE4.2, POPCNT, CMPXCHG16B; host vendor and family",
		Features:    joined(systemBase, psABIv2),
		XSave:       xsLegacy,
	},
	{
		Name:        "x86-64-v3",
		Description: "x86-64 psABI level 3 (Haswell, Zen and later): v2 + AVX2, BMI1/2, FMA, F16C, LZCNT, MOVBE, XSAVE",
		Features:    joined(systemBase, psABIv2, psABIv3),
		XSave:       xsLegacy | xsAVX,
	},
	{
		Name:        "x86-64-v4",
		Description: "x86-64 psABI level 4 (Skylake-SP, Zen 4 and later): v3 + AVX-512 F/BW/CD/DQ/VL",
		Features:    joined(systemBase, psABIv2, psABIv3, psABIv4),
		XSave:       xsLegacy | xsAVX | xsAVX512,
	},
	{
		// After QEMU's Skylake-Server with IBRS and without TSX and
		// MPX (its -v3 feature set, plus CLFLUSHOPT as -v4's hosts have).
		Name:        "Skylake-Server",
		Description: "Intel Xeon Scalable 1st gen (Skylake-SP): AVX-512 F/CD/BW/DQ/VL, PKU, no TSX, no MPX",
		Vendor:      VendorIntel,
		Family:      6, Model: 85, Stepping: 4,
		Brand:    "Intel Xeon Processor (Skylake)",
		Features: joined(systemBase, psABIv2, psABIv3, psABIv4, skylakeServer),
		XSave:    xsLegacy | xsAVX | xsAVX512 | xsPKRU,
	},
	{
		// Skylake-Server's set plus what Ice Lake-SP added (the AVX-512
		// extensions, GFNI, VAES, VPCLMULQDQ, 5-level paging), without
		// TSX, MPX, processor trace and PCONFIG, as QEMU's later
		// Icelake-Server versions have it. The signature is the real
		// Ice Lake-SP's (QEMU's model says 134).
		Name:        "Icelake-Server",
		Description: "Intel Xeon Scalable 3rd gen (Ice Lake-SP): Skylake-Server + AVX-512 VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, GFNI, VAES, LA57",
		Vendor:      VendorIntel,
		Family:      6, Model: 106, Stepping: 6,
		Brand: "Intel Xeon Processor (Icelake)",
		Features: joined(systemBase, psABIv2, psABIv3, psABIv4, skylakeServer, []string{
			"spec_ctrl_ssbd", "avx512vbmi", "umip", "avx512_vbmi2", "gfni", "vaes", "vpclmulqdq", "avx512_vnni",
			"avx512_bitalg", "avx512_vpopcntdq", "la57", "wbnoinvd", "arch_capabilities",
		}),
		XSave: xsLegacy | xsAVX | xsAVX512 | xsPKRU,
		// Ice Lake-SP is not affected by Meltdown, MDS or TAA and has
		// enhanced IBRS, as QEMU's Icelake-Server-v3 and later say.
		ArchCapabilities: ArchCapRDCLNo | ArchCapIBRSAll | ArchCapSkipL1DFLVMEntry | ArchCapMDSNo | ArchCapPSChangeMCNo | ArchCapTAANo,
	},
	{
		// After QEMU's EPYC-Rome with IBRS and SSBD (its -v2), without
		// SVM and MONITOR.
		Name:        "EPYC-Rome",
		Description: "AMD EPYC 2nd gen (Zen 2, Rome): AVX2, SHA, CLZERO, CLWB, RDPID, no PKU, no AVX-512",
		Vendor:      VendorAMD,
		Family:      23, Model: 49, Stepping: 0,
		Brand:    "AMD EPYC-Rome Processor",
		Features: joined(systemBase, psABIv2, psABIv3, epycRome),
		XSave:    xsLegacy | xsAVX,
	},
	{
		// After QEMU's EPYC-Milan (without SVM and MONITOR, which QEMU
		// also turns off under KVM).
		Name:        "EPYC-Milan",
		Description: "AMD EPYC 3rd gen (Zen 3, Milan): AVX2, SHA, CLZERO, PKU, no AVX-512",
		Vendor:      VendorAMD,
		Family:      25, Model: 1, Stepping: 1,
		Brand:    "AMD EPYC-Milan Processor",
		Features: joined(systemBase, psABIv2, psABIv3, epycRome, []string{"pcid", "erms", "invpcid", "pku", "fsrm"}),
		XSave:    xsLegacy | xsAVX | xsPKRU,
	},
}

// Models lists the CPU model names Parse accepts, host first.
var Models = []string{"host", "x86-64-v2", "x86-64-v3", "x86-64-v4", "Skylake-Server", "Icelake-Server", "EPYC-Rome", "EPYC-Milan"}

// Definitions returns the named models, host first.
func Definitions() []Definition { return slices.Clone(definitions) }

// LookupModel returns the named model's definition.
func LookupModel(name string) (Definition, bool) {
	for _, d := range definitions {
		if d.Name == name {
			return d, true
		}
	}
	return Definition{}, false
}

// IsHost reports whether d is the host model (no masking).
func (d Definition) IsHost() bool { return d.Features == nil }

// Vendor returns the vendor string of a CPUID table ("" without leaf 0).
func Vendor(entries []accel.CPUIDEntry) string {
	e := find(entries, 0, 0)
	if e == nil {
		return ""
	}
	var b [12]byte
	for i, r := range []uint32{e.EBX, e.EDX, e.ECX} {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(r), byte(r>>8), byte(r>>16), byte(r>>24)
	}
	return strings.TrimRight(string(b[:]), "\x00")
}

// Unavailable says why d cannot run on a host: its vendor differs from
// vendor (the host's CPUID vendor string, "" if unknown), or has lacks
// some of its features (listed in /proc/cpuinfo order). It returns ""
// when the model can run.
func (d Definition) Unavailable(vendor string, has func(name string) bool) string {
	var why []string
	if d.Vendor != "" && vendor != "" && d.Vendor != vendor {
		why = append(why, fmt.Sprintf("needs a %s host, this one is %s", d.Vendor, vendor))
	}
	if missing := d.missing(nil, has); len(missing) > 0 {
		why = append(why, "missing "+strings.Join(missing, " "))
	}
	return strings.Join(why, "; ")
}

// missing lists the features of d, less those in removed, that has
// lacks, in feature-table order.
func (d Definition) missing(removed *featureSet, has func(name string) bool) []string {
	var out []string
	for i := range features {
		f := &features[i]
		if !slices.Contains(d.Features, f.Name) || removed != nil && removed.has(i) {
			continue
		}
		if !f.VMM && !has(f.Name) {
			out = append(out, f.Name)
		}
	}
	return out
}

// maskable reports whether a table feature is a CPU feature a named model
// decides: KVM's paravirtual leaves are the accelerator's interface, the
// hypervisor bit is the VMM's and dynamic bits are the guest's.
func maskable(f *Feature) bool { return !HypervisorLeaf(f.Leaf) && !f.VMM && !f.Dynamic }

// applyDefinition narrows out (the host's table, already filtered by the
// generic rules) to the named model d: it clears the bits the feature
// table covers and d does not keep, clears the leaves that only describe
// removed features, and presents d's identity.
func applyDefinition(out []accel.CPUIDEntry, d Definition, removed *featureSet) {
	// Per register the feature table covers, the bits the model keeps.
	type word struct {
		leaf, sub uint32
		reg       Reg
	}
	keep := map[word]uint32{}
	for i := range features {
		f := &features[i]
		if HypervisorLeaf(f.Leaf) {
			continue
		}
		w := word{f.Leaf, f.Subleaf, f.Reg}
		if _, ok := keep[w]; !ok {
			keep[w] = 0
		}
		if !maskable(f) || !removed.has(i) {
			keep[w] |= 1 << f.Bit
		}
	}
	for w, mask := range keep {
		if e := find(out, w.leaf, w.sub); e != nil {
			*regPtr(e, w.reg) &= mask
		}
	}
	for i := range out {
		e := &out[i]
		switch {
		case e.Function == 1 && e.Flags&accel.CPUIDFlagSignificantIndex == 0:
			// HTT (ForVCPU's) stays; nothing else beyond the table.
		case e.Function == 7 && e.Index == 1:
			e.EBX, e.ECX, e.EDX = 0, 0, 0 // no table features there
		case e.Function == 7 && e.Index >= 2:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0 // mitigation bits no model names
		}
	}
	// AMD CPUs mirror leaf 1 EDX's legacy bits in 0x80000001 EDX (FPU to
	// PSE36, MMX, FXSR), which the table does not name: copy them from
	// the masked leaf 1, as the hardware would show them.
	if Vendor(out) == VendorAMD {
		if e1, e8 := find(out, 1, 0), find(out, 0x80000001, 0); e1 != nil && e8 != nil {
			const amdAliases = 0x0183f3ff
			e8.EDX |= e1.EDX & amdAliases
		}
	}
	if d.Family != 0 {
		sig := fms(d.Family, d.Model, d.Stepping)
		if e := find(out, 1, 0); e != nil {
			e.EAX = sig
		}
		if e := find(out, 0x80000001, 0); e != nil && d.Vendor == VendorAMD {
			e.EAX = sig
		}
	}
	if d.Brand != "" {
		setBrand(out, d.Brand)
	}
}

// clearFeatureLeaves empties the leaves that describe nothing but a
// removed feature (SGX, processor trace, resource monitoring and
// allocation, AMX tiles), so that a guest does not find their parameters
// without the feature.
func clearFeatureLeaves(out []accel.CPUIDEntry, removed *featureSet) {
	owner := map[uint32]string{0xf: "cqm", 0x10: "rdt_a", 0x12: "sgx", 0x14: "intel_pt", 0x1d: "amx_tile", 0x1e: "amx_tile"}
	for i := range out {
		e := &out[i]
		if f, ok := owner[e.Function]; ok && removed.hasName(f) {
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		}
	}
}

// fms encodes family, model and stepping as CPUID leaf 1 EAX does.
func fms(family, model, stepping uint32) uint32 {
	v := stepping&0xf | (model&0xf)<<4
	if family > 0xf {
		v |= 0xf<<8 | (family-0xf)&0xff<<20
	} else {
		v |= family << 8
	}
	if family == 6 || family >= 0xf {
		v |= (model >> 4 & 0xf) << 16
	}
	return v
}

// setBrand writes the brand string into leaves 0x80000002-4 where the
// table has them (48 bytes, NUL-padded).
func setBrand(out []accel.CPUIDEntry, brand string) {
	var b [48]byte
	copy(b[:47], brand)
	word := func(o int) uint32 {
		return uint32(b[o]) | uint32(b[o+1])<<8 | uint32(b[o+2])<<16 | uint32(b[o+3])<<24
	}
	for i := uint32(0); i < 3; i++ {
		if e := find(out, 0x80000002+i, 0); e != nil {
			o := int(i) * 16
			e.EAX, e.EBX, e.ECX, e.EDX = word(o), word(o+4), word(o+8), word(o+12)
		}
	}
}

// MissingOn lists the CPU features set in saved (a VM's CPUID table) that
// supported (a destination accelerator's) lacks, in /proc/cpuinfo order,
// and the XSAVE state components saved offers that supported does not.
// KVM's paravirtual leaves, the hypervisor bit and the dynamic bits are
// not compared: the first are checked by the MSRs they carry, the others
// are the VMM's and the guest's. Neither is HTT ("ht"), which describes
// the VM's topology (ForVCPU sets it), not something a host offers.
func MissingOn(saved, supported []accel.CPUIDEntry) []string {
	var out []string
	for i := range features {
		f := &features[i]
		if maskable(f) && f.Name != "ht" && f.Has(saved) && !f.Has(supported) {
			out = append(out, f.Name)
		}
	}
	if x := xcr0(saved) &^ xcr0(supported) &^ xsLegacy; x != 0 && find(supported, 0xd, 0) != nil {
		out = append(out, fmt.Sprintf("XSAVE components %#x", x))
	}
	return out
}

// xcr0 is the XCR0 mask a table offers in leaf 0xD.0.
func xcr0(entries []accel.CPUIDEntry) uint64 {
	e := find(entries, 0xd, 0)
	if e == nil {
		return 0
	}
	return uint64(e.EDX)<<32 | uint64(e.EAX)
}

// Hide clears the named features (and what depends on them) from a
// supported CPUID table: a test's stand-in for a host that lacks them.
func Hide(entries []accel.CPUIDEntry, names []string) ([]accel.CPUIDEntry, error) {
	var removed featureSet
	for _, n := range names {
		if index(n) < 0 {
			return nil, fmt.Errorf("hide CPU feature %q: not in the feature table", n)
		}
		removed.addClosure(n)
	}
	out := slices.Clone(entries)
	for i := range features {
		f := &features[i]
		if e := find(out, f.Leaf, f.Subleaf); e != nil && removed.has(i) {
			*regPtr(e, f.Reg) &^= 1 << f.Bit
		}
	}
	fixXSaveLeaf(out, &removed, 0)
	return out, nil
}

// unmet lists what f needs (directly) that removed holds.
func unmet(f string, removed *featureSet) []string {
	var out []string
	for _, r := range requires {
		if r.feature == f && removed.hasName(r.needs) {
			out = append(out, r.needs)
		}
	}
	if len(out) == 0 {
		out = []string{"a feature"}
	}
	return out
}
