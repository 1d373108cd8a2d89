package virtio_test

import (
	"testing"
	"time"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// TestHeldBatch: chains completed with virtio.More stay invisible to the
// driver (no used element, no interrupt) until the batch's last
// completion, which hands them all over in order with one interrupt, on
// split and packed rings: a packet received into several buffers reaches
// the driver whole.
func TestHeldBatch(t *testing.T) {
	for _, c := range []struct {
		name   string
		packed bool
		feats  uint64
	}{{"split", false, 0}, {"packed", true, packedFeats}} {
		t.Run(c.name, func(t *testing.T) {
			d, h, _ := newHolderOn(t, c.packed, c.feats, 8)
			for round := range 5 { // over the ring's end, and a packed ring's wraps
				var ids []uint16
				for k := range 3 {
					ids = append(ids, d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase + uint64(k)*0x100, Len: 64, Write: true}}, 0))
				}
				h.waitHeld(t, 3)
				h.complete(t, ids[0], 10|virtio.More)
				h.complete(t, ids[1], 20|virtio.More)
				if u, err := d.Wait(0, 50*time.Millisecond); err == nil {
					t.Fatalf("round %d: the driver sees %+v before the batch's last chain", round, u)
				}
				if n := d.Interrupts(0); n != 0 {
					t.Fatalf("round %d: %d interrupts before the batch's last chain", round, n)
				}
				h.complete(t, ids[2], 30)
				for k, want := range []uint32{10, 20, 30} {
					u, err := d.Wait(0, wait)
					if err != nil || u.ID != uint32(ids[k]) || u.Len != want {
						t.Fatalf("round %d, chain %d: used %+v, %v; want ID %d with %d bytes", round, k, u, err, ids[k], want)
					}
				}
				if n := d.WaitInterrupts(0, wait); n != 1 {
					t.Fatalf("round %d: %d interrupts for the batch, want 1", round, n)
				}
			}
		})
	}
}
