package e2e

import (
	"syscall"
	"testing"
)

// diskUsage is the bytes a file occupies on disk (holes excluded).
func diskUsage(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
