package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"govmm/snapshot"
)

// TestRestoreRefusesOtherArch: `govmm restore` of a snapshot taken on the
// other architecture (an arm64 one on x86, an untagged x86 one on arm64)
// is refused with status 64 and an error naming both, before any
// accelerator is opened.
func TestRestoreRefusesOtherArch(t *testing.T) {
	dir := t.TempDir()
	st := &snapshot.State{}
	if err := st.Add("machine", 1, map[string]any{"mem_size": 64 << 20, "num_cpus": 1}); err != nil {
		t.Fatal(err)
	}
	other := snapshot.ArchX86_64
	if snapshot.HostArch() == snapshot.ArchX86_64 {
		other = snapshot.ArchARM64
		if err := st.SetArch(other); err != nil {
			t.Fatal(err)
		}
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapshot.StateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapshot.MemoryFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, snapshot.MemoryFile), 64<<20); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := realMain([]string{"restore", "--snapshot", dir, "--serial", "none"}, strings.NewReader(""), &stdout, &stderr)
	if code != exitUsage {
		t.Fatalf("restore of an %s snapshot on %s: exit %d, want %d: %s", other, snapshot.HostArch(), code, exitUsage, stderr.String())
	}
	if msg := stderr.String(); !strings.Contains(msg, "holds an "+other+" VM") || !strings.Contains(msg, snapshot.HostArch()) {
		t.Fatalf("the refusal does not name both architectures: %s", msg)
	}
	t.Logf("%s", strings.TrimSpace(stderr.String()))
}
