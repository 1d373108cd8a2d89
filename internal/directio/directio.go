// Package directio tells tests where O_DIRECT works: file systems differ
// (tmpfs before Linux 6.6 and ramfs refuse it at open), and the tests of
// virtio-blk's direct=on need their images on one that takes it.
package directio

import (
	"os"

	"golang.org/x/sys/unix"
)

// Supported reports whether dir's file system opens a file with O_DIRECT.
func Supported(dir string) bool {
	f, err := os.CreateTemp(dir, "probe-")
	if err != nil {
		return false
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	g, err := os.OpenFile(name, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return false
	}
	g.Close()
	return true
}
