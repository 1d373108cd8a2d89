package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestARM64RefusesX86Only: every flag and command of the x86 build that
// the arm64 build lacks is refused with status 64 and an error that names
// it and says it is not implemented on arm64, before anything is opened
// (no /dev/kvm needed). A flag arm64 does not know at all would fail
// with the flag package's "flag provided but not defined" instead.
func TestARM64RefusesX86Only(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "no-snapshot")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--topology", "sockets=1,cores=2,threads=1", "--cpus", "2"}, "--topology: not implemented on arm64"},
		{[]string{"run", "--cpu", "host,-sve"}, "--cpu: not implemented on arm64"},
		{[]string{"run", "--hugepages"}, "--hugepages: not implemented on arm64"},
		{[]string{"run", "--test-devices"}, "--test-devices: not implemented on arm64"},
		{[]string{"run", "--device", "host=0000:01:00.0"}, "--device: not implemented on arm64"},
		{[]string{"run", "--mshv-device", "sim"}, "--mshv-device: not implemented on arm64"},
		{[]string{"run", "--balloon"}, "--balloon: not implemented on arm64"},
		{[]string{"run", "--cpu", "host", "--hugepages"}, "--cpu, --hugepages: not implemented on arm64"},
		{[]string{"run", "--accel", "mshv"}, "--accel mshv: MSHV on arm64 is not implemented"},
		{[]string{"restore", "--snapshot", snap, "--balloon"}, "--balloon: not implemented on arm64"},
		{[]string{"restore", "--snapshot", snap, "--mshv-device", "sim"}, "--mshv-device: not implemented on arm64"},
		{[]string{"restore", "--snapshot", snap, "--device", "vfio=/sys/bus/pci/devices/0000:01:00.0"}, "--device: not implemented on arm64"},
		{[]string{"restore", "--snapshot", snap, "--accel", "mshv"}, "--accel mshv: MSHV on arm64 is not implemented"},
		{[]string{"migrate", "receive", "--listen", "unix:" + filepath.Join(dir, "m.sock"), "--mshv-device", "/dev/mshv"}, "--mshv-device: not implemented on arm64"},
		{[]string{"migrate", "receive", "--listen", "unix:" + filepath.Join(dir, "m.sock"), "--device", "vfio=/sys/bus/mdev/devices/x"}, "--device: not implemented on arm64"},
		{[]string{"migrate", "receive", "--listen", "unix:" + filepath.Join(dir, "m.sock"), "--accel", "mshv"}, "--accel mshv: MSHV on arm64 is not implemented"},
		{[]string{"balloon", "--api-socket", filepath.Join(dir, "api.sock"), "--size", "0"}, "balloon (virtio-balloon): not implemented on arm64"},
		{[]string{"cpu-models"}, "cpu-models (x86 CPU models): not implemented on arm64"},
		{[]string{"jail", "--id", "x", "--", "run"}, "govmm jail: not implemented on arm64"},
	} {
		var stdout, stderr bytes.Buffer
		code := realMain(c.args, strings.NewReader(""), &stdout, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("govmm %s: exit %d, stderr %q; want %d and %q", strings.Join(c.args, " "), code, stderr.String(), exitUsage, c.want)
		}
	}
}
