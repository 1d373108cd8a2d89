package blk

import (
	"testing"

	"govmm/memory"
	"govmm/virtio/virtiotest"
)

// A disk read while the VMM's dirty log is on marks the guest pages the
// data landed in (and the status byte's), not the request header the
// device only read.
func TestReadMarksDirty(t *testing.T) {
	mem := virtiotest.RAM(t, 8<<20)
	r := newRigMem(t, false, "", mem)
	if err := mem.RAM.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.req(tIn, 0, make([]byte, 3*memory.PageSize), true); st != sOK {
		t.Fatalf("read: status %d", st)
	}
	bm := mem.RAM.TakeDirty(0, nil)
	isDirty := func(gpa uint64) bool { p := gpa / memory.PageSize; return bm[p/64]&(1<<(p%64)) != 0 }
	for _, g := range []uint64{dataGPA, dataGPA + memory.PageSize, dataGPA + 2*memory.PageSize, statusGPA} {
		if !isDirty(g) {
			t.Errorf("page %#x the device wrote is not in the dirty log", g)
		}
	}
	if isDirty(hdrGPA) {
		t.Errorf("the header page %#x, which the device only read, is in the dirty log", uint64(hdrGPA))
	}
	// A write request's data is the guest's, not the device's.
	if st, _ := r.req(tOut, 0, make([]byte, memory.PageSize), false); st != sOK {
		t.Fatalf("write: status %d", st)
	}
	bm = mem.RAM.TakeDirty(0, nil)
	if isDirty(dataGPA) {
		t.Error("the data of a write request, which the device only read, is in the dirty log")
	}
	if !isDirty(statusGPA) {
		t.Error("the status byte of a write request is not in the dirty log")
	}
}

// BenchmarkRead is a 64 KiB disk read through the transport, with the
// VMM's dirty log off (every request outside a live migration) and on.
func BenchmarkRead(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "log-off"
		if on {
			name = "log-on"
		}
		b.Run(name, func(b *testing.B) {
			mem, err := virtiotest.NewMem(8 << 20)
			if err != nil {
				b.Fatal(err)
			}
			defer mem.RAM.Close()
			r := newRigMem(b, false, "", mem)
			if on {
				if err := mem.RAM.StartDirtyLog(); err != nil {
					b.Fatal(err)
				}
			}
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			for i := 0; b.Loop(); i++ {
				if st, _ := r.req(tIn, uint64(i%8)*128, buf, true); st != sOK {
					b.Fatalf("read: status %d", st)
				}
			}
		})
	}
}
