// Package cpu turns a CPU model given on the command line (`--cpu
// host,-cx16,+x2apic`) into the CPUID table a guest sees, and specialises
// that table per vCPU (APIC IDs, topology). It exists so that the CPUID
// policy (which features exist, what depends on what, how topology is
// described) is written once, independent of the accelerator: a backend
// reports what it supports, this package decides what the guest gets.
package cpu

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"govmm/accel"
)

// KVMInterface names KVM's paravirtual interface as a whole (CPUID
// 0x40000000 and up, where they carry KVM's signature): "-kvm" hides it, as
// QEMU's kvm=off does, and keeps the hypervisor bit. A guest whose
// snapshots must restore on another accelerator is booted without it:
// kvmclock and the other KVM MSRs exist only on KVM.
const KVMInterface = "kvm"

// PMU names the performance monitoring unit as a whole: "-pmu" removes
// every CPUID trace of it (leaf 0xA, Intel's PDCM and leaf 0x23, AMD's
// perfctr_core/nb/llc and leaf 0x80000022), and NoPMU tells the VM to
// turn off a PMU the accelerator would virtualize regardless of CPUID
// (KVM on AMD: the four legacy counters have no CPUID bit). "+pmu" keeps
// what the accelerator offers; either is accepted whether or not it offers
// a PMU at all.
const PMU = "pmu"

// switches are the names Parse accepts besides features.
var switches = []string{KVMInterface, PMU}

// NoPMU reports whether the model removes the PMU. Named models other
// than host remove it unless "+pmu" keeps it, as QEMU's do: counters and
// their CPUID leaves differ from host to host.
func (m Model) NoPMU() bool {
	if slices.Contains(m.Remove, PMU) {
		return true
	}
	return m.Name != "host" && !slices.Contains(m.Add, PMU)
}

// Model is a parsed CPU model: a base model and features added to or
// removed from it.
type Model struct {
	Name   string
	Add    []string
	Remove []string
}

// String renders the model in the form Parse accepts.
func (m Model) String() string {
	var b strings.Builder
	b.WriteString(m.Name)
	for _, f := range m.Remove {
		b.WriteString(",-" + f)
	}
	for _, f := range m.Add {
		b.WriteString(",+" + f)
	}
	return b.String()
}

// Parse parses a model name (Models: "host", "x86-64-v3", ...) optionally
// followed by ",+feature" and ",-feature" items (Linux /proc/cpuinfo
// names).
func Parse(spec string) (Model, error) {
	parts := strings.Split(strings.TrimSpace(spec), ",")
	name := strings.TrimSpace(parts[0])
	if name == "" {
		return Model{}, fmt.Errorf("cpu model %q: empty model name (valid models: %s)", spec, strings.Join(Models, ", "))
	}
	known := false
	for _, m := range Models {
		known = known || m == name
	}
	if !known {
		return Model{}, fmt.Errorf("cpu model %q: unknown model %q (valid models: %s)", spec, name, strings.Join(Models, ", "))
	}
	m := Model{Name: name}
	seen := map[string]byte{}
	for _, p := range parts[1:] {
		p = strings.TrimSpace(p)
		if len(p) < 2 || (p[0] != '+' && p[0] != '-') {
			return Model{}, fmt.Errorf("cpu model %q: item %q must be +feature or -feature", spec, p)
		}
		op, f := p[0], strings.ToLower(p[1:])
		feat, ok := Lookup(f)
		if slices.Contains(switches, f) {
			feat, ok = Feature{Name: f}, true
		}
		if !ok {
			return Model{}, fmt.Errorf("cpu model %q: unknown feature %q (valid features: %s; and %s)", spec, f, strings.Join(FeatureNames(), " "), strings.Join(switches, ", "))
		}
		if feat.Dynamic {
			return Model{}, fmt.Errorf("cpu model %q: %s mirrors a guest control register bit and cannot be added or removed", spec, f)
		}
		if prev, dup := seen[f]; dup {
			if prev != op {
				return Model{}, fmt.Errorf("cpu model %q: feature %q both added and removed", spec, f)
			}
			continue
		}
		seen[f] = op
		if op == '+' {
			m.Add = append(m.Add, f)
		} else {
			m.Remove = append(m.Remove, f)
		}
	}
	return m, nil
}

// addClosure adds f and everything that transitively requires it: the
// features removing f removes.
func (s *featureSet) addClosure(f string) {
	i := index(f)
	if i < 0 || s.has(i) {
		return
	}
	s.add(i)
	for _, r := range requires {
		if r.needs == f {
			s.addClosure(r.feature)
		}
	}
}

// Apply derives the guest CPUID table from what the accelerator supports:
// removed features (and the features that depend on them) are cleared,
// XSAVE state components of removed features vanish from leaf 0xD, and
// added features must be ones the accelerator offers (KVM cannot emulate
// a feature the host lacks). Dynamic bits (OSXSAVE, OSPKE) are cleared:
// KVM sets them from CR4 at run time. The hypervisor bit is set: the guest
// is told it runs virtualized (and may look for the accelerator's
// paravirtual leaves at 0x40000000) unless the model removes it, which
// also removes those leaves. A named model other than host first checks
// that the host has its vendor and every feature it keeps (the error
// names the missing ones), then clears every feature it does not keep,
// presents its family/model/stepping and brand, and offers only its XSAVE
// components in leaf 0xD.
func (m Model) Apply(supported []accel.CPUIDEntry) ([]accel.CPUIDEntry, error) {
	def, ok := LookupModel(m.Name)
	if !ok {
		return nil, fmt.Errorf("cpu model %q: unknown model (valid models: %s)", m.Name, strings.Join(Models, ", "))
	}
	var removed featureSet
	noKVM := false
	for _, f := range m.Remove {
		if f == KVMInterface {
			noKVM = true
			continue
		}
		if f == PMU {
			continue
		}
		if index(f) < 0 {
			return nil, fmt.Errorf("cpu model %s: unknown feature %q", m, f)
		}
		removed.addClosure(f)
	}
	if !def.IsHost() {
		// The model's missing features, before the ones it does not
		// name join removed: a model never adds what the host lacks.
		if v := Vendor(supported); def.Vendor != "" && v != def.Vendor {
			return nil, fmt.Errorf("cpu model %s: the model needs a %s host, this one is %s (govmm presents only the host's vendor)", m, def.Vendor, v)
		}
		if missing := def.missing(&removed, func(n string) bool { f, _ := Lookup(n); return f.Has(supported) }); len(missing) > 0 {
			return nil, fmt.Errorf("cpu model %s: this host's accelerator lacks %s (run `govmm cpu-models` for the models this host can run)", m, strings.Join(missing, " "))
		}
		for i := range features {
			f := &features[i]
			if maskable(f) && !slices.Contains(def.Features, f.Name) && !slices.Contains(m.Add, f.Name) {
				removed.addClosure(f.Name)
			}
		}
	}
	for _, f := range m.Add {
		if f == PMU {
			continue
		}
		if f == KVMInterface {
			if !IsKVM(supported) {
				return nil, fmt.Errorf("cpu model %s: this accelerator has no KVM paravirtual interface", m)
			}
			continue
		}
		i := index(f)
		if i < 0 {
			return nil, fmt.Errorf("cpu model %s: unknown feature %q", m, f)
		}
		if removed.has(i) {
			return nil, fmt.Errorf("cpu model %s: +%s needs %s, which the model removes or does not have", m, f, strings.Join(unmet(f, &removed), ", "))
		}
		if feat := features[i]; !feat.VMM && !feat.Has(supported) {
			return nil, fmt.Errorf("cpu model %s: feature %q (CPUID %#x.%d %s bit %d) is not offered by the accelerator on this host and cannot be emulated",
				m, f, feat.Leaf, feat.Subleaf, feat.Reg, feat.Bit)
		}
	}
	out := append([]accel.CPUIDEntry(nil), supported...)
	if removed.hasName("hypervisor") || noKVM && IsKVM(out) {
		// A guest told it runs on bare metal sees no hypervisor leaves.
		out = slices.DeleteFunc(out, func(e accel.CPUIDEntry) bool { return HypervisorLeaf(e.Function) })
	}
	kvm := IsKVM(out)
	for i := range features {
		f := &features[i]
		if HypervisorLeaf(f.Leaf) && !kvm {
			continue // the same leaf means something else here
		}
		e := find(out, f.Leaf, f.Subleaf)
		switch {
		case e == nil:
		case f.Dynamic || removed.has(i):
			*regPtr(e, f.Reg) &^= 1 << f.Bit
		case f.VMM:
			*regPtr(e, f.Reg) |= 1 << f.Bit
		}
	}
	if !def.IsHost() {
		applyDefinition(out, def, &removed)
	}
	if m.NoPMU() {
		removePMU(out)
	}
	clearFeatureLeaves(out, &removed)
	// The plain host model removes nothing: leaf 0xD stays as offered.
	if !removed.empty() || !def.IsHost() {
		keep := def.XSave
		for _, x := range xcr0Bits {
			if keep != 0 && slices.Contains(m.Add, x.feature) {
				keep |= x.components // an added feature brings its state
			}
		}
		fixXSaveLeaf(out, &removed, keep)
	}
	return out, nil
}

// removePMU clears every CPUID description of a PMU.
func removePMU(entries []accel.CPUIDEntry) {
	for i := range entries {
		e := &entries[i]
		switch e.Function {
		case 0xa, 0x23, 0x80000022:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case 1:
			e.ECX &^= 1 << 15 // PDCM: IA32_PERF_CAPABILITIES
		case 0x80000001:
			e.ECX &^= 1<<23 | 1<<24 | 1<<28 // perfctr_core, perfctr_nb, perfctr_llc
		}
	}
}

// fixXSaveLeaf drops the XSAVE state components of removed features from
// leaf 0xD (all of it without xsave), and those outside keep when it is
// not 0 (a named model's components, user and supervisor), and recomputes
// the maximum area size.
func fixXSaveLeaf(entries []accel.CPUIDEntry, removed *featureSet, keep uint64) {
	var drop uint64
	if keep != 0 {
		drop = ^(keep | xsLegacy)
	}
	if removed.hasName("xsave") {
		drop = ^uint64(0)
	}
	for _, x := range xcr0Bits {
		if removed.hasName(x.feature) {
			drop |= x.components
		}
	}
	if drop == 0 {
		return
	}
	var d0 *accel.CPUIDEntry
	for i := range entries {
		e := &entries[i]
		if e.Function != 0xd {
			continue
		}
		switch {
		case e.Index == 0:
			d0 = e
		case e.Index == 1 && drop != ^uint64(0):
			// The supervisor components XSAVES may manage (IA32_XSS).
			e.ECX &^= uint32(drop)
			e.EDX &^= uint32(drop >> 32)
		case drop == ^uint64(0) || (e.Index >= 2 && e.Index < 64 && drop>>e.Index&1 != 0):
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		}
	}
	if d0 == nil {
		return
	}
	if drop == ^uint64(0) {
		d0.EAX, d0.EBX, d0.ECX, d0.EDX = 0, 0, 0, 0
		return
	}
	xcr0 := (uint64(d0.EDX)<<32 | uint64(d0.EAX)) &^ drop
	d0.EAX, d0.EDX = uint32(xcr0), uint32(xcr0>>32)
	max := uint32(512 + 64)
	for i := range entries {
		e := &entries[i]
		if e.Function == 0xd && e.Index >= 2 && e.Index < 64 && xcr0>>e.Index&1 != 0 && e.EAX != 0 {
			if end := e.EBX + e.EAX; end > max {
				max = end
			}
		}
	}
	d0.ECX = max
	if d0.EBX > max {
		d0.EBX = max
	}
}

// ForVCPU specialises a CPUID table for vCPU index of ncpus arranged as
// one socket of ncpus single-threaded cores; see ForVCPUTopology.
func ForVCPU(entries []accel.CPUIDEntry, index, ncpus int) []accel.CPUIDEntry {
	t, _ := ResolveTopology(accel.Topology{}, ncpus)
	return ForVCPUTopology(entries, index, t)
}

// ForVCPUTopology specialises a CPUID table for vCPU index of a VM
// arranged as topo (see ResolveTopology; a zero topo is one socket of
// index+1 cores): its APIC ID (leaf 1 EBX[31:24], leaf 0xB/0x1F EDX,
// AMD's 0x8000001E EAX) and the topology every leaf that describes one
// must agree on: leaf 1's addressable-ID count and HTT, leaf 4's and AMD
// 0x8000001D's cache-sharing and core counts, leaf 0xB/0x1F's SMT and core
// levels, AMD 0x80000008 ECX's core count and APIC ID width, and AMD
// 0x8000001E's core, thread and node IDs. The input is not modified.
func ForVCPUTopology(entries []accel.CPUIDEntry, index int, topo accel.Topology) []accel.CPUIDEntry {
	if topo.IsZero() {
		topo, _ = ResolveTopology(topo, index+1)
	}
	apicID := uint32(index)
	threadBits, coreBits := topoFields(topo)
	pkgBits := threadBits + coreBits // APIC ID bits below the package field
	maxIDs := uint32(1) << pkgBits   // addressable IDs in a package
	perCore := uint32(topo.Threads)
	perPkg := uint32(topo.Cores * topo.Threads)
	coreID := apicID >> threadBits & (1<<coreBits - 1)
	socket := apicID >> pkgBits
	maxBasic := uint32(0)
	amd := false
	for _, e := range entries {
		if e.Function == 0 {
			maxBasic = e.EAX
			amd = e.EBX == 0x68747541 || e.EBX == 0x6f677948 // "Auth"enticAMD, "Hygo"nGenuine
		}
	}
	// cacheSharing is the field (logical processors sharing it, minus
	// one) of a leaf 4 or 0x8000001D cache of the given level: the
	// threads of a core share L1 and L2, a package shares L3.
	cacheSharing := func(level uint32) uint32 {
		if level >= 3 {
			return maxIDs - 1
		}
		return 1<<threadBits - 1
	}
	out := make([]accel.CPUIDEntry, 0, len(entries)+4)
	for _, e := range entries {
		switch e.Function {
		case 0xb, 0x1f:
			continue // rebuilt below
		case 1:
			e.EBX = e.EBX&0x0000ffff | (maxIDs&0xff)<<16 | apicID<<24
			if maxIDs > 1 {
				e.EDX |= 1 << 28 // HTT: EBX[23:16] is valid
			} else {
				e.EDX &^= 1 << 28
			}
		case 4:
			if e.EAX&0x1f != 0 { // a cache is described
				e.EAX = e.EAX&0x3fff | cacheSharing(e.EAX>>5&7)<<14 | (1<<coreBits-1)<<26
			}
		case 0x80000008:
			if amd {
				e.ECX = e.ECX&^0xf0ff | pkgBits<<12 | (perPkg-1)&0xff
			}
		case 0x8000001d:
			if amd && e.EAX&0x1f != 0 {
				e.EAX = e.EAX&^(0xfff<<14) | cacheSharing(e.EAX>>5&7)<<14
			}
		case 0x8000001e:
			if amd {
				e.EAX = apicID
				e.EBX = e.EBX&^0xffff | (perCore-1)<<8 | coreID&0xff
				e.ECX = e.ECX&^0x7ff | socket&0xff // one node per socket
			}
		}
		out = append(out, e)
	}
	topoLeaf := func(leaf uint32) {
		sig := uint32(accel.CPUIDFlagSignificantIndex)
		out = append(out,
			accel.CPUIDEntry{Function: leaf, Index: 0, Flags: sig, EAX: threadBits, EBX: perCore, ECX: 1 << 8, EDX: apicID},
			accel.CPUIDEntry{Function: leaf, Index: 1, Flags: sig, EAX: pkgBits, EBX: perPkg, ECX: 2<<8 | 1, EDX: apicID},
			accel.CPUIDEntry{Function: leaf, Index: 2, Flags: sig, ECX: 2, EDX: apicID},
		)
	}
	if maxBasic >= 0xb {
		topoLeaf(0xb)
	}
	if maxBasic >= 0x1f {
		topoLeaf(0x1f)
	}
	slices.SortStableFunc(out, func(a, b accel.CPUIDEntry) int {
		return cmp.Or(cmp.Compare(a.Function, b.Function), cmp.Compare(a.Index, b.Index))
	})
	return out
}

// FeatureMSRs returns the feature MSRs the model presents: its
// definition's IA32_ARCH_CAPABILITIES when it keeps the arch_capabilities
// feature. Host, and a model without a value, get none: the accelerator's
// own value stands (KVM's reflects the host).
func (m Model) FeatureMSRs() []accel.MSR {
	d, ok := LookupModel(m.Name)
	if !ok || d.ArchCapabilities == 0 || slices.Contains(m.Remove, "arch_capabilities") {
		return nil
	}
	return []accel.MSR{{Index: accel.MSRArchCapabilities, Value: d.ArchCapabilities}}
}
