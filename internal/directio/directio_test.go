package directio

import (
	"os"
	"testing"
)

// TestSupported: a directory that does not exist takes nothing; the answer
// for a real one is the kernel's, and the probe leaves no file behind.
func TestSupported(t *testing.T) {
	if Supported("/nonexistent-govmm-dir") {
		t.Error("a missing directory takes O_DIRECT")
	}
	d := t.TempDir()
	t.Logf("%s takes O_DIRECT: %v", d, Supported(d))
	if ents, _ := os.ReadDir(d); len(ents) != 0 {
		t.Errorf("the probe left %d files behind", len(ents))
	}
}
