package virtio_test

import (
	"encoding/binary"
	"testing"

	"govmm/virtio"
	"govmm/virtio/rng"
	"govmm/virtio/virtiotest"
)

// threeQueues is a three-queue device (none is used here).
type threeQueues struct{ virtio.Device }

func (threeQueues) QueueMax() []uint16 { return []uint16{16, 16, 16} }

// sharedVectors asks for n MSI-X vectors (an MSIXVectorCounter), as
// vhost-vsock asks for 3 for its 3 queues.
type sharedVectors struct {
	threeQueues
	n int
}

func (d sharedVectors) MSIXVectors() int { return d.n }

// TestMSIXVectorCount: a device's MSI-X table has one vector per queue
// and one for the configuration, or what an MSIXVectorCounter asks for
// (kept within 2 and that), as the capability's table size tells the
// driver.
func TestMSIXVectorCount(t *testing.T) {
	tableSize := func(tr *virtio.PCI) int {
		caps := tr.Function().Capabilities(0x11)
		if len(caps) != 1 {
			t.Fatalf("MSI-X capabilities at %v", caps)
		}
		var mc [2]byte
		tr.Function().ReadConfig(caps[0]+2, mc[:])
		return int(binary.LittleEndian.Uint16(mc[:])&0x7ff) + 1
	}
	for _, c := range []struct {
		dev  virtio.Device
		want int
	}{
		{rng.New(), 2},
		{threeQueues{rng.New()}, 4},
		{sharedVectors{threeQueues{rng.New()}, 3}, 3},
		{sharedVectors{threeQueues{rng.New()}, 1}, 2},
		{sharedVectors{threeQueues{rng.New()}, 9}, 4},
	} {
		mem, err := virtiotest.NewMem(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		_, tr := attach(t, c.dev, mem, virtio.PCIConfig{})
		if got := tableSize(tr); got != c.want {
			t.Errorf("%T: table size %d, want %d", c.dev, got, c.want)
		}
	}
}
