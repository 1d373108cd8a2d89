package virtio_test

import (
	"strings"
	"testing"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// TestQueueStates: what govmm info shows of a virtio device tells the
// ring positions apart (the driver's available index, what the device
// took, what it used, what it interrupted for, the event indices), counts
// the chains the device holds, and names the queue's MSI-X vector with
// its mask, on split rings with and without event-idx and on packed ones.
func TestQueueStates(t *testing.T) {
	for _, c := range []struct {
		name   string
		packed bool
		feats  uint64
		want   string
	}{
		{"split", false, 0, "q0 size 8: available 3, taken 3, used 1, interrupt checked at 1, driver flags 0x0; vector 0: address 0xfee00000"},
		{"split-event-idx", false, virtio.FEventIdx, "q0 size 8: available 3, taken 3, used 1, interrupt checked at 1, used_event 0, avail_event 3; vector 0: address 0xfee00000"},
		{"packed", true, packedFeats, "q0 size 8 packed: next available 3 (wrap true), next used 1 (wrap true), interrupt checked at 1; vector 0: address 0xfee00000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, h, tr := newHolderOn(t, c.packed, c.feats, 8)
			var ids []uint16
			for k := range 3 {
				ids = append(ids, d.Put(0, []virtiotest.Seg{{GPA: virtiotest.BufBase + uint64(k)*0x100, Len: 64, Write: true}}, 0))
			}
			h.waitHeld(t, 3)
			h.complete(t, ids[0], 10)
			if _, err := d.Wait(0, wait); err != nil {
				t.Fatal(err)
			}
			if n := d.WaitInterrupts(0, wait); n != 1 {
				t.Fatalf("%d interrupts, want 1", n)
			}
			st := tr.QueueStates()
			if len(st) < 2 || !strings.HasPrefix(st[0], "status 0xf, 2 handlers and chains in flight") {
				t.Fatalf("queue states %q: want the status and the 2 chains the device holds first", st)
			}
			if !strings.HasPrefix(st[1], c.want) || strings.Contains(st[1], "masked") || strings.Contains(st[1], "pending") {
				t.Errorf("queue 0: %q, want %q, neither masked nor pending", st[1], c.want)
			}
		})
	}
}
