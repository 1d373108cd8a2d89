package devices

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/blk"
	"govmm/virtio/virtiotest"
)

// TestHotAddDiskAndRemove hot-adds a disk on a descriptor next to a
// boot-time one: it lands at the slot asked for, in slot order, named
// after the disks before it, with its worker threads confined by the
// configuration's hook; a second device at the same slot is refused and
// closes its descriptor; Remove takes it off the bus and ends its workers.
func TestHotAddDiskAndRemove(t *testing.T) {
	dir := t.TempDir()
	boot, hot := filepath.Join(dir, "boot.img"), filepath.Join(dir, "hot.img")
	for _, p := range []string{boot, hot} {
		if err := os.WriteFile(p, make([]byte, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, table := virtiotest.NewVM()
	defer table.Close()
	root := pci.NewRoot(windows)
	h := Host{Root: root, Mem: virtiotest.RAM(t, 1<<20), Router: func(int) virtio.Router { return table }}
	cfg := Config{Disks: []blk.Config{{Path: boot}}, RNG: true}
	set, err := Build(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	open := func() int {
		fd, err := unix.Open(hot, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	d, err := set.HotAddDisk(cfg, blk.Config{Path: hot}, open(), 5, h)
	if err != nil {
		t.Fatal(err)
	}
	if !d.HotAdded || d.Slot != 5 || root.Function(5, 0) != d.Transport.Function() || d.Transport.Device().Name() != "virtio-blk vdb" {
		t.Fatalf("hot-added %+v named %q; the bus has %p at slot 5", d, d.Transport.Device().Name(), root.Function(5, 0))
	}
	if a, _ := d.Transport.Function().BARAddress(0); a != 0 {
		t.Errorf("the hot-added function's BAR 0 is at %#x: it is the guest's to place", a)
	}
	var slots []int
	for _, x := range set.List() {
		slots = append(slots, x.Slot)
	}
	if len(slots) != 3 || slots[2] != 5 {
		t.Errorf("slots %v, want 1, 2, 5", slots)
	}
	fd := open()
	if _, err := set.HotAddDisk(cfg, blk.Config{Path: hot}, fd, 5, h); err == nil || !strings.Contains(err.Error(), "slot 5 is taken") {
		t.Errorf("a second disk at slot 5: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
		t.Error("the refused disk's descriptor is still open")
	}
	before := runtime.NumGoroutine()
	got, err := set.Remove(root, 5)
	if err != nil || got != d {
		t.Fatalf("Remove: %v, %v", got, err)
	}
	if root.Function(5, 0) != nil || len(set.List()) != 2 {
		t.Fatalf("after Remove the bus has %p at slot 5 and the set %d devices", root.Function(5, 0), len(set.List()))
	}
	for i := 0; runtime.NumGoroutine() >= before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n >= before {
		t.Errorf("%d goroutines before Remove, %d after: the disk's workers did not end", before, n)
	}
	if x, err := set.Remove(root, 5); x != nil || err != nil {
		t.Errorf("a second Remove: %v, %v", x, err)
	}
}
