//go:build !arm64

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A Zen 3 host's /proc/cpuinfo (flags trimmed to what the models ask).
const zen3CPUInfo = `processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc pni pclmulqdq monitor ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext perfctr_core ssbd ibrs ibpb stibp fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd umip pku ospke rdpid fsrm

processor	: 1
vendor_id	: AuthenticAMD
flags		: fpu
`

// cpu-models decides from a cpuinfo file when told to (and from
// /proc/cpuinfo when there is no accelerator): on Zen 3, v2, v3 and the
// EPYC models run, v4 and the Intel models do not, each with its reason.
func TestCPUModelsFromCPUInfo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpuinfo")
	if err := os.WriteFile(path, []byte(zen3CPUInfo), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"cpu-models", "--cpuinfo", path, "--json"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var rep cpuModelsReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"host": "", "x86-64-v2": "", "x86-64-v3": "", "EPYC-Rome": "", "EPYC-Milan": "",
		"x86-64-v4":      "missing avx512f avx512dq avx512cd avx512bw avx512vl",
		"Skylake-Server": "needs a GenuineIntel host, this one is AuthenticAMD; missing avx512f",
		"Icelake-Server": "needs a GenuineIntel host, this one is AuthenticAMD; missing avx512f",
	}
	for _, m := range rep.Models {
		w, ok := want[m.Name]
		if !ok {
			continue
		}
		if m.Runs != (w == "") || !strings.HasPrefix(m.Why, w) {
			t.Errorf("%s: runs=%v why=%q, want %q", m.Name, m.Runs, m.Why, w)
		}
		delete(want, m.Name)
	}
	if len(want) != 0 {
		t.Errorf("models not listed: %v", want)
	}
	if !strings.Contains(rep.Note, "not from an accelerator") {
		t.Errorf("note %q does not say the answer is a best effort", rep.Note)
	}

	stdout.Reset()
	if code := realMain([]string{"cpu-models", "--cpuinfo", path}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "x86-64-v4       cannot run") || !strings.Contains(stdout.String(), "EPYC-Milan      runs here") {
		t.Errorf("table:\n%s", stdout.String())
	}
}

// A model name Parse does not know is bad input, refused before the
// accelerator is opened, and the message lists the models.
func TestUnknownCPUModel(t *testing.T) {
	code, stderr := run(t, append([]string{"run", "--cpu", "x86-64-v5"}, noAccel...)...)
	if code != exitUsage || !strings.Contains(stderr, "x86-64-v4") {
		t.Errorf("--cpu x86-64-v5: exit %d: %s", code, stderr)
	}
}
