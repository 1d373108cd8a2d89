package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"govmm/accel"
	"govmm/cpu"
)

// probeCPUID rebuilds the CPUID leaves the probe reports raw (1, 7.0,
// 0xd.1, 0x80000001, 0x80000008) as a table the cpu package can read.
func probeCPUID(t *testing.T, m map[string]string) []accel.CPUIDEntry {
	t.Helper()
	var out []accel.CPUIDEntry
	for _, l := range []struct{ leaf, sub uint32 }{{1, 0}, {7, 0}, {0xd, 1}, {0x80000001, 0}, {0x80000008, 0}} {
		v, ok := m[fmt.Sprintf("cpuid.raw.%08x.%d", l.leaf, l.sub)]
		if !ok {
			continue
		}
		var e accel.CPUIDEntry
		if _, err := fmt.Sscanf(v, "%x %x %x %x", &e.EAX, &e.EBX, &e.ECX, &e.EDX); err != nil {
			t.Fatalf("cpuid.raw.%08x.%d=%q: %v", l.leaf, l.sub, v, err)
		}
		e.Function, e.Index, e.Flags = l.leaf, l.sub, accel.CPUIDFlagSignificantIndex
		out = append(out, e)
	}
	return out
}

// TestCPUModelProbe boots the probe on --cpu x86-64-v2 on each
// accelerator: the guest sees the psABI v2 features and none of v3's (no
// AVX, no XSAVE); on KVM it sees exactly the model's features.
func TestCPUModelProbe(t *testing.T) {
	def, _ := cpu.LookupModel("x86-64-v2")
	for _, flags := range accels(t) {
		name := accelName(flags)
		t.Run(name, func(t *testing.T) {
			m := probeReport(t, flags, "--cpu=x86-64-v2")
			ids := probeCPUID(t, m)
			for _, f := range []string{"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3", "sse2", "cmov", "lm"} {
				if ft, _ := cpu.Lookup(f); !ft.Has(ids) {
					t.Errorf("x86-64-v2 guest lacks %s", f)
				}
			}
			for _, f := range []string{"avx", "avx2", "bmi1", "bmi2", "fma", "f16c", "movbe", "abm", "xsave", "avx512f"} {
				if ft, _ := cpu.Lookup(f); ft.Has(ids) {
					t.Errorf("x86-64-v2 guest sees %s", f)
				}
			}
			if m["xsave.supported"] != "0" {
				t.Errorf("x86-64-v2 guest: xsave.supported=%s", m["xsave.supported"])
			}
			if name != "kvm" {
				return // MSHV adds its own bits (see probeAccelDiffs)
			}
			for _, f := range cpu.Features() {
				if f.Dynamic || f.VMM || f.Name == "ht" || cpu.HypervisorLeaf(f.Leaf) || f.Leaf == 7 && f.Subleaf != 0 {
					continue
				}
				want := false
				for _, d := range def.Features {
					want = want || d == f.Name
				}
				if got := f.Has(ids); got != want {
					t.Errorf("x86-64-v2 guest on KVM: %s present=%v, the model says %v", f.Name, got, want)
				}
			}
		})
	}
}

// TestCPUModelRestoreRefused snapshots an x86-64-v2 probe and a host-model
// probe, then restores them on a destination whose supported CPUID lacks
// SSE4.2 (shrunk by GOVMM_TEST_HIDE_CPUID): both are refused before
// anything runs, naming sse4_2; the host one says it is tied to a host of
// the same kind. A live migration to such a destination is refused the
// same way and the source keeps running. The v2 snapshot restores where
// nothing is hidden, and its guest still sees no AVX.
func TestCPUModelRestoreRefused(t *testing.T) {
	acc := accels(t)[0]
	snapshotProbe := func(model string) string {
		dir := t.TempDir()
		sock, snap := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "snap")
		p := start(t, append(append([]string{"run"}, acc...), "--cpu="+model, "--cpus=1", "--memory=128M",
			"--api-socket="+sock, "--cmdline=probe.mode=report probe.wait=8000 probe.repeat=2")...)
		p.waitFor(probeEnd, 2*time.Minute)
		if r := govmm(t, "snapshot", "--api-socket="+sock, "--dir="+snap, "--stop"); r.Code != 0 {
			t.Fatalf("snapshot of the %s probe: %s\n%s", model, r, p.output())
		}
		return snap
	}
	v2, host := snapshotProbe("x86-64-v2"), snapshotProbe("host")

	hidden := func(f func()) {
		os.Setenv("GOVMM_TEST_HIDE_CPUID", "sse4_2")
		defer os.Unsetenv("GOVMM_TEST_HIDE_CPUID")
		f()
	}
	hidden(func() {
		r := govmm(t, append(append([]string{"restore"}, acc...), "--snapshot="+v2)...)
		if r.Code != 64 || !strings.Contains(r.Stderr, "--cpu x86-64-v2") || !strings.Contains(r.Stderr, "sse4_2") ||
			!strings.Contains(r.Stderr, "cannot run the x86-64-v2 model") || strings.Contains(r.Stdout, probeBegin) {
			t.Errorf("x86-64-v2 snapshot on a destination without sse4_2: want exit 64 naming sse4_2, got %s", r)
		}
		r = govmm(t, append(append([]string{"restore"}, acc...), "--snapshot="+host)...)
		if r.Code != 64 || !strings.Contains(r.Stderr, "sse4_2") || !strings.Contains(r.Stderr, "tied to a host of the same kind") {
			t.Errorf("host snapshot on a destination without sse4_2: want exit 64, tied to a host of the same kind, got %s", r)
		}
	})

	r := govmm(t, append(append([]string{"restore"}, acc...), "--snapshot="+v2)...)
	if r.Code != 0 {
		t.Fatalf("x86-64-v2 snapshot on its own host: %s", r)
	}
	ids := probeCPUID(t, parseProbeReport(t, r.Stdout))
	if f, _ := cpu.Lookup("avx"); f.Has(ids) {
		t.Error("restored x86-64-v2 guest sees avx")
	}
	if f, _ := cpu.Lookup("sse4_2"); !f.Has(ids) {
		t.Error("restored x86-64-v2 guest lacks sse4_2")
	}

	// Live migration: the destination refuses at the hello.
	dir := t.TempDir()
	sock, mig := filepath.Join(dir, "src.sock"), filepath.Join(dir, "mig.sock")
	s := start(t, append(append([]string{"run"}, acc...), "--cpu=x86-64-v2", "--cpus=1", "--memory=128M",
		"--api-socket="+sock, "--cmdline=probe.mode=report probe.wait=60000 probe.repeat=2")...)
	s.waitFor(probeEnd, 2*time.Minute)
	hidden(func() {
		d := start(t, append(append([]string{"migrate", "receive"}, acc...), "--listen", "unix:"+mig)...)
		waitPath(t, mig)
		r := govmm(t, "migrate", "send", "--api-socket", sock, "--to", "unix:"+mig)
		if r.Code == 0 || !strings.Contains(r.Stderr, "sse4_2") || !strings.Contains(r.Stderr, "keeps running here") {
			t.Errorf("migration to a destination without sse4_2: %s\n--- destination:\n%s", r, d.output())
		}
	})
	if info := govmm(t, "info", "--api-socket", sock); !strings.Contains(info.Stdout, "state:   running") {
		t.Errorf("source after the refused migration is not running:\n%s", info)
	}
}
