package guests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestImage(t *testing.T) {
	names := Names()
	if len(names) == 0 {
		t.Fatal("no embedded guest images")
	}
	for _, n := range names {
		if _, err := Image(n); err != nil && !strings.Contains(err.Error(), "ambiguous") {
			t.Errorf("Image(%q): %v", n, err)
		}
	}
	img, err := Image("probe")
	if err != nil {
		t.Fatalf("Image(probe): %v", err)
	}
	if !bytes.HasPrefix(img, []byte("\x7fELF\x01")) {
		t.Errorf("probe is not an ELF32 image: % x", img[:8])
	}
	byFile, err := Image("probe.elf")
	if err != nil || !bytes.Equal(img, byFile) {
		t.Errorf("Image(probe.elf) differs from Image(probe): %v", err)
	}
	_, err = Image("no-such-guest")
	if err == nil || !strings.Contains(err.Error(), "no-such-guest") || !strings.Contains(err.Error(), "probe") {
		t.Errorf("Image(no-such-guest) error = %v, want one naming the guest and the available images", err)
	}
}

// TestBlobsUpToDate rebuilds every guest into a temporary directory and
// fails if a committed blob in bin/ differs (or is missing, or extra).
func TestBlobsUpToDate(t *testing.T) {
	for _, tool := range []string{"gcc", "make", "objcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("GOVMM_REQUIRE_KVM") == "1" {
				t.Fatalf("%s not found (needed to check the committed guest blobs): %v", tool, err)
			}
			t.Skipf("%s not found: cannot rebuild the guests", tool)
		}
	}
	tmp := t.TempDir()
	out, err := exec.Command("make", "-s", "-j2", "BIN="+filepath.Join(tmp, "bin"), "BUILD="+filepath.Join(tmp, "build")).CombinedOutput()
	if err != nil {
		t.Fatalf("make: %v\n%s", err, out)
	}
	built, err := os.ReadDir(filepath.Join(tmp, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range built {
		seen[e.Name()] = true
		want, err := os.ReadFile(filepath.Join(tmp, "bin", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("bin", e.Name()))
		if err != nil {
			t.Errorf("bin/%s is not committed (run make -C guests): %v", e.Name(), err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("bin/%s is stale: rebuilding gives different bytes (run make -C guests)", e.Name())
		}
	}
	for _, f := range files() {
		if !seen[f] {
			t.Errorf("bin/%s is not produced by make -C guests (stale leftover?)", f)
		}
	}
}
