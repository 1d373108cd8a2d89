package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"govmm/accel"
	"govmm/cpu"
	"govmm/internal/linuxguest"
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

// runnableModels asks `govmm cpu-models` on the accelerator of flags which
// named models it can run.
func runnableModels(t *testing.T, flags []string) map[string]bool {
	t.Helper()
	r := govmm(t, append([]string{"cpu-models"}, flags...)...)
	if r.Code != 0 || !strings.Contains(r.Stdout, "checked against the accelerator") && !strings.Contains(r.Stdout, "supported CPUID") {
		t.Fatalf("govmm cpu-models %s: want exit 0, checked against the accelerator\n%s", strings.Join(flags, " "), r)
	}
	runs := map[string]bool{}
	for _, line := range strings.Split(r.Stdout, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == "runs" && f[2] == "here" {
			runs[f[0]] = true
		}
	}
	return runs
}

// TestCPUModelProbe boots the probe on every named model the accelerator
// can run, on each accelerator: the guest sees every feature of the model
// and, of the features the cpu package knows, no other. x86-64-v2 must
// run on every accelerator the tests use.
func TestCPUModelProbe(t *testing.T) {
	for _, flags := range accels(t) {
		name := accelName(flags)
		t.Run(name, func(t *testing.T) {
			runs := runnableModels(t, flags)
			if !runs["x86-64-v2"] {
				t.Fatalf("%s cannot run x86-64-v2 (runnable: %v)", name, runs)
			}
			for _, def := range cpu.Definitions() {
				if def.IsHost() {
					continue
				}
				if !runs[def.Name] {
					t.Logf("%s: %s does not run on this host (see govmm cpu-models)", name, def.Name)
					continue
				}
				t.Run(def.Name, func(t *testing.T) { checkModelProbe(t, name, flags, def, runs["x86-64-v3"]) })
			}
		})
	}
}

// checkModelProbe compares what the probe's guest sees on --cpu def.Name
// with the model's definition. hostAVX says the host can run x86-64-v3.
func checkModelProbe(t *testing.T, accName string, flags []string, def cpu.Definition, hostAVX bool) {
	m := probeReport(t, flags, "--cpu="+def.Name)
	ids := probeCPUID(t, m)
	inModel := map[string]bool{}
	for _, f := range def.Features {
		inModel[f] = true
	}
	for _, f := range cpu.Features() {
		if f.Dynamic || f.VMM || f.Name == "ht" || cpu.HypervisorLeaf(f.Leaf) || f.Leaf == 7 && f.Subleaf != 0 {
			continue
		}
		if !probeSeesLeaf(f) {
			continue
		}
		if got := f.Has(ids); got != inModel[f.Name] {
			t.Errorf("%s guest on %s: %s present=%v, the model says %v", def.Name, accName, f.Name, got, inModel[f.Name])
		}
	}
	wantXSAVE := "0"
	if inModel["xsave"] {
		wantXSAVE = "1"
	}
	if m["xsave.supported"] != wantXSAVE {
		t.Errorf("%s guest on %s: xsave.supported=%s, want %s", def.Name, accName, m["xsave.supported"], wantXSAVE)
	}
	if def.Vendor != "" && m["cpu.vendor"] != "" && m["cpu.vendor"] != def.Vendor {
		t.Errorf("%s guest on %s: vendor %s, want %s", def.Name, accName, m["cpu.vendor"], def.Vendor)
	}
	// The probe shows the model by name and what it hides against the
	// host: hidden features the guest does not see, none the model keeps;
	// a model adds nothing.
	if m["govmm.cpu"] != def.Name {
		t.Errorf("%s guest on %s: the probe shows model %q", def.Name, accName, m["govmm.cpu"])
	}
	if m["govmm.cpu.added"] != "" {
		t.Errorf("%s guest on %s: the model adds %s to the host's features", def.Name, accName, m["govmm.cpu.added"])
	}
	hidden := strings.Split(m["govmm.cpu.hidden"], ",")
	if hostAVX && def.XSave&(1<<2) == 0 && !slices.Contains(hidden, "avx") {
		t.Errorf("%s guest on %s: govmm.cpu.hidden=%q lacks avx, which the host has and the model does not", def.Name, accName, m["govmm.cpu.hidden"])
	}
	for _, f := range cpu.Features() {
		if !slices.Contains(hidden, f.Name) {
			continue
		}
		if inModel[f.Name] || probeSeesLeaf(f) && f.Has(ids) {
			t.Errorf("%s guest on %s: %s is listed as hidden, yet the model keeps it or the guest sees it", def.Name, accName, f.Name)
		}
	}
}

// probeSeesLeaf reports whether the probe's raw CPUID dump (probeCPUID)
// holds the register of feature f.
func probeSeesLeaf(f cpu.Feature) bool {
	switch {
	case f.Leaf == 1, f.Leaf == 7 && f.Subleaf == 0, f.Leaf == 0xd && f.Subleaf == 1, f.Leaf == 0x80000001, f.Leaf == 0x80000008:
		return true
	}
	return false
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

// TestLinuxCPUModels boots Linux to its init on every named model KVM can
// run here (MSHV runs x86-64-v2 Linux in TestLinuxLiveMigration): a model
// must be a CPU a real kernel accepts, not only one the probe reads.
func TestLinuxCPUModels(t *testing.T) {
	kernel, initrd := linuxGuest(t)
	kvm := needAccels(t, "kvm")[0]
	runs := runnableModels(t, kvm)
	for _, def := range cpu.Definitions() {
		if def.IsHost() || !runs[def.Name] {
			continue
		}
		t.Run(def.Name, func(t *testing.T) {
			token := fmt.Sprintf("model-%d", time.Now().UnixNano()%1e6)
			res := bootRetryingSubstrate(t, linuxguest.Boot{
				Govmm: binary, Accel: append(slices.Clone(kvm), "--cpu="+def.Name), Kernel: kernel, Initrd: initrd,
				CPUs: 1, Token: token, Cmdline: "quiet",
			})
			if res.Token != token || res.CPUs != 1 {
				t.Fatalf("init read token %q and %d CPUs, want %q and 1\n%s", res.Token, res.CPUs, token, res.Console)
			}
			t.Logf("%s: init after %v, clocksource %s", def.Name, res.Wall.Round(time.Millisecond), res.Clocksource)
		})
	}
}

// TestLinuxTopology boots a 4-vCPU Linux arranged as two sockets of two
// cores on each accelerator, and reads the topology the kernel derived
// from CPUID back from sysfs: each vCPU must sit in its socket and core,
// with its package siblings as arranged. Threads per core (SMT) are
// checked by a 2-vCPU boot of one core with two threads where the CPU can
// say so; on an AMD CPU without TOPOEXT (the nested substrate) govmm must
// refuse that shape instead, naming TOPOEXT (cpu.CheckTopologyCPUID).
func TestLinuxTopology(t *testing.T) {
	kernel, initrd := linuxGuest(t)
	topology := func(t *testing.T, flags []string, shape string, cpus int) (linuxguest.Result, error) {
		token := fmt.Sprintf("topo-%d", time.Now().UnixNano()%1e6)
		b := linuxguest.Boot{
			Govmm: binary, Accel: append(slices.Clone(flags), "--topology="+shape),
			Kernel: kernel, Initrd: initrd, CPUs: cpus, Token: token, Cmdline: "quiet govmm.topology=1",
		}
		res, err := b.Run(context.Background())
		if errors.Is(err, linuxguest.ErrStalled) || errors.Is(err, linuxguest.ErrTripleFault) {
			t.Logf("RETRY after a failed boot (the substrate; see bootRetryingSubstrate): %v", err)
			res, err = b.Run(context.Background())
		}
		return res, err
	}
	check := func(t *testing.T, res linuxguest.Result, want []string) {
		t.Helper()
		var got []string
		for _, l := range strings.Split(strings.ReplaceAll(res.Console, "\r", ""), "\n") {
			if strings.HasPrefix(l, "govmm-topology ") {
				got = append(got, strings.TrimSpace(l))
			}
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("topology the guest sees:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	for _, flags := range accels(t) {
		t.Run(accelName(flags), func(t *testing.T) {
			res, err := topology(t, flags, "sockets=2,cores=2", 4)
			if err != nil {
				t.Fatal(err)
			}
			check(t, res, []string{
				"govmm-topology cpu0 package=0 core=0 smt=0 pkg=0-1",
				"govmm-topology cpu1 package=0 core=1 smt=1 pkg=0-1",
				"govmm-topology cpu2 package=1 core=0 smt=2 pkg=2-3",
				"govmm-topology cpu3 package=1 core=1 smt=3 pkg=2-3",
			})
			res, err = topology(t, flags, "threads=2", 2)
			if err != nil && res.Code == 64 {
				if !strings.Contains(res.Stderr, "TOPOEXT") {
					t.Fatalf("threads=2 refused without naming TOPOEXT:\n%s", res.Stderr)
				}
				t.Logf("threads=2 refused here: %s", strings.TrimSpace(res.Stderr))
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			check(t, res, []string{
				"govmm-topology cpu0 package=0 core=0 smt=0-1 pkg=0-1",
				"govmm-topology cpu1 package=0 core=0 smt=0-1 pkg=0-1",
			})
		})
	}
}
