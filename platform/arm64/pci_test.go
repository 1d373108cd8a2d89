package arm64

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"govmm/pci"
	"govmm/virtio/blk"
	"govmm/virtio/virtiotest"
)

// devIDs records SetMSIDevID calls, as kvmarm.VM does.
type devIDs struct {
	mu  sync.Mutex
	ids map[uint32]uint32
}

func (d *devIDs) SetMSIDevID(gsi, id uint32) {
	d.mu.Lock()
	d.ids[gsi] = id
	d.mu.Unlock()
}

func (d *devIDs) get(gsi uint32) (uint32, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.ids[gsi]
	return id, ok
}

// TestVirtioOnPCI builds a disk and an entropy device the way the arm64
// machine does, finds them through the ECAM window at slots 1 and 2,
// drives the entropy device the way Linux's virtio_pci does, and checks
// that every MSI route its vectors got carries its requester ID (00:02.0,
// 0x10) as the ITS device ID, and that the disk's carry 00:01.0's.
func TestVirtioOnPCI(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	vm, table := virtiotest.NewVM()
	defer table.Close()
	mem, err := virtiotest.NewMem(64 << 20)
	if err != nil {
		t.Fatal(err)
	}
	ids := &devIDs{ids: map[uint32]uint32{}}
	root := pci.NewRoot(PCIWindows())
	set, err := addVirtio(VirtioConfig{Disks: []blk.Config{{Path: img}}, RNG: true}, root, table, ids, mem, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := set.Close(); err != nil {
			t.Error(err)
		}
	}()
	devs := set.Devices
	if len(devs) != 2 {
		t.Fatalf("%d devices, want 2", len(devs))
	}

	ecam := root.ECAM()
	for slot, want := range map[int]uint32{1: 0x1042_1af4, 2: 0x1044_1af4} {
		var b [4]byte
		ecam.Read(uint64(slot)<<15, b[:])
		if got := binary.LittleEndian.Uint32(b[:]); got != want {
			t.Errorf("ECAM 00:%02x.0 ID %#x, want %#x", slot, got, want)
		}
	}
	// 64-bit BAR 0 of each function lies in the 32-bit window (small
	// BARs go below 4 GiB, as firmware puts them).
	for slot := 1; slot <= 2; slot++ {
		a, ok := root.Function(slot, 0).BARAddress(0)
		if !ok || a < PCIMMIO32Base || a+0x8000 > PCIMMIO32End {
			t.Errorf("00:%02x.0 BAR 0 at %#x (placed %v), outside the 32-bit window", slot, a, ok)
		}
	}

	drivers := make([]*virtiotest.Driver, 2)
	for i, d := range devs {
		drv, err := virtiotest.New(d.Transport, mem, vm)
		if err != nil {
			t.Fatal(err)
		}
		if err := drv.Init(0, 0); err != nil {
			t.Fatalf("%s: %v", d.Transport.Device().Name(), err)
		}
		drivers[i] = drv
	}
	perDevice := map[uint32]int{}
	for _, f := range snapshotIRQFDs(vm) {
		id, ok := ids.get(f)
		if !ok {
			t.Errorf("GSI %d has an irqfd and no ITS device ID", f)
			continue
		}
		perDevice[id]++
	}
	// The disk: one request queue and the configuration vector; the
	// entropy device likewise.
	if perDevice[0x08] != 2 || perDevice[0x10] != 2 || len(perDevice) != 2 {
		t.Errorf("irqfds per ITS device ID %v, want 2 for 0x08 (00:01.0) and 2 for 0x10 (00:02.0)", perDevice)
	}

	rng := drivers[1]
	const buf = virtiotest.BufBase
	clear(mem.B[buf : buf+64])
	rng.Put(0, []virtiotest.Seg{{GPA: buf, Len: 64, Write: true}}, 0)
	u, err := rng.Wait(0, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if u.Len != 64 || bytes.Equal(mem.B[buf:buf+64], make([]byte, 64)) {
		t.Errorf("entropy request: %d bytes written, buffer %x", u.Len, mem.B[buf:buf+64])
	}
	if n := rng.WaitInterrupts(0, 5*time.Second); n == 0 {
		t.Error("the entropy device's queue vector was not signalled")
	}
}

// snapshotIRQFDs returns the GSIs that have an irqfd assigned.
func snapshotIRQFDs(vm *virtiotest.VM) []uint32 {
	var gsis []uint32
	for _, f := range vm.IRQFDs {
		gsis = append(gsis, f.GSI)
	}
	return gsis
}

func TestGuestRAM(t *testing.T) {
	g := guestRAM{base: RAMBase, b: make([]byte, 1<<20)}
	if b, err := g.Slice(RAMBase+0x1000, 16); err != nil || len(b) != 16 || cap(b) != 16 {
		t.Errorf("Slice in RAM: %d bytes, %v", len(b), err)
	}
	if _, err := g.Slice(RAMBase+1<<20-8, 8); err != nil {
		t.Errorf("the last 8 bytes: %v", err)
	}
	for _, c := range []struct{ gpa, n uint64 }{
		{RAMBase - 1, 2}, {RAMBase + 1<<20 - 8, 9}, {RAMBase + 1<<20, 1}, {RAMBase + 8, ^uint64(0)}, {0, 1},
	} {
		if _, err := g.Slice(c.gpa, c.n); err == nil {
			t.Errorf("Slice(%#x, %#x) outside RAM succeeded", c.gpa, c.n)
		}
	}
}

// FuzzGuestRAM: the virtqueues hand Slice addresses and lengths the guest
// wrote; whatever they are, Slice returns exactly the bytes asked for
// inside RAM, or an error, and never panics.
func FuzzGuestRAM(f *testing.F) {
	f.Add(uint64(RAMBase), uint64(16))
	f.Add(uint64(RAMBase+1<<16-1), uint64(2))
	f.Add(^uint64(0), uint64(2))
	g := guestRAM{base: RAMBase, b: make([]byte, 1<<16)}
	f.Fuzz(func(t *testing.T, gpa, n uint64) {
		b, err := g.Slice(gpa, n)
		if err != nil {
			return
		}
		if uint64(len(b)) != n || gpa < RAMBase || gpa+n > RAMBase+1<<16 || gpa+n < gpa {
			t.Fatalf("Slice(%#x, %#x) = %d bytes outside RAM or of the wrong length", gpa, n, len(b))
		}
	})
}
