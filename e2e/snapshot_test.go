package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSnapshotMemoryAndFaults snapshots a guest that keeps writing memory,
// restores it on each accelerator (the guest verifies every page it wrote),
// and shows that damaged or mismatched snapshots are refused whole.
func TestSnapshotMemoryAndFaults(t *testing.T) {
	all := accels(t)
	dir := t.TempDir()
	sock, snap := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "snap")
	s := memwriter(t, all[0], sock)
	r := govmm(t, "snapshot", "--api-socket", sock, "--dir", snap)
	if r.Code != 0 || !strings.Contains(r.Stdout, "snapshot written") {
		t.Fatalf("snapshot: %s", r)
	}
	verify(t, s) // the source resumed and is intact

	// The memory file is sparse: 128 MiB of RAM, a few MiB written.
	mem := filepath.Join(snap, "memory")
	if fi, err := os.Stat(mem); err != nil || fi.Size() != 128<<20 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	if used := diskUsage(t, mem); used > 64<<20 {
		t.Errorf("memory file uses %d MiB on disk: not sparse", used>>20)
	}

	for _, acc := range all {
		t.Run("restore-"+accelName(acc), func(t *testing.T) {
			p := start(t, append(append([]string{"restore"}, acc...), "--snapshot", snap)...)
			time.Sleep(200 * time.Millisecond)
			verify(t, p)
		})
	}

	bad := func(name string, mutate func(dir string), args []string, want string) {
		t.Run(name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "snap")
			copyDir(t, snap, d)
			if mutate != nil {
				mutate(d)
			}
			r := govmm(t, append(append([]string{"restore"}, all[0]...), append([]string{"--snapshot", d}, args...)...)...)
			if r.Code != 64 || !strings.Contains(r.Stderr, want) {
				t.Fatalf("want exit 64 and %q, got %s", want, r)
			}
		})
	}
	state := func(d string) string { return filepath.Join(d, "state") }
	bad("truncated-state", func(d string) {
		b, _ := os.ReadFile(state(d))
		os.WriteFile(state(d), b[:len(b)/2], 0o600)
	}, nil, "corrupted or truncated")
	bad("bit-flipped-state", func(d string) {
		b, _ := os.ReadFile(state(d))
		b[len(b)/3] ^= 0x10
		os.WriteFile(state(d), b, 0o600)
	}, nil, "corrupted or truncated")
	bad("newer-format", func(d string) {
		b, _ := os.ReadFile(state(d))
		b[8] = 99
		os.WriteFile(state(d), b, 0o600)
	}, nil, "newer than this govmm")
	bad("truncated-memory", func(d string) {
		os.Truncate(filepath.Join(d, "memory"), 64<<20)
	}, nil, "memory file is")
	bad("other-memory-size", nil, []string{"--memory", "256M"}, "cannot change the memory size")
	bad("other-vcpu-count", nil, []string{"--cpus", "2"}, "cannot change the vCPU count")
	bad("no-memory-file", func(d string) { os.Remove(filepath.Join(d, "memory")) }, nil, "guest memory")
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
