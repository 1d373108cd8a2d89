package devices

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"govmm/memory"
	"govmm/pci"
	"govmm/virtio"
	"govmm/virtio/blk"
	virtionet "govmm/virtio/net"
	"govmm/virtio/virtiotest"
)

var windows = pci.Windows{Mem32Base: 0xc0000000, Mem32End: 0xe0000000, Mem64Base: 1 << 40, Mem64End: 1<<40 + 1<<32}

// TestOrder builds two disks, the entropy device, the console and the
// balloon and finds them at slots 1 to 5 in that order with their device IDs and
// classes, each with the router asked for its own slot.
func TestOrder(t *testing.T) {
	dir := t.TempDir()
	var disks []blk.Config
	for _, n := range []string{"a.img", "b.img"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, make([]byte, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, blk.Config{Path: p})
	}
	_, table := virtiotest.NewVM()
	defer table.Close()
	root := pci.NewRoot(windows)
	var asked []int
	set, err := Build(Config{Disks: disks, RNG: true, Console: true, Balloon: true}, Host{
		Root: root, Mem: virtiotest.RAM(t, 1<<20),
		Router: func(slot int) virtio.Router { asked = append(asked, slot); return table },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := set.Close(); err != nil {
			t.Error(err)
		}
		if err := set.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}()
	want := []struct {
		name  string
		id    uint16
		class uint8
	}{{"virtio-blk vda", 2, 0x01}, {"virtio-blk vdb", 2, 0x01}, {"virtio-rng", 4, 0xff}, {"virtio-console", 3, 0x07}, {"virtio-balloon", 5, 0xff}}
	if len(set.Devices) != len(want) || set.Console == nil || set.Balloon == nil {
		t.Fatalf("%d devices (console %v), want %d with the console", len(set.Devices), set.Console, len(want))
	}
	for i, w := range want {
		d := set.Devices[i]
		slot := FirstSlot + i
		if d.Slot != slot || d.Transport.Device().Name() != w.name || asked[i] != slot {
			t.Errorf("device %d: %s at slot %d (router asked for %d), want %s at %d", i, d.Transport.Device().Name(), d.Slot, asked[i], w.name, slot)
		}
		var id [4]byte
		root.ECAM().Read(uint64(slot)<<15, id[:])
		var cls [4]byte
		root.ECAM().Read(uint64(slot)<<15+8, cls[:])
		if got := binary.LittleEndian.Uint32(id[:]); got != uint32(0x1040+w.id)<<16|virtio.PCIVendor || cls[3] != w.class {
			t.Errorf("slot %d: ID %#x class %#x, want device %#x class %#x", slot, got, cls[3], 0x1040+w.id, w.class)
		}
	}
	if set.Devices[3].Transport.Device() != set.Console {
		t.Error("Set.Console is not the console after the entropy device")
	}
	if set.Devices[4].Transport.Device() != set.Balloon {
		t.Error("Set.Balloon is not the balloon at the last slot")
	}
	// This memory cannot release pages: the balloon says so.
	if set.Balloon.Info().KeepReason == "" {
		t.Error("a balloon over memory without Discard claims to release pages")
	}
}

// TestInputErrors: too many disks and an image that does not open are
// the user's errors, marked as such, and nothing built stays open.
func TestInputErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.img")
	if err := os.WriteFile(good, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	_, table := virtiotest.NewVM()
	defer table.Close()
	for _, c := range []struct {
		name string
		cfg  Config
	}{
		{"27 disks", Config{Disks: make([]blk.Config, 27)}},
		{"missing image after a good one", Config{Disks: []blk.Config{{Path: good}, {Path: filepath.Join(dir, "missing.img")}}, Console: true}},
	} {
		root := pci.NewRoot(windows)
		set, err := Build(c.cfg, Host{Root: root, Mem: virtiotest.RAM(t, 1<<20),
			Router: func(int) virtio.Router { return table }})
		var ie *InputError
		if set != nil || !errors.As(err, &ie) {
			t.Errorf("%s: set %v, error %v: want no set and an InputError", c.name, set, err)
		}
	}
	if (Config{}).Empty() != true || (Config{Console: true}).Empty() || (Config{Balloon: true}).Empty() {
		t.Error("Empty is wrong about the console or the balloon")
	}
}

// regionMem is test RAM that a kernel vhost backend could be given.
type regionMem struct{ *virtiotest.Mem }

func (m regionMem) Regions() []memory.Region { return []memory.Region{{GPA: 0, Host: m.B}} }

// TestVhostNetMissing: --net ...,vhost=on on a host without vhost-net is
// the user's error (exit 64), naming the device and what to load, before
// any TAP is touched; govmm does not fall back to its own queues.
func TestVhostNetMissing(t *testing.T) {
	_, table := virtiotest.NewVM()
	defer table.Close()
	missing := filepath.Join(t.TempDir(), "vhost-net")
	set, err := Build(Config{Nets: []virtionet.Config{{Tap: "govmm-no-such", Vhost: true, VhostPath: missing}}}, Host{
		Root: pci.NewRoot(windows), Mem: regionMem{virtiotest.RAM(t, 1<<20)},
		Router: func(int) virtio.Router { return table }})
	var ie *InputError
	if set != nil || !errors.As(err, &ie) || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "vhost=on") {
		t.Fatalf("set %v, error %v: want no set and an InputError naming %s and vhost=on", set, err, missing)
	}
	if _, err := net.InterfaceByName("govmm-no-such"); err == nil {
		t.Error("a TAP was created for a device that could not be built")
	}
}
