package e2e

import (
	"debug/elf"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"govmm/api"
)

// TestInfoVCPUs asks a running two-vCPU guest (testguest's memwrite, which
// rewrites memory in long mode, at CPL3 between system calls) for its
// vCPUs through `govmm info --vcpus`, on each accelerator: vCPU 0 runs in
// 64-bit long mode inside the guest image, as the BSP; vCPU 1, which the
// guest never starts, waits for INIT/SIPI. The VM is paused only for the
// capture, a paused VM stays paused, and the guest then finishes normally
// with every page it wrote intact.
func TestInfoVCPUs(t *testing.T) {
	kernel := guestPath(t, "testguest")
	lo, hi := execRange(t, kernel)
	forEachAccel(t, func(t *testing.T, acc []string) {
		sock := filepath.Join(t.TempDir(), "vm.sock")
		p := start(t, append(append([]string{"run"}, acc...), "--kernel", kernel, "--memory", "128M", "--cpus", "2",
			"--cmdline", "test=memwrite mb=8", "--api-socket", sock)...)
		p.waitFor("memwrite: running", time.Minute)
		waitPath(t, sock)

		res := vcpusJSON(t, sock)
		if res.WasPaused || res.PauseMS <= 0 || len(res.VCPUs) != 2 {
			t.Fatalf("running VM: want 2 vCPUs and a pause time, got %+v", res)
		}
		t.Logf("%s: the VM was paused %.3f ms for the capture", accelName(acc), res.PauseMS)
		c0, c1 := res.VCPUs[0], res.VCPUs[1]
		if c0.Index != 0 || c0.Mode != "long" || c0.CodeBits != 64 || c0.MPState != "runnable" {
			t.Errorf("vCPU 0: %s %d-bit %s, want runnable in 64-bit long mode", c0.Mode, c0.CodeBits, c0.MPState)
		}
		if c0.RIP < lo || c0.RIP >= hi {
			t.Errorf("vCPU 0: RIP %#x outside the guest's code [%#x, %#x)", c0.RIP, lo, hi)
		}
		if (c0.CPL != 0 && c0.CPL != 3) || int(c0.CS&3) != c0.CPL {
			t.Errorf("vCPU 0: CPL %d with CS %#x: want CPL 0 or 3, and CS.RPL the CPL", c0.CPL, c0.CS)
		}
		if c0.EFER&(1<<10) == 0 || c0.CR0&(1<<31) == 0 || c0.CR3 == 0 || c0.Code == "" {
			t.Errorf("vCPU 0: EFER %#x CR0 %#x CR3 %#x code %q: want LMA, paging, page tables and readable code", c0.EFER, c0.CR0, c0.CR3, c0.Code)
		}
		if l := c0.LAPIC; !l.BSP || l.ID != 0 || (l.Mode != "xapic" && l.Mode != "x2apic") || l.Divide < 1 {
			t.Errorf("vCPU 0's LAPIC: %+v, want the enabled BSP's, ID 0", l)
		}
		if c1.Index != 1 || (c1.MPState != "uninitialized" && c1.MPState != "init-received") {
			t.Errorf("vCPU 1: MP state %q, want waiting for INIT/SIPI (the guest starts no AP)", c1.MPState)
		}
		if l := c1.LAPIC; l.BSP || l.ID != 1 {
			t.Errorf("vCPU 1's LAPIC: %+v, want an AP's, ID 1", l)
		}

		// The terminal form: a block per vCPU.
		r := govmm(t, "info", "--api-socket", sock, "--vcpus")
		if r.Code != 0 || !strings.Contains(r.Stdout, "vCPU 0: runnable; long mode, 64-bit code") ||
			!strings.Contains(r.Stdout, "vCPU 1: waiting for") || !strings.Contains(r.Stdout, "for the capture and runs again") {
			t.Fatalf("info --vcpus: %s", r)
		}
		t.Logf("info --vcpus on %s:\n%s", accelName(acc), r.Stdout)
		if st := infoState(t, sock); st != "running" {
			t.Fatalf("after the capture the VM is %q, want running", st)
		}

		// A paused VM stays paused.
		if r := govmm(t, "pause", "--api-socket", sock); r.Code != 0 {
			t.Fatalf("pause: %s", r)
		}
		if res := vcpusJSON(t, sock); !res.WasPaused || res.PauseMS != 0 || len(res.VCPUs) != 2 {
			t.Fatalf("paused VM: %+v", res)
		}
		if st := infoState(t, sock); st != "paused" {
			t.Fatalf("after capturing a paused VM it is %q, want paused", st)
		}
		if r := govmm(t, "resume", "--api-socket", sock); r.Code != 0 {
			t.Fatalf("resume: %s", r)
		}
		verify(t, p) // the guest runs on, and every page it wrote is intact
	})
}

// vcpusJSON runs `govmm info --vcpus --json` against sock.
func vcpusJSON(t *testing.T, sock string) api.VCPUsResult {
	t.Helper()
	r := govmm(t, "info", "--api-socket", sock, "--vcpus", "--json")
	var res api.VCPUsResult
	if r.Code != 0 {
		t.Fatalf("info --vcpus --json: %s", r)
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("info --vcpus --json: %v\n%s", err, r)
	}
	return res
}

// infoState is the VM's state as `govmm info --json` reports it.
func infoState(t *testing.T, sock string) string {
	t.Helper()
	r := govmm(t, "info", "--api-socket", sock, "--json")
	var i api.Info
	if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &i) != nil {
		t.Fatalf("info --json: %s", r)
	}
	return i.State
}

// execRange is the span of the ELF image's executable segments.
func execRange(t *testing.T, path string) (lo, hi uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("guest image: %v", err)
	}
	defer f.Close()
	lo = ^uint64(0)
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			lo, hi = min(lo, p.Vaddr), max(hi, p.Vaddr+p.Memsz)
		}
	}
	if hi == 0 {
		t.Fatalf("guest image %s has no executable segment", path)
	}
	return lo, hi
}
