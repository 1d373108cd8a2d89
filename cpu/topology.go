package cpu

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"govmm/accel"
)

// ParseTopology reads --topology: "sockets=S,cores=C,threads=T", each key
// optional (1 when left out), cores per socket and threads per core.
func ParseTopology(s string) (accel.Topology, error) {
	t := accel.Topology{Sockets: 1, Cores: 1, Threads: 1}
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(f, "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 1 || n > 255 {
			return accel.Topology{}, fmt.Errorf("topology %q: want sockets=S,cores=C,threads=T with counts from 1 to 255, not %q", s, f)
		}
		if seen[k] {
			return accel.Topology{}, fmt.Errorf("topology %q: %s given twice", s, k)
		}
		seen[k] = true
		switch k {
		case "sockets":
			t.Sockets = n
		case "cores":
			t.Cores = n
		case "threads":
			t.Threads = n
		default:
			return accel.Topology{}, fmt.Errorf("topology %q: unknown key %q (sockets, cores, threads)", s, k)
		}
	}
	return t, nil
}

// FormatTopology renders t as ParseTopology reads it.
func FormatTopology(t accel.Topology) string {
	return fmt.Sprintf("sockets=%d,cores=%d,threads=%d", t.Sockets, t.Cores, t.Threads)
}

// ResolveTopology checks t against a VM of ncpus vCPUs and returns it
// complete: the zero topology is one socket of ncpus single-threaded
// cores. The counts must multiply to ncpus, and the APIC IDs the topology
// implies (package, core and thread fields, each as wide as its count
// needs) must be 0 to ncpus-1, because govmm gives vCPU i APIC ID i: so
// threads per core must be a power of two, and with more than one socket
// so must cores per socket. Real machines have these shapes; others are
// refused by name.
func ResolveTopology(t accel.Topology, ncpus int) (accel.Topology, error) {
	if t.IsZero() {
		return accel.Topology{Sockets: 1, Cores: max(ncpus, 1), Threads: 1}, nil
	}
	if t.Sockets < 1 || t.Cores < 1 || t.Threads < 1 {
		return t, fmt.Errorf("topology %s: every count must be at least 1", FormatTopology(t))
	}
	if t.Sockets*t.Cores*t.Threads != ncpus {
		return t, fmt.Errorf("topology %s makes %d vCPUs, but --cpus is %d", FormatTopology(t), t.Sockets*t.Cores*t.Threads, ncpus)
	}
	if t.Threads&(t.Threads-1) != 0 {
		return t, fmt.Errorf("topology %s: threads per core must be a power of two (APIC IDs would have gaps, and vCPU i has APIC ID i)", FormatTopology(t))
	}
	if t.Sockets > 1 && t.Cores&(t.Cores-1) != 0 {
		return t, fmt.Errorf("topology %s: with more than one socket, cores per socket must be a power of two (APIC IDs would have gaps, and vCPU i has APIC ID i)", FormatTopology(t))
	}
	return t, nil
}

// topoFields are the widths of the thread and core fields of an APIC ID.
func topoFields(t accel.Topology) (threadBits, coreBits uint32) {
	return uint32(bits.Len(uint(t.Threads - 1))), uint32(bits.Len(uint(t.Cores - 1)))
}

// CheckTopologyCPUID checks that a guest with CPUID table entries can be
// told about topology t. On AMD, Linux reads the threads of a core only
// from leaf 0x8000001E, and only when TOPOEXT (CPUID 0x80000001 ECX[22])
// is set: without it every thread passes for a core of its own, so more
// than one thread per core is refused (QEMU warns the same way).
func CheckTopologyCPUID(entries []accel.CPUIDEntry, t accel.Topology) error {
	if t.Threads <= 1 || Vendor(entries) != VendorAMD {
		return nil
	}
	if f, _ := Lookup("topoext"); f.Has(entries) {
		return nil
	}
	return fmt.Errorf("topology %s: %d threads per core on an AMD CPU need TOPOEXT (CPUID 0x80000001 ECX bit 22), which this CPU model or host lacks; without it the guest sees every thread as a core (use cores=, not threads=)", FormatTopology(t), t.Threads)
}
