package virtio_test

import (
	"encoding/binary"
	"testing"

	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// FuzzOffload drives a transport whose device hands queues 0 and 1 to a
// pretend kernel backend (fakeKernel) with arbitrary accesses, as
// FuzzCommonConfig does for a device the transport serves: each 12-byte
// record is (op, size, 2-byte offset, 8 value bytes) on BAR 0 (common
// configuration densely, the MSI-X table, anywhere) or configuration
// space, or a pause and resume. The guest's status, queue set-up, vector
// masks and MSI-X enable decide when the backend starts, stops and where
// its calls go. Nothing may panic or deadlock; the backend runs only
// while the status holds DRIVER_OK without NEEDS_RESET, starts and stops
// alternate, and a running backend's every queue has a call eventfd.
func FuzzOffload(f *testing.F) {
	rec := func(op, size byte, off uint16, v uint64) []byte {
		r := []byte{op, size, byte(off), byte(off >> 8)}
		return binary.LittleEndian.AppendUint64(r, v)
	}
	var seed []byte
	// ACKNOWLEDGE|DRIVER, features (VERSION_1), FEATURES_OK, then
	// DRIVER_OK without queues (refused) and a pause and resume.
	seed = append(seed, rec(1, 1, 0x14, 3)...)
	seed = append(seed, rec(1, 4, 0x08, 1)...)
	seed = append(seed, rec(1, 4, 0x0c, 1)...)
	seed = append(seed, rec(1, 1, 0x14, 0xb)...)
	seed = append(seed, rec(1, 1, 0x14, 0xf)...)
	seed = append(seed, rec(5, 0, 0, 0)...)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := virtiotest.RAM(t, 4<<20)
		k := newFakeKernel()
		d, tr := attach(t, k, mem, virtio.PCIConfig{})
		// A driver that set everything up, so that mutations start from
		// a running backend as often as from nothing.
		if len(data) > 0 && data[0]&0x80 != 0 {
			if err := d.Init(0, 8); err != nil {
				t.Fatal(err)
			}
		}
		bar := tr.BAR()
		for len(data) >= 12 {
			op, size, off := data[0]%6, int(data[1]%9), uint64(binary.LittleEndian.Uint16(data[2:]))
			buf := make([]byte, size)
			copy(buf, data[4:12])
			data = data[12:]
			switch op {
			case 0:
				bar.Read(off%0x8000, buf)
			case 1:
				bar.Write(off%0x40, buf)
			case 2:
				bar.Write(0x4000+off%0x40, buf) // the MSI-X table's first vectors
			case 3:
				bar.Write(off%0x8000, buf)
			case 4:
				tr.Function().WriteConfig(int(off%256), buf)
			case 5:
				tr.Pause()
				tr.Resume()
			}
			st := d.Status()
			k.mu.Lock()
			running, starts, stops := k.running, len(k.starts), k.stops
			var noCall []int
			if running {
				for _, q := range k.starts[starts-1] {
					if c := k.calls[q.Index]; len(c) == 0 || c[len(c)-1] <= 0 {
						noCall = append(noCall, q.Index)
					}
				}
			}
			k.mu.Unlock()
			if running && (st&virtio.StatusDriverOK == 0 || st&virtio.StatusNeedsReset != 0) {
				t.Fatalf("the backend runs with status %#x", st)
			}
			if starts-stops != 0 && starts-stops != 1 {
				t.Fatalf("%d starts and %d stops", starts, stops)
			}
			if len(noCall) > 0 {
				t.Fatalf("the running backend's queues %v have no call eventfd", noCall)
			}
		}
	})
}
