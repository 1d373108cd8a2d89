package blk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenFD builds a disk on a descriptor, as a hot-add does, and
// refuses descriptors that cannot back the disk asked for.
func TestOpenFD(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(path string, flag int) int {
		fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	d, err := OpenFD(Config{Path: img}, "vda", open(img, unix.O_RDWR))
	if err != nil {
		t.Fatal(err)
	}
	if d.sectors != (1<<20)/sectorSize {
		t.Errorf("%d sectors, want %d", d.sectors, (1<<20)/sectorSize)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if d, err := OpenFD(Config{Path: img, ReadOnly: true}, "vdb", open(img, unix.O_RDONLY)); err != nil {
		t.Errorf("a read-only disk on a read-only descriptor: %v", err)
	} else {
		d.Close()
	}
	for _, c := range []struct {
		name string
		cfg  Config
		fd   int
		want string
	}{
		{"read-only descriptor for a writable disk", Config{Path: img}, open(img, unix.O_RDONLY), "not open for writing"},
		{"a directory", Config{Path: dir, ReadOnly: true}, open(dir, unix.O_RDONLY), "not a regular file"},
		{"direct=on", Config{Path: img, Direct: true}, open(img, unix.O_RDWR), "direct=on is not supported"},
		{"a closed descriptor", Config{Path: img}, 1 << 20, "descriptor"},
	} {
		if _, err := OpenFD(c.cfg, "vdc", c.fd); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	if _, err := OpenImageFile(Config{Path: img, Direct: true}); err == nil {
		t.Error("OpenImageFile with direct=on succeeded")
	}
}
