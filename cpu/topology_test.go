package cpu

import (
	"fmt"
	"strings"
	"testing"

	"govmm/accel"
)

func TestParseTopology(t *testing.T) {
	for in, want := range map[string]accel.Topology{
		"sockets=2,cores=4,threads=2": {Sockets: 2, Cores: 4, Threads: 2},
		"cores=3":                     {Sockets: 1, Cores: 3, Threads: 1},
		"threads=2,sockets=1":         {Sockets: 1, Cores: 1, Threads: 2},
	} {
		got, err := ParseTopology(in)
		if err != nil || got != want {
			t.Errorf("ParseTopology(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"":                    "want sockets=S",
		"sockets=0":           "from 1 to 255",
		"cores=x":             "from 1 to 255",
		"dies=2":              "unknown key",
		"cores=2,cores=2":     "given twice",
		"sockets=2;threads=2": "from 1 to 255",
	} {
		if _, err := ParseTopology(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTopology(%q): error %v, want one saying %q", in, err, want)
		}
	}
}

func TestResolveTopology(t *testing.T) {
	if got, err := ResolveTopology(accel.Topology{}, 6); err != nil || got != (accel.Topology{Sockets: 1, Cores: 6, Threads: 1}) {
		t.Errorf("zero topology for 6 vCPUs: %+v, %v", got, err)
	}
	for _, c := range []struct {
		t    accel.Topology
		n    int
		want string // "" for accepted
	}{
		{accel.Topology{Sockets: 1, Cores: 3, Threads: 2}, 6, ""},
		{accel.Topology{Sockets: 2, Cores: 2, Threads: 2}, 8, ""},
		{accel.Topology{Sockets: 3, Cores: 1, Threads: 1}, 3, ""},
		{accel.Topology{Sockets: 2, Cores: 2, Threads: 1}, 6, "makes 4 vCPUs, but --cpus is 6"},
		{accel.Topology{Sockets: 1, Cores: 1, Threads: 3}, 3, "threads per core must be a power of two"},
		{accel.Topology{Sockets: 2, Cores: 3, Threads: 1}, 6, "cores per socket must be a power of two"},
		{accel.Topology{Sockets: 1, Cores: 0, Threads: 1}, 0, "at least 1"},
	} {
		_, err := ResolveTopology(c.t, c.n)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("ResolveTopology(%+v, %d): %v, want %q", c.t, c.n, err, c.want)
		}
	}
}

// topoTable is a CPUID table with the leaves ForVCPUTopology rewrites: a
// host with L1d, L1i, L2 and L3 caches in leaf 4 (and AMD's 0x8000001D).
func topoTable(vendor string) []accel.CPUIDEntry {
	sig := uint32(accel.CPUIDFlagSignificantIndex)
	v := []byte(vendor)
	le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	cache := func(fn, i, level, typ uint32) accel.CPUIDEntry {
		// Host values in the sharing and core fields that must be replaced.
		return accel.CPUIDEntry{Function: fn, Index: i, Flags: sig, EAX: 63<<26 | 0xfff<<14 | level<<5 | typ, EBX: 0x3f, ECX: 0x3f}
	}
	return []accel.CPUIDEntry{
		{Function: 0, EAX: 0x1f, EBX: le(v[0:4]), EDX: le(v[4:8]), ECX: le(v[8:12])},
		{Function: 1, EAX: 0x800f12, EBX: 0xff<<24 | 0x80<<16 | 0x0800, ECX: 1 << 31, EDX: 1 << 28},
		cache(4, 0, 1, 1), cache(4, 1, 1, 2), cache(4, 2, 2, 3), cache(4, 3, 3, 3),
		{Function: 4, Index: 4, Flags: sig},
		{Function: 0xb, Index: 0, Flags: sig, EAX: 1, EBX: 2, ECX: 0x100},
		{Function: 0x80000000, EAX: 0x8000001e},
		{Function: 0x80000008, EAX: 0x3030, ECX: 0x700f},
		cache(0x8000001d, 0, 1, 1), cache(0x8000001d, 1, 2, 3), cache(0x8000001d, 2, 3, 3),
		{Function: 0x8000001e, EAX: 0xff, EBX: 0x1ff, ECX: 0x7ff},
	}
}

func leaf(t *testing.T, ids []accel.CPUIDEntry, fn, idx uint32) accel.CPUIDEntry {
	t.Helper()
	for _, e := range ids {
		if e.Function == fn && e.Index == idx {
			return e
		}
	}
	t.Fatalf("no leaf %#x.%d", fn, idx)
	return accel.CPUIDEntry{}
}

// TestForVCPUTopology decodes every vCPU's leaves the way a kernel does
// (Linux's leaf 0xB walk on Intel, 0x80000008/0x8000001E on AMD) and
// requires each vCPU to land on its own socket, core and thread, with the
// counts of the topology, and every cache-sharing field to agree.
func TestForVCPUTopology(t *testing.T) {
	for _, vendor := range []string{VendorIntel, VendorAMD} {
		for _, topo := range []accel.Topology{
			{Sockets: 1, Cores: 1, Threads: 1},
			{Sockets: 1, Cores: 4, Threads: 1},
			{Sockets: 1, Cores: 3, Threads: 2},
			{Sockets: 2, Cores: 2, Threads: 2},
			{Sockets: 4, Cores: 1, Threads: 1},
		} {
			t.Run(fmt.Sprintf("%s/%s", vendor, FormatTopology(topo)), func(t *testing.T) {
				n := topo.Sockets * topo.Cores * topo.Threads
				if _, err := ResolveTopology(topo, n); err != nil {
					t.Fatal(err)
				}
				seen := map[[3]uint32]bool{}
				for i := 0; i < n; i++ {
					ids := ForVCPUTopology(topoTable(vendor), i, topo)
					smt, core := leaf(t, ids, 0xb, 0), leaf(t, ids, 0xb, 1)
					apic := smt.EDX
					if apic != uint32(i) || core.EDX != apic || leaf(t, ids, 1, 0).EBX>>24 != apic {
						t.Fatalf("vCPU %d: APIC IDs leaf 0xB %d/%d, leaf 1 %d", i, smt.EDX, core.EDX, leaf(t, ids, 1, 0).EBX>>24)
					}
					if smt.EBX != uint32(topo.Threads) || core.EBX != uint32(topo.Cores*topo.Threads) ||
						smt.ECX>>8&0xff != 1 || core.ECX>>8&0xff != 2 || leaf(t, ids, 0xb, 2).ECX>>8&0xff != 0 {
						t.Fatalf("vCPU %d: leaf 0xB levels %+v %+v", i, smt, core)
					}
					thread := apic & (1<<smt.EAX - 1)
					coreID := apic >> smt.EAX & (1<<(core.EAX-smt.EAX) - 1)
					pkg := apic >> core.EAX
					if int(thread) >= topo.Threads || int(coreID) >= topo.Cores || int(pkg) >= topo.Sockets {
						t.Fatalf("vCPU %d: socket %d core %d thread %d outside %s", i, pkg, coreID, thread, FormatTopology(topo))
					}
					key := [3]uint32{pkg, coreID, thread}
					if seen[key] {
						t.Fatalf("vCPU %d: socket %d core %d thread %d twice", i, pkg, coreID, thread)
					}
					seen[key] = true

					l1 := leaf(t, ids, 1, 0)
					if l1.EBX>>16&0xff != 1<<core.EAX || (l1.EDX>>28&1 == 1) != (core.EAX > 0) {
						t.Errorf("vCPU %d: leaf 1 EBX %#x EDX %#x against %d ID bits per package", i, l1.EBX, l1.EDX, core.EAX)
					}
					for idx, level := range []uint32{1, 1, 2, 3} {
						c := leaf(t, ids, 4, uint32(idx))
						share := uint32(1)<<smt.EAX - 1
						if level == 3 {
							share = 1<<core.EAX - 1
						}
						if c.EAX>>14&0xfff != share || c.EAX>>26 != 1<<(core.EAX-smt.EAX)-1 || c.EAX>>5&7 != level {
							t.Errorf("vCPU %d: leaf 4.%d EAX %#x (sharing %d, cores %d)", i, idx, c.EAX, c.EAX>>14&0xfff, c.EAX>>26)
						}
					}
					if vendor != VendorAMD {
						if e := leaf(t, ids, 0x8000001e, 0); e.EAX != 0xff {
							t.Errorf("vCPU %d: an Intel table's leaf 0x8000001E changed: %+v", i, e)
						}
						continue
					}
					x8 := leaf(t, ids, 0x80000008, 0)
					if x8.ECX&0xff != uint32(topo.Cores*topo.Threads-1) || x8.ECX>>12&0xf != core.EAX {
						t.Errorf("vCPU %d: 0x80000008 ECX %#x", i, x8.ECX)
					}
					x1e := leaf(t, ids, 0x8000001e, 0)
					if x1e.EAX != apic || x1e.EBX>>8&0xff != uint32(topo.Threads-1) || x1e.EBX&0xff != coreID || x1e.ECX&0x7ff != pkg {
						t.Errorf("vCPU %d: 0x8000001E %+v, want APIC %d, %d threads, core %d, node %d", i, x1e, apic, topo.Threads, coreID, pkg)
					}
					for idx, level := range []uint32{1, 2, 3} {
						c := leaf(t, ids, 0x8000001d, uint32(idx))
						want := uint32(1)<<smt.EAX - 1
						if level == 3 {
							want = 1<<core.EAX - 1
						}
						if c.EAX>>14&0xfff != want {
							t.Errorf("vCPU %d: 0x8000001D.%d sharing %d, want %d", i, idx, c.EAX>>14&0xfff, want)
						}
					}
				}
			})
		}
	}
}

func TestCheckTopologyCPUID(t *testing.T) {
	smt := accel.Topology{Sockets: 1, Cores: 2, Threads: 2}
	amd := topoTable(VendorAMD)
	if err := CheckTopologyCPUID(amd, smt); err == nil || !strings.Contains(err.Error(), "TOPOEXT") {
		t.Errorf("AMD without TOPOEXT, 2 threads per core: %v, want a refusal naming TOPOEXT", err)
	}
	if err := CheckTopologyCPUID(amd, accel.Topology{Sockets: 2, Cores: 2, Threads: 1}); err != nil {
		t.Errorf("AMD without TOPOEXT, 1 thread per core: %v", err)
	}
	for i := range amd {
		if amd[i].Function == 0x80000001 {
			amd[i].ECX |= 1 << 22
		}
	}
	amd = append(amd, accel.CPUIDEntry{Function: 0x80000001, ECX: 1 << 22})
	if err := CheckTopologyCPUID(amd, smt); err != nil {
		t.Errorf("AMD with TOPOEXT: %v", err)
	}
	if err := CheckTopologyCPUID(topoTable(VendorIntel), smt); err != nil {
		t.Errorf("Intel: %v", err)
	}
}
