package e2e

import (
	"encoding/json"
	"govmm/internal/kvmtest"
	"os"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	r := govmm(t, "version")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "govmm ") {
		t.Fatalf("govmm version: %s", r)
	}
	// The tests build govmm as the README does: static.
	if !strings.Contains(r.Stdout, ", static)") {
		t.Errorf("govmm version does not report a static build: %s", r.Stdout)
	}
}

// TestCapsJSON: govmm caps --json lists both accelerators; KVM, where it
// is here, as available with its API version, the split irqchip in use and
// its supported CPUID; MSHV as available only where /dev/mshv exists, and
// on a host with a real one (where this test runs without KVM too) as
// available with the capabilities govmm probed (the README's runbook reads
// them).
func TestCapsJSON(t *testing.T) {
	kvmHere := true
	if hostMSHV() {
		kvmHere = kvmtest.Here(t)
	} else {
		kvmtest.Need(t)
	}
	r := govmm(t, "caps", "--json")
	if r.Code != 0 {
		t.Fatalf("caps --json: %s", r)
	}
	var rep struct {
		Accelerators []struct {
			Name      string
			Available bool
			Caps      *struct {
				APIVersion int `json:"api_version"`
				Features   []struct {
					Name  string
					Value int64
					Used  bool
				}
			}
			CPUID    []json.RawMessage `json:"supported_cpuid"`
			Features []string          `json:"cpu_features"`
		}
	}
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
		t.Fatalf("caps --json is not JSON: %v\n%s", err, r.Stdout)
	}
	var kvm, mshv bool
	for _, a := range rep.Accelerators {
		switch a.Name {
		case "kvm":
			kvm = true
			if !kvmHere {
				continue
			}
			if !a.Available || a.Caps == nil || a.Caps.APIVersion != 12 {
				t.Fatalf("kvm not reported as available with API 12: %+v", a)
			}
			split := false
			for _, f := range a.Caps.Features {
				if f.Name == "SPLIT_IRQCHIP" && f.Value != 0 && f.Used {
					split = true
				}
			}
			if !split {
				t.Errorf("SPLIT_IRQCHIP missing from the used capabilities")
			}
			if len(a.CPUID) < 10 || len(a.Features) < 10 {
				t.Errorf("supported CPUID looks empty: %d leaves, features %v", len(a.CPUID), a.Features)
			}
		case "mshv":
			mshv = true
			if _, err := os.Stat("/dev/mshv"); err != nil && a.Available {
				t.Errorf("mshv reported available without /dev/mshv")
			}
			if !hostMSHV() {
				continue
			}
			if !a.Available || a.Caps == nil {
				t.Fatalf("mshv not available on a host with /dev/mshv (the runbook's first report): %+v\n%s", a, r.Stdout)
			}
			probed := map[string]bool{}
			for _, f := range a.Caps.Features {
				probed[f.Name] = true
			}
			for _, n := range []string{"CREATE_PARTITION_V2", "SELF_PARTITION_PROPERTY", "VP_REGISTER_PAGE", "MMIO_IOEVENTFD", "MSI_ROUTING"} {
				if !probed[n] {
					t.Errorf("mshv caps lack %s", n)
				}
			}
		}
	}
	if !kvm || !mshv {
		t.Fatalf("caps must list kvm and mshv: %s", r.Stdout)
	}
	text := govmm(t, "caps")
	if text.Code != 0 {
		t.Fatalf("caps text: %s", text)
	}
	if kvmHere && (!strings.Contains(text.Stdout, "kvm: available") || !strings.Contains(text.Stdout, "API version: 12")) {
		t.Fatalf("caps text: %s", text)
	}
	if hostMSHV() && !strings.Contains(text.Stdout, "mshv: available") {
		t.Fatalf("caps text on a /dev/mshv host: %s", text)
	}
}

// TestUsageErrors: every bad flag is one clear line and status 64 (or 69
// when the accelerator is missing), never a Go panic or usage dump alone.
func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--memory", "lots"}, 64, "--memory"},
		{[]string{"run", "--memory", "1000"}, 64, "multiple of 4 KiB"},
		{[]string{"run", "--cpus", "0"}, 64, "--cpus 0"},
		{[]string{"run", "--accel", "xen"}, 64, "want kvm, mshv or auto"},
		{[]string{"run", "--cpu", "host,-nosuchfeature"}, 64, "nosuchfeature"},
		{[]string{"run", "--cpu", "pentium"}, 64, "pentium"},
		{[]string{"run", "--serial", "tty"}, 64, "--serial"},
		{[]string{"run", "--kernel", "/nonexistent/kernel"}, 64, "/nonexistent/kernel"},
		{[]string{"run", "--log-level", "loud"}, 64, "--log-level"},
		{[]string{"frobnicate"}, 64, "unknown command"},
		{[]string{"restore", "--snapshot", "/nonexistent"}, 64, "not a govmm snapshot"},
		{[]string{"snapshot", "--dir", "/tmp/x"}, 64, "--api-socket is required"},
		{[]string{"migrate", "send", "--api-socket", "/nonexistent.sock", "--to", "unix:/x"}, 64, "control socket"},
		{[]string{"pause", "--api-socket", "/nonexistent.sock"}, 64, "control socket"},
		{[]string{"migrate", "receive", "--listen", "udp:x"}, 64, "unix:PATH or tcp:HOST:PORT"},
	}
	if _, err := os.Stat("/dev/mshv"); err != nil {
		cases = append(cases, struct {
			args []string
			code int
			want string
		}{[]string{"run", "--accel", "mshv"}, 69, "not a Microsoft Hypervisor root partition"})
	}
	for _, c := range cases {
		r := govmm(t, c.args...)
		if r.Code != c.code || !strings.Contains(r.Stderr, c.want) {
			t.Errorf("govmm %s: want exit %d and %q in stderr, got %s", strings.Join(c.args, " "), c.code, c.want, r)
		}
		if strings.Contains(r.Stderr, "panic") || strings.Contains(r.Stderr, "goroutine ") {
			t.Errorf("govmm %s panicked: %s", strings.Join(c.args, " "), r)
		}
	}
}

// TestDefaultGuest is the README's first command: the built-in guest boots,
// reports what it sees and powers off.
func TestDefaultGuest(t *testing.T) {
	for _, acc := range accels(t) {
		t.Run(accelName(acc), func(t *testing.T) {
			r := govmm(t, append([]string{"run"}, acc...)...)
			if r.Code != 0 {
				t.Fatalf("default guest: %s", r)
			}
			for _, want := range []string{"govmm probe guest", "cpus:", "memory:", "powering off"} {
				if !strings.Contains(r.Stdout, want) {
					t.Errorf("default guest output lacks %q:\n%s", want, r.Stdout)
				}
			}
		})
	}
}
