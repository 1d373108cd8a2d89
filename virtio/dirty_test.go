package virtio_test

import (
	"slices"
	"testing"

	"govmm/memory"
	"govmm/virtio"
	"govmm/virtio/virtiotest"
)

// dirtyPages takes the VMM's dirty log of the first region and lists its
// pages.
func dirtyPages(m *memory.Memory) []uint64 {
	var out []uint64
	for w, word := range m.TakeDirty(0, nil) {
		for b := 0; b < 64; b++ {
			if word&(1<<b) != 0 {
				out = append(out, uint64(w*64+b)*memory.PageSize)
			}
		}
	}
	return out
}

func page(gpa uint64) uint64 { return gpa &^ (memory.PageSize - 1) }

// A request served while the VMM's dirty log is on shows up in the next
// round: the device-writable buffers and the used ring (entry, index,
// avail_event), and nothing the device only read. With the log off,
// nothing is recorded.
func TestDirtyLogOfDeviceWrites(t *testing.T) {
	mem := virtiotest.RAM(t, 4<<20)
	d, _ := newRNGMem(t, mem)
	if err := d.Init(virtio.FIndirectDesc|virtio.FEventIdx, 16); err != nil {
		t.Fatal(err)
	}
	_, _, used := d.Rings(0)
	buf := uint64(virtiotest.BufBase)
	request := func(segs []virtiotest.Seg, indirect uint64) {
		t.Helper()
		d.Put(0, segs, indirect)
		if _, err := d.Wait(0, wait); err != nil {
			t.Fatal(err)
		}
	}
	// Off: served, not recorded.
	request([]virtiotest.Seg{{GPA: buf, Len: 64, Write: true}}, 0)
	if err := mem.RAM.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if got := dirtyPages(mem.RAM); len(got) != 0 {
		t.Fatalf("a request served with the log off was recorded: %#x", got)
	}
	// A chain over three pages (the middle one straddled) and one through
	// an indirect table, whose table the device only reads.
	request([]virtiotest.Seg{{GPA: buf + 0x2ff0, Len: 0x20, Write: true}, {GPA: buf + 0x7000, Len: 8, Write: true}}, 0)
	request([]virtiotest.Seg{{GPA: buf + 0x9000, Len: 16, Write: true}}, buf+0xc000)
	want := []uint64{page(used), buf + 0x2000, buf + 0x3000, buf + 0x7000, buf + 0x9000}
	if got := dirtyPages(mem.RAM); !slices.Equal(got, want) {
		t.Fatalf("dirty after two requests: %#x, want %#x (the used ring, then the buffers)", got, want)
	}
	if got := dirtyPages(mem.RAM); len(got) != 0 {
		t.Fatalf("the next round, with no request: %#x", got)
	}
	request([]virtiotest.Seg{{GPA: buf + 0x5000, Len: 1, Write: true}}, 0)
	if got, want := dirtyPages(mem.RAM), []uint64{page(used), buf + 0x5000}; !slices.Equal(got, want) {
		t.Fatalf("the next round: %#x, want %#x", got, want)
	}
	mem.RAM.StopDirtyLog()
}
